//! What can go wrong in iptables mode: iptables is missing or refused a payload (with its
//! exit status and what it said), the namespace cannot be entered, PodIP mode lacks the
//! pod's address.
use std::{io, process::ExitStatus};

use crate::{
    netns::NetnsError,
    policy::{Family, PodIpError},
};

#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    #[error("{program} not found on PATH: install iptables (Debian/Ubuntu: apt-get install iptables)")]
    NotInstalled { program: &'static str },
    #[error("cannot run {program} in {netns}")]
    Spawn { program: &'static str, netns: String, source: io::Error },
    /// iptables ran and failed: its exit status and what it printed on stderr.
    #[error("{program} {args} failed ({status}): {stderr}")]
    Failed { program: &'static str, args: String, status: ExitStatus, stderr: String },
    /// `iptables-restore --test` refused a family's payload: nothing was changed.
    #[error("the {family} rules were rejected; nothing was applied")]
    Rejected { family: Family, source: Box<IptablesError> },
    /// Committing a family failed; the families committed before it were rolled back.
    #[error("applying the {family} rules failed; nothing was applied")]
    NotApplied { family: Family, source: Box<IptablesError> },
    #[error("removing the {family} rules failed")]
    NotRemoved { family: Family, source: Box<IptablesError> },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    PodIp(#[from] PodIpError),
}

impl IptablesError {
    /// The exit status of the iptables program that failed, if one ran.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            IptablesError::Failed { status, .. } => status.code(),
            IptablesError::Rejected { source, .. }
            | IptablesError::NotApplied { source, .. }
            | IptablesError::NotRemoved { source, .. } => source.exit_code(),
            _ => None,
        }
    }
}
