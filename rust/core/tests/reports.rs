//! Golden files (insta) for every report format, from one fixed capture with deterministic
//! addresses: the failure text, folded stacks, the session JSON and JUnit XML.
#![allow(clippy::single_range_in_vec_init)]

use std::path::Path;
use std::sync::Arc;

use heapgate_core::model::{Allocator, Frame, SiteCounts, TestReport, Totals};
use heapgate_core::record::{Capture, Limits, ProcessFacts, TestInfo};
use heapgate_core::report::{
    capture_text, flamegraph_svg, folded_stacks, github_annotations, github_summary, junit_xml,
    peak_failure, Artifacts, GithubOptions, InterpreterModules, ResolvedCapture, Resolver,
    SessionFacts, SessionReport, TestEntry, TextOptions, Weight,
};
use heapgate_core::symbolize::{Module, ModuleMap, Symbolizer, SymbolizerOptions};

fn py(function: &str, file: &str, line: u32) -> Frame {
    Frame::Python {
        function: function.to_string(),
        filename: file.to_string(),
        line,
    }
}

fn site(allocator: Allocator, at_peak: u64, leaked: u64, stack: Vec<Frame>) -> Site {
    let counts = SiteCounts {
        bytes_at_peak: at_peak,
        count_at_peak: u64::from(at_peak > 0),
        leaked_bytes: leaked,
        leaked_count: u64::from(leaked > 0),
        total_bytes: at_peak.max(leaked),
        total_count: 1,
    };
    (allocator, counts, stack)
}

/// A site as the fixture lists it: allocator, numbers, stack (allocating frame first).
type Site = (Allocator, SiteCounts, Vec<Frame>);

/// A test that went over its 5 MiB limit: a native allocation in an object that is not on
/// this disk (so its frame stays `??`, the same on every machine), and Python allocations.
fn fixed_capture() -> Capture {
    let totals = Totals {
        peak_bytes: 10_485_760 + 4_096 + 57,
        peak_count: 3,
        total_bytes: 10_485_760 + 4_096 + 57 + 100,
        total_count: 4,
        leaked_bytes: 57,
        leaked_count: 1,
        leak_kinds: None,
    };
    let sites = vec![
        site(
            Allocator::Malloc,
            10_485_760,
            0,
            vec![
                Frame::Native(0x7f00_0000_1234),
                py("helper", "/proj/tests/test_text.py", 4),
                py("test_big", "/proj/tests/test_text.py", 8),
            ],
        ),
        site(
            Allocator::PyObj,
            4_096,
            0,
            vec![py("test_big", "/proj/tests/test_text.py", 9)],
        ),
        site(
            Allocator::PyObj,
            57,
            57,
            vec![py("make; \"it\" <now>", "/elsewhere/lib.py", 12)],
        ),
        site(Allocator::Mmap, 0, 0, vec![]),
    ];
    let mut report = TestReport {
        totals,
        ..TestReport::default()
    };
    for (allocator, counts, stack) in sites {
        report.push_site(allocator, counts, None, &stack);
    }
    let modules = ModuleMap::new(vec![Module {
        path: "/nonexistent/heapgate-fixture/ext.so".into(),
        base: 0x7f00_0000_0000,
        ranges: vec![0x7f00_0000_0000..0x7f00_0001_0000],
        build_id: Some(vec![0xde, 0xad, 0xbe, 0xef]),
        debuglink: None,
    }]);
    Capture::new(
        report,
        &modules,
        ProcessFacts {
            python_version: "3.11.2".into(),
            platform: "Linux-x86_64".into(),
            heapgate_version: "0.0.0-fixture".into(),
            executable: Some("/usr/bin/python3".into()),
            rootdir: Some("/proj".into()),
        },
        TestInfo {
            nodeid: "tests/test_text.py::test_big[<a&b>]".into(),
            outcome: "failed".into(),
            memory_failed: true,
            limits: Limits {
                limit_memory: Some(5 << 20),
                limit_leaks: None,
                native_leaks: Some(0),
                thread_mode: "spawned".into(),
            },
            failure: None,
        },
    )
}

fn with_resolver<T>(f: impl FnOnce(&ResolvedCapture, &Resolver<'_>) -> T) -> T {
    let symbolizer = Symbolizer::new(SymbolizerOptions {
        debug_roots: Vec::new(),
        debuginfod_urls: Vec::new(),
        debuginfod_cache: None,
        messages: Some(Arc::new(|_: &str| {})),
        ..SymbolizerOptions::default()
    });
    let interpreter = InterpreterModules::new(None);
    let resolver = Resolver {
        symbolizer: &symbolizer,
        interpreter: &interpreter,
    };
    let bytes = fixed_capture().to_bytes().unwrap();
    let capture = ResolvedCapture::new(Capture::from_bytes(&bytes).unwrap());
    f(&capture, &resolver)
}

#[test]
fn failure_text() {
    let text = with_resolver(|c, r| {
        peak_failure(
            5 << 20,
            c,
            r,
            "spawned",
            &TextOptions {
                rootpath: Some(Path::new("/proj")),
                ..TextOptions::default()
            },
        )
    });
    insta::assert_snapshot!(text);
}

#[test]
fn failure_text_with_few_frames() {
    let text = with_resolver(|c, r| {
        peak_failure(
            5 << 20,
            c,
            r,
            "current_thread",
            &TextOptions {
                rootpath: None,
                max_sites: 1,
                max_frames: Some(1),
            },
        )
    });
    insta::assert_snapshot!(text);
}

#[test]
fn folded() {
    insta::assert_snapshot!(with_resolver(|c, r| folded_stacks(
        c,
        r,
        Weight::BytesAtPeak
    )));
    insta::assert_snapshot!(
        "folded_leaks",
        with_resolver(|c, r| folded_stacks(c, r, Weight::BytesLeaked))
    );
}

fn session() -> SessionReport {
    with_resolver(|c, r| {
        let entry = TestEntry::new(
            c,
            r,
            Artifacts {
                capture: Some("tests_test_text.py__test_big_a_b_-0123abcd.heapgate".into()),
                flamegraph: Some("tests_test_text.py__test_big_a_b_-0123abcd.svg".into()),
            },
        );
        let facts = SessionFacts {
            python_version: "3.11.2".into(),
            platform: "Linux-x86_64".into(),
            heapgate_version: "0.0.0-fixture".into(),
            rootdir: Some("/proj".into()),
            ..SessionFacts::default()
        };
        SessionReport::new(facts, vec![entry])
    })
}

#[test]
fn session_json() {
    let report = session();
    let json = report.to_json();
    assert_eq!(SessionReport::from_json(&json).unwrap(), report);
    insta::assert_snapshot!(json);
}

#[test]
fn junit() {
    let xml = junit_xml(&session(), Some(Path::new("/artifacts"))).unwrap();
    insta::assert_snapshot!(xml);
}

#[test]
fn a_session_report_of_another_version_is_refused() {
    let json = session()
        .to_json()
        .replace("\"version\": 1", "\"version\": 99");
    let err = SessionReport::from_json(&json).unwrap_err();
    assert!(err.to_string().contains("version 99"), "{err}");
}

#[test]
fn flamegraph_is_titled_and_shows_binary_sizes() {
    let svg = with_resolver(flamegraph_svg).unwrap();
    assert!(
        svg.contains("heapgate: tests/test_text.py::test_big[&lt;a&amp;b&gt;]"),
        "{svg}"
    );
    assert!(svg.contains("helper (tests/test_text.py:4) (10.0MiB, 10,485,760 bytes"));
    assert!(svg.contains("limit 5.0MiB"));
}

/// The fixture session with a second, passing test, as GitHub shows it from `/proj`.
fn github_session() -> (SessionReport, GithubOptions) {
    let mut report = session();
    let mut passing = report.tests[0].clone();
    passing.nodeid = "tests/test_text.py::test_small".into();
    passing.memory_failed = false;
    passing.outcome = "passed".into();
    passing.peak_bytes = 1_000;
    passing.failure = None;
    report = SessionReport::new(
        report.session.clone(),
        vec![report.tests[0].clone(), passing],
    );
    let options = GithubOptions {
        workspace: "/proj".into(),
        blob_url: Some("https://github.example/o/r/blob/0123abc".into()),
        artifact: Some("heapgate-report".into()),
        run_url: Some("https://github.example/o/r/actions/runs/7".into()),
        exit_code: Some(1),
        baseline: Some((
            "mem-baseline.json".into(),
            [
                ("tests/test_text.py::test_big[<a&b>]".to_string(), 8 << 20),
                ("tests/test_text.py::test_small".to_string(), 2_000),
            ]
            .into_iter()
            .collect(),
        )),
        top: 5,
    };
    (report, options)
}

#[test]
fn github_summary_markdown() {
    let (report, options) = github_session();
    insta::assert_snapshot!(github_summary(&report, &options));
}

#[test]
fn github_annotation_lines() {
    let (report, options) = github_session();
    let lines: Vec<String> = github_annotations(&report, &options)
        .iter()
        .map(|a| a.command())
        .collect();
    insta::assert_snapshot!(lines.join("\n"));
}

#[test]
fn github_output_of_a_hostile_test_id() {
    let (mut report, options) = github_session();
    let hostile = "tests/test_text.py::test_x[::error::x%0A<script>alert(1)</script>`a`|b\nc]";
    report.tests[0].nodeid = hostile.into();
    let summary = github_summary(&report, &options);
    insta::assert_snapshot!(summary);
    let lines: Vec<String> = github_annotations(&report, &options)
        .iter()
        .map(|a| a.command())
        .collect();
    // One line, the only `::` command being the annotation's own.
    assert_eq!(lines.len(), 1);
    assert!(!lines[0].contains('\n'));
    assert_eq!(lines[0].matches("::error").count(), 1 + 1, "{}", lines[0]);
    assert!(lines[0]
        .contains("title=heapgate%3A tests/test_text.py%3A%3Atest_x[%3A%3Aerror%3A%3Ax%250A"));
    insta::assert_snapshot!(
        "github_output_of_a_hostile_test_id_annotations",
        lines.join("\n")
    );
}

#[test]
fn a_test_that_kept_its_memory_limit_has_no_peak_failure_text() {
    // Failed on something else (a leak or baseline check) while its peak stayed under the limit.
    let mut capture = fixed_capture();
    capture.test.limits.limit_memory = Some(capture.result.totals.peak_bytes);
    let bytes = capture.to_bytes().unwrap();
    let resolved = ResolvedCapture::new(Capture::from_bytes(&bytes).unwrap());
    let entry = with_resolver(|_, r| TestEntry::new(&resolved, r, Artifacts::default()));
    assert!(entry.memory_failed);
    assert_eq!(entry.failure, None);
    let over = with_resolver(|c, r| TestEntry::new(c, r, Artifacts::default()));
    assert!(over.failure.unwrap().contains("at its peak"));
}

#[test]
fn a_leak_failure_keeps_its_text_and_limits() {
    let mut capture = fixed_capture();
    capture.test.limits.limit_memory = None;
    capture.test.failure =
        Some("Test leaked 97.7KiB from native code (limit 0B, --native-leaks)".into());
    let bytes = capture.to_bytes().unwrap();
    let resolved = ResolvedCapture::new(Capture::from_bytes(&bytes).unwrap());
    let (entry, text) = with_resolver(|_, r| {
        let entry = TestEntry::new(&resolved, r, Artifacts::default());
        let text = capture_text(&resolved, r, &TextOptions::default());
        (entry, text)
    });
    assert_eq!(entry.failure.as_deref(), capture.test.failure.as_deref());
    assert_eq!(Some(text), capture.test.failure);
    assert_eq!(entry.limits.native_leaks, Some(0));
}
