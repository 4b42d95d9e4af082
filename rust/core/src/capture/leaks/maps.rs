//! The process's memory from `/proc`: its mappings, the root regions among them, and the
//! stack pointers of its blocked threads.

use std::fs;

use super::super::arch;
use super::super::tagged::Addr;
use super::glibc::ARENA_HEAP_BYTES;

/// A memory range to treat as a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: Addr,
    /// One past the last byte.
    pub end: Addr,
    /// Anonymous memory (where pymalloc's pools can be).
    pub anonymous: bool,
    /// One of the C library's heaps, whose free chunks are not roots.
    pub heap: Option<Heap>,
}

/// Which of glibc's heaps a region is (see `glibc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Heap {
    /// The main arena's heap, `[heap]`.
    Main,
    /// Anonymous memory that starts where a heap of another arena would
    /// ([`ARENA_HEAP_BYTES`]): one or more such heaps if their headers say so.
    Arena,
}

impl Region {
    /// `[start, end)`.
    pub fn new(start: usize, end: usize, anonymous: bool) -> Region {
        Region {
            start: Addr::new(start),
            end: Addr::new(end),
            anonymous,
            heap: None,
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
    /// Path or pseudo-name (`[heap]`, `[stack]`), empty for anonymous memory. Read through
    /// `PROCMAP_QUERY`, a file's mapping has `(file)` instead of its path (not asked for).
    pub path: String,
}

/// The process's mappings, in address order: through the `PROCMAP_QUERY` ioctl where the
/// kernel has it (Linux 6.11+), else from `/proc/self/maps` text. The text costs the kernel
/// about 2 µs a line to make, mostly formatting file paths, and a scan needed it every test
/// (some 0.4-0.9 ms in a pytest process of 200 mappings, a quarter of a scan that finds its
/// blocks early); the ioctl is asked for a name only where the scan reads it (anonymous
/// memory's `[heap]`, `[stack]`, `[vdso]`), never a file's path.
pub fn read_maps() -> Vec<Mapping> {
    if let Ok(file) = fs::File::open("/proc/self/maps") {
        if let Some(maps) = query_maps(&file) {
            return maps;
        }
    }
    fs::read_to_string("/proc/self/maps")
        .map(|text| parse_maps(&text))
        .unwrap_or_default()
}

/// `struct procmap_query` of `<linux/fs.h>` (Linux 6.11).
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR(PROCFS_IOCTL_MAGIC, 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<ProcmapQuery>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 17;
const VMA_READABLE: u64 = 0x01;
const VMA_WRITABLE: u64 = 0x02;
const VMA_EXECUTABLE: u64 = 0x04;
const VMA_SHARED: u64 = 0x08;
const COVERING_OR_NEXT_VMA: u64 = 0x10;
/// Names the scan reads (`[vvar_vclock]` is the longest) fit; a longer one is cut, which only
/// a named anonymous mapping (`[anon:...]`) can be, and any name marks it as not anonymous.
const NAME_BYTES: usize = 64;

/// One `PROCMAP_QUERY` on `maps` for the mapping at `addr` (or the next one, with
/// [`COVERING_OR_NEXT_VMA`] in `flags`), its name written into `name` when not empty: the
/// answer, or the error number.
fn procmap_query(
    maps: &fs::File,
    addr: u64,
    flags: u64,
    name: &mut [u8],
) -> Result<ProcmapQuery, Option<i32>> {
    use std::os::fd::AsRawFd;
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_flags: flags,
        query_addr: addr,
        vma_name_size: name.len() as u32,
        vma_name_addr: if name.is_empty() {
            0
        } else {
            name.as_mut_ptr() as u64
        },
        ..ProcmapQuery::default()
    };
    // SAFETY: the kernel reads and writes `q` (its size is in `size`) and writes at most
    // `vma_name_size` bytes, a NUL-terminated name, at `vma_name_addr` (our `name`).
    if unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY, &mut q) } != 0 {
        return Err(std::io::Error::last_os_error().raw_os_error());
    }
    Ok(q)
}

/// The mappings through `PROCMAP_QUERY` on `maps` (an open `/proc/self/maps`), or None when
/// the kernel does not have it.
fn query_maps(maps: &fs::File) -> Option<Vec<Mapping>> {
    let mut out = Vec::new();
    let mut name = [0u8; NAME_BYTES];
    let mut at = 0u64;
    loop {
        let q = match procmap_query(maps, at, COVERING_OR_NEXT_VMA, &mut []) {
            Ok(q) => q,
            // ENOENT: no mapping at or above `at`. Anything else on the first query: no such
            // ioctl here (ENOTTY, EINVAL); later, the text is asked instead.
            Err(error) => return (error == Some(libc::ENOENT) && at != 0).then_some(out),
        };
        let path = if q.inode != 0 || q.dev_major != 0 || q.dev_minor != 0 {
            // A file's mapping: the scan reads only that it has a path.
            String::from("(file)")
        } else {
            // Unmapped since the first query: the text is asked instead.
            let named = procmap_query(maps, q.vma_start, 0, &mut name)
                .ok()
                .filter(|n| n.vma_start == q.vma_start)?;
            // vma_name_size: the name's length with its NUL, 0 for none.
            let len = (named.vma_name_size as usize)
                .min(NAME_BYTES)
                .saturating_sub(1);
            String::from_utf8_lossy(&name[..len]).into_owned()
        };
        let flag = |bit: u64, c: char| if q.vma_flags & bit != 0 { c } else { '-' };
        let shared = if q.vma_flags & VMA_SHARED != 0 {
            's'
        } else {
            'p'
        };
        let perms: String = [
            flag(VMA_READABLE, 'r'),
            flag(VMA_WRITABLE, 'w'),
            flag(VMA_EXECUTABLE, 'x'),
            shared,
        ]
        .into_iter()
        .collect();
        out.push(Mapping {
            start: Addr::new(q.vma_start as usize),
            end: Addr::new(q.vma_end as usize),
            perms,
            path,
        });
        if q.vma_end <= at {
            return None; // no progress: not the kernel's answer as documented
        }
        at = q.vma_end;
    }
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
        region.heap = if m.path == "[heap]" {
            Some(Heap::Main)
        } else if anonymous && start % ARENA_HEAP_BYTES == 0 {
            Some(Heap::Arena)
        } else {
            None
        };
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

    /// What the scan reads of a mapping: its range, whether it is readable and writable,
    /// whether it is anonymous, and the pseudo-names it looks for.
    /// (`[vsyscall]`, a page of the kernel's above every mapping, is in the text only: no
    /// scan reads it, as it cannot be read.)
    fn as_scan_reads(maps: &[Mapping]) -> Vec<(usize, usize, String, bool, String)> {
        maps.iter()
            .filter(|m| m.path != "[vsyscall]")
            .map(|m| {
                let special = if m.path.starts_with('[') {
                    m.path.clone()
                } else {
                    String::new()
                };
                (
                    m.start.get(),
                    m.end.get(),
                    m.perms[..2].to_string(),
                    m.path.is_empty(),
                    special,
                )
            })
            .collect()
    }

    #[test]
    fn the_query_gives_what_the_text_gives() {
        let Ok(file) = fs::File::open("/proc/self/maps") else {
            return;
        };
        if query_maps(&file).is_none() {
            eprintln!("PROCMAP_QUERY is not in this kernel: only the text is read");
            return;
        }
        // Other test threads map and unmap memory meanwhile: the two reads agree on one try.
        let agreed = (0..20).any(|_| {
            let queried = query_maps(&file).expect("the query worked once");
            let text = parse_maps(&fs::read_to_string("/proc/self/maps").expect("maps"));
            as_scan_reads(&queried) == as_scan_reads(&text)
        });
        assert!(agreed, "PROCMAP_QUERY and /proc/self/maps never agreed");
        let maps = read_maps();
        assert!(maps.iter().any(|m| m.path == "[stack]"));
        assert!(maps
            .iter()
            .any(|m| m.path.is_empty() && m.perms.starts_with("rw")));
    }

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
