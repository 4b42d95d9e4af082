//! `heapgate._native`: the thin pyo3 layer over `heapgate-core`. It knows Python objects;
//! the core does not. Start/stop a tracked test and hand its numbers to the plugin.

mod pyframes;
mod pymem;

use heapgate_core::capture::{self, Frame, SiteReport, TestReport, ThreadMode};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

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
    filename: String,
    lineno: u32,
    /// Native return address, or None for a Python frame.
    address: Option<usize>,
}

#[pymethods]
impl StackFrame {
    fn __repr__(&self) -> String {
        format!(
            "StackFrame({:?}, {:?}, {})",
            self.function, self.filename, self.lineno
        )
    }
}

/// What one allocation site (a stack and an allocator) held.
#[pyclass(frozen, get_all, module = "heapgate._native")]
struct Site {
    allocator: &'static str,
    bytes_at_peak: u64,
    count_at_peak: u64,
    leaked_bytes: u64,
    leaked_count: u64,
    total_bytes: u64,
    total_count: u64,
    /// Allocating frame first.
    stack: Py<PyTuple>,
}

/// What one tracked test allocated.
#[pyclass(frozen, get_all, module = "heapgate._native")]
struct Report {
    peak_bytes: u64,
    peak_count: u64,
    total_bytes: u64,
    total_count: u64,
    leaked_bytes: u64,
    leaked_count: u64,
    /// Sites, largest at peak first.
    sites: Py<PyList>,
}

fn frame_to_py(py: Python<'_>, frame: Frame) -> PyResult<Py<StackFrame>> {
    let frame = match frame {
        Frame::Python {
            function,
            filename,
            line,
        } => StackFrame {
            function,
            filename,
            lineno: line,
            address: None,
        },
        Frame::Native(address) => StackFrame {
            function: format!("{address:#x}"),
            filename: String::from("??"),
            lineno: 0,
            address: Some(address),
        },
    };
    Py::new(py, frame)
}

fn site_to_py(py: Python<'_>, site: SiteReport) -> PyResult<Py<Site>> {
    let frames = site
        .stack
        .into_iter()
        .map(|f| frame_to_py(py, f))
        .collect::<PyResult<Vec<_>>>()?;
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
            stack: PyTuple::new(py, frames)?.unbind(),
        },
    )
}

fn report_to_py(py: Python<'_>, report: TestReport) -> PyResult<Report> {
    let sites = report
        .sites
        .into_iter()
        .map(|s| site_to_py(py, s))
        .collect::<PyResult<Vec<_>>>()?;
    Ok(Report {
        peak_bytes: report.peak_bytes,
        peak_count: report.peak_count,
        total_bytes: report.total_bytes,
        total_count: report.total_count,
        leaked_bytes: report.leaked_bytes,
        leaked_count: report.leaked_count,
        sites: PyList::new(py, sites)?.unbind(),
    })
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
/// `mode`: 'current_thread', 'spawned' (default: threads started during the call count) or 'all'.
#[pyfunction]
#[pyo3(signature = (entry_codes, boundary=None, mode="spawned"))]
fn start(
    entry_codes: Vec<Bound<'_, PyAny>>,
    boundary: Option<Bound<'_, PyAny>>,
    mode: &str,
) -> PyResult<()> {
    let mode = thread_mode(mode)?;
    if entry_codes.len() > pyframes::MAX_ENTRY_CODES {
        return Err(pyo3::exceptions::PyValueError::new_err(format!(
            "at most {} entry code objects",
            pyframes::MAX_ENTRY_CODES
        )));
    }
    let codes: Vec<*mut pyo3::ffi::PyObject> = entry_codes.iter().map(|c| c.as_ptr()).collect();
    capture::set_python_stack_source(pyframes::source());
    pymem::install();
    pyframes::set_entry(&codes, boundary.as_ref().map(|b| b.as_ptr()));
    capture::start(mode, !codes.is_empty()).map_err(|e| TrackingError::new_err(e.to_string()))
}

/// Stop tracking and return the test's `Report`.
#[pyfunction]
fn stop(py: Python<'_>) -> PyResult<Report> {
    let report = capture::stop().map_err(|e| TrackingError::new_err(e.to_string()))?;
    pyframes::set_entry(&[], None);
    report_to_py(py, report)
}

/// True while a test is tracked.
#[pyfunction]
fn is_active() -> bool {
    capture::is_active()
}

/// Install the hooks now (normally done by the first `start`). Raises TrackingError where
/// tracking is not supported.
#[pyfunction]
fn install() -> PyResult<()> {
    capture::install().map_err(|e| TrackingError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(start, m)?)?;
    m.add_function(wrap_pyfunction!(stop, m)?)?;
    m.add_function(wrap_pyfunction!(is_active, m)?)?;
    m.add_function(wrap_pyfunction!(install, m)?)?;
    m.add_class::<Report>()?;
    m.add_class::<Site>()?;
    m.add_class::<StackFrame>()?;
    m.add("TrackingError", m.py().get_type::<TrackingError>())?;
    Ok(())
}
