//! Compiles the C shims (frame walking, leak scan) against the headers of the interpreter pyo3
//! builds for.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=csrc/pyframes.c");
    println!("cargo:rerun-if-changed=csrc/pyleaks.c");
    let config = pyo3_build_config::get();
    let python = config
        .executable()
        .map(str::to_string)
        .unwrap_or_else(|| "python3".to_string());
    let output = Command::new(&python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['include'])",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} to find the Python headers: {e}"));
    assert!(
        output.status.success(),
        "{python} could not report its include directory: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let include = String::from_utf8(output.stdout).expect("include path is UTF-8");
    cc::Build::new()
        .file("csrc/pyframes.c")
        .file("csrc/pyleaks.c")
        .include(include.trim())
        .flag_if_supported("-fno-strict-aliasing")
        .warnings(true)
        .flag("-Werror=implicit-function-declaration")
        .flag("-Werror=int-conversion")
        // The leak scan's entry keeps its frame (and jmp_buf) while the scan runs.
        .flag("-fno-omit-frame-pointer")
        .flag("-fno-optimize-sibling-calls")
        .compile("heapgate_pyframes");
}
