//! The `interceptor` command: the command line over the library, one module per command
//! family (their flags, how they call the library, what they print and their exit codes).
mod args;
mod cni;
mod daemon;
#[cfg(test)]
mod deploy_tests;
mod ebpf;
mod explain;
mod iptables;
mod pods;
mod policy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use interceptor::policy::error::PolicyErrors;

#[derive(Parser, Debug)]
#[command(
    name = "interceptor",
    version,
    about = "Transparent traffic interception for osm-edge sidecars: eBPF without NAT, or osm-edge's iptables chains"
)]
pub struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Init-container mode: osm-edge's nat-table chains.
    #[command(subcommand)]
    Iptables(iptables::IptablesCommand),
    /// Node-daemon mode: eBPF programs, pods enrolled by network namespace.
    #[command(subcommand)]
    Ebpf(ebpf::EbpfCommand),
    /// Show the decision for one flow and the rule that made it.
    #[command(subcommand)]
    Explain(explain::ExplainCommand),
    /// The node daemon: enrolls pods on the CNI plugin's requests, keeps them reconciled.
    Daemon(daemon::DaemonArgs),
    /// The pods the node daemon intercepts (asks its API socket).
    #[command(subcommand)]
    Pods(pods::PodsCommand),
    /// Chain the CNI plugin into the node's CNI configuration, or remove it.
    #[command(subcommand)]
    Cni(cni::CniCommand),
    /// Print the merged policy and any warnings.
    Policy(policy::PolicyCommand),
}

fn main() -> ExitCode {
    // Behave like other command-line tools when the reader goes away (`| head`): exit
    // quietly on SIGPIPE instead of panicking on a failed write.
    // SAFETY: setting a signal disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    interceptor::logging::init(cli.verbose);
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Iptables(cmd) => iptables::run(cmd),
        Command::Ebpf(cmd) => ebpf::run(cmd),
        Command::Explain(cmd) => explain::run(cmd),
        Command::Daemon(args) => daemon::run(args),
        Command::Pods(cmd) => pods::run(cmd),
        Command::Cni(cmd) => cni::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
    }
}

/// 2 for invalid input (nothing applied), 1 for everything else.
fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<PolicyErrors>().is_some() { 2 } else { 1 }
}
