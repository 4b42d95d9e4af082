//! Which allocation sites native code is the origin of, as `--native-leaks` judges them: the
//! innermost frame that is not the interpreter's own (libpython, the python executable) is an
//! extension's or a library's. The plugin reports lost and still-reachable memory of such
//! sites only (and, among the rest, only lost blocks that hang native lost blocks): a test
//! whose live blocks all have another origin has nothing to report, and its scan is skipped.
//!
//! The rule, for the scan and for the report's `--native-leaks` check alike: memory was
//! allocated by native code when the nearest frame that is not the interpreter's own (nor the
//! allocator's) is an extension's or a library's; this includes Python objects that extension
//! code creates through the C API. It is evaluated on the raw frames, without symbolizing
//! (symbolizing every site of every test only to learn its origin cost milliseconds a test):
//! symbolizing gives every address at least one frame of its object's kind, so the answer is
//! the same. A native address in no loaded object counts as native code, so when in doubt the
//! scan runs.

use std::sync::Arc;

use crate::report::InterpreterModules;
use crate::symbolize::ModuleMap;

use crate::capture::Frame;

/// Answers "is this site's origin native code?" for the stacks of one leak scan.
pub(crate) struct NativeOrigins<'a> {
    modules: Arc<ModuleMap>,
    interpreter: &'a InterpreterModules,
    /// Per object of `modules`: is it the interpreter (None: not asked yet).
    is_interpreter: Vec<Option<bool>>,
}

impl<'a> NativeOrigins<'a> {
    /// Over the objects loaded now.
    pub(crate) fn new(interpreter: &'a InterpreterModules) -> NativeOrigins<'a> {
        NativeOrigins::with_modules(Arc::new(ModuleMap::current_process_cached()), interpreter)
    }

    /// Over the objects of `modules` (a capture's module map, for a report).
    pub(crate) fn with_modules(
        modules: Arc<ModuleMap>,
        interpreter: &'a InterpreterModules,
    ) -> NativeOrigins<'a> {
        NativeOrigins {
            is_interpreter: vec![None; modules.modules().len()],
            modules,
            interpreter,
        }
    }

    /// Is the innermost frame of `stack` (allocating frame first) outside the interpreter a
    /// native one?
    pub(crate) fn is_native<'f>(&mut self, stack: impl Iterator<Item = &'f Frame>) -> bool {
        for frame in stack {
            match frame {
                Frame::Python { .. } => return false,
                Frame::Native(address) => {
                    if !self.in_interpreter(*address) {
                        return true;
                    }
                }
            }
        }
        false
    }

    fn in_interpreter(&mut self, address: usize) -> bool {
        // A return address points after the call: the call itself is one byte before.
        let Some((module, _)) = self.modules.lookup(address.saturating_sub(1) as u64) else {
            return false;
        };
        let objects = self.modules.modules();
        let Some(i) = objects.iter().position(|m| std::ptr::eq(m, module)) else {
            return false;
        };
        *self.is_interpreter[i].get_or_insert_with(|| self.interpreter.contains(&objects[i].path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::Module;

    fn object(path: &str, start: u64) -> Module {
        Module {
            path: path.into(),
            base: start,
            ranges: std::iter::once(start..start + 0x1000).collect(),
            build_id: None,
            debuglink: None,
        }
    }

    fn python(code: usize) -> Frame {
        Frame::Python {
            function: format!("f{code}"),
            filename: "t.py".to_string(),
            line: 1,
        }
    }

    #[test]
    fn the_innermost_frame_outside_the_interpreter_decides() {
        let interpreter = InterpreterModules::new(Some(std::path::Path::new("/usr/bin/python3")));
        let modules = ModuleMap::new(vec![
            object("/usr/lib/libpython3.11.so.1.0", 0x10000),
            object("/site-packages/ext.cpython-311.so", 0x20000),
        ]);
        let mut origins = NativeOrigins::with_modules(Arc::new(modules), &interpreter);
        let (in_python, in_ext) = (Frame::Native(0x10100), Frame::Native(0x20100));
        // An extension called the C API (PyList_Append → ... → PyObject_Malloc): native.
        assert!(origins.is_native([&in_python, &in_ext, &python(1)].into_iter()));
        // Python code made the object: the interpreter's frames lead to a Python frame.
        assert!(!origins.is_native([&in_python, &python(1), &in_ext].into_iter()));
        assert!(!origins.is_native([&python(1)].into_iter()));
        // Only interpreter frames, or none: not native (the report shows no native frame).
        assert!(!origins.is_native([&in_python].into_iter()));
        assert!(!origins.is_native(std::iter::empty()));
        // An address in no loaded object is native code, as the report shows it ("??").
        assert!(origins.is_native([&in_python, &Frame::Native(0x90000)].into_iter()));
        // A return address at an object's very end belongs to its last instruction.
        assert!(!origins.is_native([&Frame::Native(0x11000), &python(2)].into_iter()));
    }
}
