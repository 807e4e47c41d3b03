//! The certificate authority of the caching proxy: short-lived CA generations and per-SNI leaves.
//!
//! Containers reach the intercepted package hosts (deb.debian.org, pypi.org, ...) through
//! `/etc/hosts` entries pointing at the proxy, and trust a CA that ctproxy publishes in
//! `trust_dir`. The proxy terminates TLS with a leaf certificate minted here for the SNI.
//!
//! **Short-lived.** A CA generation is valid for `3 × rotate_every` (24 h → 3 days): a key or a trust
//! file that leaks is worth little for long, and an expired generation is simply dropped, there is
//! nothing to revoke.
//!
//! **Overlap.** There is always a `current` generation (it signs the leaves) and a pre-created `next`
//! one, and both are in the trust files. Rotation (when `next` is `rotate_every` old) promotes `next`
//! to `current` and creates a new `next`. A container trusts what the trust files held when it was
//! created, i.e. {current, next}, so it keeps trusting the proxy across the following rotation, not
//! the one after: **jobs must be shorter than `rotate_every`.** A generation is `next` for one period,
//! `current` for one, and still published (but unused) for the last one, until it expires.
//!
//! **Additive trust.** The trust files are new files (`ca.pem`, `ctproxy-ca.crt`, and `bundle.pem` =
//! system roots + our CAs) that the container side points environment variables at or mounts as a
//! directory; no distro bundle is ever replaced. They are written atomically (temporary file +
//! rename in the same directory), so a bind-mounted directory never shows a half-written file.
//!
//! **Name constraints.** Each CA carries a critical NameConstraints extension permitting only the
//! intercepted hosts (DNS subtrees; /32 or /128 for IP literals; every IP address is excluded when no
//! IP literal is intercepted), so even its key could not impersonate any other site to verifiers
//! that enforce constraints on trust anchors (rustls/webpki does, tested below; Go and OpenSSL are
//! documented to, not tested here). RFC 5280 makes that enforcement optional; the stronger
//! root → constrained intermediate pattern (root key discarded) is not used here. Changing the hosts to a set the current CAs do not cover creates a fresh pair
//! of generations (see [`Authority::set_hosts`]).
//!
//! **Persistence.** Generations are kept in `dir` (`gen-<n>.key.pem`, `gen-<n>.crt.pem`, mode 0600,
//! directory 0700) so a restart keeps trusting and signing with the same CAs; the keys never
//! leave that directory and the proxy's memory. Everything else (creation time, hosts covered) is
//! read back from the certificate itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DistinguishedName, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, KeyPair,
    KeyUsagePurpose, NameConstraints, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Certificates are backdated by this much, so a client whose clock is a little behind accepts them.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// A generation lives this many rotation periods: next, current, then still trusted by older containers.
const LIFETIMES: u32 = 3;
/// Bounds for `rotate_every`: certificate times have a one-second resolution, and the validity
/// arithmetic must stay far from overflowing.
const MIN_ROTATE: Duration = Duration::from_secs(1);
const MAX_ROTATE: Duration = Duration::from_secs(365 * 24 * 3600);
/// Serial numbers: 16 random bytes, top bit clear so the DER integer is positive.
const SERIAL_LEN: usize = 16;
/// The placeholder permitted by a CA created while no host is intercepted (RFC 2606 reserves it).
const NOTHING_PERMITTED: &str = "invalid";

/// Settings of the authority (built from the configuration).
#[derive(Debug, Clone)]
pub struct CaSettings {
    /// Private state: the CA keys and certificates (directory 0700, files 0600).
    pub dir: PathBuf,
    /// Public files, mounted read-only into containers (directory 0755, files 0644).
    pub trust_dir: PathBuf,
    /// How long a generation signs leaves; it lives three times as long. Jobs must be shorter.
    pub rotate_every: Duration,
    /// Intercepted host names (lowercase DNS names or IP literals); leaves are only minted for these.
    pub hosts: Vec<String>,
}

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A persisted generation that cannot be used (damaged, foreign, mismatched key).
    #[error("{}: {reason}", .path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("no secure random numbers: {0}")]
    Random(ring::error::Unspecified),
    #[error("invalid setting: {0}")]
    Settings(String),
    #[error("{0:?} is not a valid host name or IP address")]
    InvalidHost(String),
    /// The host is not in the allowlist: nothing is minted for it.
    #[error("{0:?} is not an intercepted host")]
    NotAllowed(String),
    /// The host is allowed, but the current CA's name constraints do not cover it yet (creating the
    /// generations for a new host set failed; [`Authority::rotate_if_due`] retries).
    #[error("{host:?} is not covered by CA generation {generation}")]
    NotCovered { host: String, generation: u64 },
    /// No unexpired generation signs leaves (the rotation timer is not running, or creation failed).
    #[error("no usable CA generation")]
    NoGeneration,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io { path: path.to_owned(), source }
}

fn unreadable(path: &Path, reason: impl ToString) -> CaError {
    CaError::Unreadable { path: path.to_owned(), reason: reason.to_string() }
}

/// One CA generation: its key, its published certificate and the issuer rcgen signs leaves with.
struct Generation {
    id: u64,
    /// `not_before + BACKDATE`. A generation becomes current when its successor is created.
    created: SystemTime,
    not_before: SystemTime,
    not_after: SystemTime,
    /// The names its NameConstraints permit (exact names; IP literals in canonical form).
    permits: BTreeSet<String>,
    /// The certificate exactly as published: leaves chain to these bytes.
    der: CertificateDer<'static>,
    pem: String,
    key: KeyPair,
    /// Rebuilt from `der` and `key`, so its key identifier is the published SKI byte for byte.
    issuer: rcgen::Certificate,
}

impl Generation {
    fn key_path(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("gen-{id}.key.pem"))
    }

    fn cert_path(dir: &Path, id: u64) -> PathBuf {
        dir.join(format!("gen-{id}.crt.pem"))
    }

    /// Creates generation `id` at `now` permitting `hosts`, and persists it in `dir`.
    fn create(
        dir: &Path,
        id: u64,
        now: SystemTime,
        rotate_every: Duration,
        hosts: &BTreeSet<String>,
        label: &str,
    ) -> Result<Self, CaError> {
        let created = whole_seconds(now);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("ctproxy cache CA {id} {label}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.serial_number = Some(random_serial()?);
        set_validity(&mut params, created - BACKDATE, created + rotate_every * LIFETIMES);
        params.name_constraints = Some(name_constraints(hosts));
        let cert = params.self_signed(&key)?;

        let key_pem = key.serialize_pem();
        let cert_pem = pem_certificate(cert.der());
        write_atomically(&Self::key_path(dir, id), key_pem.as_bytes(), 0o600)?;
        write_atomically(&Self::cert_path(dir, id), cert_pem.as_bytes(), 0o600)?;
        // The same path as after a restart, so both behave alike.
        Self::from_pem(id, &key_pem, &cert_pem, &Self::cert_path(dir, id))
    }

    /// Reads generation `id` back from `dir`.
    fn load(dir: &Path, id: u64) -> Result<Self, CaError> {
        let key_path = Self::key_path(dir, id);
        let cert_path = Self::cert_path(dir, id);
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        Self::from_pem(id, &key_pem, &cert_pem, &cert_path)
    }

    fn from_pem(id: u64, key_pem: &str, cert_pem: &str, path: &Path) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| unreadable(path, e))?;
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| unreadable(path, e))?;
        let (not_before, not_after) = {
            let (_, x509) = x509_parser::parse_x509_certificate(&der).map_err(|e| unreadable(path, e))?;
            if x509.public_key().raw != key.public_key_der().as_slice() {
                return Err(unreadable(path, "the key does not belong to the certificate"));
            }
            if !x509.is_ca() {
                return Err(unreadable(path, "not a CA certificate"));
            }
            // rcgen's parser panics on a multi-valued or empty relative distinguished name.
            if x509.subject().iter().any(|rdn| rdn.iter().count() != 1) {
                return Err(unreadable(path, "unexpected subject name"));
            }
            let validity = x509.validity();
            (epoch_time(validity.not_before.timestamp(), path)?, epoch_time(validity.not_after.timestamp(), path)?)
        };
        // rcgen 0.13 signs with a `Certificate`: rebuild one from the published certificate. Its
        // key identifier method becomes the published SKI, which the leaves' AKI then repeats.
        let params = CertificateParams::from_ca_cert_der(&der).map_err(|e| unreadable(path, e))?;
        let issuer = params.self_signed(&key)?;
        let permits = issuer
            .params()
            .name_constraints
            .iter()
            .flat_map(|nc| &nc.permitted_subtrees)
            .filter_map(|subtree| match subtree {
                GeneralSubtree::DnsName(name) => Some(name.to_ascii_lowercase()),
                GeneralSubtree::IpAddress(CidrSubnet::V4(addr, [255, 255, 255, 255])) => Some(IpAddr::from(*addr).to_string()),
                GeneralSubtree::IpAddress(CidrSubnet::V6(addr, mask)) if mask.iter().all(|b| *b == 255) => {
                    Some(IpAddr::from(*addr).to_string())
                }
                _ => None,
            })
            .collect();
        Ok(Generation { id, created: not_before + BACKDATE, not_before, not_after, permits, pem: pem_certificate(&der), der, key, issuer })
    }

    fn covers<'a>(&self, mut hosts: impl Iterator<Item = &'a String>) -> bool {
        hosts.all(|h| self.permits.contains(h))
    }

    /// Was it made for this rotation period (or a shorter one)? Generations made for a shorter
    /// period would expire while still in use.
    fn fits(&self, rotate_every: Duration) -> bool {
        self.not_after >= self.created + rotate_every * LIFETIMES
    }

    fn is_expired(&self, now: SystemTime) -> bool {
        self.not_after <= now
    }

    /// A leaf for `host` signed by this generation: fresh P-256 key, random serial, SAN, serverAuth.
    fn mint(&self, host: &str, now: SystemTime) -> Result<Leaf, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        params.subject_alt_names = vec![match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                // Some verifiers check a DNS-looking common name against the name constraints:
                // only set it for DNS names, where it is the permitted name itself.
                dn.push(DnType::CommonName, host);
                SanType::DnsName(host.try_into()?)
            }
        }];
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        let not_before = whole_seconds(now).checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH).max(self.not_before);
        set_validity(&mut params, not_before, self.not_after);
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let key_der: Arc<[u8]> = Arc::from(key.serialize_der());
        let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&PrivateKeyDer::Pkcs8(key_der.to_vec().into()))?;
        Ok(Leaf { certified: Arc::new(CertifiedKey::new(vec![cert.der().clone(), self.der.clone()], signing_key)), key_der })
    }
}

/// What a rotation check decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Keep,
    /// `next` becomes `current`, a new `next` is created.
    Rotate,
    /// A new pair: the hosts changed, the rotation period grew, or the proxy was down for too long.
    Fresh,
}

struct State {
    /// Every unexpired generation by id; the highest is `next`, the one below `current`.
    gens: BTreeMap<u64, Arc<Generation>>,
    /// The highest id ever used here (also of dropped generations): ids are never reused.
    last_id: u64,
    /// The allowlist.
    hosts: BTreeSet<String>,
    /// The trust files lag behind `gens` (their last write failed).
    trust_stale: bool,
}

impl State {
    fn next(&self) -> Option<&Arc<Generation>> {
        self.gens.values().next_back()
    }

    fn current(&self) -> Option<&Arc<Generation>> {
        self.gens.values().rev().nth(1)
    }

    fn next_id(&mut self) -> u64 {
        self.last_id = self.last_id.max(self.gens.keys().next_back().copied().unwrap_or(0)) + 1;
        self.last_id
    }
}

/// A minted leaf: what rustls serves, and the private key for the legacy TLS stack.
pub struct Leaf {
    pub certified: Arc<CertifiedKey>,
    /// PKCS#8 DER of the leaf's key.
    pub key_der: Arc<[u8]>,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf").finish_non_exhaustive()
    }
}

/// The certificate authority: CA generations, the trust files, and the leaves per SNI.
/// Shared as `Arc<Authority>`; every method takes `&self`.
pub struct Authority {
    dir: PathBuf,
    trust_dir: PathBuf,
    rotate_every: Duration,
    /// Part of the CAs' common name, so an operator can tell which machine's CA a container trusts.
    label: String,
    /// The system's roots, PEM-encoded, read once at start (the head of `bundle.pem`).
    system_roots: String,
    /// Held across rotation (key generation and a few small fsynced writes), briefly otherwise.
    state: Mutex<State>,
    leaves: Mutex<HashMap<(u64, String), Arc<Leaf>>>,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("dir", &self.dir).field("trust_dir", &self.trust_dir).finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the persisted generations (expired or unreadable ones are dropped with a warning),
    /// creates what is missing so that a `current` and a `next` exist, and writes the trust files.
    pub fn open(settings: CaSettings) -> Result<Arc<Authority>, CaError> {
        let CaSettings { dir, trust_dir, rotate_every, hosts } = settings;
        if !(MIN_ROTATE..=MAX_ROTATE).contains(&rotate_every) {
            return Err(CaError::Settings(format!("rotate_every must be between {MIN_ROTATE:?} and {MAX_ROTATE:?}")));
        }
        let hosts = hosts.iter().map(|h| normalize_host(h)).collect::<Result<BTreeSet<_>, _>>()?;
        make_dir(&dir, 0o700)?;
        make_dir(&trust_dir, 0o755)?;
        let (gens, last_id) = load_generations(&dir, SystemTime::now());
        let system_roots = system_roots_pem();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth();
        let ticketer = rustls::crypto::ring::Ticketer::new()?;
        let authority = Arc::new_cyclic(|weak: &Weak<Authority>| {
            let mut config = builder.with_cert_resolver(Arc::new(SniResolver { authority: weak.clone() }));
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            // Package managers open many short connections: resume with tickets (TLS 1.3 and 1.2)
            // and with the session-ID cache the builder already set up.
            config.ticketer = ticketer;
            Authority {
                label: host_label(),
                dir,
                trust_dir,
                rotate_every,
                system_roots,
                state: Mutex::new(State { gens, last_id, hosts, trust_stale: true }),
                leaves: Mutex::new(HashMap::new()),
                config: Arc::new(config),
            }
        });
        {
            let mut state = authority.lock_state();
            authority.advance(&mut state, SystemTime::now(), false)?;
        }
        Ok(authority)
    }

    /// Called by a timer every few seconds: rotates when `next` has been waiting for `rotate_every`,
    /// drops expired generations, creates a fresh pair if the hosts are not covered, and retries a
    /// failed trust-file write. True if new generations were created.
    pub fn rotate_if_due(&self, now: SystemTime) -> Result<bool, CaError> {
        let mut state = self.lock_state();
        self.advance(&mut state, now, false)
    }

    /// Rotates now, whatever the age of `current`.
    pub fn rotate_now(&self) -> Result<(), CaError> {
        let mut state = self.lock_state();
        self.advance(&mut state, SystemTime::now(), true).map(drop)
    }

    /// Replaces the allowlist (configuration reload). Invalid names are skipped with a warning.
    ///
    /// If `current` and `next` do not both permit every new host, a fresh pair is created at once
    /// and signs from now on. Older generations stay in the trust files until they expire, but
    /// containers created before the change trust only those: they stop trusting the proxy (for
    /// every host, not only the new ones) until they are recreated. Removing hosts never rotates.
    /// If creating the pair fails, the error is logged, the new hosts are refused until a later
    /// [`rotate_if_due`](Self::rotate_if_due) succeeds, and the others keep working.
    pub fn set_hosts(&self, hosts: Vec<String>) {
        let hosts = hosts
            .iter()
            .filter_map(|h| match normalize_host(h) {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an intercepted host");
                    None
                }
            })
            .collect::<BTreeSet<_>>();
        let mut state = self.lock_state();
        state.hosts = hosts;
        if let Err(e) = self.advance(&mut state, SystemTime::now(), false) {
            tracing::error!(error = %e, "cannot create CA generations for the new intercepted hosts");
        }
        // Also when nothing was created: leaves of removed hosts must go.
        self.prune_leaves(&state);
    }

    /// The directory of the public trust files (`ca.pem`, `ctproxy-ca.crt`, `bundle.pem`).
    pub fn trust_dir(&self) -> &Path {
        &self.trust_dir
    }

    /// PEM of every unexpired generation's CA certificate (previous, current and next).
    pub fn ca_pem(&self) -> String {
        ca_pem(&self.lock_state(), SystemTime::now())
    }

    /// The TLS configuration of the intercepting listener: TLS 1.2 and 1.3, ALPN `http/1.1` only,
    /// session resumption, and a certificate chosen by SNI (see [`leaf_for`](Self::leaf_for)).
    /// Always the same configuration, so every listener shares the session cache.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        self.config.clone()
    }

    /// The leaf certificate for `host`, signed by the current generation; minted on first use and
    /// kept until the generation stops being current. Refuses hosts outside the allowlist.
    pub fn leaf_for(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        self.leaf(host).map(|l| l.certified.clone())
    }

    /// The leaf for `host` with its private key (PKCS#8 DER), for the TLS stack that serves
    /// clients rustls cannot (see `cache::legacy_tls`). The key stays in this process.
    pub fn leaf(&self, host: &str) -> Result<Arc<Leaf>, CaError> {
        let host = normalize_host(host)?;
        let now = SystemTime::now();
        let generation = {
            let state = self.lock_state();
            if !state.hosts.contains(&host) {
                return Err(CaError::NotAllowed(host));
            }
            state.current().filter(|g| !g.is_expired(now)).cloned().ok_or(CaError::NoGeneration)?
        };
        if !generation.permits.contains(&host) {
            return Err(CaError::NotCovered { host, generation: generation.id });
        }
        let key = (generation.id, host);
        if let Some(leaf) = self.lock_leaves().get(&key) {
            return Ok(leaf.clone());
        }
        // Minted outside the lock (a key pair and a signature); a concurrent twin is discarded.
        let leaf = Arc::new(generation.mint(&key.1, now)?);
        tracing::debug!(host = %key.1, generation = generation.id, "minted a leaf certificate");
        Ok(self.lock_leaves().entry(key).or_insert(leaf).clone())
    }

    /// The id of the generation that signs leaves (0 if there is none).
    pub fn current_generation(&self) -> u64 {
        self.lock_state().current().map_or(0, |g| g.id)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_leaves(&self) -> MutexGuard<'_, HashMap<(u64, String), Arc<Leaf>>> {
        self.leaves.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Brings the generations up to date at `now` (see [`rotate_if_due`](Self::rotate_if_due)).
    fn advance(&self, state: &mut State, now: SystemTime, force: bool) -> Result<bool, CaError> {
        let expired: Vec<u64> = state.gens.values().filter(|g| g.is_expired(now)).map(|g| g.id).collect();
        for id in expired {
            state.gens.remove(&id);
            state.trust_stale = true;
            self.remove_generation_files(id);
            tracing::info!(generation = id, "CA generation expired");
        }
        let step = match (state.current(), state.next()) {
            (Some(current), Some(next))
                if current.covers(state.hosts.iter())
                    && next.covers(state.hosts.iter())
                    && current.fits(self.rotate_every)
                    && next.fits(self.rotate_every) =>
            {
                let waited = now.duration_since(next.created).unwrap_or_default();
                if waited >= self.rotate_every * 2 {
                    Step::Fresh
                } else if force || waited >= self.rotate_every {
                    Step::Rotate
                } else {
                    Step::Keep
                }
            }
            _ => Step::Fresh,
        };
        let count = match step {
            Step::Keep => 0,
            Step::Rotate => 1,
            Step::Fresh => 2,
        };
        for _ in 0..count {
            let id = state.next_id();
            let generation = Generation::create(&self.dir, id, now, self.rotate_every, &state.hosts, &self.label)?;
            state.gens.insert(id, Arc::new(generation));
            // Even if the second of a pair fails: the first is persisted and must be published.
            state.trust_stale = true;
        }
        if step != Step::Keep {
            let (current, next) = (state.current().map_or(0, |g| g.id), state.next().map_or(0, |g| g.id));
            tracing::info!(current, next, fresh = step == Step::Fresh, "CA generations rotated");
        }
        if state.trust_stale {
            self.prune_leaves(state);
            self.write_trust(state, now)?;
            state.trust_stale = false;
        }
        Ok(step != Step::Keep)
    }

    /// Keeps only the leaves of the current generation for allowed hosts.
    fn prune_leaves(&self, state: &State) {
        let current = state.current().map(|g| g.id);
        self.lock_leaves().retain(|(generation, host), _| Some(*generation) == current && state.hosts.contains(host));
    }

    fn remove_generation_files(&self, id: u64) {
        for path in [Generation::cert_path(&self.dir, id), Generation::key_path(&self.dir, id)] {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an expired CA file");
                }
            }
        }
    }

    fn write_trust(&self, state: &State, now: SystemTime) -> Result<(), CaError> {
        let ours = ca_pem(state, now);
        write_atomically(&self.trust_dir.join("ca.pem"), ours.as_bytes(), 0o644)?;
        write_atomically(&self.trust_dir.join("ctproxy-ca.crt"), ours.as_bytes(), 0o644)?;
        let bundle = format!("{}{ours}", self.system_roots);
        write_atomically(&self.trust_dir.join("bundle.pem"), bundle.as_bytes(), 0o644)
    }
}

fn ca_pem(state: &State, now: SystemTime) -> String {
    state.gens.values().filter(|g| !g.is_expired(now)).map(|g| g.pem.as_str()).collect()
}

/// Chooses the certificate by SNI; a handshake without SNI or for a host that is not intercepted
/// gets no certificate, so it fails. Clients send no SNI for IP literals, so an intercepted IP
/// address can have a leaf ([`Authority::leaf_for`]) but no handshake through this resolver.
#[derive(Debug)]
struct SniResolver {
    authority: Weak<Authority>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = client_hello.server_name() else {
            tracing::warn!("TLS handshake without SNI refused");
            return None;
        };
        let authority = self.authority.upgrade()?;
        match authority.leaf_for(sni) {
            Ok(leaf) => Some(leaf),
            Err(e @ (CaError::NotAllowed(_) | CaError::InvalidHost(_))) => {
                tracing::warn!(sni, error = %e, "TLS handshake for a host that is not intercepted refused");
                None
            }
            Err(e) => {
                tracing::error!(sni, error = %e, "cannot mint a leaf certificate");
                None
            }
        }
    }
}

/// Lowercase, without a trailing dot or IPv6 brackets; IP literals in canonical form.
fn normalize_host(host: &str) -> Result<String, CaError> {
    let trimmed = host.trim().trim_end_matches('.').trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if let Ok(ip) = trimmed.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    match ServerName::try_from(trimmed.as_str()) {
        Ok(ServerName::DnsName(_)) if !trimmed.is_empty() => Ok(trimmed),
        _ => Err(CaError::InvalidHost(host.to_owned())),
    }
}

/// Permits exactly `hosts` (DNS subtrees also admit their subdomains, for which nothing is minted).
/// IP addresses are all excluded unless an IP literal is intercepted, since DNS-only constraints
/// would leave them unconstrained.
fn name_constraints(hosts: &BTreeSet<String>) -> NameConstraints {
    let mut permitted = Vec::new();
    let (mut v4, mut v6) = (false, false);
    for host in hosts {
        match host.parse::<IpAddr>() {
            Ok(ip) => {
                v4 |= ip.is_ipv4();
                v6 |= ip.is_ipv6();
                permitted.push(GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(ip, if ip.is_ipv4() { 32 } else { 128 })));
            }
            Err(_) => permitted.push(GeneralSubtree::DnsName(host.clone())),
        }
    }
    if permitted.is_empty() {
        permitted.push(GeneralSubtree::DnsName(NOTHING_PERMITTED.to_owned()));
    }
    let mut excluded = Vec::new();
    if !v4 {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])));
    }
    if !v6 {
        excluded.push(GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])));
    }
    NameConstraints { permitted_subtrees: permitted, excluded_subtrees: excluded }
}

/// Loads every persisted generation that is usable at `now`; the others are deleted, with a warning.
/// Also returns the highest id found.
fn load_generations(dir: &Path, now: SystemTime) -> (BTreeMap<u64, Arc<Generation>>, u64) {
    let mut ids = BTreeSet::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') && name.ends_with(".tmp") {
                    // A write interrupted by a crash.
                    let _ = fs::remove_file(entry.path());
                    continue;
                }
                let id = name.strip_prefix("gen-").and_then(|rest| rest.strip_suffix(".key.pem").or_else(|| rest.strip_suffix(".crt.pem")));
                if let Some(id) = id.and_then(|id| id.parse::<u64>().ok()) {
                    ids.insert(id);
                }
            }
        }
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot list the CA directory"),
    }
    let last_id = ids.last().copied().unwrap_or(0);
    let mut gens = BTreeMap::new();
    for id in ids {
        let problem = match Generation::load(dir, id) {
            Ok(g) if g.is_expired(now) => "expired".to_owned(),
            Ok(g) => {
                gens.insert(id, Arc::new(g));
                continue;
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(generation = id, problem = %problem, "dropping a persisted CA generation");
        for path in [Generation::cert_path(dir, id), Generation::key_path(dir, id)] {
            let _ = fs::remove_file(path);
        }
    }
    (gens, last_id)
}

/// The system's roots as PEM (the head of `bundle.pem`). Without them, every tool pointed at the
/// bundle would fail for every non-intercepted site, hence the loud warning.
fn system_roots_pem() -> String {
    let result = rustls_native_certs::load_native_certs();
    for e in &result.errors {
        tracing::warn!(error = %e, "while loading the system's root certificates");
    }
    if result.certs.is_empty() {
        tracing::warn!("no system root certificates found: bundle.pem only holds ctproxy's CAs");
    }
    result.certs.iter().map(pem_certificate).collect()
}

fn pem_certificate(der: &CertificateDer<'_>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    pem.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII.
        let _ = writeln!(pem, "{}", String::from_utf8_lossy(line));
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; SERIAL_LEN];
    ring::rand::SystemRandom::new().fill(&mut bytes).map_err(CaError::Random)?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        // Keep all 16 bytes significant (DER drops leading zeros).
        bytes[0] = 1;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// Certificates hold whole seconds; so do the times kept in memory, so a restart sees the same.
fn whole_seconds(t: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs())
}

/// Sets the validity (rcgen takes `time` types; this crate does not name them).
fn set_validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + not_before.duration_since(UNIX_EPOCH).unwrap_or_default();
    params.not_after = epoch + not_after.duration_since(UNIX_EPOCH).unwrap_or_default();
}

fn epoch_time(seconds: i64, path: &Path) -> Result<SystemTime, CaError> {
    let seconds = u64::try_from(seconds).map_err(|_| unreadable(path, "validity before 1970"))?;
    Ok(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Short host name for the CAs' common name.
fn host_label() -> String {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").or_else(|_| fs::read_to_string("/etc/hostname")).unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).take(32).collect();
    if name.is_empty() {
        "ctproxy".to_owned()
    } else {
        name
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), CaError> {
    fs::create_dir_all(path).map_err(io_err(path))?;
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io_err(path))
}

/// Writes `path` so that readers see the old or the new contents, never a mix: a temporary file
/// in the same directory, fsynced, renamed over `path`, then the directory fsynced.
fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(unreadable(path, "not a file path"));
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(&tmp)(e)),
        _ => {}
    }
    let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io_err(&tmp))?;
    // The umask may have removed bits (0644 must stay readable by containers' users).
    file.set_permissions(Permissions::from_mode(mode)).map_err(io_err(&tmp))?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(io_err(&tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate};

    const HOUR: Duration = Duration::from_secs(3600);

    fn settings(tmp: &Path, hosts: &[&str], rotate_every: Duration) -> CaSettings {
        CaSettings {
            dir: tmp.join("state"),
            trust_dir: tmp.join("trust"),
            rotate_every,
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        }
    }

    fn ders(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<_, _>>().expect("well-formed PEM")
    }

    fn parse<'a>(der: &'a CertificateDer<'_>) -> X509Certificate<'a> {
        X509Certificate::from_der(der.as_ref()).expect("parsable certificate").1
    }

    fn ski(cert: &X509Certificate<'_>) -> Vec<u8> {
        cert.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .expect("SKI")
    }

    fn aki(cert: &X509Certificate<'_>) -> Vec<u8> {
        cert.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref().map(|id| id.0.to_vec()),
                _ => None,
            })
            .expect("AKI")
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("file exists").permissions().mode() & 0o777
    }

    fn client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in ders(ca_pem) {
            roots.add(cert).expect("usable trust anchor");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the defaults")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// A handshake over an in-memory pipe; the chain the server sent, or the client's error.
    async fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        sni: &str,
    ) -> Result<Vec<CertificateDer<'static>>, String> {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
        let connect = tokio_rustls::TlsConnector::from(client).connect(name, client_io);
        let accept = tokio_rustls::TlsAcceptor::from(server).accept(server_io);
        let (client_side, server_side) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(connect, accept) }).await.map_err(|_| "timed out")?;
        let stream = client_side.map_err(|e| e.to_string())?;
        server_side.map_err(|e| format!("server: {e}"))?;
        let (_, conn) = stream.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        Ok(conn.peer_certificates().unwrap_or_default().to_vec())
    }

    fn generation(authority: &Authority, id: u64) -> Arc<Generation> {
        authority.lock_state().gens.get(&id).cloned().expect("generation exists")
    }

    #[test]
    fn ca_is_a_name_constrained_short_lived_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let before = SystemTime::now();
        let authority = Authority::open(settings(tmp.path(), &["deb.debian.org", "pypi.org"], HOUR)).unwrap();
        assert_eq!(authority.current_generation(), 1);
        let certs = ders(&authority.ca_pem());
        assert_eq!(certs.len(), 2, "current and next are published");
        for (der, id) in certs.iter().zip(1..) {
            let ca = parse(der);
            let bc = ca.basic_constraints().unwrap().expect("basic constraints");
            assert!(bc.critical && bc.value.ca);
            assert_eq!(bc.value.path_len_constraint, Some(0));
            let ku = ca.key_usage().unwrap().expect("key usage").value;
            assert!(ku.key_cert_sign() && ku.crl_sign());
            let cn = ca.subject().iter_common_name().next().unwrap().as_str().unwrap().to_owned();
            assert!(cn.starts_with(&format!("ctproxy cache CA {id} ")), "{cn}");
            assert_eq!(ca.subject(), ca.issuer());
            assert!(!ski(&ca).is_empty());
            let serial = ca.raw_serial();
            assert_eq!(serial.len(), SERIAL_LEN);
            assert_eq!(serial[0] & 0x80, 0, "positive serial");

            let (nb, na) = (ca.validity().not_before.timestamp(), ca.validity().not_after.timestamp());
            assert_eq!(na - nb, 3 * 3600 + 300, "3 × rotate_every, plus the backdating");
            let created = before.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
            assert!((created - 300..=created - 300 + 60).contains(&nb), "backdated by 5 minutes");

            let nc = ca.name_constraints().unwrap().expect("name constraints");
            assert!(nc.critical);
            let permitted: Vec<_> = nc.value.permitted_subtrees.as_ref().unwrap().iter().map(|s| s.base.clone()).collect();
            assert_eq!(permitted, vec![GeneralName::DNSName("deb.debian.org"), GeneralName::DNSName("pypi.org")]);
            assert_eq!(nc.value.excluded_subtrees.as_ref().map(Vec::len), Some(2), "all IPv4 and IPv6 excluded");
        }
        assert_ne!(parse(&certs[0]).raw_serial(), parse(&certs[1]).raw_serial());
    }

    #[test]
    fn leaves_have_san_eku_aki_and_fit_in_the_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let authority = Authority::open(settings(tmp.path(), &["deb.debian.org", "pypi.org", "127.0.0.1"], HOUR)).unwrap();
        let debian = authority.leaf_for("deb.debian.org").unwrap();
        let pypi = authority.leaf_for("PyPI.org.").unwrap();
        assert!(Arc::ptr_eq(&pypi, &authority.leaf_for("pypi.org").unwrap()), "cached");
        let ca_der = generation(&authority, 1).der.clone();
        let ca = parse(&ca_der);

        for (leaf, name) in [(&debian, "deb.debian.org"), (&pypi, "pypi.org")] {
            assert_eq!(leaf.cert.len(), 2, "leaf and CA");
            assert_eq!(leaf.cert[1], ca_der);
            let cert = parse(&leaf.cert[0]);
            let san = cert.subject_alternative_name().unwrap().expect("SAN").value;
            assert_eq!(san.general_names, vec![GeneralName::DNSName(name)]);
            let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
            assert!(eku.server_auth && !eku.client_auth);
            let ku = cert.key_usage().unwrap().expect("KU").value;
            assert!(ku.digital_signature() && !ku.key_cert_sign());
            assert!(!cert.is_ca());
            assert_eq!(aki(&cert), ski(&ca), "AKI is the CA's SKI");
            assert_eq!(cert.issuer(), ca.subject());
            assert!(cert.validity().not_before >= ca.validity().not_before);
            assert!(cert.validity().not_after <= ca.validity().not_after);
        }
        assert_ne!(parse(&debian.cert[0]).raw_serial(), parse(&pypi.cert[0]).raw_serial());
        assert_eq!(parse(&debian.cert[0]).raw_serial().len(), SERIAL_LEN);

        let ip = authority.leaf_for("127.0.0.1").unwrap();
        let san = parse(&ip.cert[0]).subject_alternative_name().unwrap().unwrap().value.general_names.clone();
        assert_eq!(san, vec![GeneralName::IPAddress(&[127, 0, 0, 1])]);

        assert!(matches!(authority.leaf_for("example.com"), Err(CaError::NotAllowed(_))));
        assert!(matches!(authority.leaf_for("not a host"), Err(CaError::InvalidHost(_))));
    }

    #[tokio::test]
    async fn handshake_succeeds_for_allowed_hosts_only() {
        let tmp = tempfile::tempdir().unwrap();
        let authority = Authority::open(settings(tmp.path(), &["deb.debian.org", "pypi.org", "127.0.0.1"], HOUR)).unwrap();
        let client = client_config(&authority.ca_pem());
        let chain = handshake(authority.server_config(), client.clone(), "pypi.org").await.unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], generation(&authority, 1).der);
        let refused = handshake(authority.server_config(), client, "example.com").await.unwrap_err();
        assert!(refused.contains("alert"), "{refused}");
        // Clients send no SNI for an IP literal: refused even though the address is intercepted.
        let refused = handshake(authority.server_config(), client_config(&authority.ca_pem()), "127.0.0.1").await.unwrap_err();
        assert!(refused.contains("alert"), "{refused}");
    }

    #[tokio::test]
    async fn name_constraints_stop_a_leaf_for_another_host() {
        #[derive(Debug)]
        struct Fixed(Arc<CertifiedKey>);
        impl ResolvesServerCert for Fixed {
            fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
                Some(self.0.clone())
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let authority = Authority::open(settings(tmp.path(), &["pypi.org"], HOUR)).unwrap();
        let client = client_config(&authority.ca_pem());
        let server_for = |leaf: Leaf| {
            let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(Fixed(leaf.certified)));
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        };
        let current = generation(&authority, 1);
        // The control: a leaf for a permitted name, minted the same way, is accepted.
        let allowed = current.mint("pypi.org", SystemTime::now()).unwrap();
        handshake(server_for(allowed), client.clone(), "pypi.org").await.unwrap();
        // Even with the CA key, a leaf for another name does not verify.
        let evil = current.mint("example.com", SystemTime::now()).unwrap();
        let err = handshake(server_for(evil), client, "example.com").await.unwrap_err();
        assert!(err.contains("NameConstraintViolation"), "{err}");
    }

    #[tokio::test]
    async fn trust_taken_before_a_rotation_verifies_leaves_after_it() {
        let tmp = tempfile::tempdir().unwrap();
        let authority = Authority::open(settings(tmp.path(), &["pypi.org"], HOUR)).unwrap();
        let old_trust = client_config(&authority.ca_pem());
        let before = authority.leaf_for("pypi.org").unwrap();
        authority.rotate_now().unwrap();
        assert_eq!(authority.current_generation(), 2);
        let after = authority.leaf_for("pypi.org").unwrap();
        assert!(!Arc::ptr_eq(&before, &after), "a new leaf from the new current generation");
        assert!(authority.lock_leaves().keys().all(|(generation, _)| *generation == 2), "old leaves dropped");
        let chain = handshake(authority.server_config(), old_trust, "pypi.org").await.unwrap();
        assert_eq!(chain[1], generation(&authority, 2).der);
        assert_eq!(ders(&authority.ca_pem()).len(), 3, "previous, current, next");
    }

    #[test]
    fn generations_are_dropped_when_expired_not_before() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = settings(tmp.path(), &["pypi.org"], HOUR);
        let authority = Authority::open(settings.clone()).unwrap();
        let t0 = generation(&authority, 2).created;
        let second = Duration::from_secs(1);
        let gen_files = |id: u64| [Generation::key_path(&settings.dir, id), Generation::cert_path(&settings.dir, id)];

        assert!(!authority.rotate_if_due(t0 + HOUR - second).unwrap());
        assert!(authority.rotate_if_due(t0 + HOUR).unwrap());
        assert_eq!(authority.current_generation(), 2);
        assert!(authority.rotate_if_due(t0 + 2 * HOUR).unwrap());
        assert_eq!(authority.current_generation(), 3);
        // Two rotations later, generation 1 is still published: it has not expired.
        assert!(!authority.rotate_if_due(t0 + 3 * HOUR - second).unwrap());
        assert!(authority.lock_state().gens.contains_key(&1));
        assert!(gen_files(1).iter().all(|p| p.exists()));

        // Generations 1 and 2 (created together at start) expire at t0 + 3h; 4 becomes current.
        assert!(authority.rotate_if_due(t0 + 3 * HOUR).unwrap());
        assert_eq!(authority.current_generation(), 4);
        assert_eq!(authority.lock_state().gens.keys().copied().collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(gen_files(1).iter().chain(&gen_files(2)).all(|p| !p.exists()));
        let published = fs::read_to_string(settings.trust_dir.join("ca.pem")).unwrap();
        let expected: String = (3..=5).map(|id| generation(&authority, id).pem.clone()).collect();
        assert_eq!(published, expected);
    }

    #[tokio::test]
    async fn restart_keeps_the_generations() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = settings(tmp.path(), &["pypi.org"], HOUR);
        let first = Authority::open(settings.clone()).unwrap();
        first.rotate_now().unwrap();
        let (current, pem) = (first.current_generation(), first.ca_pem());
        let trust = client_config(&pem);
        drop(first);

        let second = Authority::open(settings.clone()).unwrap();
        assert_eq!(second.current_generation(), current);
        assert_eq!(second.ca_pem(), pem);
        let leaf = second.leaf_for("pypi.org").unwrap();
        // The issuer rebuilt from the files signs with the published SKI as AKI.
        assert_eq!(aki(&parse(&leaf.cert[0])), ski(&parse(&leaf.cert[1])));
        handshake(second.server_config(), trust, "pypi.org").await.unwrap();

        assert_eq!(mode(&settings.dir), 0o700);
        for id in 1..=3 {
            assert_eq!(mode(&Generation::key_path(&settings.dir, id)), 0o600);
            assert_eq!(mode(&Generation::cert_path(&settings.dir, id)), 0o600);
        }
        assert_eq!(mode(&settings.trust_dir), 0o755);
        for name in ["ca.pem", "ctproxy-ca.crt", "bundle.pem"] {
            assert_eq!(mode(&settings.trust_dir.join(name)), 0o644);
        }
    }

    #[test]
    fn unreadable_generations_are_dropped_and_ids_not_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let settings = settings(tmp.path(), &["pypi.org"], HOUR);
        drop(Authority::open(settings.clone()).unwrap());
        fs::write(Generation::cert_path(&settings.dir, 2), "garbage").unwrap();
        let authority = Authority::open(settings.clone()).unwrap();
        assert_eq!(authority.lock_state().gens.keys().copied().collect::<Vec<_>>(), vec![1, 3, 4]);
        assert_eq!(authority.current_generation(), 3);
        assert!(!Generation::key_path(&settings.dir, 2).exists());
        authority.leaf_for("pypi.org").unwrap();
    }

    #[test]
    fn trust_files_are_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let authority = Authority::open(settings(tmp.path(), &["pypi.org"], HOUR)).unwrap();
        let ours = authority.ca_pem();
        let read = |name: &str| fs::read_to_string(authority.trust_dir().join(name)).unwrap();
        assert_eq!(read("ca.pem"), ours);
        assert_eq!(read("ctproxy-ca.crt"), ours);
        let bundle = read("bundle.pem");
        assert!(bundle.ends_with(&ours));
        let system = rustls_native_certs::load_native_certs().certs.len();
        assert_eq!(ders(&bundle).len(), system + 2, "system roots then ours");
        if system > 0 {
            assert!(ders(&bundle).len() >= 3);
        }
        assert!(bundle.lines().all(|l| l.len() <= 64));
        let leftovers =
            fs::read_dir(authority.trust_dir()).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"));
        assert_eq!(leftovers.count(), 0);
    }

    #[tokio::test]
    async fn set_hosts_creates_a_fresh_pair_only_for_uncovered_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        let authority = Authority::open(settings(tmp.path(), &["deb.debian.org", "pypi.org"], HOUR)).unwrap();
        authority.leaf_for("pypi.org").unwrap();

        authority.set_hosts(vec!["deb.debian.org".into(), "bad host".into()]);
        assert_eq!(authority.current_generation(), 1, "fewer hosts: no new generation");
        assert!(matches!(authority.leaf_for("pypi.org"), Err(CaError::NotAllowed(_))));
        assert!(authority.lock_leaves().is_empty(), "leaves of removed hosts dropped");

        authority.set_hosts(vec!["deb.debian.org".into(), "registry.npmjs.org".into()]);
        assert_eq!(authority.current_generation(), 3, "a fresh pair");
        assert_eq!(ders(&authority.ca_pem()).len(), 4, "older generations stay published until they expire");
        let client = client_config(&authority.ca_pem());
        handshake(authority.server_config(), client, "registry.npmjs.org").await.unwrap();
    }
}
