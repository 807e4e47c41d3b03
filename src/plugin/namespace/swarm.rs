//! Swarm endpoints in a namespace. Joining or changing a swarm is the daemon's business, never a
//! job's, so they are refused; but on a node that is not part of a swarm the daemon itself defines
//! the answer (503, "This node is not part of a swarm"), and clients' teardown code relies on it
//! (`docker swarm leave --force || true`, SDKs that probe `GET /swarm`). Those answers are given
//! here, as dockerd gives them (moby `daemon/cluster/errors.go`, `Cluster.errNoManager`), without
//! forwarding anything.

use hyper::StatusCode;
use serde_json::Value;

use super::{Daemon, NsError};
use crate::docker::{Endpoint, Query};

/// dockerd's `errNoSwarm`.
const NO_SWARM: &str = "This node is not part of a swarm";
/// dockerd's `errNoManager` for a node without a swarm.
const NO_MANAGER: &str =
    "This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this node to swarm and try again.";

/// The logs routes' check of their query, made before the cluster is asked (moby
/// `api/server/router/swarm`, `logsHandler`): a plain error, so 500.
const NO_STREAM: &str = "Bad parameters: you must choose at least one stream";

/// The daemon's own answer to a swarm endpoint when the node is not part of a swarm, for the
/// endpoints where dockerd answers before reading anything of the request (the logs routes after
/// checking their `stdout`/`stderr` parameters, as dockerd does); `None` otherwise (the endpoint then
/// goes on to be refused).
///
/// `POST /swarm/unlock` reads its body first: dockerd refuses a malformed one (400) before it finds
/// that there is no swarm; here every body gets the 503 (nothing is read or forwarded).
pub async fn answer(daemon: &Daemon, endpoint: Endpoint, query: &Query) -> Result<Option<(StatusCode, &'static str)>, NsError> {
    use Endpoint::*;
    let (status, message) = match endpoint {
        SwarmLeave => (StatusCode::SERVICE_UNAVAILABLE, NO_SWARM),
        ServiceLogs | TaskLogs if !query.bool("stdout") && !query.bool("stderr") => (StatusCode::INTERNAL_SERVER_ERROR, NO_STREAM),
        SwarmInspect | SwarmUnlockKey | SwarmUnlock | ServiceList | ServiceInspect | ServiceDelete | ServiceLogs | NodeList
        | NodeInspect | NodeDelete | TaskList | TaskInspect | TaskLogs | SecretList | SecretInspect | SecretDelete | ConfigList
        | ConfigInspect | ConfigDelete => (StatusCode::SERVICE_UNAVAILABLE, NO_MANAGER),
        _ => return Ok(None),
    };
    let state = daemon.get("/info").await?.and_then(|i| i.pointer("/Swarm/LocalNodeState").and_then(Value::as_str).map(str::to_owned));
    Ok((state.as_deref() == Some("inactive")).then_some((status, message)))
}
