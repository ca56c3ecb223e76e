//! Builds the eBPF programs (`interceptor-ebpf`, bpfel-unknown-none, nightly + bpf-linker)
//! and leaves the object in OUT_DIR, where `src/ebpf/object.rs` embeds it.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
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
