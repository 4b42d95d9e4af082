//! Native stacks at allocation time: return addresses from libgcc's `_Unwind_Backtrace`
//! (which finds unwind tables through glibc's lock-free `_dl_find_object` on glibc 2.35+),
//! stopping as soon as the frames below the test are reached.

use std::sync::OnceLock;

use libc::{c_int, c_void};

/// The deepest native stack recorded per allocation.
pub const MAX_NATIVE_FRAMES: usize = 256;

#[allow(non_camel_case_types)]
type _Unwind_Trace_Fn = extern "C" fn(ctx: *mut c_void, arg: *mut c_void) -> c_int;

extern "C" {
    fn _Unwind_Backtrace(trace: _Unwind_Trace_Fn, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
}

const URC_NO_REASON: c_int = 0;
const URC_NORMAL_STOP: c_int = 4;

/// An address range `[start, end)` of code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeRange {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl CodeRange {
    /// Does the range hold `address`?
    pub fn contains(&self, address: usize) -> bool {
        self.start <= address && address < self.end
    }
}

/// Where our own code is: its frames are dropped from the top of every stack.
fn own_object() -> CodeRange {
    static OWN: OnceLock<CodeRange> = OnceLock::new();
    *OWN.get_or_init(|| {
        let mut range = CodeRange::default();
        let probe = own_object as *const () as usize;
        // SAFETY: the callback reads loader-provided program headers only.
        unsafe {
            libc::dl_iterate_phdr(
                Some(find_object),
                &mut (probe, &mut range) as *mut _ as *mut c_void,
            );
        }
        range
    })
}

unsafe extern "C" fn find_object(
    info: *mut libc::dl_phdr_info,
    _size: usize,
    data: *mut c_void,
) -> c_int {
    // SAFETY: `data` is the (probe, range) pair passed above; `info` is valid in the callback.
    let ((probe, range), info) = unsafe { (&mut *(data as *mut (usize, &mut CodeRange)), &*info) };
    // SAFETY: the loader guarantees dlpi_phnum headers at dlpi_phdr.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let bias = info.dlpi_addr as usize;
    let (mut lo, mut hi, mut hit) = (usize::MAX, 0, false);
    for ph in phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD) {
        let start = bias + ph.p_vaddr as usize;
        let end = start + ph.p_memsz as usize;
        lo = lo.min(start);
        hi = hi.max(end);
        hit |= start <= *probe && *probe < end;
    }
    if hit {
        **range = CodeRange { start: lo, end: hi };
        return 1;
    }
    0
}

/// Return addresses of the calling thread, innermost first, without heapgate's own frames.
pub struct NativeStack {
    /// The addresses; only `len` are valid.
    pub frames: [usize; MAX_NATIVE_FRAMES],
    /// How many were written.
    pub len: usize,
}

struct Walk<'a> {
    stack: &'a mut NativeStack,
    own: CodeRange,
    eval: CodeRange,
    /// Stop after this many interpreter frames (None: walk to the end).
    eval_budget: Option<usize>,
}

extern "C" fn visit_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the Walk passed to _Unwind_Backtrace below, alive for the whole walk.
    let walk = unsafe { &mut *(arg as *mut Walk) };
    // SAFETY: `ctx` is the unwinder's context for the current frame.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    if ip == 0 {
        return URC_NORMAL_STOP;
    }
    let stack = &mut *walk.stack;
    if stack.len == 0 && walk.own.contains(ip) {
        return URC_NO_REASON; // still inside heapgate's hook
    }
    stack.frames[stack.len] = ip;
    stack.len += 1;
    if walk.eval.contains(ip) {
        if let Some(budget) = walk.eval_budget.as_mut() {
            *budget -= 1;
            if *budget == 0 {
                return URC_NORMAL_STOP;
            }
        }
    }
    if stack.len == MAX_NATIVE_FRAMES {
        URC_NORMAL_STOP
    } else {
        URC_NO_REASON
    }
}

/// Unwind the calling thread. `eval` is the interpreter's frame-evaluation function; with
/// `eval_budget`, the walk stops after passing that many of its frames (the test's own).
pub fn unwind(stack: &mut NativeStack, eval: CodeRange, eval_budget: Option<usize>) {
    stack.len = 0;
    if eval_budget == Some(0) {
        return;
    }
    let mut walk = Walk {
        stack,
        own: own_object(),
        eval,
        eval_budget,
    };
    // SAFETY: the callback only writes into `walk`, which outlives the call.
    unsafe {
        _Unwind_Backtrace(visit_frame, &mut walk as *mut Walk as *mut c_void);
    }
}
