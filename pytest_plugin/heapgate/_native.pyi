"""Type stubs for heapgate's Rust core (rust/python)."""

from types import CodeType, FrameType
from typing import Optional, Sequence

class TrackingError(RuntimeError): ...

class StackFrame:
    function: str
    filename: Optional[str]
    lineno: int
    address: Optional[int]
    module: Optional[str]
    inlined: bool
    kind: str  # 'python', 'native' or 'interpreter'


class Site:
    allocator: str
    bytes_at_peak: int
    count_at_peak: int
    leaked_bytes: int
    leaked_count: int
    total_bytes: int
    total_count: int
    stack: tuple[StackFrame, ...]

class Report:
    peak_bytes: int
    peak_count: int
    total_bytes: int
    total_count: int
    leaked_bytes: int
    leaked_count: int
    sites: list[Site]

def start(
    entry_codes: Sequence[CodeType],
    boundary: Optional[FrameType] = None,
    mode: str = "spawned",
    native: bool = False,
) -> None: ...
def stop() -> Report: ...
def is_active() -> bool: ...
def install() -> None: ...
