//! Turning a test's raw numbers into what people read: resolved hybrid stacks.

mod stacks;

pub use stacks::{resolve_stack, FrameKind, InterpreterModules, ReportFrame};
