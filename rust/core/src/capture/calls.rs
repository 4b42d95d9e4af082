//! One allocator call as the capture layer records it, for every wrapper of an allocator: the
//! GOT hooks ([`super::hooks`]) and the binding's wrappers of CPython's allocator domains.
//!
//! Each helper runs the real call itself, with the thread's guard held while a test is tracked,
//! so an allocator the call reaches underneath (pymalloc's arenas, the C library's malloc) is
//! not recorded a second time. The caller's `errno` is left as the call set it.

use libc::c_void;

use super::hooks::keeping_errno;
use super::{is_active, recorder, Allocator, HookEntry};

/// An allocating call that returns a block of `size` bytes (or NULL): recorded as `allocator`'s.
/// `entry`: where the wrapper was entered, if it says (see [`HookEntry`]).
#[inline]
pub fn alloc(
    size: usize,
    allocator: Allocator,
    entry: Option<HookEntry>,
    call: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    if !is_active() {
        return call();
    }
    let Some(r) = recorder() else { return call() };
    let ptr = call();
    if !ptr.is_null() {
        keeping_errno(|| r.record_alloc(ptr as usize, size, allocator, entry));
    }
    ptr
}

/// A realloc-like call: the old block leaves the table before the call can hand its address to
/// another thread, and comes back if the call fails. A NULL result for `size` 0 means the old
/// block was freed (the C library's `realloc(p, 0)`; CPython's domains never return it, they
/// allocate a byte instead).
#[inline]
pub fn realloc(
    old: *mut c_void,
    size: usize,
    allocator: Allocator,
    entry: Option<HookEntry>,
    call: impl FnOnce() -> *mut c_void,
) -> *mut c_void {
    if !is_active() {
        return call();
    }
    let Some(r) = recorder() else { return call() };
    let removed = if old.is_null() {
        None
    } else {
        keeping_errno(|| r.take(old as usize))
    };
    let new = call();
    keeping_errno(|| {
        // A NULL for a size > 0 is a failure that leaves the old block alive.
        if new.is_null() && size != 0 {
            if let Some(block) = removed {
                r.restore(block);
            }
        } else if !new.is_null() {
            r.record_alloc(new as usize, size, allocator, entry);
        }
    });
    new
}

/// A free-like call: the block leaves the table before the call frees it (so its address
/// cannot be handed to another thread first).
#[inline]
pub fn free(ptr: *mut c_void, call: impl FnOnce()) {
    if is_active() && !ptr.is_null() {
        if let Some(r) = recorder() {
            keeping_errno(|| {
                r.take(ptr as usize);
            });
            return call();
        }
    }
    call()
}
