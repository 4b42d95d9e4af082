"""heapgate's command-line flags and ini keys, and the settings a session reads from them.

Every option has a namespaced form (``--heapgate-native``, ini ``heapgate_native``). The bare
names pytest-memray 1.11 uses (``--native``, ``--stacks``, ``--most-allocations``,
``--trace-python-allocators``, ``--fail-on-increase``, ini ``native``, ``stacks``,
``most_allocations``, ``trace_python_allocators``, ``fail-on-increase``) are registered too,
so a suite migrates by renaming ``--memray`` — unless pytest-memray itself is installed: then
those names are pytest-memray's (pytest refuses two options with one name), and heapgate
answers to its namespaced forms only, so both plugins load side by side.

Each option is one row of ``OPTIONS``: ``add_options`` registers its flags and ini keys from
it, ``read_settings`` reads them from it; nothing else registers or reads a heapgate option. A
bad value (a flag's or an ini key's) is a usage error naming the option, before any test runs.

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
from typing import Any, Callable, Optional

import pytest

from .limits import ACCEPTED_FORMS, LimitError, parse_size

__all__ = ["OPTIONS", "Option", "Settings", "add_options", "memray_installed", "read_settings"]

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


Parser = Callable[[str, str, Path], Any]  # (value, where it came from, base directory) -> setting


def _whole(minimum: int) -> Parser:
    def parse(value: str, where: str, base: Path) -> int:
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise pytest.UsageError(f"heapgate: {where} must be a whole number, not {value!r}") from None
        if number < minimum:
            raise pytest.UsageError(f"heapgate: {where} must be at least {minimum}, not {number}")
        return number

    return parse


def _percent(value: str, where: str, base: Path) -> Decimal:
    text = value.strip()
    try:
        number = Decimal(text[:-1].strip() if text.endswith("%") else text)
    except InvalidOperation:
        number = Decimal(-1)
    if not number.is_finite() or number < 0:
        raise pytest.UsageError(
            f"heapgate: {where} must be a non-negative percentage such as '10%' or '2.5', not {text!r}"
        )
    return number


def _size(value: str, where: str, base: Path) -> int:
    """A size in bytes (a leading '+' allowed)."""
    text = value.strip().lstrip("+")
    try:
        return parse_size(int(text) if text.isdigit() else text, where)
    except LimitError as e:
        raise pytest.UsageError(f"heapgate: {e}") from None


def _path(value: str, where: str, base: Path) -> Path:
    """A file flag is relative to the invocation directory, an ini key to the rootdir (``base``)."""
    return Path(base, value)


def _native_leaks(value: str, where: str, base: Path) -> Optional[int]:
    """``--native-leaks`` (its const is "0") or ini ``native_leaks``: a limit, or a yes/no."""
    text = value.strip()
    if text.lower() in ("false", "no", "off"):
        return None
    if text.lower() in ("true", "yes", "on"):
        return 0
    label = "--native-leaks limit" if where.startswith("--") else where
    try:
        return parse_size(int(text) if text.isdigit() else text, label)
    except LimitError as e:
        raise pytest.UsageError(f"heapgate: {e}") from None


@dataclass(frozen=True)
class Option:
    """One option: its flag (and pytest-memray's name for it, registered only when
    pytest-memray is absent), its ini key(s), how a given value is parsed, and the setting
    when it is not given. ``kind``: "bool" (a switch; ini type bool), "value" (one argument;
    ini type string) or "optional-size" (``--native-leaks[=LIMIT]``)."""

    setting: str  # the Settings field it fills
    flag: str
    help: str
    kind: str = "bool"
    parse: Optional[Parser] = None  # None: a switch, True when given
    default: Any = None
    metavar: Optional[str] = None
    memray_flag: Optional[str] = None
    ini: Optional[str] = None
    ini_help: str = ""
    memray_ini: Optional[str] = None

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option(
        "native_leaks",
        "--native-leaks",
        "Check every test for memory lost by native code (definitely and indirectly lost, "
        "by reachability, like valgrind); fail above LIMIT (default 0). Implies --native. A word "
        "after it that is not a size is a test path: write --native-leaks=SIZE or --native-leaks-limit.",
        kind="optional-size",
        parse=_native_leaks,
        metavar="LIMIT",
        ini="native_leaks",
        ini_help="Native leak check for every test: a limit such as 0 or '4KiB' (as --native-leaks).",
    ),
    Option(
        "native_leaks_limit",
        "--native-leaks-limit",
        "Check every test for memory lost by native code (as --native-leaks) and fail above SIZE.",
        kind="value",
        parse=_size,
        metavar="SIZE",
    ),
    Option(
        "track_all",
        "--heapgate",
        "Track every test (not only marked ones) and show the memory summary.",
        ini="heapgate",
        ini_help="Track every test (as --heapgate).",
    ),
    Option(
        "native",
        "--heapgate-native",
        "Also record native stacks (C/C++/Rust frames, symbolized lazily for reports).",
        memray_flag="--native",
        ini="heapgate_native",
        ini_help="Record native stacks (as --heapgate-native).",
        memray_ini="native",
    ),
    Option(
        "max_frames",
        "--heapgate-stacks",
        "Show at most N frames of each allocation stack in failures (default: all).",
        kind="value",
        parse=_whole(1),
        metavar="N",
        memray_flag="--stacks",
        ini="heapgate_stacks",
        ini_help="Frames shown per stack (as --heapgate-stacks).",
        memray_ini="stacks",
    ),
    Option(
        "most_allocations",
        "--heapgate-most-allocations",
        "Show the N tests with the highest peak in the summary (0: all; default 5).",
        kind="value",
        parse=_whole(0),
        default=DEFAULT_MOST_ALLOCATIONS,
        metavar="N",
        memray_flag="--most-allocations",
        ini="heapgate_most_allocations",
        ini_help="Tests shown in the summary (as --heapgate-most-allocations).",
        memray_ini="most_allocations",
    ),
    Option(
        "hide_summary",
        "--hide-heapgate-summary",
        "Do not show heapgate's summary at the end of the session.",
        ini="hide_heapgate_summary",
        ini_help="Hide the summary (as --hide-heapgate-summary).",
    ),
    Option(
        "trace_python_allocators",
        "--heapgate-trace-python-allocators",
        "Accepted for pytest-memray compatibility; no effect: heapgate always counts Python's allocators exactly.",
        memray_flag="--trace-python-allocators",
        ini="heapgate_trace_python_allocators",
        ini_help="No effect (as --heapgate-trace-python-allocators).",
        memray_ini="trace_python_allocators",
    ),
    Option(
        "fail_on_increase",
        "--heapgate-fail-on-increase",
        "Fail a test with a limit_memory marker whose peak is higher than in its previous run "
        "(kept in pytest's cache, as pytest-memray does).",
        memray_flag="--fail-on-increase",
        ini="heapgate_fail_on_increase",
        ini_help="Fail tests whose peak grew since the previous run.",
        memray_ini="fail-on-increase",
    ),
    Option(
        "save",
        "--heapgate-save",
        "Write a baseline of every test's peak and leaked bytes to FILE (JSON, meant to be committed).",
        kind="value",
        parse=_path,
        metavar="FILE",
        ini="heapgate_save",
        ini_help="Baseline file to write (as --heapgate-save), relative to the rootdir.",
    ),
    Option(
        "compare",
        "--heapgate-compare",
        "Compare every test's peak with the baseline FILE; fail those that grew beyond the tolerance.",
        kind="value",
        parse=_path,
        metavar="FILE",
        ini="heapgate_compare",
        ini_help="Baseline file to compare with (as --heapgate-compare), relative to the rootdir.",
    ),
    Option(
        "max_increase",
        "--heapgate-max-increase",
        f"With --heapgate-compare: growth of a test's peak allowed, in percent (default {DEFAULT_MAX_INCREASE}).",
        kind="value",
        parse=_percent,
        default=_percent(DEFAULT_MAX_INCREASE, "", Path()),
        metavar="PCT",
        ini="heapgate_max_increase",
        ini_help="Peak growth allowed against the baseline, e.g. '10%'.",
    ),
    Option(
        "min_increase",
        "--heapgate-min-increase",
        f"With --heapgate-compare: growth smaller than SIZE never fails (default {DEFAULT_MIN_INCREASE}).",
        kind="value",
        parse=_size,
        default=_size(DEFAULT_MIN_INCREASE, "", Path()),
        metavar="SIZE",
        ini="heapgate_min_increase",
        ini_help="Peak growth that never fails, e.g. '64KiB'.",
    ),
    Option(
        "include_fixtures",
        "--heapgate-include-fixtures",
        "Count the allocations of the fixtures set up for a test in its peak (default: the call only).",
        ini="heapgate_include_fixtures",
        ini_help="Count fixture setup in the peak (as --heapgate-include-fixtures).",
    ),
    Option(
        "limit_memory",
        "--heapgate-limit-memory",
        "Limit the peak of every test that has no limit_memory marker (e.g. 200MB).",
        kind="value",
        parse=_size,
        metavar="SIZE",
        ini="heapgate_limit_memory",
        ini_help="Peak limit for tests without a limit_memory marker, e.g. '200MB'.",
    ),
    Option(
        "limit_leaks",
        "--heapgate-limit-leaks",
        "Limit the leaked memory per location of every test that has no limit_leaks marker (e.g. 1MB).",
        kind="value",
        parse=_size,
        metavar="SIZE",
        ini="heapgate_limit_leaks",
        ini_help="Leak limit per location for tests without a limit_leaks marker.",
    ),
    Option(
        "all_threads",
        "--heapgate-all-threads",
        "Charge a test for every thread's allocations during its call, also threads that existed before it.",
        ini="heapgate_all_threads",
        ini_help="Charge every thread's allocations (as --heapgate-all-threads).",
    ),
    Option(
        "include_tracers",
        "--heapgate-include-tracers",
        "Also charge a test for what trace, profile and sys.monitoring callbacks (coverage, profilers, "
        "debuggers) allocate while it runs (default: not the test's memory).",
        ini="heapgate_include_tracers",
        ini_help="Charge what tracers' callbacks allocate (as --heapgate-include-tracers).",
    ),
    Option(
        "warmup",
        "--heapgate-warmup",
        "Run each tracked test's call N times untracked before the measured call.",
        kind="value",
        parse=_whole(0),
        default=0,
        metavar="N",
        ini="heapgate_warmup",
        ini_help="Untracked runs of each tracked test's call first (as --heapgate-warmup).",
    ),
    Option(
        "repeat",
        "--heapgate-repeat",
        "Run each tracked test's call N times and fail a test whose live memory grows on each run after the first.",
        kind="value",
        parse=_whole(1),
        default=1,
        metavar="N",
        ini="heapgate_repeat",
        ini_help="Runs of each tracked test's call (as --heapgate-repeat).",
    ),
    Option(
        "repeat_threshold",
        "--heapgate-repeat-threshold",
        "With --heapgate-repeat: growth per run allowed (default 0, after rounding to 16 bytes).",
        kind="value",
        parse=_size,
        default=0,
        metavar="SIZE",
        ini="heapgate_repeat_threshold",
        ini_help="Live-memory growth per run allowed with repeat.",
    ),
    Option(
        "suppressions",
        "--native-leaks-suppressions",
        "LeakSanitizer-style suppressions ('leak:PATTERN' lines) for --native-leaks.",
        kind="value",
        parse=_path,
        metavar="FILE",
        ini="native_leaks_suppressions",
        ini_help="Suppressions file for the native leak check.",
    ),
    Option(
        "artifacts_dir",
        "--heapgate-dir",
        "Write a capture file and a flamegraph SVG for each test that failed a memory check, "
        "plus heapgate.json and heapgate-junit.xml for the session, to DIR.",
        kind="value",
        parse=_path,
        metavar="DIR",
        ini="heapgate_dir",
        ini_help="Directory for reports and artifacts (as --heapgate-dir).",
    ),
    Option(
        "artifacts_all",
        "--heapgate-dir-all",
        "With --heapgate-dir: write a capture file and flamegraph for every tracked test.",
        ini="heapgate_dir_all",
        ini_help="Artifacts for every tracked test (as --heapgate-dir-all).",
    ),
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


def add_options(parser: pytest.Parser) -> None:
    """Register every option of ``OPTIONS`` (pytest-memray's bare names only when they are free)."""
    group = parser.getgroup("heapgate", "exact memory assertions (heapgate)")
    bare = not memray_installed()
    for option in OPTIONS:
        names = [option.flag] + ([option.memray_flag] if bare and option.memray_flag else [])
        help_text = option.help.replace("%", "%%")
        if option.kind == "bool":
            group.addoption(*names, dest=option.dest, action="store_true", default=None, help=help_text)
        elif option.kind == "optional-size":
            # The limit is optional: the const when the flag stands alone (see _OptionalSize).
            group.addoption(
                *names,
                dest=option.dest,
                action=_OptionalSize,
                nargs="?",
                const="0",
                default=None,
                metavar=option.metavar,
                help=help_text,
            )
        else:
            group.addoption(*names, dest=option.dest, default=None, metavar=option.metavar, help=help_text)
        ini_type: Any = "bool" if option.kind == "bool" else "string"
        ini_default: Any = False if option.kind == "bool" else ""
        if option.ini is not None:
            parser.addini(option.ini, option.ini_help, type=ini_type, default=ini_default)
        if bare and option.memray_ini is not None:
            parser.addini(option.memray_ini, f"{option.ini_help} (pytest-memray's name)", type=ini_type, default=ini_default)


def _ini(config: pytest.Config, name: str) -> Any:
    """An ini key's value; an unreadable one is a usage error naming the key."""
    try:
        return config.getini(name)
    except (pytest.UsageError, ValueError) as e:
        if "unknown configuration value" in str(e):
            return None  # a bare name owned by pytest-memray: not ours
        raise pytest.UsageError(f"heapgate: ini option {name}: {e}") from None


def _given(config: pytest.Config, option: Option) -> Optional[tuple[Any, str, Path]]:
    """The value given, where (the flag; the namespaced ini key; memray's) and the directory a
    path is relative to; None when neither the flag nor an ini key gives one."""
    flag = config.getoption(option.dest)
    if flag not in (None, ""):
        return flag, option.flag, config.invocation_params.dir
    for key in (option.ini, option.memray_ini):
        value = None if key is None else _ini(config, key)
        if option.kind == "bool" and value:
            return True, f"ini option {key}", config.rootpath
        if option.kind != "bool" and value not in ("", None):
            return str(value).strip(), f"ini option {key}", config.rootpath
    return None


def _read(config: pytest.Config, option: Option) -> Any:
    given = _given(config, option)
    if given is None:
        return False if option.parse is None else option.default
    value, where, base = given
    return True if option.parse is None else option.parse(str(value), where, base)


def _check_native_leaks(config: pytest.Config, limit: Optional[int], exact: Optional[int]) -> Optional[int]:
    """--native-leaks[=LIMIT] and --native-leaks-limit=SIZE: one limit (the second wins over
    ``native_leaks`` in the ini file; two different limits on the command line are an error)."""
    _check_handed_back(config)
    if exact is None:
        return limit
    flag = config.getoption("native_leaks")
    if flag is not None and flag != "0" and limit != exact:
        limit_flag = config.getoption("native_leaks_limit")
        raise pytest.UsageError(f"heapgate: --native-leaks={flag} and --native-leaks-limit={limit_flag} disagree; give one")
    return exact


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
    # The native leak limit every test is checked against; None: no check by default.
    native_leaks: Optional[int]
    suppressions: Optional[Path]
    artifacts_dir: Optional[Path]
    artifacts_all: bool


def read_settings(config: pytest.Config) -> Settings:
    """Every heapgate option, validated (a usage error names the bad one)."""
    values = {option.setting: _read(config, option) for option in OPTIONS}
    values["native_leaks"] = _check_native_leaks(config, values["native_leaks"], values.pop("native_leaks_limit"))
    # Baselines and repeat-run growth concern every test, not only marked ones.
    values["track_all"] = (
        values["track_all"] or values["save"] is not None or values["compare"] is not None or values["repeat"] > 1
    )
    return Settings(**values)
