//! The leak scan, for `--native-leaks`: classify the tracked test's live blocks by
//! reachability before tracking stops.

use std::sync::atomic::{AtomicUsize, Ordering};

use heapgate_core::capture::{self, ObjectLayout, PoolLayout};
use libc::{c_int, c_uint, size_t};
use pyo3::ffi;
use pyo3::prelude::*;

use crate::capture_error;
use crate::results::LeakKinds;

type ScanCallback = extern "C" fn(usize, *const usize, usize) -> *mut ffi::PyObject;

extern "C" {
    fn hg_py_clear_free_lists() -> c_int;
    fn hg_py_empty_free_lists_on_call(function: *mut ffi::PyObject, on: c_int) -> c_int;
    fn hg_py_free_list_stale_slots(out: *mut usize, cap: size_t) -> size_t;
    fn hg_py_container_stale_slots(out: *mut usize, cap: size_t) -> size_t;
    fn hg_py_pool_layout(pool_size: *mut size_t, overhead: *mut size_t, shift: *mut c_uint);
    fn hg_py_code_layout(code_type: *mut usize, bytecode: *mut size_t);
    fn hg_py_values_tag() -> size_t;
    fn hg_py_runtime_state(start: *mut usize, end: *mut usize);
    fn hg_py_object_layout(out: *mut usize, cap: size_t) -> size_t;
    fn hg_py_collect_among(heads: *const usize, n: size_t) -> ffi::Py_ssize_t;
    fn hg_py_probe_buffered() -> c_int;
    fn hg_py_make_scan_function(
        module: *mut ffi::PyObject,
        callback: ScanCallback,
    ) -> *mut ffi::PyObject;
}

fn pool_layout() -> PoolLayout {
    let (mut pool_size, mut overhead, mut alignment_shift) = (0, 0, 0);
    let (mut code_type, mut code_bytecode) = (0, 0);
    // SAFETY: the shim writes five integers and returns a constant.
    let values_tag = unsafe {
        hg_py_pool_layout(&mut pool_size, &mut overhead, &mut alignment_shift);
        hg_py_code_layout(&mut code_type, &mut code_bytecode);
        hg_py_values_tag()
    };
    PoolLayout {
        pool_size,
        overhead,
        alignment_shift,
        code_type,
        code_bytecode,
        values_tag,
        objects: object_layout(),
    }
}

/// Where the interpreter keeps its runtime state, from the shim.
fn runtime_state() -> (usize, usize) {
    let (mut start, mut end) = (0, 0);
    // SAFETY: the shim writes two addresses.
    unsafe { hg_py_runtime_state(&mut start, &mut end) };
    (start, end)
}

/// Where CPython objects end in their blocks (see `ObjectLayout`), from the shim.
fn object_layout() -> Option<ObjectLayout> {
    let mut w = [0usize; 27];
    // SAFETY: the shim writes at most `w.len()` words and returns how many it wrote.
    let n = unsafe { hg_py_object_layout(w.as_mut_ptr(), w.len()) };
    (n == w.len()).then_some(ObjectLayout {
        type_type: w[0],
        generic_alloc: w[1],
        str_type: w[2],
        basicsize_at: w[3],
        itemsize_at: w[4],
        flags_at: w[5],
        alloc_at: w[6],
        dictoffset_at: w[7],
        gc_flag: w[8],
        preheader_flags: w[9],
        inline_values_flag: w[10],
        values_header: w[11],
        str_length_at: w[12],
        str_state_at: w[13],
        str_kind_bits: w[14],
        str_compact_bit: w[15],
        str_ascii_bit: w[16],
        str_ascii_header: w[17],
        str_compact_header: w[18],
        bytes_type: w[19],
        bytes_header: w[20],
        keys_header: w[21],
        keys_entry: w[22],
        keys_unicode_entry: w[23],
        keys_log2_size_at: w[24],
        keys_index_bytes_at: w[25],
        keys_kind_at: w[26],
    })
}

/// Room for the ranges of [`container_stale_slots`], grown to what a scan needed.
static SPARE_WORDS: AtomicUsize = AtomicUsize::new(4096);

/// Interpreter memory that holds no references and is quick to find (the unused slots of its
/// free-list arrays, the dead part of each thread's data stack, the padding in readline's
/// standard key maps and the unused slots of its history array and function map, see
/// [`readline`]), as (start, end) ranges. Called by the scan under the tracker's lock,
/// so it calls no Python code (which could start a collection) and never the loader.
fn stale_slots(_py: Python<'_>, readline: &Readline) -> Vec<(usize, usize)> {
    let mut words = vec![0usize; 2048];
    // SAFETY: the GIL is held (the `Python` token); the shim writes at most `len` words.
    let n = unsafe { hg_py_free_list_stale_slots(words.as_mut_ptr(), words.len()) };
    words.truncate(n.min(words.len()));
    words.extend(readline_keymap_padding(&readline.keymaps, false));
    words.extend(readline_history_spare(readline.history));
    words.extend(readline_funmap_spare(readline.funmap));
    tagged_pairs(words)
}

/// Every list's spare capacity, the dead slots of generators' and frame objects' frames that
/// do not run, buffered I/O objects' buffers (bytes), and the insertion-order bytes of dicts'
/// and instances' split values (3.11-3.13), as (start, end) ranges: a walk of all the interpreter's containers, so
/// asked for only when the scan reads the heap and anonymous memory (where they are). With them,
/// the padding in the key maps readline bound under its standard ones (malloc'd: some 13,000
/// ranges on bitarray's suite, which every scan sorted and copied when they came with
/// [`stale_slots`]).
fn container_stale_slots(_py: Python<'_>, readline: &Readline) -> Vec<(usize, usize)> {
    // Sized as the last scan needed.
    let mut spare = vec![0usize; SPARE_WORDS.load(Ordering::Relaxed)];
    loop {
        // SAFETY: the GIL is held (the `Python` token); the shim writes at most `len` words
        // and returns how many words all ranges need.
        let needed = unsafe { hg_py_container_stale_slots(spare.as_mut_ptr(), spare.len()) };
        if needed <= spare.len() {
            spare.truncate(needed);
            break;
        }
        // Lists may be made between the calls (none while we hold the GIL): leave room.
        spare.resize(needed + needed / 8, 0);
        SPARE_WORDS.store(spare.len(), Ordering::Relaxed);
    }
    spare.extend(readline_keymap_padding(&readline.keymaps, true));
    tagged_pairs(spare)
}

/// Pairs of words as ranges, held tagged (the scan's convention): a spare range of a leaked
/// list is an address inside that list's buffer, and must not read as a pointer to it.
fn tagged_pairs(mut words: Vec<usize>) -> Vec<(usize, usize)> {
    for w in words.iter_mut() {
        *w = capture::tagged(*w);
    }
    words
        .chunks_exact(2)
        .map(|pair| (pair[0], pair[1]))
        .collect()
}

/// What the scan needs to know of GNU readline, when the `readline` module is loaded (else
/// nothing): its standard key maps and the addresses of its exported `char *` variables that
/// point into its buffer of terminal capabilities (see [`term_string_addresses`]).
fn readline(py: Python<'_>) -> Readline {
    let Some(path) = py
        .import("sys")
        .and_then(|sys| sys.getattr("modules"))
        .and_then(|m| m.get_item("readline"))
        .and_then(|r| r.getattr("__file__"))
        .and_then(|f| f.extract::<String>())
        .ok()
    else {
        return Readline::default();
    };
    lookup_readline(path)
}

/// See [`readline`].
#[derive(Clone, Debug, Default)]
struct Readline {
    keymaps: Vec<usize>,
    /// `FUNMAP **funmap` (its address; 0: not found), see [`readline_funmap_spare`].
    funmap: usize,
    term_strings: Vec<usize>,
    /// `history_list` (a function) and `history_length` (an `int`), when both are found.
    history: Option<(usize, usize)>,
    /// Where the two pointers to readline's termcap buffer live (see [`readline_term_buffer`]).
    term_buffer_holders: Option<TermBufferHolders>,
    /// ncurses' `TERMINAL *cur_term` (its address; 0: not found), see [`ncurses_byte_buffers`].
    cur_term: usize,
}

/// ncurses' `_nc_globals` and GNU readline's writable segments (data and bss), as (start, end).
#[derive(Clone, Debug)]
struct TermBufferHolders {
    nc_globals: (usize, usize),
    readline: Vec<(usize, usize)>,
}

/// Bytes readline's `_rl_init_terminal_io` mallocs for the termcap entry `tgetent` may copy.
const TERM_BUFFER_REQUEST: usize = 4080;

/// GNU readline's termcap buffer: `_rl_init_terminal_io` mallocs 4080 bytes (readline 4.0 to
/// 8.2) and hands them to `tgetent`, whose ncurses emulation ignores them, so they are never
/// written and keep what the memory held before (a freed dict of the compiler's there hid up
/// to 50 leaked lists in most processes of benches/leak_precision.py's `same` workload, when
/// TERM names a terminfo entry). Text at most in any case, never a reference. readline keeps
/// the address in a static and ncurses in `_nc_globals` (`tgetent`'s cache): the block is the
/// one both point to whose chunk is that of a 4080-byte request. Returns its address.
fn readline_term_buffer(holders: Option<&TermBufferHolders>) -> Option<usize> {
    let holders = holders?;
    let word = std::mem::size_of::<usize>();
    // SAFETY: `_nc_globals`'s own bytes (its address and size from the loader), read under the
    // GIL, the only caller of readline (and so of its `tgetent` calls).
    let words_of = |(start, end): (usize, usize)| unsafe {
        std::slice::from_raw_parts(start as *const usize, (end - start) / word)
    };
    let mut in_ncurses: Vec<usize> = words_of(holders.nc_globals)
        .iter()
        .copied()
        .filter(|p| *p != 0 && *p % (2 * word) == 0)
        .collect();
    in_ncurses.sort_unstable();
    in_ncurses.dedup();
    let chunk = capture::chunk_for_request(TERM_BUFFER_REQUEST);
    holders
        .readline
        .iter()
        .flat_map(|segment| words_of(*segment).iter().copied())
        .filter(|p| in_ncurses.binary_search(p).is_ok())
        .find(|p| heap_chunk_size(*p) == Some(chunk))
}

/// ncurses' byte buffers: `tparm` keeps the format it analyses and the string it builds in
/// buffers it mallocs and grows (`fmt_buff`, `out_buff`), each beside its size in bytes, in
/// the terminal (`cur_term`, ncurses 6.3 and later) or in `_nc_globals` (before). They hold
/// characters only and are written only as far as the text goes: the rest keeps what the
/// memory held before (a freed dict of the compiler's there hid a leaked list when readline
/// set up the terminal). Found as a pointer followed by a size whose glibc chunk is that of a
/// request of that size; returns their addresses.
fn ncurses_byte_buffers(readline: &Readline) -> Vec<usize> {
    let word = std::mem::size_of::<usize>();
    let mut places = Vec::new();
    if let Some(holders) = &readline.term_buffer_holders {
        places.push(holders.nc_globals);
    }
    if readline.cur_term != 0 {
        // SAFETY: ncurses' exported `TERMINAL *cur_term`, read under the GIL, the only caller
        // of readline (and so of ncurses).
        let terminal = unsafe { *(readline.cur_term as *const usize) };
        // (A TERMINAL is under 1 KiB; a bigger size is no chunk of one.)
        if let Some(size) = heap_chunk_size(terminal).filter(|s| *s <= 1 << 16) {
            places.push((terminal, terminal + size - word));
        }
    }
    let mut out = Vec::new();
    for (start, end) in places {
        // SAFETY: `_nc_globals`'s own bytes, or the memory of the chunk `cur_term` points to
        // (up to its size field's end), read under the GIL as above.
        let words =
            unsafe { std::slice::from_raw_parts(start as *const usize, (end - start) / word) };
        for pair in words.windows(2) {
            let (buffer, bytes) = (pair[0], pair[1]);
            if buffer == 0 || buffer % (2 * word) != 0 || bytes == 0 || bytes > 1 << 20 {
                continue;
            }
            if heap_chunk_size(buffer) == Some(capture::chunk_for_request(bytes)) {
                out.push(buffer);
            }
        }
    }
    out
}

/// The size of the glibc chunk whose memory starts at `memory`, unless it is mmapped (or its
/// size field cannot be read).
fn heap_chunk_size(memory: usize) -> Option<usize> {
    let word = std::mem::size_of::<usize>();
    let size = capture::word_at(memory.checked_sub(word)?)?;
    (size & 2 == 0 && size & !7 >= 4 * word).then_some(size & !7)
}

/// Where readline's terminal capability strings are: `_rl_init_terminal_io` copies them, with
/// `tgetstr`, into a buffer of 2032 bytes it mallocs (and never clears) and keeps pointers to
/// them in variables some of which it exports. The buffer holds only characters; the part no
/// string was copied to keeps what the memory held before (old object addresses, which hid up
/// to 8 leaked lists in the processes of benches/leak_precision.py's `same` workload).
/// Returns the strings' current addresses (`term_strings`: the variables' addresses).
fn term_string_addresses(term_strings: &[usize]) -> Vec<usize> {
    term_strings
        .iter()
        // SAFETY: readline's exported `char *` variables (found by `lookup_readline`), read
        // under the GIL, the only caller of readline.
        .map(|v| unsafe { *(*v as *const usize) })
        .filter(|p| *p != 0)
        .collect()
}

/// GNU readline's history array: `add_history` mallocs room for 502 entries (readline 8) and
/// writes only the entries and the NULL after them, and CPython's `readline` module adds one
/// entry and clears it as it is imported (to tell libedit apart), so the array lives on with
/// nearly all of it never written: it keeps what the memory held before (4016 bytes; a freed
/// dict of the compiler's there hid five leaked lists in every process of
/// benches/leak_precision.py's `same` workload with pytest's logging plugin). Returns the
/// (start, end) word pair of what follows the NULL after the last entry.
fn readline_history_spare(history: Option<(usize, usize)>) -> Vec<usize> {
    let word = std::mem::size_of::<usize>();
    let Some((list, length)) = history else {
        return Vec::new();
    };
    // SAFETY: GNU readline's `HIST_ENTRY **history_list(void)` (found by `lookup_readline`),
    // which returns its array and does nothing else; its `int history_length`. The GIL holder
    // is the only caller of readline.
    let (array, entries) = unsafe {
        let history_list: extern "C" fn() -> usize = std::mem::transmute(list);
        (history_list(), *(length as *const libc::c_int))
    };
    let Ok(entries) = usize::try_from(entries) else {
        return Vec::new();
    };
    if array == 0 || array % word != 0 {
        return Vec::new();
    }
    // SAFETY: readline allocates the array with malloc (`xmalloc`) and keeps it allocated.
    let usable = unsafe { libc::malloc_usable_size(array as *mut libc::c_void) };
    let from = array + (entries + 1) * word;
    let to = array + usable / word * word;
    if from < to {
        vec![from, to]
    } else {
        Vec::new()
    }
}

/// GNU readline's function map: `rl_add_funmap_entry` mallocs 16 bytes (a name and a function)
/// for each bindable function, about 170 as readline starts, and keeps them in `funmap`, an
/// array it grows 64 entries at a time and writes only up to the NULL after the last entry.
/// The array's slots past that NULL, and each entry's chunk past its two words (8 bytes, or 24
/// in a chunk malloc did not split), keep what the memory held before (an entry's chunk named
/// a leaked list in every process of benches/leak_precision.py's `same` workload on 3.13).
/// Returns them as (start, end) word pairs.
fn readline_funmap_spare(funmap: usize) -> Vec<usize> {
    /// The array as last read (its address and words) and the answer for it: readline adds
    /// to the map only when a program binds a new function, and never frees an entry, so
    /// while the array reads the same its entries are the same blocks. Reading it word by
    /// word, with each entry's chunk size, took some 340 reads a scan (about 0.3 ms).
    static LAST: std::sync::Mutex<(usize, Vec<usize>, Vec<usize>)> =
        std::sync::Mutex::new((0, Vec::new(), Vec::new()));
    const ENTRY: usize = 16; // FUNMAP: name, function
    let word = std::mem::size_of::<usize>();
    let Some(array) = (funmap != 0).then(|| capture::word_at(funmap)).flatten() else {
        return Vec::new();
    };
    let Some(array_chunk) = (array != 0 && array % word == 0)
        .then(|| heap_chunk_size(array))
        .flatten()
    else {
        return Vec::new();
    };
    // The array's memory runs up to its chunk's end (the next chunk's size field excluded).
    let array_end = array + array_chunk - word;
    // readline grows it 64 entries at a time (some 170 are bound as it starts): a size far
    // beyond that is no funmap array's.
    const MOST_SLOTS: usize = 1 << 16;
    let mut slots = vec![0usize; ((array_end - array) / word).min(MOST_SLOTS)];
    let n = capture::read_words(array, &mut slots);
    slots.truncate(n);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if last.0 == array && last.1 == slots {
        return last.2.clone();
    }
    let mut out = Vec::new();
    for (i, &entry) in slots.iter().enumerate() {
        let slot = array + i * word;
        if entry == 0 {
            out.extend([slot + word, array_end]);
            break;
        }
        if let Some(chunk) = heap_chunk_size(entry)
            .filter(|c| entry % word == 0 && capture::chunk_holds_request(*c, ENTRY))
        {
            out.extend([entry + ENTRY, entry + chunk - word]);
        }
    }
    *last = (array, slots, out.clone());
    out
}

/// GNU readline's key maps: 257 entries of a type byte and a function pointer each, allocated
/// without being cleared, so the 7 padding bytes after each type keep what the memory held
/// before, seen to name the address of a leaked object. Returns the (start, end) word pairs of
/// every entry's first word (type and padding: no reference), for the standard maps
/// `standard` (readline's static data) or, with `bound`, for every map bound under them.
///
/// A map bound under another (`rl_make_bare_keymap`, for the prefixes of key sequences such
/// as the arrow keys' `ESC [`) is malloc'd: 4112 bytes, whose chunk has 8 bytes more that
/// nothing writes either (a stale address of the compiler's there hid a leaked list). Those
/// 8 bytes are returned too.
fn readline_keymap_padding(standard: &[usize], bound: bool) -> Vec<usize> {
    const KEYMAP_SIZE: usize = 257; // readline 6.0 and later (ANYOTHERKEY is the last entry)
    const ISKMAP: u8 = 1;
    const ENTRY: usize = 16;
    let word = std::mem::size_of::<usize>();
    let mut maps = standard.to_vec();
    let mut seen = Vec::new();
    let mut out = Vec::new();
    while let Some(map) = maps.pop() {
        if seen.contains(&map) || seen.len() >= 4096 || map % word != 0 {
            continue;
        }
        seen.push(map);
        let is_standard = standard.contains(&map);
        if !is_standard {
            // The chunk's last word (the next chunk's first) is this chunk's while in use.
            let chunk = capture::chunk_for_request(KEYMAP_SIZE * ENTRY);
            if heap_chunk_size(map) == Some(chunk) {
                out.extend([map + KEYMAP_SIZE * ENTRY, map + chunk - word]);
            }
        }
        for i in 0..KEYMAP_SIZE {
            let entry = map + i * ENTRY;
            if bound {
                // SAFETY: a key map of readline's (a static map or one it bound under one), of
                // KEYMAP_SIZE entries; the GIL holder is the only caller of readline.
                let (kind, function) =
                    unsafe { (*(entry as *const u8), *((entry + 8) as *const usize)) };
                if kind == ISKMAP && function != 0 {
                    maps.push(function);
                }
            }
            if is_standard != bound {
                out.extend([entry, entry + 8]);
            }
        }
    }
    out
}

/// GNU readline's standard key maps and exported terminal strings (see [`Readline`]), for the
/// `readline` module loaded from `path` (nothing for another readline). Looked up once per
/// path: CPython never unloads an extension module, nor its libraries (a lookup through the
/// loader cost about as much as the walk of the maps, for every scan). The maps bound under
/// them and the strings can change: they are read every time.
fn lookup_readline(path: String) -> Readline {
    static FOUND: std::sync::Mutex<Option<(String, Readline)>> = std::sync::Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    match found.as_ref() {
        Some((seen, readline)) if *seen == path => readline.clone(),
        _ => {
            let readline = lookup_symbols(&path);
            *found = Some((path, readline.clone()));
            readline
        }
    }
}

/// readline's exported `char *` variables that hold terminal capability strings (readline 6.0
/// to 8.2 export these; the others are static).
const TERM_STRINGS: [&std::ffi::CStr; 6] = [
    c"_rl_term_clreol",
    c"_rl_term_clrpag",
    c"_rl_term_cr",
    c"_rl_term_up",
    c"_rl_term_goto",
    c"_rl_term_forward_char",
];

fn lookup_symbols(path: &str) -> Readline {
    let Ok(path) = std::ffi::CString::new(path) else {
        return Readline::default();
    };
    // SAFETY: RTLD_NOLOAD only looks up the loaded module (no code runs); the handle is
    // closed below. dlsym searches the module and the libraries it loaded (libreadline).
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_LAZY | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return Readline::default();
    }
    let symbol = |name: &std::ffi::CStr| {
        // SAFETY: a valid handle and a NUL-terminated name.
        unsafe { libc::dlsym(handle, name.as_ptr()) as usize }
    };
    let version = symbol(c"rl_readline_version");
    // SAFETY: GNU readline's `int rl_readline_version` (0x0802 for 8.2) when found.
    let gnu = version != 0 && unsafe { *(version as *const libc::c_int) } >= 0x0600;
    let readline = if gnu {
        Readline {
            keymaps: [
                c"emacs_standard_keymap",
                c"emacs_meta_keymap",
                c"emacs_ctlx_keymap",
                c"vi_insertion_keymap",
                c"vi_movement_keymap",
            ]
            .into_iter()
            .map(symbol)
            .filter(|a| *a != 0)
            .collect(),
            funmap: symbol(c"funmap"),
            term_strings: TERM_STRINGS
                .into_iter()
                .map(symbol)
                .filter(|a| *a != 0)
                .collect(),
            history: Some((symbol(c"history_list"), symbol(c"history_length")))
                .filter(|(list, length)| *list != 0 && *length != 0),
            term_buffer_holders: term_buffer_holders(symbol(c"_nc_globals"), version),
            cur_term: symbol(c"cur_term"),
        }
    } else {
        Readline::default()
    };
    // SAFETY: the handle from dlopen above.
    unsafe { libc::dlclose(handle) };
    readline
}

/// glibc's `dladdr1` flag asking for the symbol's entry (`<dlfcn.h>`).
const RTLD_DL_SYMENT: c_int = 1;

/// See [`TermBufferHolders`]: `nc_globals` is ncurses' `_nc_globals` (0: not found), and
/// `in_readline` an address in GNU readline's data.
fn term_buffer_holders(nc_globals: usize, in_readline: usize) -> Option<TermBufferHolders> {
    if nc_globals == 0 {
        return None;
    }
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::uninit();
    let mut symbol: *const libc::Elf64_Sym = std::ptr::null();
    // SAFETY: dladdr1 fills `info` and points `symbol` at the loader's symbol entry (or fails).
    let found = unsafe {
        libc::dladdr1(
            nc_globals as *const libc::c_void,
            info.as_mut_ptr(),
            &mut symbol as *mut *const libc::Elf64_Sym as *mut *mut libc::c_void,
            RTLD_DL_SYMENT,
        )
    };
    // SAFETY: on success `symbol` is the loader's entry for `_nc_globals`.
    let size = (found != 0 && !symbol.is_null()).then(|| unsafe { (*symbol).st_size } as usize)?;
    let readline = heapgate_core::capture::writable_segments_of(in_readline);
    (size > 0 && !readline.is_empty()).then_some(TermBufferHolders {
        nc_globals: (nc_globals, nc_globals + size),
        readline,
    })
}

fn scan(py: Python<'_>, stack_from: usize, registers: &[usize]) -> PyResult<Py<LeakKinds>> {
    // Found before the scan takes the tracker's lock (the first time needs the loader).
    let readline = readline(py);
    let mut term_strings = term_string_addresses(&readline.term_strings);
    term_strings.extend(readline_term_buffer(readline.term_buffer_holders.as_ref()));
    term_strings.extend(ncurses_byte_buffers(&readline));
    let kinds = capture::scan_leaks(
        &mut || stale_slots(py, &readline),
        &mut || container_stale_slots(py, &readline),
        stack_from,
        registers,
        Some(pool_layout()),
        &term_strings,
        crate::interpreter_modules(py),
        Some(runtime_state()),
    )
    .map_err(capture_error)?;
    Py::new(py, LeakKinds::from(kinds))
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

/// Empty CPython's free lists (lists, dicts, tuples, floats) right before a test's call that
/// is checked for native leaks: objects the call then creates are new blocks, so a leaked one
/// is a candidate and cannot root what it points to. Returns True when the lists were emptied
/// directly, False when a collection did it (interpreters whose layout the shim does not
/// know).
#[pyfunction]
fn clear_free_lists(_py: Python<'_>) -> bool {
    // SAFETY: the GIL is held (the `Python` token).
    unsafe { hg_py_clear_free_lists() != 0 }
}

/// 3.12: make `function` (a plain Python function) empty the dict free lists as each of its
/// calls starts, right before its frame is pushed (`on`), or stop it (`on` false). Returns True when
/// done; False when the function was left alone (other versions, other callables, another
/// vectorcall installed). pytest's own call of the test function otherwise frees a dict it
/// built into the dict free list while pushing the frame, and the test's first dict is that one.
#[pyfunction]
fn empty_free_lists_on_call(function: &Bound<'_, PyAny>, on: bool) -> bool {
    // SAFETY: the GIL is held (the bound reference); the shim checks the object's type
    // before it touches a function's fields.
    unsafe { hg_py_empty_free_lists_on_call(function.as_ptr(), c_int::from(on)) != 0 }
}

/// Collect the tracked test's garbage before its leak scan: its own GC objects alone when the
/// interpreter allows (see `hg_py_collect_among`: a full collection costs what the process
/// holds), else a full `gc.collect()`. Nothing is collected when the test holds no GC object,
/// or when the scan will not run (no live block has a native origin). Returns True when a
/// collection ran.
#[pyfunction]
fn collect_test_garbage(py: Python<'_>) -> PyResult<bool> {
    let layout = object_layout();
    let heads = capture::gc_candidates(crate::interpreter_modules(py), layout.as_ref())
        .map_err(capture_error)?;
    if heads.is_empty() {
        return Ok(false);
    }
    // SAFETY: the GIL is held (the `Python` token) and no Python code ran since the heads were
    // found: each is the GC head of a live tracked object (`gc_candidates` checked its links
    // and its type), which the shim checks again before it moves one.
    match unsafe { hg_py_collect_among(heads.as_ptr(), heads.len()) } {
        -2 => Err(PyErr::fetch(py)),
        -1 => py.import("gc")?.call_method0("collect").map(|_| true),
        _ => Ok(true),
    }
}

/// Registers the leak functions; `scan_leaks()` classifies the tracked test's live blocks
/// (call after `gc.collect()`, before `stop`) and returns the totals as `LeakKinds`; per site
/// figures appear in the report's sites.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // SAFETY: the GIL is held (the bound module); the shim makes and closes a writer over a
    // BytesIO, at import, before any test is tracked.
    unsafe { hg_py_probe_buffered() };
    m.add_function(wrap_pyfunction!(clear_free_lists, m)?)?;
    m.add_function(wrap_pyfunction!(empty_free_lists_on_call, m)?)?;
    m.add_function(wrap_pyfunction!(collect_test_garbage, m)?)?;
    // SAFETY: the shim builds a builtin function object bound to `m` (a new reference).
    let function = unsafe {
        Bound::from_owned_ptr_or_err(m.py(), hg_py_make_scan_function(m.as_ptr(), scan_callback))?
    };
    m.add("scan_leaks", function)
}
