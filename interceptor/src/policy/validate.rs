//! Parsing and checking of single items, and the warnings about a merged policy.
use std::{collections::HashSet, str::FromStr};

use ipnet::IpNet;

use super::{
    Cidr, Family, Policy,
    error::{Origin, PolicyError, Warning},
};

/// A CIDR must have an explicit prefix (`1.2.3.4/32`, not `1.2.3.4`), as Go's
/// net.ParseCIDR requires in osm-edge.
pub fn parse_cidr(origin: &Origin, raw: &str) -> Result<Cidr, PolicyError> {
    let text = raw.trim();
    let err = |reason: &str| PolicyError::InvalidCidr {
        origin: origin.clone(),
        item: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(err("empty item (stray comma?)"));
    }
    if !text.contains('/') {
        return Err(err("expected ADDRESS/PREFIX, e.g. 10.0.0.0/8 or 2001:db8::/32"));
    }
    let net = IpNet::from_str(text)
        .map_err(|_| err("not an IPv4 or IPv6 network (ADDRESS/PREFIX, prefix ≤ 32 for IPv4, ≤ 128 for IPv6)"))?;
    Ok(Cidr { text: text.into(), net })
}

/// A port is a decimal integer in 1..=65535.
pub fn parse_port(origin: &Origin, raw: &str) -> Result<u16, PolicyError> {
    let text = raw.trim();
    let err = |reason: &str| PolicyError::InvalidPort {
        origin: origin.clone(),
        item: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(err("empty item (stray comma?)"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err("not a number"));
    }
    match text.parse::<u64>() {
        Ok(0) => Err(err("port 0 is not a valid port")),
        Ok(p) if p > 65535 => Err(err("greater than 65535")),
        Ok(p) => Ok(p as u16),
        Err(_) => Err(err("greater than 65535")),
    }
}

/// Interface names: what the kernel accepts and iptables can match — at most 15 characters
/// (IFNAMSIZ - 1) of `[A-Za-z0-9_.@-]`, optionally ending with iptables' `+` wildcard
/// (`eth+` matches every interface whose name starts with `eth`). The kernel itself allows
/// more (anything but `/`, `:` and whitespace), but such names have no place in a policy:
/// they end up in iptables rules and in the shell form the init container runs.
pub fn parse_interface(origin: &Origin, raw: &str) -> Result<String, PolicyError> {
    let text = raw.trim();
    let err = |reason: &str| PolicyError::InvalidInterface {
        origin: origin.clone(),
        item: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() {
        return Err(err("empty item (stray comma?)"));
    }
    if text == "+" {
        return Err(err("'+' alone would match every interface"));
    }
    let name = text.strip_suffix('+').unwrap_or(text);
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | '-'))) {
        let why = if c == '+' {
            "'+' is only allowed at the end (wildcard)".to_string()
        } else {
            format!("contains {c:?} (allowed: letters, digits, '_', '.', '@', '-', and a trailing '+')")
        };
        return Err(err(&why));
    }
    if text.len() > 15 {
        return Err(err("longer than 15 characters (IFNAMSIZ)"));
    }
    if name == "." || name == ".." {
        return Err(err("reserved name"));
    }
    Ok(text.to_string())
}

/// Suspicious but legal content of a merged policy.
pub fn warnings(policy: &Policy) -> Vec<Warning> {
    let mut out = Vec::new();
    let merged = |what: &str| Origin::Merged(what.to_string());
    for (list, ports) in [
        ("outbound port exclusion list", &policy.outbound_port_exclusions),
        ("inbound port exclusion list", &policy.inbound_port_exclusions),
    ] {
        for port in ports {
            for (name, reserved) in policy.ports.named() {
                if *port == reserved {
                    out.push(Warning {
                        origin: merged(list),
                        message: format!("port {port} is the sidecar's reserved {name} port"),
                    });
                }
            }
        }
    }
    for cidr in &policy.outbound_ip_range_exclusions {
        if cidr.net.prefix_len() == 0 {
            out.push(Warning {
                origin: merged("outbound IP range exclusion list"),
                message: format!(
                    "{} excludes every {} destination: outbound {} traffic is not intercepted at all",
                    cidr.text,
                    cidr.family(),
                    cidr.family()
                ),
            });
        }
    }
    let fams: HashSet<Family> = policy.outbound_ip_range_inclusions.iter().map(Cidr::family).collect();
    if fams.len() == 1 {
        let only = *fams.iter().next().expect("one family");
        let other = only.other();
        out.push(Warning {
            origin: merged("outbound IP range inclusion list"),
            message: format!(
                "only {only} ranges are included: {other} traffic keeps the default (every {other} destination is redirected)"
            ),
        });
    }
    if policy.proxy_uid == 0 {
        out.push(Warning {
            origin: merged("proxy UID"),
            message: "proxy UID 0 (root): every root process bypasses interception".to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag() -> Origin {
        Origin::Flag("x".into())
    }

    #[test]
    fn cidrs() {
        assert_eq!(&*parse_cidr(&flag(), " 10.0.0.1/8 ").unwrap().text, "10.0.0.1/8");
        assert!(parse_cidr(&flag(), "2001:db8::/32").is_ok());
        for bad in ["", "10.0.0.1", "10.0.0.0/33", "foo/8", "2001:db8::/129", "1.2.3/8"] {
            let e = parse_cidr(&flag(), bad).unwrap_err();
            assert!(matches!(e, PolicyError::InvalidCidr { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("flag --x"), "{e}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port(&flag(), " 6379").unwrap(), 6379);
        assert_eq!(parse_port(&flag(), "65535").unwrap(), 65535);
        for (bad, why) in [
            ("0", "port 0"),
            ("65536", "greater than 65535"),
            ("99999999999999999999999", "greater than 65535"),
            ("-1", "not a number"),
            ("http", "not a number"),
            ("", "empty"),
        ] {
            let e = parse_port(&flag(), bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn interfaces() {
        assert_eq!(parse_interface(&flag(), "eth0").unwrap(), "eth0");
        assert_eq!(parse_interface(&flag(), "veth+").unwrap(), "veth+");
        assert_eq!(parse_interface(&flag(), "br-1a2b.100@x_").unwrap(), "br-1a2b.100@x_");
        assert_eq!(parse_interface(&flag(), "fifteen-chars-+").unwrap(), "fifteen-chars-+");
        for bad in [
            "",
            "a/b",
            "a b",
            "sixteen-chars-xx",
            "..",
            "e+th",
            "+",
            "eth0:1",
            "eth$(reboot)",
            "e`id`",
            "e;x",
            "ëth0",
            "e'",
        ] {
            let e = parse_interface(&flag(), bad).unwrap_err().to_string();
            assert!(e.contains("flag --x: invalid interface name"), "{bad}: {e}");
        }
        let e = parse_interface(&flag(), "eth0$(reboot)").unwrap_err().to_string();
        assert!(e.contains("contains '$'"), "{e}");
    }
}
