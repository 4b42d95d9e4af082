//! glibc's main heap: which of its memory is free (and so holds no roots).

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

/// The free memory of glibc's main heap `[base, end)` (`base`: the heap's first byte, where
/// its first chunk starts), read a word at a time through `word_at` (None: unreadable): chunks
/// in bins (the next chunk's PREV_INUSE bit is clear), the top chunk (also when its size runs
/// past `end`: the heap grew since the mappings were read), and the chunks the main
/// thread's tcache holds (the heap's first chunk; their links are mangled with safe-linking,
/// glibc 2.32+), and the top chunk also when the heap shrank since (the next chunk's header
/// is then unreadable). Only chunk headers are read, so a large free chunk costs one jump. `None`
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
        (addr >= base && addr + word <= end && addr % word == 0)
            .then(|| word_at(addr))
            .flatten()
    };
    let mut free = Vec::new();
    let mut chunk = base;
    let mut previous: Option<usize> = None;
    let mut chunks = 0usize;
    let mut top = None;
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
        if size < 4 * word || size % (2 * word) != 0 || chunk + size > end {
            // The top chunk's size may run past the end (the heap grew after the mappings
            // were read); anything else means this is no heap.
            if chunks == 0 || chunk.saturating_add(size) < end {
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
}
