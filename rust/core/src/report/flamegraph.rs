//! Flamegraph SVGs rendered by `inferno` from folded stacks, titled with the test id and its
//! numbers; tooltips show sizes with binary prefixes.

use super::folded::{folded_stacks, Weight};
use super::text::{escape_html, format_size};
use super::{ResolvedCapture, Resolver};

/// Errors while rendering.
#[derive(Debug, thiserror::Error)]
pub enum FlamegraphError {
    /// inferno refused the input.
    #[error("cannot render flamegraph: {0}")]
    Render(#[from] std::io::Error),
}

/// Text for the SVG: control characters (a test id may hold any) shown as spaces.
fn escape(text: &str) -> String {
    let printable: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    escape_html(&printable)
}

/// The subtitle: peak, limit, leaked and what widths mean.
fn subtitle(capture: &ResolvedCapture, weight: Weight) -> String {
    let c = capture.capture();
    let limit = c
        .test
        .limits
        .limit_memory
        .map(|l| format!(", limit {} ({l} bytes)", format_size(l)))
        .unwrap_or_default();
    format!(
        "peak {} ({} bytes){limit}, leaked {} ({} bytes); width: {}",
        format_size(c.totals.peak_bytes),
        c.totals.peak_bytes,
        format_size(c.totals.leaked_bytes),
        c.totals.leaked_bytes,
        weight.describe()
    )
}

/// The test's flamegraph as an SVG document.
pub fn flamegraph_svg(
    capture: &ResolvedCapture,
    resolver: &Resolver<'_>,
) -> Result<String, FlamegraphError> {
    let weight = Weight::for_capture(capture);
    let folded = folded_stacks(capture, resolver, weight);
    let title = format!("heapgate: {}", capture.capture().test.nodeid);
    let subtitle = subtitle(capture, weight);
    if folded.is_empty() {
        return Ok(empty_svg(&title, &subtitle));
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    options.subtitle = Some(subtitle);
    options.count_name = "bytes".to_string();
    options.name_type = "Frame:".to_string();
    options.colors =
        inferno::flamegraph::Palette::Basic(inferno::flamegraph::color::BasicPalette::Mem);
    options.hash = true;
    options.deterministic = true;
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut out)?;
    let svg = String::from_utf8_lossy(&out).into_owned();
    Ok(with_binary_sizes(&svg))
}

/// An SVG that says nothing was allocated (inferno draws nothing for zero samples).
fn empty_svg(title: &str, subtitle: &str) -> String {
    format!(
        concat!(
            "<?xml version=\"1.0\" standalone=\"no\"?>\n",
            "<svg version=\"1.1\" width=\"1200\" height=\"120\" xmlns=\"http://www.w3.org/2000/svg\">",
            "<rect x=\"0\" y=\"0\" width=\"100%\" height=\"100%\" fill=\"#eeeeee\"/>",
            "<text x=\"600\" y=\"30\" text-anchor=\"middle\" font-size=\"17\" font-family=\"Verdana\">{}</text>",
            "<text x=\"600\" y=\"60\" text-anchor=\"middle\" font-size=\"12\" font-family=\"Verdana\">{}</text>",
            "<text x=\"600\" y=\"90\" text-anchor=\"middle\" font-size=\"12\" font-family=\"Verdana\">no allocation to show</text>",
            "</svg>\n"
        ),
        escape(title),
        escape(subtitle)
    )
}

/// Adds `10.0MiB, ` before inferno's `10,485,760 bytes` in every tooltip title.
fn with_binary_sizes(svg: &str) -> String {
    let mut out = String::with_capacity(svg.len() + svg.len() / 8);
    let mut rest = svg;
    while let Some(start) = rest.find("<title>") {
        let Some(end) = rest[start..].find("</title>").map(|e| start + e) else {
            break;
        };
        out.push_str(&rest[..start]);
        out.push_str(&annotate_title(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn annotate_title(title: &str) -> String {
    let Some(bytes_at) = title.rfind(" bytes, ").or_else(|| title.rfind(" bytes)")) else {
        return title.to_string();
    };
    let Some(open) = title[..bytes_at].rfind(" (") else {
        return title.to_string();
    };
    let digits = &title[open + 2..bytes_at];
    let Ok(n) = digits.replace(',', "").parse::<u64>() else {
        return title.to_string();
    };
    format!(
        "{} ({}, {}",
        &title[..open],
        format_size(n),
        &title[open + 2..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_get_binary_sizes() {
        assert_eq!(
            annotate_title("<title>helper (t.py:4) (10,485,760 bytes, 100.00%)"),
            "<title>helper (t.py:4) (10.0MiB, 10,485,760 bytes, 100.00%)"
        );
        assert_eq!(
            annotate_title("<title>all (1,536 bytes, 100%)"),
            "<title>all (1.5KiB, 1,536 bytes, 100%)"
        );
        assert_eq!(annotate_title("<title>heapgate: x"), "<title>heapgate: x");
    }
}
