//! `interceptor cni install|uninstall`: the plugin into (and out of) the node's CNI
//! configuration.
//!
//! The runtime (kubelet's CRI: containerd, CRI-O) uses the lexically first network
//! configuration file of its configuration directory (`*.conf`, `*.conflist`, `*.json`).
//! `install` appends the plugin to that file's `plugins` (or updates its entry in place:
//! installing twice changes nothing), keeping the file as it was before the first install
//! in `<file>.interceptor-backup` (an extension the runtime ignores), and copies the plugin
//! binary into the CNI binary directory. Every write is atomic (temporary file + rename).
//! `uninstall` removes exactly the plugin's entry from every conflist (whatever else
//! changed since stays), the backups, and the binary.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::{ANNOTATIONS_CAPABILITY, PLUGIN_TYPE};
use crate::files::{FileError, write_atomically};

pub const BACKUP_SUFFIX: &str = ".interceptor-backup";

/// Why the plugin cannot be installed (or removed): nothing to chain into, a configuration
/// it cannot safely edit, a file operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "no CNI network configuration in {}: install the cluster's network plugin first (interceptor-cni chains after it)",
        dir.display()
    )]
    NoConfiguration { dir: PathBuf },
    #[error(
        "the runtime's network configuration {} is a single-plugin file; chained plugins need a .conflist (convert it first)",
        file.display()
    )]
    SinglePlugin { file: PathBuf },
    #[error("{} is not valid JSON", file.display())]
    NotJson { file: PathBuf, source: serde_json::Error },
    #[error("{} has no \"plugins\" list", file.display())]
    NoPlugins { file: PathBuf },
    #[error(transparent)]
    File(#[from] FileError),
}

type Result<T> = std::result::Result<T, InstallError>;

/// What was being done when a file operation failed.
fn file_op<T>(r: std::io::Result<T>, what: impl FnOnce() -> String) -> Result<T> {
    r.map_err(|e| FileError::new(what(), e).into())
}

/// The plugin's conflist entry.
pub fn plugin_entry(socket: &Path, exclude_namespaces: &[String]) -> Value {
    json!({
        "type": PLUGIN_TYPE,
        "socket": socket,
        "excludeNamespaces": exclude_namespaces,
        "capabilities": {ANNOTATIONS_CAPABILITY: true},
    })
}

/// The file the runtime uses: the lexically first network configuration.
pub fn highest_priority(conf_dir: &Path) -> Result<PathBuf> {
    let entries = file_op(fs::read_dir(conf_dir), || {
        format!("cannot read the CNI configuration directory {}", conf_dir.display())
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("conf" | "conflist" | "json")))
        .collect();
    files.sort();
    let Some(first) = files.into_iter().next() else {
        return Err(InstallError::NoConfiguration { dir: conf_dir.to_path_buf() });
    };
    if first.extension().and_then(|e| e.to_str()) != Some("conflist") {
        return Err(InstallError::SinglePlugin { file: first });
    }
    Ok(first)
}

fn read_conflist(path: &Path) -> Result<Value> {
    let text = file_op(fs::read_to_string(path), || format!("cannot read {}", path.display()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|source| InstallError::NotJson { file: path.to_path_buf(), source })?;
    if !v.get("plugins").is_some_and(Value::is_array) {
        return Err(InstallError::NoPlugins { file: path.to_path_buf() });
    }
    Ok(v)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(v).expect("a JSON value serializes");
    text.push('\n');
    write_atomically(path, text.as_bytes())?;
    file_op(fs::set_permissions(path, fs::Permissions::from_mode(0o644)), || {
        format!("cannot chmod {}", path.display())
    })?;
    Ok(())
}

fn is_ours(p: &Value) -> bool {
    p.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

/// Installs; returns what was done.
pub fn install(conf_dir: &Path, bin_dir: &Path, binary: &Path, entry: &Value) -> Result<String> {
    let conflist = highest_priority(conf_dir)?;
    let mut v = read_conflist(&conflist)?;
    let mut done = Vec::new();

    file_op(fs::create_dir_all(bin_dir), || format!("cannot create {}", bin_dir.display()))?;
    let dest = bin_dir.join(PLUGIN_TYPE);
    let bytes = file_op(fs::read(binary), || format!("cannot read the plugin binary {}", binary.display()))?;
    if fs::read(&dest).ok().as_deref() != Some(bytes.as_slice()) {
        // A binary the runtime may be executing is replaced by rename, never rewritten.
        write_atomically(&dest, &bytes)?;
        file_op(fs::set_permissions(&dest, fs::Permissions::from_mode(0o755)), || {
            format!("cannot chmod {}", dest.display())
        })?;
        done.push(format!("copied {} to {}", binary.display(), dest.display()));
    }

    let plugins = v["plugins"].as_array_mut().expect("checked");
    let changed = match plugins.iter().position(is_ours) {
        Some(i) if plugins[i] == *entry => false,
        Some(i) => {
            plugins[i] = entry.clone();
            true
        }
        None => {
            plugins.push(entry.clone());
            true
        }
    };
    if changed {
        let backup = backup_path(&conflist);
        if !backup.exists() {
            file_op(fs::copy(&conflist, &backup), || format!("cannot back up {}", conflist.display()))?;
            done.push(format!("kept the original in {}", backup.display()));
        }
        write_json(&conflist, &v)?;
        done.push(format!("chained {PLUGIN_TYPE} into {}", conflist.display()));
    }
    if done.is_empty() {
        return Ok(format!("{PLUGIN_TYPE} is already installed in {}; nothing changed", conflist.display()));
    }
    Ok(done.join("\n"))
}

fn backup_path(conflist: &Path) -> PathBuf {
    let mut s = conflist.as_os_str().to_owned();
    s.push(BACKUP_SUFFIX);
    PathBuf::from(s)
}

/// Removes the plugin's entries, the backups and the binary; returns what was done.
pub fn uninstall(conf_dir: &Path, bin_dir: &Path) -> Result<String> {
    let mut done = Vec::new();
    let entries = file_op(fs::read_dir(conf_dir), || format!("cannot read {}", conf_dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("conflist"))
        .collect();
    files.sort();
    for f in files {
        let Ok(mut v) = read_conflist(&f) else { continue };
        let plugins = v["plugins"].as_array_mut().expect("checked");
        let before = plugins.len();
        plugins.retain(|p| !is_ours(p));
        if plugins.len() != before {
            write_json(&f, &v)?;
            done.push(format!("removed {PLUGIN_TYPE} from {}", f.display()));
        }
        let backup = backup_path(&f);
        if backup.exists() {
            file_op(fs::remove_file(&backup), || format!("cannot remove {}", backup.display()))?;
            done.push(format!("removed {}", backup.display()));
        }
    }
    let bin = bin_dir.join(PLUGIN_TYPE);
    if bin.exists() {
        file_op(fs::remove_file(&bin), || format!("cannot remove {}", bin.display()))?;
        done.push(format!("removed {}", bin.display()));
    }
    if done.is_empty() {
        return Ok(format!("{PLUGIN_TYPE} was not installed; nothing changed"));
    }
    Ok(done.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("interceptor-cni-install-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("net.d")).unwrap();
        fs::create_dir_all(d.join("bin")).unwrap();
        d
    }

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;

    #[test]
    fn install_is_idempotent_keeps_a_backup_and_uninstall_removes_exactly_it() {
        let d = dir("roundtrip");
        let conf = d.join("net.d");
        fs::write(conf.join("10-k8s.conflist"), BRIDGE).unwrap();
        fs::write(conf.join("20-other.conflist"), BRIDGE).unwrap();
        fs::write(conf.join("README"), "not a config").unwrap();
        let binary = d.join("interceptor-cni-build");
        fs::write(&binary, b"#!/bin/true\n").unwrap();
        let entry = plugin_entry(Path::new("/run/interceptor/interceptor.sock"), &["kube-system".into()]);

        let r = install(&conf, &d.join("bin"), &binary, &entry).unwrap();
        assert!(r.contains("chained interceptor-cni into"), "{r}");
        let v = read_conflist(&conf.join("10-k8s.conflist")).unwrap();
        let types: Vec<&str> = v["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["bridge", "portmap", "interceptor-cni"]);
        assert_eq!(v["plugins"][2]["capabilities"][ANNOTATIONS_CAPABILITY], true);
        assert_eq!(fs::read_to_string(conf.join("20-other.conflist")).unwrap(), BRIDGE, "only the first file");
        assert_eq!(fs::read_to_string(conf.join("10-k8s.conflist.interceptor-backup")).unwrap(), BRIDGE);
        assert!(d.join("bin/interceptor-cni").metadata().unwrap().permissions().mode() & 0o111 != 0);

        let again = install(&conf, &d.join("bin"), &binary, &entry).unwrap();
        assert!(again.contains("nothing changed"), "{again}");
        assert_eq!(read_conflist(&conf.join("10-k8s.conflist")).unwrap(), v);

        // A new setting updates the entry in place, the backup stays the original.
        let entry2 = plugin_entry(Path::new("/run/other.sock"), &[]);
        install(&conf, &d.join("bin"), &binary, &entry2).unwrap();
        let v2 = read_conflist(&conf.join("10-k8s.conflist")).unwrap();
        assert_eq!(v2["plugins"].as_array().unwrap().len(), 3);
        assert_eq!(v2["plugins"][2]["socket"], "/run/other.sock");
        assert_eq!(fs::read_to_string(conf.join("10-k8s.conflist.interceptor-backup")).unwrap(), BRIDGE);

        // Something else changed the file meanwhile: uninstall keeps that change.
        let mut edited = v2.clone();
        edited["plugins"].as_array_mut().unwrap().insert(1, json!({"type": "tuning"}));
        write_json(&conf.join("10-k8s.conflist"), &edited).unwrap();
        let r = uninstall(&conf, &d.join("bin")).unwrap();
        assert!(r.contains("removed interceptor-cni from"), "{r}");
        let after = read_conflist(&conf.join("10-k8s.conflist")).unwrap();
        let types: Vec<&str> =
            after["plugins"].as_array().unwrap().iter().map(|p| p["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["bridge", "tuning", "portmap"]);
        assert!(!conf.join("10-k8s.conflist.interceptor-backup").exists());
        assert!(!d.join("bin/interceptor-cni").exists());
        assert!(uninstall(&conf, &d.join("bin")).unwrap().contains("nothing changed"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn install_refuses_what_it_cannot_chain_into() {
        let d = dir("refuse");
        let conf = d.join("net.d");
        let binary = d.join("b");
        fs::write(&binary, b"x").unwrap();
        let entry = plugin_entry(Path::new("/s"), &[]);
        let e = install(&conf, &d.join("bin"), &binary, &entry).unwrap_err();
        assert!(e.to_string().contains("no CNI network configuration"), "{e}");
        fs::write(conf.join("05-single.conf"), r#"{"cniVersion":"0.4.0","name":"x","type":"bridge"}"#).unwrap();
        fs::write(conf.join("10-k8s.conflist"), BRIDGE).unwrap();
        let e = install(&conf, &d.join("bin"), &binary, &entry).unwrap_err();
        assert!(e.to_string().contains("single-plugin file"), "{e}");
        assert_eq!(fs::read_to_string(conf.join("10-k8s.conflist")).unwrap(), BRIDGE, "nothing changed");
        fs::remove_dir_all(&d).unwrap();
    }
}
