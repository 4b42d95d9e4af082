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

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::capture::{Allocator, Frame, LeakKinds, LeakTally, SiteReport, TestReport};
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
    /// Whose allocations were charged: `spawned`, `current_thread` or `all`.
    pub thread_mode: String,
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

/// The test's totals (as in [`TestReport`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Highest total of live tracked bytes.
    pub peak_bytes: u64,
    /// Live blocks at the peak.
    pub peak_count: u64,
    /// Bytes allocated over the test.
    pub total_bytes: u64,
    /// Blocks allocated over the test.
    pub total_count: u64,
    /// Bytes still live at the end.
    pub leaked_bytes: u64,
    /// Blocks still live at the end.
    pub leaked_count: u64,
    /// Live blocks at the end by reachability, when a leak scan ran.
    pub leak_kinds: Option<RecordedLeakKinds>,
}

/// Bytes and blocks of live memory at the end by reachability (see [`LeakKinds`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedLeakKinds {
    /// (bytes, blocks) no pointer reaches.
    pub definitely_lost: (u64, u64),
    /// (bytes, blocks) reached only from lost blocks.
    pub indirectly_lost: (u64, u64),
    /// (bytes, blocks) still reachable.
    pub still_reachable: (u64, u64),
    /// (bytes, blocks) pointed into only far from their start.
    pub possibly_lost: (u64, u64),
}

impl From<&LeakKinds> for RecordedLeakKinds {
    fn from(k: &LeakKinds) -> Self {
        let t = |t: LeakTally| (t.bytes, t.count);
        RecordedLeakKinds {
            definitely_lost: t(k.definitely_lost),
            indirectly_lost: t(k.indirectly_lost),
            still_reachable: t(k.still_reachable),
            possibly_lost: t(k.possibly_lost),
        }
    }
}

impl From<&RecordedLeakKinds> for LeakKinds {
    fn from(k: &RecordedLeakKinds) -> Self {
        let t = |(bytes, count): (u64, u64)| LeakTally { bytes, count };
        LeakKinds {
            definitely_lost: t(k.definitely_lost),
            indirectly_lost: t(k.indirectly_lost),
            still_reachable: t(k.still_reachable),
            possibly_lost: t(k.possibly_lost),
        }
    }
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

/// One frame of the trie.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RecordedFrame {
    /// Python code.
    Python {
        /// Qualified function name.
        function: String,
        /// Source file.
        filename: String,
        /// Line.
        line: u32,
    },
    /// A native return address.
    Native(u64),
}

/// A trie node: a frame and the node of its caller (`None` at the outermost frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrieNode {
    /// The caller's node; always a smaller index.
    pub parent: Option<u32>,
    /// Index into [`Capture::frames`].
    pub frame: u32,
}

/// One allocation site's numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedSite {
    /// Allocator name (`malloc`, `PyObject_Malloc`, ...).
    pub allocator: String,
    /// The allocating frame's node (`None`: no frames were recorded).
    pub node: Option<u32>,
    /// Bytes held at the test's peak.
    pub bytes_at_peak: u64,
    /// Blocks held at the peak.
    pub count_at_peak: u64,
    /// Bytes still live at the end.
    pub leaked_bytes: u64,
    /// Blocks still live at the end.
    pub leaked_count: u64,
    /// Bytes allocated over the test.
    pub total_bytes: u64,
    /// Blocks allocated over the test.
    pub total_count: u64,
    /// The site's live blocks by reachability, when a leak scan ran.
    pub leak_kinds: Option<RecordedLeakKinds>,
}

/// One tracked test's capture: what the capture file holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capture {
    /// The process that made it.
    pub facts: ProcessFacts,
    /// The test.
    pub test: TestInfo,
    /// The test's totals.
    pub totals: Totals,
    /// Loaded objects that native frames point into.
    pub modules: Vec<RecordedModule>,
    /// Distinct frames.
    pub frames: Vec<RecordedFrame>,
    /// The frame trie; a node's parent always comes before it.
    pub nodes: Vec<TrieNode>,
    /// Sites, largest at peak first.
    pub sites: Vec<RecordedSite>,
}

impl Capture {
    /// A capture of `report`; `modules` is the process's map (only the objects that native
    /// frames point into are kept).
    pub fn from_report(
        report: &TestReport,
        modules: &ModuleMap,
        facts: ProcessFacts,
        test: TestInfo,
    ) -> Capture {
        let mut interner = Interner::default();
        let sites = report
            .sites
            .iter()
            .map(|site| RecordedSite {
                allocator: site.allocator.name().to_string(),
                node: interner.intern(&site.stack),
                bytes_at_peak: site.bytes_at_peak,
                count_at_peak: site.count_at_peak,
                leaked_bytes: site.leaked_bytes,
                leaked_count: site.leaked_count,
                total_bytes: site.total_bytes,
                total_count: site.total_count,
                leak_kinds: site.leak_kinds.as_ref().map(RecordedLeakKinds::from),
            })
            .collect();
        let mut used: Vec<usize> = Vec::new();
        for frame in &interner.frames {
            if let RecordedFrame::Native(addr) = frame {
                if let Some((module, _)) = modules.lookup(addr.saturating_sub(1)) {
                    let i = modules
                        .modules()
                        .iter()
                        .position(|m| std::ptr::eq(m, module))
                        .unwrap_or(0);
                    if !used.contains(&i) {
                        used.push(i);
                    }
                }
            }
        }
        used.sort_unstable();
        let recorded = used
            .into_iter()
            .map(|i| {
                let m = &modules.modules()[i];
                RecordedModule {
                    path: m.path.display().to_string(),
                    base: m.base,
                    ranges: m.ranges.iter().map(|r| (r.start, r.end)).collect(),
                    build_id: m.build_id.clone(),
                    debuglink: m.debuglink.clone(),
                }
            })
            .collect();
        Capture {
            facts,
            test,
            totals: Totals {
                peak_bytes: report.peak_bytes,
                peak_count: report.peak_count,
                total_bytes: report.total_bytes,
                total_count: report.total_count,
                leaked_bytes: report.leaked_bytes,
                leaked_count: report.leaked_count,
                leak_kinds: report.leak_kinds.as_ref().map(RecordedLeakKinds::from),
            },
            modules: recorded,
            frames: interner.frames,
            nodes: interner.nodes,
            sites,
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
        let mut stack = Vec::new();
        let mut node = self.sites.get(index).and_then(|s| s.node);
        // Parents come strictly before children (checked on read), so this ends.
        while let Some(n) = node.and_then(|n| self.nodes.get(n as usize)) {
            let Some(frame) = self.frames.get(n.frame as usize) else {
                break;
            };
            stack.push(match frame {
                RecordedFrame::Python {
                    function,
                    filename,
                    line,
                } => Frame::Python {
                    function: function.clone(),
                    filename: filename.clone(),
                    line: *line,
                },
                RecordedFrame::Native(addr) => Frame::Native(*addr as usize),
            });
            node = n.parent;
        }
        stack
    }

    /// The report this capture was made from (sites in capture order).
    pub fn to_test_report(&self) -> TestReport {
        TestReport {
            peak_bytes: self.totals.peak_bytes,
            peak_count: self.totals.peak_count,
            total_bytes: self.totals.total_bytes,
            total_count: self.totals.total_count,
            leaked_bytes: self.totals.leaked_bytes,
            leaked_count: self.totals.leaked_count,
            leak_kinds: self.totals.leak_kinds.as_ref().map(LeakKinds::from),
            sites: self
                .sites
                .iter()
                .enumerate()
                .map(|(i, s)| SiteReport {
                    allocator: Allocator::from_name(&s.allocator).unwrap_or(Allocator::Malloc),
                    bytes_at_peak: s.bytes_at_peak,
                    count_at_peak: s.count_at_peak,
                    leaked_bytes: s.leaked_bytes,
                    leaked_count: s.leaked_count,
                    total_bytes: s.total_bytes,
                    total_count: s.total_count,
                    leak_kinds: s.leak_kinds.as_ref().map(LeakKinds::from),
                    stack: self.site_stack(i),
                })
                .collect(),
        }
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
        for (i, node) in self.nodes.iter().enumerate() {
            if node.frame as usize >= self.frames.len() {
                return Err(RecordError::Invalid(format!(
                    "trie node {i} names frame {} of {}",
                    node.frame,
                    self.frames.len()
                )));
            }
            if node.parent.is_some_and(|p| p as usize >= i) {
                return Err(RecordError::Invalid(format!(
                    "trie node {i} has parent {:?} that does not come before it",
                    node.parent
                )));
            }
        }
        for (i, site) in self.sites.iter().enumerate() {
            if site.node.is_some_and(|n| n as usize >= self.nodes.len()) {
                return Err(RecordError::Invalid(format!(
                    "site {i} names trie node {:?} of {}",
                    site.node,
                    self.nodes.len()
                )));
            }
        }
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

/// Re-interns stacks into (parent, frame) nodes, outermost frame first.
#[derive(Default)]
struct Interner {
    frames: Vec<RecordedFrame>,
    frame_ids: std::collections::HashMap<RecordedFrame, u32>,
    nodes: Vec<TrieNode>,
    node_ids: std::collections::HashMap<(Option<u32>, u32), u32>,
}

impl Interner {
    fn frame(&mut self, frame: &Frame) -> u32 {
        let key = match frame {
            Frame::Python {
                function,
                filename,
                line,
            } => RecordedFrame::Python {
                function: function.clone(),
                filename: filename.clone(),
                line: *line,
            },
            Frame::Native(addr) => RecordedFrame::Native(*addr as u64),
        };
        if let Some(&id) = self.frame_ids.get(&key) {
            return id;
        }
        let id = self.frames.len() as u32;
        self.frames.push(key.clone());
        self.frame_ids.insert(key, id);
        id
    }

    /// The node of `stack`'s allocating frame (stack is allocating frame first).
    fn intern(&mut self, stack: &[Frame]) -> Option<u32> {
        let mut parent = None;
        for frame in stack.iter().rev() {
            let frame = self.frame(frame);
            let next = self.nodes.len() as u32;
            let id = *self.node_ids.entry((parent, frame)).or_insert(next);
            if id == next {
                self.nodes.push(TrieNode { parent, frame });
            }
            parent = Some(id);
        }
        parent
    }
}

#[cfg(test)]
mod tests;
