//! Turning a test's raw numbers into what people read: resolved hybrid stacks, every failure
//! text (peak, leaks, native leaks, growth, baseline), folded stacks, flamegraph SVGs, the
//! session report (JSON, JUnit, the terminal table) and GitHub's job summary and annotations.

mod baseline;
mod flamegraph;
mod folded;
mod github;
mod growth;
mod json;
mod junit;
mod leaks;
mod resolved;
mod session;
mod stacks;
mod text;

pub use baseline::{
    baseline_failure, baseline_summary_lines, fail_on_increase_failure, warmup_note, Percent,
    PercentError, Tolerance,
};

pub use flamegraph::{flamegraph_svg, FlamegraphError};
pub use folded::{folded_stacks, Weight};
pub use github::{
    escape_data, escape_property, github_annotations, github_summary, Annotation, GithubOptions,
    MAX_ANNOTATIONS,
};
pub use growth::{growth_failure, GROWTH_GRANULARITY};
pub use json::{
    Artifacts, FrameSource, JsonReportError, Leaked, Location, SessionFacts, SessionReport,
    TestEntry, JSON_SCHEMA, JSON_VERSION, TOP_LOCATIONS,
};
pub use junit::{junit_names, junit_xml, JunitError};
pub use leaks::{limit_leaks_failure, native_leaks, Absorbed, NativeLeaks, Suppression};
pub use resolved::{ResolvedCapture, Resolver};
pub use session::{SessionTest, TestNotes};
pub use stacks::{resolve_stack, FrameKind, InterpreterModules, ReportFrame};
pub use text::{
    capture_text, escape_html, format_frame, format_size, frame_label, peak_failure, show_path,
    TextOptions,
};
