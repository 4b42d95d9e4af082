//! The session JSON report (`heapgate.json`): one entry per tracked test. Its schema is
//! documented in the README ("Reports and artifacts") and versioned by [`JSON_VERSION`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::session::TestNotes;
use super::text::{frame_label, peak_failure, TextOptions};
use super::{ResolvedCapture, Resolver};
use crate::record::Limits;

/// The value of the report's `schema` field.
pub const JSON_SCHEMA: &str = "heapgate-session";
/// The version of the report's layout; bumped on any incompatible change.
pub const JSON_VERSION: u32 = 1;
/// Locations listed per test.
pub const TOP_LOCATIONS: usize = 5;

/// Errors reading a session report.
#[derive(Debug, thiserror::Error)]
pub enum JsonReportError {
    /// Not JSON, or not this layout.
    #[error("not a heapgate session report: {0}")]
    Parse(#[from] serde_json::Error),
    /// A layout this build does not know.
    #[error("session report {schema:?} version {version} is not supported (this heapgate reads {JSON_SCHEMA:?} version {JSON_VERSION})")]
    Unsupported {
        /// The file's `schema`.
        schema: String,
        /// The file's `version`.
        version: u32,
    },
}

/// `heapgate.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReport {
    /// Always [`JSON_SCHEMA`].
    pub schema: String,
    /// [`JSON_VERSION`].
    pub version: u32,
    /// Facts about the session.
    pub session: SessionFacts,
    /// Tracked tests in the order they ran.
    pub tests: Vec<TestEntry>,
}

/// Facts about the session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFacts {
    /// Python version.
    pub python_version: String,
    /// Platform.
    pub platform: String,
    /// heapgate version.
    pub heapgate_version: String,
    /// pytest's rootdir.
    pub rootdir: Option<String>,
    /// Tests tracked.
    pub tracked: usize,
    /// Tests that failed a memory check.
    pub memory_failures: usize,
}

/// Leaked memory by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaked {
    /// All bytes still live at the end of the call.
    pub bytes: u64,
    /// Blocks still live.
    pub count: u64,
    /// Of `bytes`, through the C library (malloc, mmap, ...).
    pub native_bytes: u64,
    /// Of `bytes`, through CPython's allocators (objects and interpreter buffers).
    pub python_bytes: u64,
    /// Of `bytes`, reached by no pointer (when a leak scan ran).
    pub definitely_lost_bytes: Option<u64>,
    /// Of `bytes`, reached only from lost blocks (when a leak scan ran).
    pub indirectly_lost_bytes: Option<u64>,
    /// Of `bytes`, still reachable (when a leak scan ran).
    pub still_reachable_bytes: Option<u64>,
    /// Of `bytes`, pointed into only far from its start (when a leak scan ran).
    pub possibly_lost_bytes: Option<u64>,
}

/// A top location: a site with its resolved stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Allocator name.
    pub allocator: String,
    /// Bytes at the test's peak.
    pub bytes_at_peak: u64,
    /// Blocks at the peak.
    pub count_at_peak: u64,
    /// Bytes still live at the end.
    pub leaked_bytes: u64,
    /// Blocks still live at the end.
    pub leaked_count: u64,
    /// The allocating frame's function.
    pub function: Option<String>,
    /// The first frame's file that has one (relative to rootdir when under it).
    pub file: Option<String>,
    /// Its line.
    pub line: Option<u32>,
    /// The stack, allocating frame first: `function (file:line)`.
    pub stack: Vec<String>,
    /// The same frames with their source file as recorded (absolute) and line, for tools
    /// that place results in source code (`heapgate github` annotations).
    #[serde(default)]
    pub frames: Vec<FrameSource>,
}

/// One frame of a [`Location`]'s stack, unshortened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameSource {
    /// Function name.
    pub function: String,
    /// Source file as recorded (not made relative), when known.
    pub file: Option<String>,
    /// Source line, when known.
    pub line: Option<u32>,
}

/// Files written for a test, relative to the report's directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifacts {
    /// The capture file.
    pub capture: Option<String>,
    /// The flamegraph SVG.
    pub flamegraph: Option<String>,
}

/// One tracked test.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestEntry {
    /// pytest node id.
    pub nodeid: String,
    /// pytest outcome of the call (`passed`, `failed`, `skipped`).
    pub outcome: String,
    /// True when a heapgate memory check failed.
    pub memory_failed: bool,
    /// Highest total of live bytes.
    pub peak_bytes: u64,
    /// Live blocks at the peak.
    pub peak_count: u64,
    /// Bytes allocated over the call.
    pub total_bytes: u64,
    /// Blocks allocated over the call.
    pub total_count: u64,
    /// Leaked memory by kind.
    pub leaked: Leaked,
    /// The checks.
    pub limits: Limits,
    /// The failure text when a memory check failed.
    pub failure: Option<String>,
    /// Largest sites at the peak (or by leaked bytes when nothing was live at the peak).
    pub top_locations: Vec<Location>,
    /// Files written for the test.
    pub artifacts: Artifacts,
    /// What the terminal summary needs besides (not in `heapgate.json`).
    #[serde(skip)]
    pub notes: TestNotes,
}

impl TestEntry {
    /// The entry of a capture; `artifacts` are paths relative to the report's directory.
    pub fn new(
        capture: &ResolvedCapture,
        resolver: &Resolver<'_>,
        artifacts: Artifacts,
    ) -> TestEntry {
        let c = capture.capture();
        let root = c.facts.rootdir.as_deref().map(Path::new);
        let mut entry = TestEntry::numbers(capture);
        // The peak's failure text only when the peak is what failed (a test with a limit it kept
        // can still fail a leak or baseline check).
        if let (true, Some(limit)) = (c.test.memory_failed, c.test.limits.limit_memory) {
            if c.result.totals.peak_bytes > limit {
                entry.failure = Some(peak_failure(
                    limit,
                    capture,
                    resolver,
                    c.test.limits.charge,
                    &TextOptions {
                        rootpath: root,
                        ..TextOptions::default()
                    },
                ));
            }
        }
        let by_leaks = c.result.totals.peak_bytes == 0;
        let mut order: Vec<usize> = (0..c.result.sites.len())
            .filter(|&i| {
                let s = &c.result.sites[i];
                if by_leaks {
                    s.counts.leaked_bytes > 0
                } else {
                    s.counts.bytes_at_peak > 0
                }
            })
            .collect();
        if by_leaks {
            order.sort_by_key(|&i| std::cmp::Reverse(c.result.sites[i].counts.leaked_bytes));
        }
        entry.top_locations = order
            .into_iter()
            .take(TOP_LOCATIONS)
            .map(|i| {
                let site = &c.result.sites[i];
                let stack = capture.stack(i, resolver);
                let located = stack
                    .iter()
                    .find(|f| f.filename.is_some() && f.line.is_some());
                Location {
                    allocator: site.allocator.to_string(),
                    bytes_at_peak: site.counts.bytes_at_peak,
                    count_at_peak: site.counts.count_at_peak,
                    leaked_bytes: site.counts.leaked_bytes,
                    leaked_count: site.counts.leaked_count,
                    function: stack.first().map(|f| f.function.clone()),
                    file: located
                        .and_then(|f| f.filename.as_deref())
                        .map(|f| super::text::show_path(f, root)),
                    line: located.and_then(|f| f.line),
                    stack: stack.iter().map(|f| frame_label(f, root)).collect(),
                    frames: stack
                        .iter()
                        .map(|f| FrameSource {
                            function: f.function.clone(),
                            file: f.filename.clone().filter(|n| !n.is_empty()),
                            line: f.line.filter(|&l| l > 0),
                        })
                        .collect(),
                }
            })
            .collect();
        entry.artifacts = artifacts;
        entry
    }

    /// The entry's numbers alone, with the test's own failure text: no stack is resolved
    /// (for a session whose summary is printed but whose report is not written).
    pub fn numbers(capture: &ResolvedCapture) -> TestEntry {
        let c = capture.capture();
        let mut leaked = Leaked {
            bytes: c.result.totals.leaked_bytes,
            count: c.result.totals.leaked_count,
            definitely_lost_bytes: c.result.totals.leak_kinds.map(|k| k.definitely_lost.bytes),
            indirectly_lost_bytes: c.result.totals.leak_kinds.map(|k| k.indirectly_lost.bytes),
            still_reachable_bytes: c.result.totals.leak_kinds.map(|k| k.still_reachable.bytes),
            possibly_lost_bytes: c.result.totals.leak_kinds.map(|k| k.possibly_lost.bytes),
            ..Leaked::default()
        };
        for site in &c.result.sites {
            if site.allocator.is_python() {
                leaked.python_bytes += site.counts.leaked_bytes;
            } else {
                leaked.native_bytes += site.counts.leaked_bytes;
            }
        }
        TestEntry {
            nodeid: c.test.nodeid.clone(),
            outcome: c.test.outcome.clone(),
            memory_failed: c.test.memory_failed,
            peak_bytes: c.result.totals.peak_bytes,
            peak_count: c.result.totals.peak_count,
            total_bytes: c.result.totals.total_bytes,
            total_count: c.result.totals.total_count,
            leaked,
            limits: c.test.limits.clone(),
            // Another check failed (leaks, growth, baseline): the text the test reported.
            failure: c.test.failure.clone().filter(|_| c.test.memory_failed),
            top_locations: Vec::new(),
            artifacts: Artifacts::default(),
            notes: TestNotes::default(),
        }
    }
}

impl SessionReport {
    /// A report of `tests`; python, platform and version come from the first test's capture.
    pub fn new(facts: SessionFacts, tests: Vec<TestEntry>) -> SessionReport {
        let memory_failures = tests.iter().filter(|t| t.memory_failed).count();
        SessionReport {
            schema: JSON_SCHEMA.to_string(),
            version: JSON_VERSION,
            session: SessionFacts {
                tracked: tests.len(),
                memory_failures,
                ..facts
            },
            tests,
        }
    }

    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".to_string());
        text.push('\n');
        text
    }

    /// Parses a report, refusing other layouts.
    pub fn from_json(text: &str) -> Result<SessionReport, JsonReportError> {
        #[derive(Deserialize)]
        struct Header {
            schema: String,
            version: u32,
        }
        let header: Header = serde_json::from_str(text)?;
        if header.schema != JSON_SCHEMA || header.version != JSON_VERSION {
            return Err(JsonReportError::Unsupported {
                schema: header.schema,
                version: header.version,
            });
        }
        Ok(serde_json::from_str(text)?)
    }
}
