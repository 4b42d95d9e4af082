//! CPython's allocator domains (RAW, MEM, OBJ) wrapped so that every Python object is counted
//! once, at its requested size. The arena allocator is wrapped too, only to keep the memory
//! pymalloc and the frame stack take from the system out of the native counts.

use std::sync::Once;

use heapgate_core::capture::{is_active, recorder, Allocator, Guard};
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

extern "C" fn malloc(ctx: *mut c_void, size: size_t) -> *mut c_void {
    let d = domain(ctx);
    let call = d.original.malloc.expect("CPython allocators are complete");
    if !is_active() {
        let ptr = call(d.original.ctx, size);
        clear_slack(d.slack, ptr, size);
        return ptr;
    }
    let Some(r) = recorder() else {
        let ptr = call(d.original.ctx, size);
        clear_slack(d.slack, ptr, size);
        return ptr;
    };
    let ptr = call(d.original.ctx, size);
    if !ptr.is_null() {
        r.record_alloc(ptr as usize, size, d.allocator);
    }
    ptr
}

extern "C" fn calloc(ctx: *mut c_void, count: size_t, size: size_t) -> *mut c_void {
    let d = domain(ctx);
    let call = d.original.calloc.expect("CPython allocators are complete");
    if !is_active() {
        return call(d.original.ctx, count, size);
    }
    let Some(r) = recorder() else {
        return call(d.original.ctx, count, size);
    };
    let ptr = call(d.original.ctx, count, size);
    if !ptr.is_null() {
        r.record_alloc(ptr as usize, count.saturating_mul(size), d.allocator);
    }
    ptr
}

extern "C" fn realloc(ctx: *mut c_void, old: *mut c_void, size: size_t) -> *mut c_void {
    let d = domain(ctx);
    let call = d.original.realloc.expect("CPython allocators are complete");
    if !is_active() {
        let new = call(d.original.ctx, old, size);
        clear_slack(d.slack, new, size);
        return new;
    }
    let Some(r) = recorder() else {
        let new = call(d.original.ctx, old, size);
        clear_slack(d.slack, new, size);
        return new;
    };
    let taken = if old.is_null() {
        None
    } else {
        r.take(old as usize)
    };
    let new = call(d.original.ctx, old, size);
    if new.is_null() {
        if let Some(block) = taken {
            r.restore(block);
        }
    } else {
        clear_slack(d.slack, new, size);
        r.record_alloc(new as usize, size, d.allocator);
    }
    new
}

extern "C" fn free(ctx: *mut c_void, ptr: *mut c_void) {
    let d = domain(ctx);
    let call = d.original.free.expect("CPython allocators are complete");
    if is_active() && !ptr.is_null() {
        if let Some(r) = recorder() {
            r.take(ptr as usize);
            return call(d.original.ctx, ptr);
        }
    }
    call(d.original.ctx, ptr)
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

/// Wrap the three domains and the arena allocator (once per process; the GIL must be held).
pub fn install() {
    INSTALL.call_once(|| {
        let pymalloc = pymalloc_in_use();
        for (domain, allocator) in [
            (PyMemAllocatorDomain::PYMEM_DOMAIN_RAW, Allocator::PyRaw),
            (PyMemAllocatorDomain::PYMEM_DOMAIN_MEM, Allocator::PyMem),
            (PyMemAllocatorDomain::PYMEM_DOMAIN_OBJ, Allocator::PyObj),
        ] {
            let mut original = PyMemAllocatorEx {
                ctx: std::ptr::null_mut(),
                malloc: None,
                calloc: None,
                realloc: None,
                free: None,
            };
            // SAFETY: the GIL is held; the struct is filled by CPython.
            unsafe { ffi::PyMem_GetAllocator(domain, &mut original) };
            // With the default allocators, RAW is the C library's malloc.
            let slack = if pymalloc && allocator == Allocator::PyRaw {
                Slack::Malloc
            } else {
                Slack::Unknown
            };
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
            // SAFETY: the GIL is held; ours wraps the original, so blocks allocated before
            // this call are freed by the allocator that made them.
            unsafe { ffi::PyMem_SetAllocator(domain, &mut ours) };
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
