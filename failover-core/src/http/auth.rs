//! Authentication and roles for the admin routes.
//!
//! Callers prove who they are with a **bearer token** (`Authorization: Bearer …`) or a
//! **TLS client certificate** (served by [`serve_tls`](super::tls::serve_tls)). Both
//! map to an [`Identity`]: the actor written to the audit trail and a [`Role`]:
//!
//! | role | may |
//! |---|---|
//! | `viewer` | read state, modes, leases and history |
//! | `operator` | also tighten: engage the kill switch, raise a mode, `CancelAll`, halt withdrawals |
//! | `supervisor` | also relax: disengage, lower a mode, lift a halt (a ticket is still required) |
//!
//! Principals come from a file (or a fixed list), one per line:
//!
//! ```text
//! # role       actor          credential
//! viewer       ops:carol      3f7a…(64 hex: SHA-256 of the bearer token)
//! operator     ops:alice      sha256:9c1e…
//! supervisor   ops:bob        cn:bob.ops.example      # mTLS: certificate subject CN
//! ```
//!
//! Only the SHA-256 of a token is stored; a presented token is hashed and compared in
//! constant time. The file is checked on every request (one `stat`) and re-read when
//! its modification time or size changes, and at least once a second, so adding,
//! rotating or removing a token needs no restart. An unreadable file authenticates
//! nobody (fail closed). Refusals answer 401 (`unauthenticated`) or 403
//! (`forbidden`) in the usual JSON error shape, are counted in
//! `admin_auth_refusals_total{reason}` and `auth_fail_total{reason}` (reasons
//! [`AUTH_FAIL_REASONS`]) and logged without the secret.
//!
//! Failed authentication is throttled **per client address**: after 20 failures a
//! minute (a burst of 20, then one more every 3 s; [`Authenticator::with_failure_limit`]),
//! every request of the protected routes from that address is answered 429
//! `auth_throttled` with `Retry-After`, also one with a valid credential, and without
//! checking it: were a valid token still accepted, a throttled guesser would learn
//! from 200 against 429 which guess was right, and the throttle would not slow the
//! guessing at all. Other addresses are not affected. The address is the peer of
//! the connection (axum's `ConnectInfo<SocketAddr>`, set by
//! [`serve`](super::serve), [`serve_tls`](super::tls::serve_tls) and by
//! `into_make_service_with_connect_info`); IPv6 clients are keyed by their /64. A
//! request without a known address is throttled under one shared key, never not at
//! all. Throttled requests are counted in `auth_throttled_total`.

use super::ApiError;
use crate::handle::lock;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use subtle::ConstantTimeEq;

/// The env variable naming a principals file (`Authenticator::from_env`).
pub const TOKENS_FILE_ENV: &str = "ADMIN_TOKENS_FILE";
/// The env variable holding principals inline, entries separated by `;` or newlines.
pub const TOKENS_ENV: &str = "ADMIN_TOKENS";

/// What a caller may do; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads and tightens safety.
    Operator,
    /// Reads, tightens and relaxes safety.
    Supervisor,
}

impl Role {
    /// `viewer`, `operator` or `supervisor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Supervisor => "supervisor",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "supervisor" => Some(Self::Supervisor),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the caller proved its identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// `Authorization: Bearer …`.
    Bearer,
    /// A TLS client certificate.
    ClientCertificate,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// The actor written to the audit trail, e.g. `ops:alice`.
    pub actor: String,
    /// What it may do.
    pub role: Role,
    /// How it authenticated.
    pub method: Method,
}

/// The verified client certificate of a TLS connection, inserted into each request's
/// extensions by [`serve_tls`](super::tls::serve_tls).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The subject's common name.
    pub common_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Credential {
    TokenSha256([u8; 32]),
    CommonName(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Principal {
    role: Role,
    actor: String,
    credential: Credential,
}

/// SHA-256 of a token, lower-case hex: what a principals file stores.
pub fn token_sha256_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses principals; a bad line is skipped with an error log naming its number
/// (never its content, which may hold a secret).
fn parse_principals(text: &str, origin: &str) -> Vec<Principal> {
    let mut out = Vec::new();
    for (n, raw) in text.split(['\n', ';']).enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [role, actor, credential] => Role::parse(role).and_then(|role| {
                let credential = if let Some(cn) = credential.strip_prefix("cn:") {
                    (!cn.is_empty()).then(|| Credential::CommonName(cn.to_owned()))
                } else {
                    let h = credential.strip_prefix("sha256:").unwrap_or(credential);
                    parse_hex32(&h.to_ascii_lowercase()).map(Credential::TokenSha256)
                }?;
                Some(Principal {
                    role,
                    actor: (*actor).to_owned(),
                    credential,
                })
            }),
            _ => None,
        };
        match parsed {
            Some(p) => out.push(p),
            None => tracing::error!(
                origin,
                entry = n + 1,
                "admin principals: entry skipped; expected `ROLE ACTOR SHA256HEX` or `ROLE ACTOR cn:COMMON_NAME` with ROLE viewer|operator|supervisor"
            ),
        }
    }
    out
}

#[derive(Debug)]
enum Source {
    File(PathBuf),
    Fixed,
}

#[derive(Debug)]
struct Cache {
    principals: Vec<Principal>,
    stamp: Option<(SystemTime, u64)>,
    read_at: Option<Instant>,
}

/// Re-read at least this often even when the file's stamp did not change (a rewrite
/// within the file system's timestamp granularity keeps size and mtime).
const REREAD_EVERY: Duration = Duration::from_secs(1);

/// Failed authentications a client address may have per minute by default.
pub const DEFAULT_FAILURES_PER_MINUTE: u32 = 20;
/// How many failed authentications an address may have at once by default before
/// the per-minute rate applies.
pub const DEFAULT_FAILURE_BURST: u32 = 20;
/// At most this many client addresses are tracked by the throttle; past it (a flood
/// from very many addresses) further addresses share one key, so the memory stays
/// bounded and the flood is still throttled.
const MAX_TRACKED_ADDRESSES: usize = 65_536;
/// Addresses whose failures are forgotten (their rate is back to full) are dropped
/// from the throttle's memory at least this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The key the throttle counts failures under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(std::net::Ipv4Addr),
    /// The /64 network of an IPv6 address (one host usually has all of it).
    V6Net(u64),
    /// No client address is known.
    Unknown,
    /// Too many addresses are tracked already.
    Overflow,
}

impl ClientKey {
    fn of(addr: Option<IpAddr>) -> Self {
        match addr.map(|a| a.to_canonical()) {
            Some(IpAddr::V4(v4)) => Self::V4(v4),
            Some(IpAddr::V6(v6)) => Self::V6Net((v6.to_bits() >> 64) as u64),
            None => Self::Unknown,
        }
    }
}

type KeyedLimiter = governor::RateLimiter<
    ClientKey,
    governor::state::keyed::DefaultKeyedStateStore<ClientKey>,
    governor::clock::DefaultClock,
>;

/// Failed authentications per client address: governor's keyed GCRA counts them; an
/// address whose failure was refused by the rate is refused everything until the
/// limiter would accept its next failure.
struct Throttle {
    per_minute: u32,
    burst: u32,
    limiter: KeyedLimiter,
    blocked: Mutex<HashMap<ClientKey, Instant>>,
    swept_at: Mutex<Instant>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("per_minute", &self.per_minute)
            .field("burst", &self.burst)
            .field("tracked", &self.limiter.len())
            .finish()
    }
}

impl Throttle {
    fn new(per_minute: u32, burst: u32) -> Self {
        let per_minute = per_minute.max(1);
        let burst = burst.max(1);
        let quota = governor::Quota::per_minute(NonZeroU32::MIN.saturating_add(per_minute - 1))
            .allow_burst(NonZeroU32::MIN.saturating_add(burst - 1));
        Self {
            per_minute,
            burst,
            limiter: governor::RateLimiter::keyed(quota),
            blocked: Mutex::new(HashMap::new()),
            swept_at: Mutex::new(Instant::now()),
        }
    }

    /// How long `key` is still refused, if it is. While the tracked addresses are at
    /// their bound, the shared overflow key's refusal applies to every address.
    fn blocked_for(&self, key: ClientKey) -> Option<Duration> {
        let mut blocked = lock(&self.blocked);
        let mut left_for = |key: ClientKey| {
            let until = *blocked.get(&key)?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                blocked.remove(&key);
                return None;
            }
            Some(left)
        };
        left_for(key).or_else(|| {
            if self.limiter.len() >= MAX_TRACKED_ADDRESSES {
                left_for(ClientKey::Overflow)
            } else {
                None
            }
        })
    }

    /// Records one failed authentication of `key`; when it exceeds the rate, `key` is
    /// refused from now on for the returned time.
    fn failed(&self, key: ClientKey) -> Option<Duration> {
        self.sweep_if_due();
        let key = if self.limiter.len() >= MAX_TRACKED_ADDRESSES {
            ClientKey::Overflow
        } else {
            key
        };
        use governor::clock::Clock;
        let not_until = self.limiter.check_key(&key).err()?;
        let wait = not_until.wait_time_from(self.limiter.clock().now());
        lock(&self.blocked).insert(key, Instant::now() + wait);
        Some(wait)
    }

    /// Forgets addresses whose failures no longer matter: once a minute, or once a
    /// second while the tracked addresses are at their bound.
    fn sweep_if_due(&self) {
        let mut swept_at = lock(&self.swept_at);
        let full = self.limiter.len() >= MAX_TRACKED_ADDRESSES;
        let every = if full {
            Duration::from_secs(1)
        } else {
            SWEEP_EVERY
        };
        if swept_at.elapsed() < every {
            return;
        }
        *swept_at = Instant::now();
        drop(swept_at);
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
        let now = Instant::now();
        let mut blocked = lock(&self.blocked);
        blocked.retain(|_, until| *until > now);
        blocked.shrink_to_fit();
    }
}

/// Who may call the admin routes. Cheap to clone; clones share the principals and
/// the failed-authentication throttle.
#[derive(Debug, Clone)]
pub struct Authenticator {
    source: Arc<Source>,
    cache: Arc<Mutex<Cache>>,
    throttle: Arc<Throttle>,
}

impl Authenticator {
    /// Principals from a file, re-read when it changes (no restart needed).
    pub fn from_file(path: impl Into<PathBuf>) -> Self {
        Self {
            source: Arc::new(Source::File(path.into())),
            cache: Arc::new(Mutex::new(Cache {
                principals: Vec::new(),
                stamp: None,
                read_at: None,
            })),
            throttle: default_throttle(),
        }
    }

    /// Principals from text in the file format (entries separated by newlines or `;`).
    pub fn from_text(text: &str) -> Self {
        Self {
            source: Arc::new(Source::Fixed),
            cache: Arc::new(Mutex::new(Cache {
                principals: parse_principals(text, "inline"),
                stamp: None,
                read_at: None,
            })),
            throttle: default_throttle(),
        }
    }

    /// Throttles failed authentication per client address at `per_minute` failures a
    /// minute after a burst of `burst` (both at least 1; default
    /// [`DEFAULT_FAILURES_PER_MINUTE`], [`DEFAULT_FAILURE_BURST`]). Past it, every
    /// request from that address is answered 429 `auth_throttled` with `Retry-After`
    /// until its next failure would be accepted.
    #[must_use]
    pub fn with_failure_limit(mut self, per_minute: u32, burst: u32) -> Self {
        self.throttle = Arc::new(Throttle::new(per_minute, burst));
        self
    }

    /// The failed-authentication limit: (per minute, burst).
    pub fn failure_limit(&self) -> (u32, u32) {
        (self.throttle.per_minute, self.throttle.burst)
    }

    /// From `ADMIN_TOKENS_FILE` (a file, rotated without restart) or `ADMIN_TOKENS`
    /// (inline, read once); `None` when neither is set.
    pub fn from_env() -> Option<Self> {
        if let Some(path) = std::env::var_os(TOKENS_FILE_ENV).filter(|p| !p.is_empty()) {
            return Some(Self::from_file(path));
        }
        std::env::var(TOKENS_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| Self::from_text(&t))
    }

    /// A fresh random token with `role` for `actor` (a development setup on loopback):
    /// the authenticator and the token to print once.
    pub fn development(role: Role, actor: &str) -> (Self, String) {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let line = format!("{} {} {}", role, actor, token_sha256_hex(&token));
        (Self::from_text(&line), token)
    }

    /// `router` with every route authenticated by this, failed authentication
    /// throttled per client address and request bodies bounded to
    /// [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES) (routes merged later stay open,
    /// which is how probes and `/metrics` are mounted).
    pub fn protect<S: Clone + Send + Sync + 'static>(
        self,
        router: axum::Router<S>,
    ) -> axum::Router<S> {
        router
            .layer(axum::middleware::from_fn_with_state(self, authenticate))
            .layer(axum::extract::DefaultBodyLimit::max(super::MAX_BODY_BYTES))
    }

    /// How many principals are configured now.
    pub fn principals(&self) -> usize {
        self.refresh();
        lock(&self.cache).principals.len()
    }

    fn refresh(&self) {
        let Source::File(path) = &*self.source else {
            return;
        };
        let stamp = stamp_of(path);
        let mut cache = lock(&self.cache);
        let due = cache.read_at.is_none_or(|t| t.elapsed() >= REREAD_EVERY);
        if stamp.is_some() && stamp == cache.stamp && !due {
            return;
        }
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let principals = parse_principals(&text, &path.display().to_string());
                if principals != cache.principals {
                    tracing::info!(file = %path.display(), principals = principals.len(), "admin principals loaded");
                }
                cache.principals = principals;
            }
            Err(e) => {
                if !cache.principals.is_empty() || cache.read_at.is_none() {
                    tracing::error!(file = %path.display(), error = %e, "admin principals file unreadable: nobody is authenticated until it is readable");
                }
                cache.principals.clear();
            }
        }
        cache.stamp = stamp;
        cache.read_at = Some(Instant::now());
    }

    /// The identity of a bearer token, if any principal holds it.
    pub fn bearer(&self, token: &str) -> Option<Identity> {
        self.refresh();
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cache = lock(&self.cache);
        // Compare against every entry so timing says nothing about which matched.
        let mut found: Option<&Principal> = None;
        for p in &cache.principals {
            if let Credential::TokenSha256(stored) = &p.credential {
                if bool::from(stored.ct_eq(&presented)) && found.is_none() {
                    found = Some(p);
                }
            }
        }
        found.map(|p| Identity {
            actor: p.actor.clone(),
            role: p.role,
            method: Method::Bearer,
        })
    }

    /// The identity of a verified client certificate's common name, if listed.
    pub fn certificate(&self, common_name: &str) -> Option<Identity> {
        self.refresh();
        lock(&self.cache)
            .principals
            .iter()
            .find(|p| matches!(&p.credential, Credential::CommonName(cn) if cn == common_name))
            .map(|p| Identity {
                actor: p.actor.clone(),
                role: p.role,
                method: Method::ClientCertificate,
            })
    }
}

fn default_throttle() -> Arc<Throttle> {
    Arc::new(Throttle::new(
        DEFAULT_FAILURES_PER_MINUTE,
        DEFAULT_FAILURE_BURST,
    ))
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Why a request carries no identity (kept in the request for [`Caller`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unauthenticated {
    Missing,
    Malformed,
    UnknownToken,
    UnknownCertificate,
}

impl Unauthenticated {
    fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing_credentials",
            Self::Malformed => "malformed_authorization",
            Self::UnknownToken => "unknown_token",
            Self::UnknownCertificate => "unknown_certificate",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Missing => "authentication required: send `Authorization: Bearer <token>` or a client certificate; ask an administrator for a token in the admin principals file",
            Self::Malformed => "authentication failed: the Authorization header must be `Bearer <token>`",
            Self::UnknownToken => "authentication failed: the bearer token is unknown, rotated or revoked; ask an administrator for a current one",
            Self::UnknownCertificate => "authentication failed: the client certificate's subject is not listed in the admin principals file",
        }
    }

    /// The `reason` label of `auth_fail_total`.
    fn fail_reason(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownToken => "unknown_token",
            Self::UnknownCertificate => "unknown_certificate",
        }
    }
}

/// Every reason label of `auth_fail_total`: `missing` (no credential), `malformed`
/// (an `Authorization` header that is not `Bearer <token>`), `unknown_token`,
/// `unknown_certificate` (a verified client certificate whose subject is not
/// listed) — all answered 401 and counted by the throttle — and `forbidden` (a known
/// caller lacking the role, answered 403, not throttled).
pub const AUTH_FAIL_REASONS: &[&str] = &[
    "missing",
    "malformed",
    "unknown_token",
    "unknown_certificate",
    "forbidden",
];

/// Every reason label of `admin_auth_refusals_total`.
pub const REFUSAL_REASONS: &[&str] = &[
    "missing_credentials",
    "malformed_authorization",
    "unknown_token",
    "unknown_certificate",
    "forbidden",
];

/// The middleware that authenticates each request (bearer token first, then the TLS
/// client certificate) and leaves the outcome for [`Caller`]. It refuses nothing by
/// itself, so open routes stay open; every route that extracts [`Caller`] requires an
/// identity. It refuses, with 429 `auth_throttled`, every request from a client
/// address whose failed authentications exceeded the limit (still counting a failed
/// credential in `auth_fail_total`), and counts each answer 401 against its address.
pub async fn authenticate(
    State(auth): State<Authenticator>,
    mut req: Request,
    next: Next,
) -> Response {
    let addr = req
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let key = ClientKey::of(addr);
    let outcome = match req.headers().get(axum::http::header::AUTHORIZATION) {
        Some(value) => match value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            Some(token) => auth.bearer(token).ok_or(Unauthenticated::UnknownToken),
            None => Err(Unauthenticated::Malformed),
        },
        None => match req.extensions().get::<PeerCertificate>() {
            Some(peer) => auth
                .certificate(&peer.common_name)
                .ok_or(Unauthenticated::UnknownCertificate),
            None => Err(Unauthenticated::Missing),
        },
    };
    let failure = outcome.as_ref().err().copied();
    if let Some(left) = auth.throttle.blocked_for(key) {
        // Refused whatever the credential, so the answer tells a guesser nothing; a
        // failed credential is still counted, so dashboards see the whole attack.
        if let Some(why) = failure {
            metrics::counter!("auth_fail_total", "reason" => why.fail_reason()).increment(1);
        }
        metrics::counter!("auth_throttled_total").increment(1);
        let route = format!("{} {}", req.method(), req.uri().path());
        // Debug only: a flood must not flood the logs too (the trip is logged at warn).
        tracing::debug!(client = ?addr, %route, retry_after = ?left, "admin request refused: too many failed authentications from this address");
        return throttled(left);
    }
    match outcome {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
        }
        Err(why) => {
            req.extensions_mut().insert(why);
        }
    }
    let response = next.run(req).await;
    // Counted by the answer, not the credential: a route that refused nothing did not
    // fail anybody's authentication.
    match response.extensions().get::<super::ErrorCode>().map(|c| c.0) {
        Some("unauthenticated") => {
            let why = failure.unwrap_or(Unauthenticated::Missing);
            metrics::counter!("auth_fail_total", "reason" => why.fail_reason()).increment(1);
            if let Some(wait) = auth.throttle.failed(key) {
                // This failure is the one over the limit: it is answered 429 already.
                tracing::warn!(client = ?addr, retry_after = ?wait, "admin authentication failures over the limit: this address is refused until then");
                metrics::counter!("auth_throttled_total").increment(1);
                return throttled(wait);
            }
        }
        Some("forbidden") => {
            metrics::counter!("auth_fail_total", "reason" => "forbidden").increment(1);
        }
        _ => {}
    }
    response
}

/// 429 `auth_throttled` with `Retry-After`.
fn throttled(left: Duration) -> Response {
    let seconds = super::retry_after_seconds(left);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "auth_throttled",
        format!(
            "refused, nothing changed: too many failed authentications from this address; retry in {seconds} s with a valid credential (ask an administrator for a current token)"
        ),
    )
    .with_retry_after(left)
    .into_response()
}

/// The authenticated caller of a route: extracting it refuses an unauthenticated
/// request with 401 (also when no authentication layer is installed: fail closed).
#[derive(Debug, Clone)]
pub struct Caller {
    identity: Identity,
    route: String,
}

impl Caller {
    /// The identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The actor for the audit trail.
    pub fn actor(&self) -> &str {
        &self.identity.actor
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.identity.role
    }

    /// Refuses with 403 unless the caller has at least `role`; `what` names the action
    /// for the message, e.g. "disengage the kill switch".
    pub fn require(&self, role: Role, what: &str) -> Result<(), ApiError> {
        if self.identity.role >= role {
            return Ok(());
        }
        metrics::counter!("admin_auth_refusals_total", "reason" => "forbidden").increment(1);
        tracing::warn!(actor = %self.identity.actor, role = %self.identity.role, needed = %role, route = %self.route, "admin request forbidden");
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "refused, nothing changed: {} has the {} role; to {what} the {role} role is needed",
                self.identity.actor, self.identity.role
            ),
        ))
    }

    /// An audit context with the caller as actor and the caller's authority: a
    /// supervisor's commands may relax, everyone else's only tighten (decided by
    /// the store inside the write, against the state it locks).
    pub fn audit(
        &self,
        reason: &str,
        ticket: Option<&str>,
        request_id: Option<uuid::Uuid>,
    ) -> crate::Audit {
        let authority = match self.identity.role {
            Role::Supervisor => crate::Authority::Supervisor,
            Role::Operator | Role::Viewer => crate::Authority::Operator,
        };
        let mut audit =
            crate::Audit::new(self.identity.actor.clone(), reason).with_authority(authority);
        if let Some(t) = ticket {
            audit = audit.with_ticket(t);
        }
        if let Some(id) = request_id {
            audit = audit.with_request_id(id);
        }
        audit
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let route = format!("{} {}", parts.method, parts.uri.path());
        if let Some(identity) = parts.extensions.get::<Identity>() {
            return Ok(Self {
                identity: identity.clone(),
                route,
            });
        }
        let why = parts
            .extensions
            .get::<Unauthenticated>()
            .copied()
            .unwrap_or(Unauthenticated::Missing);
        metrics::counter!("admin_auth_refusals_total", "reason" => why.as_str()).increment(1);
        tracing::warn!(reason = why.as_str(), %route, "admin request unauthenticated");
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            why.message(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_tokens_and_common_names_and_skip_bad_lines() {
        let hash = token_sha256_hex("s3cret");
        let auth = Authenticator::from_text(&format!(
            "# comment\nviewer ops:carol {hash}\nsupervisor ops:bob cn:bob.ops\nroot x y\noperator ops:alice sha256:{}",
            token_sha256_hex("other")
        ));
        assert_eq!(auth.principals(), 3);
        let id = auth.bearer("s3cret").unwrap();
        assert_eq!((id.actor.as_str(), id.role), ("ops:carol", Role::Viewer));
        assert_eq!(auth.bearer("other").unwrap().role, Role::Operator);
        assert!(auth.bearer("s3cret ").is_none());
        assert_eq!(auth.certificate("bob.ops").unwrap().role, Role::Supervisor);
        assert!(auth.certificate("mallory").is_none());
    }

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Supervisor);
    }

    #[test]
    fn file_changes_apply_without_restart_and_a_missing_file_fails_closed() {
        let dir = tempdir();
        let path = dir.join("tokens");
        std::fs::write(&path, format!("operator a {}", token_sha256_hex("t1"))).unwrap();
        let auth = Authenticator::from_file(&path);
        assert!(auth.bearer("t1").is_some());
        std::fs::write(&path, format!("operator a {}\n", token_sha256_hex("t2"))).unwrap();
        assert!(auth.bearer("t1").is_none());
        assert!(auth.bearer("t2").is_some());
        std::fs::remove_file(&path).unwrap();
        assert!(auth.bearer("t2").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failures_beyond_the_burst_refuse_that_address_only() {
        let throttle = Throttle::new(60, 3);
        let a = ClientKey::of(Some(IpAddr::from([10, 0, 0, 1])));
        let b = ClientKey::of(Some(IpAddr::from([10, 0, 0, 2])));
        for _ in 0..3 {
            assert_eq!(throttle.failed(a), None, "within the burst");
            assert_eq!(throttle.blocked_for(a), None);
        }
        let wait = throttle
            .failed(a)
            .expect("the 4th failure is over the limit");
        assert!(
            wait <= Duration::from_secs(1),
            "one failure a second: {wait:?}"
        );
        assert!(throttle.blocked_for(a).is_some());
        assert_eq!(
            throttle.blocked_for(b),
            None,
            "another address is not affected"
        );
        assert_eq!(throttle.blocked_for(ClientKey::Unknown), None);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_ipv4_as_ipv4() {
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_host: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ClientKey::of(Some(one)), ClientKey::of(Some(other_host)));
        assert_ne!(ClientKey::of(Some(one)), ClientKey::of(Some(other_net)));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            ClientKey::of(Some(mapped)),
            ClientKey::of(Some(IpAddr::from([127, 0, 0, 1])))
        );
        assert_eq!(ClientKey::of(None), ClientKey::Unknown);
    }

    #[test]
    fn the_tracked_addresses_are_bounded_and_a_flood_past_the_bound_is_still_throttled() {
        let throttle = Throttle::new(1, 1);
        let mut n: u32 = 0;
        while throttle.limiter.len() < MAX_TRACKED_ADDRESSES {
            n += 1;
            let key = ClientKey::of(Some(IpAddr::from(std::net::Ipv4Addr::from(n))));
            assert_eq!(throttle.failed(key), None, "a first failure is allowed");
        }
        // Past the bound, new addresses share one key: one failure, then refused.
        let late = |i: u32| ClientKey::of(Some(IpAddr::from([192, 0, 2, i as u8])));
        assert_eq!(throttle.failed(late(1)), None);
        assert!(throttle.failed(late(2)).is_some());
        assert!(throttle.blocked_for(late(3)).is_some());
        assert!(throttle.limiter.len() <= MAX_TRACKED_ADDRESSES + 1);
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("auth-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
