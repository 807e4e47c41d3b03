//! Layer 2, Docker API understanding: what a request to the Engine API means.
//!
//! No policy lives here, only facts about the API as dockerd implements it (route shapes, version
//! prefixes, which endpoints hijack their connection). Higher layers decide what to do with them.

pub mod route;

pub use route::{ApiPath, ApiVersion};
