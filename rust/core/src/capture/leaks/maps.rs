//! The process's memory from `/proc`: its mappings, the root regions among them, and the
//! stack pointers of its blocked threads.

use std::fs;

use super::super::arch;
use super::super::tagged::Addr;

/// A memory range to treat as a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: Addr,
    /// One past the last byte.
    pub end: Addr,
    /// Anonymous memory (where pymalloc's pools can be).
    pub anonymous: bool,
    /// The C library's main heap (`[heap]`), whose free chunks are not roots.
    pub heap: bool,
}

impl Region {
    /// `[start, end)`.
    pub fn new(start: usize, end: usize, anonymous: bool) -> Region {
        Region {
            start: Addr::new(start),
            end: Addr::new(end),
            anonymous,
            heap: false,
        }
    }
}

/// One line of `/proc/self/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// First byte.
    pub start: Addr,
    /// One past the last byte.
    pub end: Addr,
    /// `rwxp`-style permissions.
    pub perms: String,
    /// Path or pseudo-name (`[heap]`, `[stack]`), empty for anonymous memory.
    pub path: String,
}

/// Parse `/proc/PID/maps` text.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms) = (fields.next()?, fields.next()?);
            let path = fields.nth(3).unwrap_or("").to_string();
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: Addr::new(usize::from_str_radix(start, 16).ok()?),
                end: Addr::new(usize::from_str_radix(end, 16).ok()?),
                perms: perms.to_string(),
                path,
            })
        })
        .collect()
}

/// Root regions of a process from its mappings: readable+writable memory, with the scanning
/// thread's stack taken from `own_stack_from` up, other threads' stacks cut to their live
/// part (`stack_pointers`, with the 128-byte red zone below each), and other thread stacks
/// (`is_thread_stack`: cached stacks of threads that ended, or of threads running right now)
/// left out.
pub fn root_regions(
    maps: &[Mapping],
    own_stack_from: usize,
    stack_pointers: &[usize],
    is_thread_stack: &mut dyn FnMut(usize, usize) -> bool,
) -> Vec<Region> {
    let mut regions = Vec::new();
    for m in maps {
        let bytes = m.perms.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'r' || bytes[1] != b'w' {
            continue;
        }
        if matches!(
            m.path.as_str(),
            "[vvar]" | "[vdso]" | "[vsyscall]" | "[vvar_vclock]"
        ) {
            continue;
        }
        let (start, end) = (m.start.get(), m.end.get());
        let anonymous = m.path.is_empty();
        if start <= own_stack_from && own_stack_from < end {
            regions.push(Region::new(own_stack_from, end, false));
            continue;
        }
        if let Some(sp) = stack_pointers.iter().find(|sp| start <= **sp && **sp < end) {
            // The red zone below the stack pointer may hold live values of a leaf function.
            regions.push(Region::new(
                sp.saturating_sub(arch::STACK_RED_ZONE).max(start),
                end,
                false,
            ));
            continue;
        }
        if m.path == "[stack]" || (anonymous && is_thread_stack(start, end)) {
            continue;
        }
        let mut region = Region::new(start, end, anonymous);
        region.heap = m.path == "[heap]";
        regions.push(region);
    }
    regions
}

/// Stack pointers of this process's other threads that are blocked (from
/// `/proc/self/task/*/syscall`); running threads do not report one, and the calling thread
/// (whose own file shows the `read` it is in) is left out.
pub fn blocked_thread_stack_pointers() -> Vec<usize> {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    // SAFETY: gettid has no preconditions.
    let own = unsafe { libc::gettid() }.to_string();
    tasks
        .filter_map(|t| t.ok())
        .filter(|t| t.file_name().to_str() != Some(own.as_str()))
        .filter_map(|t| fs::read_to_string(t.path().join("syscall")).ok())
        .filter_map(|text| {
            let fields: Vec<&str> = text.split_whitespace().collect();
            // "nr args... sp pc" or "-1 sp pc" when blocked; "running" otherwise.
            let sp = fields.len().checked_sub(2).filter(|_| fields.len() >= 3)?;
            usize::from_str_radix(fields[sp].trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_give_live_stacks_and_skip_cached_ones() {
        let text = "\
55d0-55e0 r--p 00000000 08:01 1 /usr/bin/python3.11
55e0-55f0 rw-p 00010000 08:01 1 /usr/bin/python3.11
6000-7000 rw-p 00000000 00:00 0 [heap]
7000-8000 ---p 00000000 00:00 0
8000-9000 rw-p 00000000 00:00 0
9000-a000 ---p 00000000 00:00 0
a000-b000 rw-p 00000000 00:00 0
c000-d000 rw-p 00000000 00:00 0
f000-f800 rw-p 00000000 00:00 0 [stack]
ff00-ff10 r--p 00000000 00:00 0 [vvar]
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 10);
        let mut is_stack = |start: usize, _end: usize| start == 0x8000;
        let regions = root_regions(&maps, 0xf400, &[0xa800], &mut is_stack);
        let starts: Vec<(usize, usize)> = regions
            .iter()
            .map(|r| (r.start.get(), r.end.get()))
            .collect();
        assert_eq!(
            starts,
            [
                (0x55e0, 0x55f0),
                (0x6000, 0x7000),
                (0xa800 - 128, 0xb000),
                (0xc000, 0xd000),
                (0xf400, 0xf800)
            ]
        );
    }
}
