//! Linux/ELF: redirect the GOT entries (JUMP_SLOT and GLOB_DAT relocations) of every loaded
//! object to our hooks. This is the only place that writes into other objects' memory.

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::ops::{ControlFlow, Range};
use std::sync::{Mutex, OnceLock};

use libc::{c_int, c_void};

use crate::symbolize::Module;

use super::arch::GOT_RELOCATIONS;
use super::objects::{self, LoadedObject, LoaderCounters, Segment};

/// A symbol to redirect and the address of its hook.
pub(crate) struct Hook {
    pub name: &'static [u8],
    pub address: usize,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Rela {
    offset: u64,
    info: u64,
    addend: i64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Sym {
    name: u32,
    info: u8,
    other: u8,
    shndx: u16,
    value: u64,
    size: u64,
}

const DT_PLTRELSZ: isize = 2;
const DT_STRTAB: isize = 5;
const DT_SYMTAB: isize = 6;
const DT_RELA: isize = 7;
const DT_RELASZ: isize = 8;
const DT_PLTREL: isize = 20;
const DT_JMPREL: isize = 23;

/// What the walks over the loader's list have seen.
#[derive(Default)]
pub(crate) struct LoadedObjects {
    /// Objects already patched, by program-header address (unique while an object is
    /// loaded), with the module-map entry recorded when the object was first seen.
    patched: HashMap<usize, Module>,
    /// The loader's counters at the last walk that patched everything it saw.
    counters: Option<LoaderCounters>,
    /// Objects unloaded since [`forget_unloaded`] last ran.
    unloaded: Vec<Module>,
}

static OBJECTS: Mutex<Option<LoadedObjects>> = Mutex::new(None);

/// glibc's `_dl_find_object` (2.35+), if present: it knows an object only once the loader
/// has relocated it, which tells a half-loaded object (on another thread's `dlopen`) from a
/// ready one. The loader lists an object before relocating it; patching it then would be
/// undone by its relocation, or fault it when RELRO is made read-only under the loader.
type FindObject = unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int;
static FIND_OBJECT: OnceLock<Option<FindObject>> = OnceLock::new();

/// Resolved before a walk, never inside one: `dlsym` takes the loader lock, which a
/// `dl_iterate_phdr` callback must not (another thread's `dlopen` takes them the other way).
fn find_object() -> Option<FindObject> {
    *FIND_OBJECT.get_or_init(|| {
        // SAFETY: looks a symbol up by a NUL-terminated name; null means absent.
        let address = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"_dl_find_object".as_ptr()) };
        if address.is_null() {
            // Consume our own lookup's error, so the program's next dlerror() is not ours.
            // SAFETY: dlerror has no preconditions.
            unsafe { libc::dlerror() };
        }
        // SAFETY: when present, `_dl_find_object` has this signature (glibc's <dlfcn.h>).
        (!address.is_null())
            .then(|| unsafe { std::mem::transmute::<*mut c_void, FindObject>(address) })
    })
}

struct Walk<'a> {
    hooks: &'a [Hook],
    own_address: usize,
    objects: &'a mut LoadedObjects,
    /// Keys of the objects listed by this walk.
    listed: HashSet<usize>,
    /// The counters read from the first object, if the loader reports them.
    counters: Option<LoaderCounters>,
    /// An object was unloaded since the last walk: every object is looked at again.
    full: bool,
    /// The walk stopped at once: nothing was loaded or unloaded since the last one.
    unchanged: bool,
    /// An object was not relocated yet; a later walk must look again.
    deferred: bool,
    slots_written: usize,
}

/// How a caller waits for another thread's walk.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Block until the walk is ours (install, test start, `dlsym`, `dlclose`).
    Block,
    /// Give up if another thread is walking (an allocation hook: the other thread may be
    /// inside the loader, waiting for a lock this thread holds).
    TryOnly,
}

/// Patch every loaded object not patched yet, and note the objects unloaded since the last
/// walk. Cheap when nothing changed: the loader's add/remove counters, read from the first
/// object, end the walk there. Returns the number of GOT slots written, or `None` when
/// `wait` is [`Wait::TryOnly`] and another thread was walking.
pub(crate) fn patch_loaded_objects(hooks: &[Hook], wait: Wait) -> Option<usize> {
    let mut guard = match wait {
        Wait::Block => OBJECTS.lock().unwrap_or_else(|e| e.into_inner()),
        Wait::TryOnly => match OBJECTS.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        },
    };
    let objects = guard.get_or_insert_with(LoadedObjects::default);
    find_object();
    let mut walk = Walk {
        hooks,
        own_address: patch_loaded_objects as *const () as usize,
        objects,
        listed: HashSet::new(),
        counters: None,
        full: false,
        unchanged: false,
        deferred: false,
        slots_written: 0,
    };
    objects::walk(|object| walk.visit(object));
    if !walk.unchanged {
        if walk.full {
            let gone: Vec<usize> = walk
                .objects
                .patched
                .keys()
                .filter(|k| !walk.listed.contains(k))
                .copied()
                .collect();
            for key in gone {
                if let Some(module) = walk.objects.patched.remove(&key) {
                    walk.objects.unloaded.push(module);
                }
            }
        }
        walk.objects.counters = if walk.deferred { None } else { walk.counters };
    }
    Some(walk.slots_written)
}

/// The module-map entries of the objects unloaded since [`forget_unloaded`] last ran.
pub(crate) fn unloaded_modules() -> Vec<Module> {
    let guard = OBJECTS.lock().unwrap_or_else(|e| e.into_inner());
    guard
        .as_ref()
        .map(|o| o.unloaded.clone())
        .unwrap_or_default()
}

/// Drop the entries of unloaded objects (a new test starts: its report needs none of them).
pub(crate) fn forget_unloaded() {
    let mut guard = OBJECTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(objects) = guard.as_mut() {
        objects.unloaded.clear();
    }
}

/// Hold the patch lock across fork so the child never inherits it locked mid-patch.
pub(crate) fn patch_lock() -> &'static Mutex<Option<LoadedObjects>> {
    &OBJECTS
}

impl Walk<'_> {
    fn visit(&mut self, object: &LoadedObject<'_>) -> ControlFlow<()> {
        if self.listed.is_empty() {
            if let Some(counters) = object.counters() {
                if self.objects.counters == Some(counters) {
                    self.unchanged = true;
                    return ControlFlow::Break(());
                }
                self.counters = Some(counters);
                // Something was unloaded: an object at a remembered address may be a new one
                // (or the same file loaded again, with a fresh GOT), so every object is looked
                // at.
                self.full = self
                    .objects
                    .counters
                    .is_none_or(|last| last.subs != counters.subs);
            }
        }
        let key = object.key();
        self.listed.insert(key);
        if self.objects.patched.contains_key(&key) && !self.full {
            return ControlFlow::Continue(());
        }
        let name = object.name();
        let has = |part: &[u8]| name.windows(part.len()).any(|w| w == part);
        if has(b"linux-vdso") || has(b"ld-linux") || has(b"/ld-") {
            return ControlFlow::Continue(());
        }
        let Some(target) = PatchTarget::read(object) else {
            return ControlFlow::Continue(());
        };
        if !target.relocated() {
            self.deferred = true;
            return ControlFlow::Continue(());
        }
        let module = Module::from_loaded(object);
        if let Some(old) = self.objects.patched.insert(key, module) {
            let same = self.objects.patched.get(&key) == Some(&old);
            if !same {
                self.objects.unloaded.push(old);
            }
        }
        if target.contains(self.own_address) {
            return ControlFlow::Continue(());
        }
        // SAFETY: the object is loaded and relocated; its relocation tables and GOT are mapped.
        self.slots_written += unsafe { target.patch(self.hooks) };
        ControlFlow::Continue(())
    }
}

/// What patching an object needs from it: its segments and relocation tables.
struct PatchTarget {
    bias: usize,
    segments: Vec<Segment>,
    relro: Option<Range<usize>>,
    symtab: usize,
    strtab: usize,
    tables: Vec<(usize, usize)>,
}

impl PatchTarget {
    fn read(object: &LoadedObject<'_>) -> Option<PatchTarget> {
        let bias = object.bias();
        // The loader relocates most d_ptr entries in place; some (vdso, read-only .dynamic)
        // stay relative to the load bias.
        let absolute = |p: usize| if p < bias { p + bias } else { p };
        let (mut symtab, mut strtab) = (0, 0);
        let (mut jmprel, mut pltrelsz, mut rela, mut relasz, mut pltrel) = (0, 0, 0, 0, DT_RELA);
        for (tag, val) in object.dynamic() {
            match tag {
                DT_SYMTAB => symtab = absolute(val),
                DT_STRTAB => strtab = absolute(val),
                DT_JMPREL => jmprel = absolute(val),
                DT_PLTRELSZ => pltrelsz = val,
                DT_RELA => rela = absolute(val),
                DT_RELASZ => relasz = val,
                DT_PLTREL => pltrel = val as isize,
                _ => {}
            }
        }
        if symtab == 0 || strtab == 0 || pltrel != DT_RELA {
            return None;
        }
        let mut tables = Vec::new();
        if jmprel != 0 && pltrelsz != 0 {
            tables.push((jmprel, pltrelsz / std::mem::size_of::<Rela>()));
        }
        if rela != 0 && relasz != 0 {
            tables.push((rela, relasz / std::mem::size_of::<Rela>()));
        }
        Some(PatchTarget {
            bias,
            segments: object.segments().collect(),
            relro: object.relro(),
            symtab,
            strtab,
            tables,
        })
    }

    /// Has the loader finished relocating this object (so its GOT holds its final values)?
    fn relocated(&self) -> bool {
        let (Some(find), Some(first)) = (find_object(), self.segments.first()) else {
            // Without `_dl_find_object` (glibc < 2.35) there is no way to tell: assume so.
            return true;
        };
        // `struct dl_find_object` is 12 words on x86-64 and aarch64; room to spare.
        let mut result = [0u64; 32];
        // SAFETY: `_dl_find_object` writes at most one `struct dl_find_object` to `result`.
        unsafe { find(first.start as *mut c_void, result.as_mut_ptr().cast()) == 0 }
    }

    fn contains(&self, address: usize) -> bool {
        self.segments.iter().any(|s| s.contains(address))
    }

    /// # Safety
    /// The object must be loaded; its symbol, string and relocation tables mapped.
    unsafe fn patch(&self, hooks: &[Hook]) -> usize {
        let mut writes = Vec::new();
        for &(table, count) in &self.tables {
            // SAFETY: DT_JMPREL/DT_RELA point at `count` Elf64_Rela entries.
            let relocations = unsafe { std::slice::from_raw_parts(table as *const Rela, count) };
            for r in relocations {
                if !GOT_RELOCATIONS.contains(&((r.info & 0xffff_ffff) as u32)) {
                    continue;
                }
                let sym_index = (r.info >> 32) as usize;
                // SAFETY: relocation symbol indices are within the dynamic symbol table, and
                // st_name is an offset into the NUL-terminated dynamic string table.
                let name = unsafe {
                    let sym = *(self.symtab as *const Sym).add(sym_index);
                    CStr::from_ptr((self.strtab + sym.name as usize) as *const libc::c_char)
                };
                if let Some(hook) = hooks.iter().find(|h| h.name == name.to_bytes()) {
                    writes.push((self.bias + r.offset as usize, hook.address));
                }
            }
        }
        let mut written = 0;
        for (slot, address) in writes {
            // SAFETY: `slot` is a GOT entry of this loaded object, pointer-aligned.
            if unsafe { std::ptr::read_volatile(slot as *const usize) } == address {
                continue;
            }
            // SAFETY: as above; the page is made writable for the write only.
            if unsafe { self.write_slot(slot, address) } {
                written += 1;
            }
        }
        written
    }

    /// # Safety
    /// `slot` must be a pointer-aligned GOT entry inside this object.
    unsafe fn write_slot(&self, slot: usize, value: usize) -> bool {
        let segment = self.segments.iter().find(|s| s.contains(slot));
        let in_relro = self.relro.as_ref().is_some_and(|r| r.contains(&slot));
        let writable = segment.is_some_and(|s| s.flags & libc::PF_W != 0) && !in_relro;
        if writable {
            // SAFETY: a writable data page of a loaded object; aligned word store.
            unsafe { std::ptr::write_volatile(slot as *mut usize, value) };
            return true;
        }
        let page = page_size();
        let start = slot & !(page - 1);
        // What the page is after the write: RELRO pages are read-only once relocated.
        let restore = match segment {
            Some(s) if !in_relro => prot_of(s.flags),
            _ => libc::PROT_READ,
        };
        // SAFETY: mprotect on a page of a mapped object; restored right after the write.
        unsafe {
            if libc::mprotect(
                start as *mut c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
            ) != 0
            {
                return false;
            }
            std::ptr::write_volatile(slot as *mut usize, value);
            libc::mprotect(start as *mut c_void, page, restore);
        }
        true
    }
}

fn prot_of(flags: u32) -> c_int {
    let mut prot = 0;
    if flags & libc::PF_R != 0 {
        prot |= libc::PROT_READ;
    }
    if flags & libc::PF_W != 0 {
        prot |= libc::PROT_WRITE;
    }
    if flags & libc::PF_X != 0 {
        prot |= libc::PROT_EXEC;
    }
    prot
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}
