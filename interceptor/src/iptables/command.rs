//! Running iptables-save / iptables-restore inside a pod's network namespace, with
//! whichever iptables is on PATH (nft or legacy).
use std::{
    io::Write,
    process::{Command, Stdio},
    sync::Mutex,
};

use super::IptablesError;
use crate::{netns::Netns, policy::Family};

type Result<T> = std::result::Result<T, IptablesError>;

/// The iptables programs of a family.
impl Family {
    /// `iptables-restore` or `ip6tables-restore`.
    pub fn restore_command(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-restore",
            Family::Ipv6 => "ip6tables-restore",
        }
    }

    pub fn save_command(self) -> &'static str {
        match self {
            Family::Ipv4 => "iptables-save",
            Family::Ipv6 => "ip6tables-save",
        }
    }

    /// The kernel's list of the legacy (x_tables) tables of the calling thread's network
    /// namespace.
    fn legacy_tables_file(self) -> &'static str {
        match self {
            Family::Ipv4 => "/proc/thread-self/net/ip_tables_names",
            Family::Ipv6 => "/proc/thread-self/net/ip6_tables_names",
        }
    }
}

/// Whether `program` is an executable file in a directory of PATH.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs `program args` in `netns` with `stdin`; its stdout, or an error with its exit
/// status and stderr.
pub fn run(netns: &Netns, program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    if !on_path(program) {
        return Err(IptablesError::NotInstalled { program });
    }
    let mut cmd: Command = netns.command(program)?;
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let spawn_failed = |source| IptablesError::Spawn { program, netns: netns.describe(), source };
    let mut child = cmd.spawn().map_err(spawn_failed)?;
    if let Some(input) = stdin {
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).map_err(spawn_failed)?;
    }
    let out = child.wait_with_output().map_err(spawn_failed)?;
    if !out.status.success() {
        return Err(IptablesError::Failed {
            program,
            args: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Which kernel interface an iptables program drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// nf_tables: iptables-nft-save shows a table's built-in chains even before it exists.
    Nft,
    /// x_tables: iptables-legacy-save fails on a table the kernel has not created.
    Legacy,
}

/// The backend of `program`, from its `--version` line ("iptables-save v1.8.9
/// (nf_tables)"; legacy builds say "(legacy)", versions before 1.8 nothing). Asked once per
/// program.
fn backend(program: &'static str) -> Result<Backend> {
    static KNOWN: Mutex<Vec<(&str, Backend)>> = Mutex::new(Vec::new());
    if let Some((_, b)) = KNOWN.lock().unwrap().iter().find(|(p, _)| *p == program) {
        return Ok(*b);
    }
    let version = run(&Netns::current(), program, &["--version"], None)?;
    let b = if version.contains("(nf_tables)") { Backend::Nft } else { Backend::Legacy };
    KNOWN.lock().unwrap().push((program, b));
    Ok(b)
}

/// The live nat table of a family (empty when it does not exist yet).
///
/// With legacy iptables the kernel creates a namespace's nat table at its first use (and
/// cannot where the module is not available), and saving a table that does not exist
/// fails: the kernel's own list of the namespace's tables says whether it is there, so
/// an absent table reads as empty and every failure of iptables-save is an error.
pub fn save(netns: &Netns, family: Family) -> Result<String> {
    let program = family.save_command();
    if backend(program)? == Backend::Legacy {
        let list = family.legacy_tables_file();
        let has_nat = netns.run(move || {
            let names = std::fs::read_to_string(list).unwrap_or_default();
            Ok::<_, IptablesError>(names.lines().any(|t| t == "nat"))
        })?;
        if !has_nat {
            return Ok(String::new());
        }
    }
    run(netns, program, &["-t", "nat"], None)
}

/// iptables-restore `--noflush` (`--test`: only checks the payload).
pub fn restore(netns: &Netns, family: Family, payload: &str, test_only: bool) -> Result<()> {
    let mut args = vec!["--noflush"];
    if test_only {
        args.push("--test");
    }
    run(netns, family.restore_command(), &args, Some(payload)).map(drop)
}

/// Replaces the whole nat table with `table` (a saved one: rolling back).
pub fn restore_table(netns: &Netns, family: Family, table: &str) -> Result<()> {
    run(netns, family.restore_command(), &["--table", "nat"], Some(table)).map(drop)
}
