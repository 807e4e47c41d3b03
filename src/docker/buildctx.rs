//! Build contexts (`POST /build`): the image references inside the Dockerfile, rewritten in flight.
//!
//! dockerd's legacy builder resolves `FROM x` and `COPY --from=x` against the daemon's *global*
//! image store, so a tenant could build on another tenant's private image just by naming it (see
//! `docs/docker-api.md` §3.3.1). Whoever gives tenants namespaces must therefore rewrite those
//! references to the tenant's own names before dockerd reads the Dockerfile. The Dockerfile travels
//! inside the request body, a tar archive that can be gigabytes: [`RewrittenContext`] streams it
//! through, buffering only the Dockerfile member, and [`rewrite_dockerfile`] rewrites that member's
//! text. Both read their input exactly as dockerd does, and refuse what they cannot read the same way.
//!
//! Layer 2, no policy: the caller decides what a reference becomes, through a callback.
//!
//! Not covered here: `ONBUILD` triggers of base images (they come from image configs, not from the
//! context), BuildKit (`RUN --mount=from=`; the legacy builder rejects `RUN` flags), and remote
//! contexts (`remote=`), which the caller must refuse.

mod context;
mod dockerfile;

pub use context::{BuildContextError, RewriteFn, RewrittenContext, DEFAULT_DOCKERFILE};
pub use dockerfile::{rewrite_dockerfile, RewriteError};
