//! osm-edge's merge of global (MeshConfig / flags) and per-pod (annotation) lists
//! (`pkg/injector/exclusions.go`): de-duplicated keeping the first occurrence; port lists
//! are global first, then pod; IP range lists are pod first, then global.
use std::{collections::HashSet, hash::Hash};

use super::error::{Origin, Warning};

/// An item with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

/// Concatenates `first` and `second`, keeping the first occurrence of each key. Dropped
/// duplicates are reported as warnings.
pub fn merge_dedup<T: Clone, K: Eq + Hash>(
    first: &[Sourced<T>],
    second: &[Sourced<T>],
    key: impl Fn(&T) -> K,
    show: impl Fn(&T) -> String,
    warnings: &mut Vec<Warning>,
) -> Vec<T> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for item in first.iter().chain(second) {
        if seen.insert(key(&item.value)) {
            out.push(item.value.clone());
        } else {
            warnings.push(Warning {
                origin: item.origin.clone(),
                message: format!("duplicate {} ignored (already listed)", show(&item.value)),
            });
        }
    }
    out
}

/// Port lists: global first, then pod.
pub fn ports(global: &[Sourced<u16>], pod: &[Sourced<u16>], w: &mut Vec<Warning>) -> Vec<u16> {
    merge_dedup(global, pod, |p| *p, |p| format!("port {p}"), w)
}

/// IP range lists: pod first, then global; de-duplicated by the text, as osm-edge does.
pub fn ip_ranges(
    global: &[Sourced<super::Cidr>],
    pod: &[Sourced<super::Cidr>],
    w: &mut Vec<Warning>,
) -> Vec<super::Cidr> {
    merge_dedup(pod, global, |c| c.text.clone(), |c| format!("range {}", c.text), w)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::validate::parse_cidr;

    fn s<T>(value: T, tag: &str) -> Sourced<T> {
        Sourced { value, origin: Origin::Flag(tag.into()) }
    }

    #[test]
    fn ports_are_global_then_pod_deduplicated() {
        let mut w = Vec::new();
        let merged = ports(&[s(20, "g"), s(10, "g"), s(20, "g")], &[s(30, "p"), s(10, "p"), s(40, "p")], &mut w);
        assert_eq!(merged, vec![20, 10, 30, 40]);
        assert_eq!(w.len(), 2);
        assert!(w[1].to_string().contains("flag --p: duplicate port 10"), "{}", w[1]);
    }

    #[test]
    fn ip_ranges_are_pod_then_global_deduplicated_by_text() {
        let c = |t: &str| parse_cidr(&Origin::Flag("t".into()), t).unwrap();
        let mut w = Vec::new();
        let merged = ip_ranges(
            &[s(c("1.1.1.1/32"), "g"), s(c("2.2.2.2/24"), "g")],
            &[s(c("2.2.2.2/24"), "p"), s(c("3.3.3.3/32"), "p"), s(c("2.2.2.0/24"), "p")],
            &mut w,
        );
        let texts: Vec<_> = merged.iter().map(|c| c.text.as_str()).collect();
        // 2.2.2.2/24 and 2.2.2.0/24 are the same network but different text: both kept.
        assert_eq!(texts, ["2.2.2.2/24", "3.3.3.3/32", "2.2.2.0/24", "1.1.1.1/32"]);
        assert_eq!(w.len(), 1);
    }
}
