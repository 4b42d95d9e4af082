//! One object's symbolizer: finds its debug info on first use, then answers address lookups
//! from DWARF (with inline chains) or, failing that, from its symbol tables.

use addr2line::gimli;
use object::Object;
use std::cell::{Cell, OnceCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use super::debuginfod::Debuginfod;
use super::elf::{self, SymbolLookup, SymbolTable};
use super::{debugfile, DebugSource, MessageSink, Module, SymbolizeError};

/// A frame before demangling, as the object's debug info states it.
#[derive(Debug, Clone)]
pub(crate) struct RawFrame {
    /// Linkage (mangled) name if known, else the plain name.
    pub(crate) name: Option<String>,
    pub(crate) language: Option<gimli::DwLang>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    pub(crate) column: Option<u32>,
    pub(crate) inlined: bool,
    /// Offset from the symbol's start, for frames from a symbol table.
    pub(crate) offset: Option<u64>,
    pub(crate) source: DebugSource,
}

/// What a lookup needs from the session besides the object itself.
pub(crate) struct Context<'a> {
    pub(crate) debug_roots: &'a [PathBuf],
    pub(crate) debuginfod: &'a mut Debuginfod,
    pub(crate) say: &'a MessageSink,
}

struct DwarfFile {
    loader: addr2line::Loader,
    source: DebugSource,
    path: PathBuf,
}

/// The lazily built state of one object, cached for the session.
pub(crate) struct ObjectSymbolizer {
    module: Module,
    /// The first debug source that loads; failures along the way are reported as warnings.
    dwarf: OnceCell<Option<DwarfFile>>,
    symbols: OnceCell<Result<SymbolTable, SymbolizeError>>,
    /// Set after a parser panicked on this object: answer `??` from then on.
    broken: Cell<bool>,
}

impl ObjectSymbolizer {
    pub(crate) fn new(module: &Module) -> Self {
        ObjectSymbolizer {
            module: module.clone(),
            dwarf: OnceCell::new(),
            symbols: OnceCell::new(),
            broken: Cell::new(false),
        }
    }

    /// Frames for `addr` (relative to the object), innermost first; empty if unknown.
    pub(crate) fn symbolize(
        &self,
        addr: u64,
        mode: SymbolLookup,
        cx: &mut Context<'_>,
    ) -> Vec<RawFrame> {
        if self.broken.get() {
            return Vec::new();
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.symbolize_inner(addr, mode, cx)));
        result.unwrap_or_else(|_| {
            self.broken.set(true);
            (cx.say)(&format!(
                "heapgate: warning: symbolizing {} failed (malformed debug info); its frames show as ??",
                self.module.path.display()
            ));
            Vec::new()
        })
    }

    fn symbolize_inner(
        &self,
        addr: u64,
        mode: SymbolLookup,
        cx: &mut Context<'_>,
    ) -> Vec<RawFrame> {
        let mut frames = Vec::new();
        if let Some(dwarf) = self.dwarf(cx) {
            match dwarf_frames(dwarf, addr) {
                Ok(found) => frames = found,
                Err(e) => (cx.say)(&format!(
                    "heapgate: warning: bad DWARF in {} at {addr:#x}: {e}",
                    dwarf.path.display()
                )),
            }
        }
        if frames.last().is_none_or(|f| f.name.is_none()) {
            if let Some(sym) = self.symbols(cx).and_then(|t| t.lookup(addr, mode)) {
                match frames.last_mut() {
                    Some(outer) => outer.name = Some(sym.name.clone()),
                    None => frames.push(RawFrame {
                        name: Some(sym.name.clone()),
                        language: None,
                        file: sym.file.as_deref().map(str::to_owned),
                        line: None,
                        column: None,
                        inlined: false,
                        offset: Some(addr - sym.address),
                        source: sym.source.clone(),
                    }),
                }
            }
        }
        frames
    }

    /// Where this object's best debug info comes from (searching for it if not done yet).
    pub(crate) fn debug_source(&self, cx: &mut Context<'_>) -> DebugSource {
        if self.broken.get() {
            return DebugSource::None;
        }
        let found = catch_unwind(AssertUnwindSafe(|| {
            if let Some(dwarf) = self.dwarf(cx) {
                return dwarf.source.clone();
            }
            match self.symbols(cx) {
                Some(table) if !table.is_empty() => table.best_source(),
                _ => DebugSource::None,
            }
        }));
        found.unwrap_or_else(|_| {
            self.broken.set(true);
            DebugSource::None
        })
    }

    fn dwarf(&self, cx: &mut Context<'_>) -> Option<&DwarfFile> {
        self.dwarf.get_or_init(|| self.find_dwarf(cx)).as_ref()
    }

    fn symbols(&self, cx: &mut Context<'_>) -> Option<&SymbolTable> {
        let table = self.symbols.get_or_init(|| {
            let table = self.load_symbols(cx);
            if let Err(e) = &table {
                (cx.say)(&format!("heapgate: warning: {e}"));
            }
            table
        });
        table.as_ref().ok()
    }

    /// Opens the object file if it is the one the module describes (same build-id).
    fn open_object(&self) -> Result<memmap2::Mmap, SymbolizeError> {
        let map = elf::map_file(&self.module.path)?;
        let file =
            object::File::parse(&*map).map_err(|e| SymbolizeError::object(&self.module.path, e))?;
        if let Some(wanted) = &self.module.build_id {
            let on_disk = file.build_id().ok().flatten();
            if on_disk.is_some_and(|id| id != wanted.as_slice()) {
                return Err(SymbolizeError::BuildIdMismatch(self.module.path.clone()));
            }
        }
        Ok(map)
    }

    fn find_dwarf(&self, cx: &mut Context<'_>) -> Option<DwarfFile> {
        let path = &self.module.path;
        let object = self.open_object();
        let (has_dwarf, debuglink) = match &object {
            Ok(map) => match object::File::parse(&**map) {
                Ok(file) => (elf::has_dwarf(&file), elf::debuglink(&file)),
                Err(_) => (false, None),
            },
            Err(SymbolizeError::Io { .. }) if self.module.build_id.is_some() => (false, None),
            Err(e) => {
                (cx.say)(&format!("heapgate: warning: {e}"));
                (false, None)
            }
        };
        let debuglink = debuglink.or_else(|| self.module.debuglink.clone());
        let say = cx.say;
        // Each source is tried in order; later ones are only searched if earlier ones fail.
        let load = |file: PathBuf, source: DebugSource| match load_dwarf(&file) {
            Ok(loader) => Some(DwarfFile {
                loader,
                source,
                path: file,
            }),
            Err(e) => {
                say(&format!("heapgate: warning: {e}"));
                None
            }
        };
        if has_dwarf {
            if let Some(found) = load(path.clone(), DebugSource::EmbeddedDwarf) {
                return Some(found);
            }
        }
        if let Some(id) = &self.module.build_id {
            if let Some(file) = debugfile::by_build_id(cx.debug_roots, id) {
                if let Some(found) = load(file.clone(), DebugSource::BuildIdFile(file)) {
                    return Some(found);
                }
            }
        }
        if let Some((name, crc)) = &debuglink {
            if let Some(file) = debugfile::by_debuglink(cx.debug_roots, path, name, *crc) {
                if let Some(found) = load(file.clone(), DebugSource::Debuglink(file)) {
                    return Some(found);
                }
            }
        }
        if let Some(id) = &self.module.build_id {
            match cx.debuginfod.fetch(id, path, say) {
                Ok(Some(file)) => return load(file.clone(), DebugSource::Debuginfod(file)),
                Ok(None) => {}
                Err(e) => say(&format!("heapgate: warning: {e}")),
            }
        }
        None
    }

    fn load_symbols(&self, cx: &mut Context<'_>) -> Result<SymbolTable, SymbolizeError> {
        let mut table = SymbolTable::default();
        // A separate debug file keeps the full .symtab that `strip` removed; like binutils,
        // its names win over the object's own aliases at the same address.
        if let Some(dwarf) = self.dwarf(cx).filter(|d| d.path != self.module.path) {
            if let Ok(debug_map) = elf::map_file(&dwarf.path) {
                if let Ok(debug_file) = object::File::parse(&*debug_map) {
                    table.add_object(&debug_file, &DebugSource::SymbolTable);
                }
            }
        }
        match self.open_object() {
            Ok(map) => {
                let file = object::File::parse(&*map)
                    .map_err(|e| SymbolizeError::object(&self.module.path, e))?;
                table.add_object(&file, &DebugSource::SymbolTable);
                if let Err(e) = table.add_minidebuginfo(&file) {
                    (cx.say)(&format!(
                        "heapgate: warning: {}: {e}",
                        self.module.path.display()
                    ));
                }
            }
            Err(e) if table.is_empty() => return Err(e),
            Err(_) => {}
        }
        table.finish();
        Ok(table)
    }
}

fn load_dwarf(path: &Path) -> Result<addr2line::Loader, SymbolizeError> {
    addr2line::Loader::new(path).map_err(|e| SymbolizeError::Dwarf {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn dwarf_frames(dwarf: &DwarfFile, addr: u64) -> Result<Vec<RawFrame>, String> {
    let mut iter = dwarf.loader.find_frames(addr).map_err(|e| e.to_string())?;
    let mut frames = Vec::new();
    while let Some(frame) = iter.next().map_err(|e| e.to_string())? {
        let (name, language) = match &frame.function {
            Some(function) => (
                function.raw_name().ok().map(|n| n.into_owned()),
                function.language,
            ),
            None => (None, None),
        };
        let location = frame.location.as_ref();
        frames.push(RawFrame {
            name,
            language,
            file: location.and_then(|l| l.file).map(str::to_owned),
            line: location.and_then(|l| l.line).filter(|&l| l != 0),
            column: location.and_then(|l| l.column).filter(|&c| c != 0),
            inlined: true,
            offset: None,
            source: dwarf.source.clone(),
        });
    }
    if let Some(outer) = frames.last_mut() {
        outer.inlined = false;
    }
    Ok(frames)
}
