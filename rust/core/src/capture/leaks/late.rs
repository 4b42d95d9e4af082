//! The ranges of the late regions (see `order`) that hold no references, each kind found only
//! when the scan first reaches a region it can lie in. Finding them costs what the process
//! holds — free chunks: a walk of each of glibc's heaps; lists' spare capacity and other
//! containers' stale slots: a walk of every container CPython's GC tracks — while most scans
//! that go past the early regions stop in the first late ones, the `.bss` of loaded objects,
//! where neither can lie.
//!
//! A kind of range is found before the first region it can lie in is read, so every region is
//! read with exactly the ranges it would be read with had all been found first: the verdicts
//! are those of the eager scan (a property test below checks this on real memory).

use super::maps::Region;
use super::merged_tagged;

/// Static data of loaded objects: the writable `PT_LOAD` segments at their runtime addresses,
/// to whole pages (the rest of a segment's last page is the object's mapping too), sorted.
pub fn static_data() -> Vec<(usize, usize)> {
    const PAGE: usize = 4096;
    let mut ranges = Vec::new();
    super::super::objects::walk(|object| {
        ranges.extend(
            object
                .segments()
                .filter(|s| s.flags & libc::PF_W != 0 && s.start < s.end)
                .map(|s| (s.start & !(PAGE - 1), s.end.next_multiple_of(PAGE))),
        );
        std::ops::ControlFlow::Continue(())
    });
    ranges.sort_unstable();
    ranges
}

/// The no-reference ranges of the late regions, found as the scan reaches them.
pub struct LateDead<'a> {
    /// Found up front (cheap): they may lie anywhere.
    always: Vec<(usize, usize)>,
    /// Free chunks of the C library's heaps, each of which lies in its heap's region only.
    heap_free: Vec<(usize, usize)>,
    /// The heap regions walked for them, by start.
    heaps_walked: Vec<usize>,
    find_heap_free: &'a mut dyn FnMut(&Region) -> Vec<(usize, usize)>,
    /// Containers' stale slots (lists' spare capacity, dead slots of generators' and frame
    /// objects' frames): parts of list buffers and of those objects, which the interpreter
    /// allocates at run time, so never in a loaded object's static data. (The binding adds
    /// the padding of the key maps readline mallocs.)
    lists: Option<Vec<(usize, usize)>>,
    find_lists: &'a mut dyn FnMut() -> Vec<(usize, usize)>,
    /// See [`static_data`].
    statics: &'a [(usize, usize)],
    /// All found so far, tagged, sorted and merged (see `merged_tagged`).
    merged: Vec<(usize, usize)>,
}

impl<'a> LateDead<'a> {
    /// `always`: ranges known now; `find_heap_free` finds the free chunks of the heap region
    /// it is given (once per region), `find_lists` the lists' spare capacity; `statics`: see
    /// [`static_data`].
    pub fn new(
        always: Vec<(usize, usize)>,
        find_heap_free: &'a mut dyn FnMut(&Region) -> Vec<(usize, usize)>,
        find_lists: &'a mut dyn FnMut() -> Vec<(usize, usize)>,
        statics: &'a [(usize, usize)],
    ) -> LateDead<'a> {
        LateDead {
            merged: merged_tagged(always.clone()),
            always,
            heap_free: Vec::new(),
            heaps_walked: Vec::new(),
            find_heap_free,
            lists: None,
            find_lists,
            statics,
        }
    }

    /// The ranges to read static data with (see [`static_prefix_end`]): neither kind found
    /// late lies there.
    pub fn for_static_data(&self) -> &[(usize, usize)] {
        &self.merged
    }

    /// The ranges to read `region` with (tagged, sorted, merged): every range that lies in
    /// it is among them.
    pub fn for_region(&mut self, region: &Region) -> &[(usize, usize)] {
        let mut found = false;
        if region.heap.is_some() && !self.heaps_walked.contains(&region.start.get()) {
            self.heaps_walked.push(region.start.get());
            let free = (self.find_heap_free)(region);
            self.heap_free.extend(free);
            found = true;
        }
        if self.lists.is_none() && !within(self.statics, region) {
            self.lists = Some((self.find_lists)());
            found = true;
        }
        if found {
            let mut all = self.always.clone();
            all.extend(&self.heap_free);
            all.extend(self.lists.iter().flatten());
            self.merged = merged_tagged(all);
        }
        &self.merged
    }
}

/// Where the static data that `region` starts with ends (`region.start`: none), on the grid
/// of `chunk` bytes `visit_region` reads it by (or at the region's end), so that its two
/// parts are read in the same chunks as the whole. The kernel merges an object's `.bss` with
/// anonymous memory mapped right after it into one region; lists may lie in that memory.
pub fn static_prefix_end(statics: &[(usize, usize)], region: &Region, chunk: usize) -> usize {
    let (start, end) = (region.start.get(), region.end.get());
    let i = statics.partition_point(|r| r.0 <= start);
    match i.checked_sub(1).map(|i| statics[i].1) {
        Some(static_end) if static_end >= end => end,
        Some(static_end) if static_end > start => (static_end / chunk * chunk).max(start),
        _ => start,
    }
}

/// Does one of the sorted `ranges` hold all of `region`?
fn within(ranges: &[(usize, usize)], region: &Region) -> bool {
    let (start, end) = (region.start.get(), region.end.get());
    let i = ranges.partition_point(|r| r.0 <= start);
    i > 0 && end <= ranges[i - 1].1
}

#[cfg(test)]
pub(super) mod tests {
    use std::cell::Cell;
    use std::ops::ControlFlow;

    use super::super::maps::Heap;
    use super::super::visit_region;
    use super::*;

    /// The root words `visit_region` hands over for `range` of `region` read with `dead`, in
    /// the chunks it hands them over in.
    pub(in crate::capture::leaks) fn visited(
        region: Region,
        range: (usize, usize),
        dead: &[(usize, usize)],
    ) -> Vec<Vec<usize>> {
        let mut scratch = vec![0usize; 512];
        let mut mask = Vec::new();
        let mut chunks = Vec::new();
        let _ = visit_region(
            region,
            range,
            &[],
            None,
            &[],
            dead,
            (&mut scratch, &mut mask),
            &|_| true,
            &mut |_| None,
            &mut |words| {
                chunks.push(words.to_vec());
                ControlFlow::Continue(())
            },
        );
        chunks
    }

    #[test]
    fn each_region_is_read_as_if_every_range_had_been_found_first() {
        const CHUNK: usize = 4096; // `visited`'s scratch buffer, regions not anonymous
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        // Real memory: four regions of distinct words, the last the heap.
        let memory: Vec<Vec<usize>> = (0..4)
            .map(|r| (0..2048).map(|i| r * 10_000 + i + 1).collect())
            .collect();
        let bounds: Vec<(usize, usize)> = memory
            .iter()
            .map(|m| (m.as_ptr() as usize, m.as_ptr() as usize + 8 * m.len()))
            .collect();
        let mut regions: Vec<Region> = bounds
            .iter()
            .map(|(s, e)| Region::new(*s, *e, false))
            .collect();
        regions[3].heap = Some(Heap::Main);
        let mut split_inside = 0;
        for _ in 0..300 {
            // Region 0 is static data, region 1 sometimes, region 2 sometimes only a prefix
            // (a `.bss` merged with memory mapped after it).
            let whole_statics = 1 + next(2);
            let mut statics: Vec<(usize, usize)> = bounds[..whole_statics].to_vec();
            let prefix_end = bounds[2].0 + 8 * next(2048);
            if next(2) == 0 {
                statics.push((bounds[2].0, prefix_end));
            }
            statics.sort_unstable();
            // Where lists may lie: outside static data.
            let no_static = |r: usize| match r {
                _ if r < whole_statics => None,
                2 if statics.len() > whole_statics => Some((prefix_end, bounds[2].1)),
                _ => Some(bounds[r]),
            };
            let ranges_in = |(s, e): (usize, usize), next: &mut dyn FnMut(usize) -> usize| {
                (0..next(6))
                    .filter(|_| e > s)
                    .map(|_| {
                        let from = s + 8 * next((e - s) / 8);
                        (from, (from + 8 * (1 + next(900))).min(e))
                    })
                    .collect::<Vec<_>>()
            };
            let always: Vec<(usize, usize)> = (0..4)
                .flat_map(|r| ranges_in(bounds[r], &mut next))
                .collect();
            let heap_free = ranges_in(bounds[3], &mut next);
            let lists: Vec<(usize, usize)> = (0..4)
                .filter_map(no_static)
                .flat_map(|b| ranges_in(b, &mut next))
                .collect();
            let mut all = always.clone();
            all.extend(&heap_free);
            all.extend(&lists);
            let eager = merged_tagged(all);
            let (heap_calls, list_calls) = (Cell::new(0), Cell::new(0));
            let mut find_heap_free = |r: &Region| {
                assert!(r.heap.is_some());
                heap_calls.set(heap_calls.get() + 1);
                heap_free.clone()
            };
            let mut find_lists = || {
                list_calls.set(list_calls.get() + 1);
                lists.clone()
            };
            let mut lazy = LateDead::new(always, &mut find_heap_free, &mut find_lists, &statics);
            // Static data first (as the scan reads it), in a random order.
            let mut order: Vec<usize> = (0..4).collect();
            order[..whole_statics].rotate_left(next(whole_statics));
            order[whole_statics..].rotate_left(next(4 - whole_statics));
            for (k, &i) in order.iter().enumerate() {
                let region = regions[i];
                let (start, end) = (region.start.get(), region.end.get());
                let split = static_prefix_end(&statics, &region, CHUNK);
                assert!(split == start || split == end || split.is_multiple_of(CHUNK));
                split_inside += usize::from(start < split && split < end);
                let before = list_calls.get();
                let mut chunks = visited(region, (start, split), lazy.for_static_data());
                assert_eq!(
                    list_calls.get(),
                    before,
                    "lists looked for to read static data"
                );
                chunks.extend(visited(region, (split, end), lazy.for_region(&region)));
                assert_eq!(chunks, visited(region, (start, end), &eager), "{region:?}");
                if k < whole_statics {
                    assert_eq!(list_calls.get(), 0, "lists looked for to read static data");
                }
            }
            assert_eq!((heap_calls.get(), list_calls.get()), (1, 1));
        }
        // The generator does split regions (the test would prove less otherwise).
        assert!(split_inside > 30, "{split_inside}");
    }
    #[test]
    fn a_region_is_static_data_only_inside_one_segment() {
        let statics = [(0x1000, 0x3000), (0x5000, 0x6000)];
        let region = |s, e| Region::new(s, e, true);
        assert!(within(&statics, &region(0x1000, 0x3000)));
        assert!(within(&statics, &region(0x2000, 0x3000)));
        assert!(!within(&statics, &region(0x2000, 0x4000)));
        assert!(!within(&statics, &region(0x3000, 0x5000)));
        assert!(within(&statics, &region(0x5000, 0x6000)));
        assert!(!within(&statics, &region(0x6000, 0x7000)));
        assert!(!within(&[], &region(0x1000, 0x2000)));
    }
}
