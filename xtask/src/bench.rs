//! `cargo xtask bench`: runs the benchmark binary (release build) as root.
use anyhow::Result;

use crate::util::{cleanup_stale, require_root, root, run};

pub fn bench(args: &[String]) -> Result<()> {
    require_root("bench")?;
    cleanup_stale();
    let bin = root().join("target/release/bench");
    let result = run(std::process::Command::new(bin).args(args).current_dir(root()));
    cleanup_stale();
    result
}
