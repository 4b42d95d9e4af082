"""Builds for the native-stack tests (tests/test_native.py): the `hgsym` C extension with its
debug info embedded, stripped, and moved to separate files (found by build-id, by
.gnu_debuglink, or served by a loopback debuginfod), a C++ library built -O2 -g, and a tiny
debuginfod server."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import sysconfig
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import pytest

CSRC = Path(__file__).parent / "csrc"
HGSYM_C = CSRC / "hgsym.c"
EXT_SUFFIX = str(sysconfig.get_config_var("EXT_SUFFIX"))


def tool(name: str) -> str:
    """Path of a build tool; skips (with the reason) when it is missing."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install -y binutils gcc g++)")
    return found


def sh(*cmd: str | Path, cwd: Optional[Path] = None) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd)
    if done.returncode != 0:
        raise AssertionError(f"{cmd} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def build_id(path: Path) -> str:
    """The GNU build-id of an ELF file, as hex (via readelf)."""
    m = re.search(r"Build ID: ([0-9a-f]+)", sh(tool("readelf"), "-n", path))
    assert m, f"{path} has no build-id"
    return m.group(1)


def has_debug_sections(path: Path) -> bool:
    return ".debug_info" in sh(tool("readelf"), "-S", "-W", path)


def marked_lines(source: Path) -> dict[str, int]:
    """Line numbers of the `/* @line NAME */` markers in a source file."""
    found = {}
    for number, text in enumerate(source.read_text().splitlines(), 1):
        m = re.search(r"@line (\w+)", text)
        if m:
            found[m.group(1)] = number
    return found


@dataclass
class HgsymBuilds:
    """One directory per variant, each holding `hgsym<EXT_SUFFIX>` (importable as `hgsym`)."""

    root: Path
    dirs: dict[str, Path] = field(default_factory=dict)
    debug_root: Path = Path()  # a debug root holding .build-id/xx/rest.debug for "buildid"
    debuginfod_files: dict[str, Path] = field(default_factory=dict)  # build-id hex -> debug file
    build_id: str = ""

    def ext(self, variant: str) -> Path:
        return self.dirs[variant] / f"hgsym{EXT_SUFFIX}"


def _build_hgsym(out: Path) -> HgsymBuilds:
    gcc, strip, objcopy = tool("gcc"), tool("strip"), tool("objcopy")
    builds = HgsymBuilds(root=out)
    name = f"hgsym{EXT_SUFFIX}"

    def variant(key: str) -> Path:
        d = out / key
        d.mkdir()
        builds.dirs[key] = d
        return d / name

    dbg = variant("dbg")
    sh(gcc, "-shared", "-fPIC", "-g", "-O0", "-Wl,--build-id", "-I", sysconfig.get_paths()["include"], HGSYM_C, "-o", dbg)
    assert has_debug_sections(dbg)
    builds.build_id = build_id(dbg)

    shutil.copy(dbg, variant("strip_debug"))
    sh(strip, "--strip-debug", builds.ext("strip_debug"))
    shutil.copy(dbg, variant("strip_all"))
    sh(strip, "--strip-all", builds.ext("strip_all"))

    debug_file = out / "hgsym.debug"
    sh(objcopy, "--only-keep-debug", dbg, debug_file)

    # (a) found by build-id under a debug root (no debuglink in the object)
    shutil.copy(builds.ext("strip_all"), variant("buildid"))
    builds.debug_root = out / "debugroot"
    by_id = builds.debug_root / ".build-id" / builds.build_id[:2] / f"{builds.build_id[2:]}.debug"
    by_id.parent.mkdir(parents=True)
    shutil.copy(debug_file, by_id)

    # (b) found by .gnu_debuglink, in the object's .debug/ directory
    linked = variant("debuglink")
    shutil.copy(builds.ext("strip_all"), linked)
    sh(objcopy, f"--add-gnu-debuglink={debug_file}", linked)
    (linked.parent / ".debug").mkdir()
    shutil.copy(debug_file, linked.parent / ".debug" / debug_file.name)

    # (c) served by debuginfod
    shutil.copy(builds.ext("strip_all"), variant("debuginfod"))
    builds.debuginfod_files[builds.build_id] = debug_file

    for key in ("strip_debug", "strip_all", "buildid", "debuglink", "debuginfod"):
        assert not has_debug_sections(builds.ext(key)), key
        assert build_id(builds.ext(key)) == builds.build_id, key
    return builds


@pytest.fixture(scope="session")
def hgsym_builds(tmp_path_factory: pytest.TempPathFactory) -> HgsymBuilds:
    return _build_hgsym(tmp_path_factory.mktemp("hgsym"))


@pytest.fixture(scope="session")
def cpp_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`libhgsym_templates.so`, C++ built -O2 -g: inlined templates and lambdas."""
    out = tmp_path_factory.mktemp("hgsym_cpp") / "libhgsym_templates.so"
    sh(tool("g++"), "-shared", "-fPIC", "-O2", "-g", "-Wl,--build-id", CSRC / "hgsym_templates.cpp", "-o", out)
    return out


@pytest.fixture(scope="session")
def stripped_cpp_library(cpp_library: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The C++ library after `strip --strip-all` (only .dynsym names left)."""
    out = tmp_path_factory.mktemp("hgsym_cpp_stripped") / cpp_library.name
    shutil.copy(cpp_library, out)
    sh(tool("strip"), "--strip-all", out)
    return out


class DebuginfodServer:
    """A debuginfod server on 127.0.0.1 serving `/buildid/<hex>/debuginfo` from a dict."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                m = re.fullmatch(r"/buildid/([0-9a-f]+)/debuginfo", self.path)
                path = server.files.get(m.group(1)) if m else None
                if path is None:
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "DebuginfodServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def debuginfod_server(hgsym_builds: HgsymBuilds) -> Iterator[DebuginfodServer]:
    with DebuginfodServer(hgsym_builds.debuginfod_files) as server:
        yield server


def text_symbols(path: Path) -> list[tuple[str, int, int]]:
    """(name, address, size) of the defined, sized function symbols of an object (nm); those
    of .dynsym when the object is stripped (as distributions ship libstdc++ and zlib)."""
    found = []
    for table in ([], ["--dynamic"]):
        out = sh(tool("nm"), "--defined-only", "-S", *table, path)
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[2] in "tTwW" and int(parts[1], 16) > 0:
                found.append((parts[3], int(parts[0], 16), int(parts[1], 16)))
        if found:
            break
    return found
