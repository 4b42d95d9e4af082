//! heapgate's own memory must never look like a reference to a block the leak scan
//! classifies. Three tools: an allocator that zeroes heapgate's heap memory when it is freed
//! (freed memory is scanned, and stale copies of pointers there would hide leaks), big blocks
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

/// The system allocator, handing out zeroed blocks and zeroing them again before they are
/// freed (the unused capacity of a live buffer would otherwise keep whatever the memory held
/// before). Blocks of 1 MiB and more are mapped on their own (see [`big_blocks`]).
/// Installed as the global allocator of the `heapgate._native` module.
pub struct ScrubbingAllocator;

// SAFETY: delegates to `System` or maps page-aligned blocks of its own (fresh mappings are
// zeroed), only adding zeroing writes to memory it owns.
unsafe impl GlobalAlloc for ScrubbingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if let Some(ptr) = map_big(layout) {
            return ptr;
        }
        // SAFETY: same contract as System::alloc_zeroed.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as alloc (which zeroes).
        unsafe { self.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= BIG_BLOCK && unmap_big(ptr) {
            return;
        }
        // SAFETY: `ptr` owns `layout.size()` bytes until it is handed back below.
        unsafe {
            std::ptr::write_bytes(ptr, 0, layout.size());
            System.dealloc(ptr, layout);
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
            // Small blocks stay with the C library.
            let small = Layout::from_size_align(64, 8).expect("a layout");
            let p = ScrubbingAllocator.alloc(small);
            assert!(!big_blocks()
                .iter()
                .any(|r| r.0 <= p as usize && (p as usize) < r.1));
            ScrubbingAllocator.dealloc(p, small);
        }
    }
}
