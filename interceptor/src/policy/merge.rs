//! osm-edge's merge of global (MeshConfig / flags) and per-pod (annotation) lists
//! (`pkg/injector/exclusions.go`): de-duplicated keeping the first occurrence; port lists
//! are global first, then pod; IP range lists are pod first, then global.
use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
};

use ipnet::IpNet;

use super::{
    Cidr,
    error::{Origin, Warning},
};

/// An item with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

/// Concatenates `first` and `second`, keeping the first occurrence of each key. Dropped
/// duplicates are reported as warnings.
pub fn merge_dedup<'a, T: Clone, K: Eq + Hash>(
    first: &'a [Sourced<T>],
    second: &'a [Sourced<T>],
    key: impl Fn(&'a T) -> K,
    show: impl Fn(&T) -> String,
    warnings: &mut Vec<Warning>,
) -> Vec<T> {
    let mut seen = HashSet::with_capacity(first.len() + second.len());
    let mut out = Vec::with_capacity(first.len() + second.len());
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

/// A global IP range list prepared once for merging into many pods' lists (the node
/// daemon: a MeshConfig of thousands of ranges, hundreds of pods): [`GlobalRanges::merge`]
/// gives what [`ip_ranges`] gives, without hashing every global range again per pod.
pub struct GlobalRanges {
    items: Vec<Sourced<Cidr>>,
    /// Item `i` repeats the text of an earlier item.
    repeats: Vec<bool>,
    /// Each text's first item.
    first: HashMap<std::sync::Arc<str>, usize>,
    /// The networks of the list (the pod's own ranges are those not among them).
    pub nets: HashSet<IpNet>,
}

impl GlobalRanges {
    pub fn new(items: Vec<Sourced<Cidr>>) -> GlobalRanges {
        let mut first = HashMap::with_capacity(items.len());
        let repeats = items
            .iter()
            .enumerate()
            .map(|(i, c)| match first.entry(c.value.text.clone()) {
                std::collections::hash_map::Entry::Occupied(_) => true,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                    false
                }
            })
            .collect();
        let nets = items.iter().map(|c| c.value.net.trunc()).collect();
        GlobalRanges { items, repeats, first, nets }
    }

    /// Pod first, then global, de-duplicated by the text; the same list and warnings, in
    /// the same order, as [`ip_ranges`].
    pub fn merge(&self, pod: &[Sourced<Cidr>], warnings: &mut Vec<Warning>) -> Vec<Cidr> {
        let mut seen = HashSet::with_capacity(pod.len());
        let mut out = Vec::with_capacity(pod.len() + self.items.len());
        // The global items a pod's range repeats (their later repeats are `repeats`).
        let mut listed_by_pod = Vec::new();
        for item in pod {
            if seen.insert(&*item.value.text) {
                out.push(item.value.clone());
                listed_by_pod.extend(self.first.get(&item.value.text).copied());
            } else {
                warnings.push(duplicate_range(item));
            }
        }
        for (i, item) in self.items.iter().enumerate() {
            if self.repeats[i] || listed_by_pod.contains(&i) {
                warnings.push(duplicate_range(item));
            } else {
                out.push(item.value.clone());
            }
        }
        out
    }
}

fn duplicate_range(item: &Sourced<Cidr>) -> Warning {
    Warning {
        origin: item.origin.clone(),
        message: format!("duplicate range {} ignored (already listed)", item.value.text),
    }
}

/// IP range lists: pod first, then global; de-duplicated by the text, as osm-edge does.
/// (The reference for [`GlobalRanges::merge`], which policies are built with.)
#[cfg(test)]
pub fn ip_ranges(
    global: &[Sourced<super::Cidr>],
    pod: &[Sourced<super::Cidr>],
    w: &mut Vec<Warning>,
) -> Vec<super::Cidr> {
    merge_dedup(pod, global, |c| &*c.text, |c| format!("range {}", c.text), w)
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
        let texts: Vec<_> = merged.iter().map(|c| &*c.text).collect();
        // 2.2.2.2/24 and 2.2.2.0/24 are the same network but different text: both kept.
        assert_eq!(texts, ["2.2.2.2/24", "3.3.3.3/32", "2.2.2.0/24", "1.1.1.1/32"]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn prepared_global_ranges_merge_exactly_like_ip_ranges() {
        // Small texts so that repeats (within the global list, within the pod's, across
        // both, same network under another text) are frequent.
        let texts = ["10.0.0.0/8", "10.0.0.1/8", "10.1.0.0/16", "2001:db8::/32", "203.0.113.9/32", "198.51.100.0/24"];
        let c = |t: &str| parse_cidr(&Origin::Flag("t".into()), t).unwrap();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for round in 0..500 {
            let global: Vec<_> = (0..next(8)).map(|i| s(c(texts[next(texts.len())]), &format!("g{i}"))).collect();
            let pod: Vec<_> = (0..next(5)).map(|i| s(c(texts[next(texts.len())]), &format!("p{i}"))).collect();
            let (mut want_w, mut got_w) = (Vec::new(), Vec::new());
            let want = ip_ranges(&global, &pod, &mut want_w);
            let prepared = GlobalRanges::new(global.clone());
            assert_eq!(prepared.merge(&pod, &mut got_w), want, "round {round}: {global:?} + {pod:?}");
            assert_eq!(got_w, want_w, "round {round}: the same warnings in the same order");
            // Prepared once, merged into many pods: no state carried over.
            assert_eq!(prepared.merge(&pod, &mut Vec::new()), want);
        }
    }
}
