//! Load generator for `bench/run`: HTTP/1.1 keep-alive requests over a unix socket, in Rust so that
//! the client adds as little as possible to what is measured.
//!
//! ```text
//! loadgen SOCKET PATH REQUESTS CONNECTIONS [--post-json BODY] [--delete-created] [--any-status]
//! ```
//! Prints one JSON object: p50/p99/mean latency in microseconds and requests per second.
//! With `--delete-created`, each `{"Id": ...}` answer is removed (untimed) right after. With
//! `--any-status`, error answers count as answers (a create for a missing image answers 404 at
//! once, which isolates the proxy's own cost from the daemon's).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

struct Args {
    socket: String,
    path: String,
    requests: usize,
    connections: usize,
    body: Option<String>,
    delete_created: bool,
    any_status: bool,
}

fn args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 4 {
        return Err("usage: loadgen SOCKET PATH REQUESTS CONNECTIONS [--post-json BODY] [--delete-created]".into());
    }
    let mut out = Args {
        socket: a[0].clone(),
        path: a[1].clone(),
        requests: a[2].parse().map_err(|_| "REQUESTS must be a number")?,
        connections: a[3].parse().map_err(|_| "CONNECTIONS must be a number")?,
        body: None,
        delete_created: false,
        any_status: false,
    };
    let mut i = 4;
    while i < a.len() {
        match a[i].as_str() {
            "--post-json" => {
                out.body = a.get(i + 1).cloned();
                i += 1;
            }
            "--delete-created" => out.delete_created = true,
            "--any-status" => out.any_status = true,
            other => return Err(format!("unknown option {other}")),
        }
        i += 1;
    }
    Ok(out)
}

async fn worker(
    socket: String,
    path: String,
    n: usize,
    body: Option<String>,
    delete: bool,
    any_status: bool,
) -> Result<Vec<Duration>, String> {
    let io = TokioIo::new(UnixStream::connect(&socket).await.map_err(|e| format!("{socket}: {e}"))?);
    let (mut send, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let req = match &body {
            Some(b) => Request::builder()
                .method(Method::POST)
                .uri(&path)
                .header("host", "docker")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(b.clone()))),
            None => Request::builder().uri(&path).header("host", "docker").body(Full::new(Bytes::new())),
        }
        .map_err(|e| e.to_string())?;
        send.ready().await.map_err(|e| e.to_string())?;
        let t = Instant::now();
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        let bytes = rsp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        times.push(t.elapsed());
        if !status.is_success() && !any_status {
            return Err(format!("{path}: {status} {}", String::from_utf8_lossy(&bytes)));
        }
        if delete && status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            let id = v["Id"].as_str().ok_or("no Id in the answer")?;
            let del = Request::builder()
                .method(Method::DELETE)
                .uri(format!("/containers/{id}?force=1"))
                .header("host", "docker")
                .body(Full::new(Bytes::new()))
                .map_err(|e| e.to_string())?;
            send.ready().await.map_err(|e| e.to_string())?;
            let rsp = send.send_request(del).await.map_err(|e| e.to_string())?;
            let _ = rsp.into_body().collect().await;
        }
    }
    Ok(times)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let per = a.requests / a.connections.max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.connections {
        tasks.push(tokio::spawn(worker(a.socket.clone(), a.path.clone(), per, a.body.clone(), a.delete_created, a.any_status)));
    }
    let mut all = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(times)) => all.extend(times),
            Ok(Err(e)) => {
                eprintln!("loadgen: {e}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                std::process::exit(1);
            }
        }
    }
    let wall = started.elapsed();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e6;
    let mean = all.iter().map(Duration::as_secs_f64).sum::<f64>() / all.len() as f64 * 1e6;
    println!(
        "{{\"requests\":{},\"p50_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{:.1},\"rps\":{:.0}}}",
        all.len(),
        pct(0.50),
        pct(0.99),
        mean,
        all.len() as f64 / wall.as_secs_f64()
    );
}
