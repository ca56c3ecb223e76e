//! The API's HTTP side: axum routes over the daemon's operations. Every error is a JSON
//! [`ErrorBody`] with a stable code, including malformed requests, unknown paths and
//! methods (axum's own plain-text rejections never reach a client).
use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Serialize;

use super::{AddPod, ApiError, DaemonStatus, ErrorBody, codes};
use crate::{
    daemon::core::{Daemon, Failure},
    metrics::daemon::CniCommand,
};

pub fn router(d: Arc<Daemon>) -> Router {
    Router::new()
        .route("/v1/pods", get(list).post(add))
        .route("/v1/pods/{id}", get(show).delete(delete))
        .route("/v1/pods/{id}/check", get(check))
        .route("/v1/status", get(status))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(d)
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(ErrorBody { error: ApiError { code: code.to_string(), message: message.into() } })).into_response()
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        error(self.status, self.code, self.message)
    }
}

fn ok<T: Serialize>(status: StatusCode, body: T) -> Response {
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    error(404, codes::NOT_FOUND, "no such API path (see /v1/pods, /v1/status)")
}

async fn method_not_allowed() -> Response {
    error(405, codes::METHOD_NOT_ALLOWED, "method not allowed on this path")
}

async fn add(State(d): State<Arc<Daemon>>, body: Bytes) -> Response {
    let req: AddPod = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            d.counters.inc("api_add_bad_request");
            d.metrics.cni_request(CniCommand::Add, codes::BAD_REQUEST);
            return error(400, codes::BAD_REQUEST, format!("invalid request body: {e}"));
        }
    };
    match d.add(req).await {
        Ok((view, created)) => {
            d.counters.inc("api_add_ok");
            d.metrics.cni_request(CniCommand::Add, "ok");
            ok(if created { StatusCode::CREATED } else { StatusCode::OK }, view)
        }
        Err(f) => {
            d.counters.inc(&format!("api_add_{}", f.code));
            d.metrics.cni_request(CniCommand::Add, f.code);
            tracing::warn!("add refused: {} ({})", f.message, f.code);
            f.into_response()
        }
    }
}

async fn delete(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match d.delete(&id).await {
        Ok(v) => {
            d.counters.inc("api_delete_ok");
            d.metrics.cni_request(CniCommand::Del, "ok");
            ok(StatusCode::OK, v)
        }
        Err(f) => {
            d.counters.inc(&format!("api_delete_{}", f.code));
            d.metrics.cni_request(CniCommand::Del, f.code);
            f.into_response()
        }
    }
}

async fn check(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match d.check(&id).await {
        Ok(c) if c.problems.is_empty() => {
            d.counters.inc("api_check_ok");
            d.metrics.cni_request(CniCommand::Check, "ok");
            ok(StatusCode::OK, c)
        }
        Ok(c) => {
            d.counters.inc("api_check_not_enforced");
            d.metrics.cni_request(CniCommand::Check, codes::NOT_ENFORCED);
            error(409, codes::NOT_ENFORCED, c.problems.join("; "))
        }
        Err(f) => {
            d.counters.inc(&format!("api_check_{}", f.code));
            d.metrics.cni_request(CniCommand::Check, f.code);
            f.into_response()
        }
    }
}

async fn show(State(d): State<Arc<Daemon>>, Path(id): Path<String>) -> Response {
    match d.inspect(&id).await {
        Ok((mut view, problems)) => {
            view.problems = problems;
            ok(StatusCode::OK, view)
        }
        Err(f) => f.into_response(),
    }
}

async fn list(State(d): State<Arc<Daemon>>) -> Response {
    ok(StatusCode::OK, d.list())
}

async fn status(State(d): State<Arc<Daemon>>) -> Response {
    let mesh = d.mesh.read().unwrap().status.clone();
    ok(
        StatusCode::OK,
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: d.cfg.mode,
            mode_reason: d.cfg.mode_reason.clone(),
            ready: crate::daemon::http::not_ready_reasons(&d).is_empty(),
            pin_dir: d.cfg.pins.path().display().to_string(),
            pods: d.ids().len(),
            mesh_config: mesh,
            counters: d.counters.snapshot(),
        },
    )
}
