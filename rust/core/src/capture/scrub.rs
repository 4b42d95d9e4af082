//! heapgate's own memory must never look like a reference to a block the leak scan
//! classifies. Two tools: an allocator that zeroes heapgate's heap memory when it is freed
//! (freed memory is scanned, and stale copies of pointers there would hide leaks), and
//! scratch memory mapped privately, outside every region the scan reads.

use std::alloc::{GlobalAlloc, Layout, System};

/// The system allocator, handing out zeroed blocks and zeroing them again before they are
/// freed (the unused capacity of a live buffer would otherwise keep whatever the memory held
/// before). Installed as the global allocator of the `heapgate._native` module.
pub struct ScrubbingAllocator;

// SAFETY: delegates to `System`, only adding zeroing writes to memory it owns.
unsafe impl GlobalAlloc for ScrubbingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as System::alloc_zeroed.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as System::alloc_zeroed.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
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
