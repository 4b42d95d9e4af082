//! pymalloc's pools: which words of a pool belong to blocks in use.

use super::glibc::chunk_holds_request;

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
    /// Where a Python object ends in its block (`None`: unknown, blocks are read whole).
    pub objects: Option<ObjectLayout>,
}

/// What the scan needs to find where a Python object ends in its pymalloc block: the words
/// after its end are slack that the block's previous occupant left (a stale pointer there
/// would hide a leak). Addresses and offsets of the running CPython (see the binding's shim).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectLayout {
    /// `&PyType_Type`: the type of every type object whose instances are recognised.
    pub type_type: usize,
    /// `PyType_GenericAlloc`: instances of types allocating through it are `tp_basicsize`
    /// bytes (plus the pre-header) when `tp_itemsize` is 0.
    pub generic_alloc: usize,
    /// `&PyUnicode_Type` (a str's size follows from its length and state).
    pub str_type: usize,
    /// Byte offset of `tp_basicsize` in a type object.
    pub basicsize_at: usize,
    /// Byte offset of `tp_itemsize`.
    pub itemsize_at: usize,
    /// Byte offset of `tp_flags`.
    pub flags_at: usize,
    /// Byte offset of `tp_alloc`.
    pub alloc_at: usize,
    /// Byte offset of `tp_dictoffset` (negative with items: the dict pointer follows them).
    pub dictoffset_at: usize,
    /// Type flag: tracked by the cyclic GC (a 16-byte GC head before the object).
    pub gc_flag: usize,
    /// Type flags of a pre-header (3.11+: 16 more bytes before the GC head).
    pub preheader_flags: usize,
    /// Type flag of inline values after the basic size (3.13; 0 elsewhere).
    pub inline_values_flag: usize,
    /// Byte offset of the values in inline values (3.13: after a word whose first byte is
    /// their capacity; 0 elsewhere).
    pub values_header: usize,
    /// Byte offset of a str's length.
    pub str_length_at: usize,
    /// Byte offset of a str's state (a 32-bit field).
    pub str_state_at: usize,
    /// The state's kind bits (1, 2 or 4 bytes per character).
    pub str_kind_bits: usize,
    /// The state's compact bit (characters right after the header).
    pub str_compact_bit: usize,
    /// The state's ascii bit.
    pub str_ascii_bit: usize,
    /// Header bytes of a compact ASCII str.
    pub str_ascii_header: usize,
    /// Header bytes of a compact non-ASCII str.
    pub str_compact_header: usize,
    /// `&PyBytes_Type` (a bytes object is its header, `ob_size` bytes and a terminator).
    pub bytes_type: usize,
    /// Offset of a bytes object's characters.
    pub bytes_header: usize,
    /// Offset of a dict keys object's indices, after its header (0: unknown, before 3.11).
    pub keys_header: usize,
    /// Bytes of a dict keys object's entry (hash, key, value).
    pub keys_entry: usize,
    /// Bytes of an entry of a dict keys object whose keys are all str (key, value).
    pub keys_unicode_entry: usize,
    /// Byte offsets in a dict keys object of its log2 size, its log2 index bytes and its kind
    /// (one byte each).
    pub keys_log2_size_at: usize,
    /// See [`keys_log2_size_at`](Self::keys_log2_size_at).
    pub keys_index_bytes_at: usize,
    /// See [`keys_log2_size_at`](Self::keys_log2_size_at).
    pub keys_kind_at: usize,
}

/// The widest item [`ObjectLayout::sized_type`] accepts (a type's `PyMemberDef` is 40 bytes).
const MAX_ITEM_SIZE: usize = 256;

/// A type object whose instances the scan can size: its basic size and flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizedType {
    /// `tp_basicsize`.
    pub basicsize: usize,
    /// `tp_itemsize`: 0, 1, 2, 4, or a whole number of words (an array of `ob_size` items
    /// follows the basic size: a regular expression's code, a tuple's references, a heap
    /// type's member definitions).
    pub itemsize: usize,
    /// `tp_flags`.
    pub flags: usize,
    /// A negative `tp_dictoffset` with items: the dict pointer is stored after the items
    /// (a subclass of int or bytes with a `__dict__`), so they are not the object's end.
    pub dict_after_items: bool,
    /// Instances keep their attributes' values inline after the basic size (3.13).
    pub inline_values: bool,
}

impl ObjectLayout {
    /// The type object at `words` (its first words, read safely), if its instances are
    /// `tp_basicsize` bytes after the pre-header plus their items: a type object (its type is
    /// `PyType_Type`), allocating through `PyType_GenericAlloc`, of no item size, 1, 2 or 4
    /// bytes, or a whole number of words (`ob_size` items; see
    /// [`object_end`](Self::object_end) for the sentinel item of wider ones), and inline values
    /// only without items. Items narrower than a word hold no pointer, so where their count
    /// means something else (3.12's ints) the scan can only leave out bytes that hold none.
    pub fn sized_type(&self, words: &[usize]) -> Option<SizedType> {
        let word = std::mem::size_of::<usize>();
        let at = |offset: usize| words.get(offset / word).copied();
        let (basicsize, itemsize) = (at(self.basicsize_at)?, at(self.itemsize_at)?);
        let (flags, alloc) = (at(self.flags_at)?, at(self.alloc_at)?);
        let dictoffset = at(self.dictoffset_at)? as isize;
        let inline_values = flags & self.inline_values_flag != 0;
        (at(word)? == self.type_type
            && alloc == self.generic_alloc
            && (matches!(itemsize, 1 | 2 | 4) || itemsize % word == 0)
            && itemsize <= MAX_ITEM_SIZE
            && !(inline_values && (itemsize != 0 || self.values_header == 0))
            && (2 * word..=4096).contains(&basicsize))
        .then_some(SizedType {
            basicsize,
            itemsize,
            flags,
            dict_after_items: itemsize != 0 && dictoffset < 0,
            inline_values,
        })
    }

    /// Bytes of a type object to read for [`sized_type`](Self::sized_type).
    pub fn type_bytes(&self) -> usize {
        [
            self.basicsize_at,
            self.itemsize_at,
            self.flags_at,
            self.alloc_at,
            self.dictoffset_at,
        ]
        .into_iter()
        .max()
        .unwrap_or(0)
            + std::mem::size_of::<usize>()
    }

    /// Where the references of the Python object in `block` (a pymalloc block of `size` bytes
    /// in use) end, in bytes from the block's start — the object's end, or its fields' end
    /// when its items are narrower than a word — if the block holds one: its reference count
    /// (at most 2^32: never an address) is followed by `str`, `bytes` or a type the scan can
    /// size (`types`: see [`sized_type`](Self::sized_type)) whose flags put the object where it
    /// is found (after no header, a GC head, or a pre-header and a GC head), and the object's
    /// size rounds up to exactly this block's size class. Anything else (a buffer, an object of
    /// another layout): `None`, and the block is read whole.
    pub fn object_end(
        &self,
        block: &[usize],
        size: usize,
        types: &mut dyn FnMut(usize) -> Option<SizedType>,
    ) -> Option<usize> {
        // pymalloc keeps a block that shrinks by less than a quarter where it is (a bytes or
        // str object made big, then cut to its length: seen, a 237-byte bytes object in a
        // 304-byte block, whose last word named a leaked list).
        let shrunk = |end: usize| end <= size && 4 * end > 3 * size;
        self.object_end_where(
            block,
            &|end| end.next_multiple_of(16) == size,
            &shrunk,
            types,
        )
    }

    /// Where the Python object in a block of exactly `size` requested bytes starts and where
    /// its references end, in bytes from the block's start, when its size is exactly that (see
    /// [`object_end`](Self::object_end)): it starts after no header, a GC head, or a pre-header
    /// and a GC head, and is referenced by its start alone; its references end with it, or
    /// with its fields when its items are narrower than a word. `None` for anything else.
    pub fn object_extent(
        &self,
        block: &[usize],
        size: usize,
        types: &mut dyn FnMut(usize) -> Option<SizedType>,
    ) -> Option<(usize, usize)> {
        self.object_extent_where(block, &|end| end == size, &|_| false, types)
    }

    /// As [`object_end`](Self::object_end), for a block whose allocator rounds a request of
    /// `end` bytes to this block's size when `rounds(end)`, and keeps a block it shrank to
    /// `end` bytes in place when `shrunk(end)` (`str` and `bytes` objects are resized).
    fn object_end_where(
        &self,
        block: &[usize],
        rounds: &dyn Fn(usize) -> bool,
        shrunk: &dyn Fn(usize) -> bool,
        types: &mut dyn FnMut(usize) -> Option<SizedType>,
    ) -> Option<usize> {
        self.object_extent_where(block, rounds, shrunk, types)
            .map(|(_, end)| end)
    }

    /// Where the object found by [`object_end_where`](Self::object_end_where) starts, and
    /// where its references end.
    fn object_extent_where(
        &self,
        block: &[usize],
        rounds: &dyn Fn(usize) -> bool,
        shrunk: &dyn Fn(usize) -> bool,
        types: &mut dyn FnMut(usize) -> Option<SizedType>,
    ) -> Option<(usize, usize)> {
        let word = std::mem::size_of::<usize>();
        [0usize, 2, 4].into_iter().find_map(|header| {
            let fits = |end: usize| rounds(end).then_some((header * word, end));
            let fits_resized =
                |end: usize| (rounds(end) || shrunk(end)).then_some((header * word, end));
            let (refcount, ty) = (*block.get(header)?, *block.get(header + 1)?);
            if refcount == 0 || refcount > u32::MAX as usize || ty % word != 0 || ty < 4096 {
                return None;
            }
            if ty == self.str_type {
                return (header == 0)
                    .then(|| self.str_end(block))
                    .flatten()
                    .and_then(fits_resized);
            }
            if ty == self.bytes_type {
                let length = *block.get(2).filter(|n| **n <= 4096)?;
                return (header == 0)
                    .then_some(self.bytes_header + length + 1)
                    .and_then(fits_resized);
            }
            let t = types(ty)?;
            let gc = t.flags & self.gc_flag != 0;
            let preheader = t.flags & self.preheader_flags != 0;
            let expected = match (gc, preheader) {
                (false, false) => 0,
                (true, false) => 2,
                (true, true) => 4,
                (false, true) => return None,
            };
            if header != expected {
                return None;
            }
            let start = header * word + t.basicsize;
            if t.inline_values {
                // 3.13's inline values: a word whose first byte is their capacity, the values,
                // then an insertion-order array of a byte per value, rounded up to a word,
                // which holds no reference and is written only as far as there are values
                // (the rest of a 25-value array kept a leaked list's address in every
                // process of benches/leak_precision.py's `same` workload). The instance is
                // allocated for the capacity its class's shared keys had, which CPython lowers
                // by one as it sets up the values while more than one slot is left.
                if !start.is_multiple_of(word) {
                    return None;
                }
                let capacity = *block.get(start / word)? & 0xff;
                let refs_end = start + self.values_header + capacity * word;
                let size_for = |slots: usize| {
                    start + self.values_header + slots * word + slots.next_multiple_of(word)
                };
                return fits(size_for(capacity))
                    .or_else(|| fits(size_for(capacity + 1)))
                    .map(|(object, _)| (object, refs_end));
            }
            if t.itemsize == 0 {
                return fits(start);
            }
            // `PyType_GenericAlloc` allocates one item more than `ob_size`: a heap type's
            // members end with a zeroed sentinel. Items of a word are counted without it (a
            // tuple is allocated without it, and the two sizes may round alike); wider ones
            // with or without, whichever this block's size fits (at most one does).
            let items = (*block.get(header + 2)?).min(1 << 16);
            let with_sentinel = (t.itemsize > word).then(|| start + t.itemsize * (items + 1));
            let (start, end) =
                fits(start + t.itemsize * items).or_else(|| with_sentinel.and_then(fits))?;
            // Items narrower than a word hold no pointer: the object's references end with
            // its last word-aligned field, before its items. A type that declares one item in
            // its basic size (3.12's `re.Pattern`: `code[1]`) is allocated that item and its
            // padding more than it writes, and those bytes keep an old pointer (seen naming a
            // leaked list).
            if t.itemsize < word && !t.dict_after_items {
                let fields = (t.basicsize - t.itemsize).next_multiple_of(word);
                return Some((start, (header * word + fields).min(end)));
            }
            Some((start, end))
        })
    }

    /// Where the dict keys object in `block` (a pymalloc block of `size` bytes in use) ends, if
    /// the block holds one: a reference count, then a log2 size and log2 index bytes that agree
    /// (indices are 1, 2, 4 or 8 bytes wide as the table grows) and a kind (general, str keys,
    /// split), and the size CPython allocates for them — header, indices, two thirds of the
    /// size in entries, which it clears — rounds up to exactly this block's size. The keys
    /// object has no type to be sized by, and the slack after it keeps old pointers (seen
    /// hiding a leaked list).
    pub fn keys_end(&self, block: &[usize], size: usize) -> Option<usize> {
        self.keys_end_where(block, &|end| end.next_multiple_of(16) == size)
    }

    /// As [`keys_end`](Self::keys_end), for a block whose allocator rounds a request of `end`
    /// bytes to this block's size when `rounds(end)`.
    fn keys_end_where(&self, block: &[usize], rounds: &dyn Fn(usize) -> bool) -> Option<usize> {
        let word = std::mem::size_of::<usize>();
        if self.keys_header == 0 {
            return None;
        }
        let refcount = *block.first()?;
        if refcount == 0 || refcount > u32::MAX as usize {
            return None;
        }
        let byte = |at: usize| Some((*block.get(at / word)? >> ((at % word) * 8)) & 0xff);
        let log2_size = byte(self.keys_log2_size_at)?;
        let log2_index_bytes = byte(self.keys_index_bytes_at)?;
        let kind = byte(self.keys_kind_at)?;
        let index_width_log2 = match log2_size {
            0..=7 => 0,
            8..=15 => 1,
            16..=31 => 2,
            _ => 3,
        };
        if !(3..=20).contains(&log2_size)
            || log2_index_bytes != log2_size + index_width_log2
            || kind > 2
        {
            return None;
        }
        let entry = if kind == 0 {
            self.keys_entry
        } else {
            self.keys_unicode_entry
        };
        let usable = ((1usize << log2_size) << 1) / 3;
        let end = self.keys_header + (1 << log2_index_bytes) + entry * usable;
        rounds(end).then_some(end)
    }

    /// The index of the word holding a str's state when `block` (a block's first words) holds
    /// a str: a 32-bit bit field whose unnamed bits, and the padding after it, CPython never
    /// writes, so stale upper bytes of an old pointer under its low byte can read as a
    /// pointer (seen: "possibly lost" for a definitely lost block). It holds no reference.
    pub fn str_state_word(&self, block: &[usize]) -> Option<usize> {
        let word = std::mem::size_of::<usize>();
        (block.get(1) == Some(&self.str_type)).then_some(self.str_state_at / word)
    }

    /// The end of a compact str (its characters and terminator after the header).
    fn str_end(&self, block: &[usize]) -> Option<usize> {
        let word = std::mem::size_of::<usize>();
        let length = *block.get(self.str_length_at / word)?;
        let state_word = *block.get(self.str_state_at / word)?;
        let state = (state_word >> ((self.str_state_at % word) * 8)) & 0xffff_ffff;
        let kind = (state & self.str_kind_bits) >> self.str_kind_bits.trailing_zeros();
        if state & self.str_compact_bit == 0 || !matches!(kind, 1 | 2 | 4) || length > 4096 {
            return None;
        }
        Some(if state & self.str_ascii_bit != 0 {
            self.str_ascii_header + length + 1
        } else {
            self.str_compact_header + (length + 1) * kind
        })
    }
}

/// Words of a glibc chunk's memory to read for [`chunk_object_slack`]: an object's header
/// and a str's or bytes object's length and state.
pub const CHUNK_FIRST_WORDS: usize = 8;

/// Where the memory of an in-use glibc chunk of `chunk_size` bytes (header included) stops
/// holding references, in bytes from its first byte of memory, when it holds a Python object
/// (too big for pymalloc, or shrunk by `realloc` after it was made too big: bytes and str
/// resized in place) or a dict keys object: from a code object's bytecode on (see
/// [`PoolLayout::code_type`]), or from the word the object ends in (see
/// [`ObjectLayout::object_end`], [`ObjectLayout::keys_end`]) when its size is exactly what
/// malloc rounds to this chunk's size. The rest up to the next chunk's size
/// field is what earlier occupants left. `first`: the chunk's first words of memory (see
/// [`CHUNK_FIRST_WORDS`]). `None`: no Python object known here; the chunk is read whole.
pub fn chunk_object_slack(
    first: &[usize],
    chunk_size: usize,
    layout: &PoolLayout,
    types: &mut dyn FnMut(usize) -> Option<SizedType>,
) -> Option<usize> {
    let word = std::mem::size_of::<usize>();
    let rounds = |end: usize| chunk_holds_request(chunk_size, end);
    if layout.code_type != 0 && first.get(1) == Some(&layout.code_type) {
        let refcount = *first.first()?;
        return (refcount != 0 && refcount <= u32::MAX as usize)
            .then_some(layout.code_bytecode.next_multiple_of(word));
    }
    let objects = layout.objects?;
    let end = objects
        .object_end_where(first, &rounds, &|_| false, types)
        .or_else(|| objects.keys_end_where(first, &rounds))?;
    Some(end / word * word)
}

/// Which words of a pool-sized, pool-aligned chunk can hold references: the words of blocks
/// in use, first word included (an object's is a reference count or a GC link, which is no
/// pointer to a candidate's start, but a buffer's — a list's items — is a reference), up to
/// the end of the Python object a block holds when its size is known (see
/// [`ObjectLayout::object_end`]; `types` sizes a type object). Free blocks, never-used blocks
/// and empty pools hold only stale data. `None` when the chunk is not a pymalloc pool.
pub fn pool_mask(
    words: &[usize],
    base: usize,
    layout: &PoolLayout,
    types: &mut dyn FnMut(usize) -> Option<SizedType>,
) -> Option<Vec<bool>> {
    let word = std::mem::size_of::<usize>();
    if std::mem::size_of_val(words) != layout.pool_size
        || !base.is_multiple_of(layout.pool_size)
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
        && (nextoffset - layout.overhead).is_multiple_of(size)
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
        if !offset.is_multiple_of(size) {
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
        let mut state_word = None;
        if layout.code_type != 0 && first + 1 < last && words[first + 1] == layout.code_type {
            last = last.min(first + layout.code_bytecode / word);
        } else if let Some((objects, end)) = layout.objects.and_then(|o| {
            o.object_end(&words[first..last], size, types)
                .or_else(|| o.keys_end(&words[first..last], size))
                .map(|end| (o, end))
        }) {
            // A word the object ends inside holds no whole field of it (its pointers are
            // word-aligned), only its last bytes — a str's terminator — and the slack after
            // them: a stale pointer whose low byte the terminator overwrote was seen there.
            last = last.min(first + end / word);
            state_word = objects
                .str_state_word(&words[first..last])
                .map(|i| first + i);
        }
        if first < last {
            mask[first..last].fill(true);
        }
        // A str's state word holds no reference (see `ObjectLayout::str_state_word`).
        if let Some(i) = state_word.filter(|i| *i < last) {
            mask[i] = false;
        }
    }
    Some(mask)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// 256-byte pools with a 48-byte header and 16-byte classes (as the tests' pools are).
    fn small_pools(
        code_type: usize,
        code_bytecode: usize,
        objects: Option<ObjectLayout>,
    ) -> PoolLayout {
        PoolLayout {
            pool_size: 256,
            overhead: 48,
            alignment_shift: 4,
            code_type,
            code_bytecode,
            values_tag: 0,
            objects,
        }
    }

    #[test]
    fn pools_scan_only_blocks_in_use() {
        let layout = small_pools(0xc0de, 16, None);
        let base = 0x10000;
        let mut words = vec![0usize; 32];
        // 4 blocks of 32 bytes (szidx 1) were handed out; block 1 is free again.
        let size = 32;
        words[0] = 3; // count
        words[1] = base + 48 + size; // freeblock -> block 1
        words[4] = 1usize << 32; // arenaindex 0, szidx 1
        words[5] = ((256 - size) << 32) | (48 + 4 * size); // maxnextoffset, nextoffset
        let mask = pool_mask(&words, base, &layout, &mut |_| None).expect("a pool");
        let scanned: Vec<usize> = (0..32).filter(|i| mask[*i]).collect();
        // blocks 0, 2, 3 at words 6.., 14.., 18..; each 4 words, all scanned (a PyMem buffer's
        // first word is a reference: a list's first item).
        assert_eq!(scanned, [6, 7, 8, 9, 14, 15, 16, 17, 18, 19, 20, 21]);
        // Block 2 is a code object: its words from the bytecode on hold no references.
        words[14 + 1] = 0xc0de;
        let mask = pool_mask(&words, base, &layout, &mut |_| None).expect("a pool");
        let scanned: Vec<usize> = (0..32).filter(|i| mask[*i]).collect();
        assert_eq!(scanned, [6, 7, 8, 9, 14, 15, 18, 19, 20, 21]);
        words[5] = 12345;
        assert!(pool_mask(&words, base, &layout, &mut |_| None).is_none());
    }

    pub(crate) fn objects() -> ObjectLayout {
        ObjectLayout {
            type_type: 0x7000,
            generic_alloc: 0x7100,
            str_type: 0x7200,
            basicsize_at: 32,
            itemsize_at: 40,
            flags_at: 48,
            alloc_at: 56,
            dictoffset_at: 64,
            gc_flag: 1 << 14,
            preheader_flags: 1 << 4,
            inline_values_flag: 1 << 2,
            values_header: 8,
            str_length_at: 16,
            str_state_at: 32,
            str_kind_bits: 0x1c,
            str_compact_bit: 0x20,
            str_ascii_bit: 0x40,
            str_ascii_header: 40,
            str_compact_header: 56,
            bytes_type: 0x7300,
            bytes_header: 32,
            keys_header: 32,
            keys_entry: 24,
            keys_unicode_entry: 16,
            keys_log2_size_at: 8,
            keys_index_bytes_at: 9,
            keys_kind_at: 10,
        }
    }

    #[test]
    fn the_slack_after_a_sized_object_is_no_root() {
        let o = objects();
        // A type object: its type, then basic size 24, no item size, flags, generic alloc, no
        // dict offset.
        let float_type = [1, 0x7000, 0, 0, 24, 0, 0, 0x7100, 0];
        let sized = o.sized_type(&float_type).expect("a sized type");
        assert_eq!(
            sized,
            SizedType {
                basicsize: 24,
                itemsize: 0,
                flags: 0,
                dict_after_items: false,
                inline_values: false,
            }
        );
        assert_eq!(o.type_bytes(), 72);
        // Not a type object, a custom allocator, an item size neither narrow (1, 2, 4) nor
        // whole words, inline values: not sized.
        for (i, v) in [(1, 0x7001), (7, 0x7101), (5, 12)] {
            let mut t = float_type;
            t[i] = v;
            assert_eq!(o.sized_type(&t), None, "word {i}");
        }
        // Inline values, not with items.
        let mut with_values = float_type;
        with_values[6] = 1 << 2;
        assert!(o.sized_type(&with_values).unwrap().inline_values);
        with_values[5] = 8;
        assert_eq!(o.sized_type(&with_values), None);
        // An int subclass with a `__dict__`: 4-byte items, dict pointer after them.
        let mut int_subclass = float_type;
        int_subclass[5] = 4;
        int_subclass[8] = -8isize as usize;
        let sized_subclass = o.sized_type(&int_subclass).expect("a sized type");
        assert!(sized_subclass.dict_after_items);
        int_subclass[8] = 16;
        assert!(!o.sized_type(&int_subclass).unwrap().dict_after_items);
        let gc_type = SizedType {
            basicsize: 136,
            itemsize: 0,
            flags: 1 << 14,
            dict_after_items: false,
            inline_values: false,
        };
        let tuple_type = SizedType {
            basicsize: 24,
            itemsize: 8,
            flags: 1 << 14,
            dict_after_items: false,
            inline_values: false,
        };
        let mut types = |t: usize| match t {
            0x8000 => Some(sized),
            0x8100 => Some(gc_type),
            0x8200 => Some(tuple_type),
            _ => None,
        };
        // A tuple of 4 after its GC head: 16 + 24 + 32 bytes in an 80-byte block.
        let mut tuple = [0usize; 10];
        tuple[..5].copy_from_slice(&[0x9000, 0x9100, 1, 0x8200, 4]);
        assert_eq!(o.object_end(&tuple, 80, &mut types), Some(72));
        // A float (refcount, type, value) in a 32-byte block: its fourth word is slack.
        assert_eq!(
            o.object_end(&[1, 0x8000, 7, 0xdead], 32, &mut types),
            Some(24)
        );
        // A GC object of 136 bytes after its 16-byte head, in a 160-byte block.
        let mut function = [0usize; 20];
        function[..4].copy_from_slice(&[0x9000, 0x9100, 3, 0x8100]);
        assert_eq!(o.object_end(&function, 160, &mut types), Some(152));
        // ... but not in a 176-byte block (a size that is not its class), nor at the wrong
        // offset for its flags, nor behind an address where a reference count belongs.
        assert_eq!(o.object_end(&function, 176, &mut types), None);
        assert_eq!(o.object_end(&[1, 0x8100, 0, 0], 32, &mut types), None);
        assert_eq!(
            o.object_end(&[0x5555_0000_1000, 0x8000, 7, 0xdead], 32, &mut types),
            None
        );
        // A list's item buffer whose second item is a type object: the first is an address.
        assert_eq!(
            o.object_end(&[0x7f00_0000_1000, 0x8000, 0, 0], 32, &mut types),
            None
        );
        // A compact ASCII str of 20 characters: 40 + 21 bytes, in a 64-byte block.
        let mut text = [0usize; 8];
        text[..5].copy_from_slice(&[1, 0x7200, 20, 0, 0xe4]);
        assert_eq!(o.object_end(&text, 64, &mut types), Some(61));
        // A compact UCS-2 str of 3 characters: 56 + 8 bytes.
        text[2] = 3;
        text[4] = 0xa8;
        assert_eq!(o.object_end(&text, 64, &mut types), Some(64));
        // Not compact: no size known.
        text[4] = 0x88;
        assert_eq!(o.object_end(&text, 64, &mut types), None);
        // In a pool, the str's words are read up to its last whole word: the word holding its
        // last characters and terminator holds no field of it, only bytes of the previous
        // occupant (a pointer whose low byte the terminator overwrote was seen there).
        // Nor is its state's word: the bit field's unnamed bits and the padding after it keep
        // an old pointer's upper bytes under the state's low byte.
        text[2] = 20;
        text[4] = 0x7f00_0000_12e4;
        text[7] = 0x7f00_0000_1200;
        let layout = small_pools(0, 0, Some(o));
        let base = 0x10000;
        let mut pool = vec![0usize; 32];
        pool[0] = 1; // one block in use
        pool[4] = 3usize << 32; // szidx 3: 64-byte blocks
        pool[5] = ((256 - 64) << 32) | (48 + 64); // maxnextoffset, nextoffset
        pool[6..14].copy_from_slice(&text);
        let mask = pool_mask(&pool, base, &layout, &mut types).expect("a pool");
        let scanned: Vec<usize> = (0..32).filter(|i| mask[*i]).collect();
        assert_eq!(scanned, [6, 7, 8, 9, 11, 12]);
        // bytes of length 20: 32 + 21 bytes, in a 64-byte block.
        let bytes = [1, 0x7300, 20, 0, 0, 0, 0, 0xdead];
        assert_eq!(o.object_end(&bytes, 64, &mut types), Some(53));
        assert_eq!(o.object_end(&bytes, 80, &mut types), None);
        // Cut down to length 40 (73 bytes) in the 96-byte block it was made in: pymalloc keeps
        // a block shrunk by less than a quarter in place; by more, it moves it.
        let shrunk = [1, 0x7300, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(o.object_end(&shrunk, 96, &mut types), Some(73));
        assert_eq!(o.object_end(&shrunk, 112, &mut types), None);
    }

    #[test]
    fn a_big_objects_chunk_is_read_up_to_the_object() {
        let layout = small_pools(0xc0de, 0xc4, Some(objects()));
        let tuple_type = SizedType {
            basicsize: 24,
            itemsize: 8,
            flags: 1 << 14,
            dict_after_items: false,
            inline_values: false,
        };
        let mut types = |t: usize| (t == 0x8200).then_some(tuple_type);
        // A code object: read up to its bytecode (the first whole word of it), whatever the
        // chunk's size; not with an address where its reference count belongs.
        let code = [1, 0xc0de, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            chunk_object_slack(&code, 0x270, &layout, &mut types),
            Some(0xc8)
        );
        let mut not_code = code;
        not_code[0] = 0x7f00_0000_1000;
        assert_eq!(
            chunk_object_slack(&not_code, 0x270, &layout, &mut types),
            None
        );
        // A tuple of 80 items after its GC head: 16 + 24 + 640 = 680 bytes, which malloc gives
        // a 0x2b0-byte chunk (680 + its size field, rounded up to 16): read up to the word
        // the object ends in; the same in a chunk 16 bytes bigger (an unsplit free chunk). Any
        // other chunk size: not this object, read whole.
        let tuple = [0x9000, 0x9100, 1, 0x8200, 80, 0, 0, 0];
        assert_eq!(
            chunk_object_slack(&tuple, 0x2b0, &layout, &mut types),
            Some(680)
        );
        assert_eq!(
            chunk_object_slack(&tuple, 0x2c0, &layout, &mut types),
            Some(680)
        );
        assert_eq!(chunk_object_slack(&tuple, 0x2d0, &layout, &mut types), None);
        assert_eq!(chunk_object_slack(&tuple, 0x2a0, &layout, &mut types), None);
        // 79 items: 672 bytes, the same chunk.
        let mut shorter = tuple;
        shorter[4] = 79;
        assert_eq!(
            chunk_object_slack(&shorter, 0x2b0, &layout, &mut types),
            Some(672)
        );
        // A native buffer (no reference count and type): none.
        let buffer = [0x7f00_0000_2000, 0x8200, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            chunk_object_slack(&buffer, 0x2b0, &layout, &mut types),
            None
        );
    }

    #[test]
    fn a_type_objects_chunk_is_read_up_to_its_sentinel_member() {
        // A heap type (3.11): a GC head, 904 bytes of type, then `ob_size` member definitions
        // of 40 bytes and the zeroed one PyType_GenericAlloc adds: no slots, 16 + 904 + 40 =
        // 960 bytes, which malloc gives a 0x3d0-byte chunk: its last word is slack.
        let layout = small_pools(0, 0, Some(objects()));
        let type_type = SizedType {
            basicsize: 904,
            itemsize: 40,
            flags: 1 << 14,
            dict_after_items: false,
            inline_values: false,
        };
        let mut types = |t: usize| (t == 0x7000).then_some(type_type);
        let class = [0x9000, 0x9100, 3, 0x7000, 0, 0, 0, 0];
        assert_eq!(
            chunk_object_slack(&class, 0x3d0, &layout, &mut types),
            Some(960)
        );
        // One slot: 1000 bytes, a 0x3f0-byte chunk; without the sentinel (960) it would fit
        // the 0x3d0 chunk: the item count decides.
        let mut one_slot = class;
        one_slot[4] = 1;
        assert_eq!(
            chunk_object_slack(&one_slot, 0x3f0, &layout, &mut types),
            Some(1000)
        );
        assert_eq!(
            chunk_object_slack(&one_slot, 0x3d0, &layout, &mut types),
            Some(960)
        );
        // glibc left the 16 bytes a split would have made in the chunk: the same object.
        assert_eq!(
            chunk_object_slack(&class, 0x3e0, &layout, &mut types),
            Some(960)
        );
        assert_eq!(chunk_object_slack(&class, 0x3f0, &layout, &mut types), None);
        // What the scan sizes from a type object: a word-multiple item size up to 256 bytes.
        let o = objects();
        let mut type_words = [0usize; 9];
        type_words[1] = o.type_type;
        type_words[4] = 904;
        type_words[5] = 40;
        type_words[6] = 1 << 14;
        type_words[7] = o.generic_alloc;
        assert_eq!(o.sized_type(&type_words), Some(type_type));
        type_words[5] = 12;
        assert_eq!(o.sized_type(&type_words), None);
        type_words[5] = 264;
        assert_eq!(o.sized_type(&type_words), None);
    }

    #[test]
    fn an_object_filling_its_block_exactly_has_a_known_start() {
        let o = objects();
        let list_type = SizedType {
            basicsize: 40,
            itemsize: 0,
            flags: 1 << 14,
            dict_after_items: false,
            inline_values: false,
        };
        let mut types = |t: usize| (t == 0x8300).then_some(list_type);
        // A list: its GC head, then the object (16 + 40 bytes), requested as 56 bytes.
        let list = [0x9000, 0x9100, 1, 0x8300, 0, 0, 0];
        assert_eq!(o.object_extent(&list, 56, &mut types), Some((16, 56)));
        assert_eq!(o.object_extent(&list, 64, &mut types), None);
        // An ASCII str of 41 characters: 40 + 41 + 1 bytes, from the block's start.
        let mut text = [0usize; 8];
        text[0] = 1;
        text[1] = o.str_type;
        text[2] = 41;
        text[4] = 0x20 | 0x40 | (1 << 2); // compact, ascii, kind 1
        assert_eq!(o.object_extent(&text, 82, &mut types), Some((0, 82)));
        // A buffer (no reference count and type where an object's header would be): none.
        assert_eq!(
            o.object_extent(&[0x7f00_0000_2000; 8], 56, &mut types),
            None
        );
    }

    #[test]
    fn an_object_with_narrow_items_is_read_up_to_its_items() {
        // A compiled regular expression (3.11: a GC head, 152 bytes of pattern, then `ob_size`
        // 4-byte code words): 9 words, 16 + 152 + 36 = 204 bytes, in a 208-byte block. Its
        // references end with its fields: its code and the block's last word (stale in the
        // block, seen naming a leaked list) are not read.
        let layout = small_pools(0, 0, Some(objects()));
        let pattern_type = SizedType {
            basicsize: 152,
            itemsize: 4,
            flags: 1 << 14,
            dict_after_items: false,
            inline_values: false,
        };
        // 3.12's declares one code word in its basic size (`code[1]`, then padding): 88 bytes
        // of fields, 96 of basic size, and 9 items make 16 + 96 + 36 = 148 bytes, of which the
        // last 8 are never written.
        let pattern12_type = SizedType {
            basicsize: 96,
            ..pattern_type
        };
        // A subclass whose dict pointer follows its items (negative `tp_dictoffset`).
        let with_dict = SizedType {
            dict_after_items: true,
            ..pattern12_type
        };
        let mut types = |t: usize| match t {
            0x8400 => Some(pattern_type),
            0x8500 => Some(pattern12_type),
            0x8600 => Some(with_dict),
            _ => None,
        };
        let o = objects();
        let pattern = [0x9000, 0x9100, 2, 0x8400, 9, 0, 0, 0];
        assert_eq!(o.object_end(&pattern, 208, &mut types), Some(168));
        let mut pattern12 = pattern;
        pattern12[3] = 0x8500;
        assert_eq!(o.object_end(&pattern12, 160, &mut types), Some(112));
        // As a block of exactly its size (a candidate of the scan).
        assert_eq!(
            o.object_extent(&pattern12, 148, &mut types),
            Some((16, 112))
        );
        // Still sized by its items: not in a block of another size.
        assert_eq!(o.object_end(&pattern12, 176, &mut types), None);
        pattern12[3] = 0x8600;
        assert_eq!(o.object_end(&pattern12, 160, &mut types), Some(148));
        let mut pool = vec![0usize; 64];
        pool[0] = 1; // one block in use
        pool[4] = 12usize << 32; // szidx 12: 208-byte blocks
        pool[5] = ((512 - 208) << 32) | (48 + 208); // maxnextoffset, nextoffset
        pool[6..14].copy_from_slice(&pattern);
        pool[6 + 25] = 0x7f00_0000_2000; // the block's last word: slack
        let layout512 = PoolLayout {
            pool_size: 512,
            ..layout
        };
        let mask = pool_mask(&pool, 0x10000, &layout512, &mut types).expect("a pool");
        let scanned: Vec<usize> = (0..64).filter(|i| mask[*i]).collect();
        assert_eq!(scanned, (6..6 + 21).collect::<Vec<_>>());
    }

    #[test]
    fn inline_values_are_read_up_to_their_insertion_order() {
        // A 3.13 instance of a class: pre-header and GC head (32 bytes), reference count and
        // type (its basic size, 16), then inline values: a word whose first byte is their
        // capacity (25), 25 values, and 25 order bytes rounded up to 32: 288 bytes. The order
        // array's unwritten bytes kept a stale address.
        let o = objects();
        let class = SizedType {
            basicsize: 16,
            itemsize: 0,
            flags: (1 << 14) | (1 << 4) | (1 << 2),
            dict_after_items: false,
            inline_values: true,
        };
        let mut types = |t: usize| (t == 0x8700).then_some(class);
        let mut instance = vec![0usize; 36];
        instance[..7].copy_from_slice(&[0, 0, 0x9000, 0x9100, 1, 0x8700, 0x0101_0019]);
        instance[32] = 0x0706_0504_0302_0100;
        instance[34] = 0x7f00_0000_2000;
        assert_eq!(o.object_end(&instance, 288, &mut types), Some(256));
        assert_eq!(o.object_end(&instance, 320, &mut types), None);
        assert_eq!(o.object_extent(&instance, 288, &mut types), Some((32, 256)));
        // Capacity 23: 48 + 8 + 184 + 24 = 264 bytes, in a 272-byte block.
        instance[6] = 0x0101_0017;
        assert_eq!(o.object_end(&instance, 272, &mut types), Some(240));
        // Capacity 29, allocated for 30: 48 + 8 + 240 + 32 = 328 bytes; the order array
        // starts after 29 values.
        instance.resize(42, 0);
        instance[6] = 0x0101_001d;
        assert_eq!(o.object_end(&instance, 336, &mut types), Some(288));
        assert_eq!(o.object_extent(&instance, 328, &mut types), Some((32, 288)));
        assert_eq!(o.object_extent(&instance, 320, &mut types), Some((32, 288)));
        assert_eq!(o.object_extent(&instance, 312, &mut types), None);
    }

    #[test]
    fn small_chunks_and_dict_keys_in_chunks_are_read_up_to_the_object() {
        // A bytes object of 425 characters made bigger and shrunk by realloc stays in a glibc
        // chunk of pymalloc's sizes: 32 + 425 + 1 = 458 bytes in a 0x1e0-byte chunk.
        let layout = small_pools(0, 0, Some(objects()));
        let bytes = [1, 0x7300, 425, 0x1234_5678, 0, 0, 0, 0];
        assert_eq!(
            chunk_object_slack(&bytes, 0x1e0, &layout, &mut |_| None),
            Some(456)
        );
        // A dict keys object of 64 str-keyed slots: 32 + 64 + 42 * 16 = 768 bytes, a
        // 0x310-byte chunk.
        let keys = [1, 0x02_0606, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            chunk_object_slack(&keys, 0x310, &layout, &mut |_| None),
            Some(768)
        );
        assert_eq!(
            chunk_object_slack(&keys, 0x330, &layout, &mut |_| None),
            None
        );
    }

    #[test]
    fn a_dict_keys_block_is_read_up_to_the_keys_object() {
        let o = objects();
        // Reference count 1; log2 size 3, log2 index bytes 3, str keys (kind 1), then a stale
        // padding byte: 32 + 8 + 5 entries of 16 = 120 bytes, in a 128-byte block.
        let keys = [1, 0x3a01_0303, 2, 3, 0, 0, 0, 0];
        assert_eq!(o.keys_end(&keys, 128), Some(120));
        assert_eq!(o.keys_end(&keys, 144), None);
        // General keys (kind 0): entries of 24, 32 + 8 + 120 = 160 bytes.
        assert_eq!(o.keys_end(&[1, 0x0303, 0, 0], 160), Some(160));
        // 256 slots take 2-byte indices: log2 index bytes 9, not 8.
        assert_eq!(
            o.keys_end(&[1, 0x01_0908, 0, 0], 32 + 512 + 170 * 16),
            Some(3264)
        );
        assert_eq!(o.keys_end(&[1, 0x01_0808, 0, 0], 32 + 256 + 170 * 16), None);
        // No kind 3; an address where the reference count belongs; unknown layout.
        assert_eq!(o.keys_end(&[1, 0x03_0303, 0, 0], 128), None);
        assert_eq!(o.keys_end(&[0x7f00_0000_1000, 0x01_0303, 0, 0], 128), None);
        let unknown = ObjectLayout {
            keys_header: 0,
            ..o
        };
        assert_eq!(unknown.keys_end(&keys, 128), None);
        // In a pool: the keys block's last word is not read.
        let layout = small_pools(0, 0, Some(o));
        let mut pool = vec![0usize; 32];
        pool[0] = 1; // one block in use
        pool[4] = 7usize << 32; // szidx 7: 128-byte blocks
        pool[5] = ((256 - 128) << 32) | (48 + 128); // maxnextoffset, nextoffset
        pool[6..14].copy_from_slice(&keys);
        pool[21] = 0x7f00_0000_2000; // the block's last word: slack
        let mask = pool_mask(&pool, 0x10000, &layout, &mut |_| None).expect("a pool");
        let scanned: Vec<usize> = (0..32).filter(|i| mask[*i]).collect();
        assert_eq!(scanned, (6..21).collect::<Vec<_>>());
    }
}
