//! In-process allocation capture: hooks in every loaded object's GOT, a per-thread guard and
//! charge, and the [`Tracker`] that turns events into a test's numbers.
//!
//! Life cycle: [`install`] once (idempotent), then per test [`start`] and [`stop`]. Between
//! tests the hooks stay in place and cost one branch each.

mod arch;
pub mod calls;
mod elf_got;
mod fork;
mod guard;
mod hooks;
pub mod hybrid;
mod leaks;
mod loader;
pub(crate) mod objects;
mod python;
mod recorder;
mod scrub;
mod session;
mod tagged;
mod threads;
mod tracker;
mod unwind;

pub use crate::model::{
    Allocator, Frame, LeakKind, LeakKinds, LeakTally, SiteReport, TestReport, ThreadMode,
};
pub use guard::Guard;
pub(crate) use leaks::NativeOrigins;
pub use leaks::{
    chunk_for_request, chunk_holds_request, gc_candidates, read_words, scan_leaks,
    take_leak_explanations, word_at, ObjectLayout, PoolLayout,
};
pub use objects::writable_segments_of;
pub use python::{
    set_python_stack_source, PyFrameRef, PythonStack, PythonStackSource, MAX_PYTHON_FRAMES,
};
pub use recorder::{recorder, Recorder, TakenBlock};
pub use scrub::ScrubbingAllocator;
#[doc(hidden)]
pub use session::NATIVE as NATIVE_STACKS;
pub use session::{
    checkpoint, install, installed, is_active, set_charge_tracers, start, stop, supported,
    unloaded_modules,
};
pub use tagged::tagged;
pub use tracker::{CodeNames, FrameKey, Tracker};
pub use unwind::{CodeRange, HookEntry, MAX_NATIVE_FRAMES};

// What the hooks, the loader trampolines and thread starts call.
use session::{charge_for_new_thread, sync_objects};

/// Errors of the capture layer.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    /// `start` while a test is tracked.
    #[error("a test is already being tracked on this process; stop it first")]
    AlreadyActive,
    /// `stop` with nothing tracked.
    #[error("no test is being tracked")]
    NotActive,
    /// The leak scan could not map its scratch memory.
    #[error("the leak scan could not map scratch memory")]
    ScanMemory,
    /// Not Linux/ELF on x86-64 or aarch64.
    #[error("allocation tracking is only available on Linux (x86-64, aarch64)")]
    Unsupported,
}
