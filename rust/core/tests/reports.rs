//! Golden files (insta) for every report format, from fixed captures with deterministic
//! addresses: every failure text (peak, limit_leaks, native leaks, growth, baseline), folded
//! stacks, the session JSON, JUnit XML and the terminal tables.
#![allow(clippy::single_range_in_vec_init)]

use std::path::Path;
use std::sync::Arc;

use heapgate_core::model::{
    Allocator, Charge, Frame, LeakKinds, LeakTally, SiteCounts, TestReport, ThreadMode, Totals,
};
use heapgate_core::record::{Capture, Limits, ProcessFacts, TestInfo};
use heapgate_core::report::{
    baseline_failure, baseline_summary_lines, capture_text, fail_on_increase_failure,
    flamegraph_svg, folded_stacks, github_annotations, github_summary, growth_failure, junit_xml,
    limit_leaks_failure, native_leaks, peak_failure, warmup_note, Artifacts, GithubOptions,
    InterpreterModules, Percent, ResolvedCapture, Resolver, SessionFacts, SessionReport,
    SessionTest, Suppression, TestEntry, TestNotes, TextOptions, Tolerance, Weight,
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
                charge: Charge::default(),
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
            Charge::default(),
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
            Charge {
                threads: ThreadMode::CurrentThread,
                tracers: false,
            },
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

fn tally(bytes: u64, count: u64) -> LeakTally {
    LeakTally { bytes, count }
}

/// A site after a leak scan: allocator, numbers, leak kinds, stack.
type LeakSite = (Allocator, SiteCounts, LeakKinds, Vec<Frame>);

fn leak_site(allocator: Allocator, stack: Vec<Frame>, kinds: LeakKinds) -> LeakSite {
    let bytes = kinds.definitely_lost.bytes
        + kinds.indirectly_lost.bytes
        + kinds.still_reachable.bytes
        + kinds.possibly_lost.bytes;
    let count = kinds.definitely_lost.count
        + kinds.indirectly_lost.count
        + kinds.still_reachable.count
        + kinds.possibly_lost.count;
    let (allocator, counts, stack) = site(allocator, 0, bytes, stack);
    let counts = SiteCounts {
        leaked_count: count,
        ..counts
    };
    (allocator, counts, kinds, stack)
}

/// A test after a leak scan: native sites (in an object not on this disk, so `??` frames)
/// lost, indirectly lost, possibly lost and still reachable; a Python site whose object C code
/// leaked; and a leak that one suppression matches.
fn leak_capture() -> ResolvedCapture {
    let native = |addr: usize, line: u32| {
        vec![
            Frame::Native(0x7f00_0000_0000 + addr),
            py("test_leaks", "/proj/tests/test_leaks.py", line),
        ]
    };
    let kinds = |d: LeakTally, i: LeakTally, r: LeakTally, p: LeakTally| LeakKinds {
        definitely_lost: d,
        indirectly_lost: i,
        still_reachable: r,
        possibly_lost: p,
    };
    let none = LeakTally::default();
    let sites = vec![
        leak_site(
            Allocator::Malloc,
            native(0x100, 10),
            kinds(tally(100_000, 1), none, none, none),
        ),
        leak_site(
            Allocator::Malloc,
            native(0x200, 11),
            kinds(tally(48, 1), tally(192, 4), none, tally(64, 1)),
        ),
        leak_site(
            Allocator::Calloc,
            native(0x300, 12),
            kinds(none, none, tally(50_000, 1), none),
        ),
        leak_site(
            Allocator::PyObj,
            vec![py("make", "/proj/tests/helpers.py", 3)],
            kinds(tally(56, 1), none, tally(4_000, 2), none),
        ),
        leak_site(
            Allocator::Malloc,
            vec![
                Frame::Native(0x7f00_0000_0400),
                py("leak_malloc", "/proj/tests/suppressed.py", 7),
            ],
            kinds(tally(7_000, 1), none, none, none),
        ),
    ];
    let mut report = TestReport {
        totals: Totals {
            peak_bytes: 170_000,
            peak_count: 12,
            total_bytes: 170_000,
            total_count: 12,
            leaked_bytes: sites.iter().map(|s| s.1.leaked_bytes).sum(),
            leaked_count: sites.iter().map(|s| s.1.leaked_count).sum(),
            leak_kinds: None,
        },
        ..TestReport::default()
    };
    for (allocator, counts, kinds, stack) in sites {
        report.push_site(allocator, counts, Some(kinds), &stack);
    }
    let modules = ModuleMap::new(vec![Module {
        path: "/nonexistent/heapgate-fixture/ext.so".into(),
        base: 0x7f00_0000_0000,
        ranges: vec![0x7f00_0000_0000..0x7f00_0001_0000],
        build_id: None,
        debuglink: None,
    }]);
    ResolvedCapture::new(Capture::new(
        report,
        &modules,
        ProcessFacts::default(),
        TestInfo::default(),
    ))
}

fn with_leaks<T>(f: impl FnOnce(&ResolvedCapture, &Resolver<'_>) -> T) -> T {
    let leaks = leak_capture();
    with_resolver(|_, r| f(&leaks, r))
}

fn under_proj() -> TextOptions<'static> {
    TextOptions {
        rootpath: Some(Path::new("/proj")),
        ..TextOptions::default()
    }
}

#[test]
fn limit_leaks_failure_text() {
    let text = with_leaks(|c, r| {
        limit_leaks_failure(1024, c, r, &under_proj(), |_| Ok::<_, ()>(true)).unwrap()
    });
    insta::assert_snapshot!(text.unwrap());
    // The filter sees each location over the limit and can drop it.
    let kept = with_leaks(|c, r| {
        limit_leaks_failure(1024, c, r, &under_proj(), |stack| {
            Ok::<_, ()>(!stack.iter().any(|f| f.function == "test_leaks"))
        })
        .unwrap()
    });
    assert!(kept.unwrap().contains("2 locations leaked more"));
    let none = with_leaks(|c, r| {
        limit_leaks_failure(1 << 30, c, r, &under_proj(), |_| Ok::<_, ()>(true)).unwrap()
    });
    assert_eq!(none, None);
}

#[test]
fn native_leaks_failure_text() {
    let suppressions = [
        Suppression {
            pattern: "nothing_matches".into(),
            source: "leaks.supp:1".into(),
        },
        Suppression {
            pattern: "leak_malloc".into(),
            source: "leaks.supp:2".into(),
        },
    ];
    let result = with_leaks(|c, r| native_leaks(0, c, r, &suppressions, &under_proj(), true));
    insta::assert_snapshot!(result.failure.clone().unwrap());
    insta::assert_snapshot!(
        "native_leaks_still_reachable_text",
        result.reachable_text.clone().unwrap()
    );
    assert_eq!(
        (result.reachable.bytes, result.reachable.count),
        (50_000, 1)
    );
    assert_eq!(result.absorbed.len(), 1);
    assert_eq!(
        (
            result.absorbed[0].index,
            result.absorbed[0].bytes,
            result.absorbed[0].blocks
        ),
        (1, 7_000, 1)
    );
    // Within the limit: no failure, the still-reachable listing all the same.
    let within = with_leaks(|c, r| native_leaks(1 << 20, c, r, &suppressions, &under_proj(), true));
    assert_eq!(within.failure, None);
    assert_eq!(within.reachable_text, result.reachable_text);
    // Without the listing: the same verdict and tallies, no text.
    let unlisted = with_leaks(|c, r| native_leaks(0, c, r, &suppressions, &under_proj(), false));
    assert_eq!(unlisted.failure, result.failure);
    assert_eq!(unlisted.reachable_text, None);
    assert_eq!(unlisted.reachable, result.reachable);
    assert_eq!(unlisted.absorbed, result.absorbed);
}

/// A checkpoint after one run of a repeated test: `grown` bytes live at one Python location.
fn checkpoint(grown: u64, other: u64) -> ResolvedCapture {
    let mut report = TestReport {
        totals: Totals {
            leaked_bytes: grown + other,
            leaked_count: 2,
            ..Totals::default()
        },
        ..TestReport::default()
    };
    let sites = [
        site(
            Allocator::PyObj,
            0,
            grown,
            vec![
                py("append", "/proj/tests/cache.py", 5),
                py("test_grows", "/proj/tests/test_growth.py", 9),
            ],
        ),
        site(
            Allocator::Malloc,
            0,
            other,
            vec![py("test_grows", "/proj/tests/test_growth.py", 10)],
        ),
    ];
    for (allocator, counts, stack) in sites {
        report.push_site(allocator, counts, None, &stack);
    }
    ResolvedCapture::new(Capture::new(
        report,
        &ModuleMap::new(Vec::new()),
        ProcessFacts::default(),
        TestInfo::default(),
    ))
}

#[test]
fn growth_failure_text() {
    let runs = [
        checkpoint(1_000, 500),
        checkpoint(3_100, 400),
        checkpoint(5_200, 600),
    ];
    let captures: Vec<&ResolvedCapture> = runs.iter().collect();
    let totals: Vec<u64> = [1_500, 3_500, 5_800].to_vec();
    let text = with_resolver(|_, r| {
        growth_failure(
            &totals,
            &captures,
            1024,
            r,
            &TextOptions {
                max_frames: Some(1),
                ..under_proj()
            },
        )
    });
    insta::assert_snapshot!(text.unwrap());
    // Growth under the threshold (after rounding to 16 bytes) is no failure.
    let quiet = with_resolver(|_, r| growth_failure(&totals, &captures, 2_000, r, &under_proj()));
    assert_eq!(quiet, None);
}

fn tolerance(percent: &[u8], exponent: i64, min_increase: u64) -> Tolerance {
    Tolerance {
        max_increase: Percent::new(percent, exponent).unwrap(),
        min_increase,
    }
}

#[test]
fn baseline_and_increase_texts() {
    let ten = tolerance(&[1, 0], 0, 65_536);
    let text = [
        baseline_failure(1 << 20, 3 << 20, &ten, "--heapgate-compare mem.json").unwrap(),
        baseline_failure(
            0,
            100_000,
            &tolerance(&[2, 5], -1, 0),
            "--heapgate-compare mem.json",
        )
        .unwrap(),
        fail_on_increase_failure(1024, 3072).unwrap(),
        warmup_note(1),
        warmup_note(3),
    ]
    .join("\n\n");
    insta::assert_snapshot!(text);
    assert_eq!(
        baseline_failure(1 << 20, (1 << 20) + 60_000, &ten, "x"),
        None
    );
    assert_eq!(fail_on_increase_failure(3072, 3072), None);
}

/// A session of `(node id, peak, limit, failed)` tests, added as the plugin adds them.
fn table_session(tests: &[(&str, u64, Option<u64>, bool)]) -> SessionReport {
    let template = session().tests[0].clone();
    let mut report = SessionReport::new(session().session, Vec::new());
    for &(nodeid, peak, limit, failed) in tests {
        let mut entry = template.clone();
        entry.nodeid = nodeid.into();
        entry.peak_bytes = peak;
        entry.total_count = peak / 1000;
        entry.leaked.bytes = peak / 10;
        entry.limits.limit_memory = limit;
        entry.memory_failed = failed;
        let record = SessionTest {
            entry,
            notes: TestNotes {
                limit_source: limit.map(|_| "marker".to_string()),
                ..TestNotes::default()
            },
        };
        report.add(SessionTest::from_json(&record.to_json()).unwrap());
    }
    report
}

#[test]
fn terminal_tables() {
    let report = table_session(&[
        ("t.py::small", 2_000, None, false),
        ("t.py::big", 100 << 20, Some(64 << 20), true),
        ("t.py::middle", 3 << 20, Some(4 << 20), false),
        ("t.py::gone", 10, None, false),
    ]);
    let baseline = [
        ("t.py::small".to_string(), 1_000),
        ("t.py::big".to_string(), 90 << 20),
        ("t.py::middle".to_string(), 4 << 20),
        ("t.py::not_run".to_string(), 5),
    ]
    .into_iter()
    .collect();
    let peaks: Vec<(&str, u64)> = report
        .tests
        .iter()
        .map(|t| (t.nodeid.as_str(), t.peak_bytes))
        .collect();
    let mut lines = vec![report.headline()];
    lines.extend(report.summary_lines(3));
    lines.push(String::new());
    lines.extend(baseline_summary_lines(
        "mem.json",
        &baseline,
        &peaks,
        &tolerance(&[1, 0], 0, 0),
        5,
    ));
    insta::assert_snapshot!(lines.join("\n"));
}

#[test]
fn a_rerun_test_counts_once_in_the_order_it_last_ran() {
    let report = table_session(&[
        ("t.py::a", 1, None, true),
        ("t.py::b", 2, None, false),
        ("t.py::a", 3, None, false),
    ]);
    let ids: Vec<&str> = report.tests.iter().map(|t| t.nodeid.as_str()).collect();
    assert_eq!(ids, ["t.py::b", "t.py::a"]);
    assert_eq!(report.tests[1].peak_bytes, 3);
    assert_eq!(
        (report.session.tracked, report.session.memory_failures),
        (2, 0)
    );
}

#[test]
fn merged_reports_keep_every_test_with_paths_from_the_new_directory() {
    let shard = session();
    let mut merged = SessionReport::new(shard.session.clone(), Vec::new());
    merged.merge(shard.clone(), Path::new("/ci/shard-1"), Path::new("/ci"));
    merged.merge(shard, Path::new("/ci/shard-2"), Path::new("/ci"));
    assert_eq!(merged.session.tracked, 2);
    assert_eq!(merged.session.memory_failures, 2);
    let svgs: Vec<&str> = merged
        .tests
        .iter()
        .filter_map(|t| t.artifacts.flamegraph.as_deref())
        .collect();
    assert_eq!(
        svgs,
        [
            "shard-1/tests_test_text.py__test_big_a_b_-0123abcd.svg",
            "shard-2/tests_test_text.py__test_big_a_b_-0123abcd.svg"
        ]
    );
    // The notes the terminal needs never reach heapgate.json.
    assert!(!merged.to_json().contains("notes"));
}
