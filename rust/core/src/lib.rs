//! heapgate's core: exact in-process allocation capture for pytest, with no Python objects.
//!
//! - [`model`]: the one result model (sites, counts, leak kinds, the frame trie) that every
//!   layer below shares.
//! - [`capture`]: GOT hooks in every loaded ELF object, per-thread charge, and the
//!   [`capture::Tracker`] that turns events into a test's peak and leaks.
//! - [`symbolize`]: module map, deferred and cached DWARF/symbol-table/debuginfod symbolizer,
//!   and a binutils-compatible [`symbolize::addr2line_output`].
//! - [`record`]: the capture file (one test's result, symbolizable later, elsewhere).
//! - [`report`]: hybrid stacks resolved for reports, interpreter internals hidden; failure
//!   text, folded stacks, flamegraph SVG, session JSON and JUnit.
//!
//! The pyo3 layer (`rust/python`) is the only code that knows the interpreter; it plugs in
//! through [`capture::PythonStackSource`].
#![deny(missing_docs)]

pub mod capture;
pub mod model;
pub mod record;
pub mod report;
pub mod symbolize;
