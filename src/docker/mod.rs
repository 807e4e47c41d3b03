//! Layer 2, Docker API understanding: what a request to the Engine API means.
//!
//! No policy lives here, only facts about the API as dockerd implements it (route shapes, version
//! prefixes, which endpoints hijack their connection). Higher layers decide what to do with them.

pub mod auth_config;
pub mod buildctx;
pub mod buildkit;
pub mod cidr;
pub mod client;
pub mod endpoint;
pub mod image_archive;
pub mod image_create;
pub mod image_glob;
pub mod json;
pub mod params;
pub mod query;
pub mod reference;
pub mod route;
pub mod schema;
pub mod store_race;
pub mod timestamp;

pub use auth_config::AuthConfig;
pub use endpoint::{BodyKind, Endpoint, Route};
pub use query::Query;
pub use route::{ApiPath, ApiVersion};
