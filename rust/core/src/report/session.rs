//! The session as one object: tracked tests added as they finish (from this process or from
//! pytest-xdist's workers, as [`SessionTest`] records), reports of several CI jobs merged, and
//! every session-level text rendered from it — `heapgate.json` ([`SessionReport::to_json`]),
//! JUnit ([`super::junit_xml`]), the terminal table and the GitHub summary.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::json::{SessionReport, TestEntry};
use super::text::format_size;

/// What the terminal summary needs of a test besides its `heapgate.json` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestNotes {
    /// Where its limits came from: `marker`, `default` (a session-wide option), or none.
    pub limit_source: Option<String>,
    /// Whether `--native-leaks` checked it.
    pub native_leaks: bool,
    /// What each suppression absorbed: (suppression index, lost bytes, lost blocks).
    pub absorbed: Vec<(usize, u64, u64)>,
    /// Problems the process that ran it has to report (an artifact it could not write).
    pub problems: Vec<String>,
}

/// One tracked test as the process that ran it hands it over (to itself, or to
/// pytest-xdist's controller): serialized once as JSON, read by [`SessionReport::add`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTest {
    /// The test's `heapgate.json` entry.
    pub entry: TestEntry,
    /// The rest.
    pub notes: TestNotes,
}

impl SessionTest {
    /// The record's JSON (one line).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }

    /// Reads a record made by [`SessionTest::to_json`].
    pub fn from_json(text: &str) -> Result<SessionTest, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// `path` with `.` and `..` resolved lexically.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` relative to `start` (both absolute, or both relative to the same directory),
/// lexically, as Python's `os.path.relpath`.
fn relative_path(path: &Path, start: &Path) -> String {
    let path = normalize(path);
    let start = normalize(start);
    let common = path
        .components()
        .zip(start.components())
        .take_while(|(a, b)| a == b)
        .count();
    let ups = start.components().count() - common;
    let parts: Vec<String> = std::iter::repeat_n("..".to_string(), ups)
        .chain(
            path.components()
                .skip(common)
                .map(|c| c.as_os_str().to_string_lossy().into_owned()),
        )
        .collect();
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

impl SessionReport {
    /// Adds a finished test; a test already in the report (an earlier attempt of a rerun test)
    /// is replaced, and the new one counts in the order it ran.
    pub fn add(&mut self, test: SessionTest) {
        let SessionTest { mut entry, notes } = test;
        entry.notes = notes;
        self.tests.retain(|t| t.nodeid != entry.nodeid);
        self.tests.push(entry);
        self.recount();
    }

    /// Appends every test of `other`, whose artifact paths are relative to `from_dir`, with
    /// those paths made relative to `to_dir` (the merged report's directory). Tests keep their
    /// order and a test in both reports appears twice; the session facts stay this report's.
    pub fn merge(&mut self, other: SessionReport, from_dir: &Path, to_dir: &Path) {
        for mut test in other.tests {
            for path in [&mut test.artifacts.capture, &mut test.artifacts.flamegraph]
                .into_iter()
                .flatten()
            {
                *path = relative_path(&from_dir.join(&*path), to_dir);
            }
            self.tests.push(test);
        }
        self.recount();
    }

    fn recount(&mut self) {
        self.session.tracked = self.tests.len();
        self.session.memory_failures = self.tests.iter().filter(|t| t.memory_failed).count();
    }

    /// `heapgate 0.1.0, Python 3.11.2, Linux-…: 3 tracked tests, 1 failed a memory check`.
    pub fn headline(&self) -> String {
        let s = &self.session;
        format!(
            "heapgate {}, Python {}, {}: {} tracked tests, {} failed a memory check",
            s.heapgate_version, s.python_version, s.platform, s.tracked, s.memory_failures
        )
    }

    /// The table of tracked tests, highest peak first; `most` rows (0: all).
    pub fn summary_lines(&self, most: usize) -> Vec<String> {
        let mut ranked: Vec<&TestEntry> = self.tests.iter().collect();
        ranked.sort_by_key(|t| std::cmp::Reverse(t.peak_bytes));
        let shown = if most == 0 {
            ranked.len()
        } else {
            most.min(ranked.len())
        };
        let mut lines = vec![format!(
            "{:>10} {:>11} {:>10} {:>10}  test",
            "peak", "allocations", "leaked", "limit"
        )];
        for t in &ranked[..shown] {
            let limit = t
                .limits
                .limit_memory
                .map_or_else(|| "-".to_string(), format_size);
            lines.push(format!(
                "{:>10} {:>11} {:>10} {limit:>10}  {}{}",
                format_size(t.peak_bytes),
                t.total_count,
                format_size(t.leaked.bytes),
                t.nodeid,
                if t.memory_failed { "  FAILED" } else { "" }
            ));
        }
        if shown < ranked.len() {
            lines.push(format!(
                "({} more tracked tests; --most-allocations=0 shows all)",
                ranked.len() - shown
            ));
        }
        lines
    }

    /// Every problem the tests' processes reported, in the order the tests ran.
    pub fn problems(&self) -> Vec<&str> {
        self.tests
            .iter()
            .flat_map(|t| t.notes.problems.iter().map(String::as_str))
            .collect()
    }

    /// What each of `count` suppressions absorbed over the session: (lost bytes, blocks).
    pub fn absorbed(&self, count: usize) -> Vec<(u64, u64)> {
        let mut totals = vec![(0, 0); count];
        for test in &self.tests {
            for &(index, bytes, blocks) in &test.notes.absorbed {
                if let Some(total) = totals.get_mut(index) {
                    total.0 += bytes;
                    total.1 += blocks;
                }
            }
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_python() {
        let rel = |p: &str, s: &str| relative_path(Path::new(p), Path::new(s));
        assert_eq!(rel("/a/shard1/x.svg", "/a"), "shard1/x.svg");
        assert_eq!(rel("/a/shard1/../x.svg", "/a/b"), "../x.svg");
        assert_eq!(rel("/a", "/a"), ".");
        assert_eq!(rel("/x/y", "/a/b"), "../../x/y");
    }
}
