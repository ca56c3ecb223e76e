//! The same pod intercepted in either mode, so that a scenario can be run in both and the
//! results compared: iptables mode (osm-edge's chains) is the oracle.
use anyhow::Result;
use interceptor::{
    iptables::{self, ApplyOptions},
    netns::Netns,
    policy::{ChainNames, Family, Policy},
};

use crate::Sandbox;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Ebpf,
}

impl Mode {
    pub const BOTH: [Mode; 2] = [Mode::Iptables, Mode::Ebpf];
}

impl Sandbox {
    /// Intercepts this pod's traffic with `policy` in `mode` (eBPF: loaded in this
    /// sandbox's own pin directory and attached to its cgroup).
    pub fn intercept(&self, mode: Mode, policy: &Policy) -> Result<()> {
        match mode {
            Mode::Iptables => {
                let opts = ApplyOptions {
                    netns: Netns::at(self.pod_netns()),
                    pod_ips: vec![self.pod_ip().parse()?, self.pod_ip6().parse()?],
                    families: vec![Family::Ipv4, Family::Ipv6],
                    families_explicit: true,
                    names: ChainNames::DOCUMENTED,
                };
                iptables::apply(policy, &opts)?;
            }
            Mode::Ebpf => {
                self.load_ebpf()?;
                self.enroll(policy)?;
            }
        }
        Ok(())
    }
}
