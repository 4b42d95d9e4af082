//! The capture file: one tracked test's result, self-describing and small (kilobytes), so a
//! CI job can keep it as an artifact and `heapgate report` can symbolize it later, elsewhere.
//!
//! Layout (all integers little-endian):
//!
//! | bytes | content |
//! | --- | --- |
//! | 8 | magic `HGCAPTUR` |
//! | 2 | format version ([`FORMAT_VERSION`]) |
//! | 4 | payload length in bytes |
//! | 4 | CRC32 (IEEE) of the payload |
//! | n | payload: [`Capture`] encoded with `postcard` (serde, varints) |
//!
//! The reader ([`Capture::from_bytes`]) checks each of these in turn, then that every index
//! in the frame trie points where it may, so code that walks a capture never panics.
//!
//! The test's numbers are the tracker's [`TestReport`], moved in whole (its trie as the
//! tracker interned it) and shared, not copied, by every [`Capture`] made from it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::model::{Charge, Frame, SiteReport, TestReport, Totals, TrieNode};
use crate::symbolize::{Module, ModuleMap};

/// The 8 bytes every capture file starts with.
pub const MAGIC: &[u8; 8] = b"HGCAPTUR";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 2;
/// Header size: magic, version, payload length, CRC32.
pub const HEADER_LEN: usize = 8 + 2 + 4 + 4;
/// The largest payload the reader accepts (a capture is kilobytes; this bounds a hostile file).
pub const MAX_PAYLOAD: usize = 256 << 20;
/// The file-name extension of capture files.
pub const EXTENSION: &str = "heapgate";

/// Why a capture file could not be read or written. Every message names the problem; the
/// caller adds the file name.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Does not start with [`MAGIC`].
    #[error("not a heapgate capture file (bad magic bytes)")]
    BadMagic,
    /// Written by a format this build does not know.
    #[error(
        "capture format version {found} is not supported (this heapgate reads version {supported})"
    )]
    UnsupportedVersion {
        /// The file's version.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// Shorter than its header says.
    #[error("truncated capture file: {expected} bytes expected, {found} present")]
    Truncated {
        /// Bytes the header promises (header included).
        expected: u64,
        /// Bytes present.
        found: u64,
    },
    /// Longer than its header says.
    #[error("corrupt capture file: {extra} unexpected bytes after the payload")]
    TrailingBytes {
        /// How many.
        extra: u64,
    },
    /// The payload length is beyond [`MAX_PAYLOAD`].
    #[error("corrupt capture file: payload length {0} is implausible")]
    TooLarge(u64),
    /// The payload's CRC32 does not match the header's.
    #[error("corrupt capture file: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC32 in the header.
        stored: u32,
        /// CRC32 of the payload as read.
        computed: u32,
    },
    /// The payload does not decode.
    #[error("corrupt capture file: {0}")]
    Decode(String),
    /// The payload decodes but its indices are inconsistent.
    #[error("corrupt capture file: {0}")]
    Invalid(String),
    /// Encoding failed (not expected for well-formed data).
    #[error("cannot encode capture: {0}")]
    Encode(String),
}

/// Facts about the process that made the capture.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFacts {
    /// `sys.version` of the interpreter (first line).
    pub python_version: String,
    /// `platform.platform()`.
    pub platform: String,
    /// heapgate's version.
    pub heapgate_version: String,
    /// `sys.executable`: its frames are the interpreter's (hidden in reports).
    pub executable: Option<String>,
    /// pytest's rootdir: Python file names under it are shown relative to it.
    pub rootdir: Option<String>,
}

/// The memory checks a test ran under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// `limit_memory`'s limit in bytes.
    pub limit_memory: Option<u64>,
    /// `limit_leaks`' limit in bytes, per location.
    pub limit_leaks: Option<u64>,
    /// `--native-leaks`' limit in bytes of lost native memory.
    pub native_leaks: Option<u64>,
    /// Whose allocations were charged (stored under its old name, `thread_mode`: the value
    /// was always the charge rule's text).
    #[serde(rename = "thread_mode")]
    pub charge: Charge,
}

/// Which test, under which limits, with which outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestInfo {
    /// pytest node id.
    pub nodeid: String,
    /// pytest outcome of the call: `passed`, `failed` or `skipped`.
    pub outcome: String,
    /// True when a heapgate memory check failed.
    pub memory_failed: bool,
    /// The limits.
    pub limits: Limits,
    /// The failure text the test reported (any check: peak, leaks, growth, baseline).
    pub failure: Option<String>,
}

/// A loaded object, as needed to symbolize its addresses later (see [`Module`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedModule {
    /// Path of the object file.
    pub path: String,
    /// Load bias.
    pub base: u64,
    /// Runtime address ranges `(start, end)`.
    pub ranges: Vec<(u64, u64)>,
    /// GNU build-id.
    pub build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink` name and CRC32.
    pub debuglink: Option<(String, u32)>,
}

/// One tracked test's capture: what the capture file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// The process that made it.
    pub facts: ProcessFacts,
    /// The test.
    pub test: TestInfo,
    /// Loaded objects that native frames point into.
    pub modules: Vec<RecordedModule>,
    /// The test's numbers, sites and frame trie (shared by captures of one test).
    pub result: Arc<TestReport>,
}

/// The payload's field order (format 2): the result's parts sit around the module list.
#[derive(Serialize)]
struct Layout<'a> {
    facts: &'a ProcessFacts,
    test: &'a TestInfo,
    totals: &'a Totals,
    modules: &'a [RecordedModule],
    frames: &'a [Frame],
    nodes: &'a [TrieNode],
    sites: &'a [SiteReport],
}

/// [`Layout`], read.
#[derive(Deserialize)]
struct OwnedLayout {
    facts: ProcessFacts,
    test: TestInfo,
    totals: Totals,
    modules: Vec<RecordedModule>,
    frames: Vec<Frame>,
    nodes: Vec<TrieNode>,
    sites: Vec<SiteReport>,
}

impl Serialize for Capture {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = &*self.result;
        Layout {
            facts: &self.facts,
            test: &self.test,
            totals: &r.totals,
            modules: &self.modules,
            frames: &r.frames,
            nodes: &r.nodes,
            sites: &r.sites,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Capture {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let l = OwnedLayout::deserialize(deserializer)?;
        Ok(Capture {
            facts: l.facts,
            test: l.test,
            modules: l.modules,
            result: Arc::new(TestReport {
                totals: l.totals,
                frames: l.frames,
                nodes: l.nodes,
                sites: l.sites,
            }),
        })
    }
}

impl Capture {
    /// A capture of `result`; `modules` is the process's map (only the objects that native
    /// frames point into are kept).
    pub fn new(
        result: impl Into<Arc<TestReport>>,
        modules: &ModuleMap,
        facts: ProcessFacts,
        test: TestInfo,
    ) -> Capture {
        let result = result.into();
        let all = modules.modules();
        let mut used = vec![false; all.len()];
        for frame in &result.frames {
            if let Frame::Native(addr) = frame {
                if let Some((module, _)) = modules.lookup(addr.saturating_sub(1) as u64) {
                    if let Some(i) = all.iter().position(|m| std::ptr::eq(m, module)) {
                        used[i] = true;
                    }
                }
            }
        }
        let recorded = all
            .iter()
            .zip(used)
            .filter(|(_, used)| *used)
            .map(|(m, _)| RecordedModule {
                path: m.path.display().to_string(),
                base: m.base,
                ranges: m.ranges.iter().map(|r| (r.start, r.end)).collect(),
                build_id: m.build_id.clone(),
                debuglink: m.debuglink.clone(),
            })
            .collect();
        Capture {
            facts,
            test,
            modules: recorded,
            result,
        }
    }

    /// The same result for another test and process description (the result is shared).
    pub fn with_test(&self, test: TestInfo, facts: ProcessFacts) -> Capture {
        Capture {
            facts,
            test,
            modules: self.modules.clone(),
            result: Arc::clone(&self.result),
        }
    }

    /// The module map the native frames are resolved against.
    pub fn module_map(&self) -> ModuleMap {
        ModuleMap::new(
            self.modules
                .iter()
                .map(|m| Module {
                    path: PathBuf::from(&m.path),
                    base: m.base,
                    ranges: m.ranges.iter().map(|&(s, e)| s..e).collect(),
                    build_id: m.build_id.clone(),
                    debuglink: m.debuglink.clone(),
                })
                .collect(),
        )
    }

    /// Site `index`'s stack, allocating frame first.
    pub fn site_stack(&self, index: usize) -> Vec<Frame> {
        self.result.site_stack(index)
    }

    /// The file's bytes: header and payload.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let payload = postcard::to_stdvec(self).map_err(|e| RecordError::Encode(e.to_string()))?;
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Reads a capture from a file's bytes; any damage is an error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Capture, RecordError> {
        let found = bytes.len() as u64;
        if bytes.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(bytes) && !bytes.is_empty() {
                RecordError::Truncated {
                    expected: HEADER_LEN as u64,
                    found,
                }
            } else {
                RecordError::BadMagic
            });
        }
        if &bytes[..MAGIC.len()] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        if bytes.len() < HEADER_LEN {
            return Err(RecordError::Truncated {
                expected: HEADER_LEN as u64,
                found,
            });
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(RecordError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let len = u32::from_le_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
        let stored = u32::from_le_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
        if len > MAX_PAYLOAD {
            return Err(RecordError::TooLarge(len as u64));
        }
        let expected = (HEADER_LEN + len) as u64;
        if found < expected {
            return Err(RecordError::Truncated { expected, found });
        }
        if found > expected {
            return Err(RecordError::TrailingBytes {
                extra: found - expected,
            });
        }
        let payload = &bytes[HEADER_LEN..];
        let computed = crc32fast::hash(payload);
        if computed != stored {
            return Err(RecordError::Checksum { stored, computed });
        }
        let (capture, rest): (Capture, &[u8]) =
            postcard::take_from_bytes(payload).map_err(|e| RecordError::Decode(e.to_string()))?;
        if !rest.is_empty() {
            return Err(RecordError::Decode(format!(
                "{} bytes left over after the payload",
                rest.len()
            )));
        }
        capture.validate()?;
        Ok(capture)
    }

    /// Checks that every index points where it may.
    pub fn validate(&self) -> Result<(), RecordError> {
        self.result.validate().map_err(RecordError::Invalid)?;
        for m in &self.modules {
            if m.ranges.iter().any(|&(s, e)| s > e) {
                return Err(RecordError::Invalid(format!(
                    "module {} has an inverted address range",
                    m.path
                )));
            }
        }
        Ok(())
    }

    /// Writes the capture file at `path`.
    pub fn write(&self, path: &Path) -> Result<(), RecordError> {
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|source| RecordError::Io {
            path: path.to_owned(),
            source,
        })
    }

    /// Reads the capture file at `path`.
    pub fn read(path: &Path) -> Result<Capture, RecordError> {
        let bytes = std::fs::read(path).map_err(|source| RecordError::Io {
            path: path.to_owned(),
            source,
        })?;
        Capture::from_bytes(&bytes)
    }
}

#[cfg(test)]
mod tests;
