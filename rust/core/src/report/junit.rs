//! heapgate's own JUnit file (`heapgate-junit.xml`), written with `quick-junit`: one testsuite
//! of the tracked tests, memory failures with their text, numbers as properties, and
//! `[[ATTACHMENT|path]]` lines for the flamegraphs in each test's system-out.

use std::path::Path;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

use super::json::SessionReport;

/// Errors while writing JUnit.
#[derive(Debug, thiserror::Error)]
pub enum JunitError {
    /// quick-junit could not serialize.
    #[error("cannot write JUnit XML: {0}")]
    Serialize(#[from] quick_junit::SerializeError),
}

/// (classname, name) as pytest's own junitxml spells them: `tests/test_x.py::Class::test_y[p]`
/// → (`tests.test_x.Class`, `test_y[p]`).
pub fn junit_names(nodeid: &str) -> (String, String) {
    let mut parts: Vec<&str> = nodeid.split("::").collect();
    let name = parts.pop().unwrap_or_default().to_string();
    if let Some(first) = parts.first_mut() {
        *first = first.strip_suffix(".py").unwrap_or(first);
    }
    let classname = parts
        .iter()
        .map(|p| p.replace(['/', '\\'], "."))
        .collect::<Vec<_>>()
        .join(".");
    (classname, name)
}

/// The JUnit XML of a session report; artifact paths are joined to `base` (the report's
/// directory) in the attachment lines.
pub fn junit_xml(report: &SessionReport, base: Option<&Path>) -> Result<String, JunitError> {
    let mut suite = TestSuite::new("heapgate");
    suite.add_property(Property::new(
        "heapgate_version",
        report.session.heapgate_version.as_str(),
    ));
    suite.add_property(Property::new(
        "python_version",
        report.session.python_version.as_str(),
    ));
    suite.add_property(Property::new("platform", report.session.platform.as_str()));
    for test in &report.tests {
        let status = if test.memory_failed {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            let text = test.failure.clone().unwrap_or_default();
            status.set_message(text.lines().next().unwrap_or("memory check failed"));
            status.set_type("heapgate.limit_memory");
            status.set_description(text);
            status
        } else if test.outcome == "skipped" {
            TestCaseStatus::skipped()
        } else {
            TestCaseStatus::success()
        };
        let (classname, name) = junit_names(&test.nodeid);
        let mut case = TestCase::new(name, status);
        case.set_classname(classname);
        let limit = test
            .limits
            .limit_memory
            .map(|l| l.to_string())
            .unwrap_or_default();
        let flamegraph = test.artifacts.flamegraph.clone().unwrap_or_default();
        case.add_property(Property::new(
            "heapgate_peak_bytes",
            test.peak_bytes.to_string(),
        ));
        case.add_property(Property::new("heapgate_limit_bytes", limit));
        case.add_property(Property::new(
            "heapgate_leaked_bytes",
            test.leaked.bytes.to_string(),
        ));
        case.add_property(Property::new("heapgate_flamegraph", flamegraph));
        let attachments: Vec<String> = [&test.artifacts.flamegraph, &test.artifacts.capture]
            .into_iter()
            .flatten()
            .map(|rel| {
                let path = base.map_or_else(|| Path::new(rel).to_path_buf(), |b| b.join(rel));
                format!("[[ATTACHMENT|{}]]", path.display())
            })
            .collect();
        if !attachments.is_empty() {
            case.set_system_out(attachments.join("\n") + "\n");
        }
        suite.add_test_case(case);
    }
    let mut junit = Report::new("heapgate");
    junit.add_test_suite(suite);
    Ok(junit.to_string()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_pytest() {
        assert_eq!(
            junit_names("tests/test_x.py::TestA::test_y[1-2]"),
            ("tests.test_x.TestA".to_string(), "test_y[1-2]".to_string())
        );
        assert_eq!(
            junit_names("test_x.py::test_y"),
            ("test_x".to_string(), "test_y".to_string())
        );
    }
}
