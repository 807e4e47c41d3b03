//! Swarm endpoints in a namespace. Joining or changing a swarm is the daemon's business, never a
//! job's, so they are refused; but on a node that is not part of a swarm the daemon itself defines
//! the answer (503, "This node is not part of a swarm"), and clients' teardown code relies on it
//! (`docker swarm leave --force || true`, SDKs that probe `GET /swarm`). Those answers are given
//! here, as dockerd gives them (moby `daemon/cluster/errors.go`, `Cluster.errNoManager`), without
//! forwarding anything.

use hyper::StatusCode;
use serde_json::Value;

use super::{Daemon, NsError};
use crate::docker::Endpoint;

/// dockerd's `errNoSwarm`.
const NO_SWARM: &str = "This node is not part of a swarm";
/// dockerd's `errNoManager` for a node without a swarm.
const NO_MANAGER: &str =
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";

/// The daemon's own answer to a swarm endpoint when the node is not part of a swarm, for the
/// endpoints where dockerd answers before reading anything of the request; `None` otherwise (the
/// endpoint then goes on to be refused).
pub async fn answer(daemon: &Daemon, endpoint: Endpoint) -> Result<Option<(StatusCode, &'static str)>, NsError> {
    use Endpoint::*;
    let message = match endpoint {
        SwarmLeave => NO_SWARM,
        SwarmInspect | SwarmUnlockKey | ServiceList | ServiceInspect | ServiceDelete | NodeList | NodeInspect | NodeDelete | TaskList
        | TaskInspect | SecretList | SecretInspect | SecretDelete | ConfigList | ConfigInspect | ConfigDelete => NO_MANAGER,
        _ => return Ok(None),
    };
    let state = daemon.get("/info").await?.and_then(|i| i.pointer("/Swarm/LocalNodeState").and_then(Value::as_str).map(str::to_owned));
    Ok((state.as_deref() == Some("inactive")).then_some((StatusCode::SERVICE_UNAVAILABLE, message)))
}
