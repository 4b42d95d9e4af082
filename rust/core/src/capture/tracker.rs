//! Exact per-test accounting: the live table, the frame trie that interns stacks, and the
//! per-site peak attribution (O(1) per event, see DESIGN.md "capture").
//!
//! This module is plain data: no locks, no hooks, no `unsafe`. The capture layer feeds it
//! events under its lock; unit tests feed it events directly.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hash, Hasher};

use rustc_hash::FxHashMap;

use super::tagged::{tagged, untagged};
use crate::model::{
    Allocator, Frame, LeakKind, LeakKinds, SiteCounts, SiteReport, TestReport, Totals,
};

/// A frame as the capture layer sees it: cheap to compare, resolved to names once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrameKey {
    /// A Python frame: code object address and current line.
    Python {
        /// Address of the code object (alive while the frame runs).
        code: usize,
        /// Line being executed.
        line: u32,
    },
    /// A native return address (symbolized lazily, at report time).
    Native(usize),
}

impl FrameKey {
    /// The key as the trie's caches keep it beyond a test (its edge cache and each node's
    /// last edge): its address tagged, so that the leak scan never reads a copy in heapgate's
    /// memory as a reference to a block that reuses the code object's memory later.
    #[inline]
    fn held(self) -> FrameKey {
        match self {
            FrameKey::Python { code, line } => FrameKey::Python {
                code: tagged(code),
                line,
            },
            FrameKey::Native(address) => FrameKey::Native(tagged(address)),
        }
    }
}

/// Names of a code object, as the Python layer reads them: (function, filename).
pub type CodeNames = (String, String);

const ROOT: u32 = 0;

#[derive(Clone, Copy, Debug)]
struct TrieNode {
    parent: u32,
    frame: u32,
    /// The edge last taken from this node (child 0: none): a stack that repeats a path
    /// takes the same edges again, and a path's nodes, made one after another, lie together,
    /// where the [`EdgeCache`]'s slots are scattered. The key is held tagged, as there.
    last_key: FrameKey,
    last_child: u32,
}

impl TrieNode {
    fn new(parent: u32, frame: u32) -> TrieNode {
        TrieNode {
            parent,
            frame,
            last_key: FrameKey::Native(0),
            last_child: ROOT,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct LiveBlock {
    size: u64,
    site: u32,
}

/// A heap block as the live table keeps it: with its key, 16 bytes a bucket instead of 24,
/// so a table of millions of blocks spreads over a third fewer cache lines (each event misses
/// on one at that size). A size of [`BIG`] or more is kept in [`Tracker`]'s `big_sizes`.
#[derive(Clone, Copy, Debug)]
struct HeapBlock {
    size: u32,
    site: u32,
}

/// The [`HeapBlock`] size that says "see `big_sizes`" (blocks of 4 GiB and more).
const BIG: u32 = u32::MAX;

/// `size` as a [`HeapBlock`] keeps it, if it fits.
#[inline]
fn fitted(size: u64) -> Option<u32> {
    u32::try_from(size).ok().filter(|&s| s != BIG)
}

/// The live table's hash keeps neighbours together: blocks in one window of
/// `16 << LIVE_WINDOW_BITS` bytes of address space (32 KiB) land in neighbouring buckets, in
/// address order, and each window lands at a pseudo-random place in the table. A program
/// allocates and frees mostly in address order (an allocator carves consecutive blocks out of
/// one chunk or pool), so consecutive events touch the same few cache lines and pages of a
/// table that at two million blocks is far larger than the caches: measured with two million
/// live blocks, 20-30 ns per insert or remove against 80-300 ns with a hash that scatters
/// every address (FxHash). Blocks are at least 16-byte aligned, so no two live blocks of one
/// window share a home bucket; windows collide only as a hash's keys do.
const LIVE_WINDOW_BITS: u32 = 11;

/// Hashes a tagged block address for the live table (see [`LIVE_WINDOW_BITS`]). The bucket
/// index comes from the low bits, the 7-bit tag the table compares first from the top bits.
#[derive(Clone, Copy, Default)]
struct LiveHash;

/// The [`LiveHash`] of one key.
#[derive(Default)]
struct LiveHasher(u64);

impl BuildHasher for LiveHash {
    type Hasher = LiveHasher;
    fn build_hasher(&self) -> LiveHasher {
        LiveHasher(0)
    }
}

impl Hasher for LiveHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Keys are `usize`, hashed by `write_usize`; anything else folds in byte by byte.
        for &b in bytes {
            self.write_usize(self.0 as usize ^ usize::from(b));
        }
    }

    #[inline]
    fn write_usize(&mut self, key: usize) {
        let addr = untagged(key) as u64;
        let slot = (addr >> 4) & ((1 << LIVE_WINDOW_BITS) - 1);
        let window = (addr >> (4 + LIVE_WINDOW_BITS)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        let tag = addr.wrapping_mul(0xF135_7AEA_2E62_A9C5) & (0x7F << 57);
        self.0 = ((slot | window << LIVE_WINDOW_BITS) & ((1 << 57) - 1)) | tag;
    }
}

/// Live blocks the table makes room for at once when a test outgrows [`LIVE_SMALL`]: a hash
/// table doubles by rehashing every entry, which at a million entries costs more than the
/// events.
const LIVE_SIZED_FOR: usize = 1 << 20;

/// Live blocks a test's table starts with room for. Clearing a table writes all its control
/// bytes, 2 MiB at [`LIVE_SIZED_FOR`]: most tests end with a few blocks live, and bitarray's
/// 718 tests spent some 70 ms clearing a table sized for a million. A big table is kept aside
/// meanwhile (see `Tracker::spare_live`).
const LIVE_SMALL: usize = 1 << 14;

/// Is `table` a big live table (room for [`LIVE_SIZED_FOR`]), not a small one? A live table
/// is one or the other: it leaves the small size only by [`Tracker::outgrow_small_live`].
fn is_big(table: &HashMap<usize, HeapBlock, LiveHash>) -> bool {
    table.capacity() >= LIVE_SIZED_FOR
}

/// Slots of [`EdgeCache`] (a power of two).
const EDGE_SLOTS: usize = 1 << 12;

/// The trie's recent edges, (parent node, frame) to child node, in a direct-mapped table:
/// a native stack differs from the last one in its innermost frames, and each of those
/// costs two hash-table lookups (the frame's id, then the edge) without it. Slots outlive
/// their test, so their keys are held tagged (see [`FrameKey::held`]).
struct EdgeCache {
    slots: Box<[EdgeSlot]>,
    /// The tracker's resets so far: slots of an earlier test are stale.
    epoch: u32,
}

#[derive(Clone, Copy)]
struct EdgeSlot {
    epoch: u32,
    parent: u32,
    child: u32,
    key: FrameKey,
}

impl Default for EdgeCache {
    fn default() -> Self {
        let empty = EdgeSlot {
            epoch: 0,
            parent: 0,
            child: 0,
            key: FrameKey::Native(0),
        };
        EdgeCache {
            slots: vec![empty; EDGE_SLOTS].into_boxed_slice(),
            epoch: 1,
        }
    }
}

impl EdgeCache {
    #[inline]
    fn slot(parent: u32, key: &FrameKey) -> usize {
        let mut h = rustc_hash::FxHasher::default();
        h.write_u32(parent);
        key.hash(&mut h);
        // The hash's high bits are its best mixed.
        (h.finish() >> (64 - EDGE_SLOTS.trailing_zeros())) as usize
    }

    /// The child of `parent` along `held` (a key as [`FrameKey::held`] makes it), if cached.
    #[inline]
    fn get(&self, parent: u32, held: &FrameKey) -> Option<u32> {
        let s = &self.slots[Self::slot(parent, held)];
        (s.epoch == self.epoch && s.parent == parent && s.key == *held).then_some(s.child)
    }

    /// Cache the edge from `parent` along `held` (see [`FrameKey::held`]) to `child`.
    #[inline]
    fn put(&mut self, parent: u32, held: FrameKey, child: u32) {
        let epoch = self.epoch;
        self.slots[Self::slot(parent, &held)] = EdgeSlot {
            epoch,
            parent,
            child,
            key: held,
        };
    }

    /// Forget every edge (the trie was cleared).
    fn clear(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // Wrapped: slots of 2^32 resets ago would look current.
            self.slots.iter_mut().for_each(|s| s.epoch = 0);
            self.epoch = 1;
        }
    }
}

/// Statistics of one allocation site (a stack and an allocator).
#[derive(Clone, Debug)]
struct Site {
    node: u32,
    allocator: Allocator,
    current: u64,
    current_count: u64,
    at_peak: u64,
    at_peak_count: u64,
    epoch: u64,
    total: u64,
    total_count: u64,
}

/// The accounting state of one tracked test.
#[derive(Default)]
pub struct Tracker {
    nodes: Vec<TrieNode>,
    node_index: FxHashMap<(u32, u32), u32>,
    edges: EdgeCache,
    frames: Vec<Frame>,
    frame_index: FxHashMap<FrameKey, u32>,
    sites: Vec<Site>,
    site_index: FxHashMap<(u32, Allocator), u32>,
    live: HashMap<usize, HeapBlock, LiveHash>,
    /// The live table not in use, not cleared: a table grown for a big test waits here while
    /// small tests use a small one, and comes back (cleared then) when a test outgrows that.
    /// A fresh table of a million entries instead cost the suite bench's big tests 25-45 ns an
    /// event, faulting its pages in again.
    spare_live: HashMap<usize, HeapBlock, LiveHash>,
    /// Sizes of the live blocks too large for a [`HeapBlock`], by key.
    big_sizes: FxHashMap<usize, u64>,
    mappings: BTreeMap<usize, LiveBlock>,
    current: u64,
    current_count: u64,
    peak: u64,
    peak_count: u64,
    peak_epoch: u64,
    total: u64,
    total_count: u64,
    leak_kinds: Option<Vec<LeakKinds>>,
    /// The last interned stack, outermost frame first, and the trie node after each frame.
    last_stack: Vec<FrameKey>,
    last_path: Vec<u32>,
    /// The last site looked up: (node, allocator, site).
    last_site: Option<(u32, Allocator, u32)>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Tracker {
        let mut t = Tracker::default();
        t.reset();
        t
    }

    /// Forget everything (keeps allocated capacity, so a session does not regrow its tables).
    pub fn reset(&mut self) {
        self.nodes.clear();
        self.nodes.push(TrieNode::new(ROOT, u32::MAX));
        self.node_index.clear();
        self.edges.clear();
        self.frames.clear();
        self.frame_index.clear();
        self.sites.clear();
        self.site_index.clear();
        if is_big(&self.live) {
            // Set aside uncleared; the small table (or an empty one) takes over.
            std::mem::swap(&mut self.live, &mut self.spare_live);
        }
        self.live.clear();
        self.live.reserve(LIVE_SMALL);
        self.big_sizes.clear();
        self.mappings.clear();
        self.current = 0;
        self.current_count = 0;
        self.peak = 0;
        self.peak_count = 0;
        self.peak_epoch = 0;
        self.total = 0;
        self.total_count = 0;
        self.leak_kinds = None;
        self.last_stack.clear();
        self.last_path.clear();
        self.last_site = None;
    }

    /// Every live block (heap blocks, then mappings) for a leak scan: its address, size, site
    /// and allocator (`None` for a mapping).
    pub fn live_blocks(&self) -> impl Iterator<Item = (usize, u64, u32, Option<Allocator>)> + '_ {
        let heap = self.live.iter().map(|(key, b)| {
            let allocator = self.sites[b.site as usize].allocator;
            let size = match b.size {
                BIG => self.big_sizes.get(key).copied().unwrap_or(u64::from(BIG)),
                size => u64::from(size),
            };
            (untagged(*key), size, b.site, Some(allocator))
        });
        let mapped = self
            .mappings
            .iter()
            .map(|(key, b)| (untagged(*key), b.size, b.site, None));
        heap.chain(mapped)
    }

    /// How many blocks [`Tracker::live_blocks`] yields.
    pub fn live_block_count(&self) -> usize {
        self.live.len() + self.mappings.len()
    }

    /// The stack of a site (as in a candidate's `site`), allocating frame first.
    pub fn site_stack(&self, site: u32) -> impl Iterator<Item = &Frame> {
        let mut node = self.sites[site as usize].node;
        std::iter::from_fn(move || {
            (node != ROOT).then(|| {
                let n = self.nodes[node as usize];
                node = n.parent;
                &self.frames[n.frame as usize]
            })
        })
    }

    /// All live blocks by reachability, when a leak scan ran.
    pub fn leak_totals(&self) -> Option<LeakKinds> {
        self.leak_kinds.as_ref().map(|kinds| {
            let mut total = LeakKinds::default();
            kinds.iter().for_each(|k| total += *k);
            total
        })
    }

    /// Record the scan's verdict: each classified block's site, kind and size.
    pub fn set_leak_kinds(&mut self, verdicts: impl IntoIterator<Item = (u32, LeakKind, u64)>) {
        let mut per_site = vec![LeakKinds::default(); self.sites.len()];
        for (site, kind, size) in verdicts {
            per_site[site as usize].add(kind, size);
        }
        self.leak_kinds = Some(per_site);
    }

    /// Intern a stack given allocating frame first; `describe` names a code object the first
    /// time one of its frames is seen. Returns the trie node of the whole stack. The last
    /// stack and its trie path are remembered: the outer frames it shares with the next stack
    /// cost one comparison each, and only the frames that differ are looked up (a loop that
    /// allocates from one line costs one comparison per frame, no lookup).
    pub fn intern_stack<I>(
        &mut self,
        innermost_first: I,
        describe: &mut dyn FnMut(usize) -> CodeNames,
    ) -> u32
    where
        I: IntoIterator<Item = FrameKey>,
        I::IntoIter: DoubleEndedIterator + Clone,
    {
        let outer_first = innermost_first.into_iter().rev();
        let shared = outer_first
            .clone()
            .zip(&self.last_stack)
            .take_while(|(key, last)| key == *last)
            .count();
        self.last_stack.truncate(shared);
        self.last_path.truncate(shared);
        let mut node = self.last_path.last().copied().unwrap_or(ROOT);
        for key in outer_first.skip(shared) {
            node = self.child(node, key, describe);
            self.last_stack.push(key);
            self.last_path.push(node);
        }
        node
    }

    /// Intern the frames `outer_first` below `start` (a node of this test's trie, or the root
    /// 0), writing the node reached after each frame into `path` (as long as the frames).
    /// Returns the last node (`start` when there are no frames).
    pub fn intern_below<I>(
        &mut self,
        start: u32,
        outer_first: I,
        path: &mut [u32],
        describe: &mut dyn FnMut(usize) -> CodeNames,
    ) -> u32
    where
        I: IntoIterator<Item = FrameKey>,
    {
        let mut node = start;
        for (key, slot) in outer_first.into_iter().zip(path) {
            node = self.child(node, key, describe);
            *slot = node;
        }
        node
    }

    /// The trie node for frame `key` called from `node`.
    fn child(
        &mut self,
        node: u32,
        key: FrameKey,
        describe: &mut dyn FnMut(usize) -> CodeNames,
    ) -> u32 {
        let held = key.held();
        let last = &self.nodes[node as usize];
        if last.last_child != ROOT && last.last_key == held {
            return last.last_child;
        }
        let child = match self.edges.get(node, &held) {
            Some(child) => child,
            None => {
                let frame = self.intern_frame(key, describe);
                let next = self.nodes.len() as u32;
                let child = *self.node_index.entry((node, frame)).or_insert_with(|| {
                    self.nodes.push(TrieNode::new(node, frame));
                    next
                });
                self.edges.put(node, held, child);
                child
            }
        };
        let last = &mut self.nodes[node as usize];
        last.last_key = held;
        last.last_child = child;
        child
    }

    fn intern_frame(&mut self, key: FrameKey, describe: &mut dyn FnMut(usize) -> CodeNames) -> u32 {
        if let Some(id) = self.frame_index.get(&key) {
            return *id;
        }
        let frame = match key {
            FrameKey::Python { code, line } => {
                let (function, filename) = describe(code);
                Frame::Python {
                    function,
                    filename,
                    line,
                }
            }
            FrameKey::Native(addr) => Frame::Native(addr),
        };
        let id = self.frames.len() as u32;
        self.frames.push(frame);
        self.frame_index.insert(key, id);
        id
    }

    fn site(&mut self, node: u32, allocator: Allocator) -> u32 {
        if let Some((n, a, site)) = self.last_site {
            if (n, a) == (node, allocator) {
                return site;
            }
        }
        let next = self.sites.len() as u32;
        let epoch = self.peak_epoch;
        let site = *self.site_index.entry((node, allocator)).or_insert_with(|| {
            self.sites.push(Site {
                node,
                allocator,
                current: 0,
                current_count: 0,
                // A new site held nothing at the last peak.
                at_peak: 0,
                at_peak_count: 0,
                epoch,
                total: 0,
                total_count: 0,
            });
            next
        });
        self.last_site = Some((node, allocator, site));
        site
    }

    /// Snapshot a site's value at the current peak before its first change after that peak.
    fn touch(&mut self, site: u32) -> &mut Site {
        let epoch = self.peak_epoch;
        let s = &mut self.sites[site as usize];
        if s.epoch != epoch {
            s.at_peak = s.current;
            s.at_peak_count = s.current_count;
            s.epoch = epoch;
        }
        s
    }

    fn add(&mut self, site: u32, size: u64) {
        let s = self.touch(site);
        s.current += size;
        s.current_count += 1;
        s.total += size;
        s.total_count += 1;
        self.current += size;
        self.current_count += 1;
        self.total += size;
        self.total_count += 1;
        if self.current > self.peak {
            self.peak = self.current;
            self.peak_count = self.current_count;
            self.peak_epoch += 1;
        }
    }

    fn remove(&mut self, block: LiveBlock) {
        let s = self.touch(block.site);
        s.current -= block.size;
        s.current_count -= 1;
        self.current -= block.size;
        self.current_count -= 1;
    }

    /// A heap block of `size` bytes at `addr` was allocated at stack `node`.
    pub fn on_alloc(&mut self, addr: usize, size: u64, allocator: Allocator, node: u32) {
        let site = self.site(node, allocator);
        let key = tagged(addr);
        // An address we still hold was freed behind our back (an untracked path): it is
        // replaced, and removed from the counts before the new block is added.
        if let Some(old) = self.insert_live(key, LiveBlock { size, site }) {
            self.remove(old);
        }
        self.add(site, size);
    }

    /// The heap block at `addr` was freed. Returns what it was, if it was ours, so that a
    /// failed `realloc` can put it back with [`Tracker::restore`].
    pub fn on_free(&mut self, addr: usize) -> Option<RemovedBlock> {
        let key = tagged(addr);
        let block = self.live.remove(&key)?;
        let block = self.unpack(key, block);
        self.remove(block);
        Some(RemovedBlock { key, block })
    }

    /// Put back a block taken by [`Tracker::on_free`] (its `realloc` failed).
    pub fn restore(&mut self, removed: RemovedBlock) {
        let RemovedBlock { key, block } = removed;
        let s = self.touch(block.site);
        s.current += block.size;
        s.current_count += 1;
        self.current += block.size;
        self.current_count += 1;
        self.insert_live(key, block);
    }

    /// Put `block` in the live table at `key` (its size beside the table when too large for
    /// a [`HeapBlock`]); returns the block it replaced there, if any.
    #[inline]
    fn insert_live(&mut self, key: usize, block: LiveBlock) -> Option<LiveBlock> {
        let fitted = fitted(block.size);
        let packed = HeapBlock {
            size: fitted.unwrap_or(BIG),
            site: block.site,
        };
        if self.live.len() == self.live.capacity() && !is_big(&self.live) {
            self.outgrow_small_live();
        }
        // The replaced block's size is taken from beside the table before this one's goes there.
        let old = self
            .live
            .insert(key, packed)
            .map(|old| self.unpack(key, old));
        if fitted.is_none() {
            self.big_sizes.insert(key, block.size);
        }
        old
    }

    /// The test outgrew the small live table: move to the big one set aside, or make one.
    #[cold]
    fn outgrow_small_live(&mut self) {
        if is_big(&self.spare_live) {
            self.spare_live.clear();
            self.spare_live.extend(self.live.drain());
            std::mem::swap(&mut self.live, &mut self.spare_live);
        } else {
            self.live.reserve(LIVE_SIZED_FOR - self.live.len());
        }
    }

    /// The block a live table entry taken out at `key` stands for.
    #[inline]
    fn unpack(&mut self, key: usize, block: HeapBlock) -> LiveBlock {
        let size = match block.size {
            BIG => {
                let size = self.big_sizes.remove(&key);
                debug_assert!(
                    size.is_some(),
                    "a big block's size is kept beside the table"
                );
                size.unwrap_or(u64::from(BIG))
            }
            size => u64::from(size),
        };
        LiveBlock {
            size,
            site: block.site,
        }
    }

    /// `len` bytes were mapped at `addr` (any previous mapping there is replaced).
    pub fn on_mmap(&mut self, addr: usize, len: u64, node: u32) {
        self.on_munmap(addr, len);
        let site = self.site(node, Allocator::Mmap);
        self.mappings
            .insert(tagged(addr), LiveBlock { size: len, site });
        self.add(site, len);
    }

    /// `[addr, addr + len)` was unmapped: whole or partial overlaps with tracked mappings end.
    /// Returns the tracked bytes that were in the range.
    pub fn on_munmap(&mut self, addr: usize, len: u64) -> u64 {
        let end = addr.saturating_add(len as usize);
        if len == 0 || self.mappings.is_empty() {
            return 0;
        }
        let mut released = 0;
        let overlapping: Vec<(usize, LiveBlock)> = self
            .mappings
            .range(..tagged(end))
            .rev()
            .take_while(|(start, b)| untagged(**start) + b.size as usize > addr)
            .map(|(s, b)| (untagged(*s), *b))
            .collect();
        for (start, block) in overlapping {
            self.mappings.remove(&tagged(start));
            self.remove(block);
            released += block.size;
            let block_end = start + block.size as usize;
            // Keep the parts of the mapping outside the unmapped range.
            for (piece_start, piece_end) in
                [(start, addr.max(start)), (end.min(block_end), block_end)]
            {
                if piece_end > piece_start {
                    let piece = LiveBlock {
                        size: (piece_end - piece_start) as u64,
                        site: block.site,
                    };
                    self.mappings.insert(tagged(piece_start), piece);
                    let s = self.touch(block.site);
                    s.current += piece.size;
                    s.current_count += 1;
                    self.current += piece.size;
                    self.current_count += 1;
                    released -= piece.size;
                }
            }
        }
        released
    }

    /// Tracked bytes mapped in `[addr, addr + len)`.
    pub fn mapped_in(&self, addr: usize, len: u64) -> u64 {
        let end = addr.saturating_add(len as usize);
        self.mappings
            .range(..tagged(end))
            .rev()
            .take_while(|(start, b)| untagged(**start) + b.size as usize > addr)
            .map(|(start, b)| {
                let start = untagged(*start);
                let piece_end = (start + b.size as usize).min(end);
                (piece_end - start.max(addr)) as u64
            })
            .sum()
    }

    /// Live tracked bytes right now.
    pub fn current_bytes(&self) -> u64 {
        self.current
    }

    /// The finished test's numbers so far, the trie copied (the tracker goes on).
    pub fn report(&self) -> TestReport {
        self.export(self.frames.clone())
    }

    /// The finished test's numbers, its frames moved out: the tracker is empty afterwards
    /// (as after [`Tracker::reset`]), its tables keep their capacity.
    pub fn take_report(&mut self) -> TestReport {
        let frames = std::mem::take(&mut self.frames);
        let report = self.export(frames);
        self.reset();
        report
    }

    /// The report over `frames` (this tracker's): sites sorted by bytes at peak, then leaked
    /// bytes. The trie is the tracker's own, one node shorter (no root sentinel).
    fn export(&self, frames: Vec<Frame>) -> TestReport {
        // Tracker node n is report node n - 1; the root (0) is no node.
        let node = |n: u32| (n != ROOT).then(|| n - 1);
        let nodes = self.nodes[1..]
            .iter()
            .map(|n| crate::model::TrieNode {
                parent: node(n.parent),
                frame: n.frame,
            })
            .collect();
        let kinds = self.leak_kinds.as_deref();
        let mut sites: Vec<SiteReport> = self
            .sites
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (bytes_at_peak, count_at_peak) = if s.epoch == self.peak_epoch {
                    (s.at_peak, s.at_peak_count)
                } else {
                    (s.current, s.current_count)
                };
                SiteReport {
                    allocator: s.allocator,
                    node: node(s.node),
                    counts: SiteCounts {
                        bytes_at_peak,
                        count_at_peak,
                        leaked_bytes: s.current,
                        leaked_count: s.current_count,
                        total_bytes: s.total,
                        total_count: s.total_count,
                    },
                    leak_kinds: kinds.and_then(|k| k.get(i)).copied(),
                }
            })
            .collect();
        sites.sort_by(|a, b| {
            let key = |c: &SiteCounts| (c.bytes_at_peak, c.leaked_bytes, c.total_bytes);
            key(&b.counts).cmp(&key(&a.counts))
        });
        TestReport {
            totals: Totals {
                peak_bytes: self.peak,
                peak_count: self.peak_count,
                total_bytes: self.total,
                total_count: self.total_count,
                leaked_bytes: self.current,
                leaked_count: self.current_count,
                leak_kinds: self.leak_totals(),
            },
            frames,
            nodes,
            sites,
        }
    }
}

/// A block removed from the live table, kept so a failed `realloc` can restore it.
#[derive(Clone, Copy, Debug)]
pub struct RemovedBlock {
    key: usize,
    block: LiveBlock,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(code: usize) -> CodeNames {
        (format!("f{code}"), "t.py".to_string())
    }

    fn node(t: &mut Tracker, codes: &[usize]) -> u32 {
        let keys: Vec<FrameKey> = codes
            .iter()
            .map(|c| FrameKey::Python { code: *c, line: 1 })
            .collect();
        t.intern_stack(keys, &mut names)
    }

    fn at_peak(r: &TestReport, function: &str) -> u64 {
        (0..r.sites.len())
            .filter(|&i| {
                matches!(&r.site_stack(i)[0], Frame::Python { function: f, .. } if f == function)
            })
            .map(|i| r.sites[i].counts.bytes_at_peak)
            .sum()
    }

    #[test]
    fn peak_is_attributed_to_sites_live_at_that_moment() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[1]);
        let b = node(&mut t, &[2]);
        t.on_alloc(0x10, 100, Allocator::Malloc, a);
        t.on_alloc(0x20, 50, Allocator::Malloc, b);
        t.on_free(0x10);
        t.on_alloc(0x30, 30, Allocator::Malloc, b);
        let r = t.report();
        assert_eq!(r.totals.peak_bytes, 150);
        assert_eq!(at_peak(&r, "f1"), 100);
        assert_eq!(at_peak(&r, "f2"), 50);
        assert_eq!(r.totals.leaked_bytes, 80);
        assert_eq!(r.totals.total_bytes, 180);
    }

    #[test]
    fn a_later_higher_peak_moves_attribution() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[1]);
        let b = node(&mut t, &[2]);
        t.on_alloc(0x10, 100, Allocator::Malloc, a);
        t.on_free(0x10);
        t.on_alloc(0x20, 150, Allocator::Calloc, b);
        let r = t.report();
        assert_eq!(r.totals.peak_bytes, 150);
        assert_eq!(at_peak(&r, "f1"), 0);
        assert_eq!(at_peak(&r, "f2"), 150);
        assert_eq!(r.sites[0].allocator, Allocator::Calloc);
        assert_eq!(r.totals.peak_count, 1);
    }

    #[test]
    fn stacks_are_interned_and_reported_innermost_first() {
        let mut t = Tracker::new();
        let n1 = node(&mut t, &[3, 2, 1]);
        let n2 = node(&mut t, &[3, 2, 1]);
        let n3 = node(&mut t, &[4, 2, 1]);
        assert_eq!(n1, n2);
        assert_ne!(n1, n3);
        t.on_alloc(1, 8, Allocator::PyObj, n1);
        let r = t.report();
        let stack = r.site_stack(0);
        let functions: Vec<&str> = stack
            .iter()
            .map(|f| match f {
                Frame::Python { function, .. } => function.as_str(),
                Frame::Native(_) => "?",
            })
            .collect();
        assert_eq!(functions, ["f3", "f2", "f1"]);
        // The leak scan reads a candidate's stack the same way, without a report.
        let site = t.live_blocks().next().expect("a live block").2;
        let stack: Vec<&Frame> = t.site_stack(site).collect();
        assert_eq!(stack, r.site_stack(0).iter().collect::<Vec<_>>());
    }

    #[test]
    fn a_big_live_table_waits_aside_while_tests_are_small() {
        let mut t = Tracker::new();
        let site = node(&mut t, &[1]);
        let small = t.live.capacity();
        assert!((LIVE_SMALL..LIVE_SIZED_FOR).contains(&small));
        let fill = |t: &mut Tracker, n: usize, from: usize| {
            for i in 0..n {
                t.on_alloc(16 * (from + i + 1), 8, Allocator::Malloc, site);
            }
        };
        // Outgrowing the small table jumps to room for a million at once.
        fill(&mut t, small + 1, 0);
        let big = t.live.capacity();
        assert!(big >= LIVE_SIZED_FOR);
        assert_eq!(t.live.len(), small + 1);
        // The next test starts small; the big table waits, uncleared.
        t.reset();
        assert_eq!(t.live.capacity(), small);
        assert_eq!(t.live.len(), 0);
        assert_eq!(t.spare_live.capacity(), big);
        // A test that outgrows the small table again gets the big one back, cleared, with
        // the blocks it had so far.
        let site = node(&mut t, &[1]);
        t.on_alloc(8, 8, Allocator::Malloc, site);
        fill(&mut t, small, 1000);
        assert_eq!(t.live.capacity(), big);
        assert_eq!(t.live.len(), small + 1);
        assert!(t.on_free(8).is_some());
        assert!(t.on_free(16 * (1000 + small)).is_some());
        assert!(t.on_free(16).is_none());
        assert_eq!(t.report().totals.leaked_bytes, 8 * (small as u64 - 1));
    }

    #[test]
    fn a_node_keeps_its_last_edge_and_still_tells_its_children_apart() {
        let mut t = Tracker::new();
        // Two callees of one caller, in turn: each keeps its own node.
        let b = node(&mut t, &[2, 1]);
        let c = node(&mut t, &[3, 1]);
        assert_ne!(b, c);
        for _ in 0..3 {
            assert_eq!(node(&mut t, &[2, 1]), b);
            assert_eq!(node(&mut t, &[3, 1]), c);
        }
        assert_eq!(t.nodes.len(), 4);
        // The caller's last edge leads to `c`; its key is held tagged.
        let caller = t.nodes[c as usize].parent;
        assert_eq!(t.nodes[caller as usize].last_child, c);
        let key = t.nodes[caller as usize].last_key;
        assert!(!matches!(key, FrameKey::Python { code: 1..=3, .. }));
        assert_eq!(key, FrameKey::Python { code: 3, line: 1 }.held());
    }

    #[test]
    fn a_reset_forgets_the_cached_edges() {
        let mut t = Tracker::new();
        let deep = node(&mut t, &[3, 2, 1]);
        let shallow = node(&mut t, &[9]);
        assert_eq!(
            t.edges
                .get(ROOT, &FrameKey::Python { code: 9, line: 1 }.held()),
            Some(shallow)
        );
        // Held tagged: no slot holds the code object's address as it is.
        let plain = |s: &EdgeSlot| matches!(s.key, FrameKey::Python { code: 1..=9, .. });
        assert!(!t.edges.slots.iter().any(plain));
        t.reset();
        // The same edges in another order: a stale cached edge would hand out an old node,
        // past the end of the new trie or with other frames.
        let again = node(&mut t, &[9]);
        let deep_again = node(&mut t, &[3, 2, 1]);
        assert_eq!(again, 1);
        assert_ne!(deep_again, deep);
        assert_eq!(t.nodes.len(), 5);
        // The path from the node up is 3, 2, 1: the frames as interned in this test.
        let mut codes = Vec::new();
        let mut n = deep_again;
        while n != ROOT {
            let frame = t.nodes[n as usize].frame as usize;
            codes.push(
                t.frame_index
                    .iter()
                    .find(|(_, id)| **id as usize == frame)
                    .map(|(k, _)| *k),
            );
            n = t.nodes[n as usize].parent;
        }
        let key = |code| Some(FrameKey::Python { code, line: 1 });
        assert_eq!(codes, [key(3), key(2), key(1)]);
        assert_eq!(node(&mut t, &[3, 2, 1]), deep_again);
    }

    #[test]
    fn stacks_sharing_outer_frames_reuse_the_last_path() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[3, 2, 1]);
        let b = node(&mut t, &[4, 2, 1]);
        let c = node(&mut t, &[2, 1]);
        let d = node(&mut t, &[5, 3, 2, 1]);
        assert_eq!(node(&mut t, &[3, 2, 1]), a);
        assert_eq!(node(&mut t, &[2, 1]), c);
        assert_eq!(node(&mut t, &[]), ROOT);
        assert_eq!(node(&mut t, &[4, 2, 1]), b);
        assert_eq!(node(&mut t, &[5, 3, 2, 1]), d);
        assert_eq!(t.nodes[d as usize].parent, a);
        assert_eq!(t.nodes[a as usize].parent, c);
        assert_eq!(t.nodes[b as usize].parent, c);
        let functions = |n: u32| -> Vec<String> {
            // Tracker node n is the report's node n - 1 (the root is none).
            t.report()
                .stack(n.checked_sub(1))
                .into_iter()
                .map(|f| match f {
                    Frame::Python { function, .. } => function,
                    Frame::Native(_) => String::from("?"),
                })
                .collect()
        };
        assert_eq!(functions(b), ["f4", "f2", "f1"]);
        assert_eq!(functions(d), ["f5", "f3", "f2", "f1"]);
    }

    #[test]
    fn interning_below_a_known_prefix_gives_the_nodes_of_the_whole_stack() {
        let mut t = Tracker::new();
        let keys = |codes: &[usize]| -> Vec<FrameKey> {
            codes
                .iter()
                .map(|c| FrameKey::Python { code: *c, line: 1 })
                .collect()
        };
        let whole = node(&mut t, &[3, 2, 1]);
        // Outermost first, as a thread's last stack keeps them: 1, 2, then 4 instead of 3.
        let mut path = [0u32; 3];
        let prefix = t.intern_below(ROOT, keys(&[1, 2]), &mut path[..2], &mut names);
        assert_eq!(prefix, t.nodes[whole as usize].parent);
        assert_eq!(path[1], prefix);
        let other = t.intern_below(path[1], keys(&[4]), &mut path[2..], &mut names);
        assert_eq!(other, node(&mut t, &[4, 2, 1]));
        assert_eq!(path[2], other);
        assert_eq!(
            t.intern_below(path[1], keys(&[3]), &mut path[2..], &mut names),
            whole
        );
        assert_eq!(t.intern_below(ROOT, keys(&[]), &mut [], &mut names), ROOT);
    }

    #[test]
    fn the_report_takes_the_trie_as_interned() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[3, 2, 1]);
        let b = node(&mut t, &[4, 2, 1]);
        t.on_alloc(0x10, 8, Allocator::PyObj, a);
        t.on_alloc(0x20, 16, Allocator::Malloc, b);
        let copied = t.report();
        let r = t.take_report();
        assert_eq!(copied, r);
        // Two stacks that share their two outer frames: four frames, four nodes.
        assert_eq!((r.frames.len(), r.nodes.len()), (4, 4));
        assert_eq!(r.validate(), Ok(()));
        assert_eq!(r.sites[0].allocator, Allocator::Malloc);
        assert_eq!(r.site_stack(0).len(), 3);
        assert_eq!(r.totals.leaked_bytes, 24);
        // Taken: the tracker starts over.
        assert_eq!(t.current_bytes(), 0);
        assert_eq!(t.report(), TestReport::default());
    }

    #[test]
    fn failed_realloc_restores_the_block() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[1]);
        t.on_alloc(0x10, 64, Allocator::Malloc, a);
        let removed = t.on_free(0x10).unwrap();
        t.restore(removed);
        assert_eq!(t.current_bytes(), 64);
        assert!(t.on_free(0x10).is_some());
        assert_eq!(t.current_bytes(), 0);
        assert!(t.on_free(0x10).is_none());
    }

    #[test]
    fn partial_munmap_keeps_the_rest_of_the_mapping() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[1]);
        t.on_mmap(0x10000, 0x4000, a);
        t.on_munmap(0x11000, 0x1000);
        assert_eq!(t.current_bytes(), 0x3000);
        t.on_munmap(0x10000, 0x1000);
        assert_eq!(t.current_bytes(), 0x2000);
        t.on_munmap(0x0, 0x100000);
        assert_eq!(t.current_bytes(), 0);
        let r = t.report();
        assert_eq!(r.totals.peak_bytes, 0x4000);
        assert_eq!(r.sites[0].counts.bytes_at_peak, 0x4000);
    }

    #[test]
    fn munmap_reports_the_tracked_bytes_it_released() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[1]);
        t.on_mmap(0x10000, 0x5000, a);
        assert_eq!(t.mapped_in(0x0, 0x100000), 0x5000);
        assert_eq!(t.mapped_in(0x11000, 0x2000), 0x2000);
        assert_eq!(t.mapped_in(0x14000, 0x10000), 0x1000);
        assert_eq!(t.mapped_in(0x20000, 0x1000), 0);
        // Middle, front, back: two pages left in two pieces.
        assert_eq!(t.on_munmap(0x12000, 0x1000), 0x1000);
        assert_eq!(t.on_munmap(0x10000, 0x1000), 0x1000);
        assert_eq!(t.on_munmap(0x14000, 0x1000), 0x1000);
        assert_eq!(t.current_bytes(), 0x2000);
        assert_eq!(t.mapped_in(0x10000, 0x5000), 0x2000);
        assert_eq!(t.on_munmap(0x20000, 0x1000), 0, "untracked range");
        assert_eq!(t.on_munmap(0x10000, 0x5000), 0x2000);
        assert_eq!(t.current_bytes(), 0);
    }

    #[test]
    fn blocks_of_4_gib_and_more_keep_their_exact_size() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[1]);
        let big = u64::from(u32::MAX) + 5;
        t.on_alloc(0x10, big, Allocator::Mmap, a);
        t.on_alloc(0x20, u64::from(u32::MAX), Allocator::Malloc, a);
        t.on_alloc(0x30, u64::from(u32::MAX) - 1, Allocator::Malloc, a);
        let mut sizes: Vec<u64> = t.live_blocks().map(|b| b.1).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, [u64::from(u32::MAX) - 1, u64::from(u32::MAX), big]);
        assert_eq!(t.current_bytes(), big + 2 * u64::from(u32::MAX) - 1);
        // Replaced behind our back, freed, failed realloc put back: sizes stay exact.
        t.on_alloc(0x10, 64, Allocator::Malloc, a);
        assert_eq!(t.current_bytes(), 64 + 2 * u64::from(u32::MAX) - 1);
        let removed = t.on_free(0x20).unwrap();
        assert_eq!(t.current_bytes(), 64 + u64::from(u32::MAX) - 1);
        t.restore(removed);
        assert_eq!(t.current_bytes(), 64 + 2 * u64::from(u32::MAX) - 1);
        for addr in [0x10, 0x20, 0x30] {
            assert!(t.on_free(addr).is_some());
        }
        assert_eq!(t.current_bytes(), 0);
        assert!(t.big_sizes.is_empty());
        assert_eq!(
            t.report().totals.peak_bytes,
            big + 2 * u64::from(u32::MAX) - 1
        );
    }

    #[test]
    fn reused_address_replaces_the_stale_block() {
        let mut t = Tracker::new();
        let a = node(&mut t, &[1]);
        t.on_alloc(0x10, 10, Allocator::Malloc, a);
        t.on_alloc(0x10, 20, Allocator::Malloc, a);
        assert_eq!(t.current_bytes(), 20);
        assert_eq!(t.report().totals.peak_bytes, 20);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// `cargo test --release -p heapgate-core --lib live_set_timing -- --ignored --nocapture`:
    /// the tracker's own cost per event with two million blocks live (no hooks, no stacks),
    /// for blocks as glibc hands out 64-byte ones (80 bytes apart), as pymalloc packs 32- and
    /// 16-byte ones, and freed in a scattered order.
    #[test]
    #[ignore]
    fn live_set_timing() {
        const N: usize = 2_097_152;
        let mut t = Tracker::new();
        let node = t.intern_stack([FrameKey::Native(1)], &mut |_| {
            (String::new(), String::new())
        });
        for (pattern, stride) in [("80-byte stride", 80), ("32-byte", 32), ("16-byte", 16)] {
            let addrs: Vec<usize> = (0..N).map(|i| 0x5555_0000_0000 + i * stride).collect();
            // Scattered: every 4099th block (coprime with N), wrapping round.
            let scattered: Vec<usize> = (0..N).map(|i| addrs[i * 4099 % N]).collect();
            for (order, frees) in [("in order", &addrs), ("scattered", &scattered)] {
                let start = std::time::Instant::now();
                for &a in &addrs {
                    t.on_alloc(a, 64, Allocator::Malloc, node);
                }
                let mid = std::time::Instant::now();
                for &a in frees {
                    t.on_free(a);
                }
                let end = std::time::Instant::now();
                println!(
                    "{pattern}, freed {order}: {:.1} ns per alloc, {:.1} ns per free, {} live at the peak",
                    (mid - start).as_nanos() as f64 / N as f64,
                    (end - mid).as_nanos() as f64 / N as f64,
                    t.report().totals.peak_count
                );
            }
        }
    }
}
