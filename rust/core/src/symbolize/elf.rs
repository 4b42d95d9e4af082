//! ELF helpers over the `object` crate: mapping files, build-id/debuglink, DWARF presence, and
//! symbol tables (`.symtab`, `.dynsym`, MiniDebugInfo) for the no-DWARF fallback.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSymbol, ObjectSymbolTable, SectionFlags, SymbolKind};

use super::{DebugSource, SymbolizeError};

/// Maps a file read-only.
pub(crate) fn map_file(path: &Path) -> Result<Mmap, SymbolizeError> {
    let file = File::open(path).map_err(|e| SymbolizeError::io(path, e))?;
    // SAFETY: the mapping is read-only and private. Like every mmap-based ELF reader
    // (addr2line's own `Loader` included) we rely on object and debug files not being
    // truncated while mapped; the file is not written by this process.
    unsafe { Mmap::map(&file) }.map_err(|e| SymbolizeError::io(path, e))
}

/// Lower-case hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `.gnu_debuglink` name and CRC of a parsed object.
pub(crate) fn debuglink(file: &object::File<'_>) -> Option<(String, u32)> {
    let (name, crc) = file.gnu_debuglink().ok().flatten()?;
    Some((String::from_utf8_lossy(name).into_owned(), crc))
}

/// Whether the object carries DWARF of its own (line tables at least).
pub(crate) fn has_dwarf(file: &object::File<'_>) -> bool {
    [".debug_info", ".debug_line"].iter().any(|name| {
        file.section_by_name(name)
            .is_some_and(|s| s.size() > 0 && s.kind() != object::SectionKind::UninitializedData)
    })
}

/// How to match an address to a symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SymbolLookup {
    /// Only a symbol whose extent contains the address (padding between functions is `??`).
    Contained,
    /// The nearest symbol below the address in its section (binutils `addr2line`).
    Nearest,
}

/// One function symbol.
#[derive(Debug, Clone)]
pub(crate) struct Symbol {
    pub(crate) address: u64,
    pub(crate) size: u64,
    /// End of the symbol's section: a size-less symbol covers nothing beyond it.
    pub(crate) section_end: u64,
    /// Raw (mangled) name.
    pub(crate) name: String,
    /// The `STT_FILE` this symbol belongs to, as binutils infers it.
    pub(crate) file: Option<Arc<str>>,
    /// [`DebugSource::SymbolTable`] or [`DebugSource::MiniDebugInfo`].
    pub(crate) source: DebugSource,
}

/// Function symbols of an object, sorted by address; earlier sources win on equal addresses.
#[derive(Debug, Default)]
pub(crate) struct SymbolTable {
    symbols: Vec<Symbol>,
}

impl SymbolTable {
    /// Adds `.symtab` then `.dynsym` of `file`, tagged with `source`.
    pub(crate) fn add_object(&mut self, file: &object::File<'_>, source: &DebugSource) {
        if let Some(table) = file.symbol_table() {
            self.add_table(file, table.symbols(), source, true);
        }
        if let Some(table) = file.dynamic_symbol_table() {
            self.add_table(file, table.symbols(), source, false);
        }
    }

    fn add_table<'data: 'file, 'file>(
        &mut self,
        file: &'file object::File<'data>,
        symbols: impl Iterator<Item = object::Symbol<'data, 'file>>,
        source: &DebugSource,
        track_files: bool,
    ) {
        // binutils' elf_find_function: a symbol belongs to the last STT_FILE before it, except
        // a global symbol that follows a STT_FILE which itself follows other symbols.
        let mut current_file: Option<Arc<str>> = None;
        let mut seen_symbol = false;
        let mut file_after_symbol = false;
        for sym in symbols {
            if sym.kind() == SymbolKind::File {
                if track_files {
                    // binutils prints an empty STT_FILE name as is (`:?`).
                    current_file = sym.name().ok().map(Arc::<str>::from);
                    file_after_symbol = seen_symbol;
                }
                continue;
            }
            seen_symbol = true;
            if sym.is_undefined() {
                continue;
            }
            let Some(section) = sym
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
            else {
                continue;
            };
            if !is_code(&sym, &section) {
                continue;
            }
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() || name.starts_with('$') {
                continue;
            }
            let file_name = if sym.is_global() && file_after_symbol {
                None
            } else {
                current_file.clone()
            };
            self.symbols.push(Symbol {
                address: sym.address(),
                size: sym.size(),
                section_end: section.address().saturating_add(section.size()),
                name: name.to_owned(),
                file: file_name,
                source: source.clone(),
            });
        }
    }

    /// Adds the symbols of MiniDebugInfo (`.gnu_debugdata`: an xz-compressed ELF holding a
    /// `.symtab`), if `file` has it. Returns whether it did.
    pub(crate) fn add_minidebuginfo(
        &mut self,
        file: &object::File<'_>,
    ) -> Result<bool, SymbolizeError> {
        let Some(section) = file.section_by_name(".gnu_debugdata") else {
            return Ok(false);
        };
        let compressed = section
            .data()
            .map_err(|e| SymbolizeError::MiniDebugInfo(e.to_string()))?;
        let mut elf = Vec::new();
        lzma_rs::xz_decompress(&mut std::io::BufReader::new(compressed), &mut elf)
            .map_err(|e| SymbolizeError::MiniDebugInfo(e.to_string()))?;
        let inner =
            object::File::parse(&*elf).map_err(|e| SymbolizeError::MiniDebugInfo(e.to_string()))?;
        let before = self.symbols.len();
        if let Some(table) = inner.symbol_table() {
            self.add_table(&inner, table.symbols(), &DebugSource::MiniDebugInfo, true);
        }
        Ok(self.symbols.len() > before)
    }

    /// Sorts; call once after the last `add_*`.
    pub(crate) fn finish(&mut self) {
        // Stable sort keeps insertion (priority) order among equal addresses; then keep the
        // first symbol at each address, preferring one with a size.
        self.symbols.sort_by_key(|s| s.address);
        self.symbols.dedup_by(|later, first| {
            if later.address != first.address {
                return false;
            }
            if first.size == 0 && later.size != 0 {
                std::mem::swap(first, later);
            }
            true
        });
    }

    /// The function symbol containing `addr`: the nearest one at or below it whose size covers
    /// it, or a size-less symbol directly below it. In [`SymbolLookup::Nearest`] mode, as
    /// binutils does, the nearest symbol below `addr` in the same section, whatever its size.
    pub(crate) fn lookup(&self, addr: u64, mode: SymbolLookup) -> Option<&Symbol> {
        let end = self.symbols.partition_point(|s| s.address <= addr);
        if mode == SymbolLookup::Nearest {
            return self.symbols[..end]
                .last()
                .filter(|s| addr < s.section_end.max(s.address + s.size));
        }
        for (i, sym) in self.symbols[..end].iter().rev().take(16).enumerate() {
            if sym.size == 0 {
                if i == 0 && addr < sym.section_end {
                    return Some(sym);
                }
            } else if addr - sym.address < sym.size {
                return Some(sym);
            }
        }
        None
    }

    /// Where most names come from: MiniDebugInfo if any symbol came from it.
    pub(crate) fn best_source(&self) -> DebugSource {
        if self
            .symbols
            .iter()
            .any(|s| s.source == DebugSource::MiniDebugInfo)
        {
            DebugSource::MiniDebugInfo
        } else {
            DebugSource::SymbolTable
        }
    }

    /// Whether there is no symbol at all.
    pub(crate) fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

fn is_code(sym: &object::Symbol<'_, '_>, section: &object::Section<'_, '_>) -> bool {
    match sym.kind() {
        SymbolKind::Text => true,
        SymbolKind::Unknown => match section.flags() {
            SectionFlags::Elf { sh_flags } => sh_flags & u64::from(object::elf::SHF_EXECINSTR) != 0,
            _ => false,
        },
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(address: u64, size: u64, name: &str) -> Symbol {
        Symbol {
            address,
            size,
            section_end: 0x2000,
            name: name.to_owned(),
            file: None,
            source: DebugSource::SymbolTable,
        }
    }

    #[test]
    fn lookup_respects_sizes_priorities_and_section_ends() {
        let mut table = SymbolTable {
            symbols: vec![
                sym(0x1000, 0x10, "first"),
                sym(0x1000, 0x10, "alias"),
                sym(0x1100, 0, "sizeless"),
                sym(0x1200, 0x100, "outer"),
                sym(0x1210, 0x10, "nested"),
            ],
        };
        table.finish();
        let name = |a| {
            table
                .lookup(a, SymbolLookup::Contained)
                .map(|s| s.name.as_str())
        };
        assert_eq!(name(0xfff), None);
        assert_eq!(name(0x1000), Some("first"));
        assert_eq!(name(0x100f), Some("first"));
        assert_eq!(name(0x1010), None);
        assert_eq!(name(0x1150), Some("sizeless"));
        assert_eq!(name(0x1215), Some("nested"));
        assert_eq!(name(0x1220), Some("outer"));
        assert_eq!(name(0x1300), None);
        assert_eq!(name(0x3000), None);
        let nearest = |a| {
            table
                .lookup(a, SymbolLookup::Nearest)
                .map(|s| s.name.as_str())
        };
        assert_eq!(nearest(0x1010), Some("first"));
        assert_eq!(nearest(0x1300), Some("nested"));
        assert_eq!(nearest(0x1fff), Some("nested"));
        assert_eq!(nearest(0x2000), None);
    }
}
