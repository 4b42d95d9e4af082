//! Hybrid stacks: the Python frames a thread runs replace, in place, the native interpreter
//! frames that run them. Each C-level call of the frame-evaluation function runs one group
//! of Python frames (the innermost group first).

use super::tracker::FrameKey;
use super::{PyFrameRef, MAX_NATIVE_FRAMES, MAX_PYTHON_FRAMES};

/// A merged stack: at most every native and every Python frame.
pub type Keys = arrayvec::ArrayVec<FrameKey, { MAX_NATIVE_FRAMES + MAX_PYTHON_FRAMES }>;

/// Merge `native` return addresses (innermost first) with `python` frames (innermost first,
/// `group_end` set on the last frame of each interpreter call). Every native frame that
/// `is_eval` recognises becomes its group of Python frames. Python frames left over (the
/// unwind stopped early or failed) are appended; with `python_complete`, native frames below
/// the last group are dropped (they are below the test).
pub fn merge(
    native: &[usize],
    python: &[PyFrameRef],
    is_eval: impl Fn(usize) -> bool,
    python_complete: bool,
    out: &mut Keys,
) {
    debug_assert!(native.len() <= MAX_NATIVE_FRAMES && python.len() <= MAX_PYTHON_FRAMES);
    let mut next = 0;
    for &ip in native {
        if is_eval(ip) && next < python.len() {
            while next < python.len() {
                out.push(python[next].key());
                next += 1;
                if python[next - 1].group_end != 0 {
                    break;
                }
            }
            if next == python.len() && python_complete {
                return;
            }
        } else if !is_eval(ip) || !python_complete {
            out.push(FrameKey::Native(ip));
        }
    }
    out.extend(python[next..].iter().map(PyFrameRef::key));
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVAL: usize = 0xe000;

    fn py(code: usize) -> FrameKey {
        FrameKey::Python { code, line: 1 }
    }

    fn merged(
        native: &[usize],
        python: &[FrameKey],
        ends: &[bool],
        complete: bool,
    ) -> Vec<FrameKey> {
        let python: Vec<PyFrameRef> = python
            .iter()
            .zip(ends)
            .map(|(k, end)| match k {
                FrameKey::Python { code, line } => PyFrameRef {
                    code: *code,
                    line: *line,
                    group_end: u32::from(*end),
                    table: 0,
                    offset: 0,
                },
                FrameKey::Native(_) => unreachable!("python frames only"),
            })
            .collect();
        let mut out = Keys::new();
        merge(native, &python, |ip| ip == EVAL, complete, &mut out);
        out.to_vec()
    }

    #[test]
    fn each_interpreter_frame_becomes_its_python_group() {
        // ext_fn <- cfunction_call <- EVAL(f2, f1) <- call <- EVAL(test) <- below test
        let native = [0x10, 0x20, EVAL, 0x30, EVAL, 0x40];
        let python = [py(2), py(1), py(0)];
        let ends = [false, true, true];
        assert_eq!(
            merged(&native, &python, &ends, true),
            [
                FrameKey::Native(0x10),
                FrameKey::Native(0x20),
                py(2),
                py(1),
                FrameKey::Native(0x30),
                py(0)
            ]
        );
    }

    #[test]
    fn without_a_complete_python_stack_native_frames_below_are_kept() {
        let native = [0x10, EVAL, 0x40];
        let python = [py(1)];
        assert_eq!(
            merged(&native, &python, &[true], false),
            [FrameKey::Native(0x10), py(1), FrameKey::Native(0x40)]
        );
    }

    #[test]
    fn python_frames_the_unwind_missed_are_appended() {
        let native = [0x10];
        let python = [py(1), py(0)];
        assert_eq!(
            merged(&native, &python, &[true, true], true),
            [FrameKey::Native(0x10), py(1), py(0)]
        );
    }

    #[test]
    fn a_native_thread_has_native_frames_only() {
        let native = [0x10, 0x20];
        assert_eq!(
            merged(&native, &[], &[], false),
            [FrameKey::Native(0x10), FrameKey::Native(0x20)]
        );
    }
}
