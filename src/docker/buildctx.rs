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
//! The Dockerfile can also make dockerd fetch URLs (`ADD <url>`) and run the `ONBUILD` triggers of
//! its base images, which live in image configs where no rewrite reaches. [`plan_dockerfile`] reads
//! both as dockerd does and leaves the decisions to the caller, which needs the daemon (base images)
//! and the network (downloads): its asynchronous rewrite ([`RewrittenContext::with_async`]) holds the
//! archive at the Dockerfile meanwhile, and may append the downloaded files ([`add`] says how dockerd
//! would have named and dated them) before the end of the archive.
//!
//! Not covered here: BuildKit (`RUN --mount=from=`; the legacy builder rejects `RUN` flags), and
//! remote contexts (`remote=`), which the caller must refuse.

pub mod add;
mod context;
mod dockerfile;

pub use context::{
    Appended, Appendix, AsyncRewriteFn, BuildContextError, RewriteFn, RewriteFuture, Rewritten, RewrittenContext, DEFAULT_DOCKERFILE,
    RESERVED_DIR,
};
pub use dockerfile::{plan_dockerfile, plan_dockerfile_for, rewrite_dockerfile, AddUrl, BaseImage, FromStep, Frontend, Plan, RewriteError};
