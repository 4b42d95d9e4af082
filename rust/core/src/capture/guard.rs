//! Per-thread state of the capture layer: the re-entrancy guard and the thread's charge
//! (which tracked test, if any, its allocations belong to).
//!
//! Both are `const`-initialised `Cell`s without destructors, so reading them never allocates
//! and works during thread start-up and tear-down.

use std::cell::Cell;

thread_local! {
    static IN_CAPTURE: Cell<bool> = const { Cell::new(false) };
    static CHARGE: Cell<u64> = const { Cell::new(0) };
}

/// Held while heapgate itself runs on this thread: any allocation made meanwhile (by our own
/// code, or by the allocator underneath a wrapped CPython allocator) is not recorded.
pub struct Guard(());

impl Guard {
    /// Enter the capture layer; `None` when this thread is already inside it.
    #[inline]
    pub fn enter() -> Option<Guard> {
        IN_CAPTURE.with(|c| {
            if c.get() {
                None
            } else {
                c.set(true);
                Some(Guard(()))
            }
        })
    }

    /// Mark the thread as inside/outside the capture layer without a scope (fork handlers).
    pub(crate) fn set_raw(inside: bool) {
        IN_CAPTURE.with(|c| c.set(inside));
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        IN_CAPTURE.with(|c| c.set(false));
    }
}

/// Whom this thread's allocations are charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Charge {
    /// The tracked test's generation (0: none).
    pub generation: u64,
    /// True on the thread that runs the test's call; false on threads it started.
    pub test_thread: bool,
}

impl Charge {
    pub(crate) const NONE: Charge = Charge {
        generation: 0,
        test_thread: false,
    };

    pub(crate) fn current() -> Charge {
        let raw = CHARGE.with(Cell::get);
        Charge {
            generation: raw >> 1,
            test_thread: raw & 1 == 1,
        }
    }

    pub(crate) fn set(self) {
        CHARGE.with(|c| c.set(self.generation << 1 | u64::from(self.test_thread)));
    }
}
