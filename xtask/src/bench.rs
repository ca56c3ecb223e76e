//! `cargo xtask bench`: builds and runs the benchmark binary as root. `--quick` (the CI
//! smoke run) uses the debug build `cargo xtask test` already made; the full run uses an
//! optimised build, whose numbers are the ones to publish. `--scale` runs the scale
//! benchmark instead (`tests/bench/scale.rs`; with `--quick`, 20 pods).
use anyhow::Result;

use crate::util::{build, build_release, cleanup_stale, require_root, root, run};

pub fn bench(args: &[String]) -> Result<()> {
    require_root("bench")?;
    let quick = args.iter().any(|a| a == "--quick");
    let profile = if quick {
        build()?;
        "debug"
    } else {
        build_release()?;
        "release"
    };
    cleanup_stale();
    let bin = root().join("target").join(profile).join("bench");
    let result = run(std::process::Command::new(bin).args(args).current_dir(root()));
    cleanup_stale();
    result
}
