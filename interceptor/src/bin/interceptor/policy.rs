//! `interceptor policy`: the merged policy, and any warnings.
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::args::PolicyArgs;

#[derive(Args, Debug)]
pub struct PolicyCommand {
    #[command(flatten)]
    policy: PolicyArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(PolicyCommand { policy, json }: PolicyCommand) -> Result<ExitCode> {
    let p = policy.build()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        println!("{p:#?}");
    }
    Ok(ExitCode::SUCCESS)
}
