//! The kernel modules a guest needs, in load order, as plain `.ko` files.
//!
//! Debian's kernel packages ship no modules.dep (their postinst runs depmod), and the host
//! need not have kmod, so dependencies are read from each module's own `.modinfo` section
//! (`depends=a,b`). 6.12 compresses modules with xz and busybox's insmod wants plain ELF,
//! so they are decompressed here, on the host, once.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// What the tests need that Debian's cloud kernels build as modules: veth for the sandbox's
/// links, and what iptables-nft uses for osm-edge's nat rules (nf_tables with the xtables
/// compatibility layer for REDIRECT, DNAT (xt_nat), owner, tcp/multiport matches; NAT and
/// conntrack).
pub const WANTED: &[&str] = &[
    "veth",
    "nf_tables",
    "nft_compat",
    "nft_chain_nat",
    "nft_nat",
    "nft_redir",
    "nft_ct",
    "nf_nat",
    "nf_conntrack",
    "x_tables",
    "xt_REDIRECT",
    "xt_nat",
    "xt_owner",
    "xt_tcpudp",
    "xt_multiport",
    "xt_comment",
    "xt_mark",
    "xt_addrtype",
    "xt_conntrack",
];

/// Needed where they are modules, and no news where they are not: nft_counter (every
/// iptables-nft rule has a counter) is its own module on 5.10 and part of nf_tables later;
/// inet_diag + tcp_diag answer sock_diag's TCP dumps (listener adoption), loaded on demand
/// by a node's modprobe, which a guest does not have (without them the adoption reads
/// /proc/net/tcp instead: the unit tests check both readers).
pub const OPTIONAL: &[&str] = &["nft_counter", "inet_diag", "tcp_diag"];

/// Module names compare with `-` and `_` alike (as modprobe does).
fn norm(name: &str) -> String {
    name.replace('-', "_")
}

/// `name` of `…/name.ko[.xz|.zst|.gz]`.
fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.split(".ko").next()?;
    file.contains(".ko").then(|| norm(stem))
}

fn walk(dir: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("read {}", dir.display()))?.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if let Some(n) = module_name(&p) {
            out.insert(n, p);
        }
    }
    Ok(())
}

/// The resolved modules: plain `.ko` files in load order, and what was not found.
pub struct Resolved {
    pub load_order: Vec<(String, PathBuf)>,
    pub built_in: Vec<String>,
    pub not_found: Vec<String>,
}

/// Resolves `wanted` and their dependencies in `modules_dir` (lib/modules/<release>),
/// writing plain `.ko` files into `out_dir`.
pub fn resolve(modules_dir: &Path, wanted: &[&str], out_dir: &Path) -> Result<Resolved> {
    let mut index = BTreeMap::new();
    walk(&modules_dir.join("kernel"), &mut index)?;
    let builtin: BTreeSet<String> = fs::read_to_string(modules_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| module_name(Path::new(l)))
        .collect();
    fs::create_dir_all(out_dir)?;
    let mut r = Resolved { load_order: vec![], built_in: vec![], not_found: vec![] };
    let mut seen = BTreeSet::new();
    for w in wanted {
        visit(&norm(w), &index, &builtin, out_dir, &mut seen, &mut r)?;
    }
    Ok(r)
}

/// Depth first: every dependency is loaded before the module that needs it.
fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    builtin: &BTreeSet<String>,
    out_dir: &Path,
    seen: &mut BTreeSet<String>,
    r: &mut Resolved,
) -> Result<()> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let Some(src) = index.get(name) else {
        if builtin.contains(name) {
            r.built_in.push(name.to_string());
        } else {
            r.not_found.push(name.to_string());
        }
        return Ok(());
    };
    let plain = out_dir.join(format!("{name}.ko"));
    if !plain.exists() {
        decompress(src, &plain)?;
    }
    for dep in depends(&fs::read(&plain)?) {
        visit(&norm(&dep), index, builtin, out_dir, seen, r)?;
    }
    r.load_order.push((name.to_string(), plain));
    Ok(())
}

fn decompress(src: &Path, dst: &Path) -> Result<()> {
    let name = src.to_string_lossy();
    let tool = if name.ends_with(".ko") {
        fs::copy(src, dst)?;
        return Ok(());
    } else if name.ends_with(".xz") {
        "xz"
    } else if name.ends_with(".zst") {
        "zstd"
    } else if name.ends_with(".gz") {
        "gzip"
    } else {
        bail!("unknown module compression: {name}")
    };
    let out = Command::new(tool).arg("-dc").arg(src).output().with_context(|| format!("run {tool} -dc"))?;
    if !out.status.success() {
        bail!("{tool} -dc {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let tmp = dst.with_extension("ko.tmp");
    fs::write(&tmp, &out.stdout)?;
    fs::rename(&tmp, dst)?;
    Ok(())
}

/// The `depends=` entry of a module's `.modinfo` section (NUL-separated `key=value`).
fn depends(ko: &[u8]) -> Vec<String> {
    let needle = b"\0depends=";
    let Some(at) = ko.windows(needle.len()).position(|w| w == needle) else { return vec![] };
    let rest = &ko[at + needle.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).split(',').filter(|s| !s.is_empty()).map(str::to_string).collect()
}
