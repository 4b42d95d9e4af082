//! The leak scan, for `--native-leaks`: classify the tracked test's live blocks by
//! reachability before tracking stops.

use heapgate_core::capture::{self, LeakKinds, PoolLayout};
use libc::{c_uint, size_t};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::TrackingError;

type ScanCallback = extern "C" fn(usize, *const usize, usize) -> *mut ffi::PyObject;

extern "C" {
    fn hg_py_gc_heads(out: *mut usize, cap: size_t) -> size_t;
    fn hg_py_pool_layout(pool_size: *mut size_t, overhead: *mut size_t, shift: *mut c_uint);
    fn hg_py_make_scan_function(
        module: *mut ffi::PyObject,
        callback: ScanCallback,
    ) -> *mut ffi::PyObject;
}

fn pool_layout() -> PoolLayout {
    let (mut pool_size, mut overhead, mut alignment_shift) = (0, 0, 0);
    // SAFETY: the shim writes three integers.
    unsafe { hg_py_pool_layout(&mut pool_size, &mut overhead, &mut alignment_shift) };
    PoolLayout {
        pool_size,
        overhead,
        alignment_shift,
    }
}

/// Addresses of the GC heads of every object the cyclic GC tracks.
fn gc_heads(_py: Python<'_>) -> Vec<usize> {
    let mut heads = vec![0usize; 1 << 16];
    loop {
        // SAFETY: the GIL is held (the `Python` token); the shim writes at most `len` entries.
        let n = unsafe { hg_py_gc_heads(heads.as_mut_ptr(), heads.len()) };
        if n <= heads.len() {
            heads.truncate(n);
            return heads;
        }
        heads = vec![0usize; n + n / 4];
    }
}

pub(crate) fn kinds_to_dict<'py>(
    py: Python<'py>,
    kinds: &LeakKinds,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, tally) in [
        ("definitely_lost", kinds.definitely_lost),
        ("indirectly_lost", kinds.indirectly_lost),
        ("still_reachable", kinds.still_reachable),
        ("possibly_lost", kinds.possibly_lost),
    ] {
        d.set_item(format!("{name}_bytes"), tally.bytes)?;
        d.set_item(format!("{name}_count"), tally.count)?;
    }
    Ok(d)
}

fn scan(py: Python<'_>, stack_from: usize, registers: &[usize]) -> PyResult<Py<PyDict>> {
    let heads = gc_heads(py);
    let kinds = capture::scan_leaks(&heads, stack_from, registers, Some(pool_layout()))
        .map_err(|e| TrackingError::new_err(e.to_string()))?;
    Ok(kinds_to_dict(py, &kinds)?.unbind())
}

/// Called by the C entry (`scan_leaks` in Python), which holds the GIL.
extern "C" fn scan_callback(
    stack_from: usize,
    registers: *const usize,
    n: usize,
) -> *mut ffi::PyObject {
    // SAFETY: the interpreter called the C entry with the GIL held, and it calls us directly.
    let py = unsafe { Python::assume_attached() };
    // SAFETY: the C entry passes its jmp_buf, alive for this call, as `n` words.
    let registers = unsafe { std::slice::from_raw_parts(registers, n) };
    match scan(py, stack_from, registers) {
        Ok(dict) => dict.into_ptr(),
        Err(e) => {
            e.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Adds `scan_leaks()`: classify the tracked test's live blocks (call after `gc.collect()`,
/// before `stop`). Returns totals `{definitely_lost_bytes, definitely_lost_count, ...}`; per
/// site figures appear in the report's sites.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // SAFETY: the shim builds a builtin function object bound to `m` (a new reference).
    let function = unsafe {
        Bound::from_owned_ptr_or_err(m.py(), hg_py_make_scan_function(m.as_ptr(), scan_callback))?
    };
    m.add("scan_leaks", function)
}
