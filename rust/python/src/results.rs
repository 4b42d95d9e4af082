//! The result model for Python: a finished test's `Report`, its `Site`s and their frames, and
//! the leak kinds, all views of the one capture (`heapgate_core::model`) the tracker exported.
//! Nothing is copied per site: a `Site` is an index into its report's capture.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use heapgate_core::capture::TestReport;
use heapgate_core::model::{
    Allocator as CoreAllocator, Charge, LeakKinds as CoreLeakKinds, LeakTally as CoreLeakTally,
    SiteReport, ThreadMode as CoreThreadMode, UnknownName,
};
use heapgate_core::record::{Capture, ProcessFacts, TestInfo};
use heapgate_core::report::{peak_failure, FrameKind, ReportFrame, ResolvedCapture, TextOptions};
use heapgate_core::symbolize::ModuleMap;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

use crate::records;

/// What kind of code a frame is; `str()` gives its name: 'python', 'native' or 'interpreter'.
#[pyclass(
    eq,
    eq_int,
    hash,
    frozen,
    module = "heapgate._native",
    name = "FrameKind"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PyFrameKind {
    /// Python code.
    #[pyo3(name = "PYTHON")]
    Python,
    /// Native code outside the interpreter: extensions, libraries.
    #[pyo3(name = "NATIVE")]
    Native,
    /// The interpreter's own native code (libpython or the python executable).
    #[pyo3(name = "INTERPRETER")]
    Interpreter,
}

impl From<FrameKind> for PyFrameKind {
    fn from(kind: FrameKind) -> Self {
        match kind {
            FrameKind::Python => PyFrameKind::Python,
            FrameKind::Native => PyFrameKind::Native,
            FrameKind::Interpreter => PyFrameKind::Interpreter,
        }
    }
}

impl From<PyFrameKind> for FrameKind {
    fn from(kind: PyFrameKind) -> Self {
        match kind {
            PyFrameKind::Python => FrameKind::Python,
            PyFrameKind::Native => FrameKind::Native,
            PyFrameKind::Interpreter => FrameKind::Interpreter,
        }
    }
}

#[pymethods]
impl PyFrameKind {
    fn __str__(&self) -> &'static str {
        match self {
            PyFrameKind::Python => "python",
            PyFrameKind::Native => "native",
            PyFrameKind::Interpreter => "interpreter",
        }
    }
}

/// The API an allocation came through (`heapgate_core::model::Allocator`); `str()` gives the
/// name users know it by (`malloc`, `PyObject_Malloc`, ...).
#[pyclass(
    eq,
    eq_int,
    hash,
    frozen,
    module = "heapgate._native",
    name = "Allocator"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PyAllocator {
    /// `malloc`
    #[pyo3(name = "MALLOC")]
    Malloc,
    /// `calloc`
    #[pyo3(name = "CALLOC")]
    Calloc,
    /// `realloc`
    #[pyo3(name = "REALLOC")]
    Realloc,
    /// `reallocarray`
    #[pyo3(name = "REALLOCARRAY")]
    Reallocarray,
    /// `posix_memalign`
    #[pyo3(name = "POSIX_MEMALIGN")]
    PosixMemalign,
    /// `aligned_alloc`
    #[pyo3(name = "ALIGNED_ALLOC")]
    AlignedAlloc,
    /// `memalign`
    #[pyo3(name = "MEMALIGN")]
    Memalign,
    /// `valloc`
    #[pyo3(name = "VALLOC")]
    Valloc,
    /// `pvalloc`
    #[pyo3(name = "PVALLOC")]
    Pvalloc,
    /// `mmap` / `mmap64`
    #[pyo3(name = "MMAP")]
    Mmap,
    /// CPython's RAW domain (`PyMem_RawMalloc` and friends)
    #[pyo3(name = "PY_RAW")]
    PyRaw,
    /// CPython's MEM domain (`PyMem_Malloc` and friends)
    #[pyo3(name = "PY_MEM")]
    PyMem,
    /// CPython's OBJ domain (`PyObject_Malloc`: every Python object)
    #[pyo3(name = "PY_OBJ")]
    PyObj,
}

impl From<CoreAllocator> for PyAllocator {
    fn from(v: CoreAllocator) -> Self {
        match v {
            CoreAllocator::Malloc => PyAllocator::Malloc,
            CoreAllocator::Calloc => PyAllocator::Calloc,
            CoreAllocator::Realloc => PyAllocator::Realloc,
            CoreAllocator::Reallocarray => PyAllocator::Reallocarray,
            CoreAllocator::PosixMemalign => PyAllocator::PosixMemalign,
            CoreAllocator::AlignedAlloc => PyAllocator::AlignedAlloc,
            CoreAllocator::Memalign => PyAllocator::Memalign,
            CoreAllocator::Valloc => PyAllocator::Valloc,
            CoreAllocator::Pvalloc => PyAllocator::Pvalloc,
            CoreAllocator::Mmap => PyAllocator::Mmap,
            CoreAllocator::PyRaw => PyAllocator::PyRaw,
            CoreAllocator::PyMem => PyAllocator::PyMem,
            CoreAllocator::PyObj => PyAllocator::PyObj,
        }
    }
}

impl From<PyAllocator> for CoreAllocator {
    fn from(v: PyAllocator) -> Self {
        match v {
            PyAllocator::Malloc => CoreAllocator::Malloc,
            PyAllocator::Calloc => CoreAllocator::Calloc,
            PyAllocator::Realloc => CoreAllocator::Realloc,
            PyAllocator::Reallocarray => CoreAllocator::Reallocarray,
            PyAllocator::PosixMemalign => CoreAllocator::PosixMemalign,
            PyAllocator::AlignedAlloc => CoreAllocator::AlignedAlloc,
            PyAllocator::Memalign => CoreAllocator::Memalign,
            PyAllocator::Valloc => CoreAllocator::Valloc,
            PyAllocator::Pvalloc => CoreAllocator::Pvalloc,
            PyAllocator::Mmap => CoreAllocator::Mmap,
            PyAllocator::PyRaw => CoreAllocator::PyRaw,
            PyAllocator::PyMem => CoreAllocator::PyMem,
            PyAllocator::PyObj => CoreAllocator::PyObj,
        }
    }
}

fn unknown_name(e: UnknownName) -> PyErr {
    pyo3::exceptions::PyValueError::new_err(e.to_string())
}

#[pymethods]
impl PyAllocator {
    /// Every allocator, as the core lists them.
    #[staticmethod]
    fn all() -> Vec<PyAllocator> {
        CoreAllocator::ALL
            .into_iter()
            .map(PyAllocator::from)
            .collect()
    }

    /// The allocator named `name`; ValueError naming the accepted names otherwise.
    #[staticmethod]
    fn from_name(name: &str) -> PyResult<PyAllocator> {
        name.parse::<CoreAllocator>()
            .map(PyAllocator::from)
            .map_err(unknown_name)
    }

    /// The name users know it by.
    #[getter]
    fn name(&self) -> &'static str {
        CoreAllocator::from(*self).name()
    }

    /// True for CPython's allocator domains (Python objects and interpreter buffers).
    #[getter]
    fn is_python(&self) -> bool {
        CoreAllocator::from(*self).is_python()
    }

    fn __str__(&self) -> &'static str {
        self.name()
    }
}

/// Whose allocations a tracked test is charged for (`heapgate_core::model::ThreadMode`);
/// `str()` gives its name as the plugin and the capture file write it ('current_thread', ...).
#[pyclass(
    eq,
    eq_int,
    hash,
    frozen,
    from_py_object,
    module = "heapgate._native",
    name = "ThreadMode"
)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PyThreadMode {
    /// Only the thread running the test's call.
    #[pyo3(name = "CURRENT_THREAD")]
    CurrentThread,
    /// The test's thread plus every thread started during the call, and their descendants.
    #[pyo3(name = "SPAWNED")]
    Spawned,
    /// Every thread in the process.
    #[pyo3(name = "ALL")]
    All,
}

impl From<CoreThreadMode> for PyThreadMode {
    fn from(v: CoreThreadMode) -> Self {
        match v {
            CoreThreadMode::CurrentThread => PyThreadMode::CurrentThread,
            CoreThreadMode::Spawned => PyThreadMode::Spawned,
            CoreThreadMode::All => PyThreadMode::All,
        }
    }
}

impl From<PyThreadMode> for CoreThreadMode {
    fn from(v: PyThreadMode) -> Self {
        match v {
            PyThreadMode::CurrentThread => CoreThreadMode::CurrentThread,
            PyThreadMode::Spawned => CoreThreadMode::Spawned,
            PyThreadMode::All => CoreThreadMode::All,
        }
    }
}

#[pymethods]
impl PyThreadMode {
    /// Every mode, as the core lists them.
    #[staticmethod]
    fn all() -> Vec<PyThreadMode> {
        CoreThreadMode::ALL
            .into_iter()
            .map(PyThreadMode::from)
            .collect()
    }

    /// The mode named `name`; ValueError naming the accepted names otherwise.
    #[staticmethod]
    fn from_name(name: &str) -> PyResult<PyThreadMode> {
        name.parse::<CoreThreadMode>()
            .map(PyThreadMode::from)
            .map_err(unknown_name)
    }

    /// The mode's name.
    #[getter]
    fn name(&self) -> &'static str {
        CoreThreadMode::from(*self).name()
    }

    fn __str__(&self) -> &'static str {
        self.name()
    }
}

/// One frame of an allocation's stack (the shape pytest-memray's `filter_fn` receives).
#[pyclass(frozen, get_all, module = "heapgate._native")]
pub(crate) struct StackFrame {
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
    /// Python, native, or the interpreter's own.
    kind: PyFrameKind,
}

#[pymethods]
impl StackFrame {
    fn __repr__(&self) -> String {
        format!(
            "StackFrame({:?}, {:?}, {}, kind={:?})",
            self.function,
            self.filename,
            self.lineno,
            self.kind.__str__()
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
            kind: self.kind.into(),
        };
        heapgate_core::report::format_frame(&frame, rootpath.as_deref())
    }
}

pub(crate) fn frame_to_py(frame: ReportFrame) -> StackFrame {
    StackFrame {
        function: frame.function,
        filename: frame.filename,
        lineno: frame.line.unwrap_or(0),
        address: frame.address,
        module: frame.module,
        inlined: frame.inlined,
        kind: frame.kind.into(),
    }
}

/// Bytes and blocks of one kind of live memory.
#[pyclass(frozen, module = "heapgate._native")]
pub(crate) struct LeakTally(CoreLeakTally);

#[pymethods]
impl LeakTally {
    /// Bytes.
    #[getter]
    fn bytes(&self) -> u64 {
        self.0.bytes
    }

    /// Blocks.
    #[getter]
    fn count(&self) -> u64 {
        self.0.count
    }

    fn __repr__(&self) -> String {
        format!("LeakTally(bytes={}, count={})", self.0.bytes, self.0.count)
    }
}

/// Live memory at the end of a test by reachability, as the leak scan classified it.
#[pyclass(frozen, module = "heapgate._native")]
pub(crate) struct LeakKinds(CoreLeakKinds);

impl From<CoreLeakKinds> for LeakKinds {
    fn from(kinds: CoreLeakKinds) -> Self {
        LeakKinds(kinds)
    }
}

#[pymethods]
impl LeakKinds {
    /// No pointer to it anywhere.
    #[getter]
    fn definitely_lost(&self) -> LeakTally {
        LeakTally(self.0.definitely_lost)
    }

    /// Pointed to only from lost blocks.
    #[getter]
    fn indirectly_lost(&self) -> LeakTally {
        LeakTally(self.0.indirectly_lost)
    }

    /// Only pointers far into its interior were found.
    #[getter]
    fn possibly_lost(&self) -> LeakTally {
        LeakTally(self.0.possibly_lost)
    }

    /// A root or a reachable block points to it.
    #[getter]
    fn still_reachable(&self) -> LeakTally {
        LeakTally(self.0.still_reachable)
    }

    /// Definitely + indirectly + possibly lost: what fails a native-leak check.
    #[getter]
    fn lost(&self) -> LeakTally {
        LeakTally(self.0.lost())
    }

    fn __repr__(&self) -> String {
        let k = &self.0;
        format!(
            "LeakKinds(definitely_lost={:?}, indirectly_lost={:?}, possibly_lost={:?}, still_reachable={:?})",
            (k.definitely_lost.bytes, k.definitely_lost.count),
            (k.indirectly_lost.bytes, k.indirectly_lost.count),
            (k.possibly_lost.bytes, k.possibly_lost.count),
            (k.still_reachable.bytes, k.still_reachable.count),
        )
    }
}

/// What one allocation site (a stack and an allocator) held: a view of its report's capture.
#[pyclass(frozen, module = "heapgate._native")]
pub(crate) struct Site {
    data: Arc<ResolvedCapture>,
    index: usize,
    resolved: OnceLock<Py<PyTuple>>,
}

impl Site {
    fn site(&self) -> &SiteReport {
        &self.data.capture().result.sites[self.index]
    }
}

#[pymethods]
impl Site {
    /// The API the memory came from (`str()`: `malloc`, `PyObject_Malloc`, ...).
    #[getter]
    fn allocator(&self) -> PyAllocator {
        self.site().allocator.into()
    }

    /// Bytes held when the test's total was at its peak.
    #[getter]
    fn bytes_at_peak(&self) -> u64 {
        self.site().counts.bytes_at_peak
    }

    /// Blocks held at the peak.
    #[getter]
    fn count_at_peak(&self) -> u64 {
        self.site().counts.count_at_peak
    }

    /// Bytes still allocated when tracking stopped.
    #[getter]
    fn leaked_bytes(&self) -> u64 {
        self.site().counts.leaked_bytes
    }

    /// Blocks still allocated when tracking stopped.
    #[getter]
    fn leaked_count(&self) -> u64 {
        self.site().counts.leaked_count
    }

    /// Bytes allocated over the test.
    #[getter]
    fn total_bytes(&self) -> u64 {
        self.site().counts.total_bytes
    }

    /// Blocks allocated over the test.
    #[getter]
    fn total_count(&self) -> u64 {
        self.site().counts.total_count
    }

    /// The stack, allocating frame first: native frames are symbolized on first access.
    #[getter]
    fn stack(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        if let Some(stack) = self.resolved.get() {
            return Ok(stack.clone_ref(py));
        }
        let resolver = crate::live_resolver(py);
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
    fn leak_kinds(&self) -> Option<LeakKinds> {
        self.site().leak_kinds.map(LeakKinds)
    }
}

/// What one tracked test allocated: a view of the capture the tracker exported.
#[pyclass(frozen, module = "heapgate._native")]
pub(crate) struct Report {
    /// Why these numbers cannot be trusted (Python's allocator was replaced during the
    /// test), or None.
    #[pyo3(get)]
    interpreter_problem: Option<String>,
    pub(crate) data: Arc<ResolvedCapture>,
    /// The `Site` objects, made on first access.
    sites: OnceLock<Py<PyList>>,
}

impl Report {
    /// The report of `result` (moved in, never copied); `interpreter_problem` as the user reads it.
    pub(crate) fn new(result: TestReport, interpreter_problem: Option<String>) -> Report {
        let modules = if result.has_native_frames() {
            ModuleMap::current_process_with(heapgate_core::capture::unloaded_modules())
        } else {
            ModuleMap::new(Vec::new())
        };
        let capture = Capture::new(
            result,
            &modules,
            ProcessFacts::default(),
            TestInfo::default(),
        );
        Report {
            interpreter_problem,
            data: Arc::new(ResolvedCapture::new(capture)),
            sites: OnceLock::new(),
        }
    }

    fn totals(&self) -> &heapgate_core::model::Totals {
        &self.data.capture().result.totals
    }
}

#[pymethods]
impl Report {
    /// Highest total of live tracked bytes.
    #[getter]
    fn peak_bytes(&self) -> u64 {
        self.totals().peak_bytes
    }

    /// Live tracked blocks at the peak.
    #[getter]
    fn peak_count(&self) -> u64 {
        self.totals().peak_count
    }

    /// Bytes allocated over the test.
    #[getter]
    fn total_bytes(&self) -> u64 {
        self.totals().total_bytes
    }

    /// Blocks allocated over the test.
    #[getter]
    fn total_count(&self) -> u64 {
        self.totals().total_count
    }

    /// Bytes still live at the end.
    #[getter]
    fn leaked_bytes(&self) -> u64 {
        self.totals().leaked_bytes
    }

    /// Blocks still live at the end.
    #[getter]
    fn leaked_count(&self) -> u64 {
        self.totals().leaked_count
    }

    /// Sites, largest at peak first.
    #[getter]
    fn sites(&self, py: Python<'_>) -> PyResult<Py<PyList>> {
        if let Some(sites) = self.sites.get() {
            return Ok(sites.clone_ref(py));
        }
        let sites = (0..self.data.capture().result.sites.len())
            .map(|index| {
                Py::new(
                    py,
                    Site {
                        data: Arc::clone(&self.data),
                        index,
                        resolved: OnceLock::new(),
                    },
                )
            })
            .collect::<PyResult<Vec<_>>>()?;
        let sites = PyList::new(py, sites)?.unbind();
        Ok(self.sites.get_or_init(|| sites).clone_ref(py))
    }

    /// All live blocks by reachability, when a leak scan ran.
    #[getter]
    fn leak_kinds(&self) -> Option<LeakKinds> {
        self.totals().leak_kinds.map(LeakKinds)
    }

    /// The failure text of a test whose peak exceeded `limit` (report/text.rs); its charge
    /// rule says whose allocations counted: `thread_mode`'s threads, and tracers' callbacks when
    /// `include_tracers`.
    #[pyo3(signature = (limit, thread_mode=PyThreadMode::Spawned, include_tracers=false, rootpath=None, max_sites=5, max_frames=None))]
    #[allow(clippy::too_many_arguments)]
    fn peak_failure(
        &self,
        py: Python<'_>,
        limit: u64,
        thread_mode: PyThreadMode,
        include_tracers: bool,
        rootpath: Option<PathBuf>,
        max_sites: usize,
        max_frames: Option<usize>,
    ) -> String {
        let resolver = crate::live_resolver(py);
        py.detach(|| {
            peak_failure(
                limit,
                &self.data,
                &resolver,
                charge(thread_mode, include_tracers),
                &TextOptions {
                    rootpath: rootpath.as_deref(),
                    max_sites,
                    max_frames,
                },
            )
        })
    }

    /// This report as a capture of test `nodeid` (see records.rs).
    /// `failure`: the failure text the test reported, if a memory check failed. Limits in
    /// bytes: `limit` is `limit_memory`'s, `limit_leaks` per location, `native_leaks` of lost
    /// native memory. `thread_mode` and `include_tracers` say whose allocations were charged.
    #[pyo3(signature = (nodeid, outcome, failure, limit, thread_mode, include_tracers, facts, limit_leaks=None, native_leaks=None))]
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        nodeid: String,
        outcome: String,
        failure: Option<String>,
        limit: Option<u64>,
        thread_mode: PyThreadMode,
        include_tracers: bool,
        facts: records::Facts,
        limit_leaks: Option<u64>,
        native_leaks: Option<u64>,
    ) -> records::Record {
        let limits = heapgate_core::record::Limits {
            limit_memory: limit,
            limit_leaks,
            native_leaks,
            charge: charge(thread_mode, include_tracers),
        };
        records::Record::from_live(&self.data, nodeid, outcome, failure, limits, facts)
    }
}

/// Whose allocations a test was charged for, from the plugin's two settings.
fn charge(thread_mode: PyThreadMode, include_tracers: bool) -> Charge {
    Charge {
        threads: thread_mode.into(),
        tracers: include_tracers,
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Report>()?;
    m.add_class::<Site>()?;
    m.add_class::<StackFrame>()?;
    m.add_class::<LeakKinds>()?;
    m.add_class::<LeakTally>()?;
    m.add_class::<PyAllocator>()?;
    m.add_class::<PyThreadMode>()?;
    m.add_class::<PyFrameKind>()?;
    Ok(())
}
