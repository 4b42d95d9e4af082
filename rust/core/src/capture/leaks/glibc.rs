//! glibc's heaps: which of their memory is free (and so holds no roots). The main arena's
//! heap is the `[heap]` region; every other arena (threads other than the main one allocate
//! from one) is a list of heaps, each mapped on its own at a multiple of [`ARENA_HEAP_BYTES`].

/// The size of the chunk `malloc(n)` takes from glibc's heap, header included: `n` plus the
/// chunk's size field, rounded up to 16 bytes, 32 at least.
pub fn chunk_for_request(n: usize) -> usize {
    let word = std::mem::size_of::<usize>();
    (n + word).next_multiple_of(2 * word).max(4 * word)
}

/// Whether a chunk in use of `chunk` bytes can be what `malloc(n)` returned: the chunk of that
/// request, or 16 bytes more, as malloc does not split a free chunk when less than 32 bytes
/// would be left (seen: a class's 960 bytes in a 992-byte chunk).
pub fn chunk_holds_request(chunk: usize, n: usize) -> bool {
    let rounded = chunk_for_request(n);
    chunk == rounded || chunk == rounded + 2 * std::mem::size_of::<usize>()
}

/// The heaps of glibc's arenas other than the main one are mapped at multiples of their largest
/// size, `HEAP_MAX_SIZE` (twice the largest mmap threshold: 64 MiB on 64-bit), so that a chunk
/// finds its heap's header by masking its address.
pub const ARENA_HEAP_BYTES: usize = 2 * 4 * 1024 * 1024 * std::mem::size_of::<usize>();

/// `sizeof(struct malloc_state)`, an arena's header (its bins and top), on 64-bit glibc 2.27+.
const MALLOC_STATE_BYTES: usize = 2200;

/// The chunks of the heap at `heap` (a multiple of [`ARENA_HEAP_BYTES`]) of one of glibc's
/// arenas other than the main one, from its `heap_info` header: where the first chunk starts
/// (after the header, and in an arena's first heap after the arena's `malloc_state` too) and
/// where the chunks end (the heap's current size). None when the words there are no such
/// header. The header's size is the arena's offset in its first heap: 4 words, or 6 since
/// glibc 2.35 (a page size and padding).
pub fn arena_heap_chunks(
    word_at: &mut dyn FnMut(usize) -> Option<usize>,
    heap: usize,
) -> Option<(usize, usize)> {
    const PAGE: usize = 4096;
    let word = std::mem::size_of::<usize>();
    if word != 8 || !heap.is_multiple_of(ARENA_HEAP_BYTES) {
        return None;
    }
    let arena = word_at(heap)?;
    let (size, mprotect_size) = (word_at(heap + 2 * word)?, word_at(heap + 3 * word)?);
    let header = arena % ARENA_HEAP_BYTES;
    let first_heap = arena == heap + header;
    let base = if first_heap {
        (arena + MALLOC_STATE_BYTES).next_multiple_of(2 * word)
    } else {
        heap + header
    };
    let sizes_fit = size % PAGE == 0 && size <= mprotect_size && mprotect_size <= ARENA_HEAP_BYTES;
    ((header == 4 * word || header == 6 * word) && sizes_fit && base + 4 * word <= heap + size)
        .then(|| (base, heap + size))
}

/// The free memory of one of glibc's heaps, its chunks `[base, end)` (`base`: where its first
/// chunk starts; see [`arena_heap_chunks`] for the heaps of other arenas than the main one),
/// read a word at a time through `word_at` (None: unreadable): chunks in bins (the next
/// chunk's PREV_INUSE bit is clear), the top chunk (also when its size runs past `end`: the
/// heap grew since the mappings were read), the end of a heap its arena grew past (from its
/// fencepost), and the chunks held by the tcache of the thread that allocated first from the
/// heap's arena (the heap's first chunk; their links are mangled with safe-linking, glibc
/// 2.32+), and the top chunk also when the heap shrank since (the next chunk's header is then
/// unreadable). Only chunk headers are read, so a large free chunk costs one jump. `None`
/// when the words do not walk as a heap: then nothing is masked. Free memory keeps whatever
/// it held, and a stale pointer there would hide a leak. `in_use` is told every other chunk
/// (its address and size; tcache chunks among them), in address order.
pub fn glibc_free_chunks(
    word_at: &mut dyn FnMut(usize) -> Option<usize>,
    base: usize,
    end: usize,
    in_use: &mut dyn FnMut(usize, usize),
) -> Option<Vec<(usize, usize)>> {
    const PREV_INUSE: usize = 1;
    const TCACHE_STRUCT: usize = 0x290;
    let word = std::mem::size_of::<usize>();
    let mut at = |addr: usize| -> Option<usize> {
        (addr >= base && addr.checked_add(word)? <= end && addr.is_multiple_of(word))
            .then(|| word_at(addr))
            .flatten()
    };
    let mut free = Vec::new();
    let mut chunk = base;
    let mut previous: Option<usize> = None;
    let mut chunks = 0usize;
    let mut top = None;
    let mut first_in_use = false;
    while chunk + 2 * word <= end {
        let Some(size_field) = at(chunk + word) else {
            // The heap shrank after the mappings were read: the C library gives back the top
            // of its heap when enough memory there is freed, and the scan frees its own
            // buffers as it goes. The chunk before was the top. (Failing the walk here
            // masked nothing, and a pointer left in an object's slack hid a leak.)
            if chunks == 0 {
                return None;
            }
            break;
        };
        let size = size_field & !7;
        if size < 4 * word || size % (2 * word) != 0 || chunk.saturating_add(size) > end {
            // A fencepost (a 16-byte chunk, or a 0-byte one) ends a heap that its arena grew
            // past into a new one: the rest of the heap is no chunk, as past a top. The top
            // chunk's size may run past the end (the heap grew after the mappings were
            // read); anything else means this is no heap.
            let fencepost = size == 0 || size == 2 * word;
            if chunks == 0 || (!fencepost && chunk.saturating_add(size) < end) {
                return None;
            }
            top = Some(chunk);
        }
        // A chunk is known free or in use from the next one's header, the top's included (the
        // chunk before the top was never told: heapgate's own block there was read whole).
        if let Some(prev) = previous {
            if size_field & PREV_INUSE == 0 {
                free.push((prev, chunk));
            } else {
                first_in_use |= prev == base;
                in_use(prev, chunk - prev);
            }
        }
        if top.is_some() {
            break;
        }
        previous = Some(chunk);
        chunk += size;
        chunks += 1;
    }
    // The last chunk is the top: free space at the end of the heap.
    match (top, previous) {
        (Some(top), _) => free.push((top, end)),
        (None, Some(prev)) => free.push((prev, end.min(chunk))),
        (None, None) => {}
    }
    // A thread's tcache: counts (u16 x 64) then entries (64 pointers) in the first chunk. A
    // thread that ended freed its tcache: what is left there is stale.
    if first_in_use && at(base + word).map(|s| s & !7) == Some(TCACHE_STRUCT) {
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
                if size < 4 * word || chunk.checked_add(size).is_none_or(|e| e > end) {
                    break;
                }
                // Up to the next chunk's first word too: glibc writes a chunk's size there only
                // when it frees the chunk into a bin, and a tcache chunk is part of no bin, so
                // that word is the free chunk's last (dead) word of user data.
                free.push((chunk + 2 * word, chunk + size + word));
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

#[cfg(test)]
mod tests {
    use super::super::reach::mask_out_ranges;
    use super::*;

    /// Set the word at `addr` of `words`, which stand for `[base, base + 8 * words.len())`.
    fn put(words: &mut [usize], base: usize, addr: usize, value: usize) {
        words[(addr - base) / 8] = value;
    }

    /// Words of `[base, base + 8 * words.len())` as a `glibc_free_chunks` reader.
    fn words_reader(words: &[usize], base: usize) -> impl FnMut(usize) -> Option<usize> + '_ {
        move |addr| words.get(addr.checked_sub(base)? / 8).copied()
    }

    #[test]
    fn free_chunks_of_a_glibc_heap() {
        let base = 0x10000;
        // tcache struct (0x290), an in-use chunk (0x30), a free chunk (0x40, next has
        // PREV_INUSE clear), an in-use chunk (0x20), then the top (0x100).
        let mut words = vec![0usize; (0x290 + 0x30 + 0x40 + 0x20 + 0x100) / 8];
        put(&mut words, base, base + 8, 0x291);
        let a = base + 0x290;
        put(&mut words, base, a + 8, 0x31);
        let b = a + 0x30;
        put(&mut words, base, b + 8, 0x41);
        let c = b + 0x40;
        put(&mut words, base, c + 8, 0x20); // PREV_INUSE clear: b is free
        let top = c + 0x20;
        put(&mut words, base, top + 8, 0x101);
        // tcache bin 0 holds chunk `a` (count 1, entry -> a's user data).
        put(&mut words, base, base + 16, 1);
        put(&mut words, base, base + 16 + 128, a + 16);
        put(&mut words, base, a + 16, (a + 16) >> 12); // mangled NULL
        let end = base + words.len() * 8;
        let mut used = Vec::new();
        let free = glibc_free_chunks(&mut words_reader(&words, base), base, end, &mut |c, s| {
            used.push((c, s))
        })
        .expect("walks as a heap");
        // The tcache struct, `a` (in use as glibc sees it) and `c`; not `b`, nor the top.
        assert_eq!(used, vec![(base, 0x290), (a, 0x30), (c, 0x20)]);
        // The tcache chunk's user data runs into the next chunk's first word.
        assert_eq!(free, vec![(a + 16, a + 0x38), (b, c), (top, top + 0x100)]);
        let mut mask = vec![true; words.len()];
        mask_out_ranges(&mut mask, base, &free);
        assert!(mask[(a - base) / 8 + 1] && !mask[(a - base) / 8 + 2] && !mask[(b - base) / 8]);
        // The heap grew after its mapping was read: the top runs past the end, and the tcache
        // is still walked (it was not, and a stale pointer in a tcache chunk hid a leak).
        let short = top + 0x80;
        let mut used = Vec::new();
        let free = glibc_free_chunks(&mut words_reader(&words, base), base, short, &mut |c, s| {
            used.push((c, s))
        })
        .expect("walks as a heap");
        assert_eq!(free, vec![(a + 16, a + 0x38), (b, c), (top, short)]);
        // The chunk before that top is still told as in use (from the top's header).
        assert_eq!(used, vec![(base, 0x290), (a, 0x30), (c, 0x20)]);
        // The heap shrank after its mapping was read (its top given back): past the top, no
        // header can be read. The walk ends there, with the top free, and the chunks before it
        // still told (it failed, and masked nothing).
        let gone = top + 0x20;
        let mut shrunk = words_reader(&words, base);
        let mut reader = |addr: usize| if addr >= gone { None } else { shrunk(addr) };
        let mut used = Vec::new();
        let free = glibc_free_chunks(&mut reader, base, end + 0x1000, &mut |c, s| {
            used.push((c, s))
        })
        .expect("walks as a heap");
        assert_eq!(free, vec![(a + 16, a + 0x38), (b, c), (top, top + 0x100)]);
        assert_eq!(used, vec![(base, 0x290), (a, 0x30), (c, 0x20)]);
        let mut none = |_, _| {};
        assert!(glibc_free_chunks(
            &mut words_reader(&[0, 3, 5], 0x1000),
            0x1000,
            0x1018,
            &mut none
        )
        .is_none());
    }

    #[test]
    fn the_chunks_of_a_heap_of_another_arena() {
        let heap = 3 * ARENA_HEAP_BYTES;
        let header = |arena: usize, size: usize, mprotect_size: usize| {
            vec![arena, 0, size, mprotect_size, 0x1000, 0]
        };
        let chunks =
            |words: &[usize], at: usize| arena_heap_chunks(&mut words_reader(words, at), at);
        // An arena's first heap: the arena follows the header (6 words, glibc 2.35+), and the
        // chunks follow the arena (as read off glibc 2.36: the first chunk at +0x8d0).
        let first = header(heap + 0x30, 0x21000, 0x21000);
        assert_eq!(chunks(&first, heap), Some((heap + 0x8d0, heap + 0x21000)));
        // A later heap of that arena: its chunks follow its header.
        let later = heap + ARENA_HEAP_BYTES;
        assert_eq!(
            chunks(&header(heap + 0x30, 0x4000, 0x8000), later),
            Some((later + 0x30, later + 0x4000))
        );
        // glibc before 2.35: a 4-word header (the arena ends at +0x8b8, chunks are 16-aligned).
        assert_eq!(
            chunks(&header(later + 0x20, 0x4000, 0x4000), later),
            Some((later + 0x8c0, later + 0x4000))
        );
        // No heap: an arena at no header's offset, a size past what is mapped, not on the grid.
        assert_eq!(chunks(&header(heap + 0x40, 0x21000, 0x21000), heap), None);
        assert_eq!(chunks(&header(heap + 0x30, 0x22000, 0x21000), heap), None);
        assert_eq!(
            chunks(&header(heap + 0x30, 0x21000, 0x21000), heap + 0x1000),
            None
        );
    }

    #[test]
    fn a_heap_its_arena_grew_past_ends_at_its_fencepost() {
        let base = 0x10000;
        // An in-use chunk (0x30), the old top freed (0x40), then glibc's fenceposts: a 16-byte
        // chunk (PREV_INUSE clear: the old top is free) and a 0-byte one.
        let mut words = vec![0usize; 0x100 / 8];
        put(&mut words, base, base + 8, 0x35);
        let old_top = base + 0x30;
        put(&mut words, base, old_top + 8, 0x45);
        let fence = old_top + 0x40;
        put(&mut words, base, fence + 8, 0x10);
        put(&mut words, base, fence + 0x18, 0x1);
        let end = base + words.len() * 8;
        let mut used = Vec::new();
        let free = glibc_free_chunks(&mut words_reader(&words, base), base, end, &mut |c, s| {
            used.push((c, s))
        })
        .expect("walks as a heap");
        assert_eq!(used, vec![(base, 0x30)]);
        assert_eq!(free, vec![(old_top, fence), (fence, end)]);
        // A 16-byte chunk anywhere else is no heap.
        assert!(glibc_free_chunks(
            &mut words_reader(&[0, 0x11, 0, 0x11], base),
            base,
            base + 0x20,
            &mut |_, _| {}
        )
        .is_none());
    }
}
