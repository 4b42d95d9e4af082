//! heapgate's own memory must never look like a reference to a block the leak scan
//! classifies. Four tools: an allocator that zeroes heapgate's heap memory when it is freed
//! (freed memory is scanned, and stale copies of pointers there would hide leaks) and marks
//! each of its blocks as heapgate's (a block's live bytes can be stale too: a value built on
//! the stack and moved into a box brings along whatever its padding held), big blocks
//! mapped on their own and left out of the scan's roots (the live table alone is tens of MiB
//! of tagged addresses: reading it was 40% of a scan), and scratch memory mapped privately,
//! outside every region the scan reads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Blocks of at least this many bytes are mapped on their own and are no root of the scan.
const BIG_BLOCK: usize = 1 << 20;
const PAGE_SHIFT: u32 = 12;
const PAGE: usize = 1 << PAGE_SHIFT;
/// Big blocks registered at once; more are served by `System` (and scanned, as before).
const BIG_SLOTS: usize = 64;
/// A slot holds a block in one word: its first page number above [`PAGES_BITS`] bits of its
/// length in pages (0: a free slot), so a reader never sees half of a registration.
const PAGES_BITS: u32 = 29;

static BIG: [AtomicUsize; BIG_SLOTS] = [const { AtomicUsize::new(0) }; BIG_SLOTS];

fn slot_range(slot: usize) -> (usize, usize) {
    let start = (slot >> PAGES_BITS) << PAGE_SHIFT;
    (
        start,
        start + ((slot & ((1 << PAGES_BITS) - 1)) << PAGE_SHIFT),
    )
}

/// Map a zeroed big block and register it; None when it cannot be (then `System` serves it).
fn map_big(layout: Layout) -> Option<*mut u8> {
    if layout.size() < BIG_BLOCK || layout.align() > PAGE {
        return None;
    }
    let pages = layout.size().div_ceil(PAGE);
    if pages >= 1 << PAGES_BITS || !BIG.iter().any(|s| s.load(Ordering::Relaxed) == 0) {
        return None;
    }
    // SAFETY: an anonymous private mapping; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages << PAGE_SHIFT,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return None;
    }
    let first_page = ptr as usize >> PAGE_SHIFT;
    let claimed = (first_page < 1 << (usize::BITS - PAGES_BITS))
        .then_some((first_page << PAGES_BITS) | pages)
        .filter(|entry| {
            BIG.iter().any(|s| {
                s.compare_exchange(0, *entry, Ordering::Release, Ordering::Relaxed)
                    .is_ok()
            })
        });
    if claimed.is_none() {
        // SAFETY: the mapping made above, never handed out.
        unsafe { libc::munmap(ptr, pages << PAGE_SHIFT) };
        return None;
    }
    Some(ptr as *mut u8)
}

/// Unmap `ptr` if it is a registered big block (true), else leave it to `System` (false).
fn unmap_big(ptr: *mut u8) -> bool {
    let Some(slot) = BIG.iter().find(|s| {
        let entry = s.load(Ordering::Acquire);
        entry != 0 && slot_range(entry).0 == ptr as usize
    }) else {
        return false;
    };
    let (start, end) = slot_range(slot.swap(0, Ordering::AcqRel));
    // SAFETY: our own mapping, handed back by its owner; unmapping discards its bytes, so
    // nothing stale is left to scrub.
    unsafe { libc::munmap(start as *mut libc::c_void, end - start) };
    true
}

/// heapgate's big blocks right now, as sorted `(start, end)` ranges: they hold heapgate's
/// own tables (tagged addresses, sizes, ids), never a reference to a test's block.
pub(crate) fn big_blocks() -> Vec<(usize, usize)> {
    let mut ranges: Vec<(usize, usize)> = BIG
        .iter()
        .map(|s| s.load(Ordering::Acquire))
        .filter(|entry| *entry != 0)
        .map(slot_range)
        .collect();
    ranges.sort_unstable();
    ranges
}

/// Bytes before each of heapgate's blocks served by `System` (with an alignment up to this):
/// the first word holds [`own_block_mark`].
const HEADER: usize = 16;

/// What the first word of the memory at `memory` holds when heapgate's allocator made it
/// (its address mixed in, so a copy of the word elsewhere is no mark).
pub(crate) fn own_block_mark(memory: usize) -> usize {
    const HEAPGATE: usize = 0x6865_6170_6761_7465; // "heapgate"
    HEAPGATE ^ memory
}

/// The layout asked of `System` for a block of `layout` with its header, if it has one.
fn with_header(layout: Layout) -> Option<Layout> {
    if layout.align() > HEADER {
        return None;
    }
    Layout::from_size_align(layout.size().checked_add(HEADER)?, HEADER).ok()
}

/// The system allocator, handing out zeroed blocks and zeroing them again before they are
/// freed (the unused capacity of a live buffer would otherwise keep whatever the memory held
/// before). Each block it gets from the C library starts with a header that marks it as
/// heapgate's ([`own_block_mark`]): the scan reads no such block in glibc's main heap.
/// Blocks of 1 MiB and more are mapped on their own (see [`big_blocks`]).
/// Installed as the global allocator of the `heapgate._native` module.
pub struct ScrubbingAllocator;

// SAFETY: delegates to `System` (with a header before the block when the alignment allows)
// or maps page-aligned blocks of its own (fresh mappings are zeroed), only adding zeroing
// writes and the header's mark to memory it owns.
unsafe impl GlobalAlloc for ScrubbingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(ptr) = map_big(layout) {
            return ptr;
        }
        let Some(full) = with_header(layout) else {
            // SAFETY: same contract as System::alloc_zeroed.
            return unsafe { System.alloc_zeroed(layout) };
        };
        // SAFETY: same contract as System::alloc_zeroed; the header lies inside the block.
        unsafe {
            let base = System.alloc_zeroed(full);
            if base.is_null() {
                return base;
            }
            (base as *mut usize).write(own_block_mark(base as usize));
            base.add(HEADER)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as alloc (which zeroes).
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= BIG_BLOCK && unmap_big(ptr) {
            return;
        }
        let (base, full) = match with_header(layout) {
            // SAFETY: alloc put the block HEADER bytes into the one it got for `full`.
            Some(full) => (unsafe { ptr.sub(HEADER) }, full),
            None => (ptr, layout),
        };
        // SAFETY: `base` owns `full.size()` bytes until it is handed back below.
        unsafe {
            std::ptr::write_bytes(base, 0, full.size());
            System.dealloc(base, full);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Moving in place would leave the old bytes behind: copy, then scrub and free.
        // SAFETY: the new layout is valid per GlobalAlloc::realloc's contract.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for alloc.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the copied length and do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// Words of scratch memory mapped privately for the scan, unmapped when dropped.
pub(crate) struct Scratch {
    ptr: *mut usize,
    len: usize,
}

// SAFETY: the mapping is owned by the value alone (no other pointer to it is kept), so it may
// move to, and be dropped on, another thread.
unsafe impl Send for Scratch {}

impl Scratch {
    /// `len` zeroed words, or None if the mapping fails.
    pub(crate) fn new(len: usize) -> Option<Scratch> {
        let bytes = len * std::mem::size_of::<usize>();
        // SAFETY: an anonymous private mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (ptr != libc::MAP_FAILED).then_some(Scratch {
            ptr: ptr as *mut usize,
            len,
        })
    }

    /// The mapping's address range, to leave out of the scan's roots.
    pub(crate) fn range(&self) -> (usize, usize) {
        (
            self.ptr as usize,
            self.ptr as usize + self.len * std::mem::size_of::<usize>(),
        )
    }

    pub(crate) fn words(&mut self) -> &mut [usize] {
        // SAFETY: the mapping holds `len` words and lives as long as `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (start, end) = self.range();
        // SAFETY: our own mapping, unmapped once; zeroed first in case the pages are reused.
        unsafe {
            std::ptr::write_bytes(self.ptr, 0, self.len);
            libc::munmap(start as *mut libc::c_void, end - start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_blocks_are_mapped_registered_and_zeroed() {
        let layout = Layout::from_size_align(3 << 20, 8).expect("a layout");
        // SAFETY: a valid layout; the block is written within its size and freed once.
        unsafe {
            let ptr = ScrubbingAllocator.alloc(layout);
            assert!(!ptr.is_null());
            let (start, end) = (ptr as usize, ptr as usize + layout.size());
            assert!(big_blocks().contains(&(start, end)));
            assert!(std::slice::from_raw_parts(ptr, layout.size())
                .iter()
                .all(|b| *b == 0));
            ptr.write_bytes(0x5a, layout.size());
            let grown = ScrubbingAllocator.realloc(ptr, layout, 4 << 20);
            assert_eq!(*grown.add(layout.size() - 1), 0x5a);
            assert!(!big_blocks().iter().any(|r| r.0 == start));
            ScrubbingAllocator.dealloc(
                grown,
                Layout::from_size_align(4 << 20, 8).expect("a layout"),
            );
            assert!(!big_blocks().iter().any(|r| r.0 == grown as usize));
            // Small blocks stay with the C library, marked as heapgate's.
            let small = Layout::from_size_align(64, 8).expect("a layout");
            let p = ScrubbingAllocator.alloc(small);
            assert!(!big_blocks()
                .iter()
                .any(|r| r.0 <= p as usize && (p as usize) < r.1));
            let base = p as usize - HEADER;
            assert_eq!(*(base as *const usize), own_block_mark(base));
            assert!(std::slice::from_raw_parts(p, 64).iter().all(|b| *b == 0));
            ScrubbingAllocator.dealloc(p, small);
            // Over-aligned blocks have no header.
            let aligned = Layout::from_size_align(64, 64).expect("a layout");
            let q = ScrubbingAllocator.alloc(aligned);
            assert_eq!(q as usize % 64, 0);
            ScrubbingAllocator.dealloc(q, aligned);
        }
    }
}
