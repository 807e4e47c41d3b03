//! Registry credentials of a BuildKit build for ctproxy's registry proxy: the session's `Auth`
//! calls the daemon makes for the registry proxy's host are answered by ctproxy, never by the
//! client.
//!
//! BuildKit pushes (`--push`, an image exporter with `push=true`, a registry cache) and pulls a
//! namespace's images as `<rp>/<ns>/<domain>/<path>`, from the registry proxy, which wants a
//! token of the namespace (see `docs/registry-proxy.md`). BuildKit's resolver asks the build's
//! session for registry authentication; with a token authority (`GetTokenAuthority` answers a
//! key), it asks the session for each token (`FetchToken`) instead of calling the registry's realm
//! itself. So for the registry proxy's host:
//! - `GetTokenAuthority` answers a key of this session (random; it never verifies anything);
//! - `VerifyTokenAuthority` is refused: BuildKit would reuse an authenticated fetcher of another
//!   session (another namespace's) for a session that verifies its key;
//! - `FetchToken` reads the namespace's repositories from the scopes, asks the client's
//!   session for its credentials for the real registry (`Credentials`, as BuildKit would ask for a
//!   direct push), and answers a registry-proxy token of the namespace carrying them, like
//!   `docker push` does with `X-Registry-Auth`;
//! - `Credentials` answers none (the client has none for the registry proxy).
//!
//! Other hosts pass to the client as before.

use std::collections::BTreeSet;

use prost::Message;

use super::super::names::split_repository;
use super::super::request::random_hex64;
use super::Namespace;
use crate::docker::auth_config::{decode_header, encode_header, AuthConfig};
use crate::docker::buildkit::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse, TokenAuthorityRequest, TokenAuthorityResponse,
};
use crate::http::grpc::{self, code, UnaryCall};

/// How long BuildKit may use a token before asking again (the token itself lives longer).
const TOKEN_EXPIRES_IN: i64 = 3600;

/// The session's public key for the registry proxy's host: 32 random bytes.
pub(super) fn session_key() -> Vec<u8> {
    let hex = random_hex64();
    (0..hex.len() / 2).filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()).collect()
}

/// The host an `Auth` request names, or `None` when it does not parse.
pub(super) fn host_of(method: &str, msg: &[u8]) -> Option<String> {
    match method {
        "Credentials" => CredentialsRequest::decode(msg).ok().map(|r| r.host),
        "FetchToken" => FetchTokenRequest::decode(msg).ok().map(|r| r.host),
        _ => TokenAuthorityRequest::decode(msg).ok().map(|r| r.host),
    }
}

impl Namespace {
    /// Answers the session `Auth` call `method` (its request `msg`) for the registry proxy's host.
    pub(super) async fn registry_proxy_auth(&self, call: UnaryCall, method: &str, key: &[u8]) {
        let UnaryCall { head, msg, respond, mut upstream } = call;
        match method {
            "GetTokenAuthority" => grpc::reply(respond, &TokenAuthorityResponse { data: key.to_vec() }.encode_to_vec()).await,
            "Credentials" => grpc::reply(respond, &CredentialsResponse::default().encode_to_vec()).await,
            "FetchToken" => {
                let Ok(req) = FetchTokenRequest::decode(msg) else {
                    return grpc::refuse(respond, code::INVALID_ARGUMENT, "ctproxy: invalid FetchTokenRequest");
                };
                let domains = self.scope_domains(&req.scopes);

                // The job's own credentials for the one real registry the scopes name.
                let creds = match domains.iter().next() {
                    Some(domain) if domains.len() == 1 => {
                        let host = if domain == "docker.io" { "registry-1.docker.io" } else { domain.as_str() };
                        let ask = CredentialsRequest { host: host.to_owned() }.encode_to_vec();
                        match grpc::request(&mut upstream, &head, "/moby.filesync.v1.Auth/Credentials", &ask).await {
                            Ok(rsp) => CredentialsResponse::decode(rsp).ok(),
                            Err(e) => {
                                tracing::debug!(error = %e, "the client's session gave no registry credentials");
                                None
                            }
                        }
                        .map(|c| auth_config(domain, c))
                    }
                    _ => None,
                };
                let Some(tokens) = &self.settings.tokens else {
                    return grpc::refuse(
                        respond,
                        code::PERMISSION_DENIED,
                        &super::refusal_message_with(
                            code::PERMISSION_DENIED,
                            "a registry token (Auth.FetchToken) is not available in a namespace without a registry proxy: pulls and pushes in a namespace go through it, and none is configured",
                            &crate::plugin::Remedy::Config("setting [registry_proxy]"),
                        ),
                    );
                };
                let header = tokens.issue(&self.name, creds.as_ref().map(encode_header).as_ref());
                let token = decode_header(&header).map(|a| a.registrytoken).unwrap_or_default();
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
                let rsp = FetchTokenResponse { token, expires_in: TOKEN_EXPIRES_IN, issued_at: now };
                grpc::reply(respond, &rsp.encode_to_vec()).await
            }
            // `VerifyTokenAuthority`: no other session's fetcher is ever this session's.
            _ => grpc::refuse(
                respond,
                code::PERMISSION_DENIED,
                &super::refusal_message(
                    code::PERMISSION_DENIED,
                    &format!("Auth.{method} is not available in a namespace: registry proxy tokens are per session"),
                ),
            ),
        }
    }

    /// The real registries of the namespace's repository scopes
    /// (`repository:<ns>/<domain>/<path>:pull,push`). Other scopes are ignored, never named: BuildKit
    /// asks for a cross-repository mount from wherever the daemon's content store says a blob came
    /// from, another namespace's repository included, and the token is good for this namespace's
    /// repositories only (the registry proxy turns such a mount into an ordinary upload).
    fn scope_domains(&self, scopes: &[String]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for s in scopes {
            let Some(rest) = s.strip_prefix("repository:") else { continue };
            let repo = rest.rsplit_once(':').map_or(rest, |(r, _)| r);
            if let Some((ns, domain, _)) = split_repository(repo) {
                if ns == self.name.as_str() {
                    out.insert(domain);
                }
            }
        }
        out
    }
}

/// The credentials the client's session gave for `domain`, as the registry proxy uses them.
fn auth_config(domain: &str, c: CredentialsResponse) -> AuthConfig {
    let mut a = AuthConfig { serveraddress: domain.to_owned(), ..Default::default() };
    if c.username.is_empty() {
        a.identitytoken = c.secret;
    } else {
        a.username = c.username;
        a.password = c.secret;
    }
    a
}
