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
//! A block that roots point into only far from its start (past [`START_WINDOW`], or at an
//! unaligned address) is **possibly lost**, as valgrind says: such a pointer may be a cursor into a live buffer, or
//! stale bytes in the unused tail of another block.
//!
//! CPython's cyclic GC links every tracked container into a list through the `PyGC_Head`
//! before the object; a word that points exactly at a candidate's GC head is that link, not
//! a reference, and is ignored.

use std::fs;

/// How a leaked block is classified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakKind {
    /// No pointer to it anywhere.
    DefinitelyLost,
    /// Pointed to only from lost blocks.
    IndirectlyLost,
    /// A root or a reachable block still points to it.
    StillReachable,
    /// Only pointers far into its interior (not to its start) were found.
    PossiblyLost,
}

/// An aligned pointer into a block's first bytes counts as a pointer to its start: an object
/// header or a base class may come first (CPython objects sit 16 or 32 bytes into their block).
pub const START_WINDOW: usize = 64;

/// A block to classify: `[start, end)` with the caller's site id.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    /// Tagged start address (see `tracker::TAG`): the scan's own tables never look like
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
}

const TAG: usize = 1 << (usize::BITS - 1);

impl Candidate {
    /// A candidate block at `start` of `size` bytes.
    pub fn new(start: usize, size: u64, site: u32) -> Candidate {
        Candidate {
            start_tagged: start | TAG,
            end_tagged: (start + size as usize) | TAG,
            usable_end_tagged: (start + size as usize) | TAG,
            site,
            size,
        }
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
}

/// An address kept with its top bit set while heapgate holds it, so that no table of the
/// scan (which lives in scanned heap memory, and leaves stale copies when freed) ever reads
/// as a pointer to a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Addr(usize);

impl Addr {
    /// Hold `address`.
    pub fn new(address: usize) -> Addr {
        Addr(address | TAG)
    }

    /// The address.
    pub fn get(self) -> usize {
        self.0 & !TAG
    }
}

/// A memory range to treat as a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: Addr,
    /// One past the last byte.
    pub end: Addr,
    /// Anonymous memory (where pymalloc's pools can be).
    pub anonymous: bool,
    /// The C library's main heap (`[heap]`), whose free chunks are not roots.
    pub heap: bool,
}

impl Region {
    /// `[start, end)`.
    pub fn new(start: usize, end: usize, anonymous: bool) -> Region {
        Region {
            start: Addr::new(start),
            end: Addr::new(end),
            anonymous,
            heap: false,
        }
    }
}

/// The free memory of glibc's main heap `[base, end)` (`base`: the heap's first byte, where
/// its first chunk starts), read a word at a time through `word_at` (None: unreadable): chunks
/// in bins (the next chunk's PREV_INUSE bit is clear), the top chunk, and the chunks the main
/// thread's tcache holds (the heap's first chunk; their links are mangled with safe-linking,
/// glibc 2.32+). Only chunk headers are read, so a large free chunk costs one jump. `None`
/// when the words do not walk as a heap: then nothing is masked. Free memory keeps whatever
/// it held, and a stale pointer there would hide a leak.
pub fn glibc_free_chunks(
    word_at: &mut dyn FnMut(usize) -> Option<usize>,
    base: usize,
    end: usize,
) -> Option<Vec<(usize, usize)>> {
    const PREV_INUSE: usize = 1;
    const TCACHE_STRUCT: usize = 0x290;
    let word = std::mem::size_of::<usize>();
    let mut at = |addr: usize| -> Option<usize> {
        (addr >= base && addr + word <= end && addr % word == 0)
            .then(|| word_at(addr))
            .flatten()
    };
    let mut free = Vec::new();
    let mut chunk = base;
    let mut previous: Option<usize> = None;
    let mut chunks = 0usize;
    while chunk + 2 * word <= end {
        let size_field = at(chunk + word)?;
        let size = size_field & !7;
        if size < 4 * word || size % (2 * word) != 0 || chunk + size > end {
            // The top chunk's size may run to the end; anything else means this is no heap.
            return (chunks > 0 && chunk + size >= end).then(|| {
                free.push((chunk, end));
                free
            });
        }
        if let Some(prev) = previous {
            if size_field & PREV_INUSE == 0 {
                free.push((prev, chunk));
            }
        }
        previous = Some(chunk);
        chunk += size;
        chunks += 1;
    }
    // The last chunk is the top: free space at the end of the heap.
    if let Some(prev) = previous {
        free.push((prev, end.min(chunk)));
    }
    // The main thread's tcache: counts (u16 x 64) then entries (64 pointers) in the first chunk.
    if at(base + word).map(|s| s & !7) == Some(TCACHE_STRUCT) {
        let counts_at = base + 2 * word;
        let entries_at = counts_at + 64 * 2;
        for bin in 0..64 {
            let count_word = at(counts_at + (bin * 2) / word * word)?;
            let count = (count_word >> (((bin * 2) % word) * 8)) & 0xffff;
            let mut entry = at(entries_at + bin * word)?;
            for _ in 0..count.min(4096) {
                let chunk = entry.wrapping_sub(2 * word);
                let Some(size) = at(chunk + word).map(|s| s & !7) else {
                    break;
                };
                if size < 4 * word || chunk + size > end {
                    break;
                }
                free.push((chunk + 2 * word, chunk + size));
                let Some(mangled) = at(entry) else { break };
                entry = (entry >> 12) ^ mangled;
                if entry == 0 {
                    break;
                }
            }
        }
    }
    free.sort_unstable();
    Some(free)
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

/// Clear, in `mask` (words from `base`), the words inside any of the sorted `ranges`.
pub fn mask_out_ranges(mask: &mut [bool], base: usize, ranges: &[(usize, usize)]) {
    let word = std::mem::size_of::<usize>();
    let end = base + mask.len() * word;
    let first = ranges.partition_point(|(_, e)| *e <= base);
    for &(start, stop) in &ranges[first..] {
        if start >= end {
            break;
        }
        let from = start.max(base) - base;
        let to = stop.min(end) - base;
        mask[from.div_ceil(word)..to / word].fill(false);
    }
}

/// pymalloc's pool geometry for the running CPython (the pool header layout is the same in
/// 3.9–3.13: `ref`, `freeblock`, `nextpool`, `prevpool`, `arenaindex`, `szidx`, `nextoffset`,
/// `maxnextoffset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLayout {
    /// Bytes per pool (a power of two; pools are aligned to it).
    pub pool_size: usize,
    /// Bytes of pool header before the first block.
    pub overhead: usize,
    /// log2 of the size-class granularity.
    pub alignment_shift: u32,
    /// The code object type (0: unknown). From `code_bytecode` bytes into a code object
    /// comes its bytecode with the interpreter's inline caches, whose object addresses are
    /// borrowed and go stale: no references.
    pub code_type: usize,
    /// Offset of a code object's bytecode.
    pub code_bytecode: usize,
}

/// Which words of a pool-sized, pool-aligned chunk can hold references: the words of blocks
/// in use, except each block's first word (a reference count, a GC link or, in a free block,
/// a free-list link — never a reference). Free blocks, never-used blocks and empty pools hold
/// only stale data. `None` when the chunk is not a pymalloc pool.
pub fn pool_mask(words: &[usize], base: usize, layout: &PoolLayout) -> Option<Vec<bool>> {
    let word = std::mem::size_of::<usize>();
    if std::mem::size_of_val(words) != layout.pool_size
        || base % layout.pool_size != 0
        || words.len() < 6
    {
        return None;
    }
    let count = words[0] & 0xffff_ffff;
    let freeblock = words[1];
    let header = &words[4..6];
    let szidx = header[0] >> 32;
    let nextoffset = header[1] & 0xffff_ffff;
    let maxnextoffset = header[1] >> 32;
    let size = (szidx + 1) << layout.alignment_shift;
    let capacity = (layout.pool_size - layout.overhead) / size.max(1);
    let plausible = szidx < 64
        && maxnextoffset == layout.pool_size - size
        && nextoffset >= layout.overhead
        && nextoffset <= layout.pool_size
        && (nextoffset - layout.overhead) % size == 0
        && count <= capacity
        && (freeblock == 0 || (freeblock > base && freeblock < base + layout.pool_size));
    if !plausible {
        return None;
    }
    let mut mask = vec![false; words.len()];
    if count == 0 {
        return Some(mask);
    }
    let mut in_use = vec![false; capacity];
    let used_blocks = ((nextoffset - layout.overhead) / size).min(capacity);
    in_use[..used_blocks].fill(true);
    // Walk the pool's free list (bounded, and only through block starts inside the pool).
    let mut free = freeblock;
    for _ in 0..capacity {
        if free == 0 || free < base + layout.overhead || free >= base + layout.pool_size {
            break;
        }
        let offset = free - base - layout.overhead;
        if offset % size != 0 {
            break;
        }
        let index = offset / size;
        if index >= capacity || !in_use[index] {
            break;
        }
        in_use[index] = false;
        free = words[(free - base) / word];
    }
    for i in (0..capacity).filter(|i| in_use[*i]) {
        let first = (layout.overhead + i * size) / word;
        let mut last = ((layout.overhead + (i + 1) * size) / word).min(words.len());
        if layout.code_type != 0 && first + 1 < last && words[first + 1] == layout.code_type {
            last = last.min(first + layout.code_bytecode / word);
        }
        if first + 1 < last {
            mask[first + 1..last].fill(true);
        }
    }
    Some(mask)
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
    /// Candidates bigger than this many pages are looked up directly (their pages would fill
    /// the filter).
    big: Vec<(usize, usize)>,
}

const PAGE_SHIFT: u32 = 12;
const FILTER_BITS_LOG2: u32 = 20;
const BIG_PAGES: usize = 256;

impl PageFilter {
    fn new(candidates: &[Candidate]) -> PageFilter {
        let mut filter = PageFilter {
            bits: vec![0; 1 << (FILTER_BITS_LOG2 - 6)],
            big: Vec::new(),
        };
        for c in candidates {
            let (first, last) = (
                c.start() >> PAGE_SHIFT,
                (c.start() + c.len().max(1) - 1) >> PAGE_SHIFT,
            );
            if last - first >= BIG_PAGES {
                filter.big.push((c.start(), c.start() + c.len()));
                continue;
            }
            for page in first..=last {
                let bit = Self::bit(page);
                filter.bits[bit >> 6] |= 1 << (bit & 63);
            }
        }
        filter
    }

    #[inline(always)]
    fn bit(page: usize) -> usize {
        page.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - FILTER_BITS_LOG2)
    }

    /// False when `word` surely points into no candidate.
    #[inline(always)]
    fn may_hold(&self, word: usize) -> bool {
        let bit = Self::bit(word >> PAGE_SHIFT);
        self.bits[bit >> 6] & (1 << (bit & 63)) != 0
            || self.big.iter().any(|(s, e)| *s <= word && word < *e)
    }
}

struct Scanner<'a> {
    candidates: &'a [Candidate],
    gc_heads: &'a [usize],
    lo: usize,
    hi: usize,
    filter: PageFilter,
}

impl Scanner<'_> {
    /// Candidates that `words` point into (GC-list links excluded), and whether the pointer
    /// is near the block's start.
    fn targets(&self, words: &[usize], mut hit: impl FnMut(usize, bool)) {
        for &w in words {
            if w < self.lo || w >= self.hi || !self.filter.may_hold(w) {
                continue;
            }
            if let Some(i) = find(self.candidates, w) {
                if self.gc_heads.binary_search(&(w | TAG)).is_err() {
                    // A reference to an object or a header is aligned; an odd address near
                    // the start is a cursor or stale bytes (a str's padding was seen).
                    let offset = w - self.candidates[i].start();
                    hit(
                        i,
                        offset < START_WINDOW && offset % std::mem::size_of::<usize>() == 0,
                    );
                }
            }
        }
    }
}

/// Hands every root word to the visitor it is given.
pub type RootWords<'a> = dyn FnMut(&mut dyn FnMut(&[usize])) + 'a;

/// Classify `candidates` (sorted by address, non-overlapping). `roots` hands every root word
/// to its argument (candidates' own words excluded: see [`mask_out_candidates`]);
/// `read_block` reads a candidate's words. `gc_heads`: addresses of CPython GC heads.
pub fn classify(
    candidates: &[Candidate],
    gc_heads: &[usize],
    roots: &mut RootWords<'_>,
    read_block: &dyn Fn(usize, usize) -> Vec<usize>,
) -> Vec<LeakKind> {
    let n = candidates.len();
    let mut kinds = vec![LeakKind::DefinitelyLost; n];
    if n == 0 {
        return kinds;
    }
    let mut heads: Vec<usize> = gc_heads.iter().map(|h| h | TAG).collect();
    heads.sort_unstable();
    let scanner = Scanner {
        candidates,
        gc_heads: &heads,
        lo: candidates[0].start(),
        hi: candidates[n - 1].end_tagged & !TAG,
        filter: PageFilter::new(candidates),
    };
    let mut reachable = vec![false; n];
    let mut interior = vec![false; n];
    let mut work = Vec::new();
    let mut reach = |i: usize, start: bool, work: &mut Vec<usize>| {
        if !start {
            interior[i] = true;
        } else if !reachable[i] {
            reachable[i] = true;
            work.push(i);
        }
    };
    roots(&mut |words| scanner.targets(words, |i, start| reach(i, start, &mut work)));
    while let Some(i) = work.pop() {
        let words = read_block(candidates[i].start(), candidates[i].len());
        scanner.targets(&words, |j, start| reach(j, start, &mut work));
    }
    // Among the unreachable: pointed to by another lost block → indirectly lost.
    let mut pointed = vec![false; n];
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in (0..n).filter(|i| !reachable[*i]) {
        let words = read_block(candidates[i].start(), candidates[i].len());
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
    // definitely lost, the rest indirectly (as they are reachable from it).
    let mut seen = vec![false; n];
    let definitely: Vec<usize> = (0..n)
        .filter(|i| kinds[*i] == LeakKind::DefinitelyLost)
        .collect();
    for i in definitely {
        mark_from(i, &edges, &mut seen);
    }
    for i in 0..n {
        if !reachable[i] && !interior[i] && !seen[i] {
            kinds[i] = LeakKind::DefinitelyLost;
            mark_from(i, &edges, &mut seen);
        }
    }
    kinds
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

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First byte.
    pub start: Addr,
    /// One past the last byte.
    pub end: Addr,
    /// `rwxp`-style permissions.
    pub perms: String,
    /// Path or pseudo-name (`[heap]`, `[stack]`), empty for anonymous memory.
    pub path: String,
}

/// Parse `/proc/PID/maps` text.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3).unwrap_or("").to_string();
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: Addr::new(usize::from_str_radix(start, 16).ok()?),
                end: Addr::new(usize::from_str_radix(end, 16).ok()?),
                perms: perms.to_string(),
                path,
            })
        })
        .collect()
}

/// Root regions of a process from its mappings: readable+writable memory, with the scanning
/// thread's stack taken from `own_stack_from` up, other threads' stacks cut to their live
/// part (`stack_pointers`, with the 128-byte red zone below each), and other thread stacks
/// (`is_thread_stack`: cached stacks of threads that ended, or of threads running right now)
/// left out.
pub fn root_regions(
    maps: &[Mapping],
    own_stack_from: usize,
    stack_pointers: &[usize],
    is_thread_stack: &mut dyn FnMut(usize, usize) -> bool,
) -> Vec<Region> {
    let mut regions = Vec::new();
    for m in maps {
        let bytes = m.perms.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'r' || bytes[1] != b'w' {
            continue;
        }
        if matches!(
            m.path.as_str(),
            "[vvar]" | "[vdso]" | "[vsyscall]" | "[vvar_vclock]"
        ) {
            continue;
        }
        let (start, end) = (m.start.get(), m.end.get());
        let anonymous = m.path.is_empty();
        if start <= own_stack_from && own_stack_from < end {
            regions.push(Region::new(own_stack_from, end, false));
            continue;
        }
        if let Some(sp) = stack_pointers.iter().find(|sp| start <= **sp && **sp < end) {
            // The red zone below the stack pointer may hold live values of a leaf function.
            regions.push(Region::new(sp.saturating_sub(128).max(start), end, false));
            continue;
        }
        if m.path == "[stack]" || (anonymous && is_thread_stack(start, end)) {
            continue;
        }
        let mut region = Region::new(start, end, anonymous);
        region.heap = m.path == "[heap]";
        regions.push(region);
    }
    regions
}

/// x86-64 glibc puts a thread's control block at the top of its stack mapping; it starts
/// with `tcb` and (two words on) `self`, both pointing at itself. Given the top `words` of a
/// mapping that ends at `end`, is that fingerprint there?
pub fn has_thread_control_block(words: &[usize], end: usize) -> bool {
    let word = std::mem::size_of::<usize>();
    let base = end - std::mem::size_of_val(words);
    words
        .iter()
        .enumerate()
        .take(words.len().saturating_sub(2))
        .any(|(i, w)| *w == base + i * word && words[i + 2] == *w)
}

/// Stack pointers of this process's other threads that are blocked (from
/// `/proc/self/task/*/syscall`); running threads do not report one, and the calling thread
/// (whose own file shows the `read` it is in) is left out.
pub fn blocked_thread_stack_pointers() -> Vec<usize> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    // SAFETY: gettid has no preconditions.
    let own = unsafe { libc::gettid() }.to_string();
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| t.file_name().to_str() != Some(own.as_str()))
        .filter_map(|t| fs::read_to_string(t.path().join("syscall")).ok())
        .filter_map(|text| {
            let fields: Vec<&str> = text.split_whitespace().collect();
            // "nr args... sp pc" or "-1 sp pc" when blocked; "running" otherwise.
            let sp = fields.len().checked_sub(2).filter(|_| fields.len() >= 3)?;
            usize::from_str_radix(fields[sp].trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Words of `[base, base + 8 * words.len())` as a `glibc_free_chunks` reader.
    fn words_reader(words: &[usize], base: usize) -> impl FnMut(usize) -> Option<usize> + '_ {
        move |addr| words.get(addr.checked_sub(base)? / 8).copied()
    }

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
        let mut visit_roots = |visit: &mut dyn FnMut(&[usize])| {
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
                visit(&kept);
            }
        };
        classify(candidates, heads, &mut visit_roots, &|s, l| {
            memory.read(s, l)
        })
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
    fn maps_give_live_stacks_and_skip_cached_ones() {
        let text = "\
55d0-55e0 r--p 00000000 08:01 1 /usr/bin/python3.11
55e0-55f0 rw-p 00010000 08:01 1 /usr/bin/python3.11
6000-7000 rw-p 00000000 00:00 0 [heap]
7000-8000 ---p 00000000 00:00 0
8000-9000 rw-p 00000000 00:00 0
9000-a000 ---p 00000000 00:00 0
a000-b000 rw-p 00000000 00:00 0
c000-d000 rw-p 00000000 00:00 0
f000-f800 rw-p 00000000 00:00 0 [stack]
ff00-ff10 r--p 00000000 00:00 0 [vvar]
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 10);
        let mut is_stack = |start: usize, _end: usize| start == 0x8000;
        let regions = root_regions(&maps, 0xf400, &[0xa800], &mut is_stack);
        let starts: Vec<(usize, usize)> = regions
            .iter()
            .map(|r| (r.start.get(), r.end.get()))
            .collect();
        assert_eq!(
            starts,
            [
                (0x55e0, 0x55f0),
                (0x6000, 0x7000),
                (0xa800 - 128, 0xb000),
                (0xc000, 0xd000),
                (0xf400, 0xf800)
            ]
        );
    }

    #[test]
    fn pools_scan_only_blocks_in_use_without_their_first_word() {
        let layout = PoolLayout {
            pool_size: 256,
            overhead: 48,
            alignment_shift: 4,
            code_type: 0xc0de,
            code_bytecode: 16,
        };
        let base = 0x10000;
        let mut words = vec![0usize; 32];
        // 4 blocks of 32 bytes (szidx 1) were handed out; block 1 is free again.
        let size = 32;
        words[0] = 3; // count
        words[1] = base + 48 + size; // freeblock -> block 1
        words[4] = 1usize << 32; // arenaindex 0, szidx 1
        words[5] = ((256 - size) << 32) | (48 + 4 * size); // maxnextoffset, nextoffset
        let mask = pool_mask(&words, base, &layout).expect("a pool");
        let scanned: Vec<usize> = (0..32).filter(|i| mask[*i]).collect();
        // blocks 0, 2, 3 at words 6.., 14.., 18..; each 4 words, first skipped.
        assert_eq!(scanned, [7, 8, 9, 15, 16, 17, 19, 20, 21]);
        // Block 2 is a code object: its words from the bytecode on hold no references.
        words[14 + 1] = 0xc0de;
        let mask = pool_mask(&words, base, &layout).expect("a pool");
        let scanned: Vec<usize> = (0..32).filter(|i| mask[*i]).collect();
        assert_eq!(scanned, [7, 8, 9, 15, 19, 20, 21]);
        words[5] = 12345;
        assert!(pool_mask(&words, base, &layout).is_none());
    }

    #[test]
    fn a_thread_control_block_is_recognised() {
        let end = 0x2000;
        let mut words = vec![0usize; 16];
        let at = end - 16 * 8 + 5 * 8;
        words[5] = at;
        words[7] = at;
        assert!(has_thread_control_block(&words, end));
        words[7] = 0;
        assert!(!has_thread_control_block(&words, end));
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

    #[test]
    fn free_chunks_of_a_glibc_heap() {
        let base = 0x10000;
        // tcache struct (0x290), an in-use chunk (0x30), a free chunk (0x40, next has
        // PREV_INUSE clear), an in-use chunk (0x20), then the top (0x100).
        let mut words = vec![0usize; (0x290 + 0x30 + 0x40 + 0x20 + 0x100) / 8];
        let put = |words: &mut Vec<usize>, addr: usize, v: usize| words[(addr - base) / 8] = v;
        put(&mut words, base + 8, 0x291);
        let a = base + 0x290;
        put(&mut words, a + 8, 0x31);
        let b = a + 0x30;
        put(&mut words, b + 8, 0x41);
        let c = b + 0x40;
        put(&mut words, c + 8, 0x20); // PREV_INUSE clear: b is free
        let top = c + 0x20;
        put(&mut words, top + 8, 0x101);
        // tcache bin 0 holds chunk `a` (count 1, entry -> a's user data).
        put(&mut words, base + 16, 1);
        put(&mut words, base + 16 + 128, a + 16);
        put(&mut words, a + 16, (a + 16) >> 12); // mangled NULL
        let end = base + words.len() * 8;
        let free =
            glibc_free_chunks(&mut words_reader(&words, base), base, end).expect("walks as a heap");
        assert_eq!(free, vec![(a + 16, a + 0x30), (b, c), (top, top + 0x100)]);
        let mut mask = vec![true; words.len()];
        mask_out_ranges(&mut mask, base, &free);
        assert!(mask[(a - base) / 8 + 1] && !mask[(a - base) / 8 + 2] && !mask[(b - base) / 8]);
        assert!(glibc_free_chunks(&mut words_reader(&[0, 3, 5], 0x1000), 0x1000, 0x1018).is_none());
    }
}
