//! The pod's own addresses for localProxyMode PodIP (the proxy's connections to 127.0.0.1
//! go to the pod's address of the same family), resolved one way for every mode: the
//! address given for a family (`--pod-ip`, `POD_IP`, the CNI result), else the first
//! global address of that family the pod's network namespace has, where the caller reads
//! the namespace (eBPF mode, for each family; the daemon in iptables mode, when the runtime
//! gave no address; the init container is given `POD_IP`). The errors of a PodIP policy
//! without the address it needs are here too.
use std::net::IpAddr;

use super::{Family, LocalProxyMode, Policy};

/// At most one address per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodIps {
    pub v4: Option<IpAddr>,
    pub v6: Option<IpAddr>,
}

impl PodIps {
    /// The first given address of each family.
    pub fn given(given: &[IpAddr]) -> PodIps {
        PodIps::default().or_from(given.iter().copied())
    }

    /// The families without an address take the first of `addrs` of theirs (the
    /// namespace's global addresses).
    pub fn or_from(self, addrs: impl IntoIterator<Item = IpAddr>) -> PodIps {
        let mut out = self;
        for ip in addrs {
            let slot = if ip.is_ipv6() { &mut out.v6 } else { &mut out.v4 };
            slot.get_or_insert(ip);
        }
        out
    }

    pub fn get(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => self.v4,
            Family::Ipv6 => self.v6,
        }
    }

    pub fn to_vec(&self) -> Vec<IpAddr> {
        self.v4.into_iter().chain(self.v6).collect()
    }

    /// eBPF mode: a pod in PodIP mode needs an address of at least one family (the pod's
    /// flags say which it has).
    pub fn require_any(&self, policy: &Policy) -> Result<(), PodIpError> {
        if policy.local_proxy_mode == LocalProxyMode::PodIp && self.v4.is_none() && self.v6.is_none() {
            return Err(PodIpError::NoAddress);
        }
        Ok(())
    }

    /// iptables mode: the DNAT rule of `family` needs the pod's address of that family.
    pub fn require(&self, policy: &Policy, family: Family) -> Result<Option<IpAddr>, PodIpError> {
        let ip = self.get(family);
        if policy.local_proxy_mode == LocalProxyMode::PodIp && ip.is_none() {
            return Err(PodIpError::NoFamilyAddress { family });
        }
        Ok(ip)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PodIpError {
    #[error("localProxyMode PodIP needs the pod's address: pass --pod-ip (the namespace has no global address)")]
    NoAddress,
    #[error(
        "localProxyMode PodIP needs the pod's {family} address: pass --pod-ip or set POD_IP{}",
        if *family == Family::Ipv6 { " (or drop IPv6 with --family ipv4)" } else { "" }
    )]
    NoFamilyAddress { family: Family },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_given_address_wins_and_the_namespace_fills_the_other_family() {
        let ips = PodIps::given(&[ip("203.0.113.9"), ip("198.51.100.2")]).or_from([
            ip("198.51.100.7"),
            ip("2001:db8::7"),
            ip("2001:db8::8"),
        ]);
        assert_eq!(ips, PodIps { v4: Some(ip("203.0.113.9")), v6: Some(ip("2001:db8::7")) });
        assert_eq!(ips.to_vec(), [ip("203.0.113.9"), ip("2001:db8::7")]);
    }

    #[test]
    fn podip_mode_without_an_address_is_an_error_naming_the_family() {
        let podip = Policy { local_proxy_mode: LocalProxyMode::PodIp, ..Policy::default() };
        let v4 = PodIps::given(&[ip("198.51.100.2")]);
        assert_eq!(v4.require(&podip, Family::Ipv4), Ok(Some(ip("198.51.100.2"))));
        let e = v4.require(&podip, Family::Ipv6).unwrap_err().to_string();
        assert!(e.contains("needs the pod's IPv6 address") && e.contains("--family ipv4"), "{e}");
        assert_eq!(PodIps::default().require_any(&podip), Err(PodIpError::NoAddress));
        assert_eq!(PodIps::default().require(&Policy::default(), Family::Ipv6), Ok(None));
        assert!(v4.require_any(&podip).is_ok());
    }
}
