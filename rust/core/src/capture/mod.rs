//! In-process allocation capture: hooks in every loaded object's GOT, a per-thread guard and
//! charge, and the [`Tracker`] that turns events into a test's numbers.
//!
//! Life cycle: [`install`] once (idempotent), then per test [`start`] and [`stop`]. Between
//! tests the hooks stay in place and cost one branch each.

mod elf_got;
mod guard;
mod hooks;
pub mod hybrid;
mod loader;
mod scan;
mod scrub;
mod threads;
mod tracker;
mod unwind;

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

pub use guard::Guard;
pub use scan::{LeakKind, PoolLayout};
pub use scrub::ScrubbingAllocator;
pub use tracker::{
    Allocator, CodeNames, Frame, FrameKey, LeakKinds, LeakTally, SiteReport, TestReport, Tracker,
};
pub use unwind::{CodeRange, MAX_NATIVE_FRAMES};

use guard::Charge;
use tracker::RemovedBlock;

/// Whose allocations a tracked test is charged for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadMode {
    /// Only the thread running the test's call (pytest-memray's `current_thread_only=True`).
    CurrentThread,
    /// The test's thread plus every thread started during the call, and their descendants.
    Spawned,
    /// Every thread in the process.
    All,
}

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

/// The deepest Python stack recorded per allocation.
pub const MAX_PYTHON_FRAMES: usize = 128;

/// One Python frame as the walker writes it (C layout: the C shim fills these directly).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PyFrameRef {
    /// Address of the code object.
    pub code: usize,
    /// Line being executed.
    pub line: u32,
    /// Non-zero on the outermost frame run by one C-level call of the interpreter's
    /// frame-evaluation function (see [`hybrid::merge`]).
    pub group_end: u32,
}

impl PyFrameRef {
    /// The frame as the tracker interns it.
    pub fn key(&self) -> FrameKey {
        FrameKey::Python {
            code: self.code,
            line: self.line,
        }
    }
}

/// A Python stack read by the Python layer at allocation time, innermost frame first. Its
/// buffer is left uninitialised: a walk writes only the frames it finds.
pub struct PythonStack {
    frames: [MaybeUninit<PyFrameRef>; MAX_PYTHON_FRAMES],
    len: usize,
    /// True when the walk reached the test's own function (its entry frame).
    pub reached_entry: bool,
    /// True when the walk ended at the test's entry or boundary frame (not at the thread's
    /// first frame or the depth limit): native frames below it are not the test's.
    pub complete: bool,
    /// True when the thread is running a trace, profile or `sys.monitoring` callback
    /// (coverage, a profiler, a debugger): what it allocates there is the observer's.
    pub in_tracer: bool,
    /// Non-zero when CPython may be making a frame object for such a callback right now,
    /// before the callback runs (3.11): the object's size. A Python allocation of exactly
    /// this size is that frame object.
    pub tracer_frame_size: usize,
}

impl PythonStack {
    /// An empty stack.
    #[inline]
    pub fn new() -> PythonStack {
        PythonStack {
            frames: [const { MaybeUninit::uninit() }; MAX_PYTHON_FRAMES],
            len: 0,
            reached_entry: false,
            complete: false,
            in_tracer: false,
            tracer_frame_size: 0,
        }
    }

    /// The buffer a walker writes frames into, and its capacity in frames.
    pub fn buffer(&mut self) -> (*mut PyFrameRef, usize) {
        (
            self.frames.as_mut_ptr() as *mut PyFrameRef,
            MAX_PYTHON_FRAMES,
        )
    }

    /// Declare how many frames the walker wrote.
    ///
    /// # Safety
    /// The first `len` entries of [`PythonStack::buffer`] must have been written.
    pub unsafe fn set_len(&mut self, len: usize) {
        self.len = len.min(MAX_PYTHON_FRAMES);
    }

    /// The frames written, innermost first.
    pub fn frames(&self) -> &[PyFrameRef] {
        // SAFETY: set_len's contract: the first `len` entries are initialised.
        unsafe { std::slice::from_raw_parts(self.frames.as_ptr() as *const PyFrameRef, self.len) }
    }
}

impl Default for PythonStack {
    fn default() -> Self {
        PythonStack::new()
    }
}

/// How the capture layer reads Python stacks; provided by the Python layer, which alone knows
/// the interpreter. Both functions must not allocate through the interpreter.
#[derive(Clone, Copy)]
pub struct PythonStackSource {
    /// Fill the calling thread's current Python stack.
    pub walk: fn(&mut PythonStack),
    /// The (function, filename) of a code object that is alive on the calling thread's stack.
    pub describe: fn(usize) -> CodeNames,
    /// The interpreter's frame-evaluation function, whose native frames run Python frames.
    pub eval_function: CodeRange,
}

static ACTIVE: AtomicBool = AtomicBool::new(false);
static GENERATION: AtomicU64 = AtomicU64::new(0);
static MODE: AtomicU8 = AtomicU8::new(0);
static REQUIRE_ENTRY: AtomicBool = AtomicBool::new(false);
static NATIVE: AtomicBool = AtomicBool::new(false);
static CHARGE_TRACERS: AtomicBool = AtomicBool::new(false);
static INSTALLED: OnceLock<Result<(), CaptureError>> = OnceLock::new();
static PYTHON: OnceLock<PythonStackSource> = OnceLock::new();

struct Session {
    generation: u64,
    tracker: Tracker,
}

static SESSION: Mutex<Option<Session>> = Mutex::new(None);

fn session() -> MutexGuard<'static, Option<Session>> {
    // A panic while the lock was held cannot leave the tables half-updated in a way that
    // matters more than losing the test's numbers; keep going.
    SESSION.lock().unwrap_or_else(|e| e.into_inner())
}

/// True while a test is tracked. The hooks' one branch.
#[inline(always)]
pub fn is_active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Tell the capture layer how to read Python stacks (once per process).
pub fn set_python_stack_source(source: PythonStackSource) {
    let _ = PYTHON.set(source);
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
fn sync_objects() {
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
fn sync_objects_if_changed() {
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
/// Python layer reports through [`PythonStack::reached_entry`]). With `native`, every
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
/// `sys.monitoring` callbacks allocate (see [`PythonStack::in_tracer`]). Off by default:
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
    let s = session();
    Ok(s.as_ref().map(|s| s.tracker.report()).unwrap_or_default())
}

/// Classify the tracked test's live blocks by reachability (definitely lost, indirectly
/// lost, still reachable); the result appears in the next [`stop`]'s report.
///
/// Runs while the test is still tracked and holds the tracker's lock throughout, so no live
/// block can be freed or unmapped while it is read (a thread that frees one waits).
/// Links between CPython's GC heads are not references (see [`scan::gc_head`]). `stale`:
/// ranges that hold no references (the interpreter's unused free-list slots). `stack_from`: an
/// address in the caller's frame; the calling thread's stack is scanned from there up, plus
/// `registers` (the caller's saved registers). `pools`: pymalloc's geometry, if known.
pub fn scan_leaks(
    stale: &[(usize, usize)],
    stack_from: usize,
    registers: &[usize],
    pools: Option<scan::PoolLayout>,
) -> Result<LeakKinds, CaptureError> {
    let _guard = Guard::enter();
    let mut s = session();
    if !is_active() {
        return Err(CaptureError::NotActive);
    }
    let Some(session) = s.as_mut() else {
        return Err(CaptureError::NotActive);
    };
    let candidates = session.tracker.leak_candidates(&usable_size);
    if candidates.is_empty() {
        // Nothing outlived the call: nothing to classify, no memory to read.
        session.tracker.set_leak_kinds(&[], &[]);
        return Ok(LeakKinds::default());
    }
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map(|text| scan::parse_maps(&text))
        .unwrap_or_default();
    let stack_pointers = scan::blocked_thread_stack_pointers();
    // Copies of memory made while reading must not be read back as roots: they live in a
    // private mapping left out of the regions.
    let mut scratch = scrub::Scratch::new(64 * 1024 / std::mem::size_of::<usize>())
        .ok_or(CaptureError::ScanMemory)?;
    let (scratch_start, scratch_end) = scratch.range();
    let regions: Vec<scan::Region> = {
        let buffer = scratch.words();
        let mut is_thread_stack = |start: usize, end: usize| {
            let from = end.saturating_sub(std::mem::size_of_val(buffer)).max(start);
            let words = &mut buffer[..(end - from) / std::mem::size_of::<usize>()];
            let n = read_words(from, words);
            n == words.len() && scan::has_thread_control_block(words, end)
        };
        scan::root_regions(&maps, stack_from, &stack_pointers, &mut is_thread_stack)
    }
    .into_iter()
    .filter(|r| r.end.get() <= scratch_start || r.start.get() >= scratch_end)
    .collect();
    drop(maps);
    // Free chunks of the main heap are no roots: walk its chunk headers to find them (a
    // large free chunk is jumped over, never read).
    let mut dead: Vec<(usize, usize)> = regions
        .iter()
        .find(|r| r.heap)
        .and_then(|heap| {
            let (start, end) = (heap.start.get(), heap.end.get());
            let mut window = WindowReader::new(start, end)?;
            scan::glibc_free_chunks(&mut |addr| window.word_at(addr), start, end)
        })
        .unwrap_or_default();
    dead.extend(stale.iter().filter(|(s, e)| s < e));
    dead.sort_unstable();
    // Merged, so that ends are sorted too (the lookups search by end).
    dead.dedup_by(|next, prev| {
        let overlaps = next.0 <= prev.1;
        if overlaps {
            prev.1 = prev.1.max(next.1);
        }
        overlaps
    });
    let mut pagemap = std::fs::File::open("/proc/self/pagemap").ok();
    let mut mask = Vec::with_capacity(scratch.words().len());
    let mut roots = |visit: &mut dyn FnMut(&[usize])| {
        if std::env::var_os("HEAPGATE_EXPLAIN_LEAKS").is_some() {
            let mask = vec![true; registers.len()];
            explain_references(
                registers,
                &mask,
                0,
                scan::Region::new(0, 0, false),
                &candidates,
            );
        }
        visit(registers);
        for region in &regions {
            // Pools are read whole (their headers say which blocks are in use).
            let grid = pools
                .filter(|_| region.anonymous)
                .map_or(4096, |p| p.pool_size);
            for (from, to) in resident_ranges(pagemap.as_mut(), *region, grid) {
                visit_region(
                    *region,
                    (from, to),
                    &candidates,
                    pools.as_ref(),
                    &dead,
                    (scratch.words(), &mut mask),
                    visit,
                );
            }
        }
    };
    let explain = std::env::var_os("HEAPGATE_EXPLAIN_LEAKS").is_some();
    let read_block = |start: usize, len: usize| -> Vec<usize> {
        // SAFETY: a live tracked block; it cannot be freed while we hold the tracker's lock
        // (the free and munmap hooks take the lock before releasing memory).
        let words: Vec<usize> = unsafe { std::slice::from_raw_parts(start as *const u8, len) }
            .chunks_exact(std::mem::size_of::<usize>())
            .map(|c| usize::from_ne_bytes(c.try_into().expect("word-sized chunk")))
            .collect();
        if explain {
            let mask = vec![true; words.len()];
            explain_references(
                &words,
                &mask,
                start,
                scan::Region::new(start, start + len, false),
                &candidates,
            );
        }
        words
    };
    let gc_heads: Vec<usize> = candidates.iter().filter_map(candidate_gc_head).collect();
    let kinds = scan::classify(&candidates, &gc_heads, &mut roots, &read_block);
    session.tracker.set_leak_kinds(&candidates, &kinds);
    Ok(session.tracker.leak_totals().unwrap_or_default())
}

/// The GC head of a candidate that CPython's cyclic GC tracks (see [`scan::gc_head`]). The
/// caller holds the tracker's lock, so the block stays allocated.
fn candidate_gc_head(c: &scan::Candidate) -> Option<usize> {
    if c.size < 4 * std::mem::size_of::<usize>() as u64 {
        return None;
    }
    let start = c.start_address();
    // SAFETY: a live tracked block of at least four words (as in `scan_leaks`'s `read_block`).
    let first = unsafe { std::slice::from_raw_parts(start as *const usize, 4) };
    scan::gc_head(start, first, &mut |addr| {
        let mut w = [0usize];
        (read_words(addr, &mut w) == 1).then_some(w[0])
    })
}

/// Does the tracked test hold a live block that CPython's cyclic GC tracks? Only then can a
/// collection free any of its blocks (garbage made only of older objects holds the test's
/// blocks as reachable, which the scan counts as such), so a leak scan needs a full
/// collection first only then.
pub fn has_gc_candidates() -> Result<bool, CaptureError> {
    let _guard = Guard::enter();
    let s = session();
    if !is_active() {
        return Err(CaptureError::NotActive);
    }
    let Some(session) = s.as_ref() else {
        return Err(CaptureError::NotActive);
    };
    let candidates = session.tracker.leak_candidates(&usable_size);
    Ok(candidates.iter().any(|c| candidate_gc_head(c).is_some()))
}

/// How much memory the allocator gave a live block. Blocks from the C library's allocators
/// are asked; CPython's domains round to pymalloc's 16-byte classes (their pointers may come
/// from debug hooks or another allocator, which the C library cannot be asked about).
fn usable_size(address: usize, size: u64, allocator: Allocator) -> usize {
    if allocator == Allocator::Mmap {
        size as usize
    } else if allocator.is_python() {
        (size as usize + 15) & !15
    } else {
        // SAFETY: a live block that the C library's allocator returned through our hook (the
        // tracker's lock keeps it from being freed meanwhile).
        unsafe { libc::malloc_usable_size(address as *mut libc::c_void) }
    }
}

/// Hand the root words of `range` (within `region`) to `visit`, chunk by chunk: candidates'
/// words left out, `free` ranges (sorted) skipped unread, and in pymalloc pools only the
/// words of blocks in use. `scratch`: the copy buffer and a mask buffer, reused.
fn visit_region(
    region: scan::Region,
    range: (usize, usize),
    candidates: &[scan::Candidate],
    pools: Option<&scan::PoolLayout>,
    free: &[(usize, usize)],
    scratch: (&mut [usize], &mut Vec<bool>),
    visit: &mut dyn FnMut(&[usize]),
) {
    let (buffer, mask) = scratch;
    let word = std::mem::size_of::<usize>();
    // HEAPGATE_EXPLAIN_LEAKS=1: say where each root reference to a candidate was found.
    let explain = std::env::var_os("HEAPGATE_EXPLAIN_LEAKS").is_some();
    let chunk = match pools {
        Some(layout) if region.anonymous => layout.pool_size,
        _ => std::mem::size_of_val(buffer),
    }
    .min(std::mem::size_of_val(buffer));
    let (start, end) = (range.0 & !(word - 1), range.1);
    let mut at = start;
    let mut next_free = free.partition_point(|(_, e)| *e <= at);
    while at < end {
        // Free memory holds only stale bytes: jump over it without reading it.
        while next_free < free.len() && free[next_free].1 <= at {
            next_free += 1;
        }
        if let Some(&(free_start, free_end)) = free.get(next_free) {
            if free_start <= at {
                at = free_end.next_multiple_of(word);
                continue;
            }
        }
        // Chunks follow the pool grid, so a pool is always read whole.
        let chunk_end = ((at / chunk) + 1) * chunk;
        let len = (chunk_end.min(end) - at) / word;
        if len == 0 {
            break;
        }
        let words = &mut buffer[..len];
        if read_words(at, words) == len {
            mask.clear();
            match pools
                .filter(|_| region.anonymous)
                .and_then(|layout| scan::pool_mask(words, at, layout))
            {
                Some(pool) => mask.extend_from_slice(&pool),
                None => mask.resize(len, true),
            }
            scan::mask_out_candidates(mask, at, candidates);
            scan::mask_out_ranges(mask, at, free);
            if explain {
                explain_references(words, mask, at, region, candidates);
            }
            // Words that are not roots become 0 (never a reference) in our scratch copy.
            for (w, keep) in words.iter_mut().zip(mask.iter()) {
                if !keep {
                    *w = 0;
                }
            }
            visit(words);
        }
        at = chunk_end;
    }
}

/// Regions at least this big are read only where pages are resident (or swapped out):
/// a page never touched holds no pointer, and reading it would map it in.
const RESIDENT_CHECK_BYTES: usize = 1 << 20;

/// The sub-ranges of `region` whose pages are present or swapped out, from
/// `/proc/self/pagemap` (the whole region when it is small or pagemap cannot be read),
/// widened to the `grid` (a power of two).
fn resident_ranges(
    pagemap: Option<&mut std::fs::File>,
    region: scan::Region,
    grid: usize,
) -> Vec<(usize, usize)> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    const PAGE: usize = 4096;
    let (start, end) = (region.start.get(), region.end.get());
    let whole = vec![(start, end)];
    let Some(pagemap) = pagemap else {
        return whole;
    };
    if end - start < RESIDENT_CHECK_BYTES || start % PAGE != 0 {
        return whole;
    }
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    let mut entries = [0u64; 4096];
    let mut page = start / PAGE;
    let last = end.div_ceil(PAGE);
    while page < last {
        let n = (last - page).min(entries.len());
        // SAFETY: viewing `n` u64 entries as bytes to read into them.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(entries.as_mut_ptr() as *mut u8, n * 8) };
        if pagemap.read_exact_at(bytes, (page * 8) as u64).is_err() {
            return whole;
        }
        for (i, e) in entries[..n].iter().enumerate() {
            if e & (PRESENT | SWAPPED) == 0 {
                continue;
            }
            let at = (((page + i) * PAGE) & !(grid - 1)).max(start);
            let to = ((page + i + 1) * PAGE).next_multiple_of(grid).min(end);
            match ranges.last_mut() {
                Some(last) if last.1 >= at => last.1 = last.1.max(to),
                _ => ranges.push((at, to)),
            }
        }
        page += n;
    }
    ranges
}

/// Words of `[start, end)` read through a window of scratch memory (outside the roots): a
/// walk that moves forward reads 64 KiB at a time, a jump reads one page.
struct WindowReader {
    buffer: scrub::Scratch,
    start: usize,
    end: usize,
    window: (usize, usize),
}

impl WindowReader {
    fn new(start: usize, end: usize) -> Option<WindowReader> {
        Some(WindowReader {
            buffer: scrub::Scratch::new(64 * 1024 / std::mem::size_of::<usize>())?,
            start,
            end,
            window: (0, 0),
        })
    }

    fn word_at(&mut self, addr: usize) -> Option<usize> {
        let word = std::mem::size_of::<usize>();
        if addr < self.start || addr + word > self.end {
            return None;
        }
        if !(self.window.0 <= addr && addr + word <= self.window.1) {
            const PAGE: usize = 4096;
            let sequential = addr >= self.window.1 && addr < self.window.1 + PAGE;
            let from = (addr & !(PAGE - 1)).max(self.start);
            let size = if sequential {
                std::mem::size_of_val(self.buffer.words())
            } else {
                PAGE
            };
            let to = (from + size).min(self.end);
            let words = &mut self.buffer.words()[..(to - from) / word];
            let n = read_words(from, words);
            self.window = (from, from + n * word);
            if addr + word > self.window.1 {
                return None;
            }
        }
        Some(self.buffer.words()[(addr - self.window.0) / word])
    }
}

fn explain_references(
    words: &[usize],
    mask: &[bool],
    at: usize,
    region: scan::Region,
    candidates: &[scan::Candidate],
) {
    let word = std::mem::size_of::<usize>();
    for (i, w) in words.iter().enumerate().filter(|(i, _)| mask[*i]) {
        if let Some(c) = candidates
            .iter()
            .find(|c| c.start_address() <= *w && *w < c.start_address() + c.size as usize)
        {
            let around: Vec<String> = words[i.saturating_sub(3)..(i + 4).min(words.len())]
                .iter()
                .map(|w| format!("{w:#x}"))
                .collect();
            explain(format!(
                "block {:#x} ({} bytes) referenced by {:#x} from {:#x} [{}] in {:#x}-{:#x}{}",
                c.start_address(),
                c.size,
                w,
                at + i * word,
                around.join(" "),
                region.start.get(),
                region.end.get(),
                if region.anonymous { " (anonymous)" } else { "" }
            ));
        }
    }
}

/// What `HEAPGATE_EXPLAIN_LEAKS=1` found in the last leak scan, for the test's report (the
/// scan runs inside the test process, where writing to its terminal would cut into pytest's
/// progress line).
static EXPLANATIONS: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// Lines kept per scan; the rest are counted.
const MAX_EXPLANATIONS: usize = 1000;
static EXPLANATIONS_DROPPED: AtomicU64 = AtomicU64::new(0);

fn explain(line: String) {
    let mut lines = EXPLANATIONS.lock().unwrap_or_else(|e| e.into_inner());
    if lines.len() < MAX_EXPLANATIONS {
        lines.push(line);
    } else {
        EXPLANATIONS_DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// The lines `HEAPGATE_EXPLAIN_LEAKS=1` made [`scan_leaks`] collect since the last call: for
/// each reference to a candidate block found in a root or a live block, where it was found.
/// Empty when the variable is not set.
pub fn take_leak_explanations() -> Vec<String> {
    let _guard = Guard::enter();
    let mut lines = std::mem::take(&mut *EXPLANATIONS.lock().unwrap_or_else(|e| e.into_inner()));
    let dropped = EXPLANATIONS_DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        lines.push(format!("... {dropped} more references not shown"));
    }
    lines
}

/// Read words at `at` through `process_vm_readv` on ourselves: memory another thread unmaps
/// meanwhile reads as a failure, never as a crash. Returns the number of words read.
fn read_words(at: usize, buffer: &mut [usize]) -> usize {
    let bytes = std::mem::size_of_val(buffer);
    let local = libc::iovec {
        iov_base: buffer.as_mut_ptr() as *mut libc::c_void,
        iov_len: bytes,
    };
    let remote = libc::iovec {
        iov_base: at as *mut libc::c_void,
        iov_len: bytes,
    };
    // SAFETY: copies at most `bytes` bytes into our own buffer of that size.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 {
        0
    } else {
        n as usize / std::mem::size_of::<usize>()
    }
}

/// The tracked test's numbers so far, without stopping: what is live now per site (for
/// repeat-run leak growth, which compares the live memory after each run of the call).
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

fn mode() -> ThreadMode {
    match MODE.load(Ordering::Relaxed) {
        0 => ThreadMode::CurrentThread,
        1 => ThreadMode::Spawned,
        _ => ThreadMode::All,
    }
}

/// The charge a thread started now by the calling thread inherits, if any.
fn charge_for_new_thread() -> Option<Charge> {
    let charge = Charge::current();
    let generation = GENERATION.load(Ordering::Relaxed);
    (charge.generation == generation && mode() == ThreadMode::Spawned).then_some(Charge {
        generation,
        test_thread: false,
    })
}

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

    fn walk_python(&self, stack: &mut PythonStack) {
        if let Some(python) = PYTHON.get() {
            (python.walk)(stack);
        }
    }

    /// The allocation's hybrid stack into `keys` when native stacks are recorded; false
    /// when the stack is the Python frames alone.
    fn hybrid_keys(&self, python: &PythonStack, keys: &mut HybridKeys) -> bool {
        if !NATIVE.load(Ordering::Relaxed) {
            return false;
        }
        let eval = PYTHON.get().map(|p| p.eval_function).unwrap_or_default();
        let py = python.frames();
        // The test's frames run in this many interpreter calls: the unwind can stop there.
        let budget = python
            .complete
            .then(|| py.iter().filter(|f| f.group_end != 0).count());
        let mut native = unwind::NativeStack {
            frames: [0; MAX_NATIVE_FRAMES],
            len: 0,
        };
        unwind::unwind(&mut native, eval, budget);
        hybrid::merge(
            &native.frames[..native.len],
            py,
            |ip| eval.contains(ip),
            python.complete,
            keys,
        );
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

    fn node_for(
        &self,
        tracker: &mut Tracker,
        python: &PythonStack,
        keys: Option<&HybridKeys>,
    ) -> u32 {
        let describe = PYTHON.get().map(|p| p.describe);
        let mut describe = |code| match describe {
            Some(d) => d(code),
            None => (String::from("??"), String::from("??")),
        };
        match keys {
            None => {
                tracker.intern_stack(python.frames().iter().map(PyFrameRef::key), &mut describe)
            }
            Some(keys) => tracker.intern_stack(keys.iter().copied(), &mut describe),
        }
    }

    /// Record a heap block of `size` bytes at `addr`.
    pub fn record_alloc(&self, addr: usize, size: usize, allocator: Allocator) {
        sync_objects_if_changed();
        let Some((generation, entry_rule)) = self.charged() else {
            return;
        };
        let mut python = PythonStack::new();
        self.walk_python(&mut python);
        if (entry_rule && !python.reached_entry) || self.observers(&python, size, allocator) {
            return;
        }
        let mut keys = HybridKeys::new();
        let hybrid = self.hybrid_keys(&python, &mut keys);
        self.with_tracker(generation, |t| {
            let node = self.node_for(t, &python, hybrid.then_some(&keys));
            t.on_alloc(addr, size as u64, allocator, node);
        });
    }

    /// Record `len` bytes mapped at `addr`.
    pub(crate) fn record_mmap(&self, addr: usize, len: usize) {
        sync_objects_if_changed();
        let mut python = PythonStack::new();
        let counted = self.charged().and_then(|(generation, entry_rule)| {
            self.walk_python(&mut python);
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
        let hybrid = self.hybrid_keys(&python, &mut keys);
        self.with_tracker(generation, |t| {
            let node = self.node_for(t, &python, hybrid.then_some(&keys));
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
            self.walk_python(&mut python);
            (!entry_rule || python.reached_entry).then_some(generation)
        });
        let mut hybrid = HybridKeys::new();
        let keys = counted.map(|_| self.hybrid_keys(&python, &mut hybrid));
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
                        let node = self.node_for(t, &python, is_hybrid.then_some(&hybrid));
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

thread_local! {
    /// The locks held by the forking thread between the prepare and parent/child handlers.
    static FORK_LOCKS: RefCell<Option<ForkLocks>> = const { RefCell::new(None) };
}

struct ForkLocks {
    _patch: MutexGuard<'static, Option<elf_got::LoadedObjects>>,
    _session: MutexGuard<'static, Option<Session>>,
}

extern "C" fn fork_prepare() {
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

extern "C" fn fork_parent() {
    FORK_LOCKS.with(|l| l.borrow_mut().take());
    Guard::set_raw(false);
}

extern "C" fn fork_child() {
    // The child starts untracked; its copy of our locks is released by the same thread.
    ACTIVE.store(false, Ordering::SeqCst);
    Charge::NONE.set();
    FORK_LOCKS.with(|l| l.borrow_mut().take());
    Guard::set_raw(false);
}
