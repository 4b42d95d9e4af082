"""heapgate's command-line flags and ini keys, and the settings a session reads from them.

Every option has a namespaced form (``--heapgate-native``, ini ``heapgate_native``). The bare
names pytest-memray 1.11 uses (``--native``, ``--stacks``, ``--most-allocations``,
``--trace-python-allocators``, ``--fail-on-increase``, ini ``native``, ``stacks``,
``most_allocations``, ``trace_python_allocators``, ``fail-on-increase``) are registered too,
so a suite migrates by renaming ``--memray`` — unless pytest-memray itself is installed: then
those names are pytest-memray's (pytest refuses two options with one name), and heapgate
answers to its namespaced forms only, so both plugins load side by side.

A bad value (a flag's or an ini key's) is a usage error naming the option, before any test runs.

``--native-leaks`` takes an optional limit. A following word that is not a size is not its
limit but a test path (``pytest --native-leaks tests/``), handed back to pytest's positional
arguments; ``--native-leaks=SIZE`` and ``--native-leaks-limit=SIZE`` give a limit without
ambiguity, and a bad ``--native-leaks=WORD`` is a usage error.
"""

from __future__ import annotations

import argparse
import os
import shlex
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

import pytest

from .limits import ACCEPTED_FORMS, LimitError, parse_size

__all__ = ["Settings", "add_options", "memray_installed", "native_leaks_limit", "read_settings"]

DEFAULT_MOST_ALLOCATIONS = 5
DEFAULT_MAX_INCREASE = "10%"
DEFAULT_MIN_INCREASE = "64KiB"


def memray_installed() -> bool:
    """Is pytest-memray installed (a ``pytest11`` entry point in module ``pytest_memray``)?"""
    try:
        eps: Any = metadata.entry_points()
        group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", ())
        return any(str(ep.value).split(".")[0].split(":")[0] == "pytest_memray" for ep in group)
    except Exception:  # pragma: no cover - broken metadata: assume the names are free
        return False


# (namespaced flag, memray's bare flag or None, dest, kind, metavar, help)
# kind: "bool" (store_true), "value" (one argument)
_FLAGS: tuple[tuple[str, Optional[str], str, str, Optional[str], str], ...] = (
    ("--heapgate", None, "heapgate", "bool", None, "Track every test (not only marked ones) and show the memory summary."),
    (
        "--heapgate-native",
        "--native",
        "heapgate_native",
        "bool",
        None,
        "Also record native stacks (C/C++/Rust frames, symbolized lazily for reports).",
    ),
    (
        "--heapgate-stacks",
        "--stacks",
        "heapgate_stacks",
        "value",
        "N",
        "Show at most N frames of each allocation stack in failures (default: all).",
    ),
    (
        "--heapgate-most-allocations",
        "--most-allocations",
        "heapgate_most_allocations",
        "value",
        "N",
        "Show the N tests with the highest peak in the summary (0: all; default 5).",
    ),
    (
        "--hide-heapgate-summary",
        None,
        "hide_heapgate_summary",
        "bool",
        None,
        "Do not show heapgate's summary at the end of the session.",
    ),
    (
        "--heapgate-trace-python-allocators",
        "--trace-python-allocators",
        "heapgate_trace_python_allocators",
        "bool",
        None,
        "Accepted for pytest-memray compatibility; no effect: heapgate always counts Python's allocators exactly.",
    ),
    (
        "--heapgate-fail-on-increase",
        "--fail-on-increase",
        "heapgate_fail_on_increase",
        "bool",
        None,
        "Fail a test with a limit_memory marker whose peak is higher than in its previous run "
        "(kept in pytest's cache, as pytest-memray does).",
    ),
    (
        "--heapgate-save",
        None,
        "heapgate_save",
        "value",
        "FILE",
        "Write a baseline of every test's peak and leaked bytes to FILE (JSON, meant to be committed).",
    ),
    (
        "--heapgate-compare",
        None,
        "heapgate_compare",
        "value",
        "FILE",
        "Compare every test's peak with the baseline FILE; fail those that grew beyond the tolerance.",
    ),
    (
        "--heapgate-max-increase",
        None,
        "heapgate_max_increase",
        "value",
        "PCT",
        f"With --heapgate-compare: growth of a test's peak allowed, in percent (default {DEFAULT_MAX_INCREASE}).",
    ),
    (
        "--heapgate-min-increase",
        None,
        "heapgate_min_increase",
        "value",
        "SIZE",
        f"With --heapgate-compare: growth smaller than SIZE never fails (default {DEFAULT_MIN_INCREASE}).",
    ),
    (
        "--heapgate-include-fixtures",
        None,
        "heapgate_include_fixtures",
        "bool",
        None,
        "Count the allocations of the fixtures set up for a test in its peak (default: the call only).",
    ),
    (
        "--heapgate-limit-memory",
        None,
        "heapgate_limit_memory",
        "value",
        "SIZE",
        "Limit the peak of every test that has no limit_memory marker (e.g. 200MB).",
    ),
    (
        "--heapgate-limit-leaks",
        None,
        "heapgate_limit_leaks",
        "value",
        "SIZE",
        "Limit the leaked memory per location of every test that has no limit_leaks marker (e.g. 1MB).",
    ),
    (
        "--heapgate-all-threads",
        None,
        "heapgate_all_threads",
        "bool",
        None,
        "Charge a test for every thread's allocations during its call, also threads that existed before it.",
    ),
    (
        "--heapgate-include-tracers",
        None,
        "heapgate_include_tracers",
        "bool",
        None,
        "Also charge a test for what trace, profile and sys.monitoring callbacks (coverage, profilers, "
        "debuggers) allocate while it runs (default: not the test's memory).",
    ),
    (
        "--heapgate-warmup",
        None,
        "heapgate_warmup",
        "value",
        "N",
        "Run each tracked test's call N times untracked before the measured call.",
    ),
    (
        "--heapgate-repeat",
        None,
        "heapgate_repeat",
        "value",
        "N",
        "Run each tracked test's call N times and fail a test whose live memory grows on each run after the first.",
    ),
    (
        "--heapgate-repeat-threshold",
        None,
        "heapgate_repeat_threshold",
        "value",
        "SIZE",
        "With --heapgate-repeat: growth per run allowed (default 0, after rounding to 16 bytes).",
    ),
)

# (namespaced ini, memray's bare ini or None, type, help); the flag with the same dest wins.
_INIS: tuple[tuple[str, Optional[str], str, str], ...] = (
    ("heapgate", None, "bool", "Track every test (as --heapgate)."),
    ("heapgate_native", "native", "bool", "Record native stacks (as --heapgate-native)."),
    ("heapgate_stacks", "stacks", "string", "Frames shown per stack (as --heapgate-stacks)."),
    ("heapgate_most_allocations", "most_allocations", "string", "Tests shown in the summary (as --heapgate-most-allocations)."),
    ("hide_heapgate_summary", None, "bool", "Hide the summary (as --hide-heapgate-summary)."),
    (
        "heapgate_trace_python_allocators",
        "trace_python_allocators",
        "bool",
        "No effect (as --heapgate-trace-python-allocators).",
    ),
    ("heapgate_fail_on_increase", "fail-on-increase", "bool", "Fail tests whose peak grew since the previous run."),
    ("heapgate_save", None, "string", "Baseline file to write (as --heapgate-save), relative to the rootdir."),
    ("heapgate_compare", None, "string", "Baseline file to compare with (as --heapgate-compare), relative to the rootdir."),
    ("heapgate_max_increase", None, "string", "Peak growth allowed against the baseline, e.g. '10%'."),
    ("heapgate_min_increase", None, "string", "Peak growth that never fails, e.g. '64KiB'."),
    ("heapgate_include_fixtures", None, "bool", "Count fixture setup in the peak (as --heapgate-include-fixtures)."),
    ("heapgate_limit_memory", None, "string", "Peak limit for tests without a limit_memory marker, e.g. '200MB'."),
    ("heapgate_limit_leaks", None, "string", "Leak limit per location for tests without a limit_leaks marker."),
    ("heapgate_all_threads", None, "bool", "Charge every thread's allocations (as --heapgate-all-threads)."),
    ("heapgate_include_tracers", None, "bool", "Charge what tracers' callbacks allocate (as --heapgate-include-tracers)."),
    ("heapgate_warmup", None, "string", "Untracked runs of each tracked test's call first (as --heapgate-warmup)."),
    ("heapgate_repeat", None, "string", "Runs of each tracked test's call (as --heapgate-repeat)."),
    ("heapgate_repeat_threshold", None, "string", "Live-memory growth per run allowed with repeat."),
)


def _is_size(text: str) -> bool:
    try:
        parse_size(int(text) if text.isdigit() else text)
    except LimitError:
        return False
    return True


# Where words that followed an optional-value flag but are not its value wait (see below).
_HANDED_BACK = "heapgate_handed_back"


class _OptionalSize(argparse.Action):
    """An optional size value (``nargs="?"``): argparse gives such a flag the next word
    whatever it is, so ``--native-leaks tests/`` would read the path as the limit. A word that
    is not a size is handed back as a positional argument (through argparse's own list of
    unrecognised arguments, which pytest turns into test paths) and the flag takes its
    ``const``. The word is also noted, so that ``--native-leaks=WORD``, which argparse does
    not tell apart from the space form, is still reported as a bad value (``_check_handed_back``)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Optional[str] = None,
    ) -> None:
        if values is None or _is_size(str(values)):
            setattr(namespace, self.dest, self.const if values is None else values)
            return
        setattr(namespace, self.dest, self.const)
        vars(namespace).setdefault("_unrecognized_args", []).append(values)
        handed_back = list(getattr(namespace, _HANDED_BACK, None) or [])
        setattr(namespace, _HANDED_BACK, handed_back + [(option_string, values)])


def _check_handed_back(config: pytest.Config) -> None:
    """``--flag=WORD`` with a WORD that is no size: a usage error naming the flag (argparse
    gives the action the same value for ``--flag=WORD`` and ``--flag WORD``, so the command
    line, with pytest's addopts, tells which was written)."""
    handed_back = getattr(config.option, _HANDED_BACK, None) or []
    if not handed_back:
        return
    args = [str(a) for a in config.invocation_params.args]
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    try:
        args += [str(a) for a in config.getini("addopts")]
    except (ValueError, pytest.UsageError):  # pragma: no cover - addopts is always registered
        pass
    for flag, word in handed_back:
        if f"{flag}={word}" in args:
            raise pytest.UsageError(f"heapgate: invalid {flag} limit {word!r}: expected {ACCEPTED_FORMS}")


def add_options(parser: pytest.Parser, group: Any) -> None:
    """Register heapgate's flags and ini keys (bare memray names only when they are free)."""
    bare = not memray_installed()
    group.addoption(
        "--native-leaks",
        action=_OptionalSize,
        nargs="?",
        const="0",
        default=None,
        metavar="LIMIT",
        help="Check every test for memory lost by native code (definitely and indirectly lost, "
        "by reachability, like valgrind); fail above LIMIT (default 0). Implies --native. A word "
        "after it that is not a size is a test path: write --native-leaks=SIZE or --native-leaks-limit.",
    )
    group.addoption(
        "--native-leaks-limit",
        default=None,
        metavar="SIZE",
        help="Check every test for memory lost by native code (as --native-leaks) and fail above SIZE.",
    )
    for flag, memray_flag, dest, kind, metavar, help_text in _FLAGS:
        names = [flag] + ([memray_flag] if bare and memray_flag else [])
        help_text = help_text.replace("%", "%%") if "%%" not in help_text else help_text
        if kind == "bool":
            group.addoption(*names, dest=dest, action="store_true", default=None, help=help_text)
        else:
            group.addoption(*names, dest=dest, default=None, metavar=metavar, help=help_text)
    for name, memray_name, kind, help_text in _INIS:
        ini_type: Any = kind
        default: Any = False if kind == "bool" else ""
        parser.addini(name, help_text, type=ini_type, default=default)
        if bare and memray_name:
            parser.addini(memray_name, f"{help_text} (pytest-memray's name)", type=ini_type, default=default)


def _ini(config: pytest.Config, name: str) -> Any:
    """An ini key's value; an unreadable one is a usage error naming the key."""
    try:
        return config.getini(name)
    except (pytest.UsageError, ValueError) as e:
        if "unknown configuration value" in str(e):
            return None  # a bare name owned by pytest-memray: not ours
        raise pytest.UsageError(f"heapgate: ini option {name}: {e}") from None


def _value(config: pytest.Config, dest: str) -> tuple[Any, str]:
    """The value and where it came from: the flag, the namespaced ini key, memray's ini key."""
    flag = config.getoption(dest)
    flag_name = next(f for f, _, d, _, _, _ in _FLAGS if d == dest)
    if flag is not None:
        return flag, flag_name
    for name, memray_name, kind, _ in _INIS:
        if name != dest.replace("-", "_"):
            continue
        for key in (name, memray_name):
            if key is None:
                continue
            value = _ini(config, key)
            if kind == "bool" and value:
                return True, f"ini option {key}"
            if kind == "string" and value not in ("", None):
                return str(value).strip(), f"ini option {key}"
        return (False if kind == "bool" else None), flag_name
    raise AssertionError(dest)  # pragma: no cover


def _whole(config: pytest.Config, dest: str, minimum: int) -> Optional[int]:
    value, where = _value(config, dest)
    if value in ("", None):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise pytest.UsageError(f"heapgate: {where} must be a whole number, not {value!r}") from None
    if number < minimum:
        raise pytest.UsageError(f"heapgate: {where} must be at least {minimum}, not {number}")
    return number


def _percent(config: pytest.Config, dest: str) -> Decimal:
    value, where = _value(config, dest)
    text = str(value if value is not None else DEFAULT_MAX_INCREASE).strip()
    try:
        number = Decimal(text[:-1].strip() if text.endswith("%") else text)
    except InvalidOperation:
        number = Decimal(-1)
    if not number.is_finite() or number < 0:
        raise pytest.UsageError(
            f"heapgate: {where} must be a non-negative percentage such as '10%' or '2.5', not {text!r}"
        )
    return number


def _size(config: pytest.Config, dest: str, default: Optional[str] = None) -> Optional[int]:
    """A size option in bytes (a leading '+' allowed); unset gives ``default`` (None: no value)."""
    value, where = _value(config, dest)
    if value in ("", None):
        if default is None:
            return None
        value = default
    text = str(value).strip().lstrip("+")
    try:
        return parse_size(int(text) if text.isdigit() else text, where)
    except LimitError as e:
        raise pytest.UsageError(f"heapgate: {e}") from None


def _path(config: pytest.Config, dest: str) -> Optional[Path]:
    """A file flag is relative to the invocation directory, an ini key to the rootdir."""
    value, where = _value(config, dest)
    if value in ("", None):
        return None
    base = config.invocation_params.dir if where.startswith("--") else config.rootpath
    return Path(base, str(value))


def native_leaks_limit(config: pytest.Config) -> Optional[int]:
    """--native-leaks[=LIMIT], --native-leaks-limit=SIZE or ini native_leaks: the limit every
    test is checked against, or None (no native leak check by default)."""
    _check_handed_back(config)
    flag, limit_flag = config.getoption("native_leaks"), config.getoption("native_leaks_limit")
    try:
        if limit_flag is not None:
            limit = _parse_flag_size(limit_flag, "--native-leaks-limit")
            if flag is not None and flag != "0" and _parse_flag_size(flag, "--native-leaks limit") != limit:
                raise pytest.UsageError(
                    f"heapgate: --native-leaks={flag} and --native-leaks-limit={limit_flag} disagree; give one"
                )
            return limit
        value = flag if flag is not None else str(config.getini("native_leaks")).strip()
        if value in ("", None) or str(value).lower() in ("false", "no", "off"):
            return None
        if str(value).lower() in ("true", "yes", "on"):
            return 0
        return _parse_flag_size(str(value), "--native-leaks limit")
    except LimitError as e:
        raise pytest.UsageError(f"heapgate: {e}") from None


def _parse_flag_size(text: str, what: str) -> int:
    text = text.strip()
    return parse_size(int(text) if text.isdigit() else text, what)


@dataclass(frozen=True)
class Settings:
    """What the session's options say, checked."""

    track_all: bool
    native: bool
    hide_summary: bool
    most_allocations: int
    max_frames: Optional[int]
    trace_python_allocators: bool
    fail_on_increase: bool
    save: Optional[Path]
    compare: Optional[Path]
    max_increase: Decimal
    min_increase: int
    include_fixtures: bool
    limit_memory: Optional[int]
    limit_leaks: Optional[int]
    all_threads: bool
    include_tracers: bool
    warmup: int
    repeat: int
    repeat_threshold: int


def read_settings(config: pytest.Config) -> Settings:
    """Every heapgate option, validated (a usage error names the bad one)."""
    most = _whole(config, "heapgate_most_allocations", 0)
    save = _path(config, "heapgate_save")
    compare = _path(config, "heapgate_compare")
    repeat = _whole(config, "heapgate_repeat", 1) or 1
    return Settings(
        # Baselines and repeat-run growth concern every test, not only marked ones.
        track_all=bool(_value(config, "heapgate")[0]) or save is not None or compare is not None or repeat > 1,
        native=bool(_value(config, "heapgate_native")[0]),
        hide_summary=bool(_value(config, "hide_heapgate_summary")[0]),
        most_allocations=DEFAULT_MOST_ALLOCATIONS if most is None else most,
        max_frames=_whole(config, "heapgate_stacks", 1),
        trace_python_allocators=bool(_value(config, "heapgate_trace_python_allocators")[0]),
        fail_on_increase=bool(_value(config, "heapgate_fail_on_increase")[0]),
        save=save,
        compare=compare,
        max_increase=_percent(config, "heapgate_max_increase"),
        min_increase=_size(config, "heapgate_min_increase", DEFAULT_MIN_INCREASE) or 0,
        include_fixtures=bool(_value(config, "heapgate_include_fixtures")[0]),
        limit_memory=_size(config, "heapgate_limit_memory"),
        limit_leaks=_size(config, "heapgate_limit_leaks"),
        all_threads=bool(_value(config, "heapgate_all_threads")[0]),
        include_tracers=bool(_value(config, "heapgate_include_tracers")[0]),
        warmup=_whole(config, "heapgate_warmup", 0) or 0,
        repeat=repeat,
        repeat_threshold=_size(config, "heapgate_repeat_threshold") or 0,
    )
