//! The daemon's HTTP endpoint on `--metrics-addr` (TCP): `GET /healthz` (the process
//! answers), `GET /readyz` (programs attached, state reconciled, API socket serving) and
//! `GET /metrics` (Prometheus text format: [`crate::metrics`]).
use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};

use super::core::Daemon;
use crate::api::Mode;

pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(d)
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Why the daemon is not ready (empty: ready).
pub fn not_ready_reasons(d: &Daemon) -> Vec<String> {
    let mut why = Vec::new();
    if !d.is_ready() {
        why.push("starting (loading, reconciling, opening the API socket) or stopping".to_string());
    }
    if d.cfg.mode == Mode::Ebpf && !d.cfg.pins.is_loaded() {
        why.push(format!("the eBPF programs are not attached (nothing pinned at {})", d.cfg.pins.path().display()));
    }
    why
}

async fn readyz(State(d): State<Arc<Daemon>>) -> (StatusCode, String) {
    let why = not_ready_reasons(&d);
    if why.is_empty() {
        (StatusCode::OK, format!("ready ({} mode, {} pods)\n", d.cfg.mode, d.ids().len()))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {}\n", why.join("; ")))
    }
}

/// Reads the kernel's state now (on the blocking pool: it takes the installation's shared
/// lock). A failure to read is a 500 with the reason: Prometheus then marks the target down
/// rather than showing stale or partial numbers.
async fn metrics(State(d): State<Arc<Daemon>>) -> Response {
    match tokio::task::spawn_blocking(move || crate::metrics::daemon::render(&d)).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Ok(Err(e)) => {
            tracing::warn!("GET /metrics: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the metrics: {e:#}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the metrics: {e}\n")).into_response(),
    }
}
