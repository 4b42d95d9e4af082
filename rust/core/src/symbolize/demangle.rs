//! Function names as binutils, gdb and the C++ runtime print them.
//!
//! C++ names go through the C++ runtime's own `__cxa_demangle` (libstdc++'s copy of
//! libiberty's demangler, the code binutils and gdb use), looked up at run time so heapgate
//! never links libstdc++; `cpp_demangle` is the fallback where it cannot be loaded (and for
//! the rare name it refuses). Rust names go through `rustc-demangle`.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::OnceLock;

use addr2line::gimli;

/// `char *__cxa_demangle(const char *mangled, char *buffer, size_t *length, int *status)`.
type CxaDemangle =
    unsafe extern "C" fn(*const c_char, *mut c_char, *mut libc::size_t, *mut c_int) -> *mut c_char;

/// The C++ runtime's demangler, if its library can be loaded (once per process).
fn cxa_demangle_fn() -> Option<CxaDemangle> {
    static FUNCTION: OnceLock<Option<CxaDemangle>> = OnceLock::new();
    *FUNCTION.get_or_init(|| {
        let library = c"libstdc++.so.6";
        // SAFETY: dlopen/dlsym with NUL-terminated names. An already loaded libstdc++ is
        // reused (RTLD_NOLOAD); otherwise it is loaded locally, so its symbols do not join
        // the global scope of the process being symbolized in. The handle is kept for the
        // process's life (the function must stay mapped).
        unsafe {
            let mut handle = libc::dlopen(
                library.as_ptr(),
                libc::RTLD_NOW | libc::RTLD_LOCAL | libc::RTLD_NOLOAD,
            );
            if handle.is_null() {
                handle = libc::dlopen(library.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
            }
            if handle.is_null() {
                return None;
            }
            let symbol = libc::dlsym(handle, c"__cxa_demangle".as_ptr());
            (!symbol.is_null())
                .then(|| std::mem::transmute::<*mut libc::c_void, CxaDemangle>(symbol))
        }
    })
}

/// `name` demangled by the C++ runtime, or `None` (not loadable, or the name refused).
fn cxa_demangle(name: &str) -> Option<String> {
    let function = cxa_demangle_fn()?;
    let mangled = CString::new(name).ok()?;
    let mut status: c_int = 0;
    // SAFETY: a NUL-terminated input; with a null buffer the function returns a new malloc'd
    // string (or null) that we copy and free.
    unsafe {
        let out = function(
            mangled.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut status,
        );
        if out.is_null() {
            return None;
        }
        let text = (status == 0).then(|| CStr::from_ptr(out).to_string_lossy().into_owned());
        libc::free(out.cast());
        text
    }
}

/// Is the C++ runtime's demangler in use (rather than the `cpp_demangle` fallback)?
pub fn uses_cxa_demangle() -> bool {
    cxa_demangle_fn().is_some()
}

/// C++ through the runtime's demangler, else `cpp_demangle`.
fn cpp(name: &str) -> Option<String> {
    cxa_demangle(name).or_else(|| {
        cpp_demangle::Symbol::new(name)
            .ok()
            .and_then(|s| s.demangle(&cpp_demangle::DemangleOptions::default()).ok())
    })
}

fn rust(name: &str) -> Option<String> {
    rustc_demangle::try_demangle(name)
        .ok()
        .map(|d| format!("{d:#}"))
}

/// Demangles a C++ or Rust symbol; other names come back unchanged.
pub(crate) fn demangle(name: &str, language: Option<gimli::DwLang>) -> String {
    let demangled = match language {
        Some(gimli::DW_LANG_Rust) => rust(name),
        _ if name.starts_with("_R") => rust(name),
        // Only mangled names: the runtime's demangler would read a plain `i` as a type.
        _ if name.starts_with("_Z") => match language {
            None => rust(name).or_else(|| cpp(name)),
            Some(_) => cpp(name),
        },
        _ => None,
    };
    demangled.unwrap_or_else(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles_cpp_rust_and_leaves_c_alone() {
        assert_eq!(demangle("_Z3fooi", None), "foo(int)");
        assert_eq!(
            demangle("_Z3fooi", Some(gimli::DW_LANG_C_plus_plus_14)),
            "foo(int)"
        );
        assert_eq!(demangle("_Z3fooi.isra.0", None), "foo(int) [clone .isra.0]");
        assert_eq!(
            demangle("_ZN4core3fmt5write17h0123456789abcdefE", None),
            "core::fmt::write"
        );
        assert_eq!(demangle("_RNvCs1234_7mycrate3foo", None), "mycrate::foo");
        assert_eq!(demangle("malloc", Some(gimli::DW_LANG_C11)), "malloc");
        assert_eq!(demangle("i", None), "i");
        assert_eq!(demangle("_Znot valid", None), "_Znot valid");
    }

    /// The names of issue 11 where `cpp_demangle` and binutils differ: the runtime's
    /// demangler gives binutils' text (standard substitutions, literals, reference kinds).
    #[test]
    fn cpp_names_read_as_binutils_prints_them() {
        assert!(uses_cxa_demangle(), "libstdc++.so.6 is on this machine");
        let cpp = Some(gimli::DW_LANG_C_plus_plus_14);
        assert_eq!(
            demangle("_ZNSi5seekgElSt12_Ios_Seekdir", cpp),
            "std::istream::seekg(long, std::_Ios_Seekdir)"
        );
        assert_eq!(
            demangle(
                "_ZNSt6chrono8durationIlSt5ratioILl1ELl1000000000EEE5countEv",
                cpp
            ),
            "std::chrono::duration<long, std::ratio<1l, 1000000000l> >::count()"
        );
        assert_eq!(
            demangle("_ZNSt5tupleIJEEC2EOS0_", cpp),
            "std::tuple<>::tuple(std::tuple<>&&)"
        );
        // The libstdc++ name cpp_demangle cannot read at all (`sr` with template args).
        assert_eq!(
            demangle(
                "_ZSt9__fill_a1IPiiEN9__gnu_cxx11__enable_ifIXsrSt11__is_scalarIT0_E7__valueEvE6__typeET_S8_RKS4_",
                cpp
            ),
            "__gnu_cxx::__enable_if<std::__is_scalar<int>::__value, void>::__type std::__fill_a1<int*, int>(int*, int*, int const&)"
        );
    }

    /// Without the runtime's demangler the fallback still reads names, in its own style.
    #[test]
    fn cpp_demangle_is_the_fallback() {
        assert_eq!(
            cpp_demangle::Symbol::new("_ZNSi5seekgElSt12_Ios_Seekdir")
                .unwrap()
                .demangle(&cpp_demangle::DemangleOptions::default())
                .unwrap(),
            "std::basic_istream<char, std::char_traits<char> >::seekg(long, std::_Ios_Seekdir)"
        );
    }
}
