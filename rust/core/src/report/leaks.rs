//! The leak checks' verdicts and texts: `limit_leaks` (memory still allocated after the call,
//! per location, any origin) and `--native-leaks` (memory lost by native code, by
//! reachability, minus LeakSanitizer-style suppressions).

use super::text::{format_size, plural, stack_lines};
use super::{ReportFrame, ResolvedCapture, Resolver, TextOptions};
use crate::capture::{LeakKinds, LeakTally};
use crate::model::SiteReport;

/// Still-reachable locations listed with `-v`.
const REACHABLE_LOCATIONS: usize = 20;

/// A location: the stack as shown, with what its sites still held after the call.
struct Location {
    /// A site of the location (its stack is the location's).
    site: usize,
    bytes: u64,
    count: u64,
    allocators: Vec<String>,
}

/// Memory still allocated at the end, grouped by location (the stack as shown), largest first.
fn leaked_locations(capture: &ResolvedCapture, resolver: &Resolver<'_>) -> Vec<Location> {
    let mut locations: Vec<Location> = Vec::new();
    let mut by_stack = std::collections::HashMap::new();
    for (i, site) in capture.capture().result.sites.iter().enumerate() {
        if site.counts.leaked_bytes == 0 && site.counts.leaked_count == 0 {
            continue;
        }
        let key: Vec<_> = capture
            .stack(i, resolver)
            .iter()
            .map(|f| (&f.function, &f.filename, f.line, f.kind as u8))
            .collect();
        let index = *by_stack.entry(key).or_insert_with(|| {
            locations.push(Location {
                site: i,
                bytes: 0,
                count: 0,
                allocators: Vec::new(),
            });
            locations.len() - 1
        });
        let location = &mut locations[index];
        location.bytes += site.counts.leaked_bytes;
        location.count += site.counts.leaked_count;
        let allocator = site.allocator.to_string();
        if !location.allocators.contains(&allocator) {
            location.allocators.push(allocator);
        }
    }
    locations.sort_by_key(|l| std::cmp::Reverse(l.bytes));
    locations
}

/// `limit_leaks`: the failure text when some location leaked more than `limit` bytes, else
/// `None`. `keep` is the marker's `filter_fn`: it sees each location over the limit (its
/// stack, allocating frame first) and returns false to ignore it.
pub fn limit_leaks_failure<E>(
    limit: u64,
    capture: &ResolvedCapture,
    resolver: &Resolver<'_>,
    options: &TextOptions<'_>,
    mut keep: impl FnMut(&[ReportFrame]) -> Result<bool, E>,
) -> Result<Option<String>, E> {
    let mut offending = Vec::new();
    for location in leaked_locations(capture, resolver) {
        if location.bytes > limit && keep(capture.stack(location.site, resolver))? {
            offending.push(location);
        }
    }
    if offending.is_empty() {
        return Ok(None);
    }
    let totals = &capture.capture().result.totals;
    let mut lines = vec![
        format!(
            "Test was limited to {} of leaked memory per location, but {} leaked more",
            format_size(limit),
            plural(offending.len() as u64, "location")
        ),
        format!(
            "  limit {limit} bytes per location; {} bytes in {} still allocated after the test (after gc.collect())",
            totals.leaked_bytes,
            plural(totals.leaked_count, "allocation")
        ),
        "Leaking locations (allocating frame first):".to_string(),
    ];
    for (n, location) in offending.iter().take(options.max_sites).enumerate() {
        let mut allocators = location.allocators.clone();
        allocators.sort();
        lines.push(format!(
            "  #{} {} ({} bytes) in {} through {}",
            n + 1,
            format_size(location.bytes),
            location.bytes,
            plural(location.count, "allocation"),
            allocators.join(", ")
        ));
        lines.extend(stack_lines(
            capture.stack(location.site, resolver),
            options,
            "(no frames)",
        ));
    }
    if offending.len() > options.max_sites {
        lines.push(format!(
            "  ... {} more locations over the limit",
            offending.len() - options.max_sites
        ));
    }
    Ok(Some(lines.join("\n")))
}

/// One `leak:PATTERN` line of a suppressions file (LeakSanitizer's pattern language: a
/// substring match where `*` matches any run and `^`/`$` anchor at either end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// The pattern after `leak:`.
    pub pattern: String,
    /// Where it was written: `file:line`.
    pub source: String,
}

impl Suppression {
    /// Does the pattern match `name` (a function, file or object name)?
    pub fn matches(&self, name: &str) -> bool {
        let pattern = self.pattern.as_str();
        let start = pattern.starts_with('^');
        let body = if start { &pattern[1..] } else { pattern };
        let end = body.ends_with('$') && (!body.is_empty());
        let body = if end { &body[..body.len() - 1] } else { body };
        let parts: Vec<&str> = body.split('*').collect();
        let (first, last) = (parts[0], parts[parts.len() - 1]);
        // Where the first part may stand: at the start only, or anywhere — overlapping
        // places too (`$$` stands at 0 and 1 in `$$$`; only the second ends where `$$$` must).
        let candidates: Vec<usize> = if start {
            vec![0]
        } else {
            name.char_indices()
                .map(|(i, _)| i)
                .chain([name.len()])
                .filter(|&i| name[i..].starts_with(first))
                .collect()
        };
        candidates.into_iter().any(|at| {
            let Some(mut rest) = name.get(at..).and_then(|s| s.strip_prefix(first)) else {
                return false;
            };
            if parts.len() == 1 {
                return !end || rest.is_empty();
            }
            // Middle parts leftmost (greedy enough for a substring search), the last one at
            // the end when anchored, else anywhere after.
            for middle in &parts[1..parts.len() - 1] {
                match rest.find(middle) {
                    Some(i) => rest = &rest[i + middle.len()..],
                    None => return false,
                }
            }
            if end {
                rest.ends_with(last)
            } else {
                rest.contains(last)
            }
        })
    }

    /// Does the pattern match any name of `frame`: its function, file or object?
    fn matches_frame(&self, frame: &ReportFrame) -> bool {
        [
            Some(frame.function.as_str()),
            frame.filename.as_deref(),
            frame.module.as_deref(),
        ]
        .into_iter()
        .flatten()
        .any(|name| !name.is_empty() && self.matches(name))
    }
}

/// What suppression `index` (of the list given) absorbed in one test: lost bytes and blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Absorbed {
    /// The suppression's index.
    pub index: usize,
    /// Lost bytes it hid.
    pub bytes: u64,
    /// Lost blocks it hid.
    pub blocks: u64,
}

/// The `--native-leaks` check of one test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NativeLeaks {
    /// The failure text, when lost native memory is over the limit.
    pub failure: Option<String>,
    /// Still-reachable native memory (never fails a test): bytes and blocks.
    pub reachable: LeakTally,
    /// Still-reachable native memory by location, as `-v` lists it (empty when none).
    pub reachable_text: Option<String>,
    /// What each suppression that hid lost blocks absorbed, in suppression order.
    pub absorbed: Vec<Absorbed>,
}

/// What fails a test: definitely and indirectly lost, and (as valgrind's default error kinds
/// include it) possibly lost — memory only interior pointers point into.
fn lost_kinds(k: &LeakKinds) -> [(&'static str, LeakTally); 3] {
    [
        ("definitely lost", k.definitely_lost),
        ("indirectly lost", k.indirectly_lost),
        ("possibly lost", k.possibly_lost),
    ]
}

fn kinds(site: &SiteReport) -> LeakKinds {
    site.leak_kinds.unwrap_or_default()
}

fn add(a: &mut LeakTally, b: LeakTally) {
    *a += b;
}

/// `--native-leaks`: definitely, indirectly and possibly lost bytes from native code, minus
/// suppressed stacks, against `limit`. Still-reachable memory never fails a test; its listing
/// by location is made only when `list_reachable` (symbolizing its stacks costs more than the
/// rest of the check).
pub fn native_leaks(
    limit: u64,
    capture: &ResolvedCapture,
    resolver: &Resolver<'_>,
    suppressions: &[Suppression],
    options: &TextOptions<'_>,
    list_reachable: bool,
) -> NativeLeaks {
    let sites = &capture.capture().result.sites;
    // Only sites that still hold blocks have a verdict; only shown ones are symbolized.
    let mut is_native = capture.native_origins(resolver.interpreter);
    let native: Vec<bool> = sites
        .iter()
        .enumerate()
        .map(|(i, site)| site.leak_kinds.is_some() && site.counts.leaked_count > 0 && is_native(i))
        .collect();
    let mut checked: Vec<usize> = (0..sites.len()).filter(|&i| native[i]).collect();
    if checked
        .iter()
        .any(|&i| kinds(&sites[i]).indirectly_lost.count > 0)
    {
        // Indirectly lost blocks hang off a definitely or possibly lost one, which may have been
        // allocated by the interpreter (a Python object whose reference C code leaked): those
        // lost blocks are shown too, or the report would show the rest of a leak without its head.
        checked.extend((0..sites.len()).filter(|&i| {
            let k = kinds(&sites[i]);
            !native[i] && (k.definitely_lost.count > 0 || k.possibly_lost.count > 0)
        }));
    }
    let mut totals = LeakKinds::default();
    let mut absorbed: Vec<Absorbed> = Vec::new();
    let mut lost: Vec<(u64, usize)> = Vec::new();
    let mut reachable: Vec<(u64, usize)> = Vec::new();
    for i in checked {
        let site = &sites[i];
        if site.leak_kinds.is_none() || site.counts.leaked_count == 0 {
            continue;
        }
        let k = kinds(site);
        let mut site_lost = LeakTally::default();
        for (_, tally) in lost_kinds(&k) {
            add(&mut site_lost, tally);
        }
        let suppressed = if suppressions.is_empty() {
            None
        } else {
            let stack = capture.stack(i, resolver);
            suppressions
                .iter()
                .position(|s| stack.iter().any(|f| s.matches_frame(f)))
        };
        if let Some(index) = suppressed {
            match absorbed.iter_mut().find(|a| a.index == index) {
                Some(a) => {
                    a.bytes += site_lost.bytes;
                    a.blocks += site_lost.count;
                }
                None => absorbed.push(Absorbed {
                    index,
                    bytes: site_lost.bytes,
                    blocks: site_lost.count,
                }),
            }
            continue;
        }
        add(&mut totals.definitely_lost, k.definitely_lost);
        add(&mut totals.indirectly_lost, k.indirectly_lost);
        add(&mut totals.possibly_lost, k.possibly_lost);
        if native[i] {
            add(&mut totals.still_reachable, k.still_reachable);
        }
        if site_lost.bytes > 0 {
            lost.push((site_lost.bytes, i));
        }
        if k.still_reachable.count > 0 {
            reachable.push((k.still_reachable.bytes, i));
        }
    }
    let reachable_text = if list_reachable {
        reachable_text(&mut reachable, capture, resolver, options)
    } else {
        None
    };
    let lost_bytes: u64 = lost_kinds(&totals).iter().map(|(_, t)| t.bytes).sum();
    // In the text, every suppression that matched a leaking site, in the order they matched;
    // in the session's tally, those that hid lost blocks.
    let shown: Vec<Absorbed> = absorbed.clone();
    absorbed.retain(|a| a.blocks > 0);
    absorbed.sort_by_key(|a| a.index);
    let mut result = NativeLeaks {
        failure: None,
        reachable: totals.still_reachable,
        reachable_text,
        absorbed,
    };
    if lost_bytes <= limit {
        return result;
    }
    let kind_text = |t: LeakTally| format!("{} bytes in {}", t.bytes, plural(t.count, "block"));
    let mut lines = vec![
        format!(
            "Test leaked {} from native code (limit {}, --native-leaks)",
            format_size(lost_bytes),
            format_size(limit)
        ),
        format!(
            "  definitely lost: {}; indirectly lost: {}; possibly lost (only interior pointers found): {}",
            kind_text(totals.definitely_lost),
            kind_text(totals.indirectly_lost),
            kind_text(totals.possibly_lost)
        ),
        format!(
            "  still reachable (not counted): {}",
            kind_text(totals.still_reachable)
        ),
    ];
    for a in &shown {
        let s = &suppressions[a.index];
        lines.push(format!(
            "  suppressed by leak:{} ({}): {} bytes in {}",
            s.pattern,
            s.source,
            a.bytes,
            plural(a.blocks, "block")
        ));
    }
    lines.push("Lost memory by location (allocating frame first):".to_string());
    lost.sort_by_key(|&(bytes, _)| std::cmp::Reverse(bytes));
    for (n, &(bytes, i)) in lost.iter().take(options.max_sites).enumerate() {
        let k = kinds(&sites[i]);
        let parts: Vec<String> = lost_kinds(&k)
            .iter()
            .filter(|(_, t)| t.count > 0)
            .map(|(name, t)| format!("{} bytes {name} in {}", t.bytes, plural(t.count, "block")))
            .collect();
        lines.push(format!(
            "  #{} {}: {} through {}",
            n + 1,
            format_size(bytes),
            parts.join("; "),
            sites[i].allocator
        ));
        lines.extend(stack_lines(
            capture.stack(i, resolver),
            options,
            "(no frames)",
        ));
    }
    if lost.len() > options.max_sites {
        lines.push(format!(
            "  ... {} more locations",
            lost.len() - options.max_sites
        ));
    }
    result.failure = Some(lines.join("\n"));
    result
}

/// Still-reachable native memory by location, largest first (not counted as lost).
fn reachable_text(
    sites: &mut [(u64, usize)],
    capture: &ResolvedCapture,
    resolver: &Resolver<'_>,
    options: &TextOptions<'_>,
) -> Option<String> {
    if sites.is_empty() {
        return None;
    }
    sites.sort_by_key(|&(bytes, _)| std::cmp::Reverse(bytes));
    let all = &capture.capture().result.sites;
    let total: u64 = sites.iter().map(|&(bytes, _)| bytes).sum();
    let blocks: u64 = sites
        .iter()
        .map(|&(_, i)| kinds(&all[i]).still_reachable.count)
        .sum();
    let mut lines = vec![format!(
        "Still reachable native memory (not counted): {total} bytes in {}, by location (allocating frame first):",
        plural(blocks, "block")
    )];
    for (n, &(bytes, i)) in sites.iter().take(REACHABLE_LOCATIONS).enumerate() {
        let count = kinds(&all[i]).still_reachable.count;
        lines.push(format!(
            "  #{} {}: {bytes} bytes in {} through {}",
            n + 1,
            format_size(bytes),
            plural(count, "block"),
            all[i].allocator
        ));
        lines.extend(stack_lines(
            capture.stack(i, resolver),
            options,
            "(no frames)",
        ));
    }
    if sites.len() > REACHABLE_LOCATIONS {
        lines.push(format!(
            "  ... {} more locations",
            sites.len() - REACHABLE_LOCATIONS
        ));
    }
    Some(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        Suppression {
            pattern: pattern.into(),
            source: "t.supp:1".into(),
        }
        .matches(name)
    }

    #[test]
    fn suppression_patterns_follow_leak_sanitizer() {
        assert!(matches("leak_malloc", "hgleak_leak_malloc_now"));
        assert!(!matches("leak_malloc", "leak_mall"));
        assert!(matches("^leak", "leak_malloc"));
        assert!(!matches("^malloc", "leak_malloc"));
        assert!(matches("malloc$", "leak_malloc"));
        assert!(!matches("leak$", "leak_malloc"));
        assert!(matches("^leak_malloc$", "leak_malloc"));
        assert!(matches("l*k_m*c", "a_leak_malloc_b"));
        assert!(matches("^l*c$", "leak_malloc"));
        assert!(!matches("^l*k$", "leak_malloc"));
        assert!(matches("*", "anything"));
        assert!(matches("a*a", "aa"));
        assert!(!matches("a*a", "a"));
        assert!(matches("x.so", "/lib/x.so.1"));
        assert!(!matches("x.so", "/lib/xyso"));
        assert!(matches("$", "any"));
        // The first part may stand where an earlier place of it overlaps.
        assert!(matches("aa$", "aaa"));
        assert!(matches("$$$", "$$$"));
        assert!(matches("aba*c$", "ababac"));
    }
}
