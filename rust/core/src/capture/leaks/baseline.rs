//! The tracking thread's stack as it was when the test's tracking started.
//!
//! A word of that stack that still holds the same value when the leak scan reads it was
//! written before the test allocated anything, so it cannot refer to one of the test's blocks:
//! only to memory a block occupies now that held something else then. Such words are common:
//! pymalloc and glibc hand out the most recently freed block of a size first, so the address
//! of an object the harness dropped just before the test (left in a slot of a frame that has
//! not run since, such as pytest's call of the test hook) is often the address of the test's
//! first block of that size. One hid the dict of `leak_dict_behind_a_gc_link` in four
//! processes in ten on CPython 3.13 (`tests/test_leaks.py`).
//!
//! The one way a word can be a reference and yet unchanged: it was rewritten during the test
//! with the value it had (a block at the address of the one it named before). The scan then
//! reads it as stale; stack slots that old belong to frames that have not run since, which
//! hold no references to the test's blocks.

use std::sync::Mutex;

use super::read_words;
use crate::capture::scrub::Scratch;

/// How much of the stack above the start is kept (pytest's live stack is 10–30 KiB).
const WINDOW_WORDS: usize = 64 * 1024 / std::mem::size_of::<usize>();

struct Baseline {
    pid: libc::pid_t,
    tid: libc::pid_t,
    /// Where the copy starts: an address in `start`'s own frame.
    from: usize,
    /// The copy, mapped privately: it holds the stale words it is there to recognise, so it
    /// must be no root itself (see [`copy_range`]).
    copy: Scratch,
    /// How many words of `copy` were read (the read stops where the stack's mapping ends).
    len: usize,
}

static BASELINE: Mutex<Option<Baseline>> = Mutex::new(None);

fn ids() -> (libc::pid_t, libc::pid_t) {
    // SAFETY: getpid and gettid have no preconditions.
    unsafe { (libc::getpid(), libc::gettid()) }
}

/// Keep the calling thread's stack from `from` (an address in the caller's frame) up. Called
/// as tracking starts, before the test's first allocation; the caller holds the capture guard
/// (the copy's buffer is no allocation of the test's).
pub(crate) fn remember(from: usize) {
    let (pid, tid) = ids();
    let mut baseline = BASELINE.lock().unwrap_or_else(|e| e.into_inner());
    if baseline.is_none() {
        let Some(copy) = Scratch::new(WINDOW_WORDS) else {
            return;
        };
        *baseline = Some(Baseline {
            pid,
            tid,
            from,
            copy,
            len: 0,
        });
    }
    let Some(b) = baseline.as_mut() else {
        return;
    };
    b.len = read_words(from, b.copy.words());
    (b.pid, b.tid, b.from) = (pid, tid, from);
}

/// Where the copy lies, to leave out of the scan's roots.
pub(super) fn copy_range() -> Option<(usize, usize)> {
    let baseline = BASELINE.lock().unwrap_or_else(|e| e.into_inner());
    baseline.as_ref().map(|b| b.copy.range())
}

/// The ranges of `region` (the calling thread's live stack, as the scan reads it) whose words
/// are unchanged since [`remember`], merged. Empty when the scan runs on another thread or in
/// another process (a fork) than the start.
pub(super) fn unchanged_ranges(region: (usize, usize)) -> Vec<(usize, usize)> {
    const WORD: usize = std::mem::size_of::<usize>();
    let mut baseline = BASELINE.lock().unwrap_or_else(|e| e.into_inner());
    let Some(b) = baseline.as_mut().filter(|b| (b.pid, b.tid) == ids()) else {
        return Vec::new();
    };
    let from = region.0.max(b.from).next_multiple_of(WORD);
    let to = region.1.min(b.from + b.len * WORD);
    if from >= to || (from - b.from) % WORD != 0 {
        return Vec::new();
    }
    let mut now = vec![0usize; (to - from) / WORD];
    let n = read_words(from, &mut now);
    let then = &b.copy.words()[(from - b.from) / WORD..];
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for (i, (was, is)) in then.iter().zip(&now[..n]).enumerate() {
        if was != is {
            continue;
        }
        let at = from + i * WORD;
        match ranges.last_mut() {
            Some(last) if last.1 == at => last.1 = at + WORD,
            _ => ranges.push((at, at + WORD)),
        }
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_words_that_changed_since_the_start_stay_roots() {
        // A stand-in for a stack: the baseline is taken, two words change, the rest do not.
        let mut stack = vec![7usize; 64];
        let start = stack.as_ptr() as usize;
        remember(start);
        stack[10] = 1;
        stack[11] = 2;
        stack[40] = 3;
        std::hint::black_box(&stack);
        let word = std::mem::size_of::<usize>();
        let end = start + stack.len() * word;
        let ranges = unchanged_ranges((start + word, end));
        assert_eq!(
            ranges,
            vec![
                (start + word, start + 10 * word),
                (start + 12 * word, start + 40 * word),
                (start + 41 * word, end),
            ]
        );
        // Another thread's scan keeps every word.
        let other = std::thread::spawn(move || unchanged_ranges((start, end)).len());
        assert_eq!(other.join().unwrap(), 0);
    }
}
