//! The value types of the configuration: sizes, durations, file modes, addresses. A leaf: it
//! imports nothing from the crate, so every layer (and `config` itself) can use it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// An address that is neither `unix:///path` nor `tcp://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid address {0:?}: expected unix:///path or tcp://host:port")]
pub struct AddressError(pub String);

/// A byte count: a number, or a string with a binary suffix (`k`, `m`, `g`, `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct Size(pub u64);

impl TryFrom<toml::Value> for Size {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(n) if n > 0 => Ok(Size(n as u64)),
            toml::Value::String(s) => {
                let t = s.trim().to_ascii_lowercase();
                let t = t.trim_end_matches('b');
                let (num, mult) = match t.char_indices().last() {
                    Some((i, 'k')) => (&t[..i], 1u64 << 10),
                    Some((i, 'm')) => (&t[..i], 1 << 20),
                    Some((i, 'g')) => (&t[..i], 1 << 30),
                    Some((i, 't')) => (&t[..i], 1 << 40),
                    _ => (t, 1),
                };
                match num.trim().parse::<u64>() {
                    Ok(n) if n > 0 => n.checked_mul(mult).map(Size).ok_or_else(|| format!("size {s:?} is too large")),
                    _ => Err(format!("invalid size {s:?}: expected e.g. \"10g\"")),
                }
            }
            other => Err(format!("invalid size {other}: expected e.g. \"10g\"")),
        }
    }
}

/// A duration (more than zero): a humantime string with the units `ms`, `s`, `m`, `h`, `d`
/// (`"30s"`, `"24h"`, `"1h 30m"`, `"500ms"`), or seconds as a number (the old `*_s` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct Span(pub Duration);

impl TryFrom<toml::Value> for Span {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match duration(&v)? {
            d if d.is_zero() => Err(format!("invalid duration {v}: must be more than 0")),
            d => Ok(Span(d)),
        }
    }
}

/// A duration that may be zero (a grace time), written as [`Span`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "toml::Value")]
pub struct SpanOrZero(pub Duration);

impl TryFrom<toml::Value> for SpanOrZero {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        duration(&v).map(SpanOrZero)
    }
}

/// The one duration syntax of the configuration.
fn duration(v: &toml::Value) -> Result<Duration, String> {
    let parsed = match v {
        toml::Value::Integer(n) => u64::try_from(*n).ok().map(Duration::from_secs),
        toml::Value::String(s) => {
            let t = s.trim();
            match t.parse::<u64>() {
                Ok(secs) => Some(Duration::from_secs(secs)),
                // humantime's syntax, with its short units only (one style: "1h 30m", not
                // "1 hour 30 minutes"; no weeks, months or years).
                Err(_) => {
                    let mut units = t.split(|c: char| c.is_ascii_digit() || c.is_whitespace()).filter(|u| !u.is_empty());
                    let short = units.all(|u| matches!(u, "ms" | "s" | "m" | "h" | "d"));
                    humantime::parse_duration(t).ok().filter(|_| short)
                }
            }
        }
        _ => None,
    };
    parsed.ok_or_else(|| format!("invalid duration {v}: expected e.g. \"24h\", \"30m\", \"10s\", \"500ms\""))
}

/// A unix file mode written in octal (`"0660"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct FileMode(pub u32);

impl TryFrom<String> for FileMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match u32::from_str_radix(&s, 8) {
            Ok(m) if m <= 0o7777 => Ok(FileMode(m)),
            _ => Err(format!("invalid file mode {s:?}: expected octal digits such as \"0660\"")),
        }
    }
}

/// Where a listener listens, as written in the configuration (`unix:///path`, `tcp://host:port`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ListenAddr {
    Unix(PathBuf),
    /// `host:port`; the host may be a name, resolved at bind time.
    Tcp(String),
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(ListenAddr::Unix(PathBuf::from(path)));
            }
        } else if let Some(hostport) = s.strip_prefix("tcp://") {
            let hostport = hostport.trim_end_matches('/');
            if let Some((host, port)) = hostport.rsplit_once(':') {
                if !host.is_empty() && port.parse::<u16>().is_ok() {
                    return Ok(ListenAddr::Tcp(hostport.to_owned()));
                }
            }
        }
        Err(AddressError(s.to_owned()))
    }
}

impl TryFrom<String> for ListenAddr {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// The daemon's address (`unix:///var/run/docker.sock`, `tcp://host:2376`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum UpstreamAddr {
    Unix(PathBuf),
    Tcp { host: String, port: u16 },
}

impl UpstreamAddr {
    pub fn parse(s: &str) -> Result<Self, AddressError> {
        match ListenAddr::parse(s)? {
            ListenAddr::Unix(p) => Ok(UpstreamAddr::Unix(p)),
            ListenAddr::Tcp(hostport) => {
                let (host, port) = hostport.rsplit_once(':').ok_or_else(|| AddressError(s.to_owned()))?;
                let port = port.parse().map_err(|_| AddressError(s.to_owned()))?;
                Ok(UpstreamAddr::Tcp { host: host.to_owned(), port })
            }
        }
    }
}

impl TryFrom<String> for UpstreamAddr {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl std::fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            UpstreamAddr::Tcp { host, port } => write!(f, "tcp://{host}:{port}"),
        }
    }
}
