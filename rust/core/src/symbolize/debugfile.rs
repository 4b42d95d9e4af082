//! Finding separate debug files on disk: the `.build-id` tree and `.gnu_debuglink`.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use object::Object;

use super::elf;

/// `<root>/.build-id/xx/rest.debug` for each root, if one holds DWARF for this build-id.
pub(crate) fn by_build_id(roots: &[PathBuf], build_id: &[u8]) -> Option<PathBuf> {
    if build_id.len() < 2 {
        return None;
    }
    let hex = elf::hex(build_id);
    roots
        .iter()
        .map(|root| {
            root.join(".build-id")
                .join(&hex[..2])
                .join(format!("{}.debug", &hex[2..]))
        })
        .find(|candidate| is_debug_file_for(candidate, Some(build_id)))
}

/// The `.gnu_debuglink` target, searched as gdb does: beside the object, in its `.debug/`
/// directory, then under `<root>/<object's dir>/` for each root; the CRC32 must match.
pub(crate) fn by_debuglink(
    roots: &[PathBuf],
    object_path: &Path,
    name: &str,
    crc: u32,
) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let real = std::fs::canonicalize(object_path).unwrap_or_else(|_| object_path.to_owned());
    let dir = real.parent()?;
    let mut candidates = vec![dir.join(name), dir.join(".debug").join(name)];
    let relative_dir = dir.strip_prefix("/").unwrap_or(dir);
    candidates.extend(roots.iter().map(|root| root.join(relative_dir).join(name)));
    candidates.into_iter().find(|candidate| {
        std::fs::canonicalize(candidate).is_ok_and(|c| c != real)
            && crc32_of(candidate) == Some(crc)
            && is_debug_file_for(candidate, None)
    })
}

/// Whether `path` is an ELF file with DWARF (and, if given, the same build-id).
pub(crate) fn is_debug_file_for(path: &Path, build_id: Option<&[u8]>) -> bool {
    let Ok(map) = elf::map_file(path) else {
        return false;
    };
    let Ok(file) = object::File::parse(&*map) else {
        return false;
    };
    let id_matches = match (build_id, file.build_id().ok().flatten()) {
        (Some(wanted), Some(found)) => wanted == found,
        _ => true,
    };
    id_matches && elf::has_dwarf(&file)
}

fn crc32_of(path: &Path) -> Option<u32> {
    let mut file = File::open(path).ok()?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(hasher.finalize()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}
