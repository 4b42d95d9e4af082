//! A capture with its stacks resolved on demand: the one input of every report format.

use std::sync::{Arc, OnceLock};

use super::{resolve_stack, InterpreterModules, ReportFrame};
use crate::capture::NativeOrigins;
use crate::record::{Capture, ProcessFacts, TestInfo};
use crate::symbolize::{ModuleMap, Symbolizer};

/// What resolves native frames: the symbolizer and which objects are the interpreter.
#[derive(Clone, Copy)]
pub struct Resolver<'a> {
    /// The (cached) symbolizer.
    pub symbolizer: &'a Symbolizer,
    /// The interpreter's objects, whose frames are hidden between Python frames.
    pub interpreter: &'a InterpreterModules,
}

/// A [`Capture`] whose site stacks are resolved (symbolized) the first time they are asked for.
#[derive(Clone, Debug)]
pub struct ResolvedCapture {
    capture: Capture,
    modules: Arc<ModuleMap>,
    stacks: Arc<Vec<OnceLock<Vec<ReportFrame>>>>,
}

impl ResolvedCapture {
    /// Wraps `capture`; nothing is symbolized yet.
    pub fn new(capture: Capture) -> ResolvedCapture {
        let modules = Arc::new(capture.module_map());
        let stacks = Arc::new(
            (0..capture.result.sites.len())
                .map(|_| OnceLock::new())
                .collect(),
        );
        ResolvedCapture {
            capture,
            modules,
            stacks,
        }
    }

    /// The same capture for another test and process description, sharing the resolved
    /// stacks.
    pub fn with_test(&self, test: TestInfo, facts: ProcessFacts) -> ResolvedCapture {
        let mut capture = self.capture.clone();
        capture.test = test;
        capture.facts = facts;
        ResolvedCapture {
            capture,
            modules: Arc::clone(&self.modules),
            stacks: Arc::clone(&self.stacks),
        }
    }

    /// The capture.
    pub fn capture(&self) -> &Capture {
        &self.capture
    }

    /// Answers "is this site's origin native code?" for this capture's sites (the rule in
    /// [`NativeOrigins`]), without symbolizing them.
    pub(crate) fn native_origins<'a>(
        &self,
        interpreter: &'a InterpreterModules,
    ) -> impl FnMut(usize) -> bool + use<'a, '_> {
        let mut origins = NativeOrigins::with_modules(Arc::clone(&self.modules), interpreter);
        move |index| origins.is_native(self.capture.site_stack(index).iter())
    }

    /// Site `index`'s resolved stack, allocating frame first (empty for an unknown index).
    pub fn stack(&self, index: usize, resolver: &Resolver<'_>) -> &[ReportFrame] {
        let Some(cell) = self.stacks.get(index) else {
            return &[];
        };
        cell.get_or_init(|| {
            resolve_stack(
                &self.capture.site_stack(index),
                &self.modules,
                resolver.symbolizer,
                resolver.interpreter,
            )
        })
    }
}
