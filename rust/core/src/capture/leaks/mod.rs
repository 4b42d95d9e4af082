//! Conservative reachability of a test's live blocks, as valgrind memcheck and LeakSanitizer
//! classify leaks: **definitely lost** (no pointer to it from any root), **indirectly lost**
//! (reachable only from lost blocks), **still reachable**.
//!
//! Roots are every readable and writable mapping of the process — writable segments of loaded
//! objects, the live part of thread stacks, and all other heap memory, tracked or not — except
//! the candidate blocks themselves, which are scanned only once reached. Dead stack memory
//! (below a thread's stack pointer, and stacks glibc keeps cached for threads that ended) is
//! not a root: stale copies of a pointer there would hide a leak.
//!
//! A block that roots point into only far from its start (past
//! [`START_WINDOW`](reach::START_WINDOW), or at an unaligned address) is **possibly lost**, as
//! valgrind says: such a pointer may be a cursor into a live buffer, or stale bytes in the
//! unused tail of another block.
//!
//! CPython's cyclic GC links every tracked container into a list through the `PyGC_Head`
//! before the object; a word that points exactly at a candidate's GC head is that link, not
//! a reference, and is ignored.

mod baseline;
mod glibc;
mod late;
mod maps;
mod order;
mod origin;
mod pymalloc;
mod reach;

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub(crate) use baseline::remember as remember_stack;
pub(crate) use origin::NativeOrigins;
pub use pymalloc::{ObjectLayout, PoolLayout};

use super::arch::has_thread_control_block;
use super::session::{is_active, session};
use super::tagged::{tagged, untagged};
use super::{scrub, Allocator, CaptureError, Guard, LeakKind, LeakKinds, Tracker};
use crate::report::InterpreterModules;
use glibc::{arena_heap_chunks, glibc_free_chunks, ARENA_HEAP_BYTES};
pub use glibc::{chunk_for_request, chunk_holds_request};
use maps::{blocked_thread_stack_pointers, read_maps, root_regions, Heap, Region};
use pymalloc::{chunk_object_slack, pool_mask, SizedType, CHUNK_FIRST_WORDS};
use reach::{
    classify, gc_head, mask_out_candidates, mask_out_ranges, zero_in_ranges, Candidate, Targets,
};

/// Where recent scans found their last reference, kept from test to test (see `order::Hints`).
static LATE_HINTS: Mutex<order::Hints> = Mutex::new(order::Hints::new());

/// The most a skipped interpreter frame (and the calls between it and the scan) may span:
/// beyond that the unwind is not trusted and the whole stack above the scan is read.
const EVAL_FRAME_SPAN: usize = 16 * 1024;

/// Where the calling thread's stack roots start. Not at the scan's own entry, but above the
/// interpreter's C frame that calls it (it runs heapgate's hook code, whose Python values all
/// live in its frame object, which is scanned; the registers it saved are its callers', the
/// interpreter resuming the hook wrapper for pluggy): that frame was laid over stack the test's call
/// had just used, and its never-written slots keep the test's stale addresses (seen hiding
/// free-list leaks in most of the processes that missed one).
fn live_stack_start(entry: usize) -> usize {
    let eval = super::python::PYTHON
        .get()
        .map(|p| p.eval_function)
        .unwrap_or_default();
    match super::unwind::above_innermost_eval_frame(eval) {
        Some(top) if top > entry && top - entry <= EVAL_FRAME_SPAN => top,
        _ => entry,
    }
}

/// Classify the tracked test's live blocks by reachability (definitely lost, indirectly
/// lost, still reachable); the result appears in the next [`stop`](super::stop)'s report.
///
/// Runs while the test is still tracked and holds the tracker's lock throughout, so no live
/// block can be freed or unmapped while it is read (a thread that frees one waits).
/// Links between CPython's GC heads are not references (see [`gc_head`]). `stale` gives ranges
/// that hold no references (the interpreter's unused free-list slots), tagged or not (see
/// `tagged`: a range inside a candidate, held untagged, would read as a pointer into it);
/// `heap_stale` gives more such ranges that lie only in memory allocated at run time, never in
/// a loaded object's static data (lists' spare capacity), and is called only if the scan reads
/// such memory: finding them may cost what the process holds (see `late`). Both are called
/// only when there is something to scan (most tests leave nothing native). The scan reads
/// loaded objects' data and the live stacks first and stops as soon as every candidate is
/// reachable (see `order`). `stack_from`: an address in the caller's frame; the calling
/// thread's stack is scanned from there up (from above the interpreter frame that calls the
/// scan, when it is found: see [`live_stack_start`]), plus `registers` (the caller's saved
/// registers).
/// `pools`: pymalloc's geometry, if known. `text_in_heap`: addresses inside chunks of the C
/// library's heap that hold only characters (such a chunk is no root: see `heap_dead_ranges`).
///
/// `--native-leaks` reports only blocks whose origin is native code (see [`origin`]): when
/// no live block has one, nothing is read and no verdict is recorded (the report's leak kinds
/// stay unset). `interpreter`: which loaded objects are the interpreter's own.
/// `read_first`: the interpreter's runtime state, read before the rest (see `order::inside`).
#[allow(clippy::too_many_arguments)]
pub fn scan_leaks(
    stale: &mut dyn FnMut() -> Vec<(usize, usize)>,
    heap_stale: &mut dyn FnMut() -> Vec<(usize, usize)>,
    stack_from: usize,
    registers: &[usize],
    pools: Option<PoolLayout>,
    text_in_heap: &[usize],
    interpreter: &InterpreterModules,
    read_first: Option<(usize, usize)>,
) -> Result<LeakKinds, CaptureError> {
    let _guard = Guard::enter();
    let mut s = session();
    if !is_active() {
        return Err(CaptureError::NotActive);
    }
    let Some(session) = s.as_mut() else {
        return Err(CaptureError::NotActive);
    };
    let candidates = leak_candidates(&session.tracker);
    if candidates.is_empty() {
        // Nothing outlived the call: nothing to classify, no memory to read.
        session.tracker.set_leak_kinds([]);
        return Ok(LeakKinds::default());
    }
    let native = native_candidates(&session.tracker, &candidates, interpreter);
    if !native.contains(&true) {
        return Ok(LeakKinds::default());
    }
    // Merged once, here.
    let stale = &merged_tagged(stale())[..];
    let maps = read_maps();
    let stack_pointers = blocked_thread_stack_pointers();
    let stack_from = live_stack_start(stack_from);
    // Copies of memory made while reading must not be read back as roots: they live in a
    // private mapping left out of the regions.
    let mut scratch = scrub::Scratch::new(64 * 1024 / std::mem::size_of::<usize>())
        .ok_or(CaptureError::ScanMemory)?;
    let (scratch_start, scratch_end) = scratch.range();
    let outside_scratch = |r: &Region| r.end.get() <= scratch_start || r.start.get() >= scratch_end;
    // Read first (see `order`): loaded objects' data and live stacks. Which anonymous mapping
    // is a thread stack does not matter for them (finding out reads each one's top).
    let early: Vec<Region> = root_regions(&maps, stack_from, &stack_pointers, &mut |_, _| false)
        .into_iter()
        .filter(|r| order::is_early(r) && outside_scratch(r))
        .collect();
    // The calling thread's stack words that have not changed since the test started.
    let own_stack = early
        .iter()
        .find(|r| r.start.get() <= stack_from && stack_from < r.end.get());
    let mut early_dead = stale.to_vec();
    if let Some(r) = own_stack {
        early_dead.extend(baseline::unchanged_ranges((r.start.get(), r.end.get())));
    }
    let baseline_copy = baseline::copy_range();
    early_dead.extend(baseline_copy);
    let early_dead = merged_tagged(early_dead);
    let mut pagemap = std::fs::File::open("/proc/self/pagemap").ok();
    let mut mask = Vec::with_capacity(scratch.words().len());
    // Type objects seen where an object's type would be, sized once each (see `pool_mask`).
    // Asked for every block of every pool read: the blocks of a pool mostly share one type, so
    // the last answer is kept at hand.
    let mut sized_types: rustc_hash::FxHashMap<usize, Option<SizedType>> =
        rustc_hash::FxHashMap::default();
    // Most words taken for a type are no address at all (the digits of an int): they are
    // answered from the mappings, without a read or a place in the table.
    let mut readable: Vec<(usize, usize)> = maps
        .iter()
        .filter(|m| m.perms.starts_with('r'))
        .map(|m| (m.start.get(), m.end.get()))
        .collect();
    readable.sort_unstable();
    let mut last_type: Option<(usize, Option<SizedType>)> = None;
    let mut size_type = |ty: usize| -> Option<SizedType> {
        let objects = pools.and_then(|p| p.objects)?;
        if let Some((_, sized)) = last_type.filter(|(seen, _)| *seen == ty) {
            return sized;
        }
        let i = readable.partition_point(|(start, _)| *start <= ty);
        if i == 0 || ty >= readable[i - 1].1 {
            return None;
        }
        let sized = *sized_types
            .entry(ty)
            .or_insert_with(|| read_sized_type(&objects, ty));
        last_type = Some((ty, sized));
        sized
    };
    // Asked both while a region is read and when the heap's dead ranges are found, which
    // happens between reads.
    let types = std::cell::RefCell::new(&mut size_type);
    let objects = pools.and_then(|p| p.objects);
    let candidates: Vec<Candidate> = match objects {
        Some(o) => candidates
            .into_iter()
            .map(|c| {
                let object = object_extent(&c, &o, &mut |ty| (*types.borrow_mut())(ty));
                c.with_object(object)
            })
            .collect(),
        None => candidates,
    };
    let mut gc_heads: Vec<usize> = candidates
        .iter()
        .filter_map(|c| {
            candidate_gc_head(c).or_else(|| objects.and_then(|o| untracked_gc_head(c, &o)))
        })
        .collect();
    gc_heads.sort_unstable();
    // What holds no references is dead in the test's own blocks too (a frame object the test
    // made, a list's spare capacity): the ranges found so far, to read candidates with.
    // `heap_stale`'s are added when the scan first needs them, before it reads the memory
    // they lie in, so before any reference found there leads to a candidate.
    let dead_in_candidates = std::cell::RefCell::new(stale.to_vec());
    // HEAPGATE_EXPLAIN_LEAKS lists every reference: no memory is passed over then.
    let targets = Targets::new(&candidates);
    let explain = std::env::var_os("HEAPGATE_EXPLAIN_LEAKS").is_some();
    let may_refer = |words: &[usize]| explain || targets.may_refer(words);
    let mut roots = |visit: &mut dyn FnMut(&[usize]) -> ControlFlow<()>| {
        if explain {
            let mask = vec![true; registers.len()];
            let registers_region = Region::new(0, 0, false);
            let found = (registers, &mask[..], 0);
            explain_references(found, registers_region, &candidates, &gc_heads, None);
        }
        visit(registers)?;
        let mut read_range = |region: &Region,
                              range: (usize, usize),
                              dead: &[(usize, usize)],
                              scratch: &mut [usize]| {
            visit_region(
                *region,
                range,
                &candidates,
                pools.as_ref(),
                &gc_heads,
                dead,
                (scratch, &mut mask),
                &may_refer,
                &mut |ty| (*types.borrow_mut())(ty),
                visit,
            )
        };
        let mut resident = |region: &Region| {
            // Pools are read whole (their headers say which blocks are in use).
            let grid = pools
                .filter(|_| region.anonymous)
                .map_or(4096, |p| p.pool_size);
            resident_ranges(pagemap.as_mut(), *region, grid)
        };
        // The interpreter's runtime state first (see `order::inside`), then the rest.
        let first = read_first.unwrap_or((0, 0));
        for region in early
            .iter()
            .filter(|r| order::inside((r.start.get(), r.end.get()), first).is_some())
        {
            for range in resident(region) {
                if let Some(part) = order::inside(range, first) {
                    read_range(region, part, &early_dead, scratch.words()).map_break(drop)?;
                }
            }
        }
        for region in &early {
            for range in resident(region) {
                for part in order::outside(range, first) {
                    read_range(region, part, &early_dead, scratch.words()).map_break(drop)?;
                }
            }
        }
        // Not every candidate is reachable from there: the rest of memory, and what holds no
        // references in it (found only now: this costs what the process holds).
        let mut late: Vec<Region> = {
            let buffer = scratch.words();
            let mut is_thread_stack = |start: usize, end: usize| {
                let from = end.saturating_sub(std::mem::size_of_val(buffer)).max(start);
                let words = &mut buffer[..(end - from) / std::mem::size_of::<usize>()];
                let n = read_words(from, words);
                n == words.len() && has_thread_control_block(words, end)
            };
            root_regions(&maps, stack_from, &stack_pointers, &mut is_thread_stack)
        }
        .into_iter()
        .filter(|r| !order::is_early(r) && outside_scratch(r))
        .collect();
        order::sort_late(&mut late, &early);
        // What holds no references there, found only once a region it can lie in is reached
        // (see `late`); loaded objects' `.bss` first, which holds none of them.
        let mut always = scrub::big_blocks();
        always.extend_from_slice(stale);
        always.extend(baseline_copy);
        let statics = late::static_data();
        let mut text = text_in_heap.to_vec();
        text.sort_unstable();
        let mut find_heap_free = |heap: &Region| {
            let types = &mut |ty| (*types.borrow_mut())(ty);
            heap_dead_ranges(heap, pools.as_ref(), &text, types)
        };
        let mut heap_stale_for_candidates_too = || {
            // Sorted once here (they come in the collector's order): both merges below then
            // take them as one sorted run.
            let mut found = heap_stale();
            found.sort_unstable();
            if let Ok(mut dead) = dead_in_candidates.try_borrow_mut() {
                let mut all = std::mem::take(&mut *dead);
                all.extend_from_slice(&found);
                *dead = merged_tagged(all);
            }
            found
        };
        let mut late_dead = late::LateDead::new(
            always,
            &mut find_heap_free,
            &mut heap_stale_for_candidates_too,
            &statics,
        );
        let buffer_bytes = std::mem::size_of_val(scratch.words());
        // The rest of each region: its resident ranges when found already.
        type Resident = Option<Vec<(usize, usize)>>;
        let mut rest: Vec<(&Region, Resident)> = Vec::new();
        for region in &late {
            let chunk = chunk_bytes(region, pools.as_ref(), buffer_bytes);
            let split = late::static_prefix_end(&statics, region, chunk);
            if split == region.start.get() {
                rest.push((region, None));
                continue;
            }
            let ranges = resident(region);
            for &(from, to) in &ranges {
                if from < split {
                    let dead = late_dead.for_static_data();
                    let part = (from, to.min(split));
                    read_range(region, part, dead, scratch.words()).map_break(drop)?;
                }
            }
            let after: Vec<(usize, usize)> = ranges
                .into_iter()
                .filter(|(_, to)| *to > split)
                .map(|(from, to)| (from.max(split), to))
                .collect();
            if !after.is_empty() {
                rest.push((region, Some(after)));
            }
        }
        // Where recent scans found their last reference first (see `order::Hints`): tests
        // tend to leave their blocks in the same places.
        let hints = LATE_HINTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .windows();
        for window in hints {
            for (region, ranges) in rest.iter_mut() {
                let (start, end) = (region.start.get(), region.end.get());
                if order::inside((start, end), window).is_none() {
                    continue;
                }
                let ranges = ranges.get_or_insert_with(|| resident(region));
                for &range in ranges.iter() {
                    if let Some(part) = order::inside(range, window) {
                        let dead = late_dead.for_region(region);
                        read_range(region, part, dead, scratch.words())
                            .map_break(remember_late_ending)?;
                    }
                }
                *ranges = ranges
                    .iter()
                    .flat_map(|&r| order::outside(r, window))
                    .collect();
            }
        }
        for (region, ranges) in rest {
            for range in ranges.unwrap_or_else(|| resident(region)) {
                let dead = late_dead.for_region(region);
                read_range(region, range, dead, scratch.words()).map_break(remember_late_ending)?;
            }
        }
        ControlFlow::Continue(())
    };
    let read_block = |start: usize, len: usize| -> Vec<usize> {
        // SAFETY: a live tracked block; it cannot be freed while we hold the tracker's lock
        // (the free and munmap hooks take the lock before releasing memory).
        let mut words: Vec<usize> = unsafe { std::slice::from_raw_parts(start as *const u8, len) }
            .chunks_exact(std::mem::size_of::<usize>())
            .map(|c| usize::from_ne_bytes(c.try_into().expect("word-sized chunk")))
            .collect();
        if let Ok(dead) = dead_in_candidates.try_borrow() {
            zero_in_ranges(&mut words, start, &dead);
        }
        if explain {
            let mask = vec![true; words.len()];
            explain_references(
                (&words, &mask, start),
                Region::new(start, start + len, false),
                &candidates,
                &gc_heads,
                None,
            );
        }
        words
    };
    let kinds = classify(
        &targets,
        &native,
        &gc_heads,
        pools.map_or(0, |p| p.values_tag),
        &mut |visit| {
            if explain {
                // Every reference is listed: read all roots.
                let _ = roots(&mut |words| {
                    let _ = visit(words);
                    ControlFlow::Continue(())
                });
            } else {
                // Stopped early when every native candidate is reachable (see `classify`).
                let _ = roots(visit);
            }
        },
        &read_block,
    );
    if explain {
        for (c, kind) in candidates.iter().zip(&kinds) {
            if *kind == Some(LeakKind::StillReachable) {
                self::explain(format!(
                    "block {:#x} ({} bytes) still reachable",
                    c.start_address(),
                    c.size
                ));
            }
        }
    }
    session.tracker.set_leak_kinds(
        candidates
            .iter()
            .zip(&kinds)
            .filter_map(|(c, k)| k.map(|k| (c.site, k, c.size))),
    );
    Ok(session.tracker.leak_totals().unwrap_or_default())
}

/// A late read ended the scan at `address`: its window is read first next time.
fn remember_late_ending(address: usize) {
    let mut hints = LATE_HINTS.lock().unwrap_or_else(|e| e.into_inner());
    hints.remember(address);
}

/// What holds no references in glibc's heap region `heap` (see [`heaps_in`]): its free chunks
/// (a large one is jumped over, never read), and in the chunks that hold a Python object or a
/// dict keys object (`pools`: CPython's layouts; `types` sizes a type object), the bytes after
/// the object's last field (see [`chunk_object_slack`]): a stale word there (seen: the end of
/// a code object's chunk, in every process) would hide a leak. The whole memory of the chunks
/// that hold an address of `text` (sorted): they hold only characters, and the part their
/// owner has not written yet keeps what the memory held before (seen: readline's buffer of
/// terminal capabilities, 2032 bytes of which about 1400 are written, hid up to 8 leaked
/// lists).
fn heap_dead_ranges(
    heap: &Region,
    pools: Option<&PoolLayout>,
    text: &[usize],
    types: &mut dyn FnMut(usize) -> Option<SizedType>,
) -> Vec<(usize, usize)> {
    let (start, end) = (heap.start.get(), heap.end.get());
    let (Some(mut window), Some(mut objects)) =
        (WindowReader::new(start, end), WindowReader::new(start, end))
    else {
        return Vec::new();
    };
    let word = std::mem::size_of::<usize>();
    let slack = std::cell::RefCell::new(Vec::new());
    // Each chunk in use is looked at as the walk passes it (collecting them first would grow a
    // buffer in the heap being walked).
    let mut in_use = |chunk: usize, size: usize| {
        let memory = chunk + 2 * word;
        // Up to the next chunk's size field: its first word is this chunk's memory.
        let memory_end = chunk + size + word;
        // heapgate's own block: nothing in it is the program's.
        if objects.word_at(memory) == Some(scrub::own_block_mark(memory)) {
            slack.borrow_mut().push((memory, memory_end));
            return;
        }
        let i = text.partition_point(|a| *a < memory);
        if text.get(i).is_some_and(|a| *a < memory_end) {
            slack.borrow_mut().push((memory, memory_end));
            return;
        }
        // Chunks of pymalloc's sizes too: bytes and str objects made big and then shrunk
        // with realloc stay in their chunks (seen: a 425-byte bytes object in a 480-byte
        // chunk), and a type object is 976 bytes. Only a chunk whose first words could be an
        // object's header costs more than a read.
        let Some(layout) = pools else {
            return;
        };
        let mut first = [0usize; CHUNK_FIRST_WORDS];
        let n = first
            .iter_mut()
            .enumerate()
            .map_while(|(i, w)| objects.word_at(memory + i * word).map(|v| *w = v))
            .count();
        if let Some(from) = chunk_object_slack(&first[..n], size, layout, types) {
            slack.borrow_mut().push((memory + from, memory_end));
            // A str's state word, as in a pymalloc block (seen here too, in a docstring's
            // chunk, naming a point inside a leaked block).
            if let Some(i) = layout.objects.and_then(|o| o.str_state_word(&first[..n])) {
                let at = memory + i * word;
                slack.borrow_mut().push((at, at + word));
            }
        }
    };
    let heaps = heaps_in(heap, &mut |addr| window.word_at(addr));
    let mut dead = Vec::new();
    for ((base, chunks_end), heap_end) in heaps {
        let slack_before = slack.borrow().len();
        match glibc_free_chunks(&mut |a| window.word_at(a), base, chunks_end, &mut in_use) {
            Some(free) => dead.extend(free),
            // No heap after all: what the walk took for chunks' slack may be anything.
            None => {
                slack.borrow_mut().truncate(slack_before);
                continue;
            }
        }
        // Past its chunks, a heap's memory is given back or not yet used.
        dead.push((chunks_end, heap_end));
    }
    dead.extend(slack.into_inner());
    dead.retain(|(s, e)| s < e);
    dead.sort_unstable();
    dead
}

/// Each of glibc's heaps in `region` (none if it is no heap region): where its chunks start
/// and end (see `glibc`), and where its memory ends, read through `word_at`. The main heap's
/// chunks fill its region; an arena heap region may hold several heaps, one per
/// `ARENA_HEAP_BYTES` (the kernel merges adjacent mappings of the same kind).
fn heaps_in(
    region: &Region,
    word_at: &mut dyn FnMut(usize) -> Option<usize>,
) -> Vec<((usize, usize), usize)> {
    let (start, end) = (region.start.get(), region.end.get());
    match region.heap {
        None => Vec::new(),
        Some(Heap::Main) => vec![((start, end), end)],
        Some(Heap::Arena) => (start..end)
            .step_by(ARENA_HEAP_BYTES)
            .filter_map(|heap| {
                let (base, chunks_end) = arena_heap_chunks(word_at, heap)?;
                let heap_end = (heap + ARENA_HEAP_BYTES).min(end);
                (base < end).then_some(((base, chunks_end.min(heap_end)), heap_end))
            })
            .collect(),
    }
}

/// `ranges` tagged (see `tagged`; any already tagged stay so), empty ones dropped, sorted and
/// merged, so that ends are sorted too (the lookups search by end).
fn merged_tagged(mut ranges: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    for range in ranges.iter_mut() {
        *range = (tagged(range.0), tagged(range.1));
    }
    ranges.retain(|(s, e)| s < e);
    // Stable sort: it takes sorted runs as they are, and the ranges mostly come as an
    // already merged list with a few more.
    ranges.sort();
    ranges.dedup_by(|next, prev| {
        let overlaps = next.0 <= prev.1;
        if overlaps {
            prev.1 = prev.1.max(next.1);
        }
        overlaps
    });
    ranges
}

/// Every live block of the tracked test, sorted by address, as a candidate. Heap blocks carry
/// how much memory the allocator really gave them (their slack is masked out of the roots too).
fn leak_candidates(tracker: &Tracker) -> Vec<Candidate> {
    let mut blocks = Vec::with_capacity(tracker.live_block_count());
    blocks.extend(
        tracker
            .live_blocks()
            .map(|(address, size, site, allocator)| match allocator {
                Some(allocator) => Candidate::new(address, size, site)
                    .with_usable_size(usable_size(address, size, allocator)),
                None => Candidate::new(address, size, site),
            }),
    );
    blocks.sort_unstable_by_key(|c| c.start_address());
    blocks
}

/// Which candidates' sites have a native origin (one stack walk per distinct site): only
/// their verdicts are needed (see `classify`).
fn native_candidates(
    tracker: &Tracker,
    candidates: &[Candidate],
    interpreter: &InterpreterModules,
) -> Vec<bool> {
    let mut origins = origin::NativeOrigins::new(interpreter);
    let mut sites: rustc_hash::FxHashMap<u32, bool> = rustc_hash::FxHashMap::default();
    candidates
        .iter()
        .map(|c| {
            *sites
                .entry(c.site)
                .or_insert_with(|| origins.is_native(tracker.site_stack(c.site)))
        })
        .collect()
}

/// The GC head of a candidate that CPython's cyclic GC tracks (see [`gc_head`]). The
/// caller holds the tracker's lock, so the block stays allocated.
fn candidate_gc_head(c: &Candidate) -> Option<usize> {
    if c.size < 4 * std::mem::size_of::<usize>() as u64 {
        return None;
    }
    let start = c.start_address();
    // SAFETY: a live tracked block of at least four words (as in `scan_leaks`'s `read_block`).
    let first = unsafe { std::slice::from_raw_parts(start as *const usize, 4) };
    gc_head(start, first, &mut word_at)
}

/// Where the Python object a candidate holds starts and its references end, when the block is
/// exactly that object (see [`ObjectLayout::object_extent`]). The caller holds the tracker's
/// lock, so the block stays allocated.
fn object_extent(
    c: &Candidate,
    objects: &ObjectLayout,
    types: &mut dyn FnMut(usize) -> Option<SizedType>,
) -> Option<(usize, usize)> {
    let word = std::mem::size_of::<usize>();
    let mut first = [0usize; CHUNK_FIRST_WORDS];
    let len = (c.size as usize / word).min(first.len());
    let first = &mut first[..len];
    if len < 2 || read_words(c.start_address(), first) != len {
        return None;
    }
    objects.object_extent(first, c.size as usize, types)
}

/// The GC head of a candidate that holds an object of a GC type the collector does not track
/// (any more): the collection before the scan untracks dicts that hold no containers, which
/// zeroes their heads' links. A word equal to such a head is a stale link of the collector's
/// lists (seen in pymalloc blocks and heap chunks, hiding leaked dicts), never a reference:
/// references are to the object after the head. Recognised by an unlinked head (no next, no
/// previous but the finalized bit) before a reference count and a type whose flags say GC,
/// and a pre-header before the head exactly when the type's flags call for one. The caller
/// holds the tracker's lock, so the block stays allocated.
fn untracked_gc_head(c: &Candidate, objects: &ObjectLayout) -> Option<usize> {
    const FINALIZED: usize = 1;
    let word = std::mem::size_of::<usize>();
    let mut first = [0usize; 6];
    let len = (c.size as usize / word).min(first.len());
    let first = &mut first[..len];
    let start = c.start_address();
    if read_words(start, first) != len {
        return None;
    }
    [0usize, 2].into_iter().find_map(|at| {
        let (next, prev) = (*first.get(at)?, *first.get(at + 1)?);
        let (refcount, ty) = (*first.get(at + 2)?, *first.get(at + 3)?);
        if next != 0 || prev & !FINALIZED != 0 || refcount == 0 || refcount > u32::MAX as usize {
            return None;
        }
        if ty % word != 0 || ty < 4096 {
            return None;
        }
        let flags = word_at(ty + objects.flags_at)?;
        let gc = flags & objects.gc_flag != 0;
        let preheader = flags & objects.preheader_flags != 0;
        (gc && preheader == (at == 2)).then_some(start + at * word)
    })
}

/// The GC heads of the tracked test's live objects that CPython's cyclic GC tracks, for a
/// collection of those alone before the leak scan (see `collect_test_garbage` in the Python
/// extension). Only they can be freed by one that the scan needs: garbage made only of older
/// objects holds the test's blocks as reachable, which the scan counts as such (older objects
/// are roots). Empty when no live block has a native origin: the scan is skipped then, and a
/// collection (which only frees) cannot give one a native origin.
///
/// A head is taken only if it is one beyond doubt, as the collection will unlink it from its
/// generation's list: its neighbours link back to it (see [`gc_head`]) and the object after
/// it has a type, a `type` instance (or an instance of a metaclass), whose flags say GC.
pub fn gc_candidates(
    interpreter: &InterpreterModules,
    objects: Option<&ObjectLayout>,
) -> Result<Vec<usize>, CaptureError> {
    let _guard = Guard::enter();
    let s = session();
    if !is_active() {
        return Err(CaptureError::NotActive);
    }
    let Some(session) = s.as_ref() else {
        return Err(CaptureError::NotActive);
    };
    let Some(objects) = objects else {
        return Ok(Vec::new());
    };
    let candidates = leak_candidates(&session.tracker);
    let heads: Vec<usize> = candidates
        .iter()
        .filter_map(candidate_gc_head)
        .filter(|head| is_gc_object(*head, objects))
        .collect();
    if heads.is_empty()
        || !native_candidates(&session.tracker, &candidates, interpreter).contains(&true)
    {
        return Ok(Vec::new());
    }
    Ok(heads)
}

/// Is the object after the GC head at `head` a GC object: its type's type is `type` (or a
/// metaclass, whose own type is `type`), and the type's flags say GC?
fn is_gc_object(head: usize, objects: &ObjectLayout) -> bool {
    let word = std::mem::size_of::<usize>();
    // PyGC_Head is two words; the object's type follows its reference count.
    let object = head + 2 * word;
    let Some(ty) = word_at(object + word) else {
        return false;
    };
    let Some(meta) = word_at(ty + word) else {
        return false;
    };
    let is_type = meta == objects.type_type || word_at(meta + word) == Some(objects.type_type);
    is_type && word_at(ty + objects.flags_at).is_some_and(|flags| flags & objects.gc_flag != 0)
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
/// words left out, `free` ranges (sorted, tagged) skipped unread, and in pymalloc pools only
/// the words of blocks in use, up to the end of the object they hold when `types` sizes it
/// (see `pool_mask`). Breaks with the chunk's address when `visit` does. `scratch`: the copy
/// buffer and a mask buffer, reused. A chunk none of
/// whose words `may_refer` to a candidate is passed over before any of that is worked out:
/// on bitarray's suite, 1 to 36 of the 900 to 2000 chunks of a heap-reading scan were not,
/// and the masks were most of such a scan's time.
#[allow(clippy::too_many_arguments)]
fn visit_region(
    region: Region,
    range: (usize, usize),
    candidates: &[Candidate],
    pools: Option<&PoolLayout>,
    gc_heads: &[usize],
    free: &[(usize, usize)],
    scratch: (&mut [usize], &mut Vec<bool>),
    may_refer: &dyn Fn(&[usize]) -> bool,
    types: &mut dyn FnMut(usize) -> Option<SizedType>,
    visit: &mut dyn FnMut(&[usize]) -> ControlFlow<()>,
) -> ControlFlow<usize> {
    let (buffer, mask) = scratch;
    let word = std::mem::size_of::<usize>();
    // HEAPGATE_EXPLAIN_LEAKS=1: say where each root reference to a candidate was found.
    let explain = std::env::var_os("HEAPGATE_EXPLAIN_LEAKS").is_some();
    let chunk = chunk_bytes(&region, pools, std::mem::size_of_val(buffer));
    let (start, end) = (range.0 & !(word - 1), range.1);
    let mut at = start;
    let mut next_free = free.partition_point(|(_, e)| untagged(*e) <= at);
    while at < end {
        // Free memory holds only stale bytes: jump over it without reading it.
        while next_free < free.len() && untagged(free[next_free].1) <= at {
            next_free += 1;
        }
        if let Some(&(free_start, free_end)) = free.get(next_free) {
            if untagged(free_start) <= at {
                at = untagged(free_end).next_multiple_of(word);
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
        if read_words(at, words) == len && may_refer(words) {
            mask.clear();
            match pools
                .filter(|_| region.anonymous)
                .and_then(|layout| pool_mask(words, at, layout, types))
            {
                Some(pool) => mask.extend_from_slice(&pool),
                None => mask.resize(len, true),
            }
            mask_out_candidates(mask, at, candidates);
            mask_out_ranges(mask, at, free);
            if explain {
                let pool = pools.filter(|_| region.anonymous);
                explain_references((words, mask, at), region, candidates, gc_heads, pool);
            }
            // Words that are not roots become 0 (never a reference) in our scratch copy.
            for (w, keep) in words.iter_mut().zip(mask.iter()) {
                if !keep {
                    *w = 0;
                }
            }
            if visit(words).is_break() {
                return ControlFlow::Break(at);
            }
        }
        at = chunk_end;
    }
    ControlFlow::Continue(())
}

/// The bytes `visit_region` reads `region` by, with a copy buffer of `buffer_bytes`: chunks
/// start on multiples of it, so a pool is always read whole.
fn chunk_bytes(region: &Region, pools: Option<&PoolLayout>, buffer_bytes: usize) -> usize {
    match pools {
        Some(layout) if region.anonymous => layout.pool_size,
        _ => buffer_bytes,
    }
    .min(buffer_bytes)
}

/// Regions at least this big are read only where pages are resident (or swapped out):
/// a page never touched holds no pointer, and reading it would map it in.
const RESIDENT_CHECK_BYTES: usize = 1 << 20;

/// The sub-ranges of `region` whose pages are present or swapped out, from
/// `/proc/self/pagemap` (the whole region when it is small or pagemap cannot be read),
/// widened to the `grid` (a power of two).
fn resident_ranges(
    pagemap: Option<&mut std::fs::File>,
    region: Region,
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
        if addr < self.start || addr.checked_add(word).is_none_or(|e| e > self.end) {
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

/// For `HEAPGATE_EXPLAIN_LEAKS`: a line for each of `found`'s words (the words, which of them
/// are read, the address of the first) that points into a candidate, and what it counts as.
/// A word equal to a candidate's GC head is a link of the collector's lists (see [`gc_head`]),
/// no reference: left out, else every tracked object would be listed once per neighbour.
/// `pool`: the layout of pymalloc's pools, when `region` may hold them (the block that holds
/// the word is named).
fn explain_references(
    found: (&[usize], &[bool], usize),
    region: Region,
    candidates: &[Candidate],
    gc_heads: &[usize],
    pool: Option<&PoolLayout>,
) {
    let (words, mask, at) = found;
    let word = std::mem::size_of::<usize>();
    for (i, w) in words.iter().enumerate().filter(|(i, _)| mask[*i]) {
        if gc_heads.binary_search(w).is_ok() {
            continue;
        }
        if let Some(c) = candidates
            .iter()
            .find(|c| c.start_address() <= *w && *w < c.start_address() + c.size as usize)
        {
            let around: Vec<String> = words[i.saturating_sub(3)..(i + 4).min(words.len())]
                .iter()
                .map(|w| format!("{w:#x}"))
                .collect();
            let offset = w - c.start_address();
            explain(format!(
                "block {:#x} ({} bytes) referenced by {:#x}{} from {:#x} [{}] in {:#x}-{:#x}{}{}",
                c.start_address(),
                c.size,
                w,
                if offset < reach::START_WINDOW && offset % word == 0 {
                    ""
                } else {
                    " (interior)"
                },
                at + i * word,
                around.join(" "),
                region.start.get(),
                region.end.get(),
                if region.anonymous { " (anonymous)" } else { "" },
                if region.heap.is_some() {
                    heap_chunk_of(region, at + i * word)
                } else {
                    pool.map_or(String::new(), |p| pool_block_of(p, at + i * word))
                }
            ));
        }
    }
}

/// For `HEAPGATE_EXPLAIN_LEAKS`: the pymalloc block that holds `addr`, if a pool does (its
/// header is read as `pool_mask` reads it), and the block's first words.
fn pool_block_of(layout: &PoolLayout, addr: usize) -> String {
    let pool = addr & !(layout.pool_size - 1);
    let mut header = [0usize; 6];
    if read_words(pool, &mut header) != header.len() {
        return String::new();
    }
    let size = ((header[4] >> 32) + 1) << layout.alignment_shift;
    let maxnextoffset = header[5] >> 32;
    if header[4] >> 32 >= 64 || maxnextoffset != layout.pool_size - size {
        return " (no pool)".to_string();
    }
    let Some(offset) = (addr - pool).checked_sub(layout.overhead) else {
        return " (pool header)".to_string();
    };
    let block = pool + layout.overhead + offset / size * size;
    let mut whole = vec![0usize; size / std::mem::size_of::<usize>()];
    let read = read_words(block, &mut whole);
    let mut first = [0usize; 4];
    let n = read.min(first.len());
    first[..n].copy_from_slice(&whole[..n]);
    // Where the scan takes the object to end (the rest of the block is not read).
    let sized = (read == whole.len())
        .then(|| {
            let objects = layout.objects?;
            let mut types = |ty: usize| read_sized_type(&objects, ty);
            objects
                .object_end(&whole, size, &mut types)
                .or_else(|| objects.keys_end(&whole, size))
        })
        .flatten()
        .map_or(String::new(), |end| format!(", object ends at +{end:#x}"));
    // A Python object's type: the second word, or the fourth after a GC head.
    let types: Vec<String> = [first[1], first[3]]
        .iter()
        .filter_map(|ty| type_name(*ty))
        .collect();
    let first: Vec<String> = first[..n].iter().map(|w| format!("{w:#x}")).collect();
    format!(
        " (pool block {block:#x}, {size} bytes{sized}, at +{:#x}, starts [{}]{})",
        addr - block,
        first.join(" "),
        if types.is_empty() {
            String::new()
        } else {
            format!(" (type {})", types.join(" or "))
        }
    )
}

/// For `HEAPGATE_EXPLAIN_LEAKS`: the name of the type object at `ty`, if it looks like one (its
/// `tp_name`, the word after the variable-size header, names printable text).
fn type_name(ty: usize) -> Option<String> {
    let word = std::mem::size_of::<usize>();
    let name_at = word_at(ty.checked_add(3 * word)?)?;
    let mut words = [0usize; 8];
    let n = read_words(name_at, &mut words);
    let bytes: Vec<u8> = words[..n].iter().flat_map(|w| w.to_ne_bytes()).collect();
    let name: Vec<u8> = bytes.into_iter().take_while(|b| *b != 0).collect();
    let printable = name.iter().all(|b| b.is_ascii_graphic());
    (!name.is_empty() && printable).then(|| String::from_utf8_lossy(&name).into_owned())
}

/// For `HEAPGATE_EXPLAIN_LEAKS`: the glibc chunk of the heap region `heap` that holds `addr`,
/// and whether the next chunk says it is in use. The heap's chunks are walked once per heap
/// extent (a walk per reference would cost what the heap holds, each time).
fn heap_chunk_of(heap: Region, addr: usize) -> String {
    type Chunks = ((usize, usize), Vec<(usize, usize)>);
    static CHUNKS: Mutex<Option<Chunks>> = Mutex::new(None);
    let word = std::mem::size_of::<usize>();
    let (start, end) = (heap.start.get(), heap.end.get());
    let mut cache = CHUNKS.lock().unwrap_or_else(|e| e.into_inner());
    if cache.as_ref().map(|(extent, _)| *extent) != Some((start, end)) {
        // (chunk, its size field)
        let mut chunks = Vec::new();
        if let Some(mut window) = WindowReader::new(start, end) {
            for ((base, chunks_end), _) in heaps_in(&heap, &mut |a| window.word_at(a)) {
                let mut chunk = base;
                while let Some(size) = window.word_at(chunk + word) {
                    let next = chunk + (size & !7);
                    if size & !7 == 0 || next > chunks_end {
                        break;
                    }
                    chunks.push((chunk, size));
                    chunk = next;
                }
            }
        }
        *cache = Some(((start, end), chunks));
    }
    let chunks = cache.as_ref().map_or(&[][..], |(_, c)| c.as_slice());
    // A chunk's memory runs from after its two header words to the next chunk's size field:
    // the next chunk's first word (its "previous size") is this one's while it is in use.
    let i = chunks.partition_point(|(c, _)| *c + 2 * word <= addr);
    let Some(&(chunk, size)) = i.checked_sub(1).and_then(|i| chunks.get(i)) else {
        return " (no chunk)".to_string();
    };
    if addr >= chunk + (size & !7) + word {
        return " (no chunk)".to_string();
    }
    let in_use = chunks.get(i).map(|(_, next_size)| next_size & 1 == 1);
    // The chunk's first words say what it holds (a Python object: a reference count and a type).
    let mut first = [0usize; 4];
    let n = read_words(chunk + 2 * word, &mut first);
    let first_word = first[0];
    let first: Vec<String> = first[..n].iter().map(|w| format!("{w:#x}")).collect();
    format!(
        " (chunk {chunk:#x}, {:#x} bytes, in use: {in_use:?}, at +{:#x}, starts [{}]{})",
        size & !7,
        addr - chunk,
        first.join(" "),
        symbol_of(first_word)
    )
}

/// For `HEAPGATE_EXPLAIN_LEAKS`: the loaded object and symbol `addr` lies in, if any (a
/// chunk's first word naming a static, such as a type object, says who made it).
fn symbol_of(addr: usize) -> String {
    // SAFETY: dladdr only reads the loader's tables; `info` is written by it.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a null name pointer is checked before it is read.
    if unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) } == 0 {
        return String::new();
    }
    let name = |p: *const libc::c_char| {
        if p.is_null() {
            String::from("?")
        } else {
            // SAFETY: dladdr's names are NUL-terminated strings owned by the loader.
            unsafe { std::ffi::CStr::from_ptr(p) }
                .to_string_lossy()
                .into_owned()
        }
    };
    format!(
        " (first word in {} at {})",
        name(info.dli_fname),
        name(info.dli_sname)
    )
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

/// The type object at `ty`, read safely, if the scan can size its instances (see
/// [`ObjectLayout::sized_type`]).
fn read_sized_type(objects: &ObjectLayout, ty: usize) -> Option<SizedType> {
    let mut words = [0usize; 64];
    let len = objects.type_bytes().div_ceil(std::mem::size_of::<usize>());
    let words = words.get_mut(..len)?;
    (read_words(ty, words) == len)
        .then(|| objects.sized_type(words))
        .flatten()
}

/// The word at `addr` of this process, if it is readable (see [`read_words`]).
pub fn word_at(addr: usize) -> Option<usize> {
    let mut w = [0usize];
    (read_words(addr, &mut w) == 1).then_some(w[0])
}

/// Read words at `at` through `process_vm_readv` on ourselves: memory another thread unmaps
/// meanwhile reads as a failure, never as a crash. Returns the number of words read.
pub fn read_words(at: usize, buffer: &mut [usize]) -> usize {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heap_chunk_of_text_is_no_root() {
        // A heap in this process's memory: chunks of 0x30 (in use), 0x40 (text), 0x30 (in use),
        // then the top (0x100).
        let mut words = vec![0usize; (0x30 + 0x40 + 0x30 + 0x100) / 8];
        for (at, size_field) in [(0, 0x31), (0x30, 0x41), (0x70, 0x31), (0xa0, 0x101)] {
            words[at / 8 + 1] = size_field;
        }
        let base = words.as_ptr() as usize;
        let mut heap = Region::new(base, base + words.len() * 8, false);
        heap.heap = Some(Heap::Main);
        let mut no_types = |_| None;
        let dead = heap_dead_ranges(&heap, None, &[base + 0x48], &mut no_types);
        // The text chunk's memory up to the next chunk's size field, and the top.
        assert_eq!(
            dead,
            vec![(base + 0x40, base + 0x78), (base + 0xa0, base + 0x1a0)]
        );
        // Without the text: only the top.
        let dead = heap_dead_ranges(&heap, None, &[], &mut no_types);
        assert_eq!(dead, vec![(base + 0xa0, base + 0x1a0)]);
        // An address in no chunk's memory (the first chunk's header) changes nothing.
        assert_eq!(
            heap_dead_ranges(&heap, None, &[base + 8], &mut no_types),
            dead
        );
        drop(words);
    }

    #[test]
    fn the_head_of_an_untracked_gc_object_is_found() {
        let o = pymalloc::tests::objects();
        // A type object whose flags (at byte 48) say GC; another with a pre-header too.
        let mut gc_type = [0usize; 8];
        gc_type[6] = o.gc_flag;
        let mut preheader_type = gc_type;
        preheader_type[6] |= o.preheader_flags;
        let (gc, preheader) = (gc_type.as_ptr() as usize, preheader_type.as_ptr() as usize);
        let found = |block: &[usize]| {
            let c = Candidate::new(block.as_ptr() as usize, 8 * block.len() as u64, 0);
            untracked_gc_head(&c, &o).map(|head| head - block.as_ptr() as usize)
        };
        // An unlinked head (the finalized bit may stay), a reference count, a GC type.
        assert_eq!(found(&[0, 0, 1, gc, 0, 0, 0, 0]), Some(0));
        assert_eq!(found(&[0, 1, 3, gc, 0, 0, 0, 0]), Some(0));
        // After a pre-header when the type has one, and only then.
        assert_eq!(found(&[0, 0, 0, 0, 1, preheader, 0, 0]), Some(16));
        assert_eq!(found(&[0, 0, 1, preheader, 0, 0, 0, 0]), None);
        // A linked head (tracked: see `gc_head`), a type without GC, a native buffer: none.
        assert_eq!(found(&[0x7f00_0000_1000, 0, 1, gc, 0, 0, 0, 0]), None);
        let plain_type = [0usize; 8];
        assert_eq!(found(&[0, 0, 1, plain_type.as_ptr() as usize, 0, 0]), None);
        assert_eq!(found(&[0, 0, 0x7f00_0000_1000, gc, 0, 0, 0, 0]), None);
        // Too small to hold a head and an object header.
        assert_eq!(found(&[0, 0, 1]), None);
    }
}
