//! Peaks against earlier ones: `--heapgate-compare`'s baseline (a tolerance in percent, with
//! a floor in bytes) and pytest-memray's `--fail-on-increase` (the previous passing run).
//! The verdicts, the failure texts and the session's comparison table.

use std::collections::BTreeMap;

use num_bigint::BigUint;

use super::text::format_size;

/// A non-negative decimal percentage, exact: `digits × 10^exponent` (as Python's
/// `Decimal.as_tuple()` gives it), so `2.5` and `0.1` compare without rounding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Percent {
    /// Decimal digits, most significant first, without leading or trailing zeros (empty: 0).
    digits: Vec<u8>,
    exponent: i64,
}

/// Errors building a [`Percent`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PercentError {
    /// A digit outside 0-9.
    #[error("{0} is not a decimal digit")]
    Digit(u8),
}

impl Percent {
    /// `digits × 10^exponent`; `digits` most significant first, each 0-9.
    pub fn new(digits: &[u8], exponent: i64) -> Result<Percent, PercentError> {
        if let Some(&bad) = digits.iter().find(|&&d| d > 9) {
            return Err(PercentError::Digit(bad));
        }
        let start = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
        let mut digits = digits[start..].to_vec();
        let mut exponent = exponent;
        while digits.last() == Some(&0) {
            digits.pop();
            exponent += 1;
        }
        if digits.is_empty() {
            exponent = 0;
        }
        Ok(Percent { digits, exponent })
    }

    /// A whole number of percent.
    pub fn whole(percent: u64) -> Percent {
        let digits: Vec<u8> = percent.to_string().bytes().map(|b| b - b'0').collect();
        Percent::new(&digits, 0).unwrap_or_else(|_| unreachable!("decimal digits"))
    }

    /// Is `increase` more than this percentage of `old`? (`increase × 100 > old × percent`,
    /// exactly.)
    fn exceeded_by(&self, increase: u64, old: u64) -> bool {
        let mantissa = BigUint::from_radix_be(&self.digits, 10).unwrap_or_default();
        // Both sides are below 10^22 × 10^len(digits) once the exponent is past these bounds,
        // so clamping it changes no verdict and keeps the numbers small.
        let len = self.digits.len() as i64;
        let exponent = self.exponent.clamp(-(len + 24), 24);
        let ten = BigUint::from(10u32);
        let mut lhs = BigUint::from(increase) * 100u32;
        let mut rhs = BigUint::from(old) * mantissa;
        if exponent >= 0 {
            rhs *= ten.pow(exponent as u32);
        } else {
            lhs *= ten.pow((-exponent) as u32);
        }
        lhs > rhs
    }
}

impl std::fmt::Display for Percent {
    /// Plain notation, no exponent and no trailing zeros: `10`, `2.5`, `0.01`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.digits.is_empty() {
            return f.write_str("0");
        }
        let digits: String = self.digits.iter().map(|d| char::from(b'0' + d)).collect();
        if self.exponent >= 0 {
            write!(f, "{digits}{}", "0".repeat(self.exponent as usize))
        } else {
            let point = digits.len() as i64 + self.exponent;
            if point > 0 {
                let (int, frac) = digits.split_at(point as usize);
                write!(f, "{int}.{frac}")
            } else {
                write!(f, "0.{}{digits}", "0".repeat((-point) as usize))
            }
        }
    }
}

/// How much a peak may grow over its baseline: `max_increase` percent, and growth under
/// `min_increase` bytes never fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tolerance {
    /// Percent of the baseline's peak.
    pub max_increase: Percent,
    /// Bytes of growth that never fail.
    pub min_increase: u64,
}

impl Tolerance {
    /// Does `new` grow past the tolerance over `old`? Only when the increase is above
    /// `max_increase` percent of `old` and not below `min_increase`.
    pub fn exceeded(&self, old: u64, new: u64) -> bool {
        let increase = new.saturating_sub(old);
        increase > 0
            && increase >= self.min_increase
            && self.max_increase.exceeded_by(increase, old)
    }

    fn text(&self) -> String {
        format!(
            "+{}% (increases under {} never fail)",
            self.max_increase,
            format_size(self.min_increase)
        )
    }
}

/// `+12.5%`-style text of `delta` against `old` (which is not 0).
fn percent_of(delta: i128, old: u64, signed: bool) -> String {
    let value = (delta * 100) as f64 / old as f64;
    if signed {
        format!("{value:+.1}%")
    } else {
        format!("{value:.1}%")
    }
}

/// The failure text when `new` grew past `tolerance` over the baseline's `old`, else `None`;
/// `source` names the baseline (`--heapgate-compare FILE`).
pub fn baseline_failure(old: u64, new: u64, tolerance: &Tolerance, source: &str) -> Option<String> {
    if !tolerance.exceeded(old, new) {
        return None;
    }
    let increase = new - old;
    let growth = if old == 0 {
        "from nothing".to_string()
    } else {
        format!("+{}", percent_of(i128::from(increase), old, false))
    };
    Some(format!(
        "Test's peak grew beyond the baseline ({source})\n  baseline peak {} ({old} bytes), now {} ({new} bytes): +{} ({growth})\n  tolerance {}",
        format_size(old),
        format_size(new),
        format_size(increase),
        tolerance.text()
    ))
}

/// pytest-memray's `--fail-on-increase`: the failure text when `peak` is above the previous
/// passing run's, else `None`.
pub fn fail_on_increase_failure(previous: u64, peak: u64) -> Option<String> {
    if peak <= previous {
        return None;
    }
    Some(format!(
        "Test uses more memory than its previous run (--fail-on-increase)\n  previous peak {} ({previous} bytes), now {} ({peak} bytes): +{}",
        format_size(previous),
        format_size(peak),
        format_size(peak - previous)
    ))
}

/// The line that ends a failure measured after warm-up runs (`--heapgate-warmup`).
pub fn warmup_note(runs: u64) -> String {
    format!(
        "(measured after {runs} warm-up run{} of the call)",
        if runs == 1 { "" } else { "s" }
    )
}

/// The terminal's comparison with a baseline: counts, then the biggest increases and
/// decreases. `peaks` are this session's (node id, peak) in the order the tests ran;
/// `name` is the baseline file's name.
pub fn baseline_summary_lines(
    name: &str,
    baseline: &BTreeMap<String, u64>,
    peaks: &[(&str, u64)],
    tolerance: &Tolerance,
    most: usize,
) -> Vec<String> {
    let changes: Vec<(i128, &str)> = peaks
        .iter()
        .filter_map(|&(nodeid, peak)| {
            let old = *baseline.get(nodeid)?;
            Some((i128::from(peak) - i128::from(old), nodeid))
        })
        .collect();
    let failed = changes
        .iter()
        .filter(|&&(delta, nodeid)| {
            let old = baseline[nodeid];
            tolerance.exceeded(old, (i128::from(old) + delta) as u64)
        })
        .count();
    let new = peaks
        .iter()
        .filter(|(nodeid, _)| !baseline.contains_key(*nodeid))
        .count();
    let ran: std::collections::HashSet<&str> = peaks.iter().map(|&(n, _)| n).collect();
    let missing = baseline
        .keys()
        .filter(|n| !ran.contains(n.as_str()))
        .count();
    let mut lines = vec![format!(
        "{} tests compared with {name} (tolerance {}): {failed} grew beyond it; {new} not in the baseline; {missing} in the baseline did not run",
        changes.len(),
        tolerance.text()
    )];
    let mut increases: Vec<(i128, &str)> = changes.iter().copied().filter(|c| c.0 > 0).collect();
    increases.sort_by(|a, b| b.cmp(a));
    let mut decreases: Vec<(i128, &str)> = changes.iter().copied().filter(|c| c.0 < 0).collect();
    decreases.sort();
    for (title, picked) in [
        ("biggest increases:", increases),
        ("biggest decreases:", decreases),
    ] {
        if picked.is_empty() {
            continue;
        }
        lines.push(title.to_string());
        for (delta, nodeid) in picked.into_iter().take(most) {
            let old = baseline[nodeid];
            let now = (i128::from(old) + delta) as u64;
            let percent = if old == 0 {
                "new".to_string()
            } else {
                percent_of(delta, old, true)
            };
            let sign = if delta > 0 { "+" } else { "-" };
            lines.push(format!(
                "  {sign}{:>9} {percent:>8}  {} -> {}  {nodeid}",
                format_size(delta.unsigned_abs() as u64),
                format_size(old),
                format_size(now)
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn percent(digits: &[u8], exponent: i64) -> Percent {
        Percent::new(digits, exponent).unwrap()
    }

    #[test]
    fn percentages_print_plainly() {
        assert_eq!(percent(&[1, 0], 0).to_string(), "10");
        assert_eq!(percent(&[1], 1).to_string(), "10");
        assert_eq!(percent(&[2, 5, 0], -2).to_string(), "2.5");
        assert_eq!(percent(&[1], -2).to_string(), "0.01");
        assert_eq!(percent(&[0, 0], -1).to_string(), "0");
        assert_eq!(percent(&[1, 2, 3], -1).to_string(), "12.3");
        assert_eq!(
            Percent::new(&[12], 0),
            Err(PercentError::Digit(12)),
            "not a digit"
        );
    }

    #[test]
    fn tolerance_is_exact() {
        let t = |digits: &[u8], exponent, min| Tolerance {
            max_increase: percent(digits, exponent),
            min_increase: min,
        };
        // 10% of 1000 is 100: 100 more is within, 101 is over.
        assert!(!t(&[1, 0], 0, 0).exceeded(1000, 1100));
        assert!(t(&[1, 0], 0, 0).exceeded(1000, 1101));
        // 0.1% of 1000 is exactly 1 (no binary rounding).
        assert!(!t(&[1], -1, 0).exceeded(1000, 1001));
        assert!(t(&[1], -1, 0).exceeded(1000, 1002));
        // Under the floor never fails; a decrease never fails.
        assert!(!t(&[0], 0, 64).exceeded(1000, 1063));
        assert!(t(&[0], 0, 64).exceeded(1000, 1064));
        assert!(!t(&[0], 0, 0).exceeded(1000, 999));
        // From nothing, any growth is over; huge and tiny exponents stay exact and cheap.
        assert!(t(&[5], 0, 0).exceeded(0, 1));
        assert!(!t(&[1], 1_000_000_000, 0).exceeded(1, u64::MAX));
        assert!(t(&[1], -1_000_000_000, 0).exceeded(u64::MAX - 1, u64::MAX));
    }
}
