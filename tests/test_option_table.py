"""heapgate's option table (options.OPTIONS): every ini key is read into the session's
settings, a bad value of a typed key is a usage error naming the key, and the markers' help
shows every keyword their signatures accept. In-process sessions that stop before any test
runs: the settings the plugin resolved are written by a conftest."""

from __future__ import annotations

import inspect
import json
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import pytest

from heapgate import markers
from heapgate.options import OPTIONS, memray_installed

CONFTEST = """
import dataclasses, json

def pytest_sessionstart(session):
    plugin = session.config.pluginmanager.get_plugin("heapgate-session")
    values = {k: str(v) for k, v in dataclasses.asdict(plugin.settings).items()}
    (session.config.rootpath / "settings.json").write_text(json.dumps(values))
"""

BASELINE = '{"schema": "heapgate-baseline", "version": 1, "tests": {}}'


def _at(name: str) -> Callable[[Path], str]:
    return lambda root: str(root / name)


# ini key, value, the Settings field it sets, that field's value (a function of the rootdir
# for paths). Every ini key of OPTIONS has a row (test_every_ini_key_has_a_case).
CASES: list[tuple[str, str, str, Any]] = [
    ("heapgate", "true", "track_all", True),
    ("heapgate_native", "true", "native", True),
    ("native", "true", "native", True),
    ("heapgate_stacks", "3", "max_frames", 3),
    ("stacks", "2", "max_frames", 2),
    ("heapgate_most_allocations", "0", "most_allocations", 0),
    ("most_allocations", "7", "most_allocations", 7),
    ("hide_heapgate_summary", "true", "hide_summary", True),
    ("heapgate_trace_python_allocators", "true", "trace_python_allocators", True),
    ("trace_python_allocators", "true", "trace_python_allocators", True),
    ("heapgate_fail_on_increase", "true", "fail_on_increase", True),
    ("fail-on-increase", "true", "fail_on_increase", True),
    ("heapgate_save", "out/base.json", "save", _at("out/base.json")),
    ("heapgate_compare", "base.json", "compare", _at("base.json")),
    ("heapgate_max_increase", "2.5%", "max_increase", Decimal("2.5")),
    ("heapgate_min_increase", "1KiB", "min_increase", 1024),
    ("heapgate_include_fixtures", "true", "include_fixtures", True),
    ("heapgate_limit_memory", "200MB", "limit_memory", 200 * 1024 * 1024),
    ("heapgate_limit_leaks", "1MB", "limit_leaks", 1024 * 1024),
    ("heapgate_all_threads", "true", "all_threads", True),
    ("heapgate_include_tracers", "true", "include_tracers", True),
    ("heapgate_warmup", "2", "warmup", 2),
    ("heapgate_repeat", "3", "repeat", 3),
    ("heapgate_repeat_threshold", "64", "repeat_threshold", 64),
    ("native_leaks", "4KiB", "native_leaks", 4096),
    ("native_leaks_suppressions", "supp.txt", "suppressions", _at("supp.txt")),
    ("heapgate_dir", "reports", "artifacts_dir", _at("reports")),
    ("heapgate_dir_all", "true", "artifacts_all", True),
]

# A bad value for every ini key that is not a path (paths: a missing or unwritable file is
# reported with its path by tests/test_pytest_options.py).
PATHS = {"save", "compare", "suppressions", "artifacts_dir"}
BAD = [
    (key, "maybe" if option.kind == "bool" else "lots")
    for option in OPTIONS
    for key in (option.ini, option.memray_ini)
    if key is not None and option.setting not in PATHS
]


def _settings(pytester: pytest.Pytester, ini: str) -> dict[str, str]:
    pytester.makeini("[pytest]\n" + ini)
    result = pytester.runpytest_inprocess("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED, (result.stdout.str(), result.stderr.str())
    data: dict[str, str] = json.loads((pytester.path / "settings.json").read_text())
    (pytester.path / "settings.json").unlink()
    return data


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    (pytester.path / "base.json").write_text(BASELINE)
    (pytester.path / "supp.txt").write_text("leak:some_function\n")
    return pytester


@pytest.mark.parametrize("key, value, setting, expected", CASES, ids=[c[0] for c in CASES])
def test_each_ini_key_is_read(project: pytest.Pytester, key: str, value: str, setting: str, expected: Any) -> None:
    default = _settings(project, "")
    settings = _settings(project, f"{key} = {value}\n")
    want = str(expected(project.path) if callable(expected) else expected)
    assert settings[setting] == want, (key, settings)
    assert default[setting] != want, f"{key}: the case's value is the default, the test proves nothing"
    # Nothing else changed, except what a baseline or repeat implies (every test tracked).
    changed = {k for k in settings if settings[k] != default[k]} - {setting}
    assert changed <= {"track_all"}, (key, changed)


def test_every_ini_key_has_a_case() -> None:
    keys = {key for option in OPTIONS for key in (option.ini, option.memray_ini) if key is not None}
    assert keys == {c[0] for c in CASES}
    assert not memray_installed(), "pytest-memray installed: its bare names are not heapgate's here"


@pytest.mark.parametrize("key, value", BAD, ids=[k for k, _ in BAD])
def test_bad_ini_value_is_a_usage_error_naming_the_key(project: pytest.Pytester, key: str, value: str) -> None:
    project.makeini(f"[pytest]\n{key} = {value}\n")
    result = project.runpytest_inprocess("--collect-only", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, (key, result.stdout.str(), result.stderr.str())
    text = result.stderr.str()
    assert "Traceback" not in text, text
    result.stderr.fnmatch_lines([f"*heapgate: *ini option {key}*{value}*"])


def test_marker_help_shows_every_keyword(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess("--markers")
    lines = {line.split(":", 1)[0]: line for line in result.stdout.lines if line.startswith("@pytest.mark.")}
    expected = {
        "limit_memory": ["limit", "current_thread_only=False", "all_threads=False", "warmup=None", "repeat=None"],
        "limit_leaks": [
            "location_limit",
            "filter_fn=None",
            "current_thread_only=False",
            "all_threads=False",
            "warmup=None",
            "repeat=None",
        ],
        "native_leaks": ["limit=0", "native_leaks(False)"],
    }
    builders = {"limit_memory": markers._limit_memory, "limit_leaks": markers._limit_leaks, "native_leaks": markers._native_leaks}
    for name, words in expected.items():
        line = lines.get(f"@pytest.mark.{name}")
        assert line is not None, (name, result.stdout.str())
        for word in words:
            assert word in line, (name, word, line)
        # Every parameter the marker accepts, also one added later.
        for param in inspect.signature(builders[name]).parameters:
            assert param in line, (name, param, line)
