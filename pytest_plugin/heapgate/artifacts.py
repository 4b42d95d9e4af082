"""Files heapgate leaves in ``--heapgate-dir``: per-test capture files and flamegraphs, the
session's ``heapgate.json`` and ``heapgate-junit.xml``.

Names come from the node id, made safe: only ``A-Z a-z 0-9 . _ -`` survive, no leading dot,
no ``..``, at most :data:`MAX_STEM` characters, and a short hash of the full node id keeps
names distinct and the same run to run.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    from ._native import Record, SessionReport

__all__ = [
    "CAPTURE_SUFFIX",
    "JSON_NAME",
    "JUNIT_NAME",
    "MAX_STEM",
    "ArtifactDir",
    "DirError",
    "Written",
    "process_facts",
    "safe_name",
    "write_atomically",
    "write_text_atomically",
]

CAPTURE_SUFFIX = ".heapgate"
JSON_NAME = "heapgate.json"
JUNIT_NAME = "heapgate-junit.xml"
MAX_STEM = 80

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_DOTS = re.compile(r"\.{2,}")


def safe_name(nodeid: str) -> str:
    """A file-name stem for ``nodeid``: safe characters only, capped, with a stable hash."""
    digest = hashlib.sha256(nodeid.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    stem = _DOTS.sub(".", _UNSAFE.sub("_", nodeid)).strip("._-")
    stem = stem[:MAX_STEM].rstrip("._-") or "test"
    return f"{stem}-{digest}"


def process_facts(rootdir: Optional[Path]) -> dict[str, Optional[str]]:
    """What captures and the session report say about this process."""
    return {
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable or None,
        "rootdir": str(rootdir) if rootdir is not None else None,
    }


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then rename it to ``path``: a reader,
    a crash or a full disk leaves the old file or the new one, never a truncated one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """``path.write_text(text)`` through :func:`write_atomically`."""
    write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


class DirError(Exception):
    """The artifact directory cannot be used; the message names it and says why."""


@dataclass
class Written:
    """Files written for one test, relative to the directory."""

    capture: Optional[str] = None
    flamegraph: Optional[str] = None


class ArtifactDir:
    """The ``--heapgate-dir`` directory, created and checked for writing up front."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".heapgate-probe-", dir=path)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            reason = e.strerror or str(e)
            raise DirError(f"heapgate: --heapgate-dir {str(path)!r} is not a writable directory: {reason}") from None

    def write_test(self, record: Record) -> Written:
        """Capture file and flamegraph SVG of one test."""
        stem = safe_name(record.nodeid)
        capture = f"{stem}{CAPTURE_SUFFIX}"
        svg = f"{stem}.svg"
        write_atomically(self.path / capture, lambda temporary: record.write(str(temporary)))
        write_text_atomically(self.path / svg, record.flamegraph_svg())
        return Written(capture, svg)

    @property
    def json_path(self) -> Path:
        return self.path / JSON_NAME

    @property
    def junit_path(self) -> Path:
        return self.path / JUNIT_NAME

    def write_session(self, session: SessionReport) -> None:
        """``heapgate.json`` and ``heapgate-junit.xml`` of the session (with pytest-xdist, of
        every worker's tests)."""
        write_text_atomically(self.json_path, session.to_json())
        write_text_atomically(self.junit_path, session.junit(str(self.path.resolve())))
