//! Reachability: which candidate blocks the roots reach, directly or through other blocks,
//! and how each is classified. A one-hash page filter rejects most words before a lookup.

use std::ops::ControlFlow;

use super::super::tagged::{untagged, TAG};
use super::LeakKind;

/// An aligned pointer into a block's first bytes counts as a pointer to its start: an object
/// header or a base class may come first (CPython objects sit 16 or 32 bytes into their block).
pub const START_WINDOW: usize = 64;

/// A block to classify: `[start, end)` with the caller's site id.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Tagged start address (see `tagged::TAG`): the scan's own tables never look like
    /// pointers to the blocks they describe.
    start_tagged: usize,
    end_tagged: usize,
    /// End of the memory the allocator gave (the requested size plus slack): the slack
    /// holds stale bytes and is no root either.
    usable_end_tagged: usize,
    /// The site the block belongs to.
    pub site: u32,
    /// Bytes.
    pub size: u64,
    /// Where the Python object the block holds starts, in bytes (`NO_OBJECT`: none known).
    object_start: u32,
    /// Bytes from the block's start that can hold references: its size, or where the
    /// references of the Python object it holds end (before narrow items).
    refs_len: usize,
}

/// [`Candidate::object_start`] of a block not known to hold a Python object.
const NO_OBJECT: u32 = u32::MAX;

impl Candidate {
    /// A candidate block at `start` of `size` bytes.
    pub fn new(start: usize, size: u64, site: u32) -> Candidate {
        Candidate {
            start_tagged: start | TAG,
            end_tagged: (start + size as usize) | TAG,
            usable_end_tagged: (start + size as usize) | TAG,
            site,
            size,
            object_start: NO_OBJECT,
            refs_len: size as usize,
        }
    }

    /// The block holds a Python object starting `offset` bytes in, whose size is the block's
    /// (see `ObjectLayout::object_extent`): CPython refers to an object by its start alone, so
    /// a word pointing anywhere else in the block (a str's characters, a list's fields, its
    /// GC head) is no reference to it. Stale words naming a field of a freed object whose
    /// memory the test's object got were seen hiding leaked lists and strs. Its references
    /// end `refs_end` bytes in (see `ObjectLayout::object_extent`): the rest is not read.
    pub fn with_object(mut self, object: Option<(usize, usize)>) -> Candidate {
        if let Some((offset, refs_end)) = object {
            self.object_start = u32::try_from(offset).unwrap_or(NO_OBJECT);
            self.refs_len = self.refs_len.min(refs_end);
        }
        self
    }

    /// The allocator gave `usable` bytes for this block (at least its size).
    pub fn with_usable_size(mut self, usable: usize) -> Candidate {
        let end = self.start() + usable.max(self.size as usize);
        self.usable_end_tagged = end | TAG;
        self
    }

    /// The block's address.
    pub fn start_address(&self) -> usize {
        self.start_tagged & !TAG
    }

    fn start(&self) -> usize {
        self.start_address()
    }

    fn len(&self) -> usize {
        (self.end_tagged & !TAG) - self.start()
    }

    /// Bytes of the block read for references (see [`with_object`](Self::with_object)): at
    /// most its size, which `new` starts it at.
    fn refs_len(&self) -> usize {
        self.refs_len
    }
}

/// The GC head of the block at `start` whose first words are `first`, if the block is an
/// object CPython's cyclic GC tracks: its head (at the block's start, or 16 bytes in after
/// the managed-dict pre-header of 3.11+) links to a previous and a next head that both link
/// back to it. `word_at` reads any address safely (None: unreadable). Words equal to a
/// candidate's head are GC-list links, not references; finding the heads of the candidates
/// alone costs what the test allocated, not what the process holds.
pub fn gc_head(
    start: usize,
    first: &[usize],
    word_at: &mut dyn FnMut(usize) -> Option<usize>,
) -> Option<usize> {
    let word = std::mem::size_of::<usize>();
    [0usize, 2].into_iter().find_map(|at| {
        let (next, prev) = (*first.get(at)?, *first.get(at + 1)? & !3);
        let head = start + at * word;
        let plausible = next != 0 && prev != 0 && next % word == 0 && prev % word == 0;
        (plausible
            && word_at(next + word).map(|p| p & !3) == Some(head)
            && word_at(prev) == Some(head))
        .then_some(head)
    })
}

/// Clear, in `mask` (words from `base`), the words inside any of the sorted `ranges` (all
/// tagged, or none: see `tagged`).
pub fn mask_out_ranges(mask: &mut [bool], base: usize, ranges: &[(usize, usize)]) {
    set_in_ranges(mask, base, ranges, false);
}

/// Set to 0 the words of `words` (read from `base`) inside any of the sorted `ranges`, as
/// [`mask_out_ranges`] clears them: such a word is no reference.
pub fn zero_in_ranges(words: &mut [usize], base: usize, ranges: &[(usize, usize)]) {
    set_in_ranges(words, base, ranges, 0);
}

/// Set to `value` the items of `items` (one per word from `base`) inside any of the sorted
/// `ranges`.
fn set_in_ranges<T: Copy>(items: &mut [T], base: usize, ranges: &[(usize, usize)], value: T) {
    let word = std::mem::size_of::<usize>();
    let end = base + items.len() * word;
    let first = ranges.partition_point(|(_, e)| untagged(*e) <= base);
    for &(start, stop) in &ranges[first..] {
        let (start, stop) = (untagged(start), untagged(stop));
        if start >= end {
            break;
        }
        let from = start.max(base) - base;
        let to = stop.min(end) - base;
        items[from.div_ceil(word)..to / word].fill(value);
    }
}

/// Clear, in `mask`, the words of `[base, base + 8 * mask.len())` that lie in candidates:
/// they are scanned only if the candidate is reached.
pub fn mask_out_candidates(mask: &mut [bool], base: usize, candidates: &[Candidate]) {
    let word = std::mem::size_of::<usize>();
    let end = base + mask.len() * word;
    // Usable ends may overlap the next block's header: look back a little.
    let first = candidates
        .partition_point(|c| (c.end_tagged & !TAG) <= base)
        .saturating_sub(1);
    for c in &candidates[first..] {
        if c.start() >= end {
            break;
        }
        let usable_end = c.usable_end_tagged & !TAG;
        if usable_end <= base {
            continue;
        }
        let from = c.start().max(base) - base;
        let to = usable_end.min(end) - base;
        mask[from / word..to.div_ceil(word)].fill(false);
    }
}

/// Find the candidate containing `word` (tag-compared), if any.
fn find(candidates: &[Candidate], word: usize) -> Option<usize> {
    let key = word | TAG;
    let i = candidates.partition_point(|c| c.end_tagged <= key);
    (i < candidates.len() && candidates[i].start_tagged <= key).then_some(i)
}

/// A one-hash Bloom filter over the 4 KiB pages candidates cover: most words of a process
/// are no pointer into a candidate, and this rejects them with one bit test instead of a
/// binary search over the candidates.
struct PageFilter {
    bits: Vec<u64>,
    /// `usize::BITS` minus log2 of the filter's bits.
    shift: u32,
    /// Candidates bigger than this many pages are looked up directly (their pages would fill
    /// the filter).
    big: Vec<(usize, usize)>,
}

const PAGE_SHIFT: u32 = 12;
const BIG_PAGES: usize = 256;
/// About this many bits per candidate page (a false positive costs a binary search), from
/// 2^12 bits (a test that keeps a few blocks: the filter stays in the L1 cache) to 2^20.
const FILTER_BITS_PER_PAGE: usize = 64;
const FILTER_BITS_LOG2: std::ops::RangeInclusive<u32> = 12..=20;

impl PageFilter {
    fn new(candidates: &[Candidate]) -> PageFilter {
        let pages = |c: &Candidate| {
            (
                c.start() >> PAGE_SHIFT,
                (c.start() + c.len().max(1) - 1) >> PAGE_SHIFT,
            )
        };
        let small_pages: usize = candidates
            .iter()
            .map(pages)
            .filter(|(first, last)| last - first < BIG_PAGES)
            .map(|(first, last)| last - first + 1)
            .sum();
        let log2 = (small_pages * FILTER_BITS_PER_PAGE)
            .next_power_of_two()
            .trailing_zeros()
            .clamp(*FILTER_BITS_LOG2.start(), *FILTER_BITS_LOG2.end());
        let mut filter = PageFilter {
            bits: vec![0; 1 << (log2 - 6)],
            shift: usize::BITS - log2,
            big: Vec::new(),
        };
        for c in candidates {
            let (first, last) = pages(c);
            if last - first >= BIG_PAGES {
                filter.big.push((c.start(), c.start() + c.len()));
                continue;
            }
            for page in first..=last {
                let bit = filter.bit(page);
                filter.bits[bit >> 6] |= 1 << (bit & 63);
            }
        }
        filter
    }

    #[inline(always)]
    fn bit(&self, page: usize) -> usize {
        page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.shift
    }

    /// 1 when the bit of `word`'s page is set, else 0, without a branch. The index is
    /// masked to the table (it lies inside already), which spares the bounds check.
    #[inline(always)]
    fn page_bit(&self, word: usize) -> u64 {
        let bit = self.bit(word >> PAGE_SHIFT);
        (self.bits[(bit >> 6) & (self.bits.len() - 1)] >> (bit & 63)) & 1
    }

    /// False when `word` surely points into no candidate.
    #[inline(always)]
    fn may_hold(&self, word: usize) -> bool {
        self.page_bit(word) != 0 || self.big.iter().any(|(s, e)| *s <= word && word < *e)
    }
}

/// The candidates (sorted by address), with what rejects most words that point into none of
/// them at a glance: a range check and one bit test (see [`PageFilter`]), never a word that
/// does point into one. Made once per scan: it filters the roots' memory and the classifier's
/// words alike.
pub struct Targets<'a> {
    candidates: &'a [Candidate],
    lo: usize,
    hi: usize,
    filter: PageFilter,
}

impl<'a> Targets<'a> {
    /// Over `candidates` (sorted by address).
    pub fn new(candidates: &'a [Candidate]) -> Targets<'a> {
        Targets {
            candidates,
            lo: candidates.first().map_or(usize::MAX, Candidate::start),
            hi: candidates.last().map_or(0, |c| c.end_tagged & !TAG),
            filter: PageFilter::new(candidates),
        }
    }

    /// False when `word` surely points into no candidate.
    #[inline(always)]
    fn may_hold(&self, word: usize) -> bool {
        self.lo <= word && word < self.hi && self.filter.may_hold(word)
    }

    /// False when no word of `words` points into a candidate: most of the memory a scan
    /// reads, which then needs no telling apart of roots from dead words (masks only ever
    /// zero words, and a word that points into no candidate changes no verdict).
    pub fn may_refer(&self, words: &[usize]) -> bool {
        if !self.filter.big.is_empty() {
            return words.iter().any(|&w| self.may_hold(w));
        }
        // Without a branch per word, eight at a time: memory is a mix of small numbers and
        // pointers near the candidates that no branch predictor follows (the branchy test
        // was most of a heap-reading scan's time on bitarray's suite).
        let span = self.hi.wrapping_sub(self.lo);
        words.chunks(8).any(|group| {
            group.iter().fold(0, |found, &w| {
                let in_range = u64::from(w.wrapping_sub(self.lo) < span);
                found | (in_range & self.filter.page_bit(w))
            }) != 0
        })
    }
}

struct Scanner<'a> {
    targets: &'a Targets<'a>,
    gc_heads: &'a [usize],
    values_tag: usize,
}

impl Scanner<'_> {
    /// Candidates that `words` point into (GC-list links excluded), and whether the pointer
    /// is near the block's start.
    fn targets(&self, words: &[usize], mut hit: impl FnMut(usize, bool)) {
        for &w in words {
            if !self.targets.may_hold(w) {
                continue;
            }
            if let Some(i) = find(self.targets.candidates, w) {
                if self.gc_heads.binary_search(&(w | TAG)).is_err() {
                    // A reference to an object or a header is aligned; an odd address near
                    // the start is a cursor or stale bytes (a str's padding was seen).
                    // 3.12's inline-values pointer is such an address minus its tag. Within
                    // the first word it is the start with flags in its low bits (a tagged
                    // pointer: numpy keeps an array's buffer info as its address | 3).
                    let c = &self.targets.candidates[i];
                    let offset = w - c.start();
                    let word = std::mem::size_of::<usize>();
                    if c.object_start != NO_OBJECT {
                        // The object's start exactly; anything else is no reference.
                        if offset == c.object_start as usize {
                            hit(i, true);
                        }
                        continue;
                    }
                    let aligned = offset.is_multiple_of(word)
                        || offset < word
                        || (self.values_tag != 0
                            && (offset + self.values_tag).is_multiple_of(word));
                    hit(i, offset < START_WINDOW && aligned);
                }
            }
        }
    }
}

/// Hands every root word to the visitor it is given, until the visitor breaks: then no root
/// read later could change a verdict (see [`classify`]).
pub type RootWords<'a> = dyn FnMut(&mut dyn FnMut(&[usize]) -> ControlFlow<()>) + 'a;

/// Classify the candidates of `targets` (sorted by address, non-overlapping). `roots` hands every root word
/// to its argument (candidates' own words excluded: see [`mask_out_candidates`]), and may
/// stop when the argument breaks: once every `needed` candidate is reachable from the roots
/// read so far (what they reach is followed after each batch), its verdict is final — further
/// roots can only make blocks reachable, and a reachable block is reachable whatever else
/// points into it. The other candidates not reached by then get no verdict (None): the scan
/// judges only the needed ones (those of native origin), and the rest matter only as the
/// blocks a lost needed one hangs off, which cannot be once every needed one is reachable.
/// When every root was read, every candidate has a verdict. `read_block` reads a candidate's
/// words. `gc_heads`: addresses of CPython GC heads. `values_tag`: see
/// [`PoolLayout::values_tag`](super::PoolLayout::values_tag).
pub fn classify(
    targets: &Targets<'_>,
    needed: &[bool],
    gc_heads: &[usize],
    values_tag: usize,
    roots: &mut RootWords<'_>,
    read_block: &dyn Fn(usize, usize) -> Vec<usize>,
) -> Vec<Option<LeakKind>> {
    let candidates = targets.candidates;
    let n = candidates.len();
    debug_assert_eq!(needed.len(), n);
    let mut kinds = vec![LeakKind::DefinitelyLost; n];
    if n == 0 {
        return Vec::new();
    }
    let mut heads: Vec<usize> = gc_heads.iter().map(|h| h | TAG).collect();
    heads.sort_unstable();
    let scanner = Scanner {
        targets,
        gc_heads: &heads,
        values_tag,
    };
    let mut reachable = vec![false; n];
    let mut interior = vec![false; n];
    // Counted apart from `reachable`, which `reach` holds (the visitor below reads it).
    let unreached = std::cell::Cell::new(needed.iter().filter(|n| **n).count());
    let mut work = Vec::new();
    let mut reach = |i: usize, start: bool, work: &mut Vec<usize>| {
        if !start {
            interior[i] = true;
        } else if !reachable[i] {
            reachable[i] = true;
            if needed[i] {
                unreached.set(unreached.get() - 1);
            }
            work.push(i);
        }
    };
    let mut stopped = false;
    roots(&mut |words| {
        scanner.targets(words, |i, start| reach(i, start, &mut work));
        while let Some(i) = work.pop() {
            let words = read_block(candidates[i].start(), candidates[i].refs_len());
            scanner.targets(&words, |j, start| reach(j, start, &mut work));
        }
        if unreached.get() == 0 {
            stopped = true;
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    if stopped {
        // Every needed candidate is reachable; the others not reached are not judged.
        return reachable
            .iter()
            .map(|r| r.then_some(LeakKind::StillReachable))
            .collect();
    }
    // Among the unreachable: pointed to by another lost block → indirectly lost.
    let mut pointed = vec![false; n];
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in (0..n).filter(|i| !reachable[*i]) {
        let words = read_block(candidates[i].start(), candidates[i].refs_len());
        scanner.targets(&words, |j, _| {
            if j != i && !reachable[j] {
                pointed[j] = true;
                edges[i].push(j);
            }
        });
    }
    for (i, kind) in kinds.iter_mut().enumerate() {
        *kind = if reachable[i] {
            LeakKind::StillReachable
        } else if interior[i] {
            LeakKind::PossiblyLost
        } else if pointed[i] {
            LeakKind::IndirectlyLost
        } else {
            LeakKind::DefinitelyLost
        };
    }
    // A cycle of lost blocks with no lost block outside pointing in: its lowest block is
    // definitely lost, the rest indirectly (as they are reachable from it). What hangs off a
    // definitely or a possibly lost block is in no such cycle: indirectly lost, as valgrind
    // says (marked from the possibly lost too, a list whose head a stale word points into was
    // cut into a definitely lost piece at each block that came first in memory).
    let mut seen = vec![false; n];
    let lost_first: Vec<usize> = (0..n)
        .filter(|i| matches!(kinds[*i], LeakKind::DefinitelyLost | LeakKind::PossiblyLost))
        .collect();
    for i in lost_first {
        mark_from(i, &edges, &mut seen);
    }
    for i in 0..n {
        if !reachable[i] && !interior[i] && !seen[i] {
            kinds[i] = LeakKind::DefinitelyLost;
            mark_from(i, &edges, &mut seen);
        }
    }
    kinds.into_iter().map(Some).collect()
}

fn mark_from(start: usize, edges: &[Vec<usize>], seen: &mut [bool]) {
    let mut stack = vec![start];
    while let Some(i) = stack.pop() {
        if !seen[i] {
            seen[i] = true;
            stack.extend(edges[i].iter().copied());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::maps::Region;
    use super::*;

    /// A fake address space: candidate blocks and roots are word arrays at fake addresses.
    struct Memory {
        words: Vec<(usize, Vec<usize>)>,
    }

    impl Memory {
        fn read(&self, start: usize, len: usize) -> Vec<usize> {
            let mut out = Vec::new();
            for (base, words) in &self.words {
                for (k, w) in words.iter().enumerate() {
                    let at = base + k * 8;
                    if at >= start && at < start + len {
                        out.push(*w);
                    }
                }
            }
            out
        }
    }

    fn run(
        memory: &Memory,
        candidates: &[Candidate],
        roots: &[Region],
        heads: &[usize],
    ) -> Vec<LeakKind> {
        let mut visit_roots = |visit: &mut dyn FnMut(&[usize]) -> ControlFlow<()>| {
            for r in roots {
                let (start, len) = (r.start.get(), r.end.get() - r.start.get());
                let mut mask = vec![true; len / 8];
                mask_out_candidates(&mut mask, start, candidates);
                let kept: Vec<usize> = memory
                    .words
                    .iter()
                    .flat_map(|(base, ws)| {
                        ws.iter().enumerate().map(move |(k, w)| (base + k * 8, *w))
                    })
                    .filter(|(at, _)| *at >= start && *at < start + len && mask[(*at - start) / 8])
                    .map(|(_, w)| w)
                    .collect();
                if visit(&kept).is_break() {
                    return;
                }
            }
        };
        let needed = vec![true; candidates.len()];
        classify(
            &Targets::new(candidates),
            &needed,
            heads,
            0,
            &mut visit_roots,
            &|s, l| memory.read(s, l),
        )
        .into_iter()
        .map(|k| k.expect("every candidate is needed: all judged"))
        .collect()
    }

    /// Classify with roots handed over in `batches`, either honouring the visitor's break (as
    /// the scan does) or reading every batch; returns the verdicts and the batches read.
    fn classify_batches(
        memory: &Memory,
        candidates: &[Candidate],
        batches: &[Vec<usize>],
        stop: bool,
    ) -> (Vec<LeakKind>, usize) {
        let mut read = 0;
        let mut roots = |visit: &mut dyn FnMut(&[usize]) -> ControlFlow<()>| {
            for batch in batches {
                read += 1;
                if visit(batch).is_break() && stop {
                    return;
                }
            }
        };
        let needed = vec![true; candidates.len()];
        let kinds = classify(
            &Targets::new(candidates),
            &needed,
            &[],
            0,
            &mut roots,
            &|s, l| memory.read(s, l),
        )
        .into_iter()
        .map(|k| k.expect("every candidate is needed: all judged"))
        .collect();
        (kinds, read)
    }

    /// A small deterministic generator (xorshift) for the property tests: `next(n)` is in 0..n.
    fn generator(seed: u64) -> impl FnMut(u64) -> usize {
        let mut state = seed;
        move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n) as usize
        }
    }

    /// A random address space of up to 12 blocks of 32 bytes that point at each other (at their
    /// start, inside, far inside: possibly lost, or nowhere), and roots in 5 batches.
    fn random_space(
        next: &mut dyn FnMut(u64) -> usize,
    ) -> (Memory, Vec<Candidate>, Vec<Vec<usize>>) {
        let count = 1 + next(12);
        let blocks: Vec<usize> = (0..count).map(|i| 0x10_0000 + i * 0x100).collect();
        let pointer = |next: &mut dyn FnMut(u64) -> usize| match next(4) {
            0 => 0x77,
            1 => blocks[next(count as u64)] + 8 * next(3),
            2 => blocks[next(count as u64)] + 0x80,
            _ => blocks[next(count as u64)],
        };
        let memory = Memory {
            words: blocks
                .iter()
                .map(|b| (*b, (0..4).map(|_| pointer(next)).collect()))
                .collect(),
        };
        let candidates = blocks.iter().map(|b| Candidate::new(*b, 32, 0)).collect();
        let batches = (0..5)
            .map(|_| (0..next(4)).map(|_| pointer(next)).collect())
            .collect();
        (memory, candidates, batches)
    }

    #[test]
    fn the_scan_stops_once_every_candidate_is_reachable_and_never_changes_a_verdict() {
        // 400 random address spaces: stopping early gives the full scan's verdicts.
        let mut next = generator(0x2545_f491_4f6c_dd1d);
        let mut stopped_early = 0;
        for _ in 0..400 {
            let (memory, candidates, batches) = random_space(&mut next);
            let (full, read_all) = classify_batches(&memory, &candidates, &batches, false);
            let (early, read) = classify_batches(&memory, &candidates, &batches, true);
            assert_eq!(early, full, "{memory_words:?}", memory_words = memory.words);
            assert_eq!(read_all, batches.len());
            let reachable = full.iter().all(|k| *k == LeakKind::StillReachable);
            assert!(
                read == batches.len() || reachable,
                "stopped with a verdict open"
            );
            if read < batches.len() {
                stopped_early += 1;
            }
        }
        // The generator does make scans that stop early (the test would prove nothing else).
        assert!(stopped_early > 20, "{stopped_early}");
    }

    #[test]
    fn only_needed_candidates_hold_the_scan_and_theirs_are_the_full_verdicts() {
        // As above, with a random half of the blocks needed: the scan may stop once those are
        // reachable; a needed block's verdict is the full scan's, another's is the full scan's
        // or none (not judged: the scan stopped when the needed ones were reachable).
        let mut next = generator(0x9e37_79b9_7f4a_7c15);
        let (mut unjudged, mut stopped_early) = (0, 0);
        for _ in 0..400 {
            let (memory, candidates, batches) = random_space(&mut next);
            let needed: Vec<bool> = candidates.iter().map(|_| next(2) == 0).collect();
            let (full, _) = classify_batches(&memory, &candidates, &batches, false);
            let mut read = 0;
            let mut roots = |visit: &mut dyn FnMut(&[usize]) -> ControlFlow<()>| {
                for batch in &batches {
                    read += 1;
                    if visit(batch).is_break() {
                        return;
                    }
                }
            };
            let targets = Targets::new(&candidates);
            let early = classify(&targets, &needed, &[], 0, &mut roots, &|s, l| {
                memory.read(s, l)
            });
            for (i, verdict) in early.iter().enumerate() {
                match verdict {
                    Some(kind) => assert_eq!(*kind, full[i], "block {i}"),
                    None => {
                        assert!(!needed[i], "needed block {i} not judged");
                        unjudged += 1;
                    }
                }
            }
            if read < batches.len() {
                stopped_early += 1;
            }
        }
        assert!(
            stopped_early > 20 && unjudged > 20,
            "{stopped_early} {unjudged}"
        );
    }

    #[test]
    fn the_page_filter_passes_every_word_inside_a_candidate_whatever_its_size() {
        for count in [1usize, 40, 5000] {
            let candidates: Vec<Candidate> = (0..count)
                .map(|i| Candidate::new(0x10_0000 + i * 0x3000, 200 + (i % 7) as u64 * 1000, 0))
                .chain([Candidate::new(0x7000_0000, 300 * 4096, 1)])
                .collect();
            let filter = PageFilter::new(&candidates);
            assert!((1 << 12..=1 << 20).contains(&(filter.bits.len() * 64)));
            for c in &candidates {
                for w in (c.start()..c.start() + c.len()).step_by(8) {
                    assert!(filter.may_hold(w), "{count} candidates: {w:#x}");
                }
            }
        }
    }

    #[test]
    fn the_prefilter_passes_every_chunk_that_points_into_a_candidate() {
        let candidates: Vec<Candidate> = (0..300)
            .map(|i| Candidate::new(0x10_0000 + i * 0x5000, 64 + (i % 5) as u64 * 900, 0))
            .collect();
        let quick = Targets::new(&candidates);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize
        };
        let (mut passed, mut rejected) = (0, 0);
        for _ in 0..2000 {
            // Words around the candidates' span, some in it, a few pointing into one.
            let chunk: Vec<usize> = (0..4)
                .map(|_| 0x8_0000 + next() % (300 * 0x5000 + 0x10_0000))
                .collect();
            let inside = chunk.iter().any(|w| find(&candidates, *w).is_some());
            if inside {
                assert!(quick.may_refer(&chunk), "{chunk:x?}");
            }
            if quick.may_refer(&chunk) {
                passed += 1;
            } else {
                rejected += 1;
            }
        }
        assert!(passed > 100 && rejected > 100, "{passed} {rejected}");
        assert!(!quick.may_refer(&[0, 0x8_0000, usize::MAX]));
        assert!(!Targets::new(&[]).may_refer(&[0x10_0000]));
    }

    #[test]
    fn lost_head_indirect_rest_and_reachable_cache() {
        use LeakKind::*;
        // list: A(0x1000) -> B(0x2000) -> C(0x3000); cache D(0x4000) referenced from a root.
        let memory = Memory {
            words: vec![
                (0x1000, vec![0x2000, 0]),
                (0x2000, vec![0x3008, 0]), // interior pointer
                (0x3000, vec![0, 0]),
                (0x4000, vec![0, 0]),
                (0x9000, vec![0x4000, 7, 0x1234]), // root
            ],
        };
        let candidates: Vec<Candidate> = [0x1000, 0x2000, 0x3000, 0x4000]
            .iter()
            .map(|a| Candidate::new(*a, 16, 0))
            .collect();
        let roots = [Region::new(0x9000, 0x9018, false)];
        assert_eq!(
            run(&memory, &candidates, &roots, &[]),
            [
                DefinitelyLost,
                IndirectlyLost,
                IndirectlyLost,
                StillReachable
            ]
        );
    }

    #[test]
    fn a_tagged_pointer_to_a_start_is_a_reference_and_an_odd_one_further_in_is_not() {
        use LeakKind::*;
        // numpy keeps an array's buffer info as its address | 3; an odd address past the first
        // word is a cursor or stale bytes: only interior.
        let memory = Memory {
            words: vec![
                (0x1000, vec![0, 0, 0, 0]),
                (0x2000, vec![0, 0, 0, 0]),
                (0x9000, vec![0x1003, 0x2009]),
            ],
        };
        let candidates = [Candidate::new(0x1000, 32, 0), Candidate::new(0x2000, 32, 0)];
        let roots = [Region::new(0x9000, 0x9010, false)];
        assert_eq!(
            run(&memory, &candidates, &roots, &[]),
            [StillReachable, PossiblyLost]
        );
    }

    #[test]
    fn a_python_object_is_referenced_by_its_start_alone() {
        use LeakKind::*;
        // Three 56-byte lists (a GC head, then the object at +16): one pointed to at its
        // start, one a byte past it, one in a field (+48) and at its head's second word (+8).
        // Without the object's start known, +48 would read as a reference.
        let memory = Memory {
            words: vec![
                (0x1000, vec![0; 7]),
                (0x2000, vec![0; 7]),
                (0x3000, vec![0; 7]),
                (0x9000, vec![0x1010, 0x2011, 0x3030, 0x3008]),
            ],
        };
        let lists: Vec<Candidate> = [0x1000, 0x2000, 0x3000]
            .into_iter()
            .map(|b| Candidate::new(b, 56, 0).with_object(Some((16, 56))))
            .collect();
        let roots = [Region::new(0x9000, 0x9020, false)];
        assert_eq!(
            run(&memory, &lists, &roots, &[]),
            [StillReachable, DefinitelyLost, DefinitelyLost]
        );
        let unknown: Vec<Candidate> = [0x1000, 0x2000, 0x3000]
            .into_iter()
            .map(|b| Candidate::new(b, 56, 0))
            .collect();
        assert_eq!(
            run(&memory, &unknown, &roots, &[]),
            [StillReachable, PossiblyLost, StillReachable]
        );
    }

    #[test]
    fn gc_list_links_are_not_references() {
        use LeakKind::*;
        // A root container's GC head links to the leaked object's GC head (0x1000); a real
        // reference would point at the object after the head (0x1010).
        let memory = Memory {
            words: vec![(0x1000, vec![0, 0, 0, 0]), (0x9000, vec![0x1000, 0x1000])],
        };
        let candidates = [Candidate::new(0x1000, 32, 0)];
        let roots = [Region::new(0x9000, 0x9010, false)];
        assert_eq!(
            run(&memory, &candidates, &roots, &[0x1000]),
            [DefinitelyLost]
        );
        let referenced = Memory {
            words: vec![(0x1000, vec![0, 0, 0, 0]), (0x9000, vec![0x1000, 0x1010])],
        };
        assert_eq!(
            run(&referenced, &candidates, &roots, &[0x1000]),
            [StillReachable]
        );
    }

    #[test]
    fn gc_heads_are_found_by_their_links() {
        // Three heads in a ring: 0x1000 <-> 0x2010 (after a 16-byte pre-header) <-> 0x3000.
        let memory = Memory {
            words: vec![
                (0x1000, vec![0x2010, 0x3000]),
                (0x2000, vec![0, 0, 0x3000, 0x1000 | 1]),
                (0x3000, vec![0x1000, 0x2010]),
                (0x4000, vec![0x5000, 0x6000]),
            ],
        };
        let mut read = |addr: usize| memory.read(addr, 8).first().copied();
        let first = memory.read(0x2000, 32);
        assert_eq!(gc_head(0x2000, &first, &mut read), Some(0x2010));
        let first = memory.read(0x1000, 16);
        assert_eq!(gc_head(0x1000, &first, &mut read), Some(0x1000));
        // Words that look like links but do not link back: no GC object.
        let first = memory.read(0x4000, 16);
        assert_eq!(gc_head(0x4000, &first, &mut read), None);
    }

    #[test]
    fn a_lost_cycle_has_one_definitely_lost_block() {
        use LeakKind::*;
        let memory = Memory {
            words: vec![(0x1000, vec![0x2000]), (0x2000, vec![0x1000])],
        };
        let candidates = [Candidate::new(0x1000, 8, 0), Candidate::new(0x2000, 8, 1)];
        assert_eq!(
            run(&memory, &candidates, &[], &[]),
            [DefinitelyLost, IndirectlyLost]
        );
    }

    #[test]
    fn what_hangs_off_a_possibly_lost_block_is_indirectly_lost() {
        use LeakKind::*;
        // A list A(0x3000) -> B(0x1000) -> C(0x2000) whose head a root points into, far from
        // its start: A is possibly lost, B and C hang off it (B comes first in memory, and
        // was once taken for the lowest block of a lost cycle: definitely lost).
        let memory = Memory {
            words: vec![
                (0x1000, vec![0x2000, 0, 0, 0]),
                (0x2000, vec![0, 0, 0, 0]),
                (0x3000, vec![0x1000, 0, 0, 0]),
                (0x9000, vec![0x3000 + 200]),
            ],
        };
        let candidates = [
            Candidate::new(0x1000, 256, 0),
            Candidate::new(0x2000, 256, 0),
            Candidate::new(0x3000, 256, 0),
        ];
        let roots = [Region::new(0x9000, 0x9008, false)];
        assert_eq!(
            run(&memory, &candidates, &roots, &[]),
            [IndirectlyLost, IndirectlyLost, PossiblyLost]
        );
    }

    #[test]
    fn roots_exclude_the_candidates_themselves() {
        use LeakKind::*;
        // The block points at itself and sits inside a root region: still lost.
        let memory = Memory {
            words: vec![(0x1000, vec![0x1000, 0])],
        };
        let candidates = [Candidate::new(0x1000, 16, 0)];
        let roots = [Region::new(0x0f00, 0x1100, false)];
        assert_eq!(run(&memory, &candidates, &roots, &[]), [DefinitelyLost]);
    }

    #[test]
    fn a_block_only_pointed_into_far_from_its_start_is_possibly_lost() {
        use LeakKind::*;
        let memory = Memory {
            words: vec![
                (0x1000, vec![0; 32]),
                (0x2000, vec![0; 32]),
                (0x9000, vec![0x1000 + 200, 0x2000 + 16]),
            ],
        };
        let candidates = [
            Candidate::new(0x1000, 256, 0),
            Candidate::new(0x2000, 256, 1),
        ];
        let roots = [Region::new(0x9000, 0x9010, false)];
        assert_eq!(
            run(&memory, &candidates, &roots, &[]),
            [PossiblyLost, StillReachable]
        );
    }
}
