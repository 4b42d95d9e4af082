#![allow(clippy::single_range_in_vec_init)]

use proptest::prelude::*;

use super::*;
use crate::model::{Allocator, Charge, Frame, SiteCounts, TestReport, Totals};

fn py(function: &str, line: u32) -> Frame {
    Frame::Python {
        function: function.to_string(),
        filename: "test_x.py".to_string(),
        line,
    }
}

fn counts(at_peak: u64, leaked: u64, total: u64, total_count: u64) -> SiteCounts {
    SiteCounts {
        bytes_at_peak: at_peak,
        count_at_peak: u64::from(at_peak > 0),
        leaked_bytes: leaked,
        leaked_count: u64::from(leaked > 0),
        total_bytes: total,
        total_count,
    }
}

fn report() -> TestReport {
    let mut r = TestReport {
        totals: Totals {
            peak_bytes: 3_000_100,
            peak_count: 2,
            total_bytes: 3_000_200,
            total_count: 3,
            leaked_bytes: 100,
            leaked_count: 1,
            leak_kinds: None,
        },
        ..TestReport::default()
    };
    let big = [Frame::Native(0x1234), py("helper", 4), py("test_big", 8)];
    r.push_site(
        Allocator::Malloc,
        counts(3_000_000, 0, 3_000_000, 1),
        None,
        &big,
    );
    r.push_site(
        Allocator::PyObj,
        counts(100, 100, 200, 2),
        None,
        &[py("test_big", 9)],
    );
    r.push_site(Allocator::Malloc, counts(0, 0, 0, 0), None, &[]);
    r
}

fn modules() -> ModuleMap {
    ModuleMap::new(vec![
        Module {
            path: "/opt/ext/hgtest.so".into(),
            base: 0x1000,
            ranges: vec![0x1000..0x2000],
            build_id: Some(vec![0xab, 0xcd]),
            debuglink: None,
        },
        Module {
            path: "/unused.so".into(),
            base: 0x9000,
            ranges: vec![0x9000..0xa000],
            build_id: None,
            debuglink: None,
        },
    ])
}

fn capture() -> Capture {
    Capture::new(
        report(),
        &modules(),
        ProcessFacts {
            python_version: "3.11.2".into(),
            platform: "Linux".into(),
            heapgate_version: "0.1.0".into(),
            executable: Some("/usr/bin/python3".into()),
            rootdir: Some("/work/proj".into()),
        },
        TestInfo {
            nodeid: "test_x.py::test_big".into(),
            outcome: "failed".into(),
            memory_failed: true,
            limits: Limits {
                limit_memory: Some(1 << 20),
                limit_leaks: None,
                native_leaks: Some(0),
                charge: Charge::default(),
            },
            failure: None,
        },
    )
}

#[test]
fn round_trip_keeps_every_stack_and_number() {
    let c = capture();
    let back = Capture::from_bytes(&c.to_bytes().unwrap()).unwrap();
    assert_eq!(back, c);
    assert_eq!(*back.result, report());
    assert_eq!(back.site_stack(0)[1], py("helper", 4));
}

#[test]
fn the_trackers_trie_is_kept_and_only_used_modules_are_kept() {
    use crate::capture::{FrameKey, Tracker};
    let mut t = Tracker::new();
    let mut names = |code: usize| {
        let function = if code == 1 { "test_big" } else { "helper" };
        (function.to_string(), "test_x.py".to_string())
    };
    let python = |code, line| FrameKey::Python { code, line };
    let big = [FrameKey::Native(0x1234), python(2, 4), python(1, 8)];
    let native = t.intern_stack(big, &mut names);
    let object = t.intern_stack([python(1, 9)], &mut names);
    let bare = t.intern_stack([], &mut names);
    t.on_alloc(0x10, 300, Allocator::Malloc, native);
    t.on_alloc(0x20, 200, Allocator::PyObj, object);
    t.on_alloc(0x30, 100, Allocator::Malloc, bare);
    let c = Capture::new(
        t.take_report(),
        &modules(),
        ProcessFacts::default(),
        TestInfo::default(),
    );
    // test_big:8 and test_big:9 are different frames; helper's parent is test_big:8.
    assert_eq!(c.result.frames.len(), 4);
    assert_eq!(c.result.nodes.len(), 4);
    assert_eq!(
        c.site_stack(0),
        [Frame::Native(0x1234), py("helper", 4), py("test_big", 8)]
    );
    assert_eq!(c.modules.len(), 1);
    assert_eq!(c.modules[0].build_id.as_deref(), Some(&[0xab, 0xcd][..]));
    assert_eq!(c.result.sites[2].node, None);
    let back = Capture::from_bytes(&c.to_bytes().unwrap()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn a_truncated_file_is_named_as_such() {
    let bytes = capture().to_bytes().unwrap();
    for cut in [0, 3, 10, HEADER_LEN, bytes.len() - 1] {
        let err = Capture::from_bytes(&bytes[..cut]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("truncated") || text.contains("magic"),
            "{cut}: {text}"
        );
    }
    let err = Capture::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(matches!(err, RecordError::Truncated { .. }), "{err}");
}

#[test]
fn a_flipped_bit_is_a_checksum_error() {
    let mut bytes = capture().to_bytes().unwrap();
    let i = HEADER_LEN + 5;
    bytes[i] ^= 0x10;
    let err = Capture::from_bytes(&bytes).unwrap_err();
    assert!(matches!(err, RecordError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"));
}

#[test]
fn other_versions_and_other_files_are_refused() {
    let mut bytes = capture().to_bytes().unwrap();
    bytes[8] = 9;
    assert!(matches!(
        Capture::from_bytes(&bytes),
        Err(RecordError::UnsupportedVersion { found: 9, .. })
    ));
    assert!(matches!(
        Capture::from_bytes(b"<svg></svg> and more bytes"),
        Err(RecordError::BadMagic)
    ));
}

#[test]
fn inconsistent_indices_are_refused_even_with_a_good_checksum() {
    let mut c = capture();
    Arc::make_mut(&mut c.result).nodes[0].parent = Some(3);
    let err = Capture::from_bytes(&c.to_bytes().unwrap()).unwrap_err();
    assert!(matches!(err, RecordError::Invalid(_)), "{err}");
    let mut c = capture();
    Arc::make_mut(&mut c.result).sites[0].node = Some(99);
    assert!(Capture::from_bytes(&c.to_bytes().unwrap()).is_err());
}

#[test]
fn a_capture_is_kilobytes() {
    assert!(capture().to_bytes().unwrap().len() < 1024);
}

/// A file with a valid header (so the checks reach the decoder) around `payload`.
fn framed(payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The reader never panics on arbitrary bytes.
    #[test]
    fn reader_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Capture::from_bytes(&bytes);
    }

    /// ... nor on a random payload behind a valid header (the decoder and validator see it).
    #[test]
    fn reader_never_panics_on_random_payloads(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(c) = Capture::from_bytes(&framed(&payload)) {
            for i in 0..c.result.sites.len() {
                let _ = c.site_stack(i);
            }
        }
    }

    /// ... nor on a real capture with bytes changed, removed or added: any change is caught.
    #[test]
    fn reader_rejects_every_mutation(
        index in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = capture().to_bytes().unwrap();
        let mut flipped = bytes.clone();
        let i = index.index(flipped.len());
        flipped[i] ^= xor;
        prop_assert!(Capture::from_bytes(&flipped).is_err());
        let n = cut.index(bytes.len());
        prop_assert!(Capture::from_bytes(&bytes[..n]).is_err());
        let mut longer = bytes.clone();
        longer.push(xor);
        prop_assert!(Capture::from_bytes(&longer).is_err());
    }

    /// ... nor on a real capture edited several times (bytes flipped, inserted, removed, the
    /// payload cut) and framed again with a good checksum, so the decoder and the validator
    /// see every edit; whatever decodes can be rendered and written again.
    #[test]
    fn reader_never_panics_on_edited_valid_captures(
        edits in proptest::collection::vec((0u8..3, any::<prop::sample::Index>(), any::<u8>()), 1..12),
        cut in proptest::option::of(any::<prop::sample::Index>()),
    ) {
        let bytes = capture().to_bytes().unwrap();
        let mut payload = bytes[HEADER_LEN..].to_vec();
        for (kind, at, value) in edits {
            let i = at.index(payload.len().max(1));
            match kind {
                0 if i < payload.len() => payload[i] ^= value | 1,
                1 => payload.insert(i.min(payload.len()), value),
                _ if i < payload.len() => {
                    payload.remove(i);
                }
                _ => {}
            }
        }
        if let Some(cut) = cut {
            payload.truncate(cut.index(payload.len().max(1)));
        }
        if let Ok(c) = Capture::from_bytes(&framed(&payload)) {
            for i in 0..c.result.sites.len() {
                let _ = c.site_stack(i);
            }
            let again = c.to_bytes().unwrap();
            prop_assert!(Capture::from_bytes(&again).is_ok());
        }
    }

    /// ... and valid-but-mutated payloads decode or fail cleanly.
    #[test]
    fn reader_never_panics_on_mutated_payloads(index in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let bytes = capture().to_bytes().unwrap();
        let mut payload = bytes[HEADER_LEN..].to_vec();
        let i = index.index(payload.len());
        payload[i] ^= xor;
        if let Ok(c) = Capture::from_bytes(&framed(&payload)) {
            for i in 0..c.result.sites.len() {
                let _ = c.site_stack(i);
            }
        }
    }
}
