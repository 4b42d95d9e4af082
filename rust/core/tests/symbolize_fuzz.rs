//! The symbolizer over hostile objects: a real library built by gcc with `-g`, then bits
//! flipped inside its DWARF (`.debug_info`, `.debug_line`, `.debug_abbrev`, `.debug_str`),
//! its `.eh_frame`, its symbol tables and anywhere in the ELF file. Symbolizing must never
//! panic: an unreadable object is a clear error, an unreadable address is `??` (no function).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use heapgate_core::symbolize::{Module, Symbolizer, SymbolizerOptions};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use proptest::prelude::*;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/symbolize");

/// Sections whose bytes are mutated, when the object has them.
const TARGETS: &[&str] = &[
    ".debug_info",
    ".debug_line",
    ".debug_abbrev",
    ".debug_str",
    ".debug_line_str",
    ".debug_aranges",
    ".debug_rnglists",
    ".eh_frame",
    ".eh_frame_hdr",
    ".symtab",
    ".strtab",
    ".dynsym",
];

struct Original {
    dir: tempfile::TempDir,
    bytes: Vec<u8>,
    /// (name, file offset, size) of each target section present.
    sections: Vec<(&'static str, usize, usize)>,
    /// Addresses inside the object's functions.
    addresses: Vec<u64>,
}

/// `lib.c` built once: -O2 -g, so there are inline chains and location lists to corrupt.
fn original() -> &'static Original {
    static ORIGINAL: OnceLock<Original> = OnceLock::new();
    ORIGINAL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("lib.so");
        let done = Command::new("gcc")
            .args(["-shared", "-fPIC", "-g", "-O2", "-Wl,--build-id"])
            .arg(Path::new(FIXTURES).join("lib.c"))
            .arg("-o")
            .arg(&out)
            .output()
            .expect("gcc runs");
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        let bytes = std::fs::read(&out).unwrap();
        let file = object::File::parse(&*bytes).unwrap();
        let sections = TARGETS
            .iter()
            .filter_map(|name| {
                let s = file.section_by_name(name)?;
                let (offset, size) = s.file_range()?;
                (size > 0).then_some((*name, offset as usize, size as usize))
            })
            .collect::<Vec<_>>();
        assert!(
            sections.iter().any(|s| s.0 == ".debug_info")
                && sections.iter().any(|s| s.0 == ".debug_line")
                && sections.iter().any(|s| s.0 == ".eh_frame"),
            "the fixture has DWARF and unwind tables: {sections:?}"
        );
        let mut addresses: Vec<u64> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .flat_map(|s| {
                [
                    s.address(),
                    s.address() + s.size() / 2,
                    s.address() + s.size() - 1,
                ]
            })
            .collect();
        addresses.extend([0, 1, u64::MAX / 2, u64::MAX]);
        Original {
            dir,
            bytes,
            sections,
            addresses,
        }
    })
}

fn quiet() -> SymbolizerOptions {
    SymbolizerOptions {
        debug_roots: Vec::new(),
        debuginfod_urls: Vec::new(),
        debuginfod_cache: None,
        messages: Some(std::sync::Arc::new(|_: &str| {})),
        ..SymbolizerOptions::default()
    }
}

/// Write `bytes` to a fresh file (a new path per case: nothing is served from a cache).
fn write_case(bytes: &[u8]) -> PathBuf {
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let path = original()
        .dir
        .path()
        .join(format!("case{}.so", CASE.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Symbolize every probe address of the mutated object; any panic fails the test.
fn symbolize_all(bytes: &[u8]) {
    let path = write_case(bytes);
    let symbolizer = Symbolizer::new(quiet());
    match Module::from_file(&path) {
        Ok(module) => {
            for &address in &original().addresses {
                let _ = symbolizer.symbolize(&module, address);
            }
            let _ = symbolizer.debug_source(&module);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let _ = std::fs::remove_file(path);
}

#[test]
fn the_unmutated_fixture_symbolizes() {
    let o = original();
    let path = write_case(&o.bytes);
    let module = Module::from_file(&path).unwrap();
    let symbolizer = Symbolizer::new(quiet());
    let named = o
        .addresses
        .iter()
        .filter(|&&a| {
            symbolizer
                .symbolize(&module, a)
                .iter()
                .any(|f| f.function.is_some())
        })
        .count();
    assert!(named > 0, "nothing symbolized in the original");
}

/// What the symbolizer says about every probe address of `bytes`: (function, file, line).
type Answers = Vec<Vec<(Option<String>, Option<String>, Option<u32>)>>;

fn answers(bytes: &[u8]) -> Option<Answers> {
    let path = write_case(bytes);
    let module = Module::from_file(&path).ok()?;
    let symbolizer = Symbolizer::new(quiet());
    let found = original()
        .addresses
        .iter()
        .map(|&a| {
            symbolizer
                .symbolize(&module, a)
                .into_iter()
                .map(|f| (f.function, f.file, f.line))
                .collect()
        })
        .collect();
    let _ = std::fs::remove_file(path);
    Some(found)
}

/// The mutations reach the DWARF readers: flipped bits in `.debug_info` and `.debug_line`
/// change some answers (so the properties below test the parsers, not a cache or a fallback).
#[test]
fn mutations_reach_the_dwarf_readers() {
    let o = original();
    let clean = answers(&o.bytes).unwrap();
    for name in [".debug_info", ".debug_line"] {
        let &(_, offset, size) = o.sections.iter().find(|s| s.0 == name).unwrap();
        let changed = (0..64)
            .filter(|k| {
                let mut bytes = o.bytes.clone();
                bytes[offset + k * size / 64] ^= 0x10;
                answers(&bytes).is_none_or(|a| a != clean)
            })
            .count();
        assert!(changed > 0, "no flip in {name} changed any answer");
    }
}

proptest! {
    // Bounded for CI: each case builds a symbolizer and reads the object once.
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    /// Bit flips inside one debug, unwind or symbol section.
    #[test]
    fn flipped_bits_in_dwarf_and_unwind_sections_never_panic(
        section in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..16),
    ) {
        let o = original();
        let (_, offset, size) = o.sections[section.index(o.sections.len())];
        let mut bytes = o.bytes.clone();
        for (at, bit) in flips {
            bytes[offset + at.index(size)] ^= 1 << bit;
        }
        symbolize_all(&bytes);
    }

    /// Bytes overwritten anywhere in the file (headers, section table, code) or the file cut.
    #[test]
    fn mutated_elf_files_never_panic(
        writes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let o = original();
        let mut bytes = o.bytes.clone();
        for (at, value) in writes {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len()));
        }
        symbolize_all(&bytes);
    }
}
