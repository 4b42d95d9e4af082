//! `fork` handlers: the forking thread holds the capture layer's locks across the fork, so
//! the child never inherits them mid-update; the child starts untracked.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::MutexGuard;

use super::elf_got;
use super::guard::{Charge, Guard};
use super::session::{session, SessionGuard, ACTIVE};

thread_local! {
    /// The locks held by the forking thread between the prepare and parent/child handlers.
    static FORK_LOCKS: RefCell<Option<ForkLocks>> = const { RefCell::new(None) };
}

struct ForkLocks {
    _patch: MutexGuard<'static, Option<elf_got::LoadedObjects>>,
    _session: SessionGuard,
}

pub(super) extern "C" fn fork_prepare() {
    // Handlers that run after ours may allocate: they must not try to take our locks.
    Guard::set_raw(true);
    let patch = elf_got::patch_lock()
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let session = session();
    FORK_LOCKS.with(|l| {
        *l.borrow_mut() = Some(ForkLocks {
            _patch: patch,
            _session: session,
        })
    });
}

pub(super) extern "C" fn fork_parent() {
    FORK_LOCKS.with(|l| l.borrow_mut().take());
    Guard::set_raw(false);
}

pub(super) extern "C" fn fork_child() {
    // The child starts untracked; its copy of our locks is released by the same thread.
    ACTIVE.store(false, Ordering::SeqCst);
    Charge::NONE.set();
    FORK_LOCKS.with(|l| l.borrow_mut().take());
    Guard::set_raw(false);
}
