//! `X-Registry-Auth`: the registry credentials a client hands dockerd with a pull or a push.
//!
//! The header is base64url (RFC 4648 §5, padded as the CLI and docker-py send it) of a JSON
//! `AuthConfig`. dockerd decodes it with Go's `encoding/json`, which matches keys case-insensitively,
//! so `{"Username": ...}` and `{"username": ...}` mean the same; this module decodes the same way, so
//! what ctproxy reads is what the daemon would have read. A std-base64 value using `+` or `/` is not
//! base64url and does not decode, as in dockerd (`api/pkg/authconfig.Decode`). Unpadded base64url is
//! accepted as well: some SDKs strip the padding.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hyper::header::HeaderValue;
use serde::Serialize;

use super::json::{go_fold_eq, Raw};

/// base64url that accepts both padded and unpadded input; output is padded, like Go's
/// `base64.URLEncoding`.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(true).with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// moby's `registry.AuthConfig`. Empty fields are left out when encoding, as the CLI does.
#[derive(Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuthConfig {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// base64 (std) of `user:password`, what `~/.docker/config.json` stores.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub auth: String,
    /// Legacy, ignored by current daemons; kept so a decoded header re-encodes unchanged.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub email: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serveraddress: String,
    /// An OAuth refresh token, exchanged at the registry's token realm.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub identitytoken: String,
    /// A bearer token sent to the registry as-is (`Authorization: Bearer <token>`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub registrytoken: String,
}

/// Secrets never reach a log line through `{:?}`.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("AuthConfig")
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("auth", &hidden(&self.auth))
            .field("serveraddress", &self.serveraddress)
            .field("identitytoken", &hidden(&self.identitytoken))
            .field("registrytoken", &hidden(&self.registrytoken))
            .finish()
    }
}

impl AuthConfig {
    /// Decodes the JSON like Go does for moby's struct: keys match field names case-insensitively
    /// (with Go's folding), a later duplicate wins, `null` leaves a field empty, unknown keys are
    /// ignored, and a non-string value for a known field is an error.
    pub fn from_json(bytes: &[u8]) -> Option<AuthConfig> {
        // `Raw` keeps every key in order, duplicates included, which Go's last-wins rule needs.
        Self::from_raw(Raw::parse(bytes).ok()?)
    }

    fn from_raw(raw: Raw) -> Option<AuthConfig> {
        let Raw::Object(pairs) = raw else {
            return None;
        };
        let mut out = AuthConfig::default();
        for (key, value) in pairs {
            let field = match FIELDS.iter().find(|f| **f == key).or_else(|| FIELDS.iter().find(|f| go_fold_eq(&key, f))) {
                Some(f) => *f,
                None => continue,
            };
            let value = match value {
                Raw::String(s) => s,
                Raw::Null => continue,
                _ => return None,
            };
            *out.field_mut(field)? = value;
        }
        Some(out)
    }

    fn field_mut(&mut self, name: &str) -> Option<&mut String> {
        Some(match name {
            "username" => &mut self.username,
            "password" => &mut self.password,
            "auth" => &mut self.auth,
            "email" => &mut self.email,
            "serveraddress" => &mut self.serveraddress,
            "identitytoken" => &mut self.identitytoken,
            "registrytoken" => &mut self.registrytoken,
            _ => return None,
        })
    }

    /// Username and password, from the explicit fields or else from `auth` (`base64(user:pass)`).
    pub fn basic_credentials(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if self.auth.is_empty() {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(self.auth.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, pass) = text.split_once(':')?;
        (!user.is_empty()).then(|| (user.to_owned(), pass.to_owned()))
    }

    /// True when nothing identifies anyone: an anonymous pull.
    pub fn is_anonymous(&self) -> bool {
        self.username.is_empty() && self.auth.is_empty() && self.identitytoken.is_empty() && self.registrytoken.is_empty()
    }
}

const FIELDS: [&str; 7] = ["username", "password", "auth", "email", "serveraddress", "identitytoken", "registrytoken"];

/// Decodes an `X-Registry-Auth` value. An empty header is an anonymous (default) config; `None`
/// means the value is not base64url JSON, which dockerd would have ignored: never forward it.
pub fn decode_header(value: &HeaderValue) -> Option<AuthConfig> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return Some(AuthConfig::default());
    }
    let json = URL_SAFE_LENIENT.decode(text).ok()?;
    AuthConfig::from_json(&json)
}

/// Decodes an `X-Registry-Config` value (classic builds): base64url of a JSON object of
/// `AuthConfig`s by registry address, as the CLI sends every login it has. As dockerd's
/// `getAuthConfigs`: a value that does not decode gives no credentials (not an error); within the
/// object a later duplicate address wins (Go map) and each config decodes like `X-Registry-Auth`'s.
pub fn decode_config_header(value: &HeaderValue) -> Vec<(String, AuthConfig)> {
    let Some(Raw::Object(pairs)) =
        value.to_str().ok().and_then(|t| URL_SAFE_LENIENT.decode(t.trim()).ok()).and_then(|j| Raw::parse(&j).ok())
    else {
        return Vec::new();
    };
    let mut out: Vec<(String, AuthConfig)> = Vec::new();
    for (address, raw) in pairs {
        let Some(config) = AuthConfig::from_raw(raw) else { return Vec::new() };
        out.retain(|(a, _)| *a != address);
        out.push((address, config));
    }
    out
}

/// The credentials of `configs` (an `X-Registry-Config`) for registry `domain`, as dockerd's
/// `registry.ResolveAuthConfig` picks them: Docker Hub's under `https://index.docker.io/v1/`,
/// others by the exact address, else by an address whose host (scheme and path cut off) is it.
pub fn for_registry<'a>(configs: &'a [(String, AuthConfig)], domain: &str) -> Option<&'a AuthConfig> {
    const HUB: &str = "https://index.docker.io/v1/";
    if matches!(domain, "docker.io" | "index.docker.io" | "registry-1.docker.io") {
        return configs.iter().find(|(a, _)| a == HUB).map(|(_, c)| c);
    }
    let host = |address: &str| -> String {
        let rest = address.strip_prefix("http://").or_else(|| address.strip_prefix("https://")).unwrap_or(address);
        rest.split('/').next().unwrap_or(rest).to_owned()
    };
    configs.iter().find(|(a, _)| a == domain).or_else(|| configs.iter().find(|(a, _)| host(a) == domain)).map(|(_, c)| c)
}

/// Encodes an `X-Registry-Auth` value as the docker CLI does (padded base64url of the JSON).
pub fn encode_header(config: &AuthConfig) -> HeaderValue {
    // Serialising a struct of strings cannot fail; base64url output is always a valid header value.
    let json = serde_json::to_vec(config).unwrap_or_else(|_| b"{}".to_vec());
    HeaderValue::try_from(URL_SAFE_LENIENT.encode(json)).unwrap_or_else(|_| HeaderValue::from_static("e30="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn round_trip_is_padded_base64url() {
        let c = AuthConfig { registrytoken: "tok".into(), ..Default::default() };
        let h = encode_header(&c);
        assert_eq!(h.to_str().unwrap(), "eyJyZWdpc3RyeXRva2VuIjoidG9rIn0=");
        assert_eq!(decode_header(&h).unwrap(), c);
        let full = AuthConfig {
            username: "u".into(),
            password: "p?>".into(),
            auth: "dTpw".into(),
            email: "e".into(),
            serveraddress: "https://index.docker.io/v1/".into(),
            identitytoken: "i".into(),
            registrytoken: "r".into(),
        };
        assert_eq!(decode_header(&encode_header(&full)).unwrap(), full);
    }

    #[test]
    fn keys_fold_like_go() {
        let b64 = |json: &str| header(&URL_SAFE_LENIENT.encode(json));
        let c = decode_header(&b64(r#"{"Username":"a","PASSWORD":"b","ServerAddress":"r.io","registryToken":null,"x":1}"#)).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str(), c.serveraddress.as_str()), ("a", "b", "r.io"));
        // Go folds the Kelvin sign to k and the long s to s.
        let c = decode_header(&b64("{\"identitytO\u{212a}en\":\"t\",\"u\u{17f}ername\":\"v\"}")).unwrap();
        assert_eq!((c.identitytoken.as_str(), c.username.as_str()), ("t", "v"));
        // A later duplicate wins, as in encoding/json.
        assert_eq!(decode_header(&b64(r#"{"username":"a","Username":"b"}"#)).unwrap().username, "b");
        assert!(decode_header(&b64(r#"{"username":1}"#)).is_none());
        assert!(decode_header(&b64(r#"[]"#)).is_none());
    }

    #[test]
    fn padding_and_alphabet() {
        // {"username":"a?>"} has '?>' which base64url writes with '_' / '-', std base64 with '/' / '+'.
        let json = r#"{"username":"a?>","password":"~~~"}"#;
        let url = URL_SAFE_LENIENT.encode(json);
        assert!(url.contains('-') || url.contains('_'), "{url}");
        assert_eq!(decode_header(&header(&url)).unwrap().username, "a?>");
        assert_eq!(decode_header(&header(url.trim_end_matches('='))).unwrap().username, "a?>");
        let std = base64::engine::general_purpose::STANDARD.encode(json);
        assert!(decode_header(&header(&std)).is_none(), "std base64 must not decode");
        assert_eq!(decode_header(&header("")).unwrap(), AuthConfig::default());
        assert!(decode_header(&header("not base64!")).is_none());
    }

    #[test]
    fn credentials_and_redaction() {
        let c = AuthConfig { auth: base64::engine::general_purpose::STANDARD.encode("bob:s:ecret"), ..Default::default() };
        assert_eq!(c.basic_credentials(), Some(("bob".into(), "s:ecret".into())));
        assert!(!c.is_anonymous());
        let c = AuthConfig { username: "al".into(), password: "pw".into(), ..Default::default() };
        assert_eq!(c.basic_credentials(), Some(("al".into(), "pw".into())));
        assert!(!format!("{c:?}").contains("pw"));
        assert!(AuthConfig::default().is_anonymous());
        assert_eq!(AuthConfig::default().basic_credentials(), None);
    }

    #[test]
    fn registry_config_headers_decode_as_dockerd_reads_them() {
        let json = br#"{"https://index.docker.io/v1/":{"username":"hub"},"registry.example:5000":{"Username":"a"},"http://other.example/v2/":{"auth":"dTpw"},"registry.example:5000":{"username":"b"}}"#;
        let header = HeaderValue::try_from(URL_SAFE_LENIENT.encode(json)).unwrap();
        let configs = decode_config_header(&header);
        assert_eq!(configs.len(), 3);
        assert_eq!(for_registry(&configs, "registry.example:5000").unwrap().username, "b", "a later duplicate wins");
        assert_eq!(for_registry(&configs, "docker.io").unwrap().username, "hub");
        assert_eq!(for_registry(&configs, "other.example").unwrap().basic_credentials(), Some(("u".into(), "p".into())));
        assert!(for_registry(&configs, "nowhere.example").is_none());
        assert!(decode_config_header(&HeaderValue::from_static("not base64 json!")).is_empty());
    }
}
