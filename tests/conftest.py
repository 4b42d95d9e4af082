"""Fixtures shared by heapgate's end-to-end tests: C code built for the test run, and real
pytest sessions (pytester, in subprocesses so each session's process is fresh)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Callable

import pytest

CSRC = Path(__file__).parent / "csrc"


def _compile(sources: list[Path], output: Path, *, flags: list[str], python: bool) -> Path:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.fail("a C compiler (gcc) is needed to build the test extensions")
    cmd = [cc, "-shared", "-fPIC", "-pthread", *flags]
    if python:
        cmd += ["-I", sysconfig.get_paths()["include"]]
    cmd += [str(s) for s in sources] + ["-o", str(output)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return output


@pytest.fixture(scope="session")
def native_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with `hgtest`, `hgleak` and `hgstress` (C extensions, -g -O0) and `libhgdl.so`."""
    out = tmp_path_factory.mktemp("native")
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    _compile([CSRC / "hgtest.c"], out / f"hgtest{suffix}", flags=["-g", "-O0"], python=True)
    _compile([CSRC / "hgleak.c"], out / f"hgleak{suffix}", flags=["-g", "-O0"], python=True)
    _compile([CSRC / "hgstress.c"], out / f"hgstress{suffix}", flags=["-g", "-O0", "-Wall", "-Werror", "-ldl"], python=True)
    _compile([CSRC / "hgdl.c"], out / "libhgdl.so", flags=["-g", "-O0"], python=False)
    return out


@pytest.fixture
def run(pytester: pytest.Pytester, native_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., pytest.RunResult]:
    """Run pytest in a subprocess over the pytester directory, with the C code importable."""
    monkeypatch.setenv("PYTHONPATH", str(native_dir))
    monkeypatch.setenv("HGDL_PATH", str(native_dir / "libhgdl.so"))

    def run_session(*args: str, timeout: float = 120) -> pytest.RunResult:
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=timeout)

    return run_session


def peaks(result: pytest.RunResult) -> dict[str, int]:
    """Peak bytes per failed test, read from heapgate's failure text."""
    text = result.stdout.str()
    found = {}
    for m in re.finditer(r"_{3,} (\S+) _{3,}\n.*?limit \d+ bytes, peak (\d+) bytes", text, re.S):
        found[m.group(1)] = int(m.group(2))
    return found


# Third-party pytest plugins in the test extra (pytest-xdist, pytest-asyncio, anyio,
# pytest-rerunfailures, pytest-cov) load into every pytester session once installed. The sessions of the
# older test modules were written without them, and some (the conservative reachability scan
# in test_leaks.py) are sensitive to any extra allocation in the process, so those sessions run
# without them; tests/test_pytest_*.py and tests/test_gating.py (the pytest-integration tests)
# get them.
OTHER_PLUGINS = ("xdist", "xdist.looponfail", "asyncio", "anyio", "rerunfailures", "pytest_cov")


@pytest.fixture(autouse=True)
def _only_heapgate_in_older_sessions(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.path.name.startswith(("test_pytest_", "test_gating")) or "pytester" not in request.fixturenames:
        return
    request.getfixturevalue("pytester")  # it clears PYTEST_ADDOPTS when it starts
    monkeypatch.setenv("PYTEST_ADDOPTS", " ".join(f"-p no:{name}" for name in OTHER_PLUGINS))
