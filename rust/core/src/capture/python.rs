//! The Python stack as the Python layer reads it at allocation time: the capture layer knows
//! no interpreter, only the [`PythonStackSource`] it is given.

use std::cell::RefCell;
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
    /// The code object's line table when the line was read (a code object at the address of
    /// a freed one has another).
    pub table: usize,
    /// The instruction offset the line was read at (-1: not started).
    pub offset: i32,
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
    /// How many of the outermost frames are those of the previous stack the walk was given
    /// (same code, line table and offset, so the same keys).
    pub same_outer: usize,
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
            same_outer: 0,
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
    /// Fill the calling thread's current Python stack; the second argument is an earlier
    /// stack of the thread, outermost frame first, whose outer frames the walk may reuse
    /// (see [`PythonStack::same_outer`]).
    pub walk: fn(&mut PythonStack, &[PyFrameRef]),
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

/// The calling thread's last recorded Python stack, outermost frame first, with the trie node
/// each of its prefixes was interned as in the tracked test `generation`. The next walk takes
/// the lines of the outer frames it shares with it, and interning starts below them: an
/// allocation deep in a recursion costs what its innermost frames changed, not its depth.
pub(super) struct LastStack {
    pub(super) generation: u64,
    pub(super) len: usize,
    /// Whether `path` holds the trie nodes of `frames` (false when the stack was interned as
    /// part of a hybrid one: only the frames are kept, for the walk).
    pub(super) interned: bool,
    pub(super) frames: [PyFrameRef; MAX_PYTHON_FRAMES],
    pub(super) path: [u32; MAX_PYTHON_FRAMES],
}

impl LastStack {
    /// The frames a walk in `generation` may reuse.
    pub(super) fn frames_for(&self, generation: u64) -> &[PyFrameRef] {
        if self.generation == generation {
            &self.frames[..self.len]
        } else {
            &[]
        }
    }

    /// How many of the outer frames have their trie node in `path` for `generation`.
    pub(super) fn interned_for(&self, generation: u64) -> usize {
        if self.interned {
            self.frames_for(generation).len()
        } else {
            0
        }
    }

    /// Become `stack` (walked in `generation` from this stack's frames) for the next walk;
    /// `interned`: whether `path` now holds its trie nodes. The outer frames the walk shared
    /// are already here.
    pub(super) fn remember(&mut self, stack: &PythonStack, generation: u64, interned: bool) {
        let frames = stack.frames();
        let n = frames.len();
        let same = stack
            .same_outer
            .min(self.frames_for(generation).len())
            .min(n);
        for (slot, frame) in self.frames[same..n]
            .iter_mut()
            .zip(frames[..n - same].iter().rev())
        {
            *slot = *frame;
        }
        self.len = n;
        self.generation = generation;
        self.interned = interned;
    }
}

const NO_FRAME: PyFrameRef = PyFrameRef {
    code: 0,
    line: 0,
    group_end: 0,
    table: 0,
    offset: 0,
};

thread_local! {
    // Const-initialised without a destructor: usable during thread start-up and tear-down.
    static LAST_STACK: RefCell<LastStack> = const {
        RefCell::new(LastStack {
            generation: 0,
            len: 0,
            interned: false,
            frames: [NO_FRAME; MAX_PYTHON_FRAMES],
            path: [0; MAX_PYTHON_FRAMES],
        })
    };
}

/// Run `f` with the calling thread's [`LastStack`], or with `None` if it cannot be reached
/// (thread tear-down).
pub(super) fn with_last_stack<R>(f: impl FnOnce(Option<&mut LastStack>) -> R) -> R {
    let mut f = Some(f);
    let reached = LAST_STACK.try_with(|last| match last.try_borrow_mut() {
        Ok(mut last) => Some((f.take().expect("called once"))(Some(&mut last))),
        Err(_) => None,
    });
    match reached.ok().flatten() {
        Some(r) => r,
        None => (f.take().expect("called once"))(None),
    }
}
