//! The internal requests a namespace makes to dockerd: inspect and list calls that tell who owns
//! what, and the few writes it makes on the client's behalf (untagging every tag of an image).
//!
//! A thin use of [`crate::docker::client`], the one internal Docker client (encoding, size limits,
//! Docker 28's store race), over the same pooled client as forwarded requests, without a version
//! prefix (the fields read here have not changed across the versions dockerd 20.10 and later
//! serve). Its errors become [`NsError::Daemon`] in one place (`From<ClientError>`).

use std::sync::Arc;

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::NsError;
use crate::docker::client::{Client, ClientError};
use crate::http::Forwarder;

pub use crate::docker::client::enc;

impl From<ClientError> for NsError {
    fn from(e: ClientError) -> NsError {
        NsError::Daemon(e.to_string())
    }
}

/// dockerd, as the namespace stage asks it.
#[derive(Clone)]
pub struct Daemon {
    client: Client,
}

impl Daemon {
    pub fn new(forwarder: Arc<Forwarder>) -> Daemon {
        Daemon { client: Client::new(forwarder) }
    }

    /// The client under this daemon.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sends one request; returns the status and the whole body (with extra headers, such as a
    /// pull's `X-Registry-Auth`: [`Client::call_with`] through [`Daemon::client`]).
    pub async fn call(&self, method: Method, path_and_query: &str, body: Option<&Value>) -> Result<(StatusCode, Bytes), NsError> {
        let answer = self.client.call(method, path_and_query, body).await?;
        Ok((answer.status, answer.body))
    }

    /// A GET whose JSON answer is wanted; `None` when the daemon says 404 (reads that meet Docker
    /// 28's store race are asked again, see [`Client::get`]).
    pub async fn get(&self, path_and_query: &str) -> Result<Option<Value>, NsError> {
        Ok(self.client.get(path_and_query).await?)
    }

    /// The daemon's major version (`20` for 20.10), for the few messages that changed between
    /// releases; `None` if it cannot be read. Asked on error paths only, so not cached.
    pub async fn major_version(&self) -> Option<u32> {
        let version = self.get("/version").await.ok().flatten()?;
        version.get("Version")?.as_str()?.split('.').next()?.parse().ok()
    }

    /// A GET whose (large) answer is written to `out` as it streams (`docker save`).
    pub async fn download(&self, path_and_query: &str, out: &mut (impl tokio::io::AsyncWrite + Unpin)) -> Result<(), NsError> {
        Ok(self.client.download(path_and_query, out).await?)
    }

    /// A GET of a list endpoint: its items (none on 404 or a non-list answer), without copying them.
    pub async fn list(&self, path_and_query: &str) -> Result<Vec<Value>, NsError> {
        Ok(self.client.list(path_and_query).await?)
    }
}
