//! CPython's allocator domains (RAW, MEM, OBJ) wrapped so that every Python object is counted
//! once, at its requested size. The arena allocator is wrapped too, only to keep the memory
//! pymalloc and the frame stack take from the system out of the native counts.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Once;

use heapgate_core::capture::{calls, Allocator, Guard, HookEntry};
use heapgate_core::hook_entry;
use libc::{c_void, size_t};
use pyo3::ffi::{self, PyMemAllocatorDomain, PyMemAllocatorEx, PyObjectArenaAllocator};

struct Domain {
    original: PyMemAllocatorEx,
    allocator: Allocator,
    /// How to find the unused tail of this domain's blocks.
    slack: Slack,
}

fn domain<'a>(ctx: *mut c_void) -> &'a Domain {
    // SAFETY: `ctx` is the leaked `Domain` installed with this allocator; never freed.
    unsafe { &*(ctx as *const Domain) }
}

/// How a domain's blocks are laid out, for clearing their unused tails: stale bytes there,
/// left by a block's previous occupant, would read as pointers to the leak scan.
///
/// Only blocks known to come straight from the C library's malloc are cleared: pymalloc's
/// blocks cannot be told from malloc's on the fast path (a small `PyObject_Realloc` of a
/// once-large block, or pymalloc out of arenas, returns malloc memory), and guessing the
/// size class there would write past the block.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slack {
    /// Unknown layout (pymalloc, debug hooks, another allocator): leave it alone.
    Unknown,
    /// The C library's malloc, which says how much it gave.
    Malloc,
}

#[inline]
fn clear_slack(kind: Slack, ptr: *mut c_void, size: size_t) {
    if ptr.is_null() || kind == Slack::Unknown {
        return;
    }
    // SAFETY: `ptr` came straight from the C library's malloc family.
    let usable = unsafe { libc::malloc_usable_size(ptr) };
    if usable > size {
        // SAFETY: the allocator gave `usable` bytes; those past `size` are unused.
        unsafe { std::ptr::write_bytes((ptr as *mut u8).add(size), 0, usable - size) };
    }
}

// The allocating functions are entered through `hook_entry!`, so their native stacks start at
// CPython's allocator function that called them; each `*_recorded` function takes the entry's
// two registers after the arguments.

hook_entry!(fn malloc(ctx: *mut c_void, size: size_t) -> *mut c_void => malloc_recorded);
#[inline(always)]
extern "C" fn malloc_recorded(ctx: *mut c_void, size: size_t, sp: usize, bp: usize) -> *mut c_void {
    let d = domain(ctx);
    if PROBING.load(Ordering::Relaxed) {
        probe_hit(d.allocator);
    }
    let call = d.original.malloc.expect("CPython allocators are complete");
    calls::alloc(size, d.allocator, HookEntry::from_registers(sp, bp), || {
        let ptr = call(d.original.ctx, size);
        clear_slack(d.slack, ptr, size);
        ptr
    })
}

hook_entry!(fn calloc(ctx: *mut c_void, count: size_t, size: size_t) -> *mut c_void => calloc_recorded);
#[inline(always)]
extern "C" fn calloc_recorded(
    ctx: *mut c_void,
    count: size_t,
    size: size_t,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    let d = domain(ctx);
    let call = d.original.calloc.expect("CPython allocators are complete");
    let entry = HookEntry::from_registers(sp, bp);
    calls::alloc(count.saturating_mul(size), d.allocator, entry, || {
        call(d.original.ctx, count, size)
    })
}

hook_entry!(fn realloc(ctx: *mut c_void, old: *mut c_void, size: size_t) -> *mut c_void => realloc_recorded);
#[inline(always)]
extern "C" fn realloc_recorded(
    ctx: *mut c_void,
    old: *mut c_void,
    size: size_t,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    let d = domain(ctx);
    let call = d.original.realloc.expect("CPython allocators are complete");
    let entry = HookEntry::from_registers(sp, bp);
    calls::realloc(old, size, d.allocator, entry, || {
        let new = call(d.original.ctx, old, size);
        clear_slack(d.slack, new, size);
        new
    })
}

extern "C" fn free(ctx: *mut c_void, ptr: *mut c_void) {
    let d = domain(ctx);
    let call = d.original.free.expect("CPython allocators are complete");
    calls::free(ptr, || call(d.original.ctx, ptr))
}

extern "C" fn arena_alloc(ctx: *mut c_void, size: size_t) -> *mut c_void {
    // SAFETY: `ctx` is the leaked original arena allocator.
    let original = unsafe { &*(ctx as *const PyObjectArenaAllocator) };
    let _guard = Guard::enter();
    (original.alloc.expect("CPython arena allocator is complete"))(original.ctx, size)
}

extern "C" fn arena_free(ctx: *mut c_void, ptr: *mut c_void, size: size_t) {
    // SAFETY: `ctx` is the leaked original arena allocator.
    let original = unsafe { &*(ctx as *const PyObjectArenaAllocator) };
    let _guard = Guard::enter();
    (original.free.expect("CPython arena allocator is complete"))(original.ctx, ptr, size)
}

static INSTALL: Once = Once::new();

extern "C" {
    fn _PyMem_GetCurrentAllocatorName() -> *const libc::c_char;
}

/// Is plain pymalloc CPython's allocator (not `PYTHONMALLOC=malloc`, and not a debug variant,
/// whose guard bytes sit right after the requested size)? Asked before we wrap the domains.
fn pymalloc_in_use() -> bool {
    // SAFETY: returns a static string or NULL; the GIL is held.
    let name = unsafe { _PyMem_GetCurrentAllocatorName() };
    // SAFETY: a NUL-terminated static string when not NULL.
    !name.is_null() && unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes() == b"pymalloc"
}

/// The domains and how their blocks are reported.
const DOMAINS: [(PyMemAllocatorDomain, Allocator); 3] = [
    (PyMemAllocatorDomain::PYMEM_DOMAIN_RAW, Allocator::PyRaw),
    (PyMemAllocatorDomain::PYMEM_DOMAIN_MEM, Allocator::PyMem),
    (PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ, Allocator::PyObj),
];

/// Wrap `domain`'s current allocator with ours (the GIL must be held).
fn wrap(domain: PyMemAllocatorDomain, allocator: Allocator, slack: Slack) {
    let mut original = PyMemAllocatorEx {
        ctx: std::ptr::null_mut(),
        malloc: None,
        calloc: None,
        realloc: None,
        free: None,
    };
    // SAFETY: the GIL is held; the struct is filled by CPython.
    unsafe { ffi::PyMem_GetAllocator(domain, &mut original) };
    let ctx = Box::into_raw(Box::new(Domain {
        original,
        allocator,
        slack,
    })) as *mut c_void;
    let mut ours = PyMemAllocatorEx {
        ctx,
        malloc: Some(malloc),
        calloc: Some(calloc),
        realloc: Some(realloc),
        free: Some(free),
    };
    // SAFETY: the GIL is held; ours wraps the original, so blocks allocated before this call
    // are freed by the allocator that made them.
    unsafe { ffi::PyMem_SetAllocator(domain, &mut ours) };
}

/// Wrap the three domains and the arena allocator (once per process; the GIL must be held).
pub fn install() {
    INSTALL.call_once(|| {
        let pymalloc = pymalloc_in_use();
        for (domain, allocator) in DOMAINS {
            // With the default allocators, RAW is the C library's malloc.
            let slack = if pymalloc && allocator == Allocator::PyRaw {
                Slack::Malloc
            } else {
                Slack::Unknown
            };
            wrap(domain, allocator, slack);
        }
        let mut original = PyObjectArenaAllocator {
            ctx: std::ptr::null_mut(),
            alloc: None,
            free: None,
        };
        // SAFETY: the GIL is held; CPython fills and then copies the structs.
        unsafe {
            ffi::PyObject_GetArenaAllocator(&mut original);
            let ctx = Box::into_raw(Box::new(original)) as *mut c_void;
            let mut ours = PyObjectArenaAllocator {
                ctx,
                alloc: Some(arena_alloc),
                free: Some(arena_free),
            };
            ffi::PyObject_SetArenaAllocator(&mut ours);
        }
    });
}

/// Were the Python allocator wrappers installed in this process?
pub fn installed() -> bool {
    INSTALL.is_completed()
}

// The probe: while PROBING, our malloc wrapper called on the prober's thread sets its
// domain's bit in REACHED. One relaxed load of a flag that is almost never set on the hot path.
static PROBING: AtomicBool = AtomicBool::new(false);
static PROBER: AtomicUsize = AtomicUsize::new(0);
static REACHED: AtomicU8 = AtomicU8::new(0);

fn domain_bit(allocator: Allocator) -> u8 {
    match allocator {
        Allocator::PyRaw => 1,
        Allocator::PyMem => 2,
        _ => 4,
    }
}

#[cold]
fn probe_hit(allocator: Allocator) {
    // SAFETY: pthread_self has no preconditions.
    if PROBER.load(Ordering::Relaxed) == unsafe { libc::pthread_self() } as usize {
        REACHED.fetch_or(domain_bit(allocator), Ordering::Relaxed);
    }
}

/// The domains whose allocator no longer goes through our wrapper: someone called
/// `PyMem_SetAllocator` with an allocator that does not forward to the one it replaced (an
/// extension restoring an allocator it saved before heapgate wrapped it, or
/// `tracemalloc.stop()` under `-X tracemalloc`). Found by calling each domain's current
/// allocator once with a 1-byte block. Untracked (call it only while no test is tracked); the
/// GIL must be held.
fn bypassed() -> Vec<(PyMemAllocatorDomain, Allocator)> {
    if !installed() {
        return Vec::new();
    }
    // SAFETY: pthread_self has no preconditions.
    PROBER.store(unsafe { libc::pthread_self() } as usize, Ordering::Relaxed);
    REACHED.store(0, Ordering::Relaxed);
    PROBING.store(true, Ordering::SeqCst);
    for (domain, _) in DOMAINS {
        let mut current = PyMemAllocatorEx {
            ctx: std::ptr::null_mut(),
            malloc: None,
            calloc: None,
            realloc: None,
            free: None,
        };
        // SAFETY: the GIL is held; the struct is filled by CPython, and a block from the
        // domain's malloc is returned to the same domain's free.
        unsafe {
            ffi::PyMem_GetAllocator(domain, &mut current);
            if let (Some(m), Some(f)) = (current.malloc, current.free) {
                let block = m(current.ctx, 1);
                f(current.ctx, block);
            }
        }
    }
    PROBING.store(false, Ordering::SeqCst);
    let reached = REACHED.load(Ordering::Relaxed);
    DOMAINS
        .into_iter()
        .filter(|(_, allocator)| reached & domain_bit(*allocator) == 0)
        .collect()
}

/// Before a tracked test: wrap again any domain whose allocator was replaced since (so the
/// test is counted exactly). The GIL must be held; no test is tracked.
pub fn rewrap_bypassed() {
    for (domain, allocator) in bypassed() {
        wrap(domain, allocator, Slack::Unknown);
    }
}

/// After a tracked test: what went wrong with Python's allocators during it, as the text the
/// user reads, or None when every domain still goes through our wrapper. The GIL must be held;
/// no test is tracked.
pub fn problem_after_test() -> Option<String> {
    let names: Vec<&str> = bypassed()
        .into_iter()
        .map(|(_, allocator)| match allocator {
            Allocator::PyRaw => "RAW (PyMem_RawMalloc)",
            Allocator::PyMem => "MEM (PyMem_Malloc)",
            _ => "OBJ (PyObject_Malloc)",
        })
        .collect();
    if names.is_empty() {
        return None;
    }
    Some(format!(
        "heapgate cannot vouch for this test's numbers: Python's allocator was replaced during \
         the test without forwarding to the one it replaced, so the {} domain{} no longer \
         {} through heapgate's wrapper and Python objects allocated after the change were not \
         counted (or not at their requested size).\n  Cause: PyMem_SetAllocator called by an \
         extension that restores an allocator saved before heapgate wrapped it, or \
         tracemalloc.stop() in a process started with -X tracemalloc / PYTHONTRACEMALLOC. \
         Wrap the current allocator instead, or keep tracemalloc running; heapgate wraps the \
         domain again before the next tracked test.",
        names.join(", "),
        if names.len() == 1 { "" } else { "s" },
        if names.len() == 1 { "goes" } else { "go" },
    ))
}
