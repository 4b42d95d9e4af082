//! Native stacks at allocation time: return addresses, stopping as soon as the frames below
//! the test are reached.
//!
//! On x86-64 the walk is framehop's CFI unwinder over each loaded object's `.eh_frame_hdr`
//! and `.eh_frame` (read in place, never copied), with per-thread rule caches: a frame seen
//! before costs one cache lookup. Each thread keeps its own handle on the shared table of
//! objects, so threads take no common lock; an address outside every known object (a library
//! loaded since) rebuilds the table once. libgcc's `_Unwind_Backtrace` remains for other
//! architectures and for threads whose thread-local state is gone (thread exit).

use std::ops::ControlFlow;
use std::sync::OnceLock;

use libc::{c_int, c_void};

use super::objects;

/// The deepest native stack recorded per allocation.
pub const MAX_NATIVE_FRAMES: usize = 256;

#[allow(non_camel_case_types)]
type _Unwind_Trace_Fn = extern "C" fn(ctx: *mut c_void, arg: *mut c_void) -> c_int;

extern "C" {
    fn _Unwind_Backtrace(trace: _Unwind_Trace_Fn, arg: *mut c_void) -> c_int;
    fn _Unwind_GetIP(ctx: *mut c_void) -> usize;
}

const URC_NO_REASON: c_int = 0;
const URC_NORMAL_STOP: c_int = 4;

/// An address range `[start, end)` of code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CodeRange {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl CodeRange {
    /// Does the range hold `address`?
    pub fn contains(&self, address: usize) -> bool {
        self.start <= address && address < self.end
    }
}

/// The registers an allocator hook was entered with: its stack pointer, which points at the
/// return address into the hook's caller, and the frame pointer. The caller's frame is where a
/// walk begins: heapgate's own frames above it (the hook, the recorder, the walk itself) are
/// about 5 of the 11 frames a walk otherwise looks up on a suite of small tests.
#[derive(Clone, Copy, Debug)]
pub struct HookEntry {
    sp: usize,
    bp: usize,
}

impl HookEntry {
    /// From the registers a hook's entry trampoline passes on (see [`hook_entry!`]); none
    /// when `sp` is 0 (the platform has no trampolines).
    #[inline]
    pub fn from_registers(sp: usize, bp: usize) -> Option<HookEntry> {
        (sp != 0).then_some(HookEntry { sp, bp })
    }
}

/// An allocator hook's entry: `$entry`, an `extern "C"` function with the parameters listed,
/// which calls `$hook` with them and two more, the stack and frame pointers it was entered
/// with (see [`HookEntry::from_registers`]). On x86-64 it is a naked function of five
/// instructions that jumps to `$hook`, which then returns to the caller itself, or, while no
/// native stacks are recorded, to a plain entry that passes 0, 0; elsewhere it is that plain
/// entry.
#[macro_export]
macro_rules! hook_entry {
    ($(#[$meta:meta])* $vis:vis fn $entry:ident($($arg:ident: $ty:ty),+) -> $ret:ty => $hook:path) => {
        $crate::hook_entry!(@arity $(#[$meta])* $vis $entry ($($arg: $ty),+) $ret, $hook);
    };
    (@arity $(#[$meta:meta])* $vis:vis $entry:ident ($a:ident: $ta:ty) $ret:ty, $hook:path) => {
        $crate::hook_entry!(@emit $(#[$meta])* $vis $entry ($a: $ta) $ret, $hook, "rsi", "rdx");
    };
    (@arity $(#[$meta:meta])* $vis:vis $entry:ident ($a:ident: $ta:ty, $b:ident: $tb:ty) $ret:ty, $hook:path) => {
        $crate::hook_entry!(@emit $(#[$meta])* $vis $entry ($a: $ta, $b: $tb) $ret, $hook, "rdx", "rcx");
    };
    (@arity $(#[$meta:meta])* $vis:vis $entry:ident ($a:ident: $ta:ty, $b:ident: $tb:ty, $c:ident: $tc:ty) $ret:ty, $hook:path) => {
        $crate::hook_entry!(@emit $(#[$meta])* $vis $entry ($a: $ta, $b: $tb, $c: $tc) $ret, $hook, "rcx", "r8");
    };
    (@emit $(#[$meta:meta])* $vis:vis $entry:ident ($($arg:ident: $ty:ty),+) $ret:ty, $hook:path, $sp:literal, $bp:literal) => {
        #[cfg(target_arch = "x86_64")]
        $(#[$meta])*
        // SAFETY: only caller-saved argument registers that carry no argument of this
        // signature are written; the stack and every other register are left as the call made
        // them, so `$hook` (or the plain entry) runs as if called directly and returns to the
        // caller.
        #[unsafe(naked)]
        $vis extern "C" fn $entry($($arg: $ty),+) -> $ret {
            // Without native stacks, straight to the plain entry: `$hook` then keeps no
            // registers across the real call for a walk that will not happen. Else the
            // arguments stay in their registers, the next two free argument registers get the
            // stack pointer (at the return address) and the frame pointer, and the jump leaves
            // the stack as the caller's call made it.
            core::arch::naked_asm!(
                "cmp byte ptr [rip + {native}], 0",
                "je {plain}",
                concat!("mov ", $sp, ", rsp"),
                concat!("mov ", $bp, ", rbp"),
                "jmp {hook}",
                native = sym $crate::capture::NATIVE_STACKS,
                plain = sym $entry::plain,
                hook = sym $hook,
            )
        }
        #[cfg(not(target_arch = "x86_64"))]
        $(#[$meta])*
        $vis extern "C" fn $entry($($arg: $ty),+) -> $ret {
            $entry::plain($($arg),+)
        }
        /// The entry that passes no registers (see `HookEntry::from_registers`).
        mod $entry {
            #[allow(unused_imports)]
            use super::*;
            pub(super) extern "C" fn plain($($arg: $ty),+) -> $ret {
                // SAFETY: forwards the caller's arguments.
                #[allow(unused_unsafe)]
                unsafe { $hook($($arg),+, 0, 0) }
            }
        }
    };
}

/// Where our own code is: its frames are dropped from the top of every stack.
fn own_object() -> CodeRange {
    static OWN: OnceLock<CodeRange> = OnceLock::new();
    *OWN.get_or_init(|| {
        let mut range = CodeRange::default();
        let probe = own_object as *const () as usize;
        objects::walk(|object| match object.extent() {
            Some(extent) if object.contains(probe) => {
                range = CodeRange {
                    start: extent.start,
                    end: extent.end,
                };
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        });
        range
    })
}

/// Return addresses of the calling thread, innermost first, without heapgate's own frames.
/// Not zeroed when made: a walk is a few dozen frames of the 256 (zeroing 2 KiB was a
/// visible part of each native allocation's cost).
pub type NativeStack = arrayvec::ArrayVec<usize, MAX_NATIVE_FRAMES>;

struct Walk<'a> {
    stack: &'a mut NativeStack,
    own: CodeRange,
    eval: CodeRange,
    /// Stop after this many interpreter frames (None: walk to the end).
    eval_budget: Option<usize>,
}

extern "C" fn visit_frame(ctx: *mut c_void, arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the Walk passed to _Unwind_Backtrace below, alive for the whole walk.
    let walk = unsafe { &mut *(arg as *mut Walk) };
    // SAFETY: `ctx` is the unwinder's context for the current frame.
    let ip = unsafe { _Unwind_GetIP(ctx) };
    if walk.visit(ip) {
        URC_NO_REASON
    } else {
        URC_NORMAL_STOP
    }
}

impl Walk<'_> {
    /// Take frame `ip`; false when the walk is over.
    #[inline]
    fn visit(&mut self, ip: usize) -> bool {
        if ip == 0 {
            return false;
        }
        let stack = &mut *self.stack;
        if self.own.contains(ip) {
            // heapgate's own frames: its hook on top, its thread-start trampoline at the
            // bottom of threads started during a test. Neither is the user's code.
            return true;
        }
        if stack.try_push(ip).is_err() {
            return false;
        }
        if self.eval.contains(ip) {
            if let Some(budget) = self.eval_budget.as_mut() {
                *budget -= 1;
                if *budget == 0 {
                    return false;
                }
            }
        }
        !stack.is_full()
    }
}

/// Unwind the calling thread. `eval` is the interpreter's frame-evaluation function; with
/// `eval_budget`, the walk stops after passing that many of its frames (the test's own).
/// With `entry`, the walk starts at the hook's caller.
pub fn unwind(
    stack: &mut NativeStack,
    eval: CodeRange,
    eval_budget: Option<usize>,
    entry: Option<HookEntry>,
) {
    stack.clear();
    if eval_budget == Some(0) {
        return;
    }
    let mut walk = Walk {
        stack,
        own: own_object(),
        eval,
        eval_budget,
    };
    #[cfg(target_arch = "x86_64")]
    if cfi::unwind(entry, &mut |ip, _| walk.visit(ip)) {
        return;
    }
    let _ = entry;
    // SAFETY: the callback only writes into `walk`, which outlives the call.
    unsafe {
        _Unwind_Backtrace(visit_frame, &mut walk as *mut Walk as *mut c_void);
    }
}

/// Where the innermost interpreter frame (`eval`) of the calling thread's stack ends: the
/// stack pointer of the frame that called it (that frame and the calls below it lie beneath
/// this address). None without unwind tables for the stack.
pub fn above_innermost_eval_frame(eval: CodeRange) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        let (mut in_eval, mut top) = (false, None);
        let walked = cfi::unwind(None, &mut |ip, sp| {
            if in_eval {
                top = Some(sp);
                return false;
            }
            in_eval = eval.contains(ip);
            true
        });
        if walked {
            return top;
        }
    }
    let _ = eval;
    None
}

/// Drop the unwind tables if an object was unloaded since they were made (they may refer
/// to its memory). Runs after `dlclose`.
pub fn forget_unloaded_objects() {
    #[cfg(target_arch = "x86_64")]
    cfi::forget_unloaded_objects();
}

/// framehop over the loaded objects' unwind tables (x86-64).
#[cfg(target_arch = "x86_64")]
mod cfi {
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
    use framehop::{
        ExplicitModuleSectionInfo, FrameAddress, Module, MustNotAllocateDuringUnwind, Unwinder,
    };
    use libc::c_void;

    use super::objects::{self, LoadedObject};
    use super::ControlFlow;
    use super::HookEntry;

    /// Bytes of a loaded object, read in place.
    #[derive(Clone, Copy, Default)]
    struct Mapped {
        start: usize,
        len: usize,
    }

    impl std::ops::Deref for Mapped {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            if self.len == 0 {
                return &[];
            }
            // SAFETY: a range inside a PT_LOAD segment of an object the loader reported; it
            // stays mapped until the object is unloaded, and `forget_unloaded_objects` (after
            // dlclose) drops the table that refers to it.
            unsafe { std::slice::from_raw_parts(self.start as *const u8, self.len) }
        }
    }

    type Cfi = UnwinderX86_64<Mapped, MustNotAllocateDuringUnwind>;
    type Cache = CacheX86_64<MustNotAllocateDuringUnwind>;

    /// The loaded objects' unwind tables and code ranges (sorted), as of one look at the
    /// loader.
    struct Objects {
        unwinder: Cfi,
        ranges: Vec<(usize, usize)>,
        /// The loader's counts of objects ever loaded and unloaded when this table was made.
        adds: u64,
        subs: u64,
    }

    impl Objects {
        /// The code range of the object that holds `ip`.
        fn range_of(&self, ip: usize) -> Option<(usize, usize)> {
            let i = self.ranges.partition_point(|r| r.0 <= ip);
            i.checked_sub(1)
                .map(|i| self.ranges[i])
                .filter(|r| ip < r.1)
        }
    }

    /// The current table; GENERATION changes whenever it is replaced or dropped.
    static SHARED: Mutex<Option<Arc<Objects>>> = Mutex::new(None);
    static GENERATION: AtomicU64 = AtomicU64::new(1);

    struct Local {
        objects: Arc<Objects>,
        generation: u64,
        /// On the heap, as heapgate's own block: the thread-local block the loader allocates
        /// for this thread is not heapgate's, and the leak scan reads it (its size moves the
        /// process's heap layout).
        caches: Box<Caches>,
        /// One past the highest address of this thread's stack.
        stack_end: usize,
    }

    /// A thread's unwind caches.
    #[derive(Default)]
    struct Caches {
        rules: [Cache; RULE_CACHES],
        /// The code ranges of `objects` the last frames looked up were in, the latest first:
        /// most frames of a stack are in one of the few objects its last frames were in (an
        /// allocation's stack goes from heapgate's hooks through the C library or the
        /// interpreter's allocator to an extension and back to the interpreter), and the search
        /// over some hundred objects' ranges was most of an unwind's own time.
        recent: [(usize, usize); RECENT_OBJECTS],
    }

    impl Local {
        /// Is `ip` in code of `objects`?
        #[inline]
        fn covers(&mut self, ip: usize) -> bool {
            let recent = &mut self.caches.recent;
            if let Some(i) = recent.iter().position(|r| r.0 <= ip && ip < r.1) {
                move_to_front(recent, i, recent[i]);
                return true;
            }
            match self.objects.range_of(ip) {
                Some(range) => {
                    move_to_front(recent, RECENT_OBJECTS - 1, range);
                    true
                }
                None => false,
            }
        }

        /// Take the current table, and forget ranges of the old one.
        fn replace_objects(&mut self, (objects, generation): (Arc<Objects>, u64)) {
            (self.objects, self.generation) = (objects, generation);
            self.caches.recent = [(0, 0); RECENT_OBJECTS];
        }
    }

    /// Shift `recent[..i]` one place on and put `range` first: by hand, as the slice's
    /// `rotate_right` is a call into a general routine (1% of a `--native-leaks` run).
    #[inline(always)]
    fn move_to_front(
        recent: &mut [(usize, usize); RECENT_OBJECTS],
        i: usize,
        range: (usize, usize),
    ) {
        for j in (1..=i).rev() {
            recent[j] = recent[j - 1];
        }
        recent[0] = range;
    }

    /// How many objects' code ranges [`Caches::recent`] keeps.
    const RECENT_OBJECTS: usize = 4;

    thread_local! {
        static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
    }

    /// framehop's rule cache is direct-mapped: 509 slots, an address's slot is the address
    /// modulo 509. Two frames of one stack that share a slot evict each other on every walk,
    /// and each then costs a full CFI evaluation in gimli (with the 30-odd frames of a stack,
    /// about even odds for some pair; which pair depends on the build's code layout). Frames
    /// are spread over several caches by the next bits of the address, so such a pair
    /// shares a cache only one time in [`RULE_CACHES`].
    const RULE_CACHES: usize = 4;
    const FRAMEHOP_CACHE_SLOTS: usize = 509;

    #[inline]
    fn rule_cache_for(lookup: usize) -> usize {
        (lookup / FRAMEHOP_CACHE_SLOTS) % RULE_CACHES
    }

    /// Drop the table if objects were unloaded since it was made; the next unwind reads the
    /// loader again.
    pub(super) fn forget_unloaded_objects() {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if shared
            .as_ref()
            .is_some_and(|o| o.subs != loader_counters().1)
        {
            *shared = None;
            GENERATION.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The current table and its generation. With `made_at` (the loader's count of loaded
    /// objects the caller's table was made at), rebuilt if the loader has loaded more since.
    fn shared(made_at: Option<u64>) -> (Arc<Objects>, u64) {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        let rebuild = match (shared.as_ref(), made_at) {
            (None, _) => true,
            (Some(objects), Some(_)) => objects.adds != loader_counters().0,
            (Some(_), None) => false,
        };
        if rebuild {
            *shared = Some(Arc::new(read_objects()));
            GENERATION.fetch_add(1, Ordering::SeqCst);
        }
        let objects = Arc::clone(shared.as_ref().expect("the table was just made"));
        (objects, GENERATION.load(Ordering::SeqCst))
    }

    /// Walk the calling thread's stack into `visit`, from `entry`'s caller or from here; false
    /// if this thread cannot (its thread-local state is being torn down), for the caller to
    /// fall back.
    #[inline(never)]
    pub(super) fn unwind(
        entry: Option<HookEntry>,
        visit: &mut impl FnMut(usize, usize) -> bool,
    ) -> bool {
        let (ip, sp, bp): (u64, u64, u64);
        // SAFETY: reads this function's own instruction, stack and frame pointers.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]",
                "mov {sp}, rsp",
                "mov {bp}, rbp",
                ip = out(reg) ip,
                sp = out(reg) sp,
                bp = out(reg) bp,
                options(nomem, nostack, preserves_flags),
            );
        }
        LOCAL
            .try_with(|local| {
                let Ok(mut local) = local.try_borrow_mut() else {
                    return false;
                };
                let generation = GENERATION.load(Ordering::Relaxed);
                let local = match local.as_mut() {
                    Some(l) => {
                        if l.generation != generation {
                            l.replace_objects(shared(None));
                        }
                        l
                    }
                    None => {
                        let (objects, generation) = shared(None);
                        local.insert(Local {
                            objects,
                            generation,
                            caches: Box::default(),
                            stack_end: stack_end(sp as usize),
                        })
                    }
                };
                match entry {
                    Some(entry) => {
                        // SAFETY: the hook that was entered with this stack pointer is still
                        // running: the word there is its return address, on this thread's
                        // live stack.
                        let ret = unsafe { std::ptr::read(entry.sp as *const u64) };
                        let sp = entry.sp as u64 + 8;
                        if let Some(caller) = FrameAddress::from_return_address(ret) {
                            walk_frames(local, visit, caller, sp, entry.bp as u64, true);
                        }
                    }
                    None => {
                        // This function's own frame is not visited.
                        let here = FrameAddress::from_instruction_pointer(ip);
                        walk_frames(local, visit, here, sp, bp, false);
                    }
                }
                true
            })
            .unwrap_or(false)
    }

    /// `visit` gets each frame's address and its stack pointer (the bottom of its frame),
    /// from frame `address` (whose registers are `sp` and `bp`; itself visited only if
    /// `visit_first`) outwards; it returns false to end the walk.
    fn walk_frames(
        local: &mut Local,
        visit: &mut impl FnMut(usize, usize) -> bool,
        mut address: FrameAddress,
        sp: u64,
        bp: u64,
        visit_first: bool,
    ) {
        let (low, high) = (sp as usize, local.stack_end);
        // Only this thread's stack above the walk's start is ever read.
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let a = addr as usize;
            if a >= low && a.checked_add(8).is_some_and(|end| end <= high) && a.is_multiple_of(8) {
                // SAFETY: an aligned word inside the calling thread's live stack.
                Ok(unsafe { std::ptr::read_volatile(a as *const u64) })
            } else {
                Err(())
            }
        };
        let mut regs = UnwindRegsX86_64::new(address.address(), sp, bp);
        let mut first = !visit_first;
        loop {
            let lookup = address.address_for_lookup() as usize;
            if !local.covers(lookup) {
                // An object loaded since the table was made: ask the loader once more.
                local.replace_objects(shared(Some(local.objects.adds)));
                if !local.covers(lookup) {
                    return; // code outside every object: no tables to go on
                }
            }
            if !first && !visit(address.address() as usize, regs.sp() as usize) {
                return;
            }
            first = false;
            let next = local.objects.unwinder.unwind_frame(
                address,
                &mut regs,
                &mut local.caches.rules[rule_cache_for(lookup)],
                &mut read_stack,
            );
            match next
                .ok()
                .flatten()
                .and_then(FrameAddress::from_return_address)
            {
                Some(next) => address = next,
                None => return,
            }
        }
    }

    fn stack_end(probe: usize) -> usize {
        let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
        let (mut start, mut size): (*mut c_void, usize) = (std::ptr::null_mut(), 0);
        // SAFETY: the attr is initialised by pthread_getattr_np and destroyed after use.
        let ok = unsafe {
            libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) == 0 && {
                let got = libc::pthread_attr_getstack(attr.as_ptr(), &mut start, &mut size) == 0;
                libc::pthread_attr_destroy(attr.as_mut_ptr());
                got
            }
        };
        if ok && (start as usize) <= probe && probe < start as usize + size {
            start as usize + size
        } else {
            // Unknown bounds: read nothing above the stack pointer.
            probe
        }
    }

    /// The loader's counts of objects ever loaded and unloaded.
    fn loader_counters() -> (u64, u64) {
        objects::loader_counters().map_or((0, 0), |c| (c.adds, c.subs))
    }

    fn read_objects() -> Objects {
        let mut table = Objects {
            unwinder: Cfi::new(),
            ranges: Vec::new(),
            adds: 0,
            subs: 0,
        };
        objects::walk(|object| {
            if let Some(counters) = object.counters() {
                (table.adds, table.subs) = (counters.adds, counters.subs);
            }
            add_object(&mut table, object);
            ControlFlow::Continue(())
        });
        table.ranges.sort_unstable();
        table
    }

    /// Add an object's unwind tables, if it has an `.eh_frame_hdr` that says where its
    /// `.eh_frame` is.
    fn add_object(objects: &mut Objects, object: &LoadedObject<'_>) {
        let (Some(extent), Some(hdr)) = (object.extent(), object.eh_frame_hdr()) else {
            return;
        };
        let Some(eh_frame) = eh_frame_address(hdr.start, hdr.len()) else {
            return;
        };
        // .eh_frame's length is in no program header: up to the end of its segment (the
        // index in .eh_frame_hdr says where each entry is).
        let Some(segment) = object.segments().find(|s| s.contains(eh_frame)) else {
            return;
        };
        let bias = object.bias();
        let svma = |r: std::ops::Range<usize>| {
            r.start.wrapping_sub(bias) as u64..r.end.wrapping_sub(bias) as u64
        };
        let section = |r: std::ops::Range<usize>| Mapped {
            start: r.start,
            len: r.len(),
        };
        let eh_frame = eh_frame..segment.end;
        let sections = ExplicitModuleSectionInfo {
            base_svma: 0,
            eh_frame_hdr_svma: Some(svma(hdr.clone())),
            eh_frame_hdr: Some(section(hdr)),
            eh_frame_svma: Some(svma(eh_frame.clone())),
            eh_frame: Some(section(eh_frame)),
            ..Default::default()
        };
        objects.ranges.push((extent.start, extent.end));
        objects.unwinder.add_module(Module::new(
            String::new(),
            extent.start as u64..extent.end as u64,
            bias as u64,
            sections,
        ));
    }

    /// Where `.eh_frame` starts, from the `eh_frame_ptr` field of the `.eh_frame_hdr` of
    /// `len` bytes at `hdr`.
    fn eh_frame_address(hdr: usize, len: usize) -> Option<usize> {
        const ABSPTR: u8 = 0x00;
        const UDATA8: u8 = 0x04;
        const PCREL_SDATA4: u8 = 0x1b;
        if len < 12 {
            return None;
        }
        // SAFETY: the first 12 of `len` mapped bytes at `hdr`.
        let bytes = unsafe { std::slice::from_raw_parts(hdr as *const u8, 12) };
        let field = hdr + 4;
        match (bytes[0], bytes[1]) {
            (1, PCREL_SDATA4) => {
                let offset = i32::from_ne_bytes(bytes[4..8].try_into().ok()?);
                Some(field.wrapping_add(offset as isize as usize))
            }
            (1, ABSPTR | UDATA8) => {
                Some(u64::from_ne_bytes(bytes[4..12].try_into().ok()?) as usize)
            }
            _ => None,
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn table(ranges: &[(usize, usize)]) -> (Arc<Objects>, u64) {
            let objects = Objects {
                unwinder: Cfi::new(),
                ranges: ranges.to_vec(),
                adds: 0,
                subs: 0,
            };
            (Arc::new(objects), 1)
        }

        #[test]
        fn the_recent_ranges_answer_only_for_their_own_table() {
            let (objects, generation) =
                table(&[(0x1000, 0x2000), (0x5000, 0x6000), (0x9000, 0xa000)]);
            let mut local = Local {
                objects,
                generation,
                caches: Box::default(),
                stack_end: 0,
            };
            // Alternating between two objects, then a third, then outside every object.
            for ip in [0x1800, 0x5800, 0x1000, 0x5fff, 0x9000] {
                assert!(local.covers(ip), "{ip:#x}");
            }
            assert_eq!(
                local.caches.recent,
                [(0x9000, 0xa000), (0x5000, 0x6000), (0x1000, 0x2000), (0, 0)]
            );
            for ip in [0x0fff, 0x2000, 0x6000, 0xa000, 0x7000] {
                assert!(!local.covers(ip), "{ip:#x}");
            }
            // A new table without the first two objects (unloaded): the ranges kept are gone.
            local.replace_objects(table(&[(0x9000, 0xa000)]));
            assert!(!local.covers(0x5800));
            assert!(!local.covers(0x1800));
            assert!(local.covers(0x9800));
        }
    }
}
