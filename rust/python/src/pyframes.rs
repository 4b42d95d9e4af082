//! The calling thread's Python stack, read through the C shim (`csrc/pyframes.c`) at
//! allocation time: no frame objects, no line tables, no GIL needed.

use std::sync::atomic::{AtomicUsize, Ordering};

use heapgate_core::capture::{CodeNames, CodeRange, PyFrameRef, PythonStack, PythonStackSource};
use libc::{c_int, c_void};
use pyo3::ffi;

extern "C" {
    fn hg_py_walk(
        out: *mut PyFrameRef,
        max: c_int,
        entry: *const usize,
        n_entry: c_int,
        boundary: *const c_void,
        reached: *mut c_int,
        in_tracer: *mut c_int,
        tracer_frame: *mut usize,
        previous: *const PyFrameRef,
        n_previous: c_int,
        same_outer: *mut c_int,
    ) -> c_int;
    fn hg_py_frame_handle(frame: *mut ffi::PyObject) -> *const c_void;
    fn hg_py_eval_function(start: *mut usize, end: *mut usize) -> c_int;
    fn hg_py_code_names(
        code: usize,
        function: *mut u8,
        function_len: *mut usize,
        filename: *mut u8,
        filename_len: *mut usize,
    );
}

/// How many code objects can mark a test's entry (the test function and what it unwraps to).
pub const MAX_ENTRY_CODES: usize = 8;

static ENTRY: [AtomicUsize; MAX_ENTRY_CODES] = [const { AtomicUsize::new(0) }; MAX_ENTRY_CODES];
static ENTRY_LEN: AtomicUsize = AtomicUsize::new(0);
static BOUNDARY: AtomicUsize = AtomicUsize::new(0);

/// Where stacks of the test's thread end: at a frame running one of `codes` (kept), or at the
/// frame `boundary` (dropped). Set before tracking starts; the objects must outlive the test.
pub fn set_entry(codes: &[*mut ffi::PyObject], boundary: Option<*mut ffi::PyObject>) {
    for (slot, code) in ENTRY.iter().zip(codes) {
        slot.store(*code as usize, Ordering::SeqCst);
    }
    ENTRY_LEN.store(codes.len().min(MAX_ENTRY_CODES), Ordering::SeqCst);
    // SAFETY: the shim only type-checks and reads a field of a live frame object.
    let handle = boundary.map_or(std::ptr::null(), |f| unsafe { hg_py_frame_handle(f) });
    BOUNDARY.store(handle as usize, Ordering::SeqCst);
}

fn walk(stack: &mut PythonStack, previous: &[PyFrameRef]) {
    let mut entry = [0usize; MAX_ENTRY_CODES];
    for (e, slot) in entry.iter_mut().zip(&ENTRY) {
        *e = slot.load(Ordering::Relaxed);
    }
    let n_entry = ENTRY_LEN.load(Ordering::Relaxed);
    let mut reached: c_int = 0;
    let mut in_tracer: c_int = 0;
    let mut tracer_frame: usize = 0;
    let mut same_outer: c_int = 0;
    let (buffer, capacity) = stack.buffer();
    // SAFETY: the shim writes at most `capacity` frames into the stack's own buffer, reads
    // only the calling thread's frames and the `previous` slice (its length is passed).
    let n = unsafe {
        hg_py_walk(
            buffer,
            capacity as c_int,
            entry.as_ptr(),
            n_entry as c_int,
            BOUNDARY.load(Ordering::Relaxed) as *const c_void,
            &mut reached,
            &mut in_tracer,
            &mut tracer_frame,
            previous.as_ptr(),
            previous.len().min(capacity) as c_int,
            &mut same_outer,
        )
    };
    // SAFETY: the shim wrote the first `n` frames.
    unsafe { stack.set_len(n.max(0) as usize) };
    stack.reached_entry = reached == 1;
    stack.complete = reached != 0;
    stack.in_tracer = in_tracer != 0;
    stack.tracer_frame_size = tracer_frame;
    stack.same_outer = same_outer.max(0) as usize;
}

fn describe(code: usize) -> CodeNames {
    let mut function = [0u8; 512];
    let mut filename = [0u8; 4096];
    let (mut function_len, mut filename_len) = (function.len(), filename.len());
    // SAFETY: `code` is a code object running on the calling thread's stack (so alive); the
    // buffers' capacities are passed in and the written lengths come back.
    unsafe {
        hg_py_code_names(
            code,
            function.as_mut_ptr(),
            &mut function_len,
            filename.as_mut_ptr(),
            &mut filename_len,
        )
    };
    (
        String::from_utf8_lossy(&function[..function_len]).into_owned(),
        String::from_utf8_lossy(&filename[..filename_len]).into_owned(),
    )
}

/// Looked up once: the interpreter's code does not move, and the loader's search took 1% of a
/// `--native-leaks` run on a suite of small tests (each test's session asks).
fn eval_function() -> CodeRange {
    static EVAL_FUNCTION: std::sync::OnceLock<CodeRange> = std::sync::OnceLock::new();
    *EVAL_FUNCTION.get_or_init(|| {
        let (mut start, mut end) = (0usize, 0usize);
        // SAFETY: the shim writes two integers; dladdr1 only reads loader data.
        if unsafe { hg_py_eval_function(&mut start, &mut end) } == 0 {
            return CodeRange::default();
        }
        CodeRange { start, end }
    })
}

/// The source the capture layer reads Python stacks from.
pub fn source() -> PythonStackSource {
    PythonStackSource {
        walk,
        describe,
        eval_function: eval_function(),
    }
}
