//! The MeshConfig in force: read at start (falling back to the last valid one when the
//! file is invalid), reloaded on every edit. An edit is validated first; an invalid one is
//! logged and counted and the previous MeshConfig stays in force; a valid one is applied
//! to every pod (re-enroll: an atomic switch for new connections, established ones kept).
use std::{path::Path, sync::Arc};

use anyhow::Result;

/// How long an invalid MeshConfig must stay unchanged before it counts as a rejected edit.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

use super::core::{Daemon, MeshState};
use crate::{
    api::MeshConfigStatus,
    policy::{
        error::PolicyErrors,
        sources::{Document, FlagValues, GlobalPolicy, parse_manifest},
    },
};

/// Parses and validates a MeshConfig text: the global part of every pod's policy.
pub fn validate(path: &Path, text: &str, flags: &FlagValues) -> Result<(Document, GlobalPolicy), PolicyErrors> {
    let shown = path.display().to_string();
    let doc = parse_manifest(&shown, text).map_err(|e| PolicyErrors(vec![e]))?;
    let document = Document { shown, doc };
    let global = GlobalPolicy::prepare(flags, Some(&document))?;
    Ok((document, global))
}

/// The MeshConfig at start: the file if valid; else the last valid text the daemon kept
/// (logged and counted as a rejected edit); else an error (nothing to run with).
pub fn initial(path: Option<&Path>, last_good: Option<&str>, flags: &FlagValues) -> Result<MeshState> {
    let Some(path) = path else { return Ok(MeshState::default()) };
    let mut status = MeshConfigStatus { path: Some(path.display().to_string()), ..Default::default() };
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read the MeshConfig {}: {e}", path.display()));
    let attempt = text.and_then(|t| validate(path, &t, flags).map(|d| (t, d)).map_err(anyhow::Error::from));
    match attempt {
        Ok((text, (doc, global))) => Ok(MeshState {
            doc: Some(doc),
            global: Some(global),
            raw: Some(text),
            generation: 1,
            status,
            inputs: [0; 32],
        }),
        Err(e) => match last_good {
            Some(good) => {
                let (doc, global) = validate(path, good, flags)?;
                tracing::error!("{e:#}\nkeeping the last valid MeshConfig (saved by a previous run)");
                status.rejected = 1;
                status.last_error = Some(format!("{e:#}"));
                Ok(MeshState {
                    doc: Some(doc),
                    global: Some(global),
                    raw: Some(good.to_string()),
                    generation: 1,
                    status,
                    inputs: [0; 32],
                })
            }
            None => Err(e),
        },
    }
}

impl Daemon {
    /// Re-reads the MeshConfig file; applies it to every pod if it changed and is valid.
    pub async fn reload_mesh_config(self: &Arc<Self>, trigger: &str) {
        let Some(path) = self.cfg.mesh_config.clone() else { return };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                let mut m = self.mesh.write().unwrap();
                let msg = format!("cannot read the MeshConfig {}: {e}", path.display());
                if m.status.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::error!("{msg}; the previous MeshConfig stays in force");
                    m.status.rejected += 1;
                    self.counters.inc("mesh_config_rejected");
                    self.metrics.mesh_config_reload(false);
                    m.status.last_error = Some(msg);
                }
                return;
            }
        };
        if self.mesh.read().unwrap().raw.as_deref() == Some(text.as_str()) {
            return;
        }
        let verdict = validate(&path, &text, &self.cfg.flags);
        if verdict.is_err() {
            // A file written in place is briefly empty or partial: judge an edit only once
            // the file stopped changing (the next event or check sees the final text).
            tokio::time::sleep(SETTLE).await;
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                return;
            }
        }
        {
            let mut m = self.mesh.write().unwrap();
            if m.raw.as_deref() == Some(text.as_str()) {
                return;
            }
            match verdict {
                Err(e) => {
                    let msg = e.to_string();
                    // The same bad text seen again (another event) is one rejected edit.
                    if m.status.last_error.as_deref() != Some(msg.as_str()) {
                        tracing::error!(
                            "MeshConfig edit rejected ({trigger}): {msg}; the previous MeshConfig stays in force"
                        );
                        m.status.rejected += 1;
                        self.counters.inc("mesh_config_rejected");
                        self.metrics.mesh_config_reload(false);
                        m.status.last_error = Some(msg);
                    }
                    return;
                }
                Ok((doc, global)) => {
                    m.inputs = MeshState::inputs_of(&self.cfg.flags, Some(&doc));
                    m.doc = Some(doc);
                    m.global = Some(global);
                    m.raw = Some(text);
                    m.generation += 1;
                    m.status.reloads += 1;
                    m.status.last_error = None;
                    self.counters.inc("mesh_config_reloaded");
                    self.metrics.mesh_config_reload(true);
                    tracing::info!("MeshConfig {} reloaded ({trigger})", path.display());
                }
            }
        }
        self.reapply_all("mesh-config", |_| true).await;
        self.save().await;
    }
}
