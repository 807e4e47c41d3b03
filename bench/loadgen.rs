//! Load generator for `bench/run`: HTTP/1.1 keep-alive requests over a unix socket, in Rust so that
//! the client adds as little as possible to what is measured.
//!
//! ```text
//! loadgen SOCKET PATH REQUESTS CONNECTIONS [--warmup N] [--post-json BODY] [--delete-created] [--any-status]
//! loadgen SOCKET,SOCKET,... PATH REQUESTS 1 [--warmup N] [--post-json BODY] [--any-status]
//! loadgen SOCKET --exec-stream CONTAINER MEGABYTES
//! ```
//! The first form prints one JSON object: p50/p90/p99/mean latency in microseconds, requests per
//! second, the answers' mean body size, and `sent` (the requests including the warm-up, for per-request CPU figures). Each
//! connection first sends `--warmup` untimed requests (default 50), so connection set-up and the
//! proxy's first upstream dial are not measured. With `--delete-created`, each `{"Id": ...}` answer
//! is removed (untimed) right after. With `--any-status`, error answers count as answers (a create
//! for a missing image answers 404 at once, which isolates the proxy's own cost from the daemon's).
//!
//! The second form, with several comma-separated sockets, opens one connection to each and
//! alternates the requests between them, one at a time, in an order shuffled anew for every cycle
//! (REQUESTS is per socket): the sides are sampled under the same conditions however the machine's
//! load drifts. It prints a JSON array of summaries, in the order of the sockets (`rps` there is the
//! inverse of the mean latency). A socket written `SOCKET::PATH` is asked PATH instead of the
//! common one: the same answer asked two ways (the daemon's own socket with the label filter a job
//! socket's namespace adds itself, against the job socket unfiltered).
//!
//! The third form measures a hijacked stream without the docker CLI: it creates an exec of `cat`
//! in CONTAINER, starts it with `Upgrade: tcp`, writes MEGABYTES MB (10^6 bytes) to its stdin while
//! reading them back from the multiplexed stdout, and prints the throughput (MB/s, one direction's
//! bytes over the time from the first byte written to the last byte read back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Barrier;

struct Args {
    socket: String,
    path: String,
    requests: usize,
    connections: usize,
    warmup: usize,
    body: Option<String>,
    delete_created: bool,
    any_status: bool,
}

const USAGE: &str = "usage: loadgen SOCKET PATH REQUESTS CONNECTIONS [--warmup N] [--post-json BODY] [--delete-created] [--any-status]\n       loadgen SOCKET,SOCKET,... PATH REQUESTS 1 [--warmup N] [--post-json BODY] [--any-status]\n       loadgen SOCKET --exec-stream CONTAINER MEGABYTES";

fn args(a: &[String]) -> Result<Args, String> {
    if a.len() < 4 {
        return Err(USAGE.into());
    }
    let mut out = Args {
        socket: a[0].clone(),
        path: a[1].clone(),
        requests: a[2].parse().map_err(|_| "REQUESTS must be a number")?,
        connections: a[3].parse().map_err(|_| "CONNECTIONS must be a number")?,
        warmup: 50,
        body: None,
        delete_created: false,
        any_status: false,
    };
    let mut i = 4;
    while i < a.len() {
        match a[i].as_str() {
            "--post-json" => {
                out.body = Some(a.get(i + 1).ok_or("--post-json needs a body")?.clone());
                i += 1;
            }
            "--warmup" => {
                out.warmup = a.get(i + 1).and_then(|n| n.parse().ok()).ok_or("--warmup needs a number")?;
                i += 1;
            }
            "--delete-created" => out.delete_created = true,
            "--any-status" => out.any_status = true,
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
        i += 1;
    }
    if out.connections == 0 || out.requests < out.connections {
        return Err("need at least one request per connection".into());
    }
    Ok(out)
}

fn request(method: Method, path: &str, json: Option<&str>) -> Result<Request<Full<Bytes>>, String> {
    let b = Request::builder().method(method).uri(path).header("host", "docker");
    match json {
        Some(j) => b.header("content-type", "application/json").body(Full::new(Bytes::from(j.to_owned()))),
        None => b.body(Full::new(Bytes::new())),
    }
    .map_err(|e| e.to_string())
}

/// One connection's timed requests, and when its timed part started and ended.
struct Run {
    times: Vec<Duration>,
    bytes: u64,
    start: Instant,
    end: Instant,
}

async fn worker(n: usize, a: Arc<Args>, barrier: Arc<Barrier>) -> Result<Run, String> {
    let socket = &a.socket;
    let io = TokioIo::new(UnixStream::connect(socket).await.map_err(|e| format!("{socket}: {e}"))?);
    let (mut send, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut times = Vec::with_capacity(n);
    let mut body_bytes = 0u64;
    let method = if a.body.is_some() { Method::POST } else { Method::GET };
    let warmup = a.warmup;
    let mut start = Instant::now();
    for i in 0..warmup + n {
        if i == warmup {
            // Every connection is set up and warmed before any timed request, so `rps` is steady-state.
            barrier.wait().await;
            start = Instant::now();
        }
        let req = request(method.clone(), &a.path, a.body.as_deref())?;
        send.ready().await.map_err(|e| e.to_string())?;
        let t = Instant::now();
        let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        let bytes = rsp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        let elapsed = t.elapsed();
        if i >= warmup {
            times.push(elapsed);
            body_bytes += bytes.len() as u64;
        }
        if !status.is_success() && !a.any_status {
            return Err(format!("{}: {status} {}", a.path, String::from_utf8_lossy(&bytes)));
        }
        if a.delete_created && status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            let id = v["Id"].as_str().ok_or("no Id in the answer")?;
            send.ready().await.map_err(|e| e.to_string())?;
            let rsp =
                send.send_request(request(Method::DELETE, &format!("/containers/{id}?force=1"), None)?).await.map_err(|e| e.to_string())?;
            let _ = rsp.into_body().collect().await;
        }
    }
    Ok(Run { times, bytes: body_bytes, start, end: Instant::now() })
}

async fn load(a: Args) -> Result<String, String> {
    let a = Arc::new(a);
    let per = a.requests / a.connections;
    let barrier = Arc::new(Barrier::new(a.connections));
    // A failing connection ends the process at once: the others would wait at the barrier for ever.
    let spawn = |a: Arc<Args>, b: Arc<Barrier>| {
        tokio::spawn(async move {
            worker(per, a, b).await.unwrap_or_else(|e| {
                eprintln!("loadgen: {e}");
                std::process::exit(1)
            })
        })
    };
    let tasks: Vec<_> = (0..a.connections).map(|_| spawn(a.clone(), barrier.clone())).collect();
    let mut all = Vec::new();
    let mut bytes = 0;
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    for t in tasks {
        let run = t.await.map_err(|e| e.to_string())?;
        all.extend(run.times);
        bytes += run.bytes;
        first = Some(first.map_or(run.start, |f| f.min(run.start)));
        last = Some(last.map_or(run.end, |l| l.max(run.end)));
    }
    let wall = last.zip(first).map_or(Duration::ZERO, |(l, f)| l - f);
    Ok(stats(all, bytes, a.warmup * a.connections, wall))
}

/// The JSON summary of one side's timed requests (`bytes`: their answers' bodies; `warm`: untimed
/// requests also sent).
fn stats(mut all: Vec<Duration>, bytes: u64, warm: usize, wall: Duration) -> String {
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e6;
    let mean = all.iter().map(Duration::as_secs_f64).sum::<f64>() / all.len() as f64 * 1e6;
    format!(
        "{{\"requests\":{},\"sent\":{},\"p50_us\":{:.1},\"p90_us\":{:.1},\"p99_us\":{:.1},\"mean_us\":{:.1},\"rps\":{:.0},\"body_bytes\":{}}}",
        all.len(),
        all.len() + warm,
        pct(0.50),
        pct(0.90),
        pct(0.99),
        mean,
        all.len() as f64 / wall.as_secs_f64(),
        bytes / all.len().max(1) as u64
    )
}

/// Several sockets, one keep-alive connection each, one request at a time: each cycle sends one
/// request to every socket in a freshly shuffled order, so that the sides are sampled under the same
/// conditions however the machine's load drifts. Prints a JSON array, one summary per socket.
async fn interleave(a: Args) -> Result<String, String> {
    let method = if a.body.is_some() { Method::POST } else { Method::GET };
    let mut conns = Vec::new();
    let mut paths = Vec::new();
    for spec in a.socket.split(',') {
        let (socket, path) = spec.split_once("::").unwrap_or((spec, a.path.as_str()));
        paths.push(path.to_owned());
        let io = TokioIo::new(UnixStream::connect(socket).await.map_err(|e| format!("{socket}: {e}"))?);
        let (send, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        conns.push(send);
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(a.requests); conns.len()];
    let mut busy = vec![Duration::ZERO; conns.len()];
    let mut bytes = vec![0u64; conns.len()];
    let mut order: Vec<usize> = (0..conns.len()).collect();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..a.warmup + a.requests {
        for k in (1..order.len()).rev() {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            order.swap(k, (rng % (k as u64 + 1)) as usize);
        }
        for &c in &order {
            let send = &mut conns[c];
            let req = request(method.clone(), &paths[c], a.body.as_deref())?;
            send.ready().await.map_err(|e| e.to_string())?;
            let t = Instant::now();
            let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
            let status = rsp.status();
            let body = rsp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
            let elapsed = t.elapsed();
            if !status.is_success() && !a.any_status {
                return Err(format!("{}: {status} {}", paths[c], String::from_utf8_lossy(&body)));
            }
            if i >= a.warmup {
                times[c].push(elapsed);
                busy[c] += elapsed;
                bytes[c] += body.len() as u64;
            }
        }
    }
    let sides: Vec<String> = times.into_iter().zip(busy).zip(bytes).map(|((t, w), b)| stats(t, b, a.warmup, w)).collect();
    Ok(format!("[{}]", sides.join(",")))
}

/// One JSON request on a fresh connection; returns the parsed answer.
async fn json_call(socket: &str, method: Method, path: &str, body: &str) -> Result<serde_json::Value, String> {
    let io = TokioIo::new(UnixStream::connect(socket).await.map_err(|e| format!("{socket}: {e}"))?);
    let (mut send, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let rsp = send.send_request(request(method, path, Some(body))?).await.map_err(|e| e.to_string())?;
    let status = rsp.status();
    let bytes = rsp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("{path}: {status} {}", String::from_utf8_lossy(&bytes)));
    }
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

async fn exec_stream(socket: &str, container: &str, megabytes: u64) -> Result<String, String> {
    let total = megabytes * 1_000_000;
    let created = json_call(
        socket,
        Method::POST,
        &format!("/containers/{container}/exec"),
        r#"{"AttachStdin":true,"AttachStdout":true,"AttachStderr":true,"Tty":false,"Cmd":["cat"]}"#,
    )
    .await?;
    let id = created["Id"].as_str().ok_or("no Id in the exec create answer")?.to_owned();

    let io = TokioIo::new(UnixStream::connect(socket).await.map_err(|e| format!("{socket}: {e}"))?);
    let (mut send, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn.with_upgrades());
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/exec/{id}/start"))
        .header("host", "docker")
        .header("content-type", "application/json")
        .header("connection", "Upgrade")
        .header("upgrade", "tcp")
        .body(Full::new(Bytes::from_static(br#"{"Detach":false,"Tty":false}"#)))
        .map_err(|e| e.to_string())?;
    let rsp = send.send_request(req).await.map_err(|e| e.to_string())?;
    if rsp.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("exec start answered {}", rsp.status()));
    }
    let upgraded = TokioIo::new(hyper::upgrade::on(rsp).await.map_err(|e| e.to_string())?);
    let (mut rd, mut wr) = tokio::io::split(upgraded);

    let chunk: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            wr.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        wr.flush().await?;
        // Closing stdin ends `cat`; keep the half open until then.
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(wr)
    });
    // The stdout stream is multiplexed: an 8-byte header (stream, 0, 0, 0, big-endian length) per frame.
    let mut got = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    let mut pending = 0usize; // bytes of the current frame's payload still to come
    let mut header = [0u8; 8];
    let mut header_len = 0usize;
    while got < total {
        let n = rd.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("stream ended after {got} of {total} bytes"));
        }
        let mut i = 0;
        while i < n {
            if pending == 0 {
                let take = (8 - header_len).min(n - i);
                header[header_len..header_len + take].copy_from_slice(&buf[i..i + take]);
                header_len += take;
                i += take;
                if header_len == 8 {
                    if header[0] == 2 {
                        return Err("cat wrote to stderr".into());
                    }
                    pending = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
                    header_len = 0;
                }
            } else {
                let take = pending.min(n - i);
                pending -= take;
                got += take as u64;
                i += take;
            }
        }
    }
    let elapsed = started.elapsed();
    writer.await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    Ok(format!(
        "{{\"bytes\":{total},\"seconds\":{:.6},\"mb_per_s\":{:.1}}}",
        elapsed.as_secs_f64(),
        total as f64 / 1e6 / elapsed.as_secs_f64()
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let result = if a.get(1).map(String::as_str) == Some("--exec-stream") {
        match (a.first(), a.get(2), a.get(3).and_then(|m| m.parse().ok())) {
            (Some(socket), Some(container), Some(mb)) => exec_stream(socket, container, mb).await,
            _ => Err(USAGE.into()),
        }
    } else {
        match args(&a) {
            Ok(a) if a.socket.contains(',') => {
                if a.connections != 1 || a.delete_created {
                    eprintln!("several sockets: one connection each, and no --delete-created");
                    std::process::exit(2);
                }
                interleave(a).await
            }
            Ok(a) => load(a).await,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        }
    };
    match result {
        Ok(json) => println!("{json}"),
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(1);
        }
    }
}
