//! A blocking client of the daemon's API, for the CLI (`interceptor pods …`) and the CNI
//! plugin: one request per connection, everything under one timeout.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};

use super::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (the daemon is down, or the path is wrong).
    #[error("cannot reach the interceptor daemon at {socket}: {source}")]
    Unreachable { socket: String, source: std::io::Error },
    #[error("the interceptor daemon at {socket} did not answer within {timeout:?}")]
    Timeout { socket: String, timeout: Duration },
    #[error("bad answer from the interceptor daemon at {socket}: {message}")]
    Protocol { socket: String, message: String },
    /// The daemon answered with an error.
    #[error("the interceptor daemon refused: {message} ({code}, HTTP {status})")]
    Refused { status: u16, code: String, message: String },
}

impl ClientError {
    /// The daemon could not be asked at all (as opposed to answering with an error).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. } | ClientError::Timeout { .. })
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Client {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Client {
        Client { socket: socket.into(), timeout }
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None::<&()>)
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("DELETE", path, None::<&()>)
    }

    pub fn post<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call("POST", path, Some(body))
    }

    /// One request; a 2xx answer is decoded as `T`, anything else as the API's error body.
    pub fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let socket = self.socket.display().to_string();
        let protocol = |message: String| ClientError::Protocol { socket: socket.clone(), message };
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| protocol(e.to_string()))?),
            None => None,
        };
        let (status, bytes) = self.exchange(method, path, body)?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map_err(|e| protocol(format!("{e} in {:?}", String::from_utf8_lossy(&bytes))));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(ClientError::Refused { status, code: e.error.code, message: e.error.message }),
            Err(_) => Err(ClientError::Refused {
                status,
                code: "unknown".into(),
                message: String::from_utf8_lossy(&bytes).trim().to_string(),
            }),
        }
    }

    fn exchange(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Vec<u8>), ClientError> {
        let socket = self.socket.display().to_string();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            ClientError::Protocol { socket: socket.clone(), message: format!("cannot start a runtime: {e}") }
        })?;
        let timeout = self.timeout;
        rt.block_on(async {
            match tokio::time::timeout(timeout, request(&self.socket, method, path, body)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Timeout { socket: socket.clone(), timeout }),
            }
        })
    }
}

async fn request(
    socket_path: &Path,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let socket = socket_path.display().to_string();
    let protocol = |message: String| ClientError::Protocol { socket: socket.clone(), message };
    let stream = tokio::net::UnixStream::connect(socket_path)
        .await
        .map_err(|source| ClientError::Unreachable { socket: socket.clone(), source })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| protocol(e.to_string()))?;
    let driver = tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path).header("host", "interceptor");
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).map_err(|e| protocol(e.to_string()))?;
    let resp = sender.send_request(req).await.map_err(|e| protocol(e.to_string()))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.map_err(|e| protocol(e.to_string()))?.to_bytes();
    driver.abort();
    Ok((status, bytes.to_vec()))
}
