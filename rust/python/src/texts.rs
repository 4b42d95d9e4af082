//! The failure texts of the leak, growth and baseline checks for the plugin: each check's
//! verdict and text come from `heapgate_core::report`; the plugin only decides which checks
//! apply to a test.

use std::path::PathBuf;

use heapgate_core::report::{
    self, NativeLeaks, Percent, ReportFrame, ResolvedCapture, Suppression, TextOptions,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::live_resolver;
use crate::results::{frame_to_py, Report};

/// What `limit_leaks`' `filter_fn` receives: the location's frames, allocating frame first,
/// each with `function`, `filename` and `lineno` (as in pytest-memray).
#[pyclass(frozen, module = "heapgate._native")]
struct LeakStack {
    #[pyo3(get)]
    frames: Py<PyTuple>,
}

#[pymethods]
impl LeakStack {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!("LeakStack({} frames)", self.frames.bind(py).len())
    }
}

fn options(rootpath: Option<&std::path::Path>, max_frames: Option<usize>) -> TextOptions<'_> {
    TextOptions {
        rootpath,
        max_frames,
        ..TextOptions::default()
    }
}

/// `10.0MiB`-style text for a byte count (binary prefixes, one decimal).
#[pyfunction]
fn format_size(size: u64) -> String {
    report::format_size(size)
}

/// `limit_leaks`: the failure text when a location (a stack as shown) leaked more than
/// `limit` bytes and `filter_fn(LeakStack)`, if given, keeps it; else None.
#[pyfunction]
#[pyo3(signature = (report, limit, filter_fn=None, rootpath=None, max_frames=None))]
fn limit_leaks_failure(
    py: Python<'_>,
    report: PyRef<'_, Report>,
    limit: u64,
    filter_fn: Option<Bound<'_, PyAny>>,
    rootpath: Option<PathBuf>,
    max_frames: Option<usize>,
) -> PyResult<Option<String>> {
    let resolver = live_resolver(py);
    let data: &ResolvedCapture = &report.data;
    let options = options(rootpath.as_deref(), max_frames);
    let keep_all = |_: &[ReportFrame]| Ok::<bool, PyErr>(true);
    // Symbolizing is the slow part: done without the GIL, the filter then reads the cache.
    let text =
        py.detach(|| report::limit_leaks_failure(limit, data, &resolver, &options, keep_all));
    let Some(filter_fn) = filter_fn else {
        return text;
    };
    if text?.is_none() {
        return Ok(None);
    }
    report::limit_leaks_failure(limit, data, &resolver, &options, |stack| {
        let frames = stack
            .iter()
            .map(|f| Py::new(py, frame_to_py(f.clone())))
            .collect::<PyResult<Vec<_>>>()?;
        let frames = PyTuple::new(py, frames)?.unbind();
        filter_fn.call1((LeakStack { frames },))?.is_truthy()
    })
}

/// Does suppression `pattern` (a `leak:PATTERN` line's) match `name` (a frame's function,
/// file or object)?
#[pyfunction]
fn suppression_matches(pattern: String, name: &str) -> bool {
    Suppression {
        pattern,
        source: String::new(),
    }
    .matches(name)
}

/// The `--native-leaks` check of one test (`native_leaks_check`).
#[pyclass(frozen, get_all, module = "heapgate._native")]
struct NativeLeakCheck {
    /// The failure text, when lost native memory is over the limit.
    failure: Option<String>,
    /// Still-reachable native memory (never fails a test).
    reachable_bytes: u64,
    reachable_blocks: u64,
    /// Still-reachable native memory by location (what `-v` shows), or None.
    reachable_text: Option<String>,
    /// (suppression index, lost bytes, lost blocks) for each suppression that hid lost blocks.
    absorbed: Vec<(usize, u64, u64)>,
}

/// `--native-leaks`: lost native memory, minus `suppressions` ((pattern, `file:line`) of
/// each `leak:PATTERN` line), against `limit`; `reachable_text` only with `list_reachable`.
#[pyfunction]
#[pyo3(signature = (report, limit, suppressions, rootpath=None, max_frames=None, list_reachable=true))]
#[allow(clippy::too_many_arguments)]
fn native_leaks_check(
    py: Python<'_>,
    report: PyRef<'_, Report>,
    limit: u64,
    suppressions: Vec<(String, String)>,
    rootpath: Option<PathBuf>,
    max_frames: Option<usize>,
    list_reachable: bool,
) -> NativeLeakCheck {
    let resolver = live_resolver(py);
    let suppressions: Vec<Suppression> = suppressions
        .into_iter()
        .map(|(pattern, source)| Suppression { pattern, source })
        .collect();
    let data: &ResolvedCapture = &report.data;
    let options = options(rootpath.as_deref(), max_frames);
    let NativeLeaks {
        failure,
        reachable,
        reachable_text,
        absorbed,
    } = py.detach(|| {
        report::native_leaks(
            limit,
            data,
            &resolver,
            &suppressions,
            &options,
            list_reachable,
        )
    });
    NativeLeakCheck {
        failure,
        reachable_bytes: reachable.bytes,
        reachable_blocks: reachable.count,
        reachable_text,
        absorbed: absorbed
            .into_iter()
            .map(|a| (a.index, a.bytes, a.blocks))
            .collect(),
    }
}

/// `--heapgate-repeat`: the failure text when the live memory (`totals`, after each run) grew
/// by more than `threshold` bytes on every run after the first, else None. `checkpoints`
/// are the reports taken after each run.
#[pyfunction]
#[pyo3(signature = (totals, checkpoints, threshold, rootpath=None, max_frames=None))]
fn growth_failure(
    py: Python<'_>,
    totals: Vec<u64>,
    checkpoints: Vec<PyRef<'_, Report>>,
    threshold: u64,
    rootpath: Option<PathBuf>,
    max_frames: Option<usize>,
) -> Option<String> {
    let resolver = live_resolver(py);
    let captures: Vec<&ResolvedCapture> = checkpoints.iter().map(|r| &*r.data).collect();
    let options = options(rootpath.as_deref(), max_frames);
    py.detach(|| report::growth_failure(&totals, &captures, threshold, &resolver, &options))
}

/// How much a peak may grow over its baseline (`--heapgate-max-increase`, a `Decimal` of
/// percent, and `--heapgate-min-increase`, bytes).
#[pyclass(frozen, module = "heapgate._native")]
pub(crate) struct Tolerance(pub(crate) report::Tolerance);

#[pymethods]
impl Tolerance {
    #[new]
    fn new(max_increase: &Bound<'_, PyAny>, min_increase: u64) -> PyResult<Tolerance> {
        let (sign, digits, exponent): (u8, Vec<u8>, Bound<'_, PyAny>) =
            max_increase.call_method0("as_tuple")?.extract()?;
        let exponent: i64 = exponent.extract().map_err(|_| {
            PyValueError::new_err(format!("max_increase must be finite, not {max_increase}"))
        })?;
        let percent =
            Percent::new(&digits, exponent).map_err(|e| PyValueError::new_err(e.to_string()))?;
        if sign != 0 && percent != Percent::whole(0) {
            return Err(PyValueError::new_err(format!(
                "max_increase must not be negative, not {max_increase}"
            )));
        }
        Ok(Tolerance(report::Tolerance {
            max_increase: percent,
            min_increase,
        }))
    }

    /// Does a peak of `new` grow past the tolerance over the baseline's `old`?
    fn exceeded(&self, old: u64, new: u64) -> bool {
        self.0.exceeded(old, new)
    }

    fn __repr__(&self) -> String {
        format!(
            "Tolerance(+{}%, min_increase={})",
            self.0.max_increase, self.0.min_increase
        )
    }
}

/// `--heapgate-compare`: the failure text when `new` grew past `tolerance` over the
/// baseline's `old`, else None; `source` names the baseline.
#[pyfunction]
fn baseline_failure(old: u64, new: u64, tolerance: &Tolerance, source: &str) -> Option<String> {
    report::baseline_failure(old, new, &tolerance.0, source)
}

/// `--fail-on-increase`: the failure text when `peak` is above the previous passing run's.
#[pyfunction]
fn fail_on_increase_failure(previous: u64, peak: u64) -> Option<String> {
    report::fail_on_increase_failure(previous, peak)
}

/// The line that ends a failure measured after `runs` warm-up runs.
#[pyfunction]
fn warmup_note(runs: u64) -> String {
    report::warmup_note(runs)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LeakStack>()?;
    m.add_class::<NativeLeakCheck>()?;
    m.add_class::<Tolerance>()?;
    m.add_function(wrap_pyfunction!(format_size, m)?)?;
    m.add_function(wrap_pyfunction!(limit_leaks_failure, m)?)?;
    m.add_function(wrap_pyfunction!(native_leaks_check, m)?)?;
    m.add_function(wrap_pyfunction!(suppression_matches, m)?)?;
    m.add_function(wrap_pyfunction!(growth_failure, m)?)?;
    m.add_function(wrap_pyfunction!(baseline_failure, m)?)?;
    m.add_function(wrap_pyfunction!(fail_on_increase_failure, m)?)?;
    m.add_function(wrap_pyfunction!(warmup_note, m)?)?;
    Ok(())
}
