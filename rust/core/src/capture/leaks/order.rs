//! The order roots are read in. A leak scan stops once every candidate is reachable (see
//! `reach::classify`), so roots that most often point at a test's surviving blocks come first;
//! the verdicts do not depend on the order, only the scan's cost does.
//!
//! On bitarray's suite, read in address order, the last reference found was almost always in
//! the interpreter's static data (its type attribute cache, cached and interned objects), at
//! 99% of the bytes read: loaded objects' data and the live stacks are a few MB, the heap and
//! anonymous memory tens to hundreds.

use super::maps::Region;

/// Is `region` read first: memory of a loaded object (not anonymous, not the heap) or a live
/// stack? Such memory holds no Python list's buffer and no free heap chunk (those come from
/// the C library's heap and anonymous mappings), so it is masked with the interpreter's static
/// stale ranges alone.
pub fn is_early(region: &Region) -> bool {
    !region.anonymous && region.heap.is_none()
}

/// The part of `range` inside `first` (the memory read before the rest of the early regions:
/// the interpreter's runtime state), if any. On bitarray's suite the last reference a scan
/// needed lay there in 195 of the 220 scans that read memory, after 1.4 MB of other early
/// regions read in address order; it is 166 KB (CPython 3.11), and the interpreter's own data
/// around it 1.1 MB.
pub fn inside(range: (usize, usize), first: (usize, usize)) -> Option<(usize, usize)> {
    let (start, end) = (range.0.max(first.0), range.1.min(first.1));
    (start < end).then_some((start, end))
}

/// The parts of `range` outside `first` (see [`inside`]), in address order.
pub fn outside(
    range: (usize, usize),
    first: (usize, usize),
) -> impl Iterator<Item = (usize, usize)> {
    [
        (range.0, range.1.min(first.0)),
        (range.0.max(first.1), range.1),
    ]
    .into_iter()
    .filter(|(start, end)| start < end)
}

/// Sort the regions read after the early ones: anonymous memory right after an early region
/// (the part of a loaded object's `.bss` its file does not cover) first, by address; then the
/// rest, smallest first. Small mappings are mostly pymalloc's arenas, where the Python objects
/// that hold a test's surviving blocks live; the big ones are the C library's heap (read last
/// also spares its free-chunk walk to scans that stop before it) and large buffers of data.
/// On bitarray's suite the scans that went past `.bss` read 138 MB before their last
/// reference in address order, an arena at the top of memory.
pub fn sort_late(late: &mut [Region], early: &[Region]) {
    let mut ends: Vec<usize> = early.iter().map(|r| r.end.get()).collect();
    ends.sort_unstable();
    late.sort_by_key(|r| {
        let after_object = r.anonymous && ends.binary_search(&r.start.get()).is_ok();
        let size = if after_object {
            0
        } else {
            r.end.get() - r.start.get()
        };
        (!after_object, size, r.start.get())
    });
}

/// The late memory a scan reads first, after loaded objects' `.bss`: the windows (of
/// [`HINT_WINDOW`] bytes, on its grid) where the last few scans that read late memory found
/// the reference that made their last candidate reachable, the latest first. Tests of one
/// suite leave their blocks in the same few places (on bitarray's suite, a test case's
/// attributes, in the pymalloc arenas where the test cases were made side by side): 15 of the
/// 25 scans that read past `.bss` found their last reference in one of the 4 latest windows,
/// after reading 20 to 40 MB in the order of [`sort_late`].
pub struct Hints([usize; HINTS_KEPT]);

/// The bytes of a hint: a pymalloc arena's (CPython 3.10 and later), and a multiple of every
/// chunk size a region is read in, so a range split on it is read in the same chunks.
const HINT_WINDOW: usize = 1 << 20;
const HINTS_KEPT: usize = 4;

impl Hints {
    pub const fn new() -> Hints {
        Hints([0; HINTS_KEPT])
    }

    /// The windows to read first, the latest first.
    pub fn windows(&self) -> Vec<(usize, usize)> {
        self.0
            .iter()
            .filter(|&&start| start != 0)
            .map(|&start| (start, start + HINT_WINDOW))
            .collect()
    }

    /// A late scan ended on reading the memory at `address`: its window becomes the first.
    pub fn remember(&mut self, address: usize) {
        let start = address & !(HINT_WINDOW - 1);
        let kept = &mut self.0;
        let at = kept
            .iter()
            .position(|&w| w == start)
            .unwrap_or(HINTS_KEPT - 1);
        kept[..=at].rotate_right(1);
        kept[0] = start;
    }
}

#[cfg(test)]
mod tests {
    use super::super::maps::Heap;
    use super::*;

    #[test]
    fn the_memory_read_first_is_split_off_the_ranges_it_lies_in() {
        let first = (0x1800, 0x2800);
        assert_eq!(inside((0x1000, 0x2000), first), Some((0x1800, 0x2000)));
        assert_eq!(inside((0x2800, 0x3000), first), None);
        let rest = |range| outside(range, first).collect::<Vec<_>>();
        assert_eq!(rest((0x1000, 0x3000)), [(0x1000, 0x1800), (0x2800, 0x3000)]);
        assert_eq!(rest((0x1000, 0x2000)), [(0x1000, 0x1800)]);
        assert_eq!(rest((0x2000, 0x2400)), []);
        assert_eq!(rest((0x3000, 0x4000)), [(0x3000, 0x4000)]);
        // Nothing to read first: every range is read whole.
        assert_eq!(
            outside((0x1000, 0x2000), (0, 0)).collect::<Vec<_>>(),
            [(0x1000, 0x2000)]
        );
    }

    #[test]
    fn object_data_and_stacks_are_early_then_bss_then_the_rest_smallest_first() {
        let mut heap = Region::new(0x2000, 0x9000, false);
        heap.heap = Some(Heap::Main);
        let regions = [
            Region::new(0x1000, 0x2000, false), // an object's data
            heap,
            Region::new(0x10000, 0x20000, true),  // anonymous
            Region::new(0x30000, 0x31000, false), // another object's data
            Region::new(0x31000, 0x32000, true),  // its .bss
            Region::new(0x40000, 0x41000, false), // a live stack
            Region::new(0x50000, 0x51000, true),  // a small anonymous mapping (an arena)
        ];
        let (early, mut late): (Vec<Region>, Vec<Region>) =
            regions.iter().partition(|r| is_early(r));
        let starts = |rs: &[Region]| rs.iter().map(|r| r.start.get()).collect::<Vec<_>>();
        assert_eq!(starts(&early), [0x1000, 0x30000, 0x40000]);
        sort_late(&mut late, &early);
        assert_eq!(starts(&late), [0x31000, 0x50000, 0x2000, 0x10000]);
    }

    #[test]
    fn the_windows_of_the_latest_endings_are_read_first_without_repeats() {
        let w = HINT_WINDOW;
        let mut hints = Hints::new();
        assert!(hints.windows().is_empty());
        for address in [5 * w + 10, 7 * w, 5 * w + 99, 9 * w + 8, 11 * w, 13 * w + 1] {
            hints.remember(address);
        }
        let starts: Vec<usize> = hints.windows().iter().map(|h| h.0 / w).collect();
        assert_eq!(starts, [13, 11, 9, 5]);
        assert!(hints.windows().iter().all(|h| h.1 - h.0 == w));
    }

    #[test]
    fn memory_split_at_a_window_is_read_in_the_same_chunks_as_whole() {
        use super::super::late::tests::visited;
        // Real memory across two window lines, with no-reference ranges over each line and
        // ending or starting on it.
        let words: Vec<usize> = (0..(3 * HINT_WINDOW) / 8).map(|i| i + 1).collect();
        let (start, end) = (
            words.as_ptr() as usize,
            words.as_ptr() as usize + 3 * HINT_WINDOW,
        );
        let region = Region::new(start, end, false);
        let lines: Vec<usize> = (1..=3)
            .map(|k| (start & !(HINT_WINDOW - 1)) + k * HINT_WINDOW)
            .filter(|&l| start < l && l < end)
            .collect();
        assert!(lines.len() >= 2);
        let dead: Vec<(usize, usize)> = vec![
            (lines[0] - 40, lines[0] + 24),
            (lines[1] - 4096, lines[1]),
            (lines[1], lines[1] + 72),
        ];
        let dead = super::super::merged_tagged(dead);
        let whole = visited(region, (start, end), &dead);
        for window in [
            (lines[0], lines[1]),
            (lines[0] - HINT_WINDOW, lines[0]),
            (lines[1], lines[1] + HINT_WINDOW),
        ] {
            let first = inside((start, end), window).expect("the window overlaps");
            let mut split = visited(region, first, &dead);
            for rest in outside((start, end), window) {
                split.extend(visited(region, rest, &dead));
            }
            // The same chunks, the window's first.
            split.sort();
            let mut whole = whole.clone();
            whole.sort();
            assert_eq!(split, whole, "{window:x?}");
        }
    }
}
