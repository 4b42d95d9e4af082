"""Loader transparency (issue 10, items 1 and 4): libraries that load their dependencies by
bare name through their own RPATH/RUNPATH ($ORIGIN), RTLD_NEXT/RTLD_DEFAULT lookups, dlmopen
and dlclose behave under tracking exactly as untracked, and what libraries loaded mid-test
allocate is counted to the byte and symbolized, even once they are closed again."""

from __future__ import annotations

import json
import os
import re
import sysconfig
from pathlib import Path
from typing import Callable

import pytest

from conftest import CSRC, _compile, peaks
from native_builds import marked_lines

LOADER_SRC = CSRC / "loader"
INNER_C = LOADER_SRC / "hginner.c"
EXT_SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))

# How the library search path is recorded: DT_RPATH (also searched for the caller's loaders)
# or DT_RUNPATH (the caller's alone).
DTAGS = {"rpath": "-Wl,--disable-new-dtags", "runpath": "-Wl,--enable-new-dtags"}


@pytest.fixture(scope="session")
def loader_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per variant, a directory with `hgloader` and `libouter.so` (both searching
    `$ORIGIN/sub`), `sub/libinner.so`, and the interposition pair."""
    root = tmp_path_factory.mktemp("loader")
    dirs = {}
    for variant, dtags in DTAGS.items():
        out = root / variant
        (out / "sub").mkdir(parents=True)
        search = ["-Wl,-rpath,$ORIGIN/sub", dtags]
        _compile([INNER_C], out / "sub" / "libinner.so", flags=["-g", "-O0", "-Wl,--build-id", "-ldl"], python=False)
        _compile([LOADER_SRC / "hgouter.c"], out / "libouter.so", flags=["-g", "-O0", *search, "-ldl"], python=False)
        _compile([LOADER_SRC / "hgloader.c"], out / f"hgloader{EXT_SUFFIX}", flags=["-g", "-O0", *search, "-ldl"], python=True)
        _compile([LOADER_SRC / "hgtarget.c"], out / "libtarget.so", flags=["-g", "-O0"], python=False)
        _compile(
            [LOADER_SRC / "hginterpose.c"],
            out / "libinterpose.so",
            flags=["-g", "-O0", f"-L{out}", "-Wl,-rpath,$ORIGIN", "-Wl,--no-as-needed", "-ltarget"],
            python=False,
        )
        dirs[variant] = out
    return dirs


# name: (flags, tracked): each session runs the same tests; tracked ones under a limit.
MODES = {
    "untracked": ([], False),
    "limit_memory": ([], True),
    "native": (["--native"], True),
    "native_leaks": (["--native-leaks"], False),
}

# Bytes each test's libinner allocation makes (distinct, so each site is recognisable).
SIZES = {
    "test_caller_is_the_extension": 1_100_000,
    "test_caller_is_a_library_the_extension_loaded": 1_200_000,
    "test_caller_is_a_library_ctypes_loaded": 1_300_000,
    "test_reopened_library_is_patched_again": 2 * 1_500_000,
    "test_malloc_through_dlsym_is_not_seen": 1_600_000,
    "test_closed_library_is_symbolized": 1_700_000,
}

SESSION = """
import ctypes, os, _ctypes
import pytest
import hgloader

D = os.environ["HGLOADER_DIR"]
OUTER = os.path.join(D, "libouter.so")
INNER = os.path.join(D, "sub", "libinner.so")

def limit(n):
    # Tracked sessions: a limit one byte under what the test allocates; else no marker.
    return pytest.mark.limit_memory(n - 1) if os.environ["HGLOADER_TRACKED"] == "1" else (lambda f: f)

def loose():
    return pytest.mark.limit_memory("1GB") if os.environ["HGLOADER_TRACKED"] == "1" else (lambda f: f)

@limit({test_caller_is_the_extension})
def test_caller_is_the_extension():
    hgloader.from_extension({test_caller_is_the_extension})

@limit({test_caller_is_a_library_the_extension_loaded})
def test_caller_is_a_library_the_extension_loaded():
    hgloader.from_loaded_library(OUTER, {test_caller_is_a_library_the_extension_loaded})

@limit({test_caller_is_a_library_ctypes_loaded})
def test_caller_is_a_library_ctypes_loaded():
    lib = ctypes.CDLL(OUTER)
    lib.outer_error.restype = ctypes.c_char_p
    rc = lib.outer_alloc_free(ctypes.c_size_t({test_caller_is_a_library_ctypes_loaded}))
    assert rc == 0, lib.outer_error()
    _ctypes.dlclose(lib._handle)
    assert not hgloader.is_loaded("libinner.so")

@limit({test_reopened_library_is_patched_again})
def test_reopened_library_is_patched_again():
    hgloader.reopen_alloc_twice(INNER, {test_reopened_library_is_patched_again} // 2)

@limit({test_malloc_through_dlsym_is_not_seen})
def test_malloc_through_dlsym_is_not_seen():
    hgloader.dlsym_malloc(INNER, 5_000_000, {test_malloc_through_dlsym_is_not_seen})

@limit({test_closed_library_is_symbolized})
def test_closed_library_is_symbolized():
    hgloader.alloc_in_closed_library(INNER, {test_closed_library_is_symbolized})
    hgloader.release()

@loose()
def test_rtld_next_and_default_from_an_interposer():
    nxt, dflt, target, interposer = hgloader.interposer_lookups(
        os.path.join(D, "libinterpose.so"), os.path.join(D, "libtarget.so"))
    assert (nxt, dflt) == (target, interposer) and 0 not in (nxt, dflt)

# The new namespace has its own C library, which heapgate leaves alone (README, Known limits):
# its 1,400,000 bytes are not counted, so a 1,000,000-byte limit passes.
@(pytest.mark.limit_memory(1_000_000) if os.environ["HGLOADER_TRACKED"] == "1" else (lambda f: f))
def test_dlmopen_into_a_new_namespace():
    hgloader.dlmopen_alloc_free(INNER, 1_400_000)
"""


def site_stack(out: str, test: str, size: int) -> list[str]:
    """The frames under the `size`-byte site of `test`'s failure text."""
    section = out.split(f"_ {test} _", 1)[1]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if f"({size} bytes) in" in line)
    stack = []
    for line in lines[start + 1 :]:
        if not line.startswith("      ") or line.strip().startswith("#"):
            break
        stack.append(line.strip())
    return stack


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("variant", sorted(DTAGS))
def test_loading_by_bare_name_is_unchanged_and_counted(
    run: Callable[..., pytest.RunResult],
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    loader_builds: dict[str, Path],
    variant: str,
    mode: str,
) -> None:
    flags, tracked = MODES[mode]
    ext_dir = loader_builds[variant]
    monkeypatch.setenv("PYTHONPATH", str(ext_dir))
    monkeypatch.setenv("HGLOADER_DIR", str(ext_dir))
    monkeypatch.setenv("HGLOADER_TRACKED", "1" if tracked else "0")
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    pytester.makepyfile(test_loading=SESSION.format(**SIZES))
    result = run("-v", "-p", "no:logging", *flags)
    out = result.stdout.str()
    assert "cannot open shared object file" not in out, out
    if not tracked:
        result.assert_outcomes(passed=8)
        return
    result.assert_outcomes(passed=2, failed=6)
    for test in SIZES:
        assert re.search(rf"test_loading.py::{test} FAILED", out)
    # Everything libinner allocates through its own malloc call is counted to the byte; the
    # 5,000,000 bytes from the malloc it got through dlsym are not (README, Known limits).
    found = peaks(result)
    for test in ("test_caller_is_the_extension", "test_caller_is_a_library_the_extension_loaded",
                 "test_reopened_library_is_patched_again", "test_malloc_through_dlsym_is_not_seen",
                 "test_closed_library_is_symbolized"):
        assert found[test] == SIZES[test], (test, found)
    ctypes_size = SIZES["test_caller_is_a_library_ctypes_loaded"]
    assert f"({ctypes_size} bytes) in 1 allocation through malloc" in out
    assert "(5000000 bytes)" not in out
    if mode != "native":
        return
    # With --native, libinner's frame is named with its file and line, also for a library
    # closed before the report was made.
    line = marked_lines(INNER_C)["inner_malloc"]
    inner_frame = re.compile(rf"inner_alloc at {re.escape(str(ext_dir / 'sub'))}/.*hginner\.c:{line}$|inner_alloc at \S*hginner\.c:{line}$")
    for test in ("test_caller_is_the_extension", "test_caller_is_a_library_the_extension_loaded",
                 "test_caller_is_a_library_ctypes_loaded", "test_closed_library_is_symbolized"):
        stack = site_stack(out, test, SIZES[test])
        assert stack and inner_frame.match(stack[0]), (test, stack)
    outer = site_stack(out, "test_caller_is_a_library_the_extension_loaded", SIZES["test_caller_is_a_library_the_extension_loaded"])
    assert any(frame.startswith("outer_alloc_free at ") and "hgouter.c:" in frame for frame in outer), outer


def test_libraries_loaded_and_closed_by_many_threads_at_once(
    run: Callable[..., pytest.RunResult],
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    loader_builds: dict[str, Path],
) -> None:
    """4 native threads load, use and close libinner 200 times each while the test is
    tracked: no deadlock or crash, and each of the 800 allocations of 100,000 bytes is counted
    (each is freed before the thread's next, so at most 4 are live at once)."""
    ext_dir = loader_builds["runpath"]
    monkeypatch.setenv("PYTHONPATH", str(ext_dir))
    pytester.makepyfile(
        test_churn=f"""
        import pytest, hgloader

        @pytest.mark.limit_memory(99_999)
        def test_churn():
            hgloader.churn({str(ext_dir / "sub" / "libinner.so")!r}, 100_000, 4, 200)
        """
    )
    result = run("-v", "-p", "no:logging", "--heapgate-dir=out", timeout=120)
    result.assert_outcomes(failed=1)
    assert "RuntimeError" not in result.stdout.str(), result.stdout.str()
    assert 100_000 <= peaks(result)["test_churn"] <= 4 * 100_000
    (churn,) = json.loads((pytester.path / "out" / "heapgate.json").read_text())["tests"]
    # Every load is reached through dlsym, which patches it first: all 800 are counted.
    assert (churn["total_bytes"], churn["total_count"]) == (800 * 100_000, 800), churn
