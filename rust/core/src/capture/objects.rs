//! The loaded ELF objects of this process, as the loader lists them (`dl_iterate_phdr`): the
//! one walk that GOT patching (`elf_got`), unwinding (`unwind`) and the module map
//! ([`crate::symbolize::ModuleMap::current_process`]) share. Each reads what it needs from a
//! [`LoadedObject`]: load bias, path, segments, dynamic section, `.eh_frame_hdr`, build-id.

use std::ffi::CStr;
use std::ops::{ControlFlow, Range};

use libc::{c_int, c_void, dl_phdr_info, size_t};
use object::read::elf::NoteIterator;

#[cfg(target_pointer_width = "64")]
type ProgramHeader = libc::Elf64_Phdr;
#[cfg(target_pointer_width = "64")]
type NoteHeader = object::elf::FileHeader64<object::NativeEndian>;
#[cfg(target_pointer_width = "32")]
type ProgramHeader = libc::Elf32_Phdr;
#[cfg(target_pointer_width = "32")]
type NoteHeader = object::elf::FileHeader32<object::NativeEndian>;

/// The loader's counts of objects ever loaded and unloaded (`dlpi_adds`, `dlpi_subs`): equal
/// counters mean nothing was loaded or unloaded in between, so a walk can stop at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LoaderCounters {
    pub adds: u64,
    pub subs: u64,
}

/// A `PT_LOAD` segment at its runtime addresses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Segment {
    pub start: usize,
    pub end: usize,
    /// `PF_R`, `PF_W`, `PF_X`.
    pub flags: u32,
}

impl Segment {
    pub fn contains(&self, address: usize) -> bool {
        self.start <= address && address < self.end
    }
}

/// One object the loader lists, valid only inside the [`walk`] callback that received it (the
/// object may be unloaded once the walk is over).
pub(crate) struct LoadedObject<'a> {
    info: &'a dl_phdr_info,
    headers: &'a [ProgramHeader],
    counters: Option<LoaderCounters>,
}

/// Offset of `dlpi_subs` plus its size: a loader passing a smaller `size` has no counters.
const COUNTERS_END: usize =
    std::mem::offset_of!(dl_phdr_info, dlpi_subs) + std::mem::size_of::<u64>();

impl<'a> LoadedObject<'a> {
    /// # Safety
    /// `info` must be the loader's entry for an object that stays loaded for `'a`, and `size`
    /// the size the loader passed with it.
    unsafe fn new(info: &'a dl_phdr_info, size: size_t) -> Self {
        let headers = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: the loader guarantees `dlpi_phnum` program headers at `dlpi_phdr`.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let counters = (size >= COUNTERS_END).then_some(LoaderCounters {
            adds: info.dlpi_adds,
            subs: info.dlpi_subs,
        });
        LoadedObject {
            info,
            headers,
            counters,
        }
    }

    /// Identifies the object while it is loaded: the address of its program headers.
    pub fn key(&self) -> usize {
        self.info.dlpi_phdr as usize
    }

    /// Load bias: runtime address minus the address in the file.
    pub fn bias(&self) -> usize {
        self.info.dlpi_addr as usize
    }

    /// The path the loader knows it by; empty for the main program.
    pub fn name(&self) -> &'a [u8] {
        if self.info.dlpi_name.is_null() {
            return &[];
        }
        // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
        unsafe { CStr::from_ptr(self.info.dlpi_name) }.to_bytes()
    }

    /// The loader's counters at this walk, if it reports them (glibc does).
    pub fn counters(&self) -> Option<LoaderCounters> {
        self.counters
    }

    /// The runtime address range of a program header's memory image.
    fn runtime(&self, header: &ProgramHeader) -> Range<usize> {
        let start = self.bias().wrapping_add(header.p_vaddr as usize);
        start..start.saturating_add(header.p_memsz as usize)
    }

    fn first(&self, kind: u32) -> Option<Range<usize>> {
        let header = self.headers.iter().find(|h| h.p_type == kind)?;
        Some(self.runtime(header))
    }

    /// The `PT_LOAD` segments, in program-header order.
    pub fn segments(&self) -> impl Iterator<Item = Segment> + '_ {
        self.headers
            .iter()
            .filter(|h| h.p_type == libc::PT_LOAD)
            .map(|h| {
                let range = self.runtime(h);
                Segment {
                    start: range.start,
                    end: range.end,
                    flags: h.p_flags,
                }
            })
    }

    /// From the lowest to the highest address of its segments: the object's code and data.
    pub fn extent(&self) -> Option<Range<usize>> {
        let start = self.segments().map(|s| s.start).min()?;
        let end = self.segments().map(|s| s.end).max()?;
        Some(start..end)
    }

    /// Is `address` inside one of its segments?
    pub fn contains(&self, address: usize) -> bool {
        self.segments().any(|s| s.contains(address))
    }

    /// The range made read-only once relocated (`PT_GNU_RELRO`).
    pub fn relro(&self) -> Option<Range<usize>> {
        self.first(libc::PT_GNU_RELRO)
    }

    /// The unwind-table index (`PT_GNU_EH_FRAME`).
    // Read by the CFI unwinder, which is x86-64 only (elsewhere libgcc unwinds).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub fn eh_frame_hdr(&self) -> Option<Range<usize>> {
        self.first(libc::PT_GNU_EH_FRAME)
    }

    /// The dynamic section's `(tag, value)` entries, up to `DT_NULL`; empty without one.
    pub fn dynamic(&self) -> impl Iterator<Item = (isize, usize)> + 'a {
        /// An `ElfN_Dyn`: a signed tag and a word, at the native width.
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Dyn {
            tag: isize,
            val: usize,
        }
        let mut next = self
            .first(libc::PT_DYNAMIC)
            .map_or(std::ptr::null(), |r| r.start as *const Dyn);
        std::iter::from_fn(move || {
            if next.is_null() {
                return None;
            }
            // SAFETY: the dynamic section of a loaded object is mapped and is an array ended
            // by DT_NULL (tag 0); `next` never goes past that entry.
            let entry = unsafe { *next };
            if entry.tag == 0 {
                next = std::ptr::null();
                return None;
            }
            // SAFETY: not past DT_NULL yet.
            next = unsafe { next.add(1) };
            Some((entry.tag, entry.val))
        })
    }

    /// The GNU build-id, read from the `PT_NOTE` segments in memory.
    pub fn build_id(&self) -> Option<&'a [u8]> {
        let headers = self.headers;
        let bias = self.bias();
        headers
            .iter()
            .filter(|h| h.p_type == libc::PT_NOTE)
            .find_map(|note| {
                let start = bias.wrapping_add(note.p_vaddr as usize);
                let len = note.p_filesz as usize;
                // Only notes inside the file-backed part of a readable segment are read.
                let readable = headers.iter().any(|load| {
                    let seg = bias.wrapping_add(load.p_vaddr as usize);
                    load.p_type == libc::PT_LOAD
                        && load.p_flags & libc::PF_R != 0
                        && start >= seg
                        && start.saturating_add(len) <= seg.saturating_add(load.p_filesz as usize)
                });
                if !readable || len == 0 {
                    return None;
                }
                // SAFETY: checked above to lie within a readable, file-backed part of a loaded
                // segment of this object, which stays mapped while it is loaded.
                let bytes = unsafe {
                    std::slice::from_raw_parts(std::ptr::with_exposed_provenance::<u8>(start), len)
                };
                gnu_build_id(bytes, note.p_align as usize)
            })
    }
}

/// Finds `NT_GNU_BUILD_ID` in the bytes of a note segment.
fn gnu_build_id(notes: &[u8], align: usize) -> Option<&[u8]> {
    let endian = object::NativeEndian;
    let align = align.try_into().ok()?;
    let mut iter = NoteIterator::<NoteHeader>::new(endian, align, notes).ok()?;
    while let Ok(Some(note)) = iter.next() {
        if note.name() == b"GNU" && note.n_type(endian) == object::elf::NT_GNU_BUILD_ID {
            return Some(note.desc());
        }
    }
    None
}

/// Hand each loaded object, in the loader's order (the main program first), to `visit` until
/// it breaks. `visit` runs under the loader's lock: it must not call into the loader
/// (`dlopen`, `dlsym`, ...), which another thread's `dlopen` takes in the other order.
pub(crate) fn walk<F>(mut visit: F)
where
    F: FnMut(&LoadedObject<'_>) -> ControlFlow<()>,
{
    unsafe extern "C" fn callback<F>(
        info: *mut dl_phdr_info,
        size: size_t,
        data: *mut c_void,
    ) -> c_int
    where
        F: FnMut(&LoadedObject<'_>) -> ControlFlow<()>,
    {
        // SAFETY: `data` is the `F` passed to dl_iterate_phdr below; `info` is the loader's
        // entry for an object it keeps loaded during the callback, with its `size`.
        let (visit, object) = unsafe { (&mut *(data as *mut F), LoadedObject::new(&*info, size)) };
        match visit(&object) {
            ControlFlow::Continue(()) => 0,
            ControlFlow::Break(()) => 1,
        }
    }
    // SAFETY: the callback only hands `visit` (which outlives the call) a view of the loader's
    // entry that cannot outlive the callback.
    unsafe {
        libc::dl_iterate_phdr(Some(callback::<F>), &mut visit as *mut F as *mut c_void);
    }
}

/// The loader's counters now (read from the first object only).
pub(crate) fn loader_counters() -> Option<LoaderCounters> {
    let mut counters = None;
    walk(|object| {
        counters = object.counters();
        ControlFlow::Break(())
    });
    counters
}

/// The writable `PT_LOAD` segments (data and bss, as (start, end), word-aligned inward) of the
/// loaded object that holds `address`; empty when no object does.
pub fn writable_segments_of(address: usize) -> Vec<(usize, usize)> {
    let word = std::mem::size_of::<usize>();
    let mut found = Vec::new();
    walk(|object| {
        if !object.segments().any(|s| s.contains(address)) {
            return ControlFlow::Continue(());
        }
        found.extend(
            object
                .segments()
                .filter(|s| s.flags & libc::PF_W != 0)
                .map(|s| (s.start.next_multiple_of(word), s.end / word * word))
                .filter(|(start, end)| start < end),
        );
        ControlFlow::Break(())
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_sees_this_object_once_with_its_segments_and_build_id() {
        let probe =
            the_walk_sees_this_object_once_with_its_segments_and_build_id as *const () as usize;
        let mut seen = Vec::new();
        let mut first_name = None;
        walk(|object| {
            first_name.get_or_insert_with(|| object.name().to_vec());
            if object.contains(probe) {
                let extent = object.extent().expect("an object with code has segments");
                let executable = object
                    .segments()
                    .any(|s| s.contains(probe) && s.flags & libc::PF_X != 0);
                seen.push((
                    extent,
                    executable,
                    object.build_id().map(<[u8]>::to_vec),
                    object.eh_frame_hdr().is_some(),
                    object.dynamic().count(),
                ));
            }
            ControlFlow::Continue(())
        });
        assert_eq!(
            first_name.as_deref(),
            Some(&b""[..]),
            "the main program comes first"
        );
        assert_eq!(seen.len(), 1, "one object holds this function");
        let (extent, executable, build_id, eh_frame_hdr, dynamic) = seen.remove(0);
        assert!(extent.contains(&probe) && executable);
        assert!(eh_frame_hdr && dynamic > 0);
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let file = object::File::parse(&*exe).unwrap();
        assert_eq!(
            build_id,
            object::Object::build_id(&file).unwrap().map(<[u8]>::to_vec)
        );
        assert!(build_id.is_some());
    }

    #[test]
    fn the_counters_are_read_from_the_first_object_and_stop_the_walk() {
        let counters = loader_counters().expect("glibc reports its counters");
        assert!(counters.adds >= 1 && counters.subs <= counters.adds);
        let mut visited = 0;
        walk(|_| {
            visited += 1;
            ControlFlow::Break(())
        });
        assert_eq!(visited, 1);
    }

    #[test]
    fn gnu_build_id_parses_a_note() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(&object::elf::NT_GNU_BUILD_ID.to_ne_bytes());
        note.extend_from_slice(b"GNU\0\xaa\xbb\xcc\0");
        assert_eq!(gnu_build_id(&note, 4), Some(&[0xaa, 0xbb, 0xcc][..]));
        assert_eq!(gnu_build_id(&note[..10], 4), None);
    }
}
