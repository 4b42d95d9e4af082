//! binutils-compatible `addr2line` output, as a pure function returning the text.

use std::fmt::Write as _;
use std::path::PathBuf;

use super::demangle::demangle;
use super::elf::SymbolLookup;
use super::{Module, SymbolizeError, Symbolizer};

/// Parsed `addr2line [-a] [-f] [-i] [-C] [-s] [-p] -e OBJECT ADDRESS...` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addr2lineArgs {
    /// `-e`: the object file (`a.out` if not given, like binutils).
    pub object: PathBuf,
    /// Addresses in the object's own address space (hex, `0x` optional).
    pub addresses: Vec<u64>,
    /// `-a`: print each address first.
    pub show_addresses: bool,
    /// `-f`: print function names.
    pub functions: bool,
    /// `-i`: also print the callers an address was inlined into.
    pub inlines: bool,
    /// `-C`: demangle names.
    pub demangle: bool,
    /// `-s`: file base names only.
    pub basenames: bool,
    /// `-p`: one line per address (`func at file:line (inlined by) ...`).
    pub pretty: bool,
}

impl Addr2lineArgs {
    /// Parses arguments (without the program name); short flags may be combined (`-fiC`).
    pub fn parse<S: AsRef<str>>(args: impl IntoIterator<Item = S>) -> Result<Self, SymbolizeError> {
        let usage = |m: String| SymbolizeError::Usage(m);
        let mut parsed = Addr2lineArgs {
            object: PathBuf::from("a.out"),
            ..Default::default()
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let arg = arg.as_ref();
            match arg {
                "--exe" | "-e" => {
                    let object = args.next().ok_or_else(|| usage("-e needs a file".into()))?;
                    parsed.object = PathBuf::from(object.as_ref());
                }
                _ if arg.starts_with("--exe=") => parsed.object = PathBuf::from(&arg[6..]),
                "--addresses" => parsed.show_addresses = true,
                "--functions" => parsed.functions = true,
                "--inlines" => parsed.inlines = true,
                "--demangle" => parsed.demangle = true,
                "--basenames" => parsed.basenames = true,
                "--pretty-print" => parsed.pretty = true,
                _ if arg.starts_with('-') && arg.len() > 1 => {
                    let flags = &arg[1..];
                    for (i, flag) in flags.char_indices() {
                        match flag {
                            'a' => parsed.show_addresses = true,
                            'f' => parsed.functions = true,
                            'i' => parsed.inlines = true,
                            'C' => parsed.demangle = true,
                            's' => parsed.basenames = true,
                            'p' => parsed.pretty = true,
                            'e' => {
                                let rest = &flags[i + 1..];
                                parsed.object = if rest.is_empty() {
                                    let object = args
                                        .next()
                                        .ok_or_else(|| usage("-e needs a file".into()))?;
                                    PathBuf::from(object.as_ref())
                                } else {
                                    PathBuf::from(rest)
                                };
                                break;
                            }
                            other => return Err(usage(format!("unknown option -{other}"))),
                        }
                    }
                }
                _ => {
                    let digits = arg
                        .strip_prefix("0x")
                        .or_else(|| arg.strip_prefix("0X"))
                        .unwrap_or(arg);
                    let address = u64::from_str_radix(digits, 16)
                        .map_err(|_| usage(format!("bad address {arg:?}")))?;
                    parsed.addresses.push(address);
                }
            }
        }
        Ok(parsed)
    }
}

/// What binutils `addr2line` prints for `args` (addresses relative to the object file).
/// Unknown addresses print `??` / `??:0`; a known function without line prints `file:?`.
/// An object that is missing or unreadable is an error; one that is there but malformed gives
/// `??` frames and a warning to the symbolizer's messages, as in reports.
pub fn addr2line_output(
    symbolizer: &Symbolizer,
    args: &Addr2lineArgs,
) -> Result<String, SymbolizeError> {
    let module = match Module::from_file(&args.object) {
        Ok(module) => Some(module),
        Err(e @ (SymbolizeError::Io { .. } | SymbolizeError::Usage(_))) => return Err(e),
        Err(e) => {
            (symbolizer.say)(&format!("heapgate: warning: {e}; its addresses show as ??"));
            None
        }
    };
    let mut out = String::new();
    for &address in &args.addresses {
        if args.show_addresses {
            out.push_str(&format!("0x{address:016x}"));
            out.push_str(if args.pretty { ": " } else { "\n" });
        }
        let frames = module
            .as_ref()
            .map(|m| symbolizer.symbolize_raw(m, address, SymbolLookup::Nearest))
            .unwrap_or_default();
        if frames.is_empty() {
            if args.functions {
                out.push_str(if args.pretty { "?? " } else { "??\n" });
            }
            out.push_str("??:0\n");
            continue;
        }
        let shown = if args.inlines { frames.len() } else { 1 };
        for (i, frame) in frames.iter().take(shown).enumerate() {
            if i > 0 && args.pretty {
                out.push_str(" (inlined by) ");
            }
            if args.functions {
                let name = match frame.name.as_deref() {
                    None | Some("") => "??".to_owned(),
                    Some(name) if args.demangle => demangle(name, frame.language),
                    Some(name) => name.to_owned(),
                };
                out.push_str(&name);
                out.push_str(if args.pretty { " at " } else { "\n" });
            }
            let mut file = frame.file.as_deref().unwrap_or("??");
            if args.basenames {
                file = file.rsplit('/').next().unwrap_or(file);
            }
            match frame.line {
                Some(line) => {
                    let _ = writeln!(out, "{file}:{line}");
                }
                None => {
                    let _ = writeln!(out, "{file}:?");
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_combined_flags_and_hex_addresses() {
        let args = Addr2lineArgs::parse(["-fiC", "-e", "/bin/x", "0x10", "1f", "0XAB"]).unwrap();
        assert_eq!(args.object, PathBuf::from("/bin/x"));
        assert_eq!(args.addresses, vec![0x10, 0x1f, 0xab]);
        assert!(args.functions && args.inlines && args.demangle);
        assert!(!args.pretty && !args.basenames && !args.show_addresses);

        let args = Addr2lineArgs::parse(["-ape/lib/y.so", "--basenames", "10"]).unwrap();
        assert_eq!(args.object, PathBuf::from("/lib/y.so"));
        assert!(args.show_addresses && args.pretty && args.basenames);

        let args = Addr2lineArgs::parse(["--exe=z", "--functions"]).unwrap();
        assert_eq!(args.object, PathBuf::from("z"));
        assert!(args.functions && args.addresses.is_empty());
        assert_eq!(
            Addr2lineArgs::parse(["1"]).unwrap().object,
            PathBuf::from("a.out")
        );
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(matches!(
            Addr2lineArgs::parse(["-x"]),
            Err(SymbolizeError::Usage(_))
        ));
        assert!(Addr2lineArgs::parse(["-e"]).is_err());
        assert!(Addr2lineArgs::parse(["0xzz"]).is_err());
    }

    #[test]
    fn a_malformed_object_gives_unknown_frames_and_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let object = dir.path().join("broken.so");
        std::fs::write(&object, b"\x7fELF but not really an object").unwrap();
        let said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = said.clone();
        let symbolizer = Symbolizer::new(super::super::SymbolizerOptions {
            messages: Some(std::sync::Arc::new(move |m: &str| {
                sink.lock().unwrap().push(m.to_string())
            })),
            ..Default::default()
        });
        let path = object.display().to_string();
        let args = Addr2lineArgs::parse(["-a", "-f", "-e", &path, "0x10", "0x20"]).unwrap();
        let out = addr2line_output(&symbolizer, &args).unwrap();
        assert_eq!(
            out,
            "0x0000000000000010\n??\n??:0\n0x0000000000000020\n??\n??:0\n"
        );
        let said = said.lock().unwrap();
        assert_eq!(said.len(), 1);
        assert!(said[0].starts_with("heapgate: warning: ") && said[0].ends_with("show as ??"));
    }

    #[test]
    fn missing_object_is_an_error() {
        let symbolizer = Symbolizer::new(Default::default());
        let args = Addr2lineArgs::parse(["-e", "/nonexistent/heapgate", "0x1"]).unwrap();
        assert!(matches!(
            addr2line_output(&symbolizer, &args),
            Err(SymbolizeError::Io { .. })
        ));
    }
}
