//! Capture files and report formats for Python callers (the plugin and the `heapgate` CLI).
//! Thin: every format lives in `heapgate_core::report`, the file in `heapgate_core::record`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heapgate_core::record::{Capture, Limits, ProcessFacts, TestInfo};
use heapgate_core::report::{
    capture_text, flamegraph_svg, folded_stacks, github_annotations, github_summary, junit_xml,
    Artifacts, GithubOptions, InterpreterModules, ResolvedCapture, Resolver, SessionFacts,
    SessionReport, TestEntry, TextOptions, Weight,
};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

pyo3::create_exception!(
    _native,
    ReportFileError,
    PyValueError,
    "A capture file or session report that cannot be read; the message names the file and the problem."
);

/// Facts about the process, from the plugin: `python_version`, `platform`, `executable`,
/// `rootdir` (the last two may be None).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub(crate) struct Facts {
    python_version: String,
    platform: String,
    executable: Option<String>,
    rootdir: Option<String>,
}

impl Facts {
    fn into_process_facts(self) -> ProcessFacts {
        ProcessFacts {
            python_version: self.python_version,
            platform: self.platform,
            heapgate_version: env!("CARGO_PKG_VERSION").to_string(),
            executable: self.executable,
            rootdir: self.rootdir,
        }
    }
}

/// One test's capture: written to and read from capture files, rendered into every format.
#[pyclass(frozen, module = "heapgate._native")]
pub(crate) struct Record {
    data: Arc<ResolvedCapture>,
    /// `None`: the objects of this process's interpreter (a live record).
    interpreter: Option<InterpreterModules>,
}

impl Record {
    pub(crate) fn from_live(
        data: &ResolvedCapture,
        nodeid: String,
        outcome: String,
        failure: Option<String>,
        limits: Limits,
        facts: Facts,
    ) -> Record {
        let resolved = data.with_test(
            TestInfo {
                nodeid,
                outcome,
                memory_failed: failure.is_some(),
                limits,
                failure,
            },
            facts.into_process_facts(),
        );
        Record {
            data: Arc::new(resolved),
            interpreter: None,
        }
    }

    fn with_resolver<T>(&self, py: Python<'_>, f: impl FnOnce(&Resolver<'_>) -> T + Send) -> T
    where
        T: Send,
    {
        let resolver = match &self.interpreter {
            Some(interpreter) => Resolver {
                symbolizer: crate::symbolizer(),
                interpreter,
            },
            None => crate::live_resolver(py),
        };
        py.detach(|| f(&resolver))
    }
}

fn file_error(path: &Path, problem: impl std::fmt::Display) -> PyErr {
    ReportFileError::new_err(format!("{}: {problem}", path.display()))
}

fn write_file(path: &Path, text: &[u8]) -> PyResult<()> {
    std::fs::write(path, text)
        .map_err(|e| PyOSError::new_err(format!("{}: cannot write: {e}", path.display())))
}

#[pymethods]
impl Record {
    /// Reads a capture file; raises ReportFileError naming the file and the problem.
    #[staticmethod]
    fn read(py: Python<'_>, path: PathBuf) -> PyResult<Record> {
        let bytes = std::fs::read(&path).map_err(|e| file_error(&path, e))?;
        let capture = py
            .detach(|| Capture::from_bytes(&bytes))
            .map_err(|e| file_error(&path, e))?;
        let executable = capture.facts.executable.clone().map(PathBuf::from);
        Ok(Record {
            data: Arc::new(ResolvedCapture::new(capture)),
            interpreter: Some(InterpreterModules::new(executable.as_deref())),
        })
    }

    /// Writes the capture file.
    fn write(&self, path: PathBuf) -> PyResult<()> {
        let bytes = self
            .data
            .capture()
            .to_bytes()
            .map_err(|e| file_error(&path, e))?;
        write_file(&path, &bytes)
    }

    /// The flamegraph SVG (bytes at the peak; bytes leaked when nothing was live at the peak).
    fn flamegraph_svg(&self, py: Python<'_>) -> PyResult<String> {
        self.with_resolver(py, |r| flamegraph_svg(&self.data, r))
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Folded stacks: `outer;...;inner bytes` lines; `leaked=True` weighs by bytes leaked.
    #[pyo3(signature = (leaked=false))]
    fn folded(&self, py: Python<'_>, leaked: bool) -> String {
        let weight = if leaked {
            Weight::BytesLeaked
        } else {
            Weight::BytesAtPeak
        };
        self.with_resolver(py, |r| folded_stacks(&self.data, r, weight))
    }

    /// The failure text (or, for a test within its limits, its numbers and top locations).
    #[pyo3(signature = (rootpath=None, max_sites=5, max_frames=None))]
    fn text(
        &self,
        py: Python<'_>,
        rootpath: Option<PathBuf>,
        max_sites: usize,
        max_frames: Option<usize>,
    ) -> String {
        let root = rootpath.or_else(|| {
            self.data
                .capture()
                .facts
                .rootdir
                .as_ref()
                .map(PathBuf::from)
        });
        self.with_resolver(py, |r| {
            capture_text(
                &self.data,
                r,
                &TextOptions {
                    rootpath: root.as_deref(),
                    max_sites,
                    max_frames,
                },
            )
        })
    }

    /// pytest node id.
    #[getter]
    fn nodeid(&self) -> String {
        self.data.capture().test.nodeid.clone()
    }

    /// pytest outcome of the call.
    #[getter]
    fn outcome(&self) -> String {
        self.data.capture().test.outcome.clone()
    }

    /// True when a memory check failed.
    #[getter]
    fn memory_failed(&self) -> bool {
        self.data.capture().test.memory_failed
    }

    /// Peak bytes.
    #[getter]
    fn peak_bytes(&self) -> u64 {
        self.data.capture().result.totals.peak_bytes
    }

    /// Bytes still live at the end.
    #[getter]
    fn leaked_bytes(&self) -> u64 {
        self.data.capture().result.totals.leaked_bytes
    }

    /// `limit_memory`'s limit.
    #[getter]
    fn limit(&self) -> Option<u64> {
        self.data.capture().test.limits.limit_memory
    }

    /// heapgate version that wrote the capture.
    #[getter]
    fn heapgate_version(&self) -> String {
        self.data.capture().facts.heapgate_version.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "Record({:?}, peak_bytes={})",
            self.data.capture().test.nodeid,
            self.data.capture().result.totals.peak_bytes
        )
    }
}

/// The session JSON report of `tests`: (record, capture path, flamegraph path) with paths
/// relative to the report's directory.
#[pyfunction]
fn session_report(
    py: Python<'_>,
    tests: Vec<(Py<Record>, Option<String>, Option<String>)>,
    facts: Facts,
) -> String {
    let mut entries = Vec::with_capacity(tests.len());
    for (record, capture, flamegraph) in tests {
        let record = record.get();
        let artifacts = Artifacts {
            capture,
            flamegraph,
        };
        entries.push(record.with_resolver(py, |r| TestEntry::new(&record.data, r, artifacts)));
    }
    let facts = facts.into_process_facts();
    SessionReport::new(
        SessionFacts {
            python_version: facts.python_version,
            platform: facts.platform,
            heapgate_version: facts.heapgate_version,
            rootdir: facts.rootdir,
            ..SessionFacts::default()
        },
        entries,
    )
    .to_json()
}

/// Checks a session report's text (`path` names it in errors) and returns it normalized.
#[pyfunction]
fn read_session_report(path: PathBuf) -> PyResult<String> {
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    let report = SessionReport::from_json(&text).map_err(|e| file_error(&path, e))?;
    Ok(report.to_json())
}

/// heapgate's JUnit XML for the session report at `path`; attachment paths are joined to
/// `base` (default: the report's directory).
#[pyfunction]
#[pyo3(signature = (path, base=None))]
fn junit_from_session(path: PathBuf, base: Option<PathBuf>) -> PyResult<String> {
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    let report = SessionReport::from_json(&text).map_err(|e| file_error(&path, e))?;
    let base = base.or_else(|| path.parent().map(Path::to_path_buf));
    junit_xml(&report, base.as_deref()).map_err(|e| file_error(&path, e))
}

/// The GitHub job summary (Markdown) and the `::error` annotation lines (every failure,
/// largest first) of the session report at `path`. `baseline` is (name shown, node id → peak).
#[pyfunction]
#[pyo3(signature = (path, workspace, blob_url=None, artifact=None, run_url=None, exit_code=None, baseline=None, top=5))]
#[allow(clippy::too_many_arguments)]
fn github_report(
    path: PathBuf,
    workspace: PathBuf,
    blob_url: Option<String>,
    artifact: Option<String>,
    run_url: Option<String>,
    exit_code: Option<i32>,
    baseline: Option<(String, std::collections::BTreeMap<String, u64>)>,
    top: usize,
) -> PyResult<(String, Vec<String>)> {
    let text = std::fs::read_to_string(&path).map_err(|e| file_error(&path, e))?;
    let report = SessionReport::from_json(&text).map_err(|e| file_error(&path, e))?;
    let options = GithubOptions {
        workspace,
        blob_url,
        artifact,
        run_url,
        exit_code,
        baseline,
        top,
    };
    let annotations = github_annotations(&report, &options)
        .iter()
        .map(|a| a.command())
        .collect();
    Ok((github_summary(&report, &options), annotations))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Record>()?;
    m.add_function(wrap_pyfunction!(session_report, m)?)?;
    m.add_function(wrap_pyfunction!(read_session_report, m)?)?;
    m.add_function(wrap_pyfunction!(junit_from_session, m)?)?;
    m.add_function(wrap_pyfunction!(github_report, m)?)?;
    m.add("MAX_ANNOTATIONS", heapgate_core::report::MAX_ANNOTATIONS)?;
    m.add("ReportFileError", m.py().get_type::<ReportFileError>())?;
    Ok(())
}
