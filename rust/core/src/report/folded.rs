//! Folded stacks (`outer;...;inner weight`), the input of flamegraphs: one line per distinct
//! stack, outermost frame first, the allocator as the leaf (`[malloc]`), sorted.

use std::collections::BTreeMap;
use std::path::Path;

use super::text::frame_label;
use super::{ResolvedCapture, Resolver};

/// What a flamegraph's widths measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// Bytes each site held at the test's peak (for `limit_memory`).
    BytesAtPeak,
    /// Bytes each site still held at the end (for leak checks).
    BytesLeaked,
}

impl Weight {
    /// The weight a capture's flamegraph uses: leaks when nothing was live at the peak but
    /// something leaked, else bytes at the peak.
    pub fn for_capture(capture: &ResolvedCapture) -> Weight {
        let totals = &capture.capture().result.totals;
        if totals.peak_bytes == 0 && totals.leaked_bytes > 0 {
            Weight::BytesLeaked
        } else {
            Weight::BytesAtPeak
        }
    }

    /// Words for titles.
    pub fn describe(self) -> &'static str {
        match self {
            Weight::BytesAtPeak => "bytes at the peak",
            Weight::BytesLeaked => "bytes leaked",
        }
    }
}

/// A frame label made safe for the folded format (no `;`, no line breaks).
fn clean(label: &str) -> String {
    label
        .chars()
        .map(|c| match c {
            ';' => ',',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// The capture's folded stacks weighted by `weight`; sites of weight 0 are left out.
pub fn folded_stacks(capture: &ResolvedCapture, resolver: &Resolver<'_>, weight: Weight) -> String {
    let root = capture.capture().facts.rootdir.as_deref().map(Path::new);
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    for (i, site) in capture.capture().result.sites.iter().enumerate() {
        let bytes = match weight {
            Weight::BytesAtPeak => site.counts.bytes_at_peak,
            Weight::BytesLeaked => site.counts.leaked_bytes,
        };
        if bytes == 0 {
            continue;
        }
        let stack = capture.stack(i, resolver);
        let mut frames: Vec<String> = stack
            .iter()
            .rev()
            .map(|f| clean(&frame_label(f, root)))
            .collect();
        if frames.is_empty() {
            frames.push("(thread started by the test)".to_string());
        }
        frames.push(format!("[{}]", clean(site.allocator.name())));
        *lines.entry(frames.join(";")).or_default() += bytes;
    }
    lines
        .into_iter()
        .map(|(stack, bytes)| format!("{stack} {bytes}\n"))
        .collect()
}
