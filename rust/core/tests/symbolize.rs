//! Symbolizer tests against real objects built by gcc/g++ at test time, compared with binutils'
//! `addr2line`.

use std::cell::Cell;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};

use heapgate_core::symbolize::{
    addr2line_output, Addr2lineArgs, DebugSource, Module, ModuleMap, Symbolizer, SymbolizerOptions,
};
use object::{Object, ObjectSymbol, SymbolKind};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/symbolize");

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles a fixture into `dir` and returns the output path.
fn compile(dir: &Path, source: &str, output: &str, flags: &[&str]) -> PathBuf {
    let compiler = if source.ends_with(".cpp") {
        "g++"
    } else {
        "gcc"
    };
    let out = dir.join(output);
    run(Command::new(compiler)
        .args(flags)
        .arg("-Wl,--build-id")
        .arg(Path::new(FIXTURES).join(source))
        .arg("-o")
        .arg(&out));
    out
}

/// Quiet options with the given debug roots; messages are collected.
fn options(roots: Vec<PathBuf>) -> (SymbolizerOptions, Arc<Mutex<Vec<String>>>) {
    let messages = Arc::new(Mutex::new(Vec::new()));
    let sink = messages.clone();
    let options = SymbolizerOptions {
        debug_roots: roots,
        debuginfod_urls: Vec::new(),
        debuginfod_cache: None,
        messages: Some(Arc::new(move |m: &str| {
            sink.lock().unwrap().push(m.to_owned())
        })),
        ..SymbolizerOptions::default()
    };
    (options, messages)
}

fn quiet_symbolizer() -> Symbolizer {
    Symbolizer::new(options(Vec::new()).0)
}

/// Every byte address inside the defined function symbols of `path`.
fn function_addresses(path: &Path) -> Vec<u64> {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let mut addrs: Vec<u64> = file
        .symbols()
        .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0 && !s.is_undefined())
        .flat_map(|s| s.address()..s.address() + s.size())
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    addrs
}

fn address_of(path: &Path, name: &str) -> u64 {
    let data = std::fs::read(path).unwrap();
    let file = object::File::parse(&*data).unwrap();
    let sym = file
        .symbols()
        .chain(file.dynamic_symbols())
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("{name} not in {}", path.display()));
    sym.address()
}

fn binutils(object: &Path, flags: &str, addrs: &[u64]) -> String {
    let out = Command::new("addr2line")
        .arg(flags)
        .arg("-e")
        .arg(object)
        .args(addrs.iter().map(|a| format!("{a:#x}")))
        .output()
        .expect("binutils addr2line is installed");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

fn ours(symbolizer: &Symbolizer, object: &Path, flags: &str, addrs: &[u64]) -> String {
    let mut args = vec![
        flags.to_owned(),
        "-e".to_owned(),
        object.display().to_string(),
    ];
    args.extend(addrs.iter().map(|a| format!("{a:#x}")));
    addr2line_output(symbolizer, &Addr2lineArgs::parse(&args).unwrap()).unwrap()
}

/// Splits output into per-address blocks; drops binutils' discriminators (not in our model).
fn blocks(output: &str, flags: &str, addrs: &[u64]) -> Vec<String> {
    let output = output
        .lines()
        .map(|l| match l.find(" (discriminator ") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    // With -a every block starts with its address line, which makes splitting exact.
    assert!(flags.contains('a'));
    let mut blocks = Vec::new();
    let mut current = String::new();
    for line in output.lines() {
        let is_address = line.len() >= 18
            && line.starts_with("0x")
            && line[2..18].bytes().all(|b| b.is_ascii_hexdigit())
            && (line.len() == 18 || line[18..].starts_with(": "));
        if is_address && !current.is_empty() {
            blocks.push(std::mem::take(&mut current));
        }
        current.push_str(line);
        current.push('\n');
    }
    blocks.push(current);
    assert_eq!(blocks.len(), addrs.len());
    blocks
}

/// binutils' dwarf2.c names a function that has only a DW_AT_name (e.g. a static C++ function,
/// inlined) from the symbol table the *first* time it is looked up in a process, then caches
/// the DWARF name (`function->is_linkage = true`). So its first address gets the enclosing
/// symbol's name and later ones the real name; we always give the real name. Accept exactly
/// that: the only difference is binutils' innermost name being the outermost frame's name.
fn first_lookup_quirk(theirs: &str, ours: &str, flags: &str) -> bool {
    if !flags.contains('f') || !flags.contains('i') || flags.contains('p') {
        return false;
    }
    let t: Vec<&str> = theirs.lines().collect();
    let o: Vec<&str> = ours.lines().collect();
    // [address, inner function, inner location, ..., outer function, outer location]
    t.len() == o.len()
        && t.len() >= 5
        && t[1] == t[t.len() - 2]
        && !o[1].starts_with("_Z")
        && t.iter()
            .zip(&o)
            .enumerate()
            .all(|(i, (a, b))| i == 1 || a == b)
}

/// Compares our output with binutils' on `addrs`; returns the number of differing addresses
/// and a description of the first few.
fn compare(symbolizer: &Symbolizer, object: &Path, flags: &str, addrs: &[u64]) -> (usize, String) {
    let theirs = blocks(&binutils(object, flags, addrs), flags, addrs);
    let mine = blocks(&ours(symbolizer, object, flags, addrs), flags, addrs);
    let mut report = String::new();
    let mut differing = 0;
    for (t, m) in theirs.iter().zip(&mine) {
        if t != m && !first_lookup_quirk(t, m, flags) {
            differing += 1;
            if differing <= 5 {
                report.push_str(&format!("binutils:\n{t}ours:\n{m}\n"));
            }
        }
    }
    (differing, report)
}

fn assert_matches_binutils(object: &Path, flags: &str) {
    let addrs = function_addresses(object);
    assert!(addrs.len() > 50, "too few addresses sampled");
    let (differing, report) = compare(&quiet_symbolizer(), object, flags, &addrs);
    assert_eq!(
        differing,
        0,
        "{differing}/{} addresses differ from binutils for {}:\n{report}",
        addrs.len(),
        object.display()
    );
}

#[test]
fn c_at_o0_matches_binutils_on_every_byte() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile(dir.path(), "prog.c", "prog", &["-g", "-O0"]);
    assert_matches_binutils(&prog, "-afiC");
    assert_matches_binutils(&prog, "-af");
}

#[test]
fn c_at_o2_inline_chains_match_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile(dir.path(), "prog.c", "prog", &["-g", "-O2"]);
    assert_matches_binutils(&prog, "-afiC");
    // The loop in sum_squares has `square` inlined: a two-frame chain exists.
    let symbolizer = quiet_symbolizer();
    let module = Module::from_file(&prog).unwrap();
    let start = address_of(&prog, "sum_squares");
    let chained = (start..start + 64)
        .map(|a| symbolizer.symbolize(&module, a))
        .find(|frames| frames.len() == 2)
        .expect("an address with square() inlined");
    assert_eq!(chained[0].function.as_deref(), Some("square"));
    assert!(chained[0].inlined && !chained[1].inlined);
    assert_eq!(chained[1].function.as_deref(), Some("sum_squares"));
    assert!(chained[0].file.as_deref().unwrap().ends_with("prog.c"));
    assert_eq!(chained[0].source, DebugSource::EmbeddedDwarf);
}

#[test]
fn cpp_templates_at_o2_match_binutils_mangled_and_demangled() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile(dir.path(), "templates.cpp", "templates", &["-g", "-O2"]);
    assert_matches_binutils(&prog, "-afiC");
    assert_matches_binutils(&prog, "-afi");
    let symbolizer = quiet_symbolizer();
    let module = Module::from_file(&prog).unwrap();
    let twice = address_of(&prog, "_ZN13heapgate_test5twiceIlEET_S1_");
    let frames = symbolizer.symbolize(&module, twice);
    assert_eq!(
        frames.last().unwrap().function.as_deref(),
        Some("long heapgate_test::twice<long>(long)")
    );
}

#[test]
fn pretty_basenames_and_plain_formats_match_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile(dir.path(), "templates.cpp", "templates", &["-g", "-O2"]);
    let addrs = function_addresses(&prog);
    let symbolizer = quiet_symbolizer();
    for flags in ["-a", "-ai", "-afiCs"] {
        let (differing, report) = compare(&symbolizer, &prog, flags, &addrs);
        assert_eq!(differing, 0, "{flags}:\n{report}");
    }
}

#[test]
fn unknown_addresses_print_question_marks_like_binutils() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile(dir.path(), "prog.c", "prog", &["-g", "-O0"]);
    let addrs = [0x1, 0x7fff_ffff_0000];
    let symbolizer = quiet_symbolizer();
    assert_eq!(
        ours(&symbolizer, &prog, "-fiC", &addrs),
        "??\n??:0\n??\n??:0\n"
    );
    assert_eq!(
        ours(&symbolizer, &prog, "-fiC", &addrs),
        binutils(&prog, "-fiC", &addrs)
    );
    let frames = symbolizer.symbolize(&Module::from_file(&prog).unwrap(), 0x1);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].function, None);
    assert_eq!(frames[0].source, DebugSource::None);
}

#[test]
fn stripped_debug_falls_back_to_symtab_with_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile(dir.path(), "prog.c", "prog", &["-g", "-O2"]);
    run(Command::new("strip").arg("--strip-debug").arg(&prog));
    assert_matches_binutils(&prog, "-afiC");
    let symbolizer = quiet_symbolizer();
    let module = Module::from_file(&prog).unwrap();
    assert_eq!(symbolizer.debug_source(&module), DebugSource::SymbolTable);
    let start = address_of(&prog, "sum_squares");
    let frames = symbolizer.symbolize(&module, start + 3);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].function.as_deref(), Some("sum_squares"));
    assert_eq!(frames[0].offset, Some(3));
    assert_eq!(frames[0].line, None);
    assert_eq!(frames[0].source, DebugSource::SymbolTable);
    assert!(frames[0].to_string().starts_with("sum_squares+0x3"));
}

#[test]
fn stripped_shared_library_uses_dynsym() {
    let dir = tempfile::tempdir().unwrap();
    let lib = compile(
        dir.path(),
        "lib.c",
        "libt.so",
        &["-g", "-O2", "-shared", "-fPIC"],
    );
    let exported = address_of(&lib, "exported_api");
    let hidden = address_of(&lib, "hidden_helper");
    run(Command::new("strip").arg("--strip-all").arg(&lib));
    let symbolizer = quiet_symbolizer();
    let module = Module::from_file(&lib).unwrap();
    let frames = symbolizer.symbolize(&module, exported + 1);
    assert_eq!(frames[0].function.as_deref(), Some("exported_api"));
    assert_eq!(frames[0].offset, Some(1));
    assert_eq!(frames[0].source, DebugSource::SymbolTable);
    assert_eq!(symbolizer.symbolize(&module, hidden)[0].function, None);
    let addrs = [exported, exported + 1, hidden];
    assert_eq!(
        ours(&symbolizer, &lib, "-afiC", &addrs),
        binutils(&lib, "-afiC", &addrs)
    );
}

/// Builds `prog` at -O2, keeps a copy of the unstripped binary, moves DWARF to `prog.debug`.
fn split_debug(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let prog = compile(dir, "prog.c", "prog", &["-g", "-O2"]);
    let full = dir.join("prog.full");
    std::fs::copy(&prog, &full).unwrap();
    let debug = dir.join("prog.debug");
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&prog)
        .arg(&debug));
    run(Command::new("strip").arg("--strip-all").arg(&prog));
    (prog, full, debug)
}

#[test]
fn debuglink_in_dot_debug_dir_is_found_and_crc_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (prog, full, debug) = split_debug(dir.path());
    run(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&prog));
    std::fs::create_dir(dir.path().join(".debug")).unwrap();
    let moved = dir.path().join(".debug/prog.debug");
    std::fs::rename(&debug, &moved).unwrap();

    let module = Module::from_file(&prog).unwrap();
    assert_eq!(module.debuglink.as_ref().unwrap().0, "prog.debug");
    let symbolizer = quiet_symbolizer();
    let source = symbolizer.debug_source(&module);
    assert_eq!(
        source,
        DebugSource::Debuglink(std::fs::canonicalize(&moved).unwrap())
    );
    // Same answers as the unstripped binary.
    let addrs = function_addresses(&full);
    assert_eq!(
        ours(&symbolizer, &prog, "-afiC", &addrs),
        ours(&quiet_symbolizer(), &full, "-afiC", &addrs)
    );

    // A debug file with another CRC is ignored.
    let mut bytes = std::fs::read(&moved).unwrap();
    bytes.push(0);
    std::fs::write(&moved, bytes).unwrap();
    assert_eq!(quiet_symbolizer().debug_source(&module), DebugSource::None);
}

#[test]
fn debuglink_under_global_debug_root() {
    let dir = tempfile::tempdir().unwrap();
    let (prog, _full, debug) = split_debug(dir.path());
    run(Command::new("objcopy")
        .arg(format!("--add-gnu-debuglink={}", debug.display()))
        .arg(&prog));
    let root = dir.path().join("usr-lib-debug");
    let real_dir = std::fs::canonicalize(dir.path()).unwrap();
    let target = root
        .join(real_dir.strip_prefix("/").unwrap())
        .join("prog.debug");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(&debug, &target).unwrap();
    let module = Module::from_file(&prog).unwrap();
    let (opts, _) = options(vec![root]);
    let symbolizer = Symbolizer::new(opts);
    assert_eq!(
        symbolizer.debug_source(&module),
        DebugSource::Debuglink(target)
    );
    let frames = symbolizer.symbolize(&module, address_of(&dir.path().join("prog.full"), "main"));
    assert_eq!(frames.last().unwrap().function.as_deref(), Some("main"));
    assert!(frames.last().unwrap().line.is_some());
}

#[test]
fn build_id_tree_is_searched() {
    let dir = tempfile::tempdir().unwrap();
    let (prog, full, debug) = split_debug(dir.path());
    let module = Module::from_file(&prog).unwrap();
    let hex = module.build_id_hex().expect("gcc was asked for a build-id");
    let root = dir.path().join("debugroot");
    let target = root
        .join(".build-id")
        .join(&hex[..2])
        .join(format!("{}.debug", &hex[2..]));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::rename(&debug, &target).unwrap();

    assert_eq!(quiet_symbolizer().debug_source(&module), DebugSource::None);
    let (opts, _) = options(vec![dir.path().join("empty-root"), root]);
    let symbolizer = Symbolizer::new(opts);
    assert_eq!(
        symbolizer.debug_source(&module),
        DebugSource::BuildIdFile(target.clone())
    );
    let addrs = function_addresses(&full);
    assert_eq!(
        ours(&symbolizer, &prog, "-afiC", &addrs),
        ours(&quiet_symbolizer(), &full, "-afiC", &addrs)
    );
    // The static function comes from the debug file's .symtab when DWARF has no answer,
    // and a module whose file is gone still symbolizes by build-id.
    let gone = Module {
        path: dir.path().join("deleted"),
        ..module.clone()
    };
    let frames = symbolizer.symbolize(&gone, address_of(&full, "sum_squares"));
    assert_eq!(
        frames.last().unwrap().function.as_deref(),
        Some("sum_squares")
    );
}

#[test]
fn minidebuginfo_names_static_functions_of_a_stripped_binary() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let prog = compile(d, "prog.c", "prog", &["-g", "-O2"]);
    let hidden = address_of(&prog, "sum_squares");
    // Fedora's recipe (find-debuginfo's add_minidebug), with only sum_squares kept.
    std::fs::write(d.join("keep"), "sum_squares\n").unwrap();
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&prog)
        .arg(d.join("mini")));
    run(Command::new("objcopy")
        .args(["-S", "--remove-section", ".comment", "--keep-symbols"])
        .arg(d.join("keep"))
        .arg(d.join("mini")));
    run(Command::new("xz").arg("-kf").arg(d.join("mini")));
    run(Command::new("strip").arg("--strip-all").arg(&prog));
    run(Command::new("objcopy")
        .arg(format!(
            "--add-section=.gnu_debugdata={}",
            d.join("mini.xz").display()
        ))
        .arg(&prog));
    let symbolizer = quiet_symbolizer();
    let module = Module::from_file(&prog).unwrap();
    assert_eq!(symbolizer.debug_source(&module), DebugSource::MiniDebugInfo);
    let frames = symbolizer.symbolize(&module, hidden + 2);
    assert_eq!(frames[0].function.as_deref(), Some("sum_squares"));
    assert_eq!(frames[0].offset, Some(2));
    assert_eq!(frames[0].source, DebugSource::MiniDebugInfo);
}

thread_local! {
    static PANICS: Cell<usize> = const { Cell::new(0) };
}
static HOOK: Once = Once::new();

/// Counts panics on the current thread (even caught ones), keeping the default report.
fn panics_on_this_thread() -> usize {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
    PANICS.with(Cell::get)
}

#[test]
fn truncated_and_bit_flipped_objects_give_question_marks_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let prog = compile(dir.path(), "templates.cpp", "templates", &["-g", "-O2"]);
    let bytes = std::fs::read(&prog).unwrap();
    let addrs: Vec<u64> = function_addresses(&prog).into_iter().step_by(7).collect();
    let module = Module::from_file(&prog).unwrap();
    let before = panics_on_this_thread();

    // Truncated to the ELF header: nothing parses, every frame is ??, with a warning.
    let truncated = dir.path().join("truncated");
    std::fs::write(&truncated, &bytes[..100]).unwrap();
    let (opts, messages) = options(Vec::new());
    let symbolizer = Symbolizer::new(opts);
    let broken = Module {
        path: truncated.clone(),
        ..module.clone()
    };
    for &a in &addrs {
        let frames = symbolizer.symbolize(&broken, a);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].function, None);
    }
    assert!(!messages.lock().unwrap().is_empty(), "a warning is given");

    // Truncated in the middle of the debug sections, and many bit flips: any answer but a panic.
    let mut variants = vec![bytes[..bytes.len() * 3 / 4].to_vec()];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..40 {
        let mut flipped = bytes.clone();
        for _ in 0..20 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = (seed % flipped.len() as u64) as usize;
            flipped[at] ^= 1 << (seed >> 61);
        }
        variants.push(flipped);
    }
    for (i, variant) in variants.iter().enumerate() {
        let path = dir.path().join(format!("variant{i}"));
        std::fs::write(&path, variant).unwrap();
        let symbolizer = Symbolizer::new(options(Vec::new()).0);
        let m = Module::from_file(&path).unwrap_or(Module {
            path: path.clone(),
            ..module.clone()
        });
        for &a in &addrs {
            assert!(!symbolizer.symbolize(&m, a).is_empty());
        }
        let args = Addr2lineArgs::parse(["-fiC", "-e", path.to_str().unwrap(), "0x1000"]).unwrap();
        let _ = addr2line_output(&symbolizer, &args);
    }
    assert_eq!(panics_on_this_thread(), before, "a parser panicked");
}

/// A one-file debuginfod on 127.0.0.1: serves `files` by build-id, counts requests.
fn serve(files: Vec<(String, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counter = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            reader.read_line(&mut request).unwrap();
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap() <= 2 {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
            let body = files
                .iter()
                .find(|(id, _)| path == format!("/buildid/{id}/debuginfo"))
                .map(|(_, body)| body.clone());
            let _ = match body {
                Some(body) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|()| stream.write_all(&body))
                }
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    (url, count)
}

#[test]
fn debuginfod_downloads_once_caches_like_elfutils_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let (prog, full, debug) = split_debug(dir.path());
    let module = Module::from_file(&prog).unwrap();
    let hex = module.build_id_hex().unwrap();
    let (url, requests) = serve(vec![(hex.clone(), std::fs::read(&debug).unwrap())]);
    std::fs::remove_file(&debug).unwrap();
    let cache = dir.path().join("cache");
    let debuginfod_options = || {
        let (mut opts, messages) = options(Vec::new());
        opts.debuginfod_urls = vec![format!("{url}/")];
        opts.debuginfod_cache = Some(cache.clone());
        opts.debuginfod_timeout = std::time::Duration::from_secs(10);
        (opts, messages)
    };

    let (opts, messages) = debuginfod_options();
    let symbolizer = Symbolizer::new(opts);
    let cached = cache.join(&hex).join("debuginfo");
    assert_eq!(
        symbolizer.debug_source(&module),
        DebugSource::Debuginfod(cached.clone())
    );
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    assert!(cached.is_file());
    let said = messages.lock().unwrap().join("\n");
    assert!(
        said.contains("downloading") && said.contains("saved"),
        "{said}"
    );
    let main = address_of(&full, "main");
    let frames = symbolizer.symbolize(&module, main);
    assert_eq!(frames.last().unwrap().function.as_deref(), Some("main"));

    // A new session finds the cache: no request.
    let (opts, _) = debuginfod_options();
    let again = Symbolizer::new(opts);
    assert_eq!(again.debug_source(&module), DebugSource::Debuginfod(cached));
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    // An unknown build-id is asked for once per session, whatever the number of lookups.
    let unknown = Module {
        path: dir.path().join("missing.so"),
        build_id: Some(vec![0xab; 20]),
        ..module.clone()
    };
    let (opts, _) = debuginfod_options();
    let third = Symbolizer::new(opts);
    for a in 0..5 {
        assert_eq!(third.symbolize(&unknown, a)[0].function, None);
    }
    assert_eq!(third.debug_source(&unknown), DebugSource::None);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[test]
fn no_debuginfod_request_without_urls() {
    let dir = tempfile::tempdir().unwrap();
    let (prog, _full, debug) = split_debug(dir.path());
    let module = Module::from_file(&prog).unwrap();
    let (_url, requests) = serve(vec![(
        module.build_id_hex().unwrap(),
        std::fs::read(&debug).unwrap(),
    )]);
    let (mut opts, _) = options(Vec::new());
    opts.debuginfod_cache = Some(dir.path().join("cache"));
    let symbolizer = Symbolizer::new(opts);
    assert_eq!(symbolizer.debug_source(&module), DebugSource::None);
    assert_eq!(requests.load(Ordering::SeqCst), 0);
}

#[inline(never)]
fn marker_function_for_symbolize_test() -> u64 {
    std::hint::black_box(marker_function_for_symbolize_test as *const () as usize as u64)
}

#[test]
fn symbolizes_this_process_through_the_module_map() {
    let addr = marker_function_for_symbolize_test();
    let map = ModuleMap::current_process();
    let (module, relative) = map.lookup(addr).unwrap();
    let frames = quiet_symbolizer().symbolize(module, relative);
    let outer = frames.last().unwrap();
    assert!(
        outer
            .function
            .as_deref()
            .unwrap()
            .ends_with("marker_function_for_symbolize_test"),
        "{frames:?}"
    );
    assert!(outer.file.as_deref().unwrap().ends_with("symbolize.rs"));
    assert_eq!(outer.source, DebugSource::EmbeddedDwarf);
}

#[test]
fn symbolizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Symbolizer>();
    check::<ModuleMap>();
}
