//! Turning a test's raw numbers into what people read: resolved hybrid stacks, the failure
//! text, folded stacks, flamegraph SVGs, the session JSON report, JUnit XML, and
//! GitHub's job summary and annotations.

mod flamegraph;
mod folded;
mod github;
mod json;
mod junit;
mod resolved;
mod stacks;
mod text;

pub use flamegraph::{flamegraph_svg, FlamegraphError};
pub use folded::{folded_stacks, Weight};
pub use github::{
    escape_data, escape_property, github_annotations, github_summary, Annotation, GithubOptions,
    MAX_ANNOTATIONS,
};
pub use json::{
    Artifacts, FrameSource, JsonReportError, Leaked, Location, SessionFacts, SessionReport,
    TestEntry, JSON_SCHEMA, JSON_VERSION, TOP_LOCATIONS,
};
pub use junit::{junit_names, junit_xml, JunitError};
pub use resolved::{ResolvedCapture, Resolver};
pub use stacks::{resolve_stack, FrameKind, InterpreterModules, ReportFrame};
pub use text::{
    capture_text, format_frame, format_size, frame_label, peak_failure, show_path,
    thread_rule_text, TextOptions,
};
