//! Which loaded object an address belongs to: [`Module`], [`ModuleMap`] and the reader of the
//! current process's map ([`ModuleMap::current_process`]).

use std::ffi::OsStr;
use std::ops::{ControlFlow, Range};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use object::{Object, ObjectSegment};

use crate::capture::objects::{self, LoadedObject, LoaderCounters};

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

    /// Reads the current process's loaded objects (see [`crate::capture::objects`]).
    /// Build-ids come from the `PT_NOTE` segments in memory; debuglinks from the files on disk
    /// (absent if unreadable).
    pub fn current_process() -> Self {
        let mut map = ModuleMap::current_process_objects();
        for module in &mut map.modules {
            module.debuglink = read_debuglink(&module.path);
        }
        map
    }

    /// [`ModuleMap::current_process`], built again only when the loader has loaded or unloaded
    /// an object since the last call (its `dlpi_adds`/`dlpi_subs` counters moved): building it
    /// reads every object's file, and a report with native stacks needs it for every test.
    pub fn current_process_cached() -> Self {
        static LAST: Mutex<Option<(LoaderCounters, ModuleMap)>> = Mutex::new(None);
        let Some(counters) = objects::loader_counters() else {
            return ModuleMap::current_process();
        };
        let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, map)) = last.as_ref() {
            if *seen == counters {
                return map.clone();
            }
        }
        // Counters read before the walk: an object loaded meanwhile moves them again, so the
        // next call rebuilds.
        let map = ModuleMap::current_process();
        *last = Some((counters, map.clone()));
        map
    }

    /// [`ModuleMap::current_process`] without debuglinks (one file read per object): enough
    /// to say which object an address belongs to.
    pub fn current_process_objects() -> Self {
        let mut raw: Vec<Module> = Vec::new();
        objects::walk(|object| {
            raw.push(Module::from_loaded(object));
            ControlFlow::Continue(())
        });
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
        let current = ModuleMap::current_process_cached();
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

impl Module {
    /// The module-map entry (without debuglink) of a loaded object. The capture layer records
    /// these when it first sees an object, so an object closed before the report is still
    /// symbolized.
    pub(crate) fn from_loaded(object: &LoadedObject<'_>) -> Module {
        let mut ranges: Vec<Range<u64>> = object
            .segments()
            .map(|s| s.start as u64..s.end as u64)
            .collect();
        ranges.sort_by_key(|r| r.start);
        Module {
            path: PathBuf::from(OsStr::from_bytes(object.name())),
            base: object.bias() as u64,
            ranges,
            build_id: object.build_id().map(<[u8]>::to_vec),
            debuglink: None,
        }
    }
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
}
