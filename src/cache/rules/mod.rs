//! The HTTP-caching decisions of the shared package cache: what bypasses it, what may be stored and
//! for how long, how entries are keyed, and how a stored entry answers conditional and range requests.
//!
//! Pure functions over `http` types, with no I/O and no clock, so every rule of `docs/cache.md`
//! ("What is cached, and for whom", "Revalidation") is decided here and unit-tested here. The cache
//! is shared by every tenant's CI jobs, so each rule leans towards "not shared": when in doubt a
//! request bypasses, a response is not stored, a URL is not immutable, and a validator does not match.
//! The price of a wrong "no" is one extra upstream fetch; the price of a wrong "yes" is one tenant's
//! bytes served to another, or a package index that stays stale.
//!
//! - [`request_bypass`] and [`has_credentials`]: what a request says before anything is looked up;
//! - [`classify`] and [`storable`]: immutable artifact or mutable index, and the storage decision;
//! - [`primary_key`] and [`vary_key`]: the two halves of a cache key;
//! - [`not_modified`], [`range`]: answering `If-None-Match`/`If-Modified-Since` and `Range` from an entry;
//! - [`url_digest`]: the sha256 a content-addressed URL promises, to verify a body before publishing it;
//! - [`replayed_headers`]: what of a stored response is sent again.
//!
//! The per-ecosystem URL layouts (which URL is an immutable artifact, which a mutable index, which
//! ecosystem it belongs to) are in `ecosystem.rs`; the HTTP rules in `http.rs`.

mod ecosystem;
mod http;

pub use ecosystem::*;
pub use http::*;

#[cfg(test)]
mod tests;
