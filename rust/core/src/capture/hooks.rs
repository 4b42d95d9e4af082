//! The hooks written into other objects' GOTs, and the one table that lists them.
//!
//! Each hook calls the C library's function through our own (never patched) GOT, then, only
//! while a test is tracked, records the event. Untracked, a hook is the call plus one branch.

use libc::{c_char, c_int, c_void, off_t, size_t};

use super::elf_got::Hook;
use super::tracker::Allocator;
use super::{is_active, recorder, threads};

extern "C" {
    fn valloc(size: size_t) -> *mut c_void;
    fn pvalloc(size: size_t) -> *mut c_void;
}

/// Every redirected symbol. Adding a hook is one line here plus its function below.
pub(crate) fn table() -> Vec<Hook> {
    macro_rules! hooks {
        ($($name:literal => $hook:expr),* $(,)?) => {
            vec![$(Hook { name: $name, address: $hook as usize }),*]
        };
    }
    hooks! {
        b"malloc" => malloc_hook as unsafe extern "C" fn(size_t) -> *mut c_void,
        b"calloc" => calloc_hook as unsafe extern "C" fn(size_t, size_t) -> *mut c_void,
        b"realloc" => realloc_hook as unsafe extern "C" fn(*mut c_void, size_t) -> *mut c_void,
        b"reallocarray" => reallocarray_hook as unsafe extern "C" fn(*mut c_void, size_t, size_t) -> *mut c_void,
        b"free" => free_hook as unsafe extern "C" fn(*mut c_void),
        b"posix_memalign" => posix_memalign_hook as unsafe extern "C" fn(*mut *mut c_void, size_t, size_t) -> c_int,
        b"aligned_alloc" => aligned_alloc_hook as unsafe extern "C" fn(size_t, size_t) -> *mut c_void,
        b"memalign" => memalign_hook as unsafe extern "C" fn(size_t, size_t) -> *mut c_void,
        b"valloc" => valloc_hook as unsafe extern "C" fn(size_t) -> *mut c_void,
        b"pvalloc" => pvalloc_hook as unsafe extern "C" fn(size_t) -> *mut c_void,
        b"mmap" => mmap_hook as unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void,
        b"mmap64" => mmap_hook as unsafe extern "C" fn(*mut c_void, size_t, c_int, c_int, c_int, off_t) -> *mut c_void,
        b"munmap" => munmap_hook as unsafe extern "C" fn(*mut c_void, size_t) -> c_int,
        b"dlopen" => dlopen_hook as unsafe extern "C" fn(*const c_char, c_int) -> *mut c_void,
        b"dlclose" => dlclose_hook as unsafe extern "C" fn(*mut c_void) -> c_int,
        b"pthread_create" => threads::pthread_create_hook as threads::PthreadCreate,
    }
}

#[inline]
fn record(ptr: *mut c_void, size: usize, allocator: Allocator) {
    if is_active() && !ptr.is_null() {
        if let Some(r) = recorder() {
            r.record_alloc(ptr as usize, size, allocator);
        }
    }
}

unsafe extern "C" fn malloc_hook(size: size_t) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let ptr = unsafe { libc::malloc(size) };
    record(ptr, size, Allocator::Malloc);
    ptr
}

unsafe extern "C" fn calloc_hook(count: size_t, size: size_t) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let ptr = unsafe { libc::calloc(count, size) };
    record(ptr, count.saturating_mul(size), Allocator::Calloc);
    ptr
}

/// realloc-like calls: the old block leaves the table before the C library can hand its
/// address to another thread, and comes back if the call fails.
#[inline]
fn resize(
    old: *mut c_void,
    size: usize,
    allocator: Allocator,
    call: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    if !is_active() {
        return call();
    }
    let Some(r) = recorder() else { return call() };
    let removed = if old.is_null() {
        None
    } else {
        r.take(old as usize)
    };
    let new = call();
    if new.is_null() && size != 0 {
        if let Some(block) = removed {
            r.restore(block);
        }
    } else if !new.is_null() {
        r.record_alloc(new as usize, size, allocator);
    }
    new
}

unsafe extern "C" fn realloc_hook(old: *mut c_void, size: size_t) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    resize(old, size, Allocator::Realloc, || unsafe {
        libc::realloc(old, size)
    })
}

unsafe extern "C" fn reallocarray_hook(
    old: *mut c_void,
    count: size_t,
    size: size_t,
) -> *mut c_void {
    let bytes = count.saturating_mul(size);
    // SAFETY: forwards the caller's arguments to the C library.
    resize(old, bytes, Allocator::Reallocarray, || unsafe {
        libc::reallocarray(old, count, size)
    })
}

unsafe extern "C" fn free_hook(ptr: *mut c_void) {
    if is_active() && !ptr.is_null() {
        if let Some(r) = recorder() {
            r.take(ptr as usize);
        }
    }
    // SAFETY: forwards the caller's pointer to the C library.
    unsafe { libc::free(ptr) }
}

unsafe extern "C" fn posix_memalign_hook(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
) -> c_int {
    // SAFETY: forwards the caller's arguments to the C library.
    let rc = unsafe { libc::posix_memalign(out, align, size) };
    if rc == 0 {
        // SAFETY: on success the C library stored the block in `*out`.
        record(unsafe { *out }, size, Allocator::PosixMemalign);
    }
    rc
}

unsafe extern "C" fn aligned_alloc_hook(align: size_t, size: size_t) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let ptr = unsafe { libc::aligned_alloc(align, size) };
    record(ptr, size, Allocator::AlignedAlloc);
    ptr
}

unsafe extern "C" fn memalign_hook(align: size_t, size: size_t) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let ptr = unsafe { libc::memalign(align, size) };
    record(ptr, size, Allocator::Memalign);
    ptr
}

unsafe extern "C" fn valloc_hook(size: size_t) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let ptr = unsafe { valloc(size) };
    record(ptr, size, Allocator::Valloc);
    ptr
}

unsafe extern "C" fn pvalloc_hook(size: size_t) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let ptr = unsafe { pvalloc(size) };
    record(ptr, size, Allocator::Pvalloc);
    ptr
}

unsafe extern "C" fn mmap_hook(
    addr: *mut c_void,
    len: size_t,
    prot: c_int,
    flags: c_int,
    fd: c_int,
    offset: off_t,
) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let ptr = unsafe { libc::mmap(addr, len, prot, flags, fd, offset) };
    if is_active() && ptr != libc::MAP_FAILED {
        if let Some(r) = recorder() {
            r.record_mmap(ptr as usize, len);
        }
    }
    ptr
}

unsafe extern "C" fn munmap_hook(addr: *mut c_void, len: size_t) -> c_int {
    if is_active() {
        if let Some(r) = recorder() {
            r.record_munmap(addr as usize, len);
        }
    }
    // SAFETY: forwards the caller's arguments to the C library.
    unsafe { libc::munmap(addr, len) }
}

unsafe extern "C" fn dlopen_hook(file: *const c_char, flags: c_int) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let handle = unsafe { libc::dlopen(file, flags) };
    if !handle.is_null() {
        super::on_objects_loaded();
    }
    handle
}

unsafe extern "C" fn dlclose_hook(handle: *mut c_void) -> c_int {
    // SAFETY: forwards the caller's handle to the C library.
    let rc = unsafe { libc::dlclose(handle) };
    super::on_objects_unloaded();
    rc
}
