//! The process's tracking state: which test is tracked (one at a time), whose allocations it
//! is charged for, and the hooks' installation in every loaded object.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use super::fork::{fork_child, fork_parent, fork_prepare};
use super::guard::Charge;
use super::{elf_got, hooks, loader, unwind};
use super::{CaptureError, Guard, TestReport, ThreadMode, Tracker};

pub(super) static ACTIVE: AtomicBool = AtomicBool::new(false);
pub(super) static GENERATION: AtomicU64 = AtomicU64::new(0);
pub(super) static MODE: AtomicU8 = AtomicU8::new(0);
pub(super) static REQUIRE_ENTRY: AtomicBool = AtomicBool::new(false);
/// Are native stacks recorded for the current test? Read by the hooks' entry trampolines
/// (see `hook_entry!`), hence public.
pub static NATIVE: AtomicBool = AtomicBool::new(false);
pub(super) static CHARGE_TRACERS: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), CaptureError>> = OnceLock::new();

pub(super) struct Session {
    pub(super) generation: u64,
    pub(super) tracker: Tracker,
}

/// The lock around the session, taken once per recorded event by whichever thread records.
///
/// Released by a plain store: a `std` mutex releases with an atomic swap (to learn whether to
/// wake a waiter), which on x86-64 is a full barrier that waits for the event's writes to the
/// live table (cache misses at millions of live blocks) to complete before the hook can
/// return. A waiter therefore cannot be woken: it spins briefly (holders keep the lock for
/// one event, a few hundred nanoseconds), then yields, then sleeps in short naps, so a leak
/// scan that holds the lock for seconds costs the waiting threads no CPU.
pub(super) struct SessionLock {
    locked: AtomicU32,
    session: UnsafeCell<Option<Session>>,
}

// SAFETY: the session is only reached through a `SessionGuard`, which exists on one thread at
// a time (the `locked` flag, taken with acquire and released with release ordering).
unsafe impl Sync for SessionLock {}

/// Exclusive access to the session while held.
pub(super) struct SessionGuard(());

static SESSION: SessionLock = SessionLock {
    locked: AtomicU32::new(0),
    session: UnsafeCell::new(None),
};

impl SessionLock {
    #[inline]
    fn try_lock(&self) -> bool {
        self.locked
            .compare_exchange_weak(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    fn lock(&self) -> SessionGuard {
        if !self.try_lock() {
            self.lock_contended();
        }
        SessionGuard(())
    }

    #[cold]
    fn lock_contended(&self) {
        let mut attempts = 0u32;
        loop {
            if self.locked.load(Ordering::Relaxed) == 0 && self.try_lock() {
                return;
            }
            attempts += 1;
            if attempts < 64 {
                std::hint::spin_loop();
            } else if attempts < 96 {
                std::thread::yield_now();
            } else {
                // A long hold (a leak scan, a report): nap instead of burning a CPU.
                let nap = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 50_000,
                };
                // SAFETY: nanosleep reads the timespec and may write nothing (null remainder).
                unsafe { libc::nanosleep(&nap, std::ptr::null_mut()) };
            }
        }
    }
}

impl Deref for SessionGuard {
    type Target = Option<Session>;
    fn deref(&self) -> &Option<Session> {
        // SAFETY: the guard holds the lock.
        unsafe { &*SESSION.session.get() }
    }
}

impl DerefMut for SessionGuard {
    fn deref_mut(&mut self) -> &mut Option<Session> {
        // SAFETY: the guard holds the lock, and is borrowed mutably.
        unsafe { &mut *SESSION.session.get() }
    }
}

impl Drop for SessionGuard {
    #[inline]
    fn drop(&mut self) {
        SESSION.locked.store(0, Ordering::Release);
    }
}

/// Lock the session. A panic while it was held cannot leave the tables half-updated in a way
/// that matters more than losing the test's numbers; the lock is released by unwinding.
#[inline]
pub(super) fn session() -> SessionGuard {
    SESSION.lock()
}

/// True while a test is tracked. The hooks' one branch.
#[inline(always)]
pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Can allocations be tracked in this process at all (Linux/ELF, x86-64 or aarch64)?
/// Patches nothing.
pub fn supported() -> Result<(), CaptureError> {
    if cfg!(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64")
    )) {
        Ok(())
    } else {
        Err(CaptureError::Unsupported)
    }
}

/// Patch every loaded object (and, through the loader trampolines and at each test start,
/// every object loaded later). Idempotent; the first call's outcome is returned to every
/// caller. [`start`] calls it, so nothing is patched until the first tracked test.
pub fn install() -> Result<(), CaptureError> {
    INSTALLED
        .get_or_init(|| {
            supported()?;
            // SAFETY: registers plain functions that only touch our own locks and flags.
            unsafe {
                libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
            }
            loader::init();
            let _guard = Guard::enter();
            elf_got::patch_loaded_objects(hook_table(), elf_got::Wait::Block);
            Ok(())
        })
        .clone()
}

fn hook_table() -> &'static [elf_got::Hook] {
    static TABLE: OnceLock<Vec<elf_got::Hook>> = OnceLock::new();
    TABLE.get_or_init(hooks::table)
}

/// Patch the objects loaded since the last look and note those unloaded (cheap when nothing
/// changed). Runs before `dlsym` and after `dlclose`, at test start, and, after a `dlopen`,
/// in the next tracked allocation.
pub(super) fn sync_objects() {
    if !INSTALLED.get().is_some_and(|r| r.is_ok()) {
        return;
    }
    if let Some(_guard) = Guard::enter() {
        elf_got::patch_loaded_objects(hook_table(), elf_got::Wait::Block);
        unwind::forget_unloaded_objects();
    }
}

/// In a tracked allocation hook (guard held): patch if a `dlopen` ran since the last look.
/// Never waits for another thread's walk (that thread may be inside the loader, waiting for
/// a lock this one holds); the note stays for later instead.
#[inline]
pub(super) fn sync_objects_if_changed() {
    if loader::take_change_note()
        && elf_got::patch_loaded_objects(hook_table(), elf_got::Wait::TryOnly).is_none()
    {
        loader::keep_change_note();
    }
}

/// Module-map entries of the objects unloaded since the last tracked test started, as
/// recorded when they were loaded: a report made after a `dlclose` still symbolizes frames
/// that point into them (see [`crate::symbolize::ModuleMap::current_process_with`]).
pub fn unloaded_modules() -> Vec<crate::symbolize::Module> {
    elf_got::unloaded_modules()
}

/// Have the hooks been written into the loaded objects' GOTs (by [`install`])?
pub fn installed() -> bool {
    INSTALLED.get().is_some_and(|r| r.is_ok())
}

/// Start tracking a test on the calling thread. With `require_entry`, the calling thread is
/// charged only for allocations made while the test's own function is on its stack (as the
/// Python layer reports through [`PythonStack::reached_entry`](super::PythonStack::reached_entry)). With `native`, every
/// allocation also records its native return addresses (hybrid with the Python frames).
pub fn start(mode: ThreadMode, require_entry: bool, native: bool) -> Result<(), CaptureError> {
    install()?;
    {
        // Objects loaded since the last test (by paths the trampolines do not see) are
        // patched before this one's first allocation; those unloaded before it are no
        // longer needed for a report.
        let _guard = Guard::enter();
        elf_got::patch_loaded_objects(hook_table(), elf_got::Wait::Block);
        elf_got::forget_unloaded();
    }
    let mut s = session();
    if is_active() {
        return Err(CaptureError::AlreadyActive);
    }
    let generation = GENERATION.fetch_add(1, Ordering::SeqCst) + 1;
    match s.as_mut() {
        Some(session) => {
            session.tracker.reset();
            session.generation = generation;
        }
        None => {
            *s = Some(Session {
                generation,
                tracker: Tracker::new(),
            })
        }
    }
    {
        // Before the test's first allocation: what the stack holds now names none of its blocks.
        let _guard = Guard::enter();
        let here = 0usize;
        super::leaks::remember_stack(std::hint::black_box(&here) as *const usize as usize);
    }
    MODE.store(mode as u8, Ordering::SeqCst);
    REQUIRE_ENTRY.store(require_entry, Ordering::SeqCst);
    NATIVE.store(native, Ordering::SeqCst);
    Charge {
        generation,
        test_thread: true,
    }
    .set();
    ACTIVE.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether the next tracked tests are also charged for what trace, profile and
/// `sys.monitoring` callbacks allocate (see [`PythonStack::in_tracer`](super::PythonStack::in_tracer)). Off by default:
/// coverage, profilers and debuggers are observers, not the test.
pub fn set_charge_tracers(charge: bool) {
    CHARGE_TRACERS.store(charge, Ordering::SeqCst);
}

/// Stop tracking and return the test's numbers.
pub fn stop() -> Result<TestReport, CaptureError> {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return Err(CaptureError::NotActive);
    }
    Charge::NONE.set();
    let mut s = session();
    // Moved out, not copied: the next `start` resets the tracker anyway.
    Ok(s.as_mut()
        .map(|s| s.tracker.take_report())
        .unwrap_or_default())
}

/// The tracked test's numbers so far, without stopping: what is live now per site (for
/// repeat-run leak growth, which compares the live memory after each run of the call). The
/// frame trie is copied (the test goes on), never re-interned.
pub fn checkpoint() -> Result<TestReport, CaptureError> {
    let _guard = Guard::enter();
    let s = session();
    if !is_active() {
        return Err(CaptureError::NotActive);
    }
    s.as_ref()
        .map(|s| s.tracker.report())
        .ok_or(CaptureError::NotActive)
}

pub(super) fn mode() -> ThreadMode {
    match MODE.load(Ordering::Relaxed) {
        0 => ThreadMode::CurrentThread,
        1 => ThreadMode::Spawned,
        _ => ThreadMode::All,
    }
}

/// The charge a thread started now by the calling thread inherits, if any.
pub(super) fn charge_for_new_thread() -> Option<Charge> {
    let charge = Charge::current();
    let generation = GENERATION.load(Ordering::Relaxed);
    (charge.generation == generation && mode() == ThreadMode::Spawned).then_some(Charge {
        generation,
        test_thread: false,
    })
}
