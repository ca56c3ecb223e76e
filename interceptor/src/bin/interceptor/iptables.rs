//! `interceptor iptables render|apply|cleanup|verify`: the init-container mode.
use std::process::ExitCode;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use interceptor::{iptables, policy::Family};

use crate::args::{NamesArg, PolicyArgs, TargetArgs};

#[derive(Subcommand, Debug)]
pub enum IptablesCommand {
    /// Print the iptables-restore payload (byte-identical to osm-edge's generator).
    Render {
        #[command(flatten)]
        policy: PolicyArgs,
        #[arg(long, value_enum, default_value = "restore")]
        format: FormatArg,
        #[command(flatten)]
        names: NamesArg,
        /// Address family of the payload.
        #[arg(long, default_value = "ipv4")]
        family: Family,
    },
    /// Program the chains (one atomic iptables-restore per family; idempotent).
    Apply {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        target: TargetArgs,
        /// Print the payloads instead of applying them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Remove exactly what apply added.
    Cleanup {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Compare the live tables with the policy; exit 1 with the difference if they differ.
    Verify {
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        target: TargetArgs,
    },
}

/// `--format` of `iptables render`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// The iptables-restore payload.
    Restore,
    /// The shell command of osm-edge's init container.
    Shell,
}

pub fn run(cmd: IptablesCommand) -> Result<ExitCode> {
    match cmd {
        IptablesCommand::Render { policy, format, names, family } => {
            let p = policy.build()?;
            let names = names.names();
            let text = match format {
                FormatArg::Restore => iptables::payload(&p, family, &names),
                FormatArg::Shell => iptables::shell(&p, family, &names),
            };
            print!("{text}");
        }
        IptablesCommand::Apply { policy, target, dry_run } => {
            let p = policy.build()?;
            let opts = target.options()?;
            if dry_run {
                for plan in iptables::apply::plan(&p, &opts)? {
                    println!("# {} payload for {}", plan.family, opts.netns.describe());
                    print!("{}", plan.payload);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let plans = iptables::apply(&p, &opts)?;
            for plan in plans {
                let rules = plan.payload.lines().filter(|l| l.starts_with("-A ") || l.starts_with("-I ")).count();
                eprintln!("applied {rules} {} rules in {}", plan.family, opts.netns.describe());
            }
        }
        IptablesCommand::Cleanup { target } => {
            let opts = target.options()?;
            let n = iptables::cleanup(&opts)?;
            eprintln!("removed {n} rules and chains from {}", opts.netns.describe());
        }
        IptablesCommand::Verify { policy, target } => {
            let p = policy.build()?;
            let opts = target.options()?;
            let problems = iptables::verify(&p, &opts)?;
            if problems.is_empty() {
                eprintln!("the live rules match the policy");
            } else {
                for pr in &problems {
                    println!("{pr}");
                }
                eprintln!("{} difference(s) between the live rules and the policy", problems.len());
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
