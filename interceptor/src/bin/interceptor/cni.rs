//! `interceptor cni install|uninstall`: the chained plugin into (and out of) the node's CNI
//! configuration.
use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::Subcommand;
use interceptor::{
    api::DEFAULT_SOCKET,
    cni::{
        DEFAULT_EXCLUDED_NAMESPACES, PLUGIN_TYPE,
        install::{install, plugin_entry, uninstall},
    },
};

#[derive(Subcommand, Debug)]
pub enum CniCommand {
    /// Chain the plugin into the highest-priority conflist and copy its binary (idempotent).
    Install {
        /// The CNI configuration directory (kubelet/containerd: /etc/cni/net.d).
        #[arg(long = "conf-dir", default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// The CNI binary directory (/opt/cni/bin).
        #[arg(long = "bin-dir", default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// The plugin binary to copy (default: interceptor-cni next to this executable).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// The daemon's API socket, as the plugin will reach it.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Namespaces whose pods start without interception (comma separated).
        #[arg(long = "exclude-namespaces", value_delimiter = ',', default_values_t = DEFAULT_EXCLUDED_NAMESPACES.iter().map(|s| s.to_string()).collect::<Vec<String>>())]
        exclude_namespaces: Vec<String>,
    },
    /// Remove exactly what install added.
    Uninstall {
        #[arg(long = "conf-dir", default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        #[arg(long = "bin-dir", default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
    },
}

pub fn run(cmd: CniCommand) -> Result<ExitCode> {
    match cmd {
        CniCommand::Install { conf_dir, bin_dir, binary, socket, exclude_namespaces } => {
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe()?.with_file_name(PLUGIN_TYPE),
            };
            let entry = plugin_entry(&socket, &exclude_namespaces);
            let r = install(&conf_dir, &bin_dir, &binary, &entry)?;
            eprintln!("{r}");
        }
        CniCommand::Uninstall { conf_dir, bin_dir } => {
            let r = uninstall(&conf_dir, &bin_dir)?;
            eprintln!("{r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
