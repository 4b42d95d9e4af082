//! Capture files and report formats for Python callers (the plugin and the `heapgate` CLI).
//! Thin: every format lives in `heapgate_core::report`, the file in `heapgate_core::record`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use heapgate_core::record::{Capture, Limits, ProcessFacts, TestInfo};
use heapgate_core::report::{
    baseline_summary_lines, capture_text, flamegraph_svg, folded_stacks, github_annotations,
    github_summary, junit_xml, Artifacts, GithubOptions, InterpreterModules, ResolvedCapture,
    Resolver, SessionFacts, SessionReport, SessionTest, TestEntry, TestNotes, TextOptions, Weight,
};

use crate::texts::Tolerance;
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

    /// The test's record for the session report (`SessionReport.add`), as JSON: its entry
    /// (`capture`, `flamegraph`: its files, relative to the report's directory; `locations`:
    /// resolve its top locations' stacks, needed when the report is written) and what the
    /// terminal summary needs besides.
    #[pyo3(signature = (capture=None, flamegraph=None, *, locations=true, limit_source=None, native_leaks=false, absorbed=Vec::new(), problems=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn session_test(
        &self,
        py: Python<'_>,
        capture: Option<String>,
        flamegraph: Option<String>,
        locations: bool,
        limit_source: Option<String>,
        native_leaks: bool,
        absorbed: Vec<(usize, u64, u64)>,
        problems: Vec<String>,
    ) -> String {
        let artifacts = Artifacts {
            capture,
            flamegraph,
        };
        let entry = if locations {
            self.with_resolver(py, |r| TestEntry::new(&self.data, r, artifacts))
        } else {
            TestEntry {
                artifacts,
                ..TestEntry::numbers(&self.data)
            }
        };
        SessionTest {
            entry,
            notes: TestNotes {
                limit_source,
                native_leaks,
                absorbed,
                problems,
            },
        }
        .to_json()
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
        self.data.capture().totals.peak_bytes
    }

    /// Bytes still live at the end.
    #[getter]
    fn leaked_bytes(&self) -> u64 {
        self.data.capture().totals.leaked_bytes
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
            self.data.capture().totals.peak_bytes
        )
    }
}

/// The session report (`heapgate.json`) as one object: the plugin adds each tracked test's
/// record as it finishes (from this process or an xdist worker), `heapgate merge` joins CI
/// jobs' reports, and the JSON, JUnit, terminal table and GitHub summary all come from it.
#[pyclass(module = "heapgate._native", name = "SessionReport")]
struct PySessionReport(SessionReport);

fn read_report(path: &Path) -> PyResult<SessionReport> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    SessionReport::from_json(&text).map_err(|e| file_error(path, e))
}

#[pymethods]
impl PySessionReport {
    /// An empty report of this process's session.
    #[new]
    fn new(facts: Facts) -> PySessionReport {
        let facts = facts.into_process_facts();
        PySessionReport(SessionReport::new(
            SessionFacts {
                python_version: facts.python_version,
                platform: facts.platform,
                heapgate_version: facts.heapgate_version,
                rootdir: facts.rootdir,
                ..SessionFacts::default()
            },
            Vec::new(),
        ))
    }

    /// Reads a `heapgate.json`; raises ReportFileError naming the file and the problem.
    #[staticmethod]
    fn read(path: PathBuf) -> PyResult<PySessionReport> {
        read_report(&path).map(PySessionReport)
    }

    /// Joins `paths` (reports of several jobs) into one whose artifact paths are relative to
    /// `out_dir`: tests in order, report by report; session facts from the first.
    #[staticmethod]
    fn merge(paths: Vec<PathBuf>, out_dir: PathBuf) -> PyResult<PySessionReport> {
        let mut merged: Option<SessionReport> = None;
        for path in paths {
            let report = read_report(&path)?;
            let dir = std::fs::canonicalize(&path)
                .map_err(|e| file_error(&path, e))?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default();
            merged
                .get_or_insert_with(|| SessionReport::new(report.session.clone(), Vec::new()))
                .merge(report, &dir, &out_dir);
        }
        Ok(PySessionReport(merged.unwrap_or_else(|| {
            SessionReport::new(SessionFacts::default(), Vec::new())
        })))
    }

    /// Adds a finished test: the JSON of `Record.session_test` (an earlier attempt of the same
    /// test is replaced).
    fn add(&mut self, test: &str) -> PyResult<()> {
        let test = SessionTest::from_json(test)
            .map_err(|e| PyValueError::new_err(format!("not a heapgate test record: {e}")))?;
        self.0.add(test);
        Ok(())
    }

    /// `heapgate.json`'s text.
    fn to_json(&self) -> String {
        self.0.to_json()
    }

    /// heapgate's JUnit XML; attachment paths are joined to `base`.
    #[pyo3(signature = (base=None))]
    fn junit(&self, base: Option<PathBuf>) -> PyResult<String> {
        junit_xml(&self.0, base.as_deref()).map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// Tests tracked.
    #[getter]
    fn tracked(&self) -> usize {
        self.0.session.tracked
    }

    /// Tests that failed a memory check.
    #[getter]
    fn memory_failures(&self) -> usize {
        self.0.session.memory_failures
    }

    /// (node id, peak bytes, leaked bytes) of each test, in the order they ran.
    fn peaks(&self) -> Vec<(String, u64, u64)> {
        self.0
            .tests
            .iter()
            .map(|t| (t.nodeid.clone(), t.peak_bytes, t.leaked.bytes))
            .collect()
    }

    /// Tests whose capture file was written.
    #[getter]
    fn captures_written(&self) -> usize {
        self.0
            .tests
            .iter()
            .filter(|t| t.artifacts.capture.is_some())
            .count()
    }

    /// (tests under a default limit, tests under a marker).
    fn limit_sources(&self) -> (usize, usize) {
        let count = |source: &str| {
            self.0
                .tests
                .iter()
                .filter(|t| t.notes.limit_source.as_deref() == Some(source))
                .count()
        };
        (count("default"), count("marker"))
    }

    /// Did `--native-leaks` check any test?
    #[getter]
    fn native_leak_checks(&self) -> bool {
        self.0.tests.iter().any(|t| t.notes.native_leaks)
    }

    /// What each of `count` suppressions absorbed: (lost bytes, lost blocks).
    fn absorbed(&self, count: usize) -> Vec<(u64, u64)> {
        self.0.absorbed(count)
    }

    /// Problems the tests' processes reported, in the order the tests ran.
    fn problems(&self) -> Vec<String> {
        self.0.problems().into_iter().map(str::to_string).collect()
    }

    /// `heapgate VERSION, Python ..., PLATFORM: N tracked tests, M failed a memory check`.
    fn headline(&self) -> String {
        self.0.headline()
    }

    /// The table of tracked tests, highest peak first; `most` rows (0: all).
    fn summary_lines(&self, most: usize) -> Vec<String> {
        self.0.summary_lines(most)
    }

    /// The comparison with a baseline (`name`, node id -> peak): counts, then the biggest
    /// increases and decreases (`most` of each).
    fn baseline_summary(
        &self,
        name: &str,
        baseline: BTreeMap<String, u64>,
        tolerance: &Tolerance,
        most: usize,
    ) -> Vec<String> {
        let peaks: Vec<(&str, u64)> = self
            .0
            .tests
            .iter()
            .map(|t| (t.nodeid.as_str(), t.peak_bytes))
            .collect();
        baseline_summary_lines(name, &baseline, &peaks, &tolerance.0, most)
    }

    /// The GitHub job summary (Markdown) and the `::error` annotation lines (every failure,
    /// largest first). `baseline` is (name shown, node id -> peak).
    #[pyo3(signature = (workspace, blob_url=None, artifact=None, run_url=None, exit_code=None, baseline=None, top=5))]
    #[allow(clippy::too_many_arguments)]
    fn github(
        &self,
        workspace: PathBuf,
        blob_url: Option<String>,
        artifact: Option<String>,
        run_url: Option<String>,
        exit_code: Option<i32>,
        baseline: Option<(String, BTreeMap<String, u64>)>,
        top: usize,
    ) -> (String, Vec<String>) {
        let options = GithubOptions {
            workspace,
            blob_url,
            artifact,
            run_url,
            exit_code,
            baseline,
            top,
        };
        let annotations = github_annotations(&self.0, &options)
            .iter()
            .map(|a| a.command())
            .collect();
        (github_summary(&self.0, &options), annotations)
    }

    fn __repr__(&self) -> String {
        format!(
            "SessionReport({} tracked tests, {} memory failures)",
            self.0.session.tracked, self.0.session.memory_failures
        )
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Record>()?;
    m.add_class::<PySessionReport>()?;
    m.add("MAX_ANNOTATIONS", heapgate_core::report::MAX_ANNOTATIONS)?;
    m.add("ReportFileError", m.py().get_type::<ReportFileError>())?;
    Ok(())
}
