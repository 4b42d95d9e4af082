//! The symbolizer for Python callers: `heapgate addr2line` and `heapgate doctor` (thin: the
//! work is in `heapgate_core::symbolize`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heapgate_core::symbolize::{
    addr2line_output, Addr2lineArgs, DebugSource, MessageSink, Module, ModuleMap, SymbolizeError,
    Symbolizer as CoreSymbolizer, SymbolizerOptions,
};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;

/// Where one object's debug information comes from, as `heapgate doctor` reports it.
#[pyclass(frozen, get_all, module = "heapgate._native")]
struct ObjectDebugInfo {
    /// The object file.
    path: String,
    /// GNU build-id, lower-case hex, if the object has one.
    build_id: Option<String>,
    /// 'embedded', 'build-id', 'debuglink', 'debuginfod', 'symtab', 'minidebuginfo',
    /// 'none', or 'unreadable' (the object itself could not be read; see `error`).
    source: &'static str,
    /// The separate debug file used, for 'build-id', 'debuglink' and 'debuginfod'.
    debug_file: Option<String>,
    /// The `.gnu_debuglink` name the object asks for, if any.
    debuglink: Option<String>,
    /// Why the object could not be read, for 'unreadable'.
    error: Option<String>,
}

#[pymethods]
impl ObjectDebugInfo {
    fn __repr__(&self) -> String {
        format!(
            "ObjectDebugInfo({:?}, source={:?}, debug_file={:?})",
            self.path, self.source, self.debug_file
        )
    }
}

/// One frame of a symbolized address: (function, file, line, inlined); `line` 0 when unknown.
type FrameTuple = (Option<String>, Option<String>, u32, bool);

/// A symbolizer with its own cache of parsed objects (one per build-id), configured from the
/// environment like the one reports use (`DEBUGINFOD_URLS`, `HEAPGATE_DEBUG_ROOTS`, ...).
/// Warnings and debuginfod progress go to `on_message`, or to stderr.
#[pyclass(frozen, module = "heapgate._native", name = "Symbolizer")]
struct PySymbolizer {
    inner: CoreSymbolizer,
    options: SymbolizerOptions,
}

fn message_sink(on_message: Option<Py<PyAny>>) -> MessageSink {
    match on_message {
        Some(callback) => Arc::new(move |message: &str| {
            Python::attach(|py| {
                if let Err(e) = callback.call1(py, (message,)) {
                    e.write_unraisable(py, None);
                }
            })
        }),
        None => Arc::new(|message: &str| eprintln!("{message}")),
    }
}

fn io_error(path: &Path, error: &std::io::Error) -> PyErr {
    let message = format!("cannot read {}: {error}", path.display());
    match error.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
        std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
        _ => PyOSError::new_err(message),
    }
}

fn run_addr2line(symbolizer: &CoreSymbolizer, argv: &[String]) -> PyResult<String> {
    let args = Addr2lineArgs::parse(argv).map_err(|e| PyValueError::new_err(e.to_string()))?;
    addr2line_output(symbolizer, &args).map_err(symbolize_error)
}

/// A missing or unreadable file as the matching `OSError`; anything else as `ValueError`.
fn symbolize_error(e: SymbolizeError) -> PyErr {
    match e {
        SymbolizeError::Io { path, source } => io_error(&path, &source),
        other => PyValueError::new_err(other.to_string()),
    }
}

fn source_fields(source: &DebugSource) -> (&'static str, Option<String>) {
    let path = |p: &PathBuf| Some(p.display().to_string());
    match source {
        DebugSource::EmbeddedDwarf => ("embedded", None),
        DebugSource::BuildIdFile(p) => ("build-id", path(p)),
        DebugSource::Debuglink(p) => ("debuglink", path(p)),
        DebugSource::Debuginfod(p) => ("debuginfod", path(p)),
        DebugSource::SymbolTable => ("symtab", None),
        DebugSource::MiniDebugInfo => ("minidebuginfo", None),
        DebugSource::None => ("none", None),
    }
}

fn describe(symbolizer: &CoreSymbolizer, module: &Module) -> ObjectDebugInfo {
    let (source, debug_file) = source_fields(&symbolizer.debug_source(module));
    ObjectDebugInfo {
        path: module.path.display().to_string(),
        build_id: module.build_id_hex(),
        source,
        debug_file,
        debuglink: module.debuglink.as_ref().map(|(name, _)| name.clone()),
        error: None,
    }
}

/// The objects of the current process that are files on disk (not the vDSO), load order.
fn process_modules() -> Vec<Module> {
    ModuleMap::current_process()
        .modules()
        .iter()
        .filter(|m| !m.path.as_os_str().is_empty() && m.path.is_file())
        .cloned()
        .collect()
}

/// Records for `paths`, or for this process's objects. Files named explicitly each get a
/// fresh symbolizer (from `options`): a stripped copy and its original share a build-id, which
/// is the symbolizer's cache key.
fn run_doctor(
    symbolizer: &CoreSymbolizer,
    options: &SymbolizerOptions,
    paths: Option<Vec<PathBuf>>,
) -> Vec<ObjectDebugInfo> {
    let Some(paths) = paths else {
        return process_modules()
            .iter()
            .map(|m| describe(symbolizer, m))
            .collect();
    };
    paths
        .into_iter()
        .map(|path| match Module::from_file(&path) {
            Ok(module) => describe(&CoreSymbolizer::new(options.clone()), &module),
            Err(e) => ObjectDebugInfo {
                path: path.display().to_string(),
                build_id: None,
                source: "unreadable",
                debug_file: None,
                debuglink: None,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

#[pymethods]
impl PySymbolizer {
    #[new]
    #[pyo3(signature = (on_message=None))]
    fn new(on_message: Option<Py<PyAny>>) -> Self {
        let mut options = SymbolizerOptions::from_env();
        options.messages = Some(message_sink(on_message));
        PySymbolizer {
            inner: CoreSymbolizer::new(options.clone()),
            options,
        }
    }

    /// binutils `addr2line` output for `argv` (its arguments, without the program name).
    /// Raises ValueError for bad arguments, OSError for a missing or unreadable object; a
    /// malformed object gives `??` frames and a warning.
    fn addr2line(&self, py: Python<'_>, argv: Vec<String>) -> PyResult<String> {
        py.detach(|| run_addr2line(&self.inner, &argv))
    }

    /// Frames for addresses relative to the object file at `path`, each innermost first.
    fn symbolize(
        &self,
        py: Python<'_>,
        path: PathBuf,
        addresses: Vec<u64>,
    ) -> PyResult<Vec<Vec<FrameTuple>>> {
        let module = Module::from_file(&path).map_err(symbolize_error)?;
        Ok(py.detach(|| {
            addresses
                .iter()
                .map(|&address| {
                    self.inner
                        .symbolize(&module, address)
                        .into_iter()
                        .map(|f| (f.function, f.file, f.line.unwrap_or(0), f.inlined))
                        .collect()
                })
                .collect()
        }))
    }

    /// Where the debug info of each object comes from: the objects at `paths`, or (None) every
    /// object loaded in this process.
    #[pyo3(signature = (paths=None))]
    fn doctor(
        &self,
        py: Python<'_>,
        paths: Option<Vec<PathBuf>>,
    ) -> PyResult<Vec<Py<ObjectDebugInfo>>> {
        let records = py.detach(|| run_doctor(&self.inner, &self.options, paths));
        records.into_iter().map(|r| Py::new(py, r)).collect()
    }
}

/// Paths of the objects loaded in this process (the executable first, files only).
#[pyfunction]
fn loaded_objects() -> Vec<String> {
    process_modules()
        .iter()
        .map(|m| m.path.display().to_string())
        .collect()
}

/// Adds the symbolizer's classes and functions to `heapgate._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PySymbolizer>()?;
    m.add_class::<ObjectDebugInfo>()?;
    m.add_function(wrap_pyfunction!(loaded_objects, m)?)?;
    Ok(())
}
