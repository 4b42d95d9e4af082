//! Deferred, cached symbolization: (object, address relative to the object) → frames with
//! function, file, line and the inline chain.
//!
//! - [`ModuleMap`] finds the [`Module`] of a runtime address ([`ModuleMap::current_process`]
//!   reads the live map with build-ids).
//! - [`Symbolizer`] caches one lazily parsed object per build-id (or path) for the session.
//!   Debug info is searched in order: DWARF in the object itself; `<root>/.build-id/xx/rest.debug`;
//!   `.gnu_debuglink` (beside the object, in its `.debug/`, under `<root>/<dir>/`, CRC-checked);
//!   debuginfod when configured. Without DWARF, `.symtab`, MiniDebugInfo (`.gnu_debugdata`)
//!   and `.dynsym` give `function+0xoffset`. Malformed files give `??` frames and a warning.
//! - [`addr2line_output`] prints exactly what binutils' `addr2line -e OBJECT [-f] [-i] [-C]` does.

mod addr2line_cli;
mod debugfile;
mod debuginfod;
mod demangle;
mod elf;
mod modules;
mod object_symbolizer;

pub use addr2line_cli::{addr2line_output, Addr2lineArgs};
pub use demangle::uses_cxa_demangle;
pub use modules::{Module, ModuleMap};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashMap;

use self::debuginfod::Debuginfod;
use self::elf::SymbolLookup;
use self::object_symbolizer::{ObjectSymbolizer, RawFrame};

/// One (possibly inlined) frame of a symbolized address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymbolizedFrame {
    /// Demangled function name; `None` when unknown (printed `??`).
    pub function: Option<String>,
    /// Source file (as recorded in DWARF, usually absolute).
    pub file: Option<String>,
    /// Source line, if known.
    pub line: Option<u32>,
    /// Source column, if known.
    pub column: Option<u32>,
    /// Whether this frame was inlined into the next one (every frame but the outermost).
    pub inlined: bool,
    /// Offset from the symbol's start, for frames named from a symbol table.
    pub offset: Option<u64>,
    /// Path of the object the address belongs to.
    pub module: String,
    /// Where this frame's information came from.
    pub source: DebugSource,
}

impl fmt::Display for SymbolizedFrame {
    /// `function+0xoffset at file:line` with `??` for unknown parts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.function.as_deref().unwrap_or("??"))?;
        if let Some(offset) = self.offset {
            write!(f, "+{offset:#x}")?;
        }
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, " at {file}:{line}"),
            (Some(file), None) => write!(f, " at {file}"),
            _ => write!(f, " in {}", self.module),
        }
    }
}

/// Where debug information was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DebugSource {
    /// DWARF inside the object itself.
    EmbeddedDwarf,
    /// `<root>/.build-id/xx/rest.debug`.
    BuildIdFile(PathBuf),
    /// The file named by `.gnu_debuglink`.
    Debuglink(PathBuf),
    /// Downloaded from (or cached by) debuginfod.
    Debuginfod(PathBuf),
    /// `.symtab` or `.dynsym` names only.
    SymbolTable,
    /// The `.symtab` inside MiniDebugInfo (`.gnu_debugdata`).
    MiniDebugInfo,
    /// Nothing: frames are `??`.
    None,
}

/// Errors at the symbolizer's boundary; during symbolization they become warnings and `??`.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a readable object file.
    #[error("{}: not a readable object file: {message}", path.display())]
    Object {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// A file's DWARF could not be loaded.
    #[error("{}: unreadable DWARF: {message}", path.display())]
    Dwarf {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The object on disk is not the one that was loaded (different build-id).
    #[error("{}: the file on disk has a different build-id than the loaded object", .0.display())]
    BuildIdMismatch(PathBuf),
    /// `.gnu_debugdata` could not be decompressed or parsed.
    #[error("bad MiniDebugInfo: {0}")]
    MiniDebugInfo(String),
    /// A debuginfod request failed.
    #[error("debuginfod {url}: {message}")]
    Debuginfod {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// Bad `addr2line` arguments.
    #[error("addr2line: {0}")]
    Usage(String),
}

impl SymbolizeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SymbolizeError::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn object(path: &Path, error: impl fmt::Display) -> Self {
        SymbolizeError::Object {
            path: path.to_owned(),
            message: error.to_string(),
        }
    }
}

/// Receives progress and warning messages (debuginfod downloads, malformed files).
pub type MessageSink = Arc<dyn Fn(&str) + Send + Sync>;

/// Where to look for debug info and how to report progress.
#[derive(Clone)]
pub struct SymbolizerOptions {
    /// Global debug directories (`/usr/lib/debug`): searched for `.build-id/` and debuglinks.
    pub debug_roots: Vec<PathBuf>,
    /// debuginfod servers; empty means no network at all.
    pub debuginfod_urls: Vec<String>,
    /// Timeout for one whole debuginfod download.
    pub debuginfod_timeout: Duration,
    /// elfutils-compatible cache (`<dir>/<build-id>/debuginfo`); `None` disables debuginfod.
    pub debuginfod_cache: Option<PathBuf>,
    /// Largest debug file downloaded.
    pub debuginfod_max_bytes: u64,
    /// Where messages go; `None` prints them to stderr.
    pub messages: Option<MessageSink>,
}

impl Default for SymbolizerOptions {
    /// `/usr/lib/debug`, no debuginfod, messages to stderr.
    fn default() -> Self {
        SymbolizerOptions {
            debug_roots: vec![PathBuf::from("/usr/lib/debug")],
            debuginfod_urls: Vec::new(),
            debuginfod_timeout: Duration::from_secs(30),
            debuginfod_cache: debuginfod::default_cache_dir(),
            debuginfod_max_bytes: 4 << 30,
            messages: None,
        }
    }
}

impl SymbolizerOptions {
    /// Defaults plus `DEBUGINFOD_URLS` (space-separated), `HEAPGATE_DEBUGINFOD_TIMEOUT`
    /// (seconds, default 30) and `HEAPGATE_DEBUG_ROOTS` (colon-separated debug directories,
    /// searched before `/usr/lib/debug`).
    pub fn from_env() -> Self {
        let mut options = SymbolizerOptions::default();
        if let Some(roots) = std::env::var_os("HEAPGATE_DEBUG_ROOTS") {
            let mut extra: Vec<PathBuf> = std::env::split_paths(&roots)
                .filter(|root| !root.as_os_str().is_empty())
                .collect();
            extra.append(&mut options.debug_roots);
            options.debug_roots = extra;
        }
        if let Ok(urls) = std::env::var("DEBUGINFOD_URLS") {
            options.debuginfod_urls = urls.split_whitespace().map(str::to_owned).collect();
        }
        if let Some(secs) = std::env::var("HEAPGATE_DEBUGINFOD_TIMEOUT")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
        {
            options.debuginfod_timeout = Duration::from_secs_f64(secs);
        }
        options
    }
}

impl fmt::Debug for SymbolizerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SymbolizerOptions")
            .field("debug_roots", &self.debug_roots)
            .field("debuginfod_urls", &self.debuginfod_urls)
            .field("debuginfod_timeout", &self.debuginfod_timeout)
            .field("debuginfod_cache", &self.debuginfod_cache)
            .field("debuginfod_max_bytes", &self.debuginfod_max_bytes)
            .field("messages", &self.messages.as_ref().map(|_| "<callback>"))
            .finish()
    }
}

#[derive(PartialEq, Eq, Hash)]
enum CacheKey {
    BuildId(Vec<u8>),
    Path(PathBuf),
}

struct Inner {
    objects: FxHashMap<CacheKey, ObjectSymbolizer>,
    debuginfod: Debuginfod,
}

/// The session's symbolizer: objects are parsed on first use and kept until it is dropped.
/// Lookups are serialized by an internal lock.
pub struct Symbolizer {
    debug_roots: Vec<PathBuf>,
    say: MessageSink,
    inner: Mutex<Inner>,
}

impl Symbolizer {
    /// A symbolizer with an empty cache.
    pub fn new(options: SymbolizerOptions) -> Self {
        let say = options
            .messages
            .unwrap_or_else(|| Arc::new(|message: &str| eprintln!("{message}")));
        Symbolizer {
            debug_roots: options.debug_roots,
            say,
            inner: Mutex::new(Inner {
                objects: FxHashMap::default(),
                debuginfod: Debuginfod::new(
                    options.debuginfod_urls,
                    options.debuginfod_timeout,
                    options.debuginfod_cache,
                    options.debuginfod_max_bytes,
                ),
            }),
        }
    }

    /// Frames for `relative_addr` in `module`, innermost (inlined) first; one `??` frame when
    /// nothing is known. For a return address, pass `return address - 1`.
    pub fn symbolize(&self, module: &Module, relative_addr: u64) -> Vec<SymbolizedFrame> {
        let name = module.path.display().to_string();
        let frames = self.symbolize_raw(module, relative_addr, SymbolLookup::Contained);
        if frames.is_empty() {
            return vec![SymbolizedFrame {
                function: None,
                file: None,
                line: None,
                column: None,
                inlined: false,
                offset: None,
                module: name,
                source: DebugSource::None,
            }];
        }
        frames
            .into_iter()
            .map(|f| SymbolizedFrame {
                function: f.name.map(|n| demangle::demangle(&n, f.language)),
                file: f.file.filter(|file| !file.is_empty()),
                line: f.line,
                column: f.column,
                inlined: f.inlined,
                offset: f.offset,
                module: name.clone(),
                source: f.source,
            })
            .collect()
    }

    /// Where `module`'s debug info comes from (looking for it now if needed).
    pub fn debug_source(&self, module: &Module) -> DebugSource {
        self.with_object(module, |object, cx| object.debug_source(cx))
    }

    /// Frames as stored (names not demangled); empty when nothing is known.
    pub(crate) fn symbolize_raw(
        &self,
        module: &Module,
        relative_addr: u64,
        mode: SymbolLookup,
    ) -> Vec<RawFrame> {
        self.with_object(module, |object, cx| {
            object.symbolize(relative_addr, mode, cx)
        })
    }

    fn with_object<T>(
        &self,
        module: &Module,
        f: impl FnOnce(&ObjectSymbolizer, &mut object_symbolizer::Context<'_>) -> T,
    ) -> T {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner {
            objects,
            debuginfod,
        } = &mut *inner;
        let key = match &module.build_id {
            Some(id) => CacheKey::BuildId(id.clone()),
            None => CacheKey::Path(module.path.clone()),
        };
        let object = objects
            .entry(key)
            .or_insert_with(|| ObjectSymbolizer::new(module));
        let mut cx = object_symbolizer::Context {
            debug_roots: &self.debug_roots,
            debuginfod,
            say: &self.say,
        };
        f(object, &mut cx)
    }
}

impl fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Symbolizer")
            .field("debug_roots", &self.debug_roots)
            .finish_non_exhaustive()
    }
}
