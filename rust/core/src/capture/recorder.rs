//! The recorder: what a hook does with an event once it knows the thread is not already
//! inside the capture layer.

use std::sync::atomic::Ordering;

use super::guard::Charge;
use super::hybrid;
use super::python::{with_last_stack, LastStack, PYTHON};
use super::session::{
    is_active, mode, session, sync_objects_if_changed, CHARGE_TRACERS, GENERATION, NATIVE,
    REQUIRE_ENTRY,
};
use super::tracker::RemovedBlock;
use super::unwind::{self, HookEntry};
use super::{Allocator, Guard, PyFrameRef, PythonStack, ThreadMode, Tracker};

/// Records events for the calling thread; exists only while its [`Guard`] is held, so
/// nothing it does (or the allocator underneath it) is recorded twice.
pub struct Recorder {
    _guard: Guard,
}

/// A recorder for the calling thread, unless it is already inside the capture layer.
#[inline]
pub fn recorder() -> Option<Recorder> {
    Guard::enter().map(|g| Recorder { _guard: g })
}

// An allocation's hybrid stack, built in place (no allocation per event).
use hybrid::Keys as HybridKeys;

/// A heap block taken out of the live table by [`Recorder::take`].
pub struct TakenBlock {
    generation: u64,
    block: RemovedBlock,
}

impl Recorder {
    /// Is the calling thread's allocation charged to the tracked test? Returns the
    /// generation and whether the entry rule applies.
    fn charged(&self) -> Option<(u64, bool)> {
        let generation = GENERATION.load(Ordering::Relaxed);
        let charge = Charge::current();
        let own = charge.generation == generation;
        let counted = match mode() {
            ThreadMode::All => true,
            ThreadMode::Spawned => own,
            ThreadMode::CurrentThread => own && charge.test_thread,
        };
        let entry_rule = own && charge.test_thread && REQUIRE_ENTRY.load(Ordering::Relaxed);
        counted.then_some((generation, entry_rule))
    }

    /// Is this allocation a tracer's (and tracers are not charged)?
    fn observers(&self, python: &PythonStack, size: usize, allocator: Allocator) -> bool {
        let tracers = python.in_tracer
            || (python.tracer_frame_size == size && size != 0 && allocator.is_python());
        tracers && !CHARGE_TRACERS.load(Ordering::Relaxed)
    }

    /// Read the thread's Python stack; `previous` is an earlier stack of the thread,
    /// outermost frame first, whose outer frames the walk may reuse.
    fn walk_python(&self, stack: &mut PythonStack, previous: &[PyFrameRef]) {
        if let Some(python) = PYTHON.get() {
            (python.walk)(stack, previous);
        }
    }

    /// The allocation's hybrid stack into `keys` when native stacks are recorded; false
    /// when the stack is the Python frames alone.
    /// `entry`: where the allocator hook was entered, if it says (see `HookEntry`).
    #[inline]
    fn hybrid_keys(
        &self,
        python: &PythonStack,
        keys: &mut HybridKeys,
        entry: Option<HookEntry>,
    ) -> bool {
        // Checked here, inlined: the unwind's buffers are not even set up without --native.
        NATIVE.load(Ordering::Relaxed) && self.native_hybrid_keys(python, keys, entry)
    }

    #[inline(never)]
    fn native_hybrid_keys(
        &self,
        python: &PythonStack,
        keys: &mut HybridKeys,
        entry: Option<HookEntry>,
    ) -> bool {
        let eval = PYTHON.get().map(|p| p.eval_function).unwrap_or_default();
        let py = python.frames();
        // The test's frames run in this many interpreter calls: the unwind can stop there.
        let budget = python
            .complete
            .then(|| py.iter().filter(|f| f.group_end != 0).count());
        let mut native = unwind::NativeStack::new();
        unwind::unwind(&mut native, eval, budget, entry);
        hybrid::merge(&native, py, |ip| eval.contains(ip), python.complete, keys);
        true
    }

    fn with_tracker(&self, generation: u64, f: impl FnOnce(&mut Tracker)) {
        let mut s = session();
        if let Some(session) = s.as_mut() {
            if session.generation == generation && is_active() {
                f(&mut session.tracker);
            }
        }
    }

    /// The trie node of the allocation's stack: the hybrid `keys` when native stacks are
    /// recorded, else the Python frames. With `last` (the thread's last recorded stack, which
    /// the walk was given), the Python frames it shares are not interned again, and `last`
    /// becomes this stack.
    fn node_for(
        &self,
        tracker: &mut Tracker,
        generation: u64,
        python: &PythonStack,
        keys: Option<&HybridKeys>,
        last: Option<&mut LastStack>,
    ) -> u32 {
        let describe = PYTHON.get().map(|p| p.describe);
        let mut describe = |code| match describe {
            Some(d) => d(code),
            None => (String::from("??"), String::from("??")),
        };
        match (keys, last) {
            (Some(keys), last) => {
                // The hybrid stack is interned whole; the Python frames are still kept for the
                // next walk, which takes the lines of the outer frames it shares with them.
                if let Some(last) = last {
                    last.remember(python, generation, false);
                }
                tracker.intern_stack(keys.iter().copied(), &mut describe)
            }
            (None, None) => {
                tracker.intern_stack(python.frames().iter().map(PyFrameRef::key), &mut describe)
            }
            (None, Some(last)) => {
                let frames = python.frames();
                let n = frames.len();
                let known = last.interned_for(generation);
                // The walk reused these outer frames; frames further in whose line is the
                // same (a loop's line at another instruction) have the same node too.
                let walked_same = python.same_outer.min(known);
                let mut same = walked_same;
                while same < n.min(known) && frames[n - 1 - same].key() == last.frames[same].key() {
                    same += 1;
                }
                let start = same.checked_sub(1).map_or(0, |i| last.path[i]);
                let node = tracker.intern_below(
                    start,
                    frames[..n - same].iter().rev().map(PyFrameRef::key),
                    &mut last.path[same..n],
                    &mut describe,
                );
                last.remember(python, generation, true);
                node
            }
        }
    }

    /// Record a heap block of `size` bytes at `addr`; `entry`: where the allocator hook that
    /// made it was entered, if it says.
    pub fn record_alloc(
        &self,
        addr: usize,
        size: usize,
        allocator: Allocator,
        entry: Option<HookEntry>,
    ) {
        sync_objects_if_changed();
        let Some((generation, entry_rule)) = self.charged() else {
            return;
        };
        with_last_stack(|last| {
            let mut python = PythonStack::new();
            let previous = last
                .as_deref()
                .map_or(&[][..], |l| l.frames_for(generation));
            self.walk_python(&mut python, previous);
            if (entry_rule && !python.reached_entry) || self.observers(&python, size, allocator) {
                return;
            }
            let mut keys = HybridKeys::new();
            let hybrid = self.hybrid_keys(&python, &mut keys, entry);
            self.with_tracker(generation, |t| {
                let node = self.node_for(t, generation, &python, hybrid.then_some(&keys), last);
                t.on_alloc(addr, size as u64, allocator, node);
            });
        })
    }

    /// Record `len` bytes mapped at `addr`.
    pub(crate) fn record_mmap(&self, addr: usize, len: usize) {
        sync_objects_if_changed();
        let mut python = PythonStack::new();
        let counted = self.charged().and_then(|(generation, entry_rule)| {
            self.walk_python(&mut python, &[]);
            ((!entry_rule || python.reached_entry)
                && !self.observers(&python, len, Allocator::Mmap))
            .then_some(generation)
        });
        let Some(generation) = counted else {
            // Not ours, but it may replace (MAP_FIXED) a mapping that is.
            self.record_munmap(addr, len);
            return;
        };
        let mut keys = HybridKeys::new();
        let hybrid = self.hybrid_keys(&python, &mut keys, None);
        self.with_tracker(generation, |t| {
            let node = self.node_for(t, generation, &python, hybrid.then_some(&keys), None);
            t.on_mmap(addr, len as u64, node);
        });
    }

    /// Run `call` (an `mremap` of `[old, old + old_len)` to `new_len` bytes; it returns the
    /// new address, if any, and its errno) under the tracker's lock, and record it like a
    /// `realloc`: if the old range held tracked mappings, they leave the table (unless
    /// `keeps_old`) and the new mapping enters it whole, at this call's stack. A mapping the
    /// tracker does not know (made before the test, or file-backed) stays unknown.
    /// Returns what `call` returned, with `errno` as `call` left it.
    pub(crate) fn record_mremap(
        &self,
        old: usize,
        old_len: usize,
        new_len: usize,
        keeps_old: bool,
        call: impl FnOnce() -> (Option<usize>, libc::c_int),
    ) -> Option<usize> {
        let mut python = PythonStack::new();
        let counted = self.charged().and_then(|(generation, entry_rule)| {
            self.walk_python(&mut python, &[]);
            (!entry_rule || python.reached_entry).then_some(generation)
        });
        let mut hybrid = HybridKeys::new();
        let keys = counted.map(|_| self.hybrid_keys(&python, &mut hybrid, None));
        let generation = GENERATION.load(Ordering::Relaxed);
        let mut s = session();
        let (new, errno) = call();
        if let (Some(new), Some(session)) = (new, s.as_mut()) {
            if session.generation == generation && is_active() {
                let t = &mut session.tracker;
                let tracked = if keeps_old {
                    t.mapped_in(old, old_len as u64)
                } else {
                    t.on_munmap(old, old_len as u64)
                };
                match (keys, tracked > 0) {
                    (Some(is_hybrid), true) => {
                        let node = self.node_for(
                            t,
                            generation,
                            &python,
                            is_hybrid.then_some(&hybrid),
                            None,
                        );
                        t.on_mmap(new, new_len as u64, node);
                    }
                    // Not ours, but it may replace (MREMAP_FIXED) a mapping that is.
                    _ => {
                        t.on_munmap(new, new_len as u64);
                    }
                }
            }
        }
        drop(s);
        // SAFETY: writes the calling thread's errno slot.
        unsafe { *libc::__errno_location() = errno };
        new
    }

    /// Record that `[addr, addr + len)` was unmapped (before the C library unmaps it).
    pub(crate) fn record_munmap(&self, addr: usize, len: usize) {
        let generation = GENERATION.load(Ordering::Relaxed);
        self.with_tracker(generation, |t| {
            t.on_munmap(addr, len as u64);
        });
    }

    /// Take the block at `addr` out of the live table (before the C library frees it, so the
    /// address cannot be handed to another thread first). Frees are recorded whoever frees.
    pub fn take(&self, addr: usize) -> Option<TakenBlock> {
        let generation = GENERATION.load(Ordering::Relaxed);
        let mut taken = None;
        self.with_tracker(generation, |t| {
            taken = t
                .on_free(addr)
                .map(|block| TakenBlock { generation, block });
        });
        taken
    }

    /// Put back a block whose `realloc` failed.
    pub fn restore(&self, taken: TakenBlock) {
        self.with_tracker(taken.generation, |t| t.restore(taken.block));
    }
}
