//! File watches (inotify through the `notify` crate): the MeshConfig's directory (editors
//! and Kubernetes ConfigMap volumes replace files by rename, so the directory is watched,
//! not the file) and the pod manifest directory (an edited `<namespace>/<name>.yaml`
//! re-applies that pod). The periodic reconcile re-reads the MeshConfig too, in case an
//! event is lost.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use notify::{RecursiveMode, Watcher};

use super::core::Daemon;

const QUIET: Duration = Duration::from_millis(200);

/// Starts the watches; the returned watcher must be kept alive.
pub fn start(d: Arc<Daemon>) -> Result<Option<notify::RecommendedWatcher>> {
    let mesh_dir = d.cfg.mesh_config.as_ref().map(|p| p.parent().unwrap_or(Path::new("/")).to_path_buf());
    let manifest_dir = d.cfg.pod_manifest_dir.clone();
    if mesh_dir.is_none() && manifest_dir.is_none() {
        return Ok(None);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            for p in ev.paths {
                let _ = tx.send(p);
            }
        }
        Err(e) => tracing::warn!("file watch error: {e}"),
    })
    .context("cannot start watching files (inotify)")?;
    if let Some(dir) = &mesh_dir {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch the MeshConfig's directory {}", dir.display()))?;
    }
    if let Some(dir) = &manifest_dir
        && let Err(e) = watcher.watch(dir, RecursiveMode::Recursive)
    {
        tracing::warn!(
            "cannot watch the pod manifest directory {}: {e} (edits there apply at the next add)",
            dir.display()
        );
    }
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut paths = BTreeSet::from([first]);
            tokio::time::sleep(QUIET).await;
            while let Ok(p) = rx.try_recv() {
                paths.insert(p);
            }
            if let Some(dir) = &mesh_dir
                && paths.iter().any(|p| p.parent() == Some(dir.as_path()) || p == dir)
            {
                d.reload_mesh_config("file changed").await;
            }
            if let Some(dir) = &manifest_dir {
                let touched: BTreeSet<(String, String)> = paths.iter().filter_map(|p| manifest_pod(dir, p)).collect();
                if !touched.is_empty() {
                    d.reapply_all("manifest", |r| {
                        r.annotations.is_none() && touched.contains(&(r.namespace.clone(), r.name.clone()))
                    })
                    .await;
                }
            }
        }
    });
    Ok(Some(watcher))
}

/// `<dir>/<namespace>/<name>.<ext>` → (namespace, name).
fn manifest_pod(dir: &Path, p: &Path) -> Option<(String, String)> {
    let rel = p.strip_prefix(dir).ok()?;
    let parts: Vec<_> = rel.components().collect();
    if parts.len() != 2 {
        return None;
    }
    let ns = parts[0].as_os_str().to_str()?.to_string();
    let file = Path::new(parts[1].as_os_str());
    let ext = file.extension()?.to_str()?;
    if !matches!(ext, "yaml" | "yml" | "json") {
        return None;
    }
    Some((ns, file.file_stem()?.to_str()?.to_string()))
}

#[cfg(test)]
mod tests {
    use super::manifest_pod;
    use std::path::Path;

    #[test]
    fn manifest_paths_name_their_pod() {
        let d = Path::new("/m");
        assert_eq!(manifest_pod(d, Path::new("/m/default/web.yaml")), Some(("default".into(), "web".into())));
        assert_eq!(manifest_pod(d, Path::new("/m/ns/a.b.json")), Some(("ns".into(), "a.b".into())));
        assert_eq!(manifest_pod(d, Path::new("/m/ns/.web.yaml.swp")), None);
        assert_eq!(manifest_pod(d, Path::new("/m/web.yaml")), None);
        assert_eq!(manifest_pod(d, Path::new("/other/ns/web.yaml")), None);
    }
}
