//! heapgate's core: exact in-process allocation capture for pytest, with no Python objects.
//!
//! - [`capture`]: GOT hooks in every loaded ELF object, per-thread charge, and the
//!   [`capture::Tracker`] that turns events into a test's peak and leaks.
//!
//! The pyo3 layer (`rust/python`) is the only code that knows the interpreter; it plugs in
//! through [`capture::PythonStackSource`].
#![deny(missing_docs)]

pub mod capture;
