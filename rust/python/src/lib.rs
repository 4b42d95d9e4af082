//! `heapgate._native`: the thin pyo3 layer over `heapgate-core`. It knows Python objects;
//! the core does not. Start/stop a tracked test and hand its numbers to the plugin.

mod leaks;
mod pyframes;
mod pymem;
mod records;
mod symbols;
mod texts;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use heapgate_core::capture::{self, Frame, LeakKinds, TestReport, ThreadMode};
use heapgate_core::record::{Capture, ProcessFacts, TestInfo};
use heapgate_core::report::{
    peak_failure, FrameKind, InterpreterModules, ReportFrame, ResolvedCapture, Resolver,
    TextOptions,
};
use heapgate_core::symbolize::{ModuleMap, Symbolizer, SymbolizerOptions};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

/// heapgate's own heap memory is zeroed when freed, so stale copies of pointers in it never
/// hide a leak from the leak scan (see `capture::ScrubbingAllocator`).
#[global_allocator]
static ALLOCATOR: heapgate_core::capture::ScrubbingAllocator =
    heapgate_core::capture::ScrubbingAllocator;

pyo3::create_exception!(
    _native,
    TrackingError,
    PyRuntimeError,
    "The capture engine could not start or stop tracking."
);

/// One frame of an allocation's stack (the shape pytest-memray's `filter_fn` receives).
#[pyclass(frozen, get_all, module = "heapgate._native")]
struct StackFrame {
    function: String,
    /// Source file, or None when unknown (a native frame without debug info).
    filename: Option<String>,
    /// Line, or 0 when unknown.
    lineno: u32,
    /// Native return address, or None for a Python frame.
    address: Option<usize>,
    /// The loaded object of a native frame.
    module: Option<String>,
    /// True for a native frame inlined into the next one.
    inlined: bool,
    /// 'python', 'native' or 'interpreter'.
    kind: &'static str,
}

#[pymethods]
impl StackFrame {
    fn __repr__(&self) -> String {
        format!(
            "StackFrame({:?}, {:?}, {}, kind={:?})",
            self.function, self.filename, self.lineno, self.kind
        )
    }

    /// `function at path:line` (path relative to `rootpath` when under it), as failure texts
    /// show frames.
    #[pyo3(signature = (rootpath=None))]
    fn format(&self, rootpath: Option<PathBuf>) -> String {
        let frame = ReportFrame {
            function: self.function.clone(),
            filename: self.filename.clone(),
            line: (self.lineno > 0).then_some(self.lineno),
            address: self.address,
            module: self.module.clone(),
            inlined: self.inlined,
            kind: match self.kind {
                "python" => FrameKind::Python,
                "interpreter" => FrameKind::Interpreter,
                _ => FrameKind::Native,
            },
        };
        heapgate_core::report::format_frame(&frame, rootpath.as_deref())
    }
}

fn symbolizer() -> &'static Symbolizer {
    static SYMBOLIZER: OnceLock<Symbolizer> = OnceLock::new();
    SYMBOLIZER.get_or_init(|| Symbolizer::new(SymbolizerOptions::from_env()))
}

pub(crate) fn interpreter_modules(py: Python<'_>) -> &'static InterpreterModules {
    static INTERPRETER: OnceLock<InterpreterModules> = OnceLock::new();
    INTERPRETER.get_or_init(|| {
        let executable = py
            .import("sys")
            .and_then(|sys| sys.getattr("executable"))
            .and_then(|e| e.extract::<PathBuf>())
            .ok();
        InterpreterModules::new(executable.as_deref())
    })
}

/// The resolver of this process's stacks.
pub(crate) fn live_resolver(py: Python<'_>) -> Resolver<'static> {
    Resolver {
        symbolizer: symbolizer(),
        interpreter: interpreter_modules(py),
    }
}

/// What one allocation site (a stack and an allocator) held.
#[pyclass(frozen, module = "heapgate._native")]
struct Site {
    #[pyo3(get)]
    allocator: &'static str,
    #[pyo3(get)]
    bytes_at_peak: u64,
    #[pyo3(get)]
    count_at_peak: u64,
    #[pyo3(get)]
    leaked_bytes: u64,
    #[pyo3(get)]
    leaked_count: u64,
    #[pyo3(get)]
    total_bytes: u64,
    #[pyo3(get)]
    total_count: u64,
    kinds: Option<LeakKinds>,
    data: Arc<ResolvedCapture>,
    index: usize,
    resolved: OnceLock<Py<PyTuple>>,
}

#[pymethods]
impl Site {
    /// The stack, allocating frame first: native frames are symbolized on first access.
    #[getter]
    fn stack(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        if let Some(stack) = self.resolved.get() {
            return Ok(stack.clone_ref(py));
        }
        let resolver = live_resolver(py);
        let frames = py.detach(|| self.data.stack(self.index, &resolver).to_vec());
        let frames = frames
            .into_iter()
            .map(|f| Py::new(py, frame_to_py(f)))
            .collect::<PyResult<Vec<_>>>()?;
        let stack = PyTuple::new(py, frames)?.unbind();
        Ok(self.resolved.get_or_init(|| stack).clone_ref(py))
    }

    /// The site's live blocks by reachability, when a leak scan ran.
    #[getter]
    fn leak_kinds<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.kinds
            .as_ref()
            .map(|k| leaks::kinds_to_dict(py, k))
            .transpose()
    }
}

/// What one tracked test allocated.
#[pyclass(frozen, module = "heapgate._native")]
struct Report {
    #[pyo3(get)]
    peak_bytes: u64,
    #[pyo3(get)]
    peak_count: u64,
    #[pyo3(get)]
    total_bytes: u64,
    #[pyo3(get)]
    total_count: u64,
    #[pyo3(get)]
    leaked_bytes: u64,
    #[pyo3(get)]
    leaked_count: u64,
    /// Sites, largest at peak first.
    #[pyo3(get)]
    sites: Py<PyList>,
    /// Why these numbers cannot be trusted (Python's allocator was replaced during the
    /// test), or None.
    #[pyo3(get)]
    interpreter_problem: Option<String>,
    data: Arc<ResolvedCapture>,
}

#[pymethods]
impl Report {
    /// The failure text of a test whose peak exceeded `limit` (report/text.rs).
    #[pyo3(signature = (limit, mode="spawned", rootpath=None, max_sites=5, max_frames=None))]
    fn peak_failure(
        &self,
        py: Python<'_>,
        limit: u64,
        mode: &str,
        rootpath: Option<PathBuf>,
        max_sites: usize,
        max_frames: Option<usize>,
    ) -> String {
        let resolver = live_resolver(py);
        py.detach(|| {
            peak_failure(
                limit,
                &self.data,
                &resolver,
                mode,
                &TextOptions {
                    rootpath: rootpath.as_deref(),
                    max_sites,
                    max_frames,
                },
            )
        })
    }

    /// All live blocks by reachability, when a leak scan ran.
    #[getter]
    fn leak_kinds<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.data
            .capture()
            .totals
            .leak_kinds
            .as_ref()
            .map(|k| leaks::kinds_to_dict(py, &LeakKinds::from(k)))
            .transpose()
    }

    /// This report as a capture of test `nodeid` (see records.rs).
    /// `failure`: the failure text the test reported, if a memory check failed. Limits in
    /// bytes: `limit` is `limit_memory`'s, `limit_leaks` per location, `native_leaks` of lost
    /// native memory.
    #[pyo3(signature = (nodeid, outcome, failure, limit, mode, facts, limit_leaks=None, native_leaks=None))]
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        nodeid: String,
        outcome: String,
        failure: Option<String>,
        limit: Option<u64>,
        mode: String,
        facts: records::Facts,
        limit_leaks: Option<u64>,
        native_leaks: Option<u64>,
    ) -> records::Record {
        let limits = heapgate_core::record::Limits {
            limit_memory: limit,
            limit_leaks,
            native_leaks,
            thread_mode: mode,
        };
        records::Record::from_live(&self.data, nodeid, outcome, failure, limits, facts)
    }
}

fn frame_to_py(frame: ReportFrame) -> StackFrame {
    StackFrame {
        function: frame.function,
        filename: frame.filename,
        lineno: frame.line.unwrap_or(0),
        address: frame.address,
        module: frame.module,
        inlined: frame.inlined,
        kind: match frame.kind {
            FrameKind::Python => "python",
            FrameKind::Native => "native",
            FrameKind::Interpreter => "interpreter",
        },
    }
}

fn report_to_py(
    py: Python<'_>,
    report: TestReport,
    interpreter_problem: Option<String>,
) -> PyResult<Report> {
    let has_native = report
        .sites
        .iter()
        .any(|s| s.stack.iter().any(|f| matches!(f, Frame::Native(_))));
    let modules = if has_native {
        ModuleMap::current_process_with(heapgate_core::capture::unloaded_modules())
    } else {
        ModuleMap::new(Vec::new())
    };
    let data = Arc::new(ResolvedCapture::new(Capture::from_report(
        &report,
        &modules,
        ProcessFacts::default(),
        TestInfo::default(),
    )));
    let sites = report
        .sites
        .iter()
        .enumerate()
        .map(|(index, site)| {
            Py::new(
                py,
                Site {
                    allocator: site.allocator.name(),
                    bytes_at_peak: site.bytes_at_peak,
                    count_at_peak: site.count_at_peak,
                    leaked_bytes: site.leaked_bytes,
                    leaked_count: site.leaked_count,
                    total_bytes: site.total_bytes,
                    total_count: site.total_count,
                    kinds: site.leak_kinds,
                    data: Arc::clone(&data),
                    index,
                    resolved: OnceLock::new(),
                },
            )
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(Report {
        peak_bytes: report.peak_bytes,
        peak_count: report.peak_count,
        total_bytes: report.total_bytes,
        total_count: report.total_count,
        leaked_bytes: report.leaked_bytes,
        leaked_count: report.leaked_count,
        sites: PyList::new(py, sites)?.unbind(),
        interpreter_problem,
        data,
    })
}

/// The thread mode, and whether tracers' callbacks are charged too (a `+tracers` suffix).
fn charge_mode(mode: &str) -> PyResult<(ThreadMode, bool)> {
    match mode.strip_suffix("+tracers") {
        Some(threads) => Ok((thread_mode(threads)?, true)),
        None => Ok((thread_mode(mode)?, false)),
    }
}

fn thread_mode(mode: &str) -> PyResult<ThreadMode> {
    match mode {
        "current_thread" => Ok(ThreadMode::CurrentThread),
        "spawned" => Ok(ThreadMode::Spawned),
        "all" => Ok(ThreadMode::All),
        other => Err(pyo3::exceptions::PyValueError::new_err(format!(
            "thread mode must be 'current_thread', 'spawned' or 'all', not {other:?}"
        ))),
    }
}

/// Start tracking the calling thread's test.
///
/// `entry_codes`: code objects of the test function; the calling thread is charged only while
/// one of them runs, and its stacks end there (empty: charge the whole window).
/// `boundary`: a frame below the test (its stacks never go past it).
/// `mode`: 'current_thread', 'spawned' (default: threads started during the call count) or 'all';
/// with '+tracers', what trace/profile/sys.monitoring callbacks allocate is charged too.
/// `native`: also record native return addresses (hybrid stacks).
#[pyfunction]
#[pyo3(signature = (entry_codes, boundary=None, mode="spawned", native=false))]
fn start(
    entry_codes: Vec<Bound<'_, PyAny>>,
    boundary: Option<Bound<'_, PyAny>>,
    mode: &str,
    native: bool,
) -> PyResult<()> {
    let (mode, tracers) = charge_mode(mode)?;
    if entry_codes.len() > pyframes::MAX_ENTRY_CODES {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "at most {} entry code objects",
            pyframes::MAX_ENTRY_CODES
        )));
    }
    let codes: Vec<*mut pyo3::ffi::PyObject> = entry_codes.iter().map(|c| c.as_ptr()).collect();
    capture::set_python_stack_source(pyframes::source());
    pymem::install();
    // A domain whose wrapper was taken out since the last test is wrapped again.
    pymem::rewrap_bypassed();
    pyframes::set_entry(&codes, boundary.as_ref().map(|b| b.as_ptr()));
    capture::set_charge_tracers(tracers);
    capture::start(mode, !codes.is_empty(), native)
        .map_err(|e| TrackingError::new_err(e.to_string()))
}

/// Stop tracking and return the test's `Report`.
#[pyfunction]
fn stop(py: Python<'_>) -> PyResult<Report> {
    let report = capture::stop().map_err(|e| TrackingError::new_err(e.to_string()))?;
    pyframes::set_entry(&[], None);
    let problem = pymem::problem_after_test();
    report_to_py(py, report, problem)
}

/// The tracked test's numbers so far (a `Report`), without stopping: what is live now.
#[pyfunction]
fn checkpoint(py: Python<'_>) -> PyResult<Report> {
    let report = capture::checkpoint().map_err(|e| TrackingError::new_err(e.to_string()))?;
    report_to_py(py, report, None)
}

/// True while a test is tracked.
#[pyfunction]
fn is_active() -> bool {
    capture::is_active()
}

/// Has this process installed any hook: GOT entries patched, or Python's allocators wrapped?
/// False until the first tracked test (untracked sessions pay nothing).
#[pyfunction]
fn hooks_installed() -> bool {
    capture::installed() || pymem::installed()
}

/// Raise TrackingError where tracking is not supported (patches nothing).
#[pyfunction]
fn check_supported() -> PyResult<()> {
    capture::supported().map_err(|e| TrackingError::new_err(e.to_string()))
}

/// Install the hooks now (normally done by the first `start`). Raises TrackingError where
/// tracking is not supported.
#[pyfunction]
fn install() -> PyResult<()> {
    capture::install().map_err(|e| TrackingError::new_err(e.to_string()))
}

/// What `HEAPGATE_EXPLAIN_LEAKS=1` made the last `scan_leaks` find: for each reference to
/// one of the test's blocks, where it was found (empty without the variable).
#[pyfunction]
fn leak_explanations() -> Vec<String> {
    capture::take_leak_explanations()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(is_active, m)?)?;
    m.add_function(wrap_pyfunction!(install, m)?)?;
    m.add_function(wrap_pyfunction!(hooks_installed, m)?)?;
    m.add_function(wrap_pyfunction!(check_supported, m)?)?;
    m.add_function(wrap_pyfunction!(leak_explanations, m)?)?;
    m.add_class::<Report>()?;
    m.add_class::<Site>()?;
    m.add_class::<StackFrame>()?;
    m.add("TrackingError", m.py().get_type::<TrackingError>())?;
    records::register(m)?;
    symbols::register(m)?;
    leaks::register(m)?;
    texts::register(m)?;
    Ok(())
}
