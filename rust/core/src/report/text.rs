//! The failure text people read in the terminal, in JUnit and from `heapgate report`.

use std::path::{Component, Path, PathBuf};

use super::{FrameKind, ReportFrame, ResolvedCapture, Resolver};
use crate::model::{Charge, ThreadMode};

/// How much of a capture the failure text shows.
#[derive(Clone, Copy, Debug)]
pub struct TextOptions<'a> {
    /// Python and native file names under this directory are shown relative to it.
    pub rootpath: Option<&'a Path>,
    /// Sites shown (largest at the peak first).
    pub max_sites: usize,
    /// Frames shown per stack (`None`: all).
    pub max_frames: Option<usize>,
}

impl Default for TextOptions<'_> {
    /// No root, five sites, every frame.
    fn default() -> Self {
        TextOptions {
            rootpath: None,
            max_sites: 5,
            max_frames: None,
        }
    }
}

/// One line saying whose allocations were charged, for a thread mode.
fn thread_rule_text(threads: ThreadMode) -> &'static str {
    match threads {
        ThreadMode::CurrentThread => {
            "allocations of the test's own thread while the test function ran (current_thread_only=True)"
        }
        ThreadMode::All => "allocations of every thread during the test call (all_threads=True)",
        ThreadMode::Spawned => "allocations of the test's thread while the test function ran, and of threads it started (default)",
    }
}

/// The charge rule of a failure text: whose allocations, and whether what trace, profile and
/// `sys.monitoring` callbacks allocate counted (`--heapgate-include-tracers`).
pub fn charge_rule_text(charge: Charge) -> String {
    let tracers = if charge.tracers {
        "also memory that trace, profile or sys.monitoring callbacks allocate (--heapgate-include-tracers)"
    } else {
        "not memory that trace, profile or sys.monitoring callbacks allocate (coverage, profilers, debuggers)"
    };
    format!("{}; {tracers}", thread_rule_text(charge.threads))
}

/// `10.0MiB`-style text for a byte count: binary prefixes, one decimal (the plugin's
/// `heapgate.format_size` is this function).
pub fn format_size(size: u64) -> String {
    if size < 1024 {
        return format!("{size}B");
    }
    let mut value = size as f64;
    for unit in ["KiB", "MiB", "GiB", "TiB"] {
        value /= 1024.0;
        if value < 1024.0 || unit == "TiB" {
            return format!("{value:.1}{unit}");
        }
    }
    unreachable!("the loop returns at TiB")
}

/// `file` relative to `root` when it is under it (lexically), else as given.
pub fn show_path(file: &str, root: Option<&Path>) -> String {
    let path = Path::new(file);
    if let Some(root) = root {
        if path.is_absolute() {
            let normal: PathBuf = path
                .components()
                .filter(|c| !matches!(c, Component::CurDir))
                .collect();
            if let Ok(rel) = normal.strip_prefix(root) {
                return rel.display().to_string();
            }
        }
    }
    file.to_string()
}

/// `function at path:line`; `function in object` for native code without line info.
pub fn format_frame(frame: &ReportFrame, root: Option<&Path>) -> String {
    match (&frame.filename, frame.line) {
        (Some(file), Some(line)) if !file.is_empty() && line > 0 => {
            format!("{} at {}:{line}", frame.function, show_path(file, root))
        }
        _ => match &frame.module {
            Some(module) => format!("{} in {module}", frame.function),
            None => match frame.address {
                Some(addr) if frame.function == "??" => format!("?? at {addr:#x}"),
                _ => frame.function.clone(),
            },
        },
    }
}

/// `1 block`, `2 blocks`.
pub(crate) fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The failure message of a test whose peak exceeded `limit`.
pub fn peak_failure(
    limit: u64,
    capture: &ResolvedCapture,
    resolver: &Resolver<'_>,
    charge: Charge,
    options: &TextOptions<'_>,
) -> String {
    let totals = &capture.capture().result.totals;
    let mut lines = vec![
        format!(
            "Test was limited to {} but allocated {} at its peak",
            format_size(limit),
            format_size(totals.peak_bytes)
        ),
        format!(
            "  limit {limit} bytes, peak {} bytes in {}",
            totals.peak_bytes,
            plural(totals.peak_count, "live allocation")
        ),
        format!("  charged: {}", charge_rule_text(charge)),
        "Top locations at the peak (allocating frame first):".to_string(),
    ];
    lines.extend(location_lines(capture, resolver, options));
    lines.join("\n")
}

/// The top sites at the peak with their stacks (`  #1 10.0MiB (... bytes) in ...`).
fn location_lines(
    capture: &ResolvedCapture,
    resolver: &Resolver<'_>,
    options: &TextOptions<'_>,
) -> Vec<String> {
    let mut lines = Vec::new();
    let shown = capture
        .capture()
        .result
        .sites
        .iter()
        .enumerate()
        .filter(|(_, s)| s.counts.bytes_at_peak > 0)
        .take(options.max_sites);
    for (n, (i, site)) in shown.enumerate() {
        lines.push(format!(
            "  #{} {} ({} bytes) in {} through {}",
            n + 1,
            format_size(site.counts.bytes_at_peak),
            site.counts.bytes_at_peak,
            plural(site.counts.count_at_peak, "allocation"),
            site.allocator
        ));
        lines.extend(stack_lines(
            capture.stack(i, resolver),
            options,
            "(no Python frames: a native thread started by the test; --native shows its stack)",
        ));
    }
    lines
}

/// A location's stack as every failure text shows it: one indented frame a line, at most
/// `options.max_frames` of them; `if_empty` stands for a stack without frames.
pub(crate) fn stack_lines(
    stack: &[ReportFrame],
    options: &TextOptions<'_>,
    if_empty: &str,
) -> Vec<String> {
    if stack.is_empty() {
        return vec![format!("      {if_empty}")];
    }
    let take = options.max_frames.unwrap_or(usize::MAX).min(stack.len());
    let mut lines: Vec<String> = stack[..take]
        .iter()
        .map(|frame| format!("      {}", format_frame(frame, options.rootpath)))
        .collect();
    if take < stack.len() {
        lines.push(format!(
            "      ... {} more frames (--stacks)",
            stack.len() - take
        ));
    }
    lines
}

/// What `heapgate report` prints for a capture: the failure text when a memory check failed,
/// else the numbers and the top locations at the peak.
pub fn capture_text(
    capture: &ResolvedCapture,
    resolver: &Resolver<'_>,
    options: &TextOptions<'_>,
) -> String {
    let c = capture.capture();
    match (c.test.memory_failed, c.test.limits.limit_memory) {
        // The peak failed: rendered again, symbolized on this machine.
        (true, Some(limit)) if c.result.totals.peak_bytes > limit => {
            return peak_failure(limit, capture, resolver, c.test.limits.charge, options);
        }
        // Another check failed (leaks, growth, baseline): the text the test reported.
        (true, _) if c.test.failure.is_some() => {
            return c.test.failure.clone().unwrap_or_default();
        }
        _ => {}
    }
    let limit = c
        .test
        .limits
        .limit_memory
        .map(|l| format!(", within its limit of {}", format_size(l)))
        .unwrap_or_default();
    let mut lines = vec![
        format!(
            "Test {} ({}) allocated {} at its peak{limit}",
            c.test.nodeid,
            c.test.outcome,
            format_size(c.result.totals.peak_bytes)
        ),
        format!(
            "  peak {} bytes in {}, {} bytes still allocated at the end",
            c.result.totals.peak_bytes,
            plural(c.result.totals.peak_count, "live allocation"),
            c.result.totals.leaked_bytes
        ),
        format!("  charged: {}", charge_rule_text(c.test.limits.charge)),
        "Top locations at the peak (allocating frame first):".to_string(),
    ];
    lines.extend(location_lines(capture, resolver, options));
    lines.join("\n")
}

/// A short label of a frame for flamegraphs and JSON: `function (file:line)`.
pub fn frame_label(frame: &ReportFrame, root: Option<&Path>) -> String {
    match (&frame.filename, frame.line) {
        (Some(file), Some(line)) if !file.is_empty() && line > 0 => {
            format!("{} ({}:{line})", frame.function, show_path(file, root))
        }
        _ => match (&frame.module, frame.kind) {
            (Some(module), FrameKind::Native | FrameKind::Interpreter) => {
                let name = Path::new(module)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| module.clone());
                format!("{} [{name}]", frame.function)
            }
            _ => match frame.address {
                Some(addr) if frame.function == "??" => format!("?? {addr:#x}"),
                _ => frame.function.clone(),
            },
        },
    }
}

/// Untrusted text for HTML and SVG (element content and quoted attributes).
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}
