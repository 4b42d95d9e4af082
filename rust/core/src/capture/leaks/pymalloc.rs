//! pymalloc's pools: which words of a pool belong to blocks in use.

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
    /// What CPython subtracts from the address of an object's inline values before storing
    /// it (3.12 stores `values - 1`; 0 elsewhere): such a word references the values block.
    pub values_tag: usize,
}

/// Which words of a pool-sized, pool-aligned chunk can hold references: the words of blocks
/// in use, first word included (an object's is a reference count or a GC link, which is no
/// pointer to a candidate's start, but a buffer's — a list's items — is a reference). Free
/// blocks, never-used blocks and empty pools hold only stale data. `None` when the chunk is not
/// a pymalloc pool.
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
        if first < last {
            mask[first..last].fill(true);
        }
    }
    Some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_scan_only_blocks_in_use() {
        let layout = PoolLayout {
            pool_size: 256,
            overhead: 48,
            alignment_shift: 4,
            code_type: 0xc0de,
            code_bytecode: 16,
            values_tag: 0,
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
        // blocks 0, 2, 3 at words 6.., 14.., 18..; each 4 words, all scanned (a PyMem buffer's
        // first word is a reference: a list's first item).
        assert_eq!(scanned, [6, 7, 8, 9, 14, 15, 16, 17, 18, 19, 20, 21]);
        // Block 2 is a code object: its words from the bytecode on hold no references.
        words[14 + 1] = 0xc0de;
        let mask = pool_mask(&words, base, &layout).expect("a pool");
        let scanned: Vec<usize> = (0..32).filter(|i| mask[*i]).collect();
        assert_eq!(scanned, [6, 7, 8, 9, 14, 15, 18, 19, 20, 21]);
        words[5] = 12345;
        assert!(pool_mask(&words, base, &layout).is_none());
    }
}
