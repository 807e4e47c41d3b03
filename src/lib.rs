//! ctproxy, the Container Tuning Proxy: a reverse proxy for the Docker Engine API.
//!
//! Layers, lowest first; a module only uses the ones below it (see `docs/ARCHITECTURE.md`):
//! - [`transport`]: listeners (unix, TCP, TLS), peer credentials, dialing dockerd;
//! - [`http`]: serving connections, the pooled client to dockerd, hijacked streams, error responses;
//! - [`docker`]: facts about the Engine API (routes, versions, hijacking endpoints, Go's decoding)
//!   and [`docker::client`], the one client of every internal call to a daemon;
//! - [`plugin`]: authenticators, policies and namespaces, the stages a request passes;
//! - [`proxy`]: the Docker proxy handler that puts the layers together;
//! - [`registry`]: the registry proxy dockerd pushes and pulls namespace images through;
//! - [`build`]: the one build step from a configuration to what runs (start, reload, `--check`);
//! - [`app`]: the running server (configuration, signals, reload, graceful stop);
//! - [`jobs`]: per-job sockets and namespaces, the control socket and its typed API ([`jobs::api`]);
//! - [`executor`]: the GitLab Runner custom-executor stages, driving `ctproxy serve` over that API;
//! - [`cache`]: the transparent HTTP/HTTPS cache; [`project_cache`]: the per-project local caches;
//! - [`doctor`]: `ctproxy doctor`'s host checks.
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
