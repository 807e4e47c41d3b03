//! ctproxy, the Container Tuning Proxy: a reverse proxy for the Docker Engine API.
//!
//! Layers, lowest first; a module only uses the ones below it (see `docs/ARCHITECTURE.md`):
//! - [`transport`]: listeners (unix, TCP, TLS), peer credentials, dialing dockerd;
//! - [`http`]: serving connections, the pooled client to dockerd, hijacked streams, error responses;
//! - [`docker`]: facts about the Engine API (routes, versions, hijacking endpoints);
//! - [`proxy`]: the Docker proxy handler that puts the layers together;
//! - [`registry`]: the registry proxy dockerd pushes and pulls namespace images through;
//! - [`build`]: the one build step from a configuration to what runs (start, reload, `--check`);
//! - [`app`]: the running server (configuration, signals, reload, graceful stop).
//!
//! [`config`], [`telemetry`] and [`metrics`] are used by every layer.

pub mod app;
pub mod build;
pub mod cache;
pub mod config;
pub mod docker;
pub mod doctor;
pub mod executor;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod plugin;
pub mod project_cache;
pub mod proxy;
pub mod registry;
pub mod store;
pub mod telemetry;
pub mod transport;
