"""pytest integration: pytest-memray-compatible flags and ini keys, their namespaced forms,
marker signatures, bad inputs (usage errors naming the option), -p no:heapgate, a missing
native module, and coexistence with pytest-memray."""

from __future__ import annotations

import hashlib
import os
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest

THREE = """
import pytest, hgtest

@pytest.mark.limit_memory("1MB")
def test_big():
    hgtest.malloc_free(3_000_001)

def test_mid():
    hgtest.malloc_free(2_000_000)

def test_small():
    hgtest.malloc_free(100_000)
"""


def _summary_rows(out: str) -> list[str]:
    if "heapgate: memory per test" not in out:
        return []
    block = out.split("heapgate: memory per test", 1)[1].split("\n")[2:]
    return [line for line in block if "::" in line and not line.startswith(("FAILED", "="))]


def test_memray_names_work(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_three=THREE)
    result = run("--heapgate", "--most-allocations=2", "--stacks=1", "--native", "--trace-python-allocators")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "heapgate: --trace-python-allocators has no effect" in out
    rows = _summary_rows(out)
    assert [r.split()[-2] if r.endswith("FAILED") else r.split()[-1] for r in rows] == [
        "test_three.py::test_big",
        "test_three.py::test_mid",
    ]
    assert "(1 more tracked tests; --most-allocations=0 shows all)" in out
    assert "more frames (--stacks)" in out  # one frame shown per stack


def test_namespaced_names_work(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_three=THREE)
    result = run(
        "--heapgate",
        "--heapgate-most-allocations=0",
        "--heapgate-stacks=1",
        "--heapgate-native",
        "--heapgate-trace-python-allocators",
    )
    result.assert_outcomes(passed=2, failed=1)
    assert len(_summary_rows(result.stdout.str())) == 3
    hidden = run("--heapgate", "--hide-heapgate-summary")
    hidden.assert_outcomes(passed=2, failed=1)
    assert "heapgate: memory per test" not in hidden.stdout.str()


@pytest.mark.parametrize(
    "ini, shown",
    [
        ("heapgate = true\nmost_allocations = 1\nstacks = 1\nnative = true\ntrace_python_allocators = true\n", 1),
        ("heapgate = true\nheapgate_most_allocations = 0\nheapgate_stacks = 1\nheapgate_native = true\n", 3),
    ],
    ids=["memray-keys", "namespaced-keys"],
)
def test_ini_keys(run, pytester: pytest.Pytester, ini: str, shown: int) -> None:
    pytester.makeini("[pytest]\n" + ini)
    pytester.makepyfile(test_three=THREE)
    result = run()
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert len(_summary_rows(out)) == shown, out
    assert "more frames (--stacks)" in out


def test_hide_summary_ini(run, pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nheapgate = true\nhide_heapgate_summary = true\n")
    pytester.makepyfile(test_three=THREE)
    result = run()
    result.assert_outcomes(passed=2, failed=1)
    assert "heapgate: memory per test" not in result.stdout.str()


BAD_INPUTS = [
    (["--most-allocations=lots"], "", "--heapgate-most-allocations must be a whole number, not 'lots'"),
    (["--heapgate-stacks=0"], "", "--heapgate-stacks must be at least 1, not 0"),
    ([], "most_allocations = lots\n", "ini option most_allocations must be a whole number, not 'lots'"),
    ([], "heapgate_stacks = -3\n", "ini option heapgate_stacks must be at least 1, not -3"),
    ([], "heapgate = maybe\n", "heapgate"),
    ([], "native = perhaps\n", "native"),
    (["--heapgate-max-increase=abc"], "", "--heapgate-max-increase must be a non-negative percentage"),
    (["--heapgate-max-increase=-5%"], "", "--heapgate-max-increase must be a non-negative percentage"),
    ([], "heapgate_max_increase = lots\n", "ini option heapgate_max_increase must be a non-negative percentage"),
    (["--heapgate-min-increase=12 parsecs"], "", "invalid --heapgate-min-increase '12 parsecs'"),
    (["--heapgate-compare=missing.json"], "", "baseline file '*missing.json' does not exist"),
    (["--heapgate-compare=notjson.json"], "", "baseline file '*notjson.json' is not JSON"),
    (["--heapgate-compare=other.json"], "", "'*other.json' is not a heapgate baseline"),
    (["--heapgate-compare=future.json"], "", "has format version 99; this heapgate reads version 1"),
    (["--heapgate-compare=badentry.json"], "", "test 'x' needs non-negative integers*"),
    (["--heapgate-save=adir"], "", "--heapgate-save '*adir' is a directory, not a file"),
    (["--fail-on-increase"], "", "--fail-on-increase compares with the previous run kept in pytest's cache*"),
    (["--heapgate-dir=afile/sub"], "", "--heapgate-dir '*afile/sub' is not a writable directory*"),
    (["--native-leaks=abc"], "", "invalid --native-leaks limit 'abc': expected a non-negative number*"),
    (["--native-leaks=abc", "test_x.py"], "", "invalid --native-leaks limit 'abc'*"),
    (["--native-leaks-limit=abc"], "", "invalid --native-leaks-limit 'abc'*"),
    (["--native-leaks=1KiB", "--native-leaks-limit=2KiB"], "", "--native-leaks=1KiB and --native-leaks-limit=2KiB disagree*"),
]


def test_bad_inputs_are_usage_errors_naming_the_option(pytester: pytest.Pytester) -> None:
    """In-process sessions (no test runs: each stops at configuration)."""
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    (pytester.path / "notjson.json").write_text("{nope")
    (pytester.path / "other.json").write_text('{"schema": "heapgate-session", "version": 1}')
    (pytester.path / "future.json").write_text('{"schema": "heapgate-baseline", "version": 99, "tests": {}}')
    (pytester.path / "badentry.json").write_text('{"schema": "heapgate-baseline", "version": 1, "tests": {"x": {"peak_bytes": -1}}}')
    (pytester.path / "adir").mkdir()
    (pytester.path / "afile").write_text("")
    for args, ini, message in BAD_INPUTS:
        (pytester.path / "tox.ini").write_text("[pytest]\n" + ini)
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR, (args, ini, result.stdout.str(), result.stderr.str())
        text = result.stderr.str()
        assert "Traceback" not in text and "INTERNALERROR" not in text + result.stdout.str(), text
        result.stderr.fnmatch_lines([f"*{message}*"])


MARKERS = '''
import doctest
import pytest, hgtest

def keep(stack):
    return True

@pytest.mark.limit_memory("1MB", current_thread_only=True)
def test_memory_current_thread():
    hgtest.malloc_free(100_000)

@pytest.mark.limit_memory(limit="1MB")
def test_memory_keyword():
    hgtest.malloc_free(100_000)

@pytest.mark.limit_leaks("1KB", filter_fn=keep, current_thread_only=True)
def test_leaks_all_keywords():
    pass

@pytest.mark.limit_leaks(location_limit="1KB")
def test_leaks_keyword():
    pass

@pytest.mark.limit_memory()
def test_memory_no_limit():
    pass

@pytest.mark.limit_memory("1MB", True)
def test_memory_positional_flag():
    pass

@pytest.mark.limit_memory("1MB", foo=1)
def test_memory_unknown_keyword():
    pass

@pytest.mark.limit_memory("1MB", current_thread_only="yes")
def test_memory_bad_flag():
    pass

@pytest.mark.limit_leaks("1KB", filter_fn=3)
def test_leaks_bad_filter():
    pass

@pytest.mark.limit_leaks("1KB", "x")
def test_leaks_positional_filter():
    pass

@pytest.mark.limit_memory("1MB")
@pytest.mark.limit_memory("2MB")
def test_two_memory_markers():
    pass

def documented():
    """
    >>> 1 + 1
    2
    """
'''

CONFTEST = '''
import pytest

class PlainItem(pytest.Item):
    def runtest(self):
        pass

class PlainFile(pytest.File):
    def collect(self):
        yield PlainItem.from_parent(self, name="plain")

def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".plain":
        return PlainFile.from_parent(parent, path=file_path)

def pytest_collection_modifyitems(items):
    for item in items:
        if not isinstance(item, pytest.Function):
            item.add_marker(pytest.mark.limit_memory("1MB"))
'''


def test_marker_signatures(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_markers=MARKERS)
    pytester.makeconftest(CONFTEST)
    (pytester.path / "test_items.plain").write_text("")
    result = run("-v", "--doctest-modules", "-rA")
    out = result.stdout.str()
    result.assert_outcomes(passed=4, errors=9)
    for name in ("test_memory_current_thread", "test_memory_keyword", "test_leaks_all_keywords", "test_leaks_keyword"):
        assert f"test_markers.py::{name} PASSED" in out
    expected = {
        "test_memory_no_limit": "missing 1 required positional argument: 'limit'; expected limit_memory(limit, *, current_thread_only=False, all_threads=False, warmup=None, repeat=None)",
        "test_memory_positional_flag": "takes 1 positional argument but 2 were given; expected limit_memory(limit, *, current_thread_only=False, all_threads=False, warmup=None, repeat=None)",
        "test_memory_unknown_keyword": "unexpected keyword argument 'foo'",
        "test_memory_bad_flag": "current_thread_only must be True or False, not 'yes'",
        "test_leaks_bad_filter": "filter_fn must be callable",
        "test_leaks_positional_filter": "expected limit_leaks(location_limit, *, filter_fn=None, current_thread_only=False, all_threads=False, warmup=None, repeat=None)",
        "test_two_memory_markers": "2 @pytest.mark.limit_memory markers",
    }
    sections = {
        m.group(1): m.group(2)
        for m in re.finditer(r"_+ ERROR at setup of (.+?) _+\n(.*?)(?=\n_{3,}|\n={3,})", out, re.S)
    }
    for name, text in expected.items():
        assert sections[name].startswith("heapgate: ") and text in sections[name], (name, sections.get(name))
    assert (
        "heapgate: @pytest.mark.limit_memory applies to Python test functions; "
        "'test_markers.py::test_markers.documented' is a DoctestItem" in sections["[doctest] test_markers.documented"]
    ), sections
    assert (
        "heapgate: @pytest.mark.limit_memory applies to Python test functions; 'test_items.plain::plain' is a PlainItem"
        in out
    ), out
    assert "INTERNALERROR" not in out


def test_disabled_with_p_no_heapgate(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_three=THREE)
    result = run("-p", "no:heapgate")
    result.assert_outcomes(passed=3)
    assert "heapgate-" not in result.stdout.str() and "heapgate:" not in result.stdout.str()
    unknown = run("-p", "no:heapgate", "--heapgate")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR


def test_without_the_native_module_tests_run_untracked(run, pytester: pytest.Pytester) -> None:
    # A plugin loaded before heapgate's entry point makes `from . import _native` fail, as on
    # a platform without the module.
    pytester.makepyfile(blocknative="import sys\nsys.modules['heapgate._native'] = None\n")
    pytester.makepyfile(test_three=THREE)
    result = run("-p", "blocknative", "--heapgate", "--heapgate-dir=out")
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    assert "memory tracking is unavailable here" in out and "tracking is Linux-only, tests run untracked" in out
    assert "INTERNALERROR" not in out + result.stderr.str()


# One throwaway venv per interpreter environment (a venv's packages differ from its base's).
MEMRAY_VENV = Path(os.environ.get(
    "HEAPGATE_MEMRAY_VENV",
    f"/tmp/hg-memray-{sys.version_info[0]}.{sys.version_info[1]}-{hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]}",
))


def _memray_python() -> Path:
    """A venv that sees this interpreter's packages (heapgate included) plus pytest-memray."""
    python = MEMRAY_VENV / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import pytest_memray, heapgate"], capture_output=True).returncode == 0:
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(MEMRAY_VENV)], check=True, capture_output=True, timeout=120)
        # `--system-site-packages` would reach the base interpreter's packages, not this venv's: add this
        # environment's site directories (their .pth files too, so an editable heapgate is found).
        purelib = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        dirs = [d for d in dict.fromkeys(site.getsitepackages()) if Path(d).is_dir()]
        (Path(purelib) / "heapgate-test-parent.pth").write_text(f"import site; list(map(site.addsitedir, {dirs!r}))\n")
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pytest-memray"], check=True, capture_output=True, timeout=300)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"cannot install pytest-memray in a throwaway venv ({MEMRAY_VENV}): {e}")
    return python


def test_coexists_with_pytest_memray(pytester: pytest.Pytester, native_dir: Path) -> None:
    python = _memray_python()
    pytester.makepyfile(test_three=THREE)
    env = dict(os.environ, PYTHONPATH=str(native_dir))
    env.pop("PYTEST_ADDOPTS", None)

    def session(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", *args],
            cwd=pytester.path, env=env, capture_output=True, text=True, timeout=120,
        )

    helptext = session("--help").stdout
    for flag in ("--memray", "--native", "--stacks", "--most-allocations", "--fail-on-increase",
                 "--heapgate", "--heapgate-native", "--heapgate-stacks", "--heapgate-most-allocations",
                 "--heapgate-fail-on-increase", "--heapgate-trace-python-allocators"):
        assert f"  {flag}" in helptext, flag
    # Both plugins loaded; heapgate answers to its namespaced flags. (Their capture engines both
    # hook the allocator, so one session measures with one of them: here, heapgate.)
    done = session("-p", "no:memray", "--heapgate", "--heapgate-most-allocations=0", "--heapgate-stacks=1")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1 failed, 2 passed" in done.stdout
    assert "peak 3000001 bytes" in done.stdout
    both = session("--heapgate", "--heapgate-native", "--most-allocations=1", "--native")
    assert "INTERNALERROR" not in both.stdout + both.stderr and "already" not in both.stderr, both.stderr
    assert "plugins:" in both.stdout and "memray" in both.stdout and "heapgate" in both.stdout


NATIVE_LEAK_PATHS = """
import hgleak

def test_leaks_100k():
    hgleak.leak_malloc(100_000)

def test_clean():
    pass
"""


def test_native_leaks_does_not_swallow_test_paths(run, pytester: pytest.Pytester) -> None:
    """`--native-leaks` takes an optional limit: a following word that is a size is the limit,
    any other word stays a test path (issue 11: `pytest --native-leaks tests/` exited 4)."""
    (pytester.path / "tests").mkdir()
    (pytester.path / "tests" / "test_paths.py").write_text(NATIVE_LEAK_PATHS)
    # Collected only if a path argument is lost: it would fail the outcome counts.
    (pytester.path / "other").mkdir()
    (pytester.path / "other" / "test_other.py").write_text("def test_not_selected():\n    assert False\n")
    exact = ("-p", "no:logging")  # see tests/test_leaks.py: EXACT

    def outcomes(*args: str) -> tuple[pytest.RunResult, dict[str, int]]:
        result = run(*exact, *args)
        assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), (args, result.stderr.str())
        return result, result.parseoutcomes()

    # The headline command: the default limit (0), and only tests/ collected.
    result, counts = outcomes("--native-leaks", "tests/")
    assert counts == {"failed": 1, "passed": 1}, counts
    result.stdout.fnmatch_lines(["*(limit 0B, --native-leaks)*"])
    # A node id and two paths after the flag.
    _, counts = outcomes("--native-leaks", "tests/test_paths.py::test_clean")
    assert counts == {"passed": 1}, counts
    _, counts = outcomes("--native-leaks", "tests/test_paths.py", "other/test_other.py")
    assert counts == {"failed": 2, "passed": 1}, counts
    # The limit, three ways: `=`, the space form (a size is read as the limit), its own flag.
    for args in (["tests/", "--native-leaks=1KiB"], ["--native-leaks", "1KiB", "tests/"], ["--native-leaks-limit=1KiB", "tests/"]):
        result, counts = outcomes(*args)
        assert counts == {"failed": 1, "passed": 1}, (args, counts)
        result.stdout.fnmatch_lines(["*(limit 1.0KiB, --native-leaks)*"])
    for args in (["tests/", "--native-leaks=200KiB"], ["--native-leaks", "200KiB", "tests/"], ["--native-leaks-limit=200KiB", "tests"]):
        _, counts = outcomes(*args)
        assert counts == {"passed": 2}, (args, counts)
