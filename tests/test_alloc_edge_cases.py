"""Allocation edge cases (issue 10, item 6), byte-exact: the C library's answer (result,
errno, untouched outputs) is the same tracked as untracked, and only memory the program got
is counted. The checks of each case run inside tests/csrc/hgedge.c."""

from __future__ import annotations

import ctypes
import os
import sysconfig
from pathlib import Path
from typing import Callable

import pytest

from conftest import CSRC, _compile, peaks

PAGE = os.sysconf("SC_PAGESIZE")
N = 1_000_003  # an odd size, so no rounding can pass for exactness


def glibc_accepts_odd_alignment() -> bool:
    """Does this C library's aligned_alloc(3, n) succeed (glibc < 2.38) or fail (EINVAL)?"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.aligned_alloc.restype = ctypes.c_void_p
    libc.aligned_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
    p = libc.aligned_alloc(3, N)
    if p:
        libc.free(ctypes.c_void_p(p))
    return bool(p)


# test name: (call, peak in bytes)
CASES = {
    "realloc_null": ("hgedge.realloc_null(N)", N),
    "realloc_zero": ("hgedge.realloc_zero(N)", N),
    "free_null": ("hgedge.free_null(N)", N),
    "failed_malloc": ("hgedge.failed_malloc(N)", N),
    "bad_posix_memalign": ("hgedge.bad_posix_memalign(N)", N),
    "odd_aligned_alloc": ("assert hgedge.odd_aligned_alloc(N) == ACCEPTS_ODD", N if glibc_accepts_odd_alignment() else 0),
    "file_mmap": ("hgedge.file_mmap(SCRATCH, N)", N),
    "partial_munmap": ("hgedge.partial_munmap()", 10 * PAGE),
    "mremap": ("hgedge.mremap_cases()", 14 * PAGE),
    "errno": ("hgedge.errno_kept(N)", N),
}


@pytest.fixture(scope="session")
def hgedge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hgedge")
    _compile([CSRC / "hgedge.c"], out / f"hgedge{sysconfig.get_config_var('EXT_SUFFIX')}", flags=["-g", "-O0"], python=True)
    return out


def session_source(tracked: bool) -> str:
    lines = [
        "import os, pytest, hgedge",
        f"N = {N}",
        f"ACCEPTS_ODD = {glibc_accepts_odd_alignment()}",
        "SCRATCH = os.path.join(os.getcwd(), 'scratch.bin')",
    ]
    for name, (call, peak) in CASES.items():
        # Tracked: one byte under the peak (fails, and says the peak), or no limit at all if
        # nothing is to be counted (passes only if nothing was).
        if tracked:
            lines.append(f"@pytest.mark.limit_memory({max(peak - 1, 0)})")
        lines += [f"def test_{name}():", f"    {call}", ""]
    return "\n".join(lines)


@pytest.mark.parametrize("tracked", [False, True], ids=["untracked", "tracked"])
def test_edge_cases_keep_the_c_library_answers_and_count_exactly(
    run: Callable[..., pytest.RunResult],
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    hgedge_dir: Path,
    tracked: bool,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(hgedge_dir))
    pytester.makepyfile(test_edge=session_source(tracked))
    result = run("-v", "-p", "no:logging")
    out = result.stdout.str()
    assert "RuntimeError" not in out, out
    if not tracked:
        result.assert_outcomes(passed=len(CASES))
        return
    expected = {f"test_{name}": peak for name, (_, peak) in CASES.items() if peak > 0}
    result.assert_outcomes(failed=len(expected), passed=len(CASES) - len(expected))
    assert peaks(result) == expected
