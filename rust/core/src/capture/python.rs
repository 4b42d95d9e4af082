//! The Python stack as the Python layer reads it at allocation time: the capture layer knows
//! no interpreter, only the [`PythonStackSource`] it is given.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use super::tracker::{CodeNames, FrameKey};
use super::unwind::CodeRange;

/// The deepest Python stack recorded per allocation.
pub const MAX_PYTHON_FRAMES: usize = 128;

/// One Python frame as the walker writes it (C layout: the C shim fills these directly).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyFrameRef {
    /// Address of the code object.
    pub code: usize,
    /// Line being executed.
    pub line: u32,
    /// Non-zero on the outermost frame run by one C-level call of the interpreter's
    /// frame-evaluation function (see [`hybrid::merge`](super::hybrid::merge)).
    pub group_end: u32,
}

impl PyFrameRef {
    /// The frame as the tracker interns it.
    pub fn key(&self) -> FrameKey {
        FrameKey::Python {
            code: self.code,
            line: self.line,
        }
    }
}

/// A Python stack read by the Python layer at allocation time, innermost frame first. Its
/// buffer is left uninitialised: a walk writes only the frames it finds.
pub struct PythonStack {
    frames: [MaybeUninit<PyFrameRef>; MAX_PYTHON_FRAMES],
    len: usize,
    /// True when the walk reached the test's own function (its entry frame).
    pub reached_entry: bool,
    /// True when the walk ended at the test's entry or boundary frame (not at the thread's
    /// first frame or the depth limit): native frames below it are not the test's.
    pub complete: bool,
    /// True when the thread is running a trace, profile or `sys.monitoring` callback
    /// (coverage, a profiler, a debugger): what it allocates there is the observer's.
    pub in_tracer: bool,
    /// Non-zero when CPython may be making a frame object for such a callback right now,
    /// before the callback runs (3.11): the object's size. A Python allocation of exactly
    /// this size is that frame object.
    pub tracer_frame_size: usize,
}

impl PythonStack {
    /// An empty stack.
    #[inline]
    pub fn new() -> PythonStack {
        PythonStack {
            frames: [const { MaybeUninit::uninit() }; MAX_PYTHON_FRAMES],
            len: 0,
            reached_entry: false,
            complete: false,
            in_tracer: false,
            tracer_frame_size: 0,
        }
    }

    /// The buffer a walker writes frames into, and its capacity in frames.
    pub fn buffer(&mut self) -> (*mut PyFrameRef, usize) {
        (
            self.frames.as_mut_ptr() as *mut PyFrameRef,
            MAX_PYTHON_FRAMES,
        )
    }

    /// Declare how many frames the walker wrote.
    ///
    /// # Safety
    /// The first `len` entries of [`PythonStack::buffer`] must have been written.
    pub unsafe fn set_len(&mut self, len: usize) {
        self.len = len.min(MAX_PYTHON_FRAMES);
    }

    /// The frames written, innermost first.
    pub fn frames(&self) -> &[PyFrameRef] {
        // SAFETY: set_len's contract: the first `len` entries are initialised.
        unsafe { std::slice::from_raw_parts(self.frames.as_ptr() as *const PyFrameRef, self.len) }
    }
}

impl Default for PythonStack {
    fn default() -> Self {
        PythonStack::new()
    }
}

/// How the capture layer reads Python stacks; provided by the Python layer, which alone knows
/// the interpreter. Both functions must not allocate through the interpreter.
#[derive(Clone, Copy)]
pub struct PythonStackSource {
    /// Fill the calling thread's current Python stack.
    pub walk: fn(&mut PythonStack),
    /// The (function, filename) of a code object that is alive on the calling thread's stack.
    pub describe: fn(usize) -> CodeNames,
    /// The interpreter's frame-evaluation function, whose native frames run Python frames.
    pub eval_function: CodeRange,
}

pub(super) static PYTHON: OnceLock<PythonStackSource> = OnceLock::new();

/// Tell the capture layer how to read Python stacks (once per process).
pub fn set_python_stack_source(source: PythonStackSource) {
    let _ = PYTHON.set(source);
}
