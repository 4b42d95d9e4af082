//! Hybrid stacks as reports show them: native frames symbolized (inline chains expanded),
//! Python frames as recorded, and the interpreter's own frames hidden.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use crate::capture::Frame;
use crate::symbolize::{ModuleMap, Symbolizer};

/// What kind of code a report frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Python code.
    Python,
    /// Native code outside the interpreter: extensions, libraries.
    Native,
    /// Native code of the interpreter itself (libpython or the python executable).
    Interpreter,
}

/// One frame of a resolved stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFrame {
    /// Function name (`??` when unknown; `name+0xoff` from a symbol table).
    pub function: String,
    /// Source file, when known.
    pub filename: Option<String>,
    /// Source line, when known.
    pub line: Option<u32>,
    /// The return address, for native frames.
    pub address: Option<usize>,
    /// The object the address belongs to, for native frames.
    pub module: Option<String>,
    /// True for a frame inlined into the next one.
    pub inlined: bool,
    /// Python, native, or the interpreter's own.
    pub kind: FrameKind,
}

/// Which loaded objects are the interpreter (their frames are hidden between Python frames).
#[derive(Debug, Default)]
pub struct InterpreterModules {
    paths: Vec<PathBuf>,
    /// Answers given so far: resolving a path costs a system call per component, and every
    /// native frame of every report asks.
    known: Mutex<FxHashMap<PathBuf, bool>>,
}

impl Clone for InterpreterModules {
    fn clone(&self) -> Self {
        InterpreterModules {
            paths: self.paths.clone(),
            known: Mutex::new(self.known.lock().unwrap_or_else(|e| e.into_inner()).clone()),
        }
    }
}

impl InterpreterModules {
    /// The interpreter is `executable` (resolved) plus any `libpython*.so*`.
    pub fn new(executable: Option<&Path>) -> InterpreterModules {
        let paths = executable
            .map(|p| vec![p.canonicalize().unwrap_or_else(|_| p.to_path_buf())])
            .unwrap_or_default();
        InterpreterModules {
            paths,
            known: Mutex::default(),
        }
    }

    /// Is `module` part of the interpreter?
    pub fn contains(&self, module: &Path) -> bool {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&answer) = known.get(module) {
            return answer;
        }
        let is_libpython = module
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libpython") && n.contains(".so"));
        let answer = is_libpython
            || self
                .paths
                .iter()
                .any(|p| p == module || module.canonicalize().is_ok_and(|m| &m == p));
        known.insert(module.to_path_buf(), answer);
        answer
    }
}

/// Resolve a captured stack (allocating frame first) into report frames, hiding the
/// interpreter's internals: an interpreter frame is shown only where a non-interpreter native
/// frame called it directly (the C-API function an extension called), or where nothing else
/// would be left to show.
pub fn resolve_stack(
    stack: &[Frame],
    modules: &ModuleMap,
    symbolizer: &Symbolizer,
    interpreter: &InterpreterModules,
) -> Vec<ReportFrame> {
    let mut resolved = Vec::with_capacity(stack.len());
    for frame in stack {
        match frame {
            Frame::Python {
                function,
                filename,
                line,
            } => resolved.push(ReportFrame {
                function: function.clone(),
                filename: Some(filename.clone()),
                line: Some(*line),
                address: None,
                module: None,
                inlined: false,
                kind: FrameKind::Python,
            }),
            Frame::Native(address) => {
                resolve_native(*address, modules, symbolizer, interpreter, &mut resolved)
            }
        }
    }
    hide_interpreter_frames(resolved)
}

fn resolve_native(
    address: usize,
    modules: &ModuleMap,
    symbolizer: &Symbolizer,
    interpreter: &InterpreterModules,
    out: &mut Vec<ReportFrame>,
) {
    // A return address points after the call: look up the call instruction itself.
    let Some((module, relative)) = modules.lookup(address.saturating_sub(1) as u64) else {
        out.push(ReportFrame {
            function: "??".to_string(),
            filename: None,
            line: None,
            address: Some(address),
            module: None,
            inlined: false,
            kind: FrameKind::Native,
        });
        return;
    };
    let kind = if interpreter.contains(&module.path) {
        FrameKind::Interpreter
    } else {
        FrameKind::Native
    };
    let module_name = module.path.display().to_string();
    for f in symbolizer.symbolize(module, relative) {
        let mut function = f.function.unwrap_or_else(|| "??".to_string());
        if let Some(offset) = f.offset {
            function = format!("{function}+{offset:#x}");
        }
        out.push(ReportFrame {
            function,
            filename: f.file,
            line: f.line.filter(|l| *l > 0),
            address: Some(address),
            module: Some(module_name.clone()),
            inlined: f.inlined,
            kind,
        });
    }
}

fn hide_interpreter_frames(frames: Vec<ReportFrame>) -> Vec<ReportFrame> {
    let keep: Vec<bool> = (0..frames.len())
        .map(|i| {
            frames[i].kind != FrameKind::Interpreter
                // The API entry point: the next (calling) frame that is not inlined into it is
                // foreign native code.
                || frames[i + 1..]
                    .iter()
                    .find(|f| !(f.kind == FrameKind::Interpreter && f.address == frames[i].address))
                    .is_some_and(|caller| caller.kind == FrameKind::Native)
                    && !frames[i].inlined
        })
        .collect();
    if !keep.iter().any(|k| *k) {
        return frames.into_iter().take(1).collect();
    }
    frames
        .into_iter()
        .zip(keep)
        .filter_map(|(f, k)| k.then_some(f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, kind: FrameKind, address: usize) -> ReportFrame {
        ReportFrame {
            function: function.to_string(),
            filename: None,
            line: None,
            address: (kind != FrameKind::Python).then_some(address),
            module: None,
            inlined: false,
            kind,
        }
    }

    fn names(frames: &[ReportFrame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_str()).collect()
    }

    #[test]
    fn interpreter_frames_between_python_and_extension_are_hidden() {
        use FrameKind::*;
        let stack = vec![
            frame("PyObject_Malloc", Interpreter, 1),
            frame("list_resize", Interpreter, 2),
            frame("PyList_Append", Interpreter, 3),
            frame("ext_fn", Native, 4),
            frame("cfunction_call", Interpreter, 5),
            frame("_PyObject_Call", Interpreter, 6),
            frame("test_x", Python, 0),
            frame("PyObject_Call", Interpreter, 7),
        ];
        assert_eq!(
            names(&hide_interpreter_frames(stack)),
            ["PyList_Append", "ext_fn", "test_x"]
        );
    }

    #[test]
    fn a_python_allocation_shows_python_frames_only() {
        use FrameKind::*;
        let stack = vec![
            frame("PyObject_Malloc", Interpreter, 1),
            frame("bytearray_new", Interpreter, 2),
            frame("helper", Python, 0),
            frame("test_x", Python, 0),
        ];
        assert_eq!(names(&hide_interpreter_frames(stack)), ["helper", "test_x"]);
    }

    #[test]
    fn an_all_interpreter_stack_keeps_its_top_frame() {
        use FrameKind::*;
        let stack = vec![
            frame("PyObject_Malloc", Interpreter, 1),
            frame("main", Interpreter, 2),
        ];
        assert_eq!(names(&hide_interpreter_frames(stack)), ["PyObject_Malloc"]);
    }

    #[test]
    fn library_frames_are_always_kept() {
        use FrameKind::*;
        let stack = vec![
            frame("strdup", Native, 1),
            frame("ext_fn", Native, 2),
            frame("test_x", Python, 0),
        ];
        assert_eq!(
            names(&hide_interpreter_frames(stack)),
            ["strdup", "ext_fn", "test_x"]
        );
    }
}
