//! GitHub Actions output of a session report: the job summary (GitHub-flavoured Markdown) and
//! `::error` annotations at the allocating line of the user's own code.
//!
//! Everything taken from the report (test ids, function and file names, failure text) is
//! untrusted: a parametrized id can hold `::error::`, newlines, HTML or Markdown. Annotation
//! fields are escaped as GitHub's workflow-command parser expects, and the summary puts such
//! text only inside code spans (in tables) or entity-escaped `<pre>`/`<code>` HTML, where
//! GitHub renders neither Markdown, nor HTML, nor autolinks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::json::{Location, SessionReport, TestEntry};
use super::session::normalize;
use super::text::{escape_html as html, format_size};

/// GitHub shows at most this many error annotations of one step.
pub const MAX_ANNOTATIONS: usize = 10;

/// What the summary and annotations need besides the report.
#[derive(Clone, Debug, Default)]
pub struct GithubOptions {
    /// `$GITHUB_WORKSPACE`: annotation paths are relative to it, and only frames under it are
    /// the user's own code.
    pub workspace: PathBuf,
    /// `{server}/{repository}/blob/{sha}`: source links in the summary (none when `None`).
    pub blob_url: Option<String>,
    /// The name of the artifact holding the flamegraphs, when one is uploaded.
    pub artifact: Option<String>,
    /// The URL of the workflow run (where the artifact is listed).
    pub run_url: Option<String>,
    /// pytest's exit status, when pytest ran (not when shards were merged).
    pub exit_code: Option<i32>,
    /// A baseline's peaks by node id, and the name to show for it.
    pub baseline: Option<(String, BTreeMap<String, u64>)>,
    /// Rows of the "highest peaks" table.
    pub top: usize,
}

/// One `::error` annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    /// Path relative to the workspace (`None`: the test is outside it).
    pub file: Option<String>,
    /// Line in `file`.
    pub line: Option<u32>,
    /// Short title.
    pub title: String,
    /// The message (may hold several lines).
    pub message: String,
}

impl Annotation {
    /// The workflow command line, escaped: `::error file=…,line=…,title=…::message`.
    pub fn command(&self) -> String {
        let mut props = Vec::new();
        if let Some(file) = &self.file {
            props.push(format!("file={}", escape_property(file)));
            if let Some(line) = self.line {
                props.push(format!("line={line}"));
            }
        }
        props.push(format!("title={}", escape_property(&self.title)));
        format!(
            "::error {}::{}",
            props.join(","),
            escape_data(&self.message)
        )
    }
}

/// A workflow command's data: `%`, `\r`, `\n` percent-encoded (GitHub's toolkit `escapeData`).
pub fn escape_data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A workflow command's property value: as [`escape_data`], and `:` and `,` too.
pub fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// The failing tests, largest measured bytes first.
fn failures(report: &SessionReport) -> Vec<&TestEntry> {
    let mut failed: Vec<&TestEntry> = report.tests.iter().filter(|t| t.memory_failed).collect();
    failed.sort_by_key(|t| std::cmp::Reverse(measured(t)));
    failed
}

/// The number a failure is about: the peak when it went over `limit_memory`, else the leaks.
fn measured(test: &TestEntry) -> u64 {
    if over_limit(test) || test.leaked.bytes == 0 {
        test.peak_bytes
    } else {
        test.leaked.bytes
    }
}

fn over_limit(test: &TestEntry) -> bool {
    test.limits
        .limit_memory
        .is_some_and(|limit| test.peak_bytes > limit)
}

/// `file` (absolute, or relative to `rootdir`) relative to the workspace, with `/`.
fn in_workspace(file: &str, rootdir: Option<&str>, workspace: &Path) -> Option<String> {
    let path = Path::new(file);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        Path::new(rootdir?).join(path)
    };
    let rel = normalize(&absolute)
        .strip_prefix(normalize(workspace))
        .ok()?
        .to_path_buf();
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Where a failing test's memory came from in the user's code: the innermost frame of its
/// largest location under the workspace; else the test file's own line; else the test file.
fn place(
    test: &TestEntry,
    report: &SessionReport,
    workspace: &Path,
) -> (Option<String>, Option<u32>) {
    let rootdir = report.session.rootdir.as_deref();
    let located = |loc: &Location| {
        loc.frames.iter().find_map(|f| {
            let line = f.line?;
            Some((in_workspace(f.file.as_deref()?, rootdir, workspace)?, line))
        })
    };
    if let Some((file, line)) = test.top_locations.first().and_then(located) {
        return (Some(file), Some(line));
    }
    let test_file = test.nodeid.split("::").next().unwrap_or_default();
    let test_path = in_workspace(test_file, rootdir, workspace);
    // The test function's frame (outermost in the test file) of any location.
    let own_line = test
        .top_locations
        .iter()
        .flat_map(|loc| loc.frames.iter().rev())
        .find_map(|f| {
            let file = in_workspace(f.file.as_deref()?, rootdir, workspace)?;
            (Some(&file) == test_path.as_ref())
                .then_some(f.line)
                .flatten()
        });
    (test_path, own_line)
}

/// One line saying how a test failed, e.g. `peak 16.0MiB (16777280 bytes) over its limit of 8.0MiB`.
fn verdict_of(test: &TestEntry) -> String {
    match test.limits.limit_memory {
        Some(limit) if test.peak_bytes > limit => format!(
            "peak {} ({} bytes) over its limit of {} ({limit} bytes)",
            format_size(test.peak_bytes),
            test.peak_bytes,
            format_size(limit)
        ),
        // Another check failed: the first line of the text the test reported says which.
        _ if test.failure.is_some() => test
            .failure
            .as_deref()
            .and_then(|f| f.lines().next())
            .unwrap_or_default()
            .to_string(),
        _ if test.leaked.bytes > 0 => format!(
            "{} ({} bytes) still allocated at the end of the call (leak check)",
            format_size(test.leaked.bytes),
            test.leaked.bytes
        ),
        _ => format!(
            "memory check failed at a peak of {} ({} bytes)",
            format_size(test.peak_bytes),
            test.peak_bytes
        ),
    }
}

/// The annotations of every failing test, largest first (the caller prints at most
/// [`MAX_ANNOTATIONS`]).
pub fn github_annotations(report: &SessionReport, options: &GithubOptions) -> Vec<Annotation> {
    failures(report)
        .into_iter()
        .map(|test| {
            let (file, line) = place(test, report, &options.workspace);
            let mut message = format!("{}: {}", test.nodeid, verdict_of(test));
            if let Some(loc) = test.top_locations.first() {
                let bytes = if loc.bytes_at_peak > 0 {
                    loc.bytes_at_peak
                } else {
                    loc.leaked_bytes
                };
                let _ = write!(
                    message,
                    "\n{} ({bytes} bytes) allocated through {} here",
                    format_size(bytes),
                    loc.allocator
                );
                for frame in &loc.stack {
                    let _ = write!(message, "\n  {frame}");
                }
            }
            Annotation {
                file,
                line,
                title: format!("heapgate: {}", test.nodeid),
                message,
            }
        })
        .collect()
}

/// A Markdown code span of untrusted text: nothing inside renders as Markdown, HTML or a
/// link. In a table cell `|` must still be escaped (GFM splits cells first).
fn code(text: &str, in_table: bool) -> String {
    let mut text = text.replace(['\r', '\n'], " ");
    if in_table {
        text = text.replace('|', "\\|");
    }
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    // A space on each side keeps a leading or trailing backtick off the fence.
    if text.starts_with('`') || text.ends_with('`') || text.is_empty() {
        format!("{fence} {text} {fence}")
    } else {
        format!("{fence}{text}{fence}")
    }
}

/// A URL path: every byte but unreserved characters and `/` percent-encoded.
fn url_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Every limit the test ran under, each named unless it is `limit_memory`'s alone; `—` for none.
fn limits_cell(test: &TestEntry, size: fn(u64) -> String) -> String {
    let l = &test.limits;
    let named = [
        (l.limit_memory, "peak"),
        (l.limit_leaks, "leaks per location"),
        (l.native_leaks, "native leaks"),
    ];
    let given: Vec<(u64, &str)> = named
        .iter()
        .filter_map(|(limit, name)| limit.map(|bytes| (bytes, *name)))
        .collect();
    match given.as_slice() {
        [] => "—".to_string(),
        [(bytes, "peak")] => size(*bytes),
        _ => given
            .iter()
            .map(|(bytes, name)| format!("{name} {}", size(*bytes)))
            .collect::<Vec<_>>()
            .join("<br>"),
    }
}

fn size_cell(bytes: u64) -> String {
    format!("{} ({bytes} B)", format_size(bytes))
}

/// The source cell: `file:line` (a link at the commit when known) and the allocating function.
fn where_cell(test: &TestEntry, report: &SessionReport, options: &GithubOptions) -> String {
    let (file, line) = place(test, report, &options.workspace);
    let Some(file) = file else {
        return "—".to_string();
    };
    let shown = match line {
        Some(line) => format!("{file}:{line}"),
        None => file.clone(),
    };
    let mut cell = match &options.blob_url {
        Some(base) => {
            let anchor = line.map(|l| format!("#L{l}")).unwrap_or_default();
            format!(
                "[{}]({base}/{}{anchor})",
                code(&shown, true),
                url_path(&file)
            )
        }
        None => code(&shown, true),
    };
    if let Some(loc) = test.top_locations.first() {
        let function = loc.function.as_deref().unwrap_or("??");
        let bytes = loc.bytes_at_peak.max(loc.leaked_bytes);
        let _ = write!(
            cell,
            " in {} — {} through {}",
            code(function, true),
            format_size(bytes),
            code(&loc.allocator, true)
        );
    }
    cell
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The job summary of `report`.
pub fn github_summary(report: &SessionReport, options: &GithubOptions) -> String {
    let failed = failures(report);
    let mut md = String::new();
    let pytest = match options.exit_code {
        Some(0) => " pytest passed.".to_string(),
        Some(code) => format!(" pytest failed (exit status {code})."),
        None => String::new(),
    };
    let mark = if failed.is_empty() && options.exit_code.is_none_or(|c| c == 0) {
        "✅"
    } else {
        "❌"
    };
    let _ = writeln!(
        md,
        "## {mark} heapgate: {} of {} failed a memory check\n",
        failed.len(),
        plural(report.tests.len(), "tracked test", "tracked tests")
    );
    let facts = &report.session;
    let _ = writeln!(
        md,
        "heapgate {}, Python {}, {}.{pytest}\n",
        html(&facts.heapgate_version),
        html(&facts.python_version),
        html(&facts.platform)
    );

    if !failed.is_empty() {
        md.push_str("### Memory failures\n\n");
        md.push_str("| test | limit | peak | leaked | allocated at |\n");
        md.push_str("| --- | ---: | ---: | ---: | --- |\n");
        for test in &failed {
            let limit = limits_cell(test, size_cell);
            let _ = writeln!(
                md,
                "| {} | {limit} | {} | {} | {} |",
                code(&test.nodeid, true),
                size_cell(test.peak_bytes),
                size_cell(test.leaked.bytes),
                where_cell(test, report, options)
            );
        }
        md.push('\n');
        if failed.len() > MAX_ANNOTATIONS {
            let _ = writeln!(
                md,
                "{} annotated in the code (the largest); {} not annotated: GitHub shows at most {MAX_ANNOTATIONS} error annotations per step.\n",
                plural(MAX_ANNOTATIONS, "failure", "failures"),
                failed.len() - MAX_ANNOTATIONS
            );
        }
    }

    if options.top > 0 && !report.tests.is_empty() {
        let mut by_peak: Vec<&TestEntry> = report.tests.iter().collect();
        by_peak.sort_by_key(|t| std::cmp::Reverse(t.peak_bytes));
        let _ = writeln!(md, "### Highest peaks\n");
        md.push_str("| peak | limit | leaked | test |\n| ---: | ---: | ---: | --- |\n");
        for test in by_peak.into_iter().take(options.top) {
            let limit = limits_cell(test, format_size);
            let _ = writeln!(
                md,
                "| {} | {limit} | {} | {}{} |",
                format_size(test.peak_bytes),
                format_size(test.leaked.bytes),
                code(&test.nodeid, true),
                if test.memory_failed { " ❌" } else { "" }
            );
        }
        md.push('\n');
    }

    if let Some((name, peaks)) = &options.baseline {
        baseline_section(&mut md, report, name, peaks);
    }

    if !failed.is_empty() {
        md.push_str("### Where the memory went\n\n");
        for test in &failed {
            let _ = writeln!(
                md,
                "<details><summary><code>{}</code>: {}</summary>\n",
                // One line: a blank line would end the HTML block.
                html(&test.nodeid.replace(['\r', '\n'], " ")),
                html(&verdict_of(test))
            );
            let text = match &test.failure {
                Some(text) => text.clone(),
                None => location_text(&test.top_locations),
            };
            let _ = writeln!(md, "<pre>{}</pre>", html(&text));
            if let Some(svg) = &test.artifacts.flamegraph {
                let _ = writeln!(md, "\nFlamegraph: <code>{}</code>", html(svg));
            }
            md.push_str("\n</details>\n\n");
        }
    }

    let artifact = match (&options.artifact, &options.run_url) {
        (Some(name), Some(url)) => Some(format!(
            "artifact {} of [this run]({url}#artifacts)",
            code(name, false)
        )),
        (Some(name), None) => Some(format!("artifact {} of this run", code(name, false))),
        _ => None,
    };
    if let Some(artifact) = artifact {
        let _ = writeln!(
            md,
            "Flamegraphs (SVG), capture files (`heapgate report FILE`) and `heapgate.json`: {artifact}."
        );
    }
    md
}

/// The stacks of a test's top locations, for a failure without failure text (leak checks).
fn location_text(locations: &[Location]) -> String {
    let mut lines = vec!["Top locations (allocating frame first):".to_string()];
    for (n, loc) in locations.iter().enumerate() {
        lines.push(format!(
            "  #{} {} at the peak, {} leaked, through {}",
            n + 1,
            format_size(loc.bytes_at_peak),
            format_size(loc.leaked_bytes),
            loc.allocator
        ));
        lines.extend(loc.stack.iter().map(|f| format!("      {f}")));
    }
    lines.join("\n")
}

/// Rows shown in each direction of the baseline comparison.
const BASELINE_ROWS: usize = 5;

fn baseline_section(
    md: &mut String,
    report: &SessionReport,
    name: &str,
    peaks: &BTreeMap<String, u64>,
) {
    let mut changes: Vec<(&TestEntry, u64, i128)> = Vec::new();
    let mut new = 0;
    for test in &report.tests {
        match peaks.get(&test.nodeid) {
            Some(&old) => changes.push((test, old, i128::from(test.peak_bytes) - i128::from(old))),
            None => new += 1,
        }
    }
    let _ = writeln!(md, "### Against the baseline {}\n", code(name, false));
    let _ = writeln!(
        md,
        "{} compared, {} not in the baseline.\n",
        plural(changes.len(), "test", "tests"),
        plural(new, "test", "tests")
    );
    let row = |md: &mut String, (test, old, delta): &(&TestEntry, u64, i128)| {
        let percent = if *old == 0 {
            "new memory".to_string()
        } else {
            format!("{:+.1}%", *delta as f64 * 100.0 / *old as f64)
        };
        let sign = if *delta < 0 { "-" } else { "+" };
        let _ = writeln!(
            md,
            "| {} | {} | {sign}{} ({percent}) | {} |",
            format_size(*old),
            format_size(test.peak_bytes),
            format_size(delta.unsigned_abs() as u64),
            code(&test.nodeid, true)
        );
    };
    for (title, increase) in [("Increases", true), ("Decreases", false)] {
        let mut rows: Vec<&(&TestEntry, u64, i128)> = changes
            .iter()
            .filter(|c| if increase { c.2 > 0 } else { c.2 < 0 })
            .collect();
        rows.sort_by_key(|c| std::cmp::Reverse(c.2.unsigned_abs()));
        if rows.is_empty() {
            let _ = writeln!(md, "{title}: none.\n");
            continue;
        }
        let _ = writeln!(md, "{title} of the peak:\n");
        md.push_str("| baseline | now | change | test |\n| ---: | ---: | ---: | --- |\n");
        for c in rows.into_iter().take(BASELINE_ROWS) {
            row(md, c);
        }
        md.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_and_data_are_escaped() {
        let a = Annotation {
            file: Some("a,b:c%.py".into()),
            line: Some(3),
            title: "t::error::x\r\n".into(),
            message: "50%\n::error::y".into(),
        };
        assert_eq!(
            a.command(),
            "::error file=a%2Cb%3Ac%25.py,line=3,title=t%3A%3Aerror%3A%3Ax%0D%0A::50%25%0A::error::y"
        );
    }

    #[test]
    fn code_spans_survive_backticks_and_pipes() {
        assert_eq!(code("a|b", true), "`a\\|b`");
        assert_eq!(code("x``y", false), "```x``y```");
        assert_eq!(code("`x", false), "`` `x ``");
        assert_eq!(code("a\nb", false), "`a b`");
    }

    #[test]
    fn workspace_paths() {
        let ws = Path::new("/w/repo");
        assert_eq!(
            in_workspace("/w/repo/./src/../t.py", None, ws).as_deref(),
            Some("t.py")
        );
        assert_eq!(
            in_workspace("t.py", Some("/w/repo/sub"), ws).as_deref(),
            Some("sub/t.py")
        );
        assert_eq!(in_workspace("/usr/lib/x.py", None, ws), None);
        assert_eq!(in_workspace("/w/repository/x.py", None, ws), None);
    }

    #[test]
    fn url_paths_are_encoded() {
        assert_eq!(url_path("a b/c)(.py"), "a%20b/c%29%28.py");
    }
}
