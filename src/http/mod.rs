//! Layer 1, HTTP: serving client connections and forwarding requests to dockerd.
//!
//! This layer knows HTTP/1.1 (keep-alive, streaming bodies, upgrades, hijacked connections) but nothing
//! of the Docker API: what a request means is decided by a [`handler::Handler`] from a higher layer.
//! - [`server`] drives one client connection, owns the access log and takes over hijacked sockets;
//! - [`forward`] is the pooled client to the daemon;
//! - [`relay`] serves transparent listeners without hyper: raw HTTP/1 relaying, one daemon
//!   connection per client connection;
//! - [`framing`] is the relay's HTTP/1 framing (head end, body length, chunk state machine);
//! - [`grpc`] relays the HTTP/2 gRPC of BuildKit's hijacked connections call by call, for a policy;
//! - [`hijack`] splices two raw byte streams with correct half-close;
//! - [`body`] is the one response body type; [`respond`] is the one place errors become responses;
//! - [`serve`] is the one way a listener is served, by every server of ctproxy: accept with
//!   back-off, connection cap, handshake timeout, and the header-read and idle timeouts handed to
//!   the connection drivers ([`relay`] keeps them itself, hyper-served connections through
//!   [`clock`]).

pub mod body;
pub mod clock;
pub mod forward;
pub mod framing;
pub mod grpc;
pub mod handler;
pub mod hijack;
pub mod relay;
pub mod respond;
pub mod serve;
pub mod server;

pub use body::{BoxError, BoxedBody, ClientBody, ProxyBody};
pub use forward::{boxed_body, client_body, full_body, ForwardError, Forwarder, UpstreamBody};
pub use handler::{AccessIdentity, ConnCtx, Handler, RelayAsk, RelayTo, SendWhole, StreamRelay, WholeLimits};
