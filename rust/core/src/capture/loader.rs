//! Learning of objects the program loads, without standing in for the caller of the loader.
//!
//! glibc's `dlopen`, `dlmopen`, `dlsym` and `dlvsym` read their return address to find the
//! calling object: `dlopen` searches that object's RPATH/RUNPATH (with its `$ORIGIN`), and
//! `dlsym(RTLD_NEXT, ...)` looks after it. A hook that *calls* them would make heapgate the
//! caller. So their GOT entries point at the trampolines below, which *jump* to the C
//! library with the caller's return address untouched:
//! - `dlopen`/`dlmopen`: note that objects may have changed, then jump. The tracked
//!   allocation hooks see the note and patch what is new ([`super::session::sync_objects_if_changed`]).
//! - `dlsym`/`dlvsym`: patch what was loaded since the last look, then jump. A function of a
//!   new library is reached through `dlsym` (ctypes, Python's imports, `dlopen` + `dlsym`
//!   in C), so the library is patched before its first call.
//!
//! Test start patches too, and the walk itself is cheap when nothing changed (the loader's
//! add/remove counters, see [`super::elf_got::patch_loaded_objects`]).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Set by the `dlopen`/`dlmopen` trampolines (one byte store), cleared by the next walk.
static OBJECTS_MAY_HAVE_CHANGED: AtomicU8 = AtomicU8::new(0);

/// The C library's functions the trampolines jump to (our own GOT is never patched).
static REAL_DLOPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_DLMOPEN: AtomicUsize = AtomicUsize::new(0);
static REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);
static REAL_DLVSYM: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    fn dlmopen(
        namespace: libc::Lmid_t,
        file: *const libc::c_char,
        flags: libc::c_int,
    ) -> *mut libc::c_void;
    fn dlvsym(
        handle: *mut libc::c_void,
        name: *const libc::c_char,
        version: *const libc::c_char,
    ) -> *mut libc::c_void;
}

/// Fill in the trampolines' targets. Must run before any GOT entry points at them.
pub(crate) fn init() {
    REAL_DLOPEN.store(libc::dlopen as *const () as usize, Ordering::SeqCst);
    REAL_DLMOPEN.store(dlmopen as *const () as usize, Ordering::SeqCst);
    REAL_DLSYM.store(libc::dlsym as *const () as usize, Ordering::SeqCst);
    REAL_DLVSYM.store(dlvsym as *const () as usize, Ordering::SeqCst);
}

/// Did a `dlopen`/`dlmopen` run since the last call? Clears the note.
#[inline]
pub(crate) fn take_change_note() -> bool {
    OBJECTS_MAY_HAVE_CHANGED.load(Ordering::Relaxed) != 0
        && OBJECTS_MAY_HAVE_CHANGED.swap(0, Ordering::AcqRel) != 0
}

/// Leave the note for a later walk (this one could not run).
pub(crate) fn keep_change_note() {
    OBJECTS_MAY_HAVE_CHANGED.store(1, Ordering::Release);
}

/// Called by the `dlsym`/`dlvsym` trampolines before they jump to the C library; leaves
/// `errno` as the caller had it.
extern "C" fn before_symbol_lookup() {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    let errno = unsafe { *libc::__errno_location() };
    super::sync_objects();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

extern "C" {
    /// `dlopen` for other objects' GOTs (same signature).
    pub(crate) fn heapgate_dlopen_trampoline();
    /// `dlmopen` for other objects' GOTs (same signature).
    pub(crate) fn heapgate_dlmopen_trampoline();
    /// `dlsym` for other objects' GOTs (same signature).
    pub(crate) fn heapgate_dlsym_trampoline();
    /// `dlvsym` for other objects' GOTs (same signature).
    pub(crate) fn heapgate_dlvsym_trampoline();
}

/// The trampolines' assembly around each architecture's instructions: `$at` is the assembler's
/// type prefix (`@`, or `%` where `@` starts a comment), `note` and `sync` the bodies of the
/// note-and-jump and sync-and-jump trampolines (each ends with the jump to the real function).
macro_rules! trampolines {
    (at: $at:literal, note: [$($note:literal,)*], sync: [$($sync:literal,)*] $(, $options:ident($($option:tt)*))?) => {
        std::arch::global_asm!(
            concat!(".pushsection .text.heapgate_trampolines,\"ax\",", $at, "progbits"),
            ".macro HEAPGATE_ENTRY name",
            ".p2align 4",
            ".globl \\name",
            ".hidden \\name",
            concat!(".type \\name,", $at, "function"),
            "\\name:",
            ".cfi_startproc",
            ".endm",
            ".macro HEAPGATE_NOTE_AND_JUMP name, real",
            "HEAPGATE_ENTRY \\name",
            $($note,)*
            ".cfi_endproc",
            ".size \\name, .-\\name",
            ".endm",
            ".macro HEAPGATE_SYNC_AND_JUMP name, real",
            "HEAPGATE_ENTRY \\name",
            $($sync,)*
            ".cfi_endproc",
            ".size \\name, .-\\name",
            ".endm",
            "HEAPGATE_NOTE_AND_JUMP heapgate_dlopen_trampoline, {dlopen}",
            "HEAPGATE_NOTE_AND_JUMP heapgate_dlmopen_trampoline, {dlmopen}",
            "HEAPGATE_SYNC_AND_JUMP heapgate_dlsym_trampoline, {dlsym}",
            "HEAPGATE_SYNC_AND_JUMP heapgate_dlvsym_trampoline, {dlvsym}",
            ".purgem HEAPGATE_NOTE_AND_JUMP",
            ".purgem HEAPGATE_SYNC_AND_JUMP",
            ".purgem HEAPGATE_ENTRY",
            ".popsection",
            changed = sym OBJECTS_MAY_HAVE_CHANGED,
            sync = sym before_symbol_lookup,
            dlopen = sym REAL_DLOPEN,
            dlmopen = sym REAL_DLMOPEN,
            dlsym = sym REAL_DLSYM,
            dlvsym = sym REAL_DLVSYM,
            $($options($($option)*),)?
        );
    };
}

// x86-64: the caller's return address is at (%rsp) on entry and stays there; argument
// registers are saved around our call and restored before the jump.
#[cfg(target_arch = "x86_64")]
trampolines!(
    at: "@",
    note: [
        "endbr64",
        "movb $1, {changed}(%rip)",
        "jmp *\\real(%rip)",
    ],
    sync: [
        "endbr64",
        "push %rdi",
        ".cfi_adjust_cfa_offset 8",
        "push %rsi",
        ".cfi_adjust_cfa_offset 8",
        "push %rdx",
        ".cfi_adjust_cfa_offset 8",
        "push %rcx",
        ".cfi_adjust_cfa_offset 8",
        "push %r8",
        ".cfi_adjust_cfa_offset 8",
        "push %r9",
        ".cfi_adjust_cfa_offset 8",
        // 8 (return address) + 48 pushed + 8 = a 16-byte aligned call.
        "sub $8, %rsp",
        ".cfi_adjust_cfa_offset 8",
        "call {sync}",
        "add $8, %rsp",
        ".cfi_adjust_cfa_offset -8",
        "pop %r9",
        ".cfi_adjust_cfa_offset -8",
        "pop %r8",
        ".cfi_adjust_cfa_offset -8",
        "pop %rcx",
        ".cfi_adjust_cfa_offset -8",
        "pop %rdx",
        ".cfi_adjust_cfa_offset -8",
        "pop %rsi",
        ".cfi_adjust_cfa_offset -8",
        "pop %rdi",
        ".cfi_adjust_cfa_offset -8",
        "jmp *\\real(%rip)",
    ],
    options(att_syntax)
);

// aarch64: the caller's return address is in x30 on entry; it and the argument registers
// are saved around our call and restored before the jump (through x16, the IP0 scratch).
#[cfg(target_arch = "aarch64")]
trampolines!(
    at: "%",
    note: [
        "hint #34",
        "adrp x16, {changed}",
        "mov w17, #1",
        "strb w17, [x16, :lo12:{changed}]",
        "adrp x16, \\real",
        "ldr x16, [x16, :lo12:\\real]",
        "br x16",
    ],
    sync: [
        "hint #34",
        "stp x29, x30, [sp, #-80]!",
        ".cfi_def_cfa_offset 80",
        ".cfi_offset x29, -80",
        ".cfi_offset x30, -72",
        "mov x29, sp",
        "stp x0, x1, [sp, #16]",
        "stp x2, x3, [sp, #32]",
        "stp x4, x5, [sp, #48]",
        "stp x6, x7, [sp, #64]",
        "bl {sync}",
        "ldp x0, x1, [sp, #16]",
        "ldp x2, x3, [sp, #32]",
        "ldp x4, x5, [sp, #48]",
        "ldp x6, x7, [sp, #64]",
        "ldp x29, x30, [sp], #80",
        ".cfi_def_cfa_offset 0",
        ".cfi_restore x29",
        ".cfi_restore x30",
        "adrp x16, \\real",
        "ldr x16, [x16, :lo12:\\real]",
        "br x16",
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    type Dlsym = unsafe extern "C" fn(*mut libc::c_void, *const libc::c_char) -> *mut libc::c_void;
    type Dlopen = unsafe extern "C" fn(*const libc::c_char, libc::c_int) -> *mut libc::c_void;

    #[test]
    fn trampolines_reach_the_c_library_with_arguments_intact() {
        init();
        // SAFETY: the trampolines have dlsym's and dlopen's signatures.
        let (dlsym, dlopen) = unsafe {
            (
                std::mem::transmute::<unsafe extern "C" fn(), Dlsym>(heapgate_dlsym_trampoline),
                std::mem::transmute::<unsafe extern "C" fn(), Dlopen>(heapgate_dlopen_trampoline),
            )
        };
        // SAFETY: plain lookups of C library symbols by NUL-terminated names.
        unsafe {
            let direct = libc::dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr());
            assert!(!direct.is_null());
            assert_eq!(dlsym(libc::RTLD_DEFAULT, c"malloc".as_ptr()), direct);
            OBJECTS_MAY_HAVE_CHANGED.store(0, Ordering::SeqCst);
            let handle = dlopen(c"libc.so.6".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
            assert!(!handle.is_null());
            assert!(take_change_note(), "dlopen trampoline leaves the note");
            assert!(!take_change_note(), "the note is taken once");
            assert_eq!(
                dlsym(handle, c"free".as_ptr()),
                libc::dlsym(handle, c"free".as_ptr())
            );
            libc::dlclose(handle);
        }
    }
}
