//! Waiting for services before the build starts, as the Docker executor's
//! `wait_for_services_timeout` does: every TCP port a service's image exposes must accept a
//! connection. A service not ready in time gets gitlab-runner's warning in the job log, and the
//! job goes on.
//!
//! The stage process connects to the service's address on the job network itself: it runs on the
//! daemon's host, which routes to its bridge networks, so no probe container (and no tool in any
//! image) is needed. With a daemon on another host the addresses are not reachable: the wait then
//! ends with the warning, and the job still runs.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::docker::{DockerError, JobDocker};
use crate::docker::client::enc;

/// What a service exposes: its container name, its addresses and its TCP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoints {
    name: String,
    image: String,
    ips: Vec<IpAddr>,
    ports: Vec<u16>,
}

/// The addresses and exposed TCP ports of a service container, from its inspect.
fn endpoints_of(name: &str, inspect: &Value) -> Endpoints {
    let mut ports: Vec<u16> = inspect
        .pointer("/Config/ExposedPorts")
        .and_then(Value::as_object)
        .map(|m| m.keys().filter_map(|k| k.strip_suffix("/tcp").or(Some(k.as_str()).filter(|k| !k.contains('/')))?.parse().ok()).collect())
        .unwrap_or_default();
    ports.sort_unstable();
    ports.dedup();
    let ips = inspect
        .pointer("/NetworkSettings/Networks")
        .and_then(Value::as_object)
        .map(|nets| nets.values().filter_map(|n| n.get("IPAddress").and_then(Value::as_str)?.parse().ok()).collect())
        .unwrap_or_default();
    let image = inspect.pointer("/Config/Image").and_then(Value::as_str).unwrap_or("").to_owned();
    Endpoints { name: name.to_owned(), image, ips, ports }
}

/// Whether `port` on any of `ips` accepts a connection before `deadline`; tries every 250 ms.
async fn wait_port(ips: &[IpAddr], port: u16, deadline: Instant) -> bool {
    loop {
        for ip in ips {
            let attempt = tokio::net::TcpStream::connect(SocketAddr::new(*ip, port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits up to `timeout` for every exposed TCP port of the services `names` (containers in the
/// job's namespace); prints gitlab-runner's warning for each one not ready. `Err` only when the
/// daemon does not answer.
pub async fn wait_for_services(docker: &JobDocker, names: &[String], timeout: Duration) -> Result<(), DockerError> {
    let mut services = Vec::new();
    for name in names {
        if let Some(v) = docker.inspect(&format!("/containers/{}/json", enc(name))).await? {
            services.push(endpoints_of(name, &v));
        }
    }
    if services.iter().all(|s| s.ports.is_empty()) {
        return Ok(());
    }
    println!("Waiting for services to be up and running (timeout {} seconds)...", timeout.as_secs());
    let deadline = Instant::now() + timeout;
    let checks = services.iter().map(|s| async move {
        let waits = s.ports.iter().map(|p| async move { (*p, wait_port(&s.ips, *p, deadline).await) });
        let closed: Vec<u16> = futures_util::future::join_all(waits).await.into_iter().filter(|(_, up)| !up).map(|(p, _)| p).collect();
        (s, closed)
    });
    for (s, closed) in futures_util::future::join_all(checks).await {
        if closed.is_empty() {
            continue;
        }
        let ports: Vec<String> = closed.iter().map(|p| format!("{p}/tcp")).collect();
        // gitlab-runner's words (executors/docker), then where to look.
        println!("\x1b[0;33m*** WARNING: Service {} probably didn't start properly.", s.name);
        println!();
        println!("Health check error:");
        println!(
            "service {:?} timeout: {} not accepting connections after {} seconds (image {})",
            s.name,
            ports.join(", "),
            timeout.as_secs(),
            s.image
        );
        println!();
        println!("Service container logs: `docker logs {}` in the job", s.name);
        println!();
        println!("*********\x1b[0m");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exposed_tcp_ports_and_addresses() {
        let v = json!({
            "Config": {"Image": "postgres:16", "ExposedPorts": {"5432/tcp": {}, "53/udp": {}, "8080": {}}},
            "NetworkSettings": {"Networks": {"ctproxy-job": {"IPAddress": "10.200.3.2"}, "none": {"IPAddress": ""}}},
        });
        let e = endpoints_of("ctproxy-service-0", &v);
        assert_eq!(e.ports, [5432, 8080]);
        assert_eq!(e.ips, ["10.200.3.2".parse::<IpAddr>().unwrap()]);
        assert!(endpoints_of("x", &json!({})).ports.is_empty());
    }
}
