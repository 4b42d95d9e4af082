"""Type stubs for heapgate's Rust core (rust/python)."""

from decimal import Decimal
from types import CodeType, FrameType
from typing import Callable, ClassVar, Mapping, Optional, Sequence, final

__all__ = [
    "start",
    "stop",
    "checkpoint",
    "_keep_word_in_own_memory",
    "is_active",
    "install",
    "hooks_installed",
    "check_supported",
    "leak_explanations",
    "Report",
    "Site",
    "LeakKinds",
    "LeakTally",
    "StackFrame",
    "FrameKind",
    "Allocator",
    "ThreadMode",
    "TrackingError",
    "Record",
    "SessionReport",
    "MAX_ANNOTATIONS",
    "ReportFileError",
    "Symbolizer",
    "ObjectDebugInfo",
    "loaded_objects",
    "scan_leaks",
    "collect_test_garbage",
    "clear_free_lists",
    "empty_free_lists_on_call",
    "format_size",
    "LeakStack",
    "limit_leaks_failure",
    "NativeLeakCheck",
    "native_leaks_check",
    "suppression_matches",
    "growth_failure",
    "Tolerance",
    "baseline_failure",
    "fail_on_increase_failure",
    "warmup_note",
]

class TrackingError(RuntimeError): ...

@final
class FrameKind:
    """What kind of code a frame is; str() gives 'python', 'native' or 'interpreter'."""

    PYTHON: ClassVar[FrameKind]
    NATIVE: ClassVar[FrameKind]
    INTERPRETER: ClassVar[FrameKind]
    def __int__(self) -> int: ...

@final
class Allocator:
    """The API an allocation came through; str() gives its name ('malloc', ...)."""

    MALLOC: ClassVar[Allocator]
    CALLOC: ClassVar[Allocator]
    REALLOC: ClassVar[Allocator]
    REALLOCARRAY: ClassVar[Allocator]
    POSIX_MEMALIGN: ClassVar[Allocator]
    ALIGNED_ALLOC: ClassVar[Allocator]
    MEMALIGN: ClassVar[Allocator]
    VALLOC: ClassVar[Allocator]
    PVALLOC: ClassVar[Allocator]
    MMAP: ClassVar[Allocator]
    PY_RAW: ClassVar[Allocator]
    PY_MEM: ClassVar[Allocator]
    PY_OBJ: ClassVar[Allocator]
    def __int__(self) -> int: ...
    @staticmethod
    def all() -> list[Allocator]: ...
    @staticmethod
    def from_name(name: str) -> Allocator: ...
    @property
    def name(self) -> str: ...
    @property
    def is_python(self) -> bool: ...

@final
class ThreadMode:
    """Whose allocations a tracked test is charged for; str() gives its name
    ('current_thread', 'spawned' or 'all')."""

    CURRENT_THREAD: ClassVar[ThreadMode]
    SPAWNED: ClassVar[ThreadMode]
    ALL: ClassVar[ThreadMode]
    def __int__(self) -> int: ...
    @staticmethod
    def all() -> list[ThreadMode]: ...
    @staticmethod
    def from_name(name: str) -> ThreadMode: ...
    @property
    def name(self) -> str: ...

@final
class StackFrame:
    function: str
    filename: Optional[str]
    lineno: int
    address: Optional[int]
    module: Optional[str]
    inlined: bool
    kind: FrameKind
    def format(self, rootpath: Optional[str] = None) -> str: ...


@final
class LeakTally:
    """Bytes and blocks of one kind of live memory."""

    @property
    def bytes(self) -> int: ...
    @property
    def count(self) -> int: ...

@final
class LeakKinds:
    """Live memory at the end of a test by reachability (the leak scan's verdict)."""

    @property
    def definitely_lost(self) -> LeakTally: ...
    @property
    def indirectly_lost(self) -> LeakTally: ...
    @property
    def possibly_lost(self) -> LeakTally: ...
    @property
    def still_reachable(self) -> LeakTally: ...
    @property
    def lost(self) -> LeakTally:
        """Definitely + indirectly + possibly lost: what fails a native-leak check."""

@final
class Site:
    allocator: Allocator
    bytes_at_peak: int
    count_at_peak: int
    leaked_bytes: int
    leaked_count: int
    total_bytes: int
    total_count: int
    stack: tuple[StackFrame, ...]
    leak_kinds: Optional[LeakKinds]

@final
class Report:
    peak_bytes: int
    peak_count: int
    total_bytes: int
    total_count: int
    leaked_bytes: int
    leaked_count: int
    sites: list[Site]
    leak_kinds: Optional[LeakKinds]
    # Why the numbers cannot be trusted (Python's allocator replaced during the test), or None.
    interpreter_problem: Optional[str]
    def peak_failure(
        self,
        limit: int,
        thread_mode: ThreadMode = ThreadMode.SPAWNED,
        include_tracers: bool = False,
        rootpath: Optional[str] = None,
        max_sites: int = 5,
        max_frames: Optional[int] = None,
    ) -> str: ...
    def record(
        self,
        nodeid: str,
        outcome: str,
        failure: Optional[str],
        limit: Optional[int],
        thread_mode: ThreadMode,
        include_tracers: bool,
        facts: Mapping[str, Optional[str]],
        limit_leaks: Optional[int] = None,
        native_leaks: Optional[int] = None,
    ) -> Record: ...

# --- reports and artifacts (rust/python/src/records.rs) ---

class ReportFileError(ValueError): ...

@final
class Record:
    """One test's capture (rust/core/src/record): written, read, rendered."""

    nodeid: str
    outcome: str
    memory_failed: bool
    peak_bytes: int
    leaked_bytes: int
    limit: Optional[int]
    heapgate_version: str
    @staticmethod
    def read(path: str) -> Record: ...
    def write(self, path: str) -> None: ...
    def flamegraph_svg(self) -> str: ...
    def folded(self, leaked: bool = False) -> str: ...
    def text(
        self, rootpath: Optional[str] = None, max_sites: int = 5, max_frames: Optional[int] = None
    ) -> str: ...
    def session_test(
        self,
        capture: Optional[str] = None,
        flamegraph: Optional[str] = None,
        *,
        locations: bool = True,
        limit_source: Optional[str] = None,
        native_leaks: bool = False,
        absorbed: Sequence[tuple[int, int, int]] = ...,
        problems: Sequence[str] = ...,
    ) -> str:
        """The test's record for SessionReport.add (JSON)."""

@final
class SessionReport:
    """The session report (heapgate.json) as one object: tests added as they finish, reports
    merged, and its JSON, JUnit, terminal table and GitHub summary rendered from it."""

    tracked: int
    memory_failures: int
    captures_written: int
    native_leak_checks: bool
    def __new__(cls, facts: Mapping[str, Optional[str]]) -> SessionReport: ...
    @staticmethod
    def read(path: str) -> SessionReport: ...
    @staticmethod
    def merge(paths: Sequence[str], out_dir: str) -> SessionReport: ...
    def add(self, test: str) -> None: ...
    def to_json(self) -> str: ...
    def junit(self, base: Optional[str] = None) -> str: ...
    def peaks(self) -> list[tuple[str, int, int]]: ...
    def limit_sources(self) -> tuple[int, int]: ...
    def absorbed(self, count: int) -> list[tuple[int, int]]: ...
    def problems(self) -> list[str]: ...
    def headline(self) -> str: ...
    def summary_lines(self, most: int) -> list[str]: ...
    def baseline_summary(
        self, name: str, baseline: Mapping[str, int], tolerance: Tolerance, most: int
    ) -> list[str]: ...
    def github(
        self,
        workspace: str,
        blob_url: Optional[str] = None,
        artifact: Optional[str] = None,
        run_url: Optional[str] = None,
        exit_code: Optional[int] = None,
        baseline: Optional[tuple[str, Mapping[str, int]]] = None,
        top: int = 5,
    ) -> tuple[str, list[str]]: ...

MAX_ANNOTATIONS: int  # GitHub shows at most this many error annotations of one step

# --- failure texts of the leak, growth and baseline checks (rust/python/src/texts.rs) ---

def format_size(size: int) -> str: ...

@final
class LeakStack:
    """What limit_leaks' filter_fn receives: the location's frames, allocating frame first."""

    frames: tuple[StackFrame, ...]

def limit_leaks_failure(
    report: Report,
    limit: int,
    filter_fn: Optional[Callable[[LeakStack], object]] = None,
    rootpath: Optional[str] = None,
    max_frames: Optional[int] = None,
) -> Optional[str]: ...

@final
class NativeLeakCheck:
    failure: Optional[str]
    reachable_bytes: int
    reachable_blocks: int
    reachable_text: Optional[str]
    absorbed: list[tuple[int, int, int]]  # (suppression index, lost bytes, lost blocks)

def native_leaks_check(
    report: Report,
    limit: int,
    suppressions: Sequence[tuple[str, str]],  # (pattern, "file:line")
    rootpath: Optional[str] = None,
    max_frames: Optional[int] = None,
    list_reachable: bool = True,
) -> NativeLeakCheck: ...
def suppression_matches(pattern: str, name: str) -> bool: ...
def growth_failure(
    totals: Sequence[int],
    checkpoints: Sequence[Report],
    threshold: int,
    rootpath: Optional[str] = None,
    max_frames: Optional[int] = None,
) -> Optional[str]: ...

@final
class Tolerance:
    def __new__(cls, max_increase: Decimal, min_increase: int) -> Tolerance: ...
    def exceeded(self, old: int, new: int) -> bool: ...

def baseline_failure(old: int, new: int, tolerance: Tolerance, source: str) -> Optional[str]: ...
def fail_on_increase_failure(previous: int, peak: int) -> Optional[str]: ...
def warmup_note(runs: int) -> str: ...

def start(
    entry_codes: Sequence[CodeType],
    boundary: Optional[FrameType] = None,
    mode: ThreadMode = ...,  # ThreadMode.SPAWNED
    native: bool = False,
    include_tracers: bool = False,
) -> None: ...
def stop() -> Report: ...
def checkpoint() -> Report:
    """The tracked test's numbers so far, without stopping (what is live now)."""
def is_active() -> bool: ...
def install() -> None: ...
def hooks_installed() -> bool:
    """Any hook installed in this process (GOT entries, Python allocator wrappers)?"""
def check_supported() -> None: ...
def scan_leaks() -> LeakKinds:
    """Classify the tracked test's live blocks by reachability (after gc.collect(), before
    stop()); per-site figures appear in the report's sites. Skipped (all zero, no kinds in the
    report) when no live block has a native origin."""
def leak_explanations() -> list[str]:
    """With HEAPGATE_EXPLAIN_LEAKS=1, where the last scan_leaks() found each reference to one of
    the test's blocks (and empties the list); empty without the variable."""

def _keep_word_in_own_memory(word: int) -> None:
    """For tests of the leak scan: keep `word` in a block of heapgate's own (untracked) heap
    memory until the process ends; the scan must not read it as a reference."""

def collect_test_garbage() -> bool:
    """Collect the tracked test's garbage before scan_leaks(): its own GC objects alone where the
    interpreter allows (a full collection costs what the process holds), else a full collection.
    Nothing when it holds no GC object or no live block has a native origin (the scan will not
    run). True when a collection ran."""

def clear_free_lists() -> bool:
    """Empty CPython's list, dict, tuple and float free lists (right before a call checked for
    native leaks). True when emptied directly, False when a collection did it."""

def empty_free_lists_on_call(function: object, on: bool) -> bool:
    """3.12: make a plain Python function empty the dict free lists as each of its calls
    starts, right before its frame is pushed (on=True), or stop it (on=False). False when left
    alone."""

# --- symbolizer (rust/python/src/symbols.rs): heapgate addr2line / doctor ---

@final
class ObjectDebugInfo:
    path: str
    build_id: Optional[str]
    # 'embedded', 'build-id', 'debuglink', 'debuginfod', 'symtab', 'minidebuginfo', 'none',
    # or 'unreadable' (see error)
    source: str
    debug_file: Optional[str]
    debuglink: Optional[str]
    error: Optional[str]

@final
class Symbolizer:
    def __new__(cls, on_message: Optional[Callable[[str], None]] = None) -> Symbolizer: ...
    def addr2line(self, argv: Sequence[str]) -> str: ...
    def symbolize(
        self, path: str, addresses: Sequence[int]
    ) -> list[list[tuple[Optional[str], Optional[str], int, bool]]]: ...
    def doctor(self, paths: Optional[Sequence[str]] = None) -> list[ObjectDebugInfo]: ...

def loaded_objects() -> list[str]: ...
