//! The live table: every tracked heap block by address, for millions of blocks.
//!
//! Open addressing with linear probing and backward-shift deletion (no tombstones), at most
//! half full. The slot of an address keeps the heap's locality: blocks of one 4 KiB page
//! land in one run of neighbouring slots, and only the page number is hashed (to spread
//! pages over the table). A loop that allocates a million blocks walks the table almost
//! sequentially, where a scattering hash costs a cache and TLB miss per event.
//!
//! Keys are stored tagged (see `tracker::TAG`): the table never looks like pointers to the
//! blocks it describes.

/// A live block's value: its size and its site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LiveBlock {
    pub size: u64,
    pub site: u32,
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Slot {
    /// Tagged address; 0 is an empty slot (a tagged key is never 0).
    key: usize,
    size: u64,
    site: u32,
}

const EMPTY: Slot = Slot {
    key: 0,
    size: 0,
    site: 0,
};

/// Slots of a fresh table: large enough that small tests never grow it.
const INITIAL_SLOTS: usize = 1 << 14;
/// log2 of the bytes of one page whose blocks share a run of slots.
const PAGE_SHIFT: u32 = 12;
/// log2 of the smallest alignment the allocators give (16 bytes).
const GRAIN_SHIFT: u32 = 4;

/// Live blocks by tagged address.
pub(crate) struct LiveTable {
    slots: Vec<Slot>,
    len: usize,
}

impl Default for LiveTable {
    fn default() -> Self {
        LiveTable::new()
    }
}

impl LiveTable {
    /// An empty table of [`INITIAL_SLOTS`].
    pub fn new() -> LiveTable {
        LiveTable {
            // Zeroed memory (calloc): a large table's pages stay untouched until used.
            slots: vec![EMPTY; INITIAL_SLOTS],
            len: 0,
        }
    }

    /// Number of live blocks.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Forget every block. The capacity is kept (the next test of the same size does not
    /// grow it again) through a fresh zeroed allocation, which for a large table is new
    /// untouched pages rather than a pass over the old ones.
    pub fn clear(&mut self) {
        if self.len != 0 {
            let capacity = self.slots.len();
            self.slots = Vec::new();
            self.slots = vec![EMPTY; capacity];
            self.len = 0;
        }
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The first slot probed for `key`: the page's hashed base plus the block's offset in it.
    #[inline]
    fn home(&self, key: usize) -> usize {
        let page = (key << 1 >> 1) >> PAGE_SHIFT;
        let base = (page as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 24;
        let offset = (key >> GRAIN_SHIFT) & ((1 << (PAGE_SHIFT - GRAIN_SHIFT)) - 1);
        (base as usize).wrapping_add(offset) & self.mask()
    }

    #[inline]
    fn find(&self, key: usize) -> Result<usize, usize> {
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            let k = self.slots[i].key;
            if k == key {
                return Ok(i);
            }
            if k == 0 {
                return Err(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Insert or replace the block at `key`; returns the block it replaced.
    #[inline]
    pub fn insert(&mut self, key: usize, block: LiveBlock) -> Option<LiveBlock> {
        debug_assert_ne!(key, 0);
        match self.find(key) {
            Ok(i) => {
                let old = &mut self.slots[i];
                let replaced = LiveBlock {
                    size: old.size,
                    site: old.site,
                };
                old.size = block.size;
                old.site = block.site;
                Some(replaced)
            }
            Err(i) => {
                if (self.len + 1) * 2 > self.slots.len() {
                    self.grow();
                    return self.insert(key, block);
                }
                self.slots[i] = Slot {
                    key,
                    size: block.size,
                    site: block.site,
                };
                self.len += 1;
                None
            }
        }
    }

    /// Remove the block at `key`.
    #[inline]
    pub fn remove(&mut self, key: usize) -> Option<LiveBlock> {
        let mut hole = self.find(key).ok()?;
        let removed = LiveBlock {
            size: self.slots[hole].size,
            site: self.slots[hole].site,
        };
        // Backward shift: pull later entries of the run into the hole unless that would put
        // them before their home slot.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let k = self.slots[j].key;
            if k == 0 {
                break;
            }
            let home = self.home(k);
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[j];
                hole = j;
            }
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        Some(removed)
    }

    fn grow(&mut self) {
        let doubled = vec![EMPTY; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        self.len = 0;
        for slot in old.into_iter().filter(|s| s.key != 0) {
            let i = self.find(slot.key).unwrap_or_else(|empty| empty);
            self.slots[i] = slot;
            self.len += 1;
        }
    }

    /// Every (tagged key, block), in table order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, LiveBlock)> + '_ {
        self.slots.iter().filter(|s| s.key != 0).map(|s| {
            (
                s.key,
                LiveBlock {
                    size: s.size,
                    site: s.site,
                },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const TAG: usize = 1 << (usize::BITS - 1);

    fn block(size: u64) -> LiveBlock {
        LiveBlock { size, site: 7 }
    }

    #[test]
    fn grows_and_keeps_every_block() {
        let mut t = LiveTable::new();
        let n = 3 * INITIAL_SLOTS;
        for i in 0..n {
            assert_eq!(
                t.insert(TAG | (0x1000_0000 + i * 80), block(i as u64)),
                None
            );
        }
        assert_eq!(t.len(), n);
        for i in (0..n).step_by(3) {
            assert_eq!(
                t.remove(TAG | (0x1000_0000 + i * 80)),
                Some(block(i as u64))
            );
        }
        for i in 0..n {
            let expected = (i % 3 != 0).then(|| block(i as u64));
            assert_eq!(t.remove(TAG | (0x1000_0000 + i * 80)), expected);
        }
        assert_eq!(t.len(), 0);
        t.clear();
        assert_eq!(t.iter().count(), 0);
    }

    #[test]
    fn clear_forgets_blocks() {
        let mut t = LiveTable::new();
        t.insert(TAG | 0x10, block(1));
        t.clear();
        assert_eq!(t.len(), 0);
        assert_eq!(t.remove(TAG | 0x10), None);
    }

    proptest! {
        /// Against a HashMap, with addresses clustered on few pages (long runs, wrap-around,
        /// backward shifts) and spread over many.
        #[test]
        fn behaves_like_a_map(ops in proptest::collection::vec(
            (any::<bool>(), 0usize..4, 0usize..2048, 1u64..100), 1..3000)) {
            let mut t = LiveTable::new();
            let mut model: HashMap<usize, LiveBlock> = HashMap::new();
            for (insert, region, offset, size) in ops {
                let key = TAG | (region << 33 | region << 12 | offset * 16);
                if insert {
                    prop_assert_eq!(t.insert(key, block(size)), model.insert(key, block(size)));
                } else {
                    prop_assert_eq!(t.remove(key), model.remove(&key));
                }
                prop_assert_eq!(t.len(), model.len());
            }
            let mut seen: Vec<(usize, LiveBlock)> = t.iter().collect();
            seen.sort_by_key(|(k, _)| *k);
            let mut expected: Vec<(usize, LiveBlock)> = model.into_iter().collect();
            expected.sort_by_key(|(k, _)| *k);
            prop_assert_eq!(seen, expected);
        }
    }
}
