//! The daemon reading the Dockerfile over the session (`FileSync.DiffCopy` of the directory named
//! `dockerfile`), answered by ctproxy with the rewritten Dockerfile.
//!
//! fsutil's protocol: the sender (the client) sends one `STAT` packet per file and an empty `STAT`;
//! the receiver (the daemon) asks for files by index (`REQ`), gets their bytes (`DATA`, then an
//! empty `DATA`), and ends with `FIN`, which the sender answers with `FIN`. ctproxy plays the
//! receiver towards the client, reading the whole (small) directory, then the sender towards the
//! daemon, with the rewritten bytes and their new sizes. The modification time of a rewritten file
//! is set to now, so that the daemon never takes a cached copy of an earlier rewrite for it.

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;

use super::dockerfile::MAX_DOCKERFILE;
use super::{Daemon, Namespace, SolveFacts};
use crate::docker::buildkit::{packet, unknown_fields, unknown_nested_fields, Packet, Stat, PACKET_FIELDS, PACKET_STAT_FIELD, STAT_FIELDS};
use crate::http::grpc::{self, code, frame, send_data, Call, Messages};

/// `DATA` packets sent to the daemon are at most this large (fsutil's own buffer size).
const CHUNK: usize = 32 * 1024;

/// The files of the `dockerfile` directory as the client sent them.
struct Fetched {
    stats: Vec<Stat>,
    data: HashMap<u32, Vec<u8>>,
}

/// Serves the daemon's read of the Dockerfile directory, rewritten for `ns`.
pub(super) async fn dockerfile(ns: &Namespace, daemon: &Daemon, facts: SolveFacts, call: Call) {
    let Call { req, respond, mut upstream } = call;
    let (head, daemon_body) = req.into_parts();
    let fetched = match fetch(&mut upstream, head).await {
        Ok(f) => f,
        Err(e) => return grpc::refuse(respond, code::UNKNOWN, &format!("ctproxy: reading the Dockerfile from the client: {e}")),
    };
    let mut stats = fetched.stats;
    let mut data = fetched.data;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0);
    for (i, st) in stats.iter_mut().enumerate() {
        if !st.is_regular() || st.path.ends_with(".dockerignore") {
            continue;
        }
        let Some(bytes) = data.get_mut(&(i as u32)) else { continue };
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => return deny(ns, respond, format!("the Dockerfile {} is not UTF-8 text", st.path)),
        };
        match ns.buildkit_dockerfile(daemon, text, &facts.build_args).await {
            Ok(out) => {
                *bytes = out.into_bytes();
                st.size = bytes.len() as i64;
                st.mod_time = now;
            }
            Err(e) => return deny(ns, respond, e),
        }
    }
    if let Err(e) = serve(respond, &stats, &data, daemon_body).await {
        tracing::debug!(namespace = %ns.name, error = %e, "serving the rewritten Dockerfile ended");
    }
}

fn deny(ns: &Namespace, respond: h2::server::SendResponse<Bytes>, message: String) {
    tracing::warn!(target: "ctproxy::audit", namespace = %ns.name, reason = %message, "BuildKit Dockerfile refused by namespace");
    grpc::refuse(respond, code::PERMISSION_DENIED, &super::refusal_message(code::PERMISSION_DENIED, &message));
}

async fn next_packet(msgs: &mut Messages) -> Result<Option<Packet>, String> {
    let Some(m) = msgs.next().await.map_err(|e| e.to_string())? else { return Ok(None) };
    let unknown = unknown_fields(&m, &PACKET_FIELDS).map_err(|e| e.to_string())?;
    if !unknown.is_empty() {
        return Err(format!("fsutil packet fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
    }
    let unknown = unknown_nested_fields(&m, PACKET_STAT_FIELD, &STAT_FIELDS).map_err(|e| e.to_string())?;
    if !unknown.is_empty() {
        return Err(format!("fsutil stat fields {unknown:?} are unknown to ctproxy {}", env!("CARGO_PKG_VERSION")));
    }
    let p = Packet::decode(m).map_err(|e| e.to_string())?;
    if p.r#type == packet::ERR {
        return Err(String::from_utf8_lossy(&p.data).into_owned());
    }
    Ok(Some(p))
}

async fn send_packet(to: &mut h2::SendStream<Bytes>, p: Packet) -> Result<(), String> {
    send_data(to, frame(&p.encode_to_vec()), false).await.map_err(|e| e.to_string())
}

/// Reads the whole directory from the client, as fsutil's receiver would.
async fn fetch(upstream: &mut h2::client::SendRequest<Bytes>, head: http::request::Parts) -> Result<Fetched, String> {
    let (rsp, mut send) = grpc::open(upstream, head, false).await.map_err(|e| e.to_string())?;
    let rsp = rsp.await.map_err(|e| e.to_string())?;
    let mut msgs = Messages::new(rsp.into_body());
    let mut stats = Vec::new();
    loop {
        match next_packet(&mut msgs).await? {
            Some(Packet { r#type: packet::STAT, stat: Some(st), .. }) => stats.push(st),
            Some(Packet { r#type: packet::STAT, stat: None, .. }) => break,
            Some(p) => return Err(format!("unexpected fsutil packet type {}", p.r#type)),
            None => return Err("the client ended the file list early".into()),
        }
    }
    let wanted: Vec<u32> = stats.iter().enumerate().filter(|(_, s)| s.is_regular()).map(|(i, _)| i as u32).collect();
    for id in &wanted {
        send_packet(&mut send, Packet { r#type: packet::REQ, id: *id, ..Default::default() }).await?;
    }
    let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut total = 0usize;
    let mut done = 0;
    while done < wanted.len() {
        match next_packet(&mut msgs).await? {
            Some(Packet { r#type: packet::DATA, id, data: d, .. }) if wanted.contains(&id) => {
                if d.is_empty() {
                    done += 1;
                    continue;
                }
                total += d.len();
                if total > MAX_DOCKERFILE {
                    return Err(format!("the Dockerfile directory is larger than {MAX_DOCKERFILE} bytes"));
                }
                data.entry(id).or_default().extend_from_slice(&d);
            }
            Some(p) => return Err(format!("unexpected fsutil packet type {} (id {})", p.r#type, p.id)),
            None => return Err("the client ended the file data early".into()),
        }
    }
    send_packet(&mut send, Packet { r#type: packet::FIN, ..Default::default() }).await?;
    let _ = send_data(&mut send, Bytes::new(), true).await;
    // The client answers FIN with FIN and ends the call.
    while let Ok(Some(p)) = next_packet(&mut msgs).await {
        if p.r#type == packet::FIN {
            break;
        }
    }
    Ok(Fetched { stats, data })
}

/// Sends the (rewritten) directory to the daemon, as fsutil's sender would.
async fn serve(
    mut respond: h2::server::SendResponse<Bytes>,
    stats: &[Stat],
    data: &HashMap<u32, Vec<u8>>,
    daemon_body: h2::RecvStream,
) -> Result<(), String> {
    let head = http::Response::builder().status(200).header("content-type", "application/grpc").body(()).map_err(|e| e.to_string())?;
    let mut out = respond.send_response(head, false).map_err(|e| e.to_string())?;
    for st in stats {
        send_packet(&mut out, Packet { r#type: packet::STAT, stat: Some(st.clone()), ..Default::default() }).await?;
    }
    send_packet(&mut out, Packet { r#type: packet::STAT, ..Default::default() }).await?;
    let mut msgs = Messages::new(daemon_body);
    loop {
        match next_packet(&mut msgs).await? {
            Some(Packet { r#type: packet::REQ, id, .. }) => {
                let bytes = data.get(&id).map(Vec::as_slice).unwrap_or(&[]);
                for chunk in bytes.chunks(CHUNK) {
                    send_packet(&mut out, Packet { r#type: packet::DATA, id, data: chunk.to_vec(), ..Default::default() }).await?;
                }
                send_packet(&mut out, Packet { r#type: packet::DATA, id, ..Default::default() }).await?;
            }
            Some(Packet { r#type: packet::FIN, .. }) => {
                send_packet(&mut out, Packet { r#type: packet::FIN, ..Default::default() }).await?;
                break;
            }
            Some(p) => return Err(format!("unexpected fsutil packet type {} from the daemon", p.r#type)),
            None => break,
        }
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    out.send_trailers(trailers).map_err(|e| e.to_string())
}
