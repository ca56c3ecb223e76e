//! Builds the eBPF programs (`interceptor-ebpf`, bpfel-unknown-none, nightly + bpf-linker)
//! and leaves the object in OUT_DIR, where `src/ebpf/object.rs` embeds it.
//!
//! aya-build reports every line of the inner cargo's progress ("Compiling …", "Finished …")
//! as a `cargo:warning`, which a newcomer reads as dozens of problems. So the build runs in
//! a child process (this same build script, re-executed): its build-script directives are
//! passed on, the progress lines are dropped, and whatever else the inner build printed
//! (compiler diagnostics, or everything when it fails) is shown.
use std::{
    env, fs,
    path::PathBuf,
    process::{Command, ExitCode},
};

/// Set in the child: run aya-build itself.
const CHILD: &str = "INTERCEPTOR_EBPF_BUILD_CHILD";

/// The inner cargo's progress lines (the first word, after cargo's right-aligned padding).
const PROGRESS: &[&str] = &[
    "Compiling",
    "Finished",
    "Checking",
    "Fresh",
    "Blocking",
    "Updating",
    "Locking",
    "Adding",
    "Downloading",
    "Downloaded",
    "Unpacking",
    "Building",
];

fn main() -> ExitCode {
    if env::var_os(CHILD).is_some() {
        return match build() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("cargo:warning=building the eBPF programs failed: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let out = match env::current_exe().and_then(|me| Command::new(me).env(CHILD, "1").output()) {
        Ok(out) => out,
        Err(e) => {
            eprintln!("cannot run the eBPF build: {e}");
            return ExitCode::FAILURE;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut held = Vec::new();
    for line in stdout.lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(text) if is_progress(text) && out.status.success() => {}
            Some(text) => held.push(text.to_string()),
            None => println!("{line}"),
        }
    }
    if out.status.success() {
        for line in held {
            println!("cargo:warning={line}");
        }
        return ExitCode::SUCCESS;
    }
    // Cargo shows a failed build script's stderr: the whole story, progress included.
    for line in held {
        eprintln!("{line}");
    }
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    ExitCode::FAILURE
}

fn is_progress(text: &str) -> bool {
    text.split_whitespace().next().is_some_and(|word| PROGRESS.contains(&word))
}

fn build() -> anyhow::Result<()> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = root.parent().expect("workspace root").join("interceptor-ebpf");
    let common_dir = root.parent().expect("workspace root").join("interceptor-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "interceptor-ebpf",
            root_dir: ebpf_dir.to_str().expect("utf-8 path"),
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )?;
    // With AYA_BUILD_SKIP=1 (e.g. for `cargo check`) nothing is built: embed an empty object,
    // which the loader reports as an error instead of failing the build.
    let out = PathBuf::from(env::var("OUT_DIR")?).join("interceptor");
    if !out.exists() {
        fs::write(&out, [])?;
    }
    Ok(())
}
