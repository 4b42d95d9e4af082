//! Which loaded object an address belongs to: [`Module`], [`ModuleMap`] and the reader of the
//! current process's map ([`ModuleMap::current_process`]).

use std::ffi::CStr;
use std::ops::Range;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use object::read::elf::NoteIterator;
use object::{Object, ObjectSegment};

use super::elf;
use super::SymbolizeError;

/// One loaded ELF object: where it is on disk, where it was mapped, and what identifies its
/// debug info. Plain fields, so it can be written into a capture file and symbolized elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Path of the object file (the main executable's real path, not `""`).
    pub path: PathBuf,
    /// Load bias: runtime address minus the address in the file (`dlpi_addr`; 0 for a file).
    pub base: u64,
    /// Runtime address ranges of the object's `PT_LOAD` segments, sorted.
    pub ranges: Vec<Range<u64>>,
    /// The GNU build-id (`NT_GNU_BUILD_ID`), if the object has one.
    pub build_id: Option<Vec<u8>>,
    /// The `.gnu_debuglink` file name and CRC32, if the object has one.
    pub debuglink: Option<(String, u32)>,
}

impl Module {
    /// Describes an object file on disk as if it were loaded at its link addresses (base 0):
    /// build-id, debuglink and segment ranges are read from the file.
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, SymbolizeError> {
        let path = path.into();
        let map = elf::map_file(&path)?;
        let file = object::File::parse(&*map).map_err(|e| SymbolizeError::object(&path, e))?;
        let mut ranges: Vec<Range<u64>> = file
            .segments()
            .map(|s| s.address()..s.address().saturating_add(s.size()))
            .filter(|r| !r.is_empty())
            .collect();
        ranges.sort_by_key(|r| r.start);
        Ok(Module {
            build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
            debuglink: elf::debuglink(&file),
            path,
            base: 0,
            ranges,
        })
    }

    /// The build-id as lower-case hex, as used in `.build-id` paths and debuginfod URLs.
    pub fn build_id_hex(&self) -> Option<String> {
        self.build_id.as_deref().map(elf::hex)
    }
}

/// The loaded objects of a process, searchable by address.
#[derive(Debug, Clone, Default)]
pub struct ModuleMap {
    modules: Vec<Module>,
    /// `(start, end, index into modules)`, sorted by start, non-overlapping.
    index: Vec<(u64, u64, usize)>,
}

impl ModuleMap {
    /// Builds a map from modules (any order).
    pub fn new(modules: Vec<Module>) -> Self {
        let mut index: Vec<(u64, u64, usize)> = modules
            .iter()
            .enumerate()
            .flat_map(|(i, m)| m.ranges.iter().map(move |r| (r.start, r.end, i)))
            .filter(|(start, end, _)| start < end)
            .collect();
        index.sort_unstable();
        ModuleMap { modules, index }
    }

    /// The module containing the runtime address `addr`, and `addr` relative to the object
    /// (the address binutils' `addr2line -e OBJECT` takes).
    pub fn lookup(&self, addr: u64) -> Option<(&Module, u64)> {
        let i = self.index.partition_point(|&(start, _, _)| start <= addr);
        let &(_, end, module) = self.index[..i].last()?;
        if addr >= end {
            return None;
        }
        let module = &self.modules[module];
        Some((module, addr.wrapping_sub(module.base)))
    }

    /// All modules, in the order given (load order for [`ModuleMap::current_process`]).
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// Reads the current process's loaded objects with `dl_iterate_phdr`. Build-ids come from
    /// the `PT_NOTE` segments in memory; debuglinks from the files on disk (absent if unreadable).
    pub fn current_process() -> Self {
        let mut map = ModuleMap::current_process_objects();
        for module in &mut map.modules {
            module.debuglink = read_debuglink(&module.path);
        }
        map
    }

    /// [`ModuleMap::current_process`] without debuglinks (one file read per object): enough
    /// to say which object an address belongs to.
    pub fn current_process_objects() -> Self {
        let mut raw: Vec<Module> = Vec::new();
        // SAFETY: `collect_module` is a valid callback for the whole call and `raw` outlives it;
        // the loader passes `data` back unchanged.
        unsafe {
            libc::dl_iterate_phdr(
                Some(collect_module),
                (&mut raw as *mut Vec<Module>).cast::<libc::c_void>(),
            );
        }
        for (i, module) in raw.iter_mut().enumerate() {
            if i == 0 && module.path.as_os_str().is_empty() {
                // The main program is reported with an empty name.
                module.path = std::fs::read_link("/proc/self/exe").unwrap_or_default();
            }
        }
        ModuleMap::new(raw)
    }

    /// [`ModuleMap::current_process`] plus objects unloaded since they were recorded (see
    /// [`crate::capture::unloaded_modules`]), so frames that point into a library closed
    /// during a test are still symbolized. An unloaded object whose addresses a loaded one
    /// now occupies is left out: the loaded one owns them.
    pub fn current_process_with(unloaded: Vec<Module>) -> Self {
        let current = ModuleMap::current_process();
        if unloaded.is_empty() {
            return current;
        }
        let mut modules = current.modules;
        let mut taken: Vec<Range<u64>> = modules.iter().flat_map(|m| m.ranges.clone()).collect();
        for mut module in unloaded {
            let overlaps = module
                .ranges
                .iter()
                .any(|r| taken.iter().any(|t| r.start < t.end && t.start < r.end));
            if overlaps {
                continue;
            }
            module.debuglink = read_debuglink(&module.path);
            taken.extend(module.ranges.iter().cloned());
            modules.push(module);
        }
        ModuleMap::new(modules)
    }
}

fn read_debuglink(path: &Path) -> Option<(String, u32)> {
    let map = elf::map_file(path).ok()?;
    let file = object::File::parse(&*map).ok()?;
    elf::debuglink(&file)
}

#[cfg(target_pointer_width = "64")]
type NativeHeader = object::elf::FileHeader64<object::NativeEndian>;
#[cfg(target_pointer_width = "64")]
type NativeWord = u64;
#[cfg(target_pointer_width = "32")]
type NativeHeader = object::elf::FileHeader32<object::NativeEndian>;
#[cfg(target_pointer_width = "32")]
type NativeWord = u32;

/// `dl_iterate_phdr` callback: appends one [`Module`] (without debuglink) to the `Vec` in `data`.
unsafe extern "C" fn collect_module(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the callback, and
    // `data` is the `&mut Vec<Module>` given to `dl_iterate_phdr` by `current_process`.
    let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<Module>>()) };
    // SAFETY: as above, `info` describes an object the loader keeps mapped during the callback.
    out.push(unsafe { Module::from_phdr_info(info) });
    0
}

impl Module {
    /// The module-map entry (without debuglink) of a loaded object, as `dl_iterate_phdr`
    /// describes it. The capture layer records these when it first sees an object, so an
    /// object closed before the report is still symbolized.
    ///
    /// # Safety
    /// `info` must come from the loader (inside a `dl_iterate_phdr` callback) for an object
    /// that stays loaded during the call.
    // `u64::from` is the identity on 64-bit targets but widens the 32-bit ELF fields.
    #[allow(clippy::useless_conversion)]
    pub(crate) unsafe fn from_phdr_info(info: &libc::dl_phdr_info) -> Module {
        let base = u64::from(info.dlpi_addr);
        let name = if info.dlpi_name.is_null() {
            Vec::new()
        } else {
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string owned by the loader.
            unsafe { CStr::from_ptr(info.dlpi_name) }
                .to_bytes()
                .to_vec()
        };
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers mapped by the loader.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let mut ranges = Vec::new();
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_LOAD) {
            let start = base.wrapping_add(u64::from(ph.p_vaddr));
            ranges.push(start..start.saturating_add(u64::from(ph.p_memsz)));
        }
        ranges.sort_by_key(|r| r.start);
        let mut build_id = None;
        for ph in phdrs.iter().filter(|ph| ph.p_type == libc::PT_NOTE) {
            let start = base.wrapping_add(u64::from(ph.p_vaddr));
            let len = u64::from(ph.p_filesz);
            // Only read notes that lie inside a readable loaded segment of this object.
            let readable = phdrs.iter().any(|load| {
                let seg = base.wrapping_add(u64::from(load.p_vaddr));
                load.p_type == libc::PT_LOAD
                    && load.p_flags & libc::PF_R != 0
                    && start >= seg
                    && start.saturating_add(len) <= seg.saturating_add(u64::from(load.p_filesz))
            });
            let Ok(len) = usize::try_from(len) else {
                continue;
            };
            if !readable || len == 0 {
                continue;
            }
            // SAFETY: the range was checked above to lie within the file-backed part of a
            // readable PT_LOAD segment of this object, which stays mapped while it is loaded.
            let notes = unsafe {
                std::slice::from_raw_parts(
                    std::ptr::with_exposed_provenance::<u8>(start as usize),
                    len,
                )
            };
            build_id = gnu_build_id(notes, u64::from(ph.p_align));
            if build_id.is_some() {
                break;
            }
        }
        Module {
            path: PathBuf::from(<std::ffi::OsString as OsStringExt>::from_vec(name)),
            base,
            ranges,
            build_id,
            debuglink: None,
        }
    }
}

/// Finds `NT_GNU_BUILD_ID` in the bytes of a note segment.
fn gnu_build_id(notes: &[u8], align: u64) -> Option<Vec<u8>> {
    let endian = object::NativeEndian;
    let align = NativeWord::try_from(align).ok()?;
    let mut iter = NoteIterator::<NativeHeader>::new(endian, align, notes).ok()?;
    while let Ok(Some(note)) = iter.next() {
        if note.name() == b"GNU" && note.n_type(endian) == object::elf::NT_GNU_BUILD_ID {
            return Some(note.desc().to_vec());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(path: &str, base: u64, ranges: &[(u64, u64)]) -> Module {
        Module {
            path: path.into(),
            base,
            ranges: ranges.iter().map(|&(s, e)| s..e).collect(),
            build_id: None,
            debuglink: None,
        }
    }

    #[test]
    fn lookup_finds_the_containing_range_and_relative_address() {
        let map = ModuleMap::new(vec![
            module("b", 0x7000, &[(0x7000, 0x7100), (0x7200, 0x7300)]),
            module("a", 0x1000, &[(0x1000, 0x2000)]),
        ]);
        assert_eq!(map.lookup(0x0fff), None);
        let (m, rel) = map.lookup(0x1000).unwrap();
        assert_eq!((m.path.to_str().unwrap(), rel), ("a", 0));
        assert_eq!(map.lookup(0x2000), None);
        let (m, rel) = map.lookup(0x72ff).unwrap();
        assert_eq!((m.path.to_str().unwrap(), rel), ("b", 0x2ff));
        assert_eq!(map.lookup(0x7150), None, "gap between segments");
        assert_eq!(map.lookup(u64::MAX), None);
    }

    #[test]
    fn current_process_contains_this_function_with_a_build_id() {
        let map = ModuleMap::current_process();
        let addr =
            current_process_contains_this_function_with_a_build_id as *const () as usize as u64;
        let (m, rel) = map.lookup(addr).expect("own code is mapped");
        let exe = std::fs::canonicalize("/proc/self/exe").unwrap();
        assert_eq!(std::fs::canonicalize(&m.path).unwrap(), exe);
        assert_eq!(rel, addr - m.base);
        // Rust test binaries are linked with a build-id by the default toolchain on Linux.
        let on_disk = Module::from_file(&exe).unwrap();
        assert_eq!(m.build_id, on_disk.build_id);
        assert!(m.build_id.is_some());
        // libc is there too, with a build-id read from memory.
        let libc_addr = libc::malloc as *const () as usize as u64;
        let (libc_module, _) = map.lookup(libc_addr).expect("libc is mapped");
        assert_ne!(libc_module.path, m.path);
    }

    #[test]
    fn unloaded_modules_fill_only_addresses_no_loaded_object_owns() {
        let own =
            unloaded_modules_fill_only_addresses_no_loaded_object_owns as *const () as usize as u64;
        let gone = module("/gone/libclosed.so", 0x1000, &[(0x1000, 0x3000)]);
        let shadowed = module("/gone/libshadowed.so", 0, &[(own, own + 1)]);
        let map = ModuleMap::current_process_with(vec![gone, shadowed]);
        let (m, rel) = map
            .lookup(0x2000)
            .expect("the unloaded module is in the map");
        assert_eq!(
            (m.path.to_str().unwrap(), rel),
            ("/gone/libclosed.so", 0x1000)
        );
        let (m, _) = map.lookup(own).unwrap();
        assert_ne!(m.path.to_str().unwrap(), "/gone/libshadowed.so");
    }

    #[test]
    fn gnu_build_id_parses_a_note() {
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_ne_bytes());
        note.extend_from_slice(&3u32.to_ne_bytes());
        note.extend_from_slice(&object::elf::NT_GNU_BUILD_ID.to_ne_bytes());
        note.extend_from_slice(b"GNU\0\xaa\xbb\xcc\0");
        assert_eq!(gnu_build_id(&note, 4), Some(vec![0xaa, 0xbb, 0xcc]));
        assert_eq!(gnu_build_id(&note[..10], 4), None);
    }
}
