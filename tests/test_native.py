"""Native stacks end to end: a C extension's frames in `--native` failure reports with debug
info embedded, stripped, and in separate files (build-id, debuglink, debuginfod);
`heapgate addr2line` against binutils; `heapgate doctor`; malformed objects."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from native_builds import (
    HGSYM_C,
    DebuginfodServer,
    HgsymBuilds,
    cpp_library,
    debuginfod_server,
    hgsym_builds,
    marked_lines,
    stripped_cpp_library,
    text_symbols,
    tool,
)

__all__ = ["cpp_library", "debuginfod_server", "hgsym_builds", "stripped_cpp_library"]

TEST_FILE = """
import pytest, hgsym

@pytest.mark.limit_memory("1MB")
def test_alloc():
    hgsym.alloc_free(3_000_000)
"""
TEST_LINE = 5  # the hgsym.alloc_free call above (pytester dedents and strips the source)

NOISE = ("_PyEval_EvalFrameDefault", "cfunction_call", "_PyObject_MakeTpCall", "PyObject_Vectorcall")


def run_native(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ext_dir: Path, **env: str) -> str:
    """Run TEST_FILE with --native, `hgsym` imported from ext_dir; the failure text."""
    monkeypatch.setenv("PYTHONPATH", str(ext_dir))
    monkeypatch.delenv("DEBUGINFOD_URLS", raising=False)
    monkeypatch.delenv("HEAPGATE_DEBUG_ROOTS", raising=False)
    monkeypatch.setenv("DEBUGINFOD_CACHE_PATH", str(pytester.path / "debuginfod-cache"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    pytester.makepyfile(test_hgsym=TEST_FILE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--native", timeout=120)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "(3000000 bytes) in 1 allocation through malloc" in out, out
    return out


def site_lines(out: str) -> list[str]:
    """The stack lines of the 3,000,000-byte site, allocating frame first."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if "(3000000 bytes) in 1 allocation" in line)
    stack = []
    for line in lines[start + 1 :]:
        if not line.startswith("      ") or line.strip().startswith("#"):
            break
        stack.append(line.strip())
    return stack


def assert_file_line_stack(out: str) -> None:
    """C function at hgsym.c:line for each C frame, then the Python test line, nothing between."""
    lines = marked_lines(HGSYM_C)
    stack = site_lines(out)
    c_file = re.escape(str(HGSYM_C))
    expected = [
        rf"hgsym_leaf_alloc at {c_file}:{lines['leaf']}",
        rf"hgsym_middle at {c_file}:{lines['middle']}",
        rf"hgsym_alloc_free at {c_file}:{lines['method']}",
        rf"test_alloc at test_hgsym\.py:{TEST_LINE}",
    ]
    assert len(stack) >= len(expected), out
    for pattern, line in zip(expected, stack):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}\n{out}"
    assert not any(noise in out for noise in NOISE), out


def assert_symbol_table_stack(out: str, ext: Path) -> None:
    """Function names (+offset) from the symbol table, then the Python test line."""
    stack = site_lines(out)
    module = re.escape(str(ext))
    expected = [
        rf"hgsym_leaf_alloc\+0x[0-9a-f]+ in {module}",
        rf"hgsym_middle\+0x[0-9a-f]+ in {module}",
        rf"hgsym_alloc_free\+0x[0-9a-f]+ in {module}",
        rf"test_alloc at test_hgsym\.py:{TEST_LINE}",
    ]
    assert len(stack) >= len(expected), out
    for pattern, line in zip(expected, stack):
        assert re.fullmatch(pattern, line), f"{line!r} does not match {pattern!r}\n{out}"
    assert "hgsym.c:" not in out, out
    assert not any(noise in out for noise in NOISE), out


# --- failure reports ---------------------------------------------------------------------


def test_embedded_dwarf_shows_c_file_line_then_python_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, hgsym_builds: HgsymBuilds
) -> None:
    assert_file_line_stack(run_native(pytester, monkeypatch, hgsym_builds.dirs["dbg"]))


@pytest.mark.parametrize("variant", ["strip_debug", "strip_all"])
def test_stripped_extension_shows_symbol_table_names(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, hgsym_builds: HgsymBuilds, variant: str
) -> None:
    out = run_native(pytester, monkeypatch, hgsym_builds.dirs[variant])
    assert_symbol_table_stack(out, hgsym_builds.ext(variant))


def test_debug_file_found_by_build_id(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, hgsym_builds: HgsymBuilds
) -> None:
    out = run_native(
        pytester, monkeypatch, hgsym_builds.dirs["buildid"], HEAPGATE_DEBUG_ROOTS=str(hgsym_builds.debug_root)
    )
    assert_file_line_stack(out)


def test_build_id_debug_file_is_not_found_without_its_root(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, hgsym_builds: HgsymBuilds
) -> None:
    # The same stripped object without HEAPGATE_DEBUG_ROOTS: names only (the test above is
    # therefore really reading the build-id file).
    out = run_native(pytester, monkeypatch, hgsym_builds.dirs["buildid"])
    assert_symbol_table_stack(out, hgsym_builds.ext("buildid"))


def test_debug_file_found_by_debuglink(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, hgsym_builds: HgsymBuilds
) -> None:
    assert_file_line_stack(run_native(pytester, monkeypatch, hgsym_builds.dirs["debuglink"]))


def test_debug_file_served_by_debuginfod(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    hgsym_builds: HgsymBuilds,
    debuginfod_server: DebuginfodServer,
) -> None:
    out = run_native(pytester, monkeypatch, hgsym_builds.dirs["debuginfod"], DEBUGINFOD_URLS=debuginfod_server.url)
    assert_file_line_stack(out)
    wanted = f"/buildid/{hgsym_builds.build_id}/debuginfo"
    assert debuginfod_server.requests.count(wanted) == 1, debuginfod_server.requests
    cached = pytester.path / "debuginfod-cache" / hgsym_builds.build_id / "debuginfo"
    assert cached.read_bytes() == hgsym_builds.debuginfod_files[hgsym_builds.build_id].read_bytes()


# --- heapgate addr2line vs binutils --------------------------------------------------------


def heapgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from heapgate.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def libpython() -> Path:
    """The object holding the interpreter's code: libpython if shared, else the executable."""
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        name = sysconfig.get_config_var("INSTSONAME") or sysconfig.get_config_var("LDLIBRARY")
        path = Path(sysconfig.get_config_var("LIBDIR")) / str(name)
        if path.exists():
            return path
    return Path(os.path.realpath(sys.executable))


def address_blocks(output: str) -> list[list[str]]:
    """`-a` output split into one block of lines per address (address line dropped);
    binutils' `(discriminator N)` suffixes removed (heapgate does not print them)."""
    blocks: list[list[str]] = []
    for line in output.splitlines():
        if re.fullmatch(r"0x[0-9a-f]{16}", line):
            blocks.append([])
        else:
            blocks[-1].append(re.sub(r" \(discriminator \d+\)$", "", line))
    return blocks


def sample_addresses(symbols_from: Path, count: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    symbols = text_symbols(symbols_from)
    assert len(symbols) >= 3, f"too few function symbols in {symbols_from}"
    return [address + rng.randrange(size) for _, address, size in (rng.choice(symbols) for _ in range(count))]


def binutils_blocks(obj: Path, flags: str, hexes: list[str]) -> list[list[str]]:
    """binutils addr2line's answer for each address, each in a fresh process, settled.

    binutils' dwarf2.c names a function that has only a DW_AT_name (no linkage name: a static
    function, a template instantiated on a local lambda) from the symbol table the first time
    it meets it in a process, and from DWARF afterwards, so its answers depend on what it was
    asked before. Each address is therefore asked in its own process, twice, and the second
    (settled) answer is the reference: the one llvm-symbolizer gives too."""
    blocks = []
    for h in hexes:
        done = subprocess.run([tool("addr2line"), flags, "-e", str(obj), h, h], capture_output=True, text=True, check=True)
        blocks.append(address_blocks(done.stdout)[1])
    return blocks


def llvm_symbolizer_names(obj: Path, address: str) -> list[str] | None:
    """Function names (mangled) of an address's inline chain per llvm-symbolizer, if installed."""
    exe = shutil.which("llvm-symbolizer")
    if exe is None:
        return None
    done = subprocess.run([exe, f"--obj={obj}", "-f", "-i", "--no-demangle", address], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[0::2]


def binutils_stale_names(obj: Path, address: str, theirs: list[str], ours: list[str]) -> set[int]:
    """Frames where binutils gives the enclosing symbol's name to an inlined function that has
    no linkage name (its dwarf2.c takes the symbol table's name when it first meets such a
    function and keeps it), while llvm-symbolizer gives the DWARF name heapgate gives. Only
    those frames' names may differ, and only when llvm-symbolizer is there to confirm."""
    if len(theirs) != len(ours) or [t for t in theirs[1::2]] != [o for o in ours[1::2]]:
        return set()
    llvm = llvm_symbolizer_names(obj, address)
    if llvm is None or len(llvm) != len(ours) // 2:
        return set()
    symbol = theirs[-2]
    stale = set()
    for k in range(0, len(theirs), 2):
        if theirs[k] != ours[k]:
            if theirs[k] != symbol or llvm[k // 2] != ours[k]:
                return set()
            stale.add(k)
    return stale


def compare_with_binutils(obj: Path, addresses: list[int]) -> tuple[list[list[str]], list[str]]:
    """Our `-afiC` blocks, and where they differ from binutils `addr2line -afiC`.

    Inline chains, files, lines and function names, mangled (`-afi`) and demangled (`-afiC`),
    must be identical (binutils' `(discriminator N)` suffix aside): heapgate demangles through
    the C++ runtime's `__cxa_demangle`, the demangler binutils shares. The one difference
    allowed is binutils' own stale names (binutils_stale_names, confirmed by llvm-symbolizer)."""
    hexes = [f"{a:#x}" for a in addresses]
    results = {}
    for flags in ("-afiC", "-afi"):
        done = heapgate("addr2line", flags, "-e", str(obj), *hexes)
        assert done.returncode == 0, done.stderr
        results[flags] = (address_blocks(done.stdout), binutils_blocks(obj, flags, hexes))
    mine, reference = results["-afiC"]
    mangled_mine, mangled_reference = results["-afi"]
    assert len(mine) == len(reference) == len(addresses)
    mismatches = []
    for h, t, m, mt, mm in zip(hexes, reference, mine, mangled_reference, mangled_mine):
        stale = binutils_stale_names(obj, h, mt, mm) if mt != mm else set()
        if mt != mm and not stale:
            mismatches.append(f"{h} (mangled):\n  binutils: {mt}\n  heapgate: {mm}")
        elif len(t) != len(m) or any(k not in stale and x != y for k, (x, y) in enumerate(zip(t, m))):
            mismatches.append(f"{h}:\n  binutils: {t}\n  heapgate: {m}")
    return mine, mismatches


SEED = int(os.environ.get("HEAPGATE_TEST_SEED", "20240501"))
SAMPLES = 30


def test_addr2line_matches_binutils_in_libpython() -> None:
    obj = libpython()
    mine, mismatches = compare_with_binutils(obj, sample_addresses(obj, SAMPLES, SEED))
    assert not mismatches, f"seed {SEED}, {obj}:\n" + "\n".join(mismatches)
    assert sum(1 for block in mine if block[1] != "??:0") >= SAMPLES // 2, mine


def loaded_library(soname: str) -> Path:
    """The file the loader picks for `soname` (loaded into this process to ask it)."""
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        pytest.skip(f"{soname} is not installed")
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if os.path.basename(path).startswith(soname):
                return Path(path)
    pytest.skip(f"{soname} loaded but not found in /proc/self/maps")


@pytest.mark.parametrize(("soname", "samples"), [("libstdc++.so.6", 60), ("libz.so.1", SAMPLES)])
def test_addr2line_matches_binutils_in_system_libraries(soname: str, samples: int) -> None:
    """Distributions' libstdc++ and zlib (stripped: names from .dynsym). libstdc++'s names
    are where demanglers differ most (issue 11: `std::istream::seekg`, `std::ratio<1l, ...>`)."""
    obj = loaded_library(soname)
    mine, mismatches = compare_with_binutils(obj, sample_addresses(obj, samples, SEED))
    assert not mismatches, f"seed {SEED}, {obj}:\n" + "\n".join(mismatches[:10])
    named = [block for block in mine if block[0] != "??"]
    assert len(named) >= samples // 2, mine
    if soname.startswith("libstdc++"):
        assert any(line.startswith("std::") for block in named for line in block), named[:5]


def test_addr2line_matches_binutils_in_cpp_with_inlined_templates(cpp_library: Path) -> None:
    addresses = sample_addresses(cpp_library, SAMPLES, SEED)
    # Make sure inline chains are exercised: add every byte of one function whose code is
    # mostly inlined templates.
    name, start, size = next(s for s in text_symbols(cpp_library) if s[0] == "hgsym_checksum64")
    addresses += list(range(start, start + size))
    mine, mismatches = compare_with_binutils(cpp_library, addresses)
    assert not mismatches, f"seed {SEED}:\n" + "\n".join(mismatches[:10])
    chains = [block for block in mine if len(block) >= 4]  # two (function, file:line) pairs
    assert chains, "no inline chain sampled"
    assert any("hgsym::" in line and "<" in line for block in chains for line in block), chains[:3]


def test_addr2line_matches_binutils_in_a_stripped_library(cpp_library: Path, stripped_cpp_library: Path) -> None:
    # Addresses come from the unstripped copy's symbol table: the code is the same.
    addresses = sample_addresses(cpp_library, SAMPLES, SEED)
    mine, mismatches = compare_with_binutils(stripped_cpp_library, addresses)
    assert not mismatches, f"seed {SEED}:\n" + "\n".join(mismatches)
    assert all(block[-1].startswith("??:") for block in mine), mine
    assert any(block[0].startswith("hgsym_") for block in mine), mine


# --- malformed input ---------------------------------------------------------------------


def test_addr2line_on_a_truncated_elf_prints_question_marks_and_a_warning(
    tmp_path: Path, hgsym_builds: HgsymBuilds
) -> None:
    truncated = tmp_path / "truncated.so"
    truncated.write_bytes(hgsym_builds.ext("dbg").read_bytes()[:3000])
    done = heapgate("addr2line", "-fiC", "-e", str(truncated), "0x1139", "0x1200")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "??\n??:0\n??\n??:0\n"
    assert "warning" in done.stderr and str(truncated) in done.stderr, done.stderr


def test_addr2line_on_corrupt_dwarf_warns_and_does_not_crash(tmp_path: Path, hgsym_builds: HgsymBuilds) -> None:
    source = hgsym_builds.ext("dbg")
    data = bytearray(source.read_bytes())
    headers = subprocess.run([tool("readelf"), "-S", "-W", str(source)], capture_output=True, text=True, check=True)
    m = re.search(r"\.debug_info\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", headers.stdout)
    assert m, headers.stdout
    offset, size = int(m.group(1), 16), int(m.group(2), 16)
    data[offset : offset + size] = b"\xff" * size  # every unit header now claims a 64-bit length
    corrupt = tmp_path / "corrupt.so"
    corrupt.write_bytes(bytes(data))
    leaf = next(a for n, a, _ in text_symbols(source) if n == "hgsym_leaf_alloc")
    done = heapgate("addr2line", "-f", "-e", str(corrupt), f"{leaf + 4:#x}", "0x0")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    # No DWARF: the name comes from the symbol table, with no line.
    assert lines[0] in ("hgsym_leaf_alloc", "??") and lines[1].startswith("??:"), done.stdout
    assert lines[2:] == ["??", "??:0"], done.stdout
    assert "warning" in done.stderr, done.stderr


def test_addr2line_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = heapgate("addr2line", "-f", "-e", str(tmp_path / "missing.so"), "0x10")
    assert missing.returncode == 2 and "missing.so" in missing.stderr, missing.stderr
    bad = heapgate("addr2line", "-e", sys.executable, "0xzz")
    assert bad.returncode == 2 and "0xzz" in bad.stderr, bad.stderr


# --- heapgate doctor ---------------------------------------------------------------------


def doctor_line(out: str, obj: Path) -> str:
    found = [line for line in out.splitlines() if line.startswith(f"{obj}:") or line.startswith(f"{obj} ")]
    assert len(found) == 1, out
    return found[0]


def test_doctor_reports_embedded_dwarf_for_a_g_extension(hgsym_builds: HgsymBuilds) -> None:
    done = heapgate("doctor", "--import", "hgsym", env={"PYTHONPATH": str(hgsym_builds.dirs["dbg"])})
    assert done.returncode == 0, done.stderr
    line = doctor_line(done.stdout, hgsym_builds.ext("dbg"))
    assert "embedded DWARF" in line and "reports show file:line" in line and line.endswith("; ok"), line
    # The interpreter itself is listed too.
    assert "(interpreter)" in done.stdout, done.stdout


def test_doctor_reports_symbol_table_only_for_a_stripped_extension(hgsym_builds: HgsymBuilds) -> None:
    done = heapgate("doctor", "--import", "hgsym", env={"PYTHONPATH": str(hgsym_builds.dirs["strip_all"])})
    assert done.returncode == 0, done.stderr
    line = doctor_line(done.stdout, hgsym_builds.ext("strip_all"))
    assert "symbol table only" in line and "reports show function names only" in line, line
    assert "build it with -g" in line and "DEBUGINFOD_URLS" in line, line


def test_doctor_names_separate_debug_files(hgsym_builds: HgsymBuilds) -> None:
    objects = ("buildid", "debuglink", "dbg", "strip_all")
    done = heapgate(
        "doctor",
        *[arg for key in objects for arg in ("--object", str(hgsym_builds.ext(key)))],
        env={"HEAPGATE_DEBUG_ROOTS": str(hgsym_builds.debug_root)},
    )
    assert done.returncode == 0, done.stderr
    by_id = doctor_line(done.stdout, hgsym_builds.ext("buildid"))
    assert f"build-id debug file {hgsym_builds.debug_root}/.build-id/" in by_id, by_id
    # All four share one build-id: each is still judged from its own file.
    assert "embedded DWARF" in doctor_line(done.stdout, hgsym_builds.ext("dbg"))
    done = heapgate("doctor", "--object", str(hgsym_builds.ext("debuglink")), "--object", str(hgsym_builds.ext("strip_all")))
    assert done.returncode == 0, done.stderr
    linked = doctor_line(done.stdout, hgsym_builds.ext("debuglink"))
    assert "debuglink debug file" in linked and "/.debug/hgsym.debug" in linked, linked
    assert "symbol table only" in doctor_line(done.stdout, hgsym_builds.ext("strip_all"))


def test_doctor_bad_import_is_usage_error() -> None:
    done = heapgate("doctor", "--import", "heapgate_no_such_module_xyz")
    assert done.returncode == 2 and "heapgate_no_such_module_xyz" in done.stderr, done.stderr



def test_threads_started_by_the_test_show_no_heapgate_frames(run, pytester: pytest.Pytester) -> None:
    """A thread started during the test begins in heapgate's start trampoline (it carries the
    test's charge); that frame is heapgate's, not the user's, and never shows in a stack."""
    pytester.makepyfile(
        test_threads="""
        import pytest, hgtest

        @pytest.mark.limit_memory("1MB")
        def test_threads():
            hgtest.threads_malloc_free(2, 1_000_000)
        """
    )
    result = run("--native")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "peak 2000000 bytes" in out, out
    assert "worker_main at " in out, out
    assert "trampoline_start" not in out and "heapgate_core" not in out, out
