//! One result model: what a tracked test allocated, shaped once. The tracker exports it (its
//! frame trie moved, not re-interned), the capture file stores it, the reports read it and the
//! binding hands it to Python. Serde gives the capture file (postcard) and the JSON their layout.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A name that is not one of an enum's names (`what` says which enum).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?} (expected one of: {expected})")]
pub struct UnknownName {
    /// What was being named: `allocator`, `thread mode`.
    pub what: &'static str,
    /// The name given.
    pub value: String,
    /// The accepted names, comma-separated.
    pub expected: String,
}

/// Implements `Display`, `FromStr` and serde (as the name: [`serde_as_text`]) for an enum with
/// `ALL` and `name()`.
macro_rules! named_enum {
    ($type:ty, $what:literal) => {
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $type {
            type Err = UnknownName;

            fn from_str(s: &str) -> Result<Self, UnknownName> {
                <$type>::ALL
                    .into_iter()
                    .find(|v| v.name() == s)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        value: s.to_string(),
                        expected: <$type>::ALL.map(|v| v.name()).join(", "),
                    })
            }
        }

        serde_as_text!($type);
    };
}

/// Implements serde for a type as its `Display` text, read back with its `FromStr` (whose
/// error is the decode error).
macro_rules! serde_as_text {
    ($type:ty) => {
        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// The API an allocation came through. A site is a (stack, allocator) pair, as in memray.
/// Stored and shown by its [`Allocator::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Allocator {
    /// `malloc`
    Malloc,
    /// `calloc`
    Calloc,
    /// `realloc`
    Realloc,
    /// `reallocarray`
    Reallocarray,
    /// `posix_memalign`
    PosixMemalign,
    /// `aligned_alloc`
    AlignedAlloc,
    /// `memalign`
    Memalign,
    /// `valloc`
    Valloc,
    /// `pvalloc`
    Pvalloc,
    /// `mmap` / `mmap64`
    Mmap,
    /// CPython's RAW domain (`PyMem_RawMalloc` and friends)
    PyRaw,
    /// CPython's MEM domain (`PyMem_Malloc` and friends)
    PyMem,
    /// CPython's OBJ domain (`PyObject_Malloc`: every Python object)
    PyObj,
}

impl Allocator {
    /// Every allocator, in declaration order.
    pub const ALL: [Allocator; 13] = [
        Allocator::Malloc,
        Allocator::Calloc,
        Allocator::Realloc,
        Allocator::Reallocarray,
        Allocator::PosixMemalign,
        Allocator::AlignedAlloc,
        Allocator::Memalign,
        Allocator::Valloc,
        Allocator::Pvalloc,
        Allocator::Mmap,
        Allocator::PyRaw,
        Allocator::PyMem,
        Allocator::PyObj,
    ];

    /// The name users know the allocator by.
    pub fn name(self) -> &'static str {
        match self {
            Allocator::Malloc => "malloc",
            Allocator::Calloc => "calloc",
            Allocator::Realloc => "realloc",
            Allocator::Reallocarray => "reallocarray",
            Allocator::PosixMemalign => "posix_memalign",
            Allocator::AlignedAlloc => "aligned_alloc",
            Allocator::Memalign => "memalign",
            Allocator::Valloc => "valloc",
            Allocator::Pvalloc => "pvalloc",
            Allocator::Mmap => "mmap",
            Allocator::PyRaw => "PyMem_RawMalloc",
            Allocator::PyMem => "PyMem_Malloc",
            Allocator::PyObj => "PyObject_Malloc",
        }
    }

    /// True for CPython's allocator domains (Python objects and interpreter buffers).
    pub fn is_python(self) -> bool {
        matches!(self, Allocator::PyRaw | Allocator::PyMem | Allocator::PyObj)
    }
}

named_enum!(Allocator, "allocator");

/// Whose allocations a tracked test is charged for. Named as the plugin and the capture file
/// name it (`current_thread`, `spawned`, `all`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ThreadMode {
    /// Only the thread running the test's call (pytest-memray's `current_thread_only=True`).
    CurrentThread,
    /// The test's thread plus every thread started during the call, and their descendants.
    #[default]
    Spawned,
    /// Every thread in the process.
    All,
}

impl ThreadMode {
    /// Every mode, in declaration order.
    pub const ALL: [ThreadMode; 3] = [
        ThreadMode::CurrentThread,
        ThreadMode::Spawned,
        ThreadMode::All,
    ];

    /// The mode's name.
    pub fn name(self) -> &'static str {
        match self {
            ThreadMode::CurrentThread => "current_thread",
            ThreadMode::Spawned => "spawned",
            ThreadMode::All => "all",
        }
    }
}

named_enum!(ThreadMode, "thread mode");

/// Whose allocations a test was charged for: its threads, and whether what trace, profile and
/// `sys.monitoring` callbacks allocate counted too (`--heapgate-include-tracers`). The capture
/// file and the JSON report write it as the thread mode's name with a `+tracers` suffix when
/// tracers counted (`spawned`, `all+tracers`), and a reader accepts nothing else.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Charge {
    /// Whose threads.
    pub threads: ThreadMode,
    /// True when tracers' callbacks were charged too.
    pub tracers: bool,
}

impl Charge {
    const TRACERS_SUFFIX: &'static str = "+tracers";
}

impl fmt::Display for Charge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.threads.name())?;
        if self.tracers {
            f.write_str(Charge::TRACERS_SUFFIX)?;
        }
        Ok(())
    }
}

impl FromStr for Charge {
    type Err = UnknownName;

    fn from_str(s: &str) -> Result<Self, UnknownName> {
        let (threads, tracers) = match s.strip_suffix(Charge::TRACERS_SUFFIX) {
            Some(threads) => (threads, true),
            None => (s, false),
        };
        let threads = threads.parse::<ThreadMode>().map_err(|_| UnknownName {
            what: "charge rule",
            value: s.to_string(),
            expected: format!(
                "{}, each optionally followed by {}",
                ThreadMode::ALL.map(|v| v.name()).join(", "),
                Charge::TRACERS_SUFFIX
            ),
        })?;
        Ok(Charge { threads, tracers })
    }
}

serde_as_text!(Charge);

/// A frame of a recorded stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Frame {
    /// A Python frame with its names copied out of the code object.
    Python {
        /// Qualified function name.
        function: String,
        /// Source file.
        filename: String,
        /// Line number.
        line: u32,
    },
    /// A native return address (symbolized lazily, at report time).
    Native(usize),
}

/// A node of the frame trie: a frame and the node of its caller (`None` at the outermost frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrieNode {
    /// The caller's node; always a smaller index.
    pub parent: Option<u32>,
    /// Index into [`TestReport::frames`].
    pub frame: u32,
}

/// The six numbers of one allocation site.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteCounts {
    /// Bytes the site held when the test's total was at its peak.
    pub bytes_at_peak: u64,
    /// Blocks the site held at the peak.
    pub count_at_peak: u64,
    /// Bytes still allocated when tracking stopped.
    pub leaked_bytes: u64,
    /// Blocks still allocated when tracking stopped.
    pub leaked_count: u64,
    /// Bytes allocated over the whole test.
    pub total_bytes: u64,
    /// Blocks allocated over the whole test.
    pub total_count: u64,
}

/// Bytes and blocks of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakTally {
    /// Bytes.
    pub bytes: u64,
    /// Blocks.
    pub count: u64,
}

impl std::ops::AddAssign for LeakTally {
    fn add_assign(&mut self, other: LeakTally) {
        self.bytes += other.bytes;
        self.count += other.count;
    }
}

/// How the leak scan classified a live block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakKind {
    /// No pointer to it anywhere.
    DefinitelyLost,
    /// Pointed to only from lost blocks.
    IndirectlyLost,
    /// A root or a reachable block still points to it.
    StillReachable,
    /// Only pointers far into its interior (not to its start) were found.
    PossiblyLost,
}

/// Live memory at the end of a test by reachability (see `capture::scan_leaks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeakKinds {
    /// No pointer to it anywhere.
    pub definitely_lost: LeakTally,
    /// Pointed to only from lost blocks.
    pub indirectly_lost: LeakTally,
    /// Still pointed to from a root or a reachable block.
    pub still_reachable: LeakTally,
    /// Pointed into only far from its start.
    pub possibly_lost: LeakTally,
}

impl LeakKinds {
    /// Counts a block of `bytes` of `kind`.
    pub fn add(&mut self, kind: LeakKind, bytes: u64) {
        let tally = match kind {
            LeakKind::DefinitelyLost => &mut self.definitely_lost,
            LeakKind::IndirectlyLost => &mut self.indirectly_lost,
            LeakKind::StillReachable => &mut self.still_reachable,
            LeakKind::PossiblyLost => &mut self.possibly_lost,
        };
        *tally += LeakTally { bytes, count: 1 };
    }

    /// What fails a native-leak check: definitely, indirectly and possibly lost (valgrind's
    /// default error kinds).
    pub fn lost(&self) -> LeakTally {
        let mut lost = self.definitely_lost;
        lost += self.indirectly_lost;
        lost += self.possibly_lost;
        lost
    }
}

impl std::ops::AddAssign for LeakKinds {
    fn add_assign(&mut self, other: LeakKinds) {
        self.definitely_lost += other.definitely_lost;
        self.indirectly_lost += other.indirectly_lost;
        self.still_reachable += other.still_reachable;
        self.possibly_lost += other.possibly_lost;
    }
}

/// One allocation site of a finished test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteReport {
    /// The API the memory came from.
    pub allocator: Allocator,
    /// The trie node of the allocating frame (`None`: no frames were recorded).
    pub node: Option<u32>,
    /// The site's numbers.
    pub counts: SiteCounts,
    /// The site's live blocks by reachability, when a leak scan ran.
    pub leak_kinds: Option<LeakKinds>,
}

/// The test's totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Highest total of live tracked bytes.
    pub peak_bytes: u64,
    /// Live tracked blocks at that peak.
    pub peak_count: u64,
    /// Bytes allocated over the test.
    pub total_bytes: u64,
    /// Blocks allocated over the test.
    pub total_count: u64,
    /// Bytes still live at the end.
    pub leaked_bytes: u64,
    /// Blocks still live at the end.
    pub leaked_count: u64,
    /// All live blocks by reachability, when a leak scan ran.
    pub leak_kinds: Option<LeakKinds>,
}

/// What one tracked test allocated: totals, and every site with its stack in a frame trie.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    /// The totals.
    pub totals: Totals,
    /// Distinct frames.
    pub frames: Vec<Frame>,
    /// The frame trie; a node's parent always comes before it.
    pub nodes: Vec<TrieNode>,
    /// Every site that allocated, largest at peak first.
    pub sites: Vec<SiteReport>,
}

impl TestReport {
    /// The stack ending at `node`, allocating frame first (out-of-range indices end it).
    pub fn stack(&self, mut node: Option<u32>) -> Vec<Frame> {
        let mut stack = Vec::new();
        // Parents come strictly before children (checked by `validate`), so this ends.
        while let Some(n) = node.and_then(|n| self.nodes.get(n as usize)) {
            let Some(frame) = self.frames.get(n.frame as usize) else {
                break;
            };
            stack.push(frame.clone());
            node = n.parent.filter(|&p| Some(p) < node);
        }
        stack
    }

    /// Site `index`'s stack, allocating frame first (empty for an unknown index).
    pub fn site_stack(&self, index: usize) -> Vec<Frame> {
        self.stack(self.sites.get(index).and_then(|s| s.node))
    }

    /// True when any frame is native (only then is a module map needed).
    pub fn has_native_frames(&self) -> bool {
        self.frames.iter().any(|f| matches!(f, Frame::Native(_)))
    }

    /// Adds a site with `stack` (allocating frame first) as a new branch of the trie: for
    /// reports made by hand (tests, tools); the tracker's own export shares its trie.
    pub fn push_site(
        &mut self,
        allocator: Allocator,
        counts: SiteCounts,
        leak_kinds: Option<LeakKinds>,
        stack: &[Frame],
    ) {
        let mut parent = None;
        for frame in stack.iter().rev() {
            self.frames.push(frame.clone());
            self.nodes.push(TrieNode {
                parent,
                frame: (self.frames.len() - 1) as u32,
            });
            parent = Some((self.nodes.len() - 1) as u32);
        }
        self.sites.push(SiteReport {
            allocator,
            node: parent,
            counts,
            leak_kinds,
        });
    }

    /// Checks that every index points where it may; the message names the first that does not.
    pub fn validate(&self) -> Result<(), String> {
        for (i, node) in self.nodes.iter().enumerate() {
            if node.frame as usize >= self.frames.len() {
                return Err(format!(
                    "trie node {i} names frame {} of {}",
                    node.frame,
                    self.frames.len()
                ));
            }
            if node.parent.is_some_and(|p| p as usize >= i) {
                return Err(format!(
                    "trie node {i} has parent {:?} that does not come before it",
                    node.parent
                ));
            }
        }
        for (i, site) in self.sites.iter().enumerate() {
            if site.node.is_some_and(|n| n as usize >= self.nodes.len()) {
                return Err(format!(
                    "site {i} names trie node {:?} of {}",
                    site.node,
                    self.nodes.len()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_unknown_names_are_listed() {
        for a in Allocator::ALL {
            assert_eq!(a.to_string().parse::<Allocator>(), Ok(a));
        }
        for m in ThreadMode::ALL {
            assert_eq!(m.name().parse::<ThreadMode>(), Ok(m));
        }
        let err = "malloc2".parse::<Allocator>().unwrap_err().to_string();
        assert!(err.starts_with("unknown allocator \"malloc2\" (expected one of: malloc, calloc"));
    }

    #[test]
    fn a_charge_is_written_as_its_mode_and_tracers_suffix_and_read_back_strictly() {
        for threads in ThreadMode::ALL {
            for tracers in [false, true] {
                let charge = Charge { threads, tracers };
                let text = charge.to_string();
                assert_eq!(text.ends_with("+tracers"), tracers);
                assert_eq!(text.parse::<Charge>(), Ok(charge));
            }
        }
        assert_eq!(Charge::default().to_string(), "spawned");
        for bad in [
            "",
            "+tracers",
            "spawned+",
            "spawned+tracers+tracers",
            "threads",
        ] {
            let err = bad.parse::<Charge>().unwrap_err().to_string();
            assert_eq!(
                err,
                format!(
                    "unknown charge rule {bad:?} (expected one of: current_thread, spawned, all, \
                     each optionally followed by +tracers)"
                )
            );
        }
    }

    #[test]
    fn pushed_sites_walk_back_to_their_stacks() {
        let py = |line| Frame::Python {
            function: "f".into(),
            filename: "t.py".into(),
            line,
        };
        let mut r = TestReport::default();
        r.push_site(
            Allocator::Malloc,
            SiteCounts::default(),
            None,
            &[py(2), py(1)],
        );
        r.push_site(Allocator::PyObj, SiteCounts::default(), None, &[]);
        assert_eq!(r.site_stack(0), [py(2), py(1)]);
        assert_eq!(r.sites[1].node, None);
        assert!(r.site_stack(1).is_empty() && r.site_stack(9).is_empty());
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn lost_is_everything_but_still_reachable() {
        let t = |bytes| LeakTally { bytes, count: 1 };
        let mut k = LeakKinds {
            definitely_lost: t(1),
            indirectly_lost: t(2),
            still_reachable: t(4),
            possibly_lost: t(8),
        };
        assert_eq!(
            k.lost(),
            LeakTally {
                bytes: 11,
                count: 3
            }
        );
        k += k;
        assert_eq!(k.still_reachable, LeakTally { bytes: 8, count: 2 });
    }
}
