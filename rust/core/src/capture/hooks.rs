//! The hooks written into other objects' GOTs, and the one table that lists them.
//!
//! Each hook calls the C library's function through our own (never patched) GOT, then, only
//! while a test is tracked, records the event. Untracked, a hook is the call plus one branch.
//! Recording never changes what the caller sees: the result and `errno` are the C library's.
//! The loader's entry points are not hooks but trampolines (see [`super::loader`]): they must
//! not become the caller whose search path or `RTLD_NEXT` the loader applies.

use libc::{c_int, c_void, off_t, size_t};

use super::elf_got::Hook;
use super::loader;
use super::{calls, is_active, recorder, threads};
use super::{Allocator, HookEntry};
use crate::hook_entry;

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
        b"mremap" => mremap_hook as unsafe extern "C" fn(*mut c_void, size_t, size_t, c_int, *mut c_void) -> *mut c_void,
        b"dlopen" => loader::heapgate_dlopen_trampoline as unsafe extern "C" fn(),
        b"dlmopen" => loader::heapgate_dlmopen_trampoline as unsafe extern "C" fn(),
        b"dlsym" => loader::heapgate_dlsym_trampoline as unsafe extern "C" fn(),
        b"dlvsym" => loader::heapgate_dlvsym_trampoline as unsafe extern "C" fn(),
        b"dlclose" => dlclose_hook as unsafe extern "C" fn(*mut c_void) -> c_int,
        b"pthread_create" => threads::pthread_create_hook as threads::PthreadCreate,
    }
}

/// Run our recording and leave `errno` as the C library set it (our locks, the stack walk
/// and the tables may change it; the caller may read it even after a success).
#[inline]
pub(super) fn keeping_errno<R>(record: impl FnOnce() -> R) -> R {
    // SAFETY: __errno_location returns the calling thread's errno slot, valid while it runs.
    let slot = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *slot };
    let result = record();
    // SAFETY: as above.
    unsafe { *slot = saved };
    result
}

/// `sp`, `bp`: the registers the hook was entered with (see [`hook_entry!`]).
#[inline]
fn record(ptr: *mut c_void, size: usize, allocator: Allocator, (sp, bp): (usize, usize)) {
    if is_active() && !ptr.is_null() {
        keeping_errno(|| {
            if let Some(r) = recorder() {
                r.record_alloc(
                    ptr as usize,
                    size,
                    allocator,
                    HookEntry::from_registers(sp, bp),
                );
            }
        });
    }
}

// The allocating hooks are entered through `hook_entry!`, so their stacks start at the
// caller; each `*_recorded` function takes the entry's two registers after the arguments.

/// A hook for a C library function that returns a new block (or NULL) of `$size` bytes:
/// `$hook` is entered through `hook_entry!` into `$recorded`, which makes the call and records
/// the block as `$allocator`'s.
macro_rules! block_hook {
    ($hook:ident => $recorded:ident($($arg:ident: $ty:ty),+) calls $call:expr, $size:expr, $allocator:ident) => {
        hook_entry!(fn $hook($($arg: $ty),+) -> *mut c_void => $recorded);
        #[inline(always)]
        unsafe extern "C" fn $recorded($($arg: $ty),+, sp: usize, bp: usize) -> *mut c_void {
            // SAFETY: forwards the caller's arguments to the C library.
            let ptr = unsafe { $call };
            record(ptr, $size, Allocator::$allocator, (sp, bp));
            ptr
        }
    };
}

block_hook!(malloc_hook => malloc_recorded(size: size_t) calls libc::malloc(size), size, Malloc);
block_hook!(calloc_hook => calloc_recorded(count: size_t, size: size_t)
    calls libc::calloc(count, size), count.saturating_mul(size), Calloc);
block_hook!(aligned_alloc_hook => aligned_alloc_recorded(align: size_t, size: size_t)
    calls libc::aligned_alloc(align, size), size, AlignedAlloc);
block_hook!(memalign_hook => memalign_recorded(align: size_t, size: size_t)
    calls libc::memalign(align, size), size, Memalign);
block_hook!(valloc_hook => valloc_recorded(size: size_t) calls valloc(size), size, Valloc);
block_hook!(pvalloc_hook => pvalloc_recorded(size: size_t) calls pvalloc(size), size, Pvalloc);

hook_entry!(fn realloc_hook(old: *mut c_void, size: size_t) -> *mut c_void => realloc_recorded);
#[inline(always)]
unsafe extern "C" fn realloc_recorded(
    old: *mut c_void,
    size: size_t,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    let entry = HookEntry::from_registers(sp, bp);
    // SAFETY: forwards the caller's arguments to the C library.
    calls::realloc(old, size, Allocator::Realloc, entry, || unsafe {
        libc::realloc(old, size)
    })
}

hook_entry!(fn reallocarray_hook(old: *mut c_void, count: size_t, size: size_t) -> *mut c_void => reallocarray_recorded);
#[inline(always)]
unsafe extern "C" fn reallocarray_recorded(
    old: *mut c_void,
    count: size_t,
    size: size_t,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    let bytes = count.saturating_mul(size);
    let entry = HookEntry::from_registers(sp, bp);
    // SAFETY: forwards the caller's arguments to the C library.
    calls::realloc(old, bytes, Allocator::Reallocarray, entry, || unsafe {
        libc::reallocarray(old, count, size)
    })
}

unsafe extern "C" fn free_hook(ptr: *mut c_void) {
    if is_active() && !ptr.is_null() {
        keeping_errno(|| {
            if let Some(r) = recorder() {
                r.take(ptr as usize);
            }
        });
    }
    // SAFETY: forwards the caller's pointer to the C library.
    unsafe { libc::free(ptr) }
}

hook_entry!(fn posix_memalign_hook(out: *mut *mut c_void, align: size_t, size: size_t) -> c_int => posix_memalign_recorded);
#[inline(always)]
unsafe extern "C" fn posix_memalign_recorded(
    out: *mut *mut c_void,
    align: size_t,
    size: size_t,
    sp: usize,
    bp: usize,
) -> c_int {
    // SAFETY: forwards the caller's arguments to the C library.
    let rc = unsafe { libc::posix_memalign(out, align, size) };
    if rc == 0 {
        // SAFETY: on success the C library stored the block in `*out` (on failure `*out` is
        // neither read nor written here).
        record(unsafe { *out }, size, Allocator::PosixMemalign, (sp, bp));
    }
    rc
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
        keeping_errno(|| {
            if let Some(r) = recorder() {
                if flags & libc::MAP_ANONYMOUS != 0 {
                    r.record_mmap(ptr as usize, len);
                } else {
                    // A file's pages are the file's (page cache), not the program's memory;
                    // the mapping may still replace (MAP_FIXED) an anonymous one of ours.
                    r.record_munmap(ptr as usize, len);
                }
            }
        });
    }
    ptr
}

unsafe extern "C" fn munmap_hook(addr: *mut c_void, len: size_t) -> c_int {
    // Recorded before the call, so the range cannot be mapped again by another thread first;
    // arguments the kernel refuses (EINVAL) unmap nothing and are not recorded.
    if is_active() && len != 0 && (addr as usize).is_multiple_of(page_size()) {
        keeping_errno(|| {
            if let Some(r) = recorder() {
                r.record_munmap(addr as usize, len);
            }
        });
    }
    // SAFETY: forwards the caller's arguments to the C library.
    unsafe { libc::munmap(addr, len) }
}

/// `new_address` is read by the C library only with `MREMAP_FIXED`; passing it always is
/// what the variadic C declaration allows on x86-64 and aarch64 (same registers).
unsafe extern "C" fn mremap_hook(
    old: *mut c_void,
    old_len: size_t,
    new_len: size_t,
    flags: c_int,
    new_address: *mut c_void,
) -> *mut c_void {
    // SAFETY: forwards the caller's arguments to the C library.
    let call = || unsafe { libc::mremap(old, old_len, new_len, flags, new_address) };
    if !is_active() {
        return call();
    }
    let Some(r) = recorder() else { return call() };
    // Like realloc: what moved or resized leaves the table and the new mapping enters it at
    // this call's stack. The call runs under the tracker's lock, so no other thread's
    // mapping can land in the old range before it leaves the table.
    let keeps_old = flags & libc::MREMAP_DONTUNMAP != 0 || old_len == 0;
    r.record_mremap(old as usize, old_len, new_len, keeps_old, || {
        let new = call();
        // SAFETY: reads the calling thread's errno slot.
        let errno = unsafe { *libc::__errno_location() };
        ((new != libc::MAP_FAILED).then_some(new as usize), errno)
    })
    .map_or(libc::MAP_FAILED, |new| new as *mut c_void)
}

unsafe extern "C" fn dlclose_hook(handle: *mut c_void) -> c_int {
    // dlclose does not depend on its caller, so calling it from here changes nothing.
    // SAFETY: forwards the caller's handle to the C library.
    let rc = unsafe { libc::dlclose(handle) };
    // Note what was unloaded (its module-map entry stays for the test's report), and let
    // the next object at the same addresses be patched.
    keeping_errno(super::sync_objects);
    rc
}

fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as usize,
        _ => 4096,
    })
}
