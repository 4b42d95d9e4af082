//! What the capture layer knows of each architecture, as plain data and checks in one place
//! (the loader trampolines, which are code, stay in `loader.rs`).

/// Relocation types that fill a GOT slot with a symbol's address (`GLOB_DAT`, `JUMP_SLOT`).
#[cfg(target_arch = "x86_64")]
pub const GOT_RELOCATIONS: [u32; 2] = [
    6, /* R_X86_64_GLOB_DAT */
    7, /* R_X86_64_JUMP_SLOT */
];
/// Relocation types that fill a GOT slot with a symbol's address (`GLOB_DAT`, `JUMP_SLOT`).
#[cfg(target_arch = "aarch64")]
pub const GOT_RELOCATIONS: [u32; 2] = [
    1025, /* R_AARCH64_GLOB_DAT */
    1026, /* R_AARCH64_JUMP_SLOT */
];

/// Bytes below a thread's stack pointer that a leaf function may use without moving it (the
/// x86-64 System V red zone). AArch64 has none; the same bytes are kept there too, which only
/// adds roots.
pub const STACK_RED_ZONE: usize = 128;

/// x86-64 glibc puts a thread's control block at the top of its stack mapping; it starts
/// with `tcb` and (two words on) `self`, both pointing at itself. Given the top `words` of a
/// mapping that ends at `end`, is that fingerprint there?
pub fn has_thread_control_block(words: &[usize], end: usize) -> bool {
    let word = std::mem::size_of::<usize>();
    let base = end - std::mem::size_of_val(words);
    words
        .iter()
        .enumerate()
        .take(words.len().saturating_sub(2))
        .any(|(i, w)| *w == base + i * word && words[i + 2] == *w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_control_block_is_recognised() {
        let end = 0x2000;
        let mut words = vec![0usize; 16];
        let at = end - 16 * 8 + 5 * 8;
        words[5] = at;
        words[7] = at;
        assert!(has_thread_control_block(&words, end));
        words[7] = 0;
        assert!(!has_thread_control_block(&words, end));
    }
}
