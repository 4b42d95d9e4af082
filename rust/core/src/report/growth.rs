//! Repeat-run leak growth (`--heapgate-repeat`): the verdict and the text of a test whose live
//! memory grew on every run of its call after the first.

use std::collections::HashMap;

use super::text::{format_size, stack_lines};
use super::{ResolvedCapture, Resolver, TextOptions};

/// The smallest step CPython's and the C library's allocators take: growth below it is the
/// allocator's rounding, not a leak.
pub const GROWTH_GRANULARITY: i128 = 16;

fn rounded(delta: i128) -> i128 {
    if delta > 0 {
        delta - delta % GROWTH_GRANULARITY
    } else {
        delta
    }
}

/// A location of one checkpoint: its live bytes and the (last) site that has its stack.
type Live = (i128, usize);

/// Bytes live per location (allocator and stack) in a checkpoint, in the order first seen.
fn live_by_location(
    checkpoint: &ResolvedCapture,
    resolver: &Resolver<'_>,
) -> (Vec<String>, HashMap<String, Live>) {
    let mut order = Vec::new();
    let mut live: HashMap<String, Live> = HashMap::new();
    for (i, site) in checkpoint.capture().sites.iter().enumerate() {
        if site.leaked_bytes == 0 {
            continue;
        }
        // One string of the allocator and every frame's identity.
        let mut key = site.allocator.clone();
        for f in checkpoint.stack(i, resolver) {
            key.push_str(&format!(
                "\0{}\0{:?}\0{:?}\0{:?}",
                f.function, f.filename, f.line, f.address
            ));
        }
        let entry = live.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            (0, i)
        });
        *entry = (entry.0 + i128::from(site.leaked_bytes), i);
    }
    (order, live)
}

/// The failure text when the live memory grew by more than `threshold` bytes (after rounding
/// to the allocator's granularity) on each run after the first, naming the locations that
/// grew on every one of those runs; else `None`. `totals` are the live bytes after each run,
/// `checkpoints` the captures taken then, in order.
pub fn growth_failure(
    totals: &[u64],
    checkpoints: &[&ResolvedCapture],
    threshold: u64,
    resolver: &Resolver<'_>,
    options: &TextOptions<'_>,
) -> Option<String> {
    if totals.len() < 2 {
        return None;
    }
    let deltas: Vec<i128> = totals
        .windows(2)
        .map(|w| rounded(i128::from(w[1]) - i128::from(w[0])))
        .collect();
    if !deltas.iter().all(|&d| d > i128::from(threshold)) {
        return None;
    }
    let lives: Vec<_> = checkpoints
        .iter()
        .map(|c| live_by_location(c, resolver))
        .collect();
    // (per-run growth, site in the last checkpoint) of each location that grew on every run.
    let mut growing: Vec<(Vec<i128>, usize)> = Vec::new();
    if let Some((order, last)) = lives.last() {
        for key in order {
            let series: Vec<i128> = lives
                .iter()
                .map(|(_, live)| live.get(key).map_or(0, |&(bytes, _)| bytes))
                .collect();
            let per_run: Vec<i128> = series.windows(2).map(|w| rounded(w[1] - w[0])).collect();
            if !per_run.is_empty() && per_run.iter().all(|&d| d > 0) {
                growing.push((per_run, last[key].1));
            }
        }
    }
    growing.sort_by_key(|(per_run, _)| std::cmp::Reverse(per_run.iter().sum::<i128>()));
    let joined = |values: &[i128], each: &str| {
        values
            .iter()
            .map(|d| format!("+{d}{each}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut lines = vec![
        format!(
            "Live memory grew on each of the last {} of {} runs of the test (threshold {} per run, --heapgate-repeat)",
            deltas.len(),
            totals.len(),
            format_size(threshold)
        ),
        format!("  growth per run: {}", joined(&deltas, " bytes")),
        "Growing locations (allocating frame first):".to_string(),
    ];
    if let Some(last) = checkpoints.last() {
        for (n, (per_run, site)) in growing.iter().take(options.max_sites).enumerate() {
            let average = per_run.iter().sum::<i128>() / per_run.len() as i128;
            lines.push(format!(
                "  #{} +{} per run ({} bytes) through {}",
                n + 1,
                format_size(average as u64),
                joined(per_run, ""),
                last.capture().sites[*site].allocator
            ));
            lines.extend(stack_lines(
                last.stack(*site, resolver),
                options,
                "(no frames)",
            ));
        }
    }
    if growing.is_empty() {
        lines.push(
            "  (no single location grew on every run: the growth moves between locations)"
                .to_string(),
        );
    }
    Some(lines.join("\n"))
}
