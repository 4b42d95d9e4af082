//! `heapgate._native`: the thin pyo3 layer over `heapgate-core`. It knows Python objects;
//! the core does not. Start/stop a tracked test and hand its numbers to the plugin.

mod leaks;
mod pyframes;
mod pymem;
mod records;
mod results;
mod symbols;
mod texts;

use std::path::PathBuf;
use std::sync::OnceLock;

use heapgate_core::capture::{self, CaptureError};
use heapgate_core::report::{InterpreterModules, Resolver};
use heapgate_core::symbolize::{Symbolizer, SymbolizerOptions};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use results::Report;

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

/// The one way a capture error reaches Python: a `TrackingError` with the core's message.
pub(crate) fn capture_error(e: CaptureError) -> PyErr {
    TrackingError::new_err(e.to_string())
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

/// Start tracking the calling thread's test.
///
/// `entry_codes`: code objects of the test function; the calling thread is charged only while
/// one of them runs, and its stacks end there (empty: charge the whole window).
/// `boundary`: a frame below the test (its stacks never go past it).
/// `mode`: whose allocations are charged (default `ThreadMode.SPAWNED`: threads started during
/// the call count too).
/// `native`: also record native return addresses (hybrid stacks).
/// `include_tracers`: also charge what trace/profile/sys.monitoring callbacks allocate.
#[pyfunction]
#[pyo3(signature = (entry_codes, boundary=None, mode=results::PyThreadMode::Spawned, native=false, include_tracers=false))]
fn start(
    entry_codes: Vec<Bound<'_, PyAny>>,
    boundary: Option<Bound<'_, PyAny>>,
    mode: results::PyThreadMode,
    native: bool,
    include_tracers: bool,
) -> PyResult<()> {
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
    capture::set_charge_tracers(include_tracers);
    capture::start(mode.into(), !codes.is_empty(), native).map_err(capture_error)
}

/// Stop tracking and return the test's `Report`.
#[pyfunction]
fn stop() -> PyResult<Report> {
    let report = capture::stop().map_err(capture_error)?;
    pyframes::set_entry(&[], None);
    let problem = pymem::problem_after_test();
    Ok(Report::new(report, problem))
}

/// The tracked test's numbers so far (a `Report`), without stopping: what is live now.
#[pyfunction]
fn checkpoint() -> PyResult<Report> {
    let report = capture::checkpoint().map_err(capture_error)?;
    Ok(Report::new(report, None))
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
    capture::supported().map_err(capture_error)
}

/// Install the hooks now (normally done by the first `start`). Raises TrackingError where
/// tracking is not supported.
#[pyfunction]
fn install() -> PyResult<()> {
    capture::install().map_err(capture_error)
}

/// What `HEAPGATE_EXPLAIN_LEAKS=1` made the last `scan_leaks` find: for each reference to
/// one of the test's blocks, where it was found (empty without the variable).
#[pyfunction]
fn leak_explanations() -> Vec<String> {
    capture::take_leak_explanations()
}

/// For tests of the leak scan: keep `word` until the process ends in a block of heapgate's
/// own heap memory, allocated as heapgate allocates (untracked), as heapgate's structures may
/// hold a copy of a word of the program's. The scan must not read it as a reference.
#[pyfunction]
fn _keep_word_in_own_memory(word: usize) {
    static KEPT: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());
    let _untracked = capture::Guard::enter();
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(word);
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
    m.add_function(wrap_pyfunction!(_keep_word_in_own_memory, m)?)?;
    m.add("TrackingError", m.py().get_type::<TrackingError>())?;
    results::register(m)?;
    records::register(m)?;
    symbols::register(m)?;
    leaks::register(m)?;
    texts::register(m)?;
    Ok(())
}
