"""Reports and artifacts end to end: --heapgate-dir (capture files, flamegraphs, heapgate.json,
heapgate-junit.xml), pytest's --junitxml properties, and the heapgate CLI over those files."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from heapgate.artifacts import MAX_STEM, safe_name
from heapgate.cli import main as cli_main

TESTS = """
import pytest, hgtest

def helper(n):
    hgtest.malloc_free(n)

@pytest.mark.limit_memory("1 MB")
def test_too_big():
    helper(3 * 1024 * 1024)

@pytest.mark.limit_memory("10 MB")
def test_fits():
    helper(1024 * 1024)

def test_untracked():
    pass
"""


def heapgate_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from heapgate.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def session(run, pytester: pytest.Pytester) -> tuple[pytest.RunResult, Path]:
    pytester.makepyfile(test_mem=TESTS)
    result = run("--heapgate-dir=out", "--native")
    return result, pytester.path / "out"


def captures(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.heapgate"))


def test_a_failing_test_leaves_capture_and_flamegraph(session: tuple[pytest.RunResult, Path]) -> None:
    result, out = session
    result.assert_outcomes(passed=2, failed=1)
    names = sorted(p.name for p in out.iterdir())
    stem = safe_name("test_mem.py::test_too_big")
    assert names == sorted([f"{stem}.heapgate", f"{stem}.svg", "heapgate.json", "heapgate-junit.xml"])
    assert (out / f"{stem}.heapgate").stat().st_size < 16 * 1024
    result.stdout.fnmatch_lines(["heapgate: heapgate.json, heapgate-junit.xml and 1 test capture in *out"])


def test_flamegraph_svg_is_xml_with_test_id_and_allocating_function(session: tuple[pytest.RunResult, Path]) -> None:
    _, out = session
    svg = next(out.glob("*.svg"))
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    text = " ".join(root.itertext())
    assert "test_mem.py::test_too_big" in text
    assert "helper (test_mem.py:4)" in text
    assert "malloc_free" in text  # the native frame of the C extension
    assert "3.0MiB, 3,145,728 bytes" in text


def test_session_json_lists_every_tracked_test(session: tuple[pytest.RunResult, Path]) -> None:
    _, out = session
    data = json.loads((out / "heapgate.json").read_text())
    assert data["schema"] == "heapgate-session" and data["version"] == 1
    assert data["session"]["tracked"] == 2 and data["session"]["memory_failures"] == 1
    assert data["session"]["python_version"] == ".".join(map(str, sys.version_info[:3]))
    tests = {t["nodeid"]: t for t in data["tests"]}
    assert set(tests) == {"test_mem.py::test_too_big", "test_mem.py::test_fits"}
    big = tests["test_mem.py::test_too_big"]
    assert big["outcome"] == "failed" and big["memory_failed"] is True
    assert big["limits"] == {
        "limit_memory": 1024 * 1024,
        "limit_leaks": None,
        "native_leaks": None,
        "thread_mode": "spawned",
    }
    assert big["peak_bytes"] >= 3 * 1024 * 1024
    assert big["failure"].startswith("Test was limited to 1.0MiB but allocated 3.0MiB at its peak")
    top = big["top_locations"][0]
    assert top["bytes_at_peak"] == 3 * 1024 * 1024 and top["allocator"] == "malloc"
    assert any(frame.startswith("helper (test_mem.py:4)") for frame in top["stack"])
    stem = safe_name("test_mem.py::test_too_big")
    assert big["artifacts"] == {"capture": f"{stem}.heapgate", "flamegraph": f"{stem}.svg"}
    fits = tests["test_mem.py::test_fits"]
    assert fits["outcome"] == "passed" and fits["artifacts"] == {"capture": None, "flamegraph": None}
    assert {"bytes", "count", "native_bytes", "python_bytes"} <= set(fits["leaked"])


def test_a_leak_failure_keeps_its_limits_and_text_in_every_report(run, pytester: pytest.Pytester) -> None:
    """A test that fails a leak check (not its peak) carries that check's limit and failure text
    into heapgate.json, and `heapgate report` prints the same text from the capture."""
    pytester.makepyfile(
        test_lk="""
        import pytest, hgleak

        @pytest.mark.limit_memory("10 MB")
        @pytest.mark.limit_leaks("1 KB")
        def test_leaks():
            hgleak.leak_malloc(100_000)
        """
    )
    result = run("--native-leaks", "--heapgate-dir=out", "-p", "no:logging")
    result.assert_outcomes(failed=1)
    out = pytester.path / "out"
    entry = json.loads((out / "heapgate.json").read_text())["tests"][0]
    assert entry["memory_failed"] is True
    assert entry["limits"] == {"limit_memory": 10 * 1024 * 1024, "limit_leaks": 1024, "native_leaks": 0, "thread_mode": "spawned"}
    assert entry["failure"] is not None and "peak" not in entry["failure"].splitlines()[0]
    assert entry["failure"].splitlines()[0] in result.stdout.str()
    printed = heapgate_cli("report", str(out / entry["artifacts"]["capture"]))
    assert printed.returncode == 1
    assert printed.stdout.strip() == entry["failure"].strip()


def test_heapgate_junit_has_failures_properties_and_attachments(session: tuple[pytest.RunResult, Path]) -> None:
    _, out = session
    root = ET.parse(out / "heapgate-junit.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert set(cases) == {"test_too_big", "test_fits"}
    big = cases["test_too_big"]
    failure = big.find("failure")
    assert failure is not None
    assert failure.get("message") == "Test was limited to 1.0MiB but allocated 3.0MiB at its peak"
    assert "helper at test_mem.py:4" in (failure.text or "")
    props = {p.get("name"): p.get("value") for p in big.iter("property")}
    assert props["heapgate_limit_bytes"] == str(1024 * 1024)
    assert int(props["heapgate_peak_bytes"] or 0) >= 3 * 1024 * 1024
    system_out = big.findtext("system-out") or ""
    svg = out.resolve() / f"{safe_name('test_mem.py::test_too_big')}.svg"
    assert f"[[ATTACHMENT|{svg}]]" in system_out
    assert cases["test_fits"].find("failure") is None


def test_dir_all_writes_every_tracked_test(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mem=TESTS)
    pytester.makeini("[pytest]\nheapgate_dir = reports\nheapgate_dir_all = true\n")
    result = run()
    result.assert_outcomes(passed=2, failed=1)
    assert len(captures(pytester.path / "reports")) == 2
    assert len(list((pytester.path / "reports").glob("*.svg"))) == 2


def test_file_names_are_stable_run_to_run(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mem=TESTS)
    run("--heapgate-dir=a", "--heapgate-dir-all")
    run("--heapgate-dir=b", "--heapgate-dir-all")
    assert [p.name for p in captures(pytester.path / "a")] == [p.name for p in captures(pytester.path / "b")]


def test_an_unwritable_dir_is_a_usage_error(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mem=TESTS)
    (pytester.path / "file").write_text("not a directory")
    result = run("--heapgate-dir=file/sub")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    result.stderr.fnmatch_lines(["*heapgate: --heapgate-dir '*file/sub' is not a writable directory*"])


@pytest.mark.parametrize("family, properties", [("xunit1", True), ("legacy", True), ("xunit2", False)])
def test_junitxml_properties_where_the_family_allows(run, pytester: pytest.Pytester, family: str, properties: bool) -> None:
    pytester.makepyfile(test_mem=TESTS)
    result = run("--junitxml=junit.xml", "-o", f"junit_family={family}", "--heapgate-dir=out", "-W", "error")
    result.assert_outcomes(passed=2, failed=1)
    assert "warnings summary" not in result.stdout.str() and "Warning" not in result.stdout.str()
    root = ET.parse(pytester.path / "junit.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    big = {p.get("name"): p.get("value") for p in cases["test_too_big"].iter("property")}
    if not properties:
        assert big == {}
        return
    assert big["heapgate_limit_bytes"] == str(1024 * 1024)
    # Before 3.11 the test function's frame object (a real allocation) is still alive at the end.
    leaked = int(big["heapgate_leaked_bytes"] or "-1")
    assert leaked == 0 if sys.version_info >= (3, 11) else 0 <= leaked <= 1024
    assert (big["heapgate_flamegraph"] or "").endswith(".svg") and Path(big["heapgate_flamegraph"] or "").is_file()
    fits = {p.get("name"): p.get("value") for p in cases["test_fits"].iter("property")}
    assert fits["heapgate_flamegraph"] == "" and fits["heapgate_limit_bytes"] == str(10 * 1024 * 1024)
    assert {p.get("name") for p in cases["test_untracked"].iter("property")} == set()


def test_default_junit_family_has_no_warning(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_mem=TESTS)
    result = run("--junitxml=junit.xml", "-W", "error")
    result.assert_outcomes(passed=2, failed=1)
    assert "warnings summary" not in result.stdout.str() and "Warning" not in result.stdout.str()


# --- the heapgate CLI over the files a session left --------------------------------------


def test_cli_report_prints_the_failure_text_again(session: tuple[pytest.RunResult, Path]) -> None:
    result, out = session
    done = heapgate_cli("report", str(captures(out)[0]))
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("Test was limited to 1.0MiB but allocated 3.0MiB at its peak\n")
    assert "      helper at test_mem.py:4\n" in done.stdout
    assert "malloc_free at " in done.stdout  # re-symbolized: hgtest.c has line tables
    # The same text pytest printed.
    assert done.stdout.splitlines()[4] in result.stdout.str()


def test_cli_flamegraph_summary_and_junit(session: tuple[pytest.RunResult, Path], tmp_path: Path) -> None:
    _, out = session
    svg = tmp_path / "again.svg"
    done = heapgate_cli("flamegraph", str(captures(out)[0]), "-o", str(svg))
    assert done.returncode == 0, done.stderr
    assert "test_mem.py::test_too_big" in " ".join(ET.parse(svg).getroot().itertext())
    folded = heapgate_cli("flamegraph", str(captures(out)[0]), "--folded")
    assert folded.returncode == 0
    assert any(line.endswith(f";[malloc] {3 * 1024 * 1024}") for line in folded.stdout.splitlines()), folded.stdout

    summary = heapgate_cli("summary", str(out / "heapgate.json"))
    assert summary.returncode == 1
    lines = summary.stdout.splitlines()
    assert "2 tracked tests, 1 failed a memory check" in lines[0]
    assert lines[2].endswith("test_mem.py::test_too_big  FAILED") and lines[3].endswith("test_mem.py::test_fits")

    xml = tmp_path / "junit.xml"
    done = heapgate_cli("junit", str(out / "heapgate.json"), "-o", str(xml))
    assert done.returncode == 0, done.stderr
    assert (out / "heapgate-junit.xml").read_text() == xml.read_text()


def test_cli_rejects_truncated_and_bit_flipped_captures(session: tuple[pytest.RunResult, Path], tmp_path: Path) -> None:
    _, out = session
    data = captures(out)[0].read_bytes()
    cases = {
        "truncated.heapgate": (data[: len(data) // 2], "truncated capture file"),
        "flipped.heapgate": (data[:-10] + bytes([data[-10] ^ 0x04]) + data[-9:], "checksum mismatch"),
        "empty.heapgate": (b"", "not a heapgate capture file"),
        "json.heapgate": ((out / "heapgate.json").read_bytes(), "not a heapgate capture file"),
    }
    for name, (content, problem) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        for command in (["report"], ["flamegraph"]):
            done = heapgate_cli(*command, str(path))
            assert done.returncode == 2, (name, done)
            assert done.stdout == ""
            lines = done.stderr.splitlines()
            assert len(lines) == 1 and str(path) in lines[0] and problem in lines[0], (name, done.stderr)
            assert "Traceback" not in done.stderr
    missing = heapgate_cli("report", str(tmp_path / "missing.heapgate"))
    assert missing.returncode == 2 and "missing.heapgate" in missing.stderr and len(missing.stderr.splitlines()) == 1


def test_cli_rejects_a_bad_session_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "heapgate.json"
    bad.write_text('{"schema": "heapgate-session", "version": 99}')
    assert cli_main(["summary", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "version 99" in err and len(err.splitlines()) == 1
    bad.write_text("{not json")
    assert cli_main(["junit", str(bad)]) == 2
    assert "not a heapgate session report" in capsys.readouterr().err


# --- hostile node ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "nodeid",
    [
        "test_x.py::test_x[../../etc/passwd]",
        "../../../../etc/passwd",
        "test_x.py::test_y[a\nb\r\x00c\x1b[31m]",
        "test_x.py::test_z[" + "a" * 4000 + "]",
        "..",
        "",
        "test_é.py::test_ünïcode[日本]",
        "/abs/path.py::test",
    ],
)
def test_hostile_node_ids_give_safe_names(nodeid: str, tmp_path: Path) -> None:
    name = safe_name(nodeid)
    assert name == safe_name(nodeid)  # stable
    assert len(name) <= MAX_STEM + 11
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name), name
    assert not name.startswith(".") and ".." not in name and "/" not in name
    path = tmp_path / f"{name}.svg"
    path.write_text("x")
    assert path.resolve().parent == tmp_path.resolve()


def test_distinct_node_ids_get_distinct_names() -> None:
    ids = ["t.py::a[1/2]", "t.py::a[1_2]", "t.py::a[1:2]", "t.py::" + "b" * 500, "t.py::" + "b" * 501]
    assert len({safe_name(i) for i in ids}) == len(ids)


def test_hostile_parametrized_ids_in_a_real_session(run, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_hostile="""
        import pytest, hgtest

        @pytest.mark.limit_memory(1)
        @pytest.mark.parametrize("x", ["../../etc/passwd", "line\\nbreak", "z" * 4000])
        def test_x(x):
            hgtest.malloc_free(1000)
        """
    )
    result = run("--heapgate-dir=out")
    result.assert_outcomes(failed=3)
    out = pytester.path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert all(p.parent == out for p in files)
    assert len(captures(out)) == 3
    assert all(len(p.name) <= MAX_STEM + 11 + len(".heapgate") for p in files)
    nodeids = {t["nodeid"] for t in json.loads((out / "heapgate.json").read_text())["tests"]}
    assert len(nodeids) == 3
    ET.parse(out / "heapgate-junit.xml")
    for svg in out.glob("*.svg"):
        ET.parse(svg)


# --- a real browser renders the flamegraph -------------------------------------------------


def _png_pixels(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, bytes per pixel, unfiltered rows) of an 8-bit RGB/RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 0xFF
            elif ftype == 2:
                line[i] = (line[i] + b) & 0xFF
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (Debian package 'chromium'; .ci/test installs it)")


def test_chromium_renders_the_flamegraph(session: tuple[pytest.RunResult, Path], tmp_path: Path) -> None:
    chromium = _chromium()
    _, out = session
    svg = next(out.glob("*.svg")).resolve()
    png = tmp_path / "flamegraph.png"
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,400",
            f"--screenshot={png}",
            svg.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert png.is_file() and png.stat().st_size > 0, done.stderr
    width, height, bpp, rows = _png_pixels(png.read_bytes())
    assert (width, height) == (1200, 400)
    colors = {row[i : i + 3] for row in rows[::4] for i in range(0, width * bpp, bpp * 4)}
    # A blank page is one color; the flamegraph has a gradient, text and colored frames.
    assert len(colors) > 20, len(colors)
