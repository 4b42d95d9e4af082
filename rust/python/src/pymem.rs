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
}

fn domain<'a>(ctx: *mut c_void) -> &'a Domain {
    // SAFETY: `ctx` is the leaked `Domain` installed with this allocator; never freed.
    unsafe { &*(ctx as *const Domain) }
}

extern "C" fn malloc(ctx: *mut c_void, size: size_t) -> *mut c_void {
    let d = domain(ctx);
    let call = d.original.malloc.expect("CPython allocators are complete");
    if !is_active() {
        return call(d.original.ctx, size);
    }
    let Some(r) = recorder() else {
        return call(d.original.ctx, size);
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
        return call(d.original.ctx, old, size);
    }
    let Some(r) = recorder() else {
        return call(d.original.ctx, old, size);
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

/// Wrap the three domains and the arena allocator (once per process; the GIL must be held).
pub fn install() {
    INSTALL.call_once(|| {
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
            let ctx = Box::into_raw(Box::new(Domain {
                original,
                allocator,
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
