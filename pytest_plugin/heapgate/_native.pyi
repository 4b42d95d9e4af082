"""Type stubs for heapgate's Rust core (rust/python)."""

from types import CodeType, FrameType
from typing import Callable, Mapping, Optional, Sequence, final

__all__ = [
    "start",
    "stop",
    "checkpoint",
    "is_active",
    "install",
    "hooks_installed",
    "check_supported",
    "leak_explanations",
    "Report",
    "Site",
    "StackFrame",
    "TrackingError",
    "Record",
    "session_report",
    "read_session_report",
    "junit_from_session",
    "github_report",
    "MAX_ANNOTATIONS",
    "ReportFileError",
    "Symbolizer",
    "ObjectDebugInfo",
    "loaded_objects",
    "scan_leaks",
    "has_gc_candidates",
    "clear_free_lists",
    "FreeListsEmptiedCall",
]

class TrackingError(RuntimeError): ...

@final
class StackFrame:
    function: str
    filename: Optional[str]
    lineno: int
    address: Optional[int]
    module: Optional[str]
    inlined: bool
    kind: str  # 'python', 'native' or 'interpreter'
    def format(self, rootpath: Optional[str] = None) -> str: ...


@final
class Site:
    allocator: str
    bytes_at_peak: int
    count_at_peak: int
    leaked_bytes: int
    leaked_count: int
    total_bytes: int
    total_count: int
    stack: tuple[StackFrame, ...]
    # {definitely_lost,indirectly_lost,possibly_lost,still_reachable}_{bytes,count}
    leak_kinds: Optional[dict[str, int]]

@final
class Report:
    peak_bytes: int
    peak_count: int
    total_bytes: int
    total_count: int
    leaked_bytes: int
    leaked_count: int
    sites: list[Site]
    leak_kinds: Optional[dict[str, int]]
    # Why the numbers cannot be trusted (Python's allocator replaced during the test), or None.
    interpreter_problem: Optional[str]
    def peak_failure(
        self,
        limit: int,
        mode: str = "spawned",
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
        mode: str,
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

def session_report(
    tests: Sequence[tuple[Record, Optional[str], Optional[str]]],
    facts: Mapping[str, Optional[str]],
) -> str: ...
def read_session_report(path: str) -> str: ...
def junit_from_session(path: str, base: Optional[str] = None) -> str: ...
MAX_ANNOTATIONS: int  # GitHub shows at most this many error annotations of one step
def github_report(
    path: str,
    workspace: str,
    blob_url: Optional[str] = None,
    artifact: Optional[str] = None,
    run_url: Optional[str] = None,
    exit_code: Optional[int] = None,
    baseline: Optional[tuple[str, dict[str, int]]] = None,
    top: int = 5,
) -> tuple[str, list[str]]: ...

def start(
    entry_codes: Sequence[CodeType],
    boundary: Optional[FrameType] = None,
    mode: str = "spawned",  # or "current_thread", "all"; "+tracers" charges tracers' callbacks
    native: bool = False,
) -> None: ...
def stop() -> Report: ...
def checkpoint() -> Report:
    """The tracked test's numbers so far, without stopping (what is live now)."""
def is_active() -> bool: ...
def install() -> None: ...
def hooks_installed() -> bool:
    """Any hook installed in this process (GOT entries, Python allocator wrappers)?"""
def check_supported() -> None: ...
def scan_leaks() -> dict[str, int]:
    """Classify the tracked test's live blocks by reachability (after gc.collect(), before
    stop()): {definitely_lost,indirectly_lost,possibly_lost,still_reachable}_{bytes,count}."""
def leak_explanations() -> list[str]:
    """With HEAPGATE_EXPLAIN_LEAKS=1, where the last scan_leaks() found each reference to one of
    the test's blocks (and empties the list); empty without the variable."""

def has_gc_candidates() -> bool:
    """Does the tracked test hold a live object CPython's cyclic GC tracks (only then can a
    collection before the leak scan free one of its blocks)?"""

def clear_free_lists() -> bool:
    """Empty CPython's list, dict, tuple and float free lists (right before a call checked for
    native leaks). True when emptied directly, False when a full collection did it."""

@final
class FreeListsEmptiedCall:
    """A test function that empties CPython's free lists as the first thing of each call (as
    clear_free_lists()), then calls the function; other attributes are the function's."""

    __wrapped__: Callable[..., object]
    def __init__(self, function: Callable[..., object]) -> None: ...
    def __call__(self, *args: object, **kwargs: object) -> object: ...
    def __getattr__(self, name: str) -> object: ...

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
