//! TOML configuration → a validated, typed `Config`.
//!
//! Every key has a default that works on one machine (loopback), so `tonewall run` without a
//! file behaves like `config/tonewall.toml`. Unknown keys are errors (`deny_unknown_fields`), and
//! validation names the key and says what is wrong. Never holds key material itself: the vault
//! master key is named (file or environment variable), read by the shell.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

use crate::dsp::mask::MaskKind;
use crate::rtp::srtp::SrtpPolicy;
use crate::sip::b2bua::{B2buaConfig, B2buaError, LoopRoute, Route};
use crate::sip::transaction::TimerConfig;

// The SIP layer owns these; the config file names them.
pub use crate::sip::Transport;
pub use crate::sip::b2bua::{LocatorSource, OnFailure, RouteMode};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub media: MediaConfig,
    #[serde(rename = "route")]
    pub routes: Vec<RouteConfig>,
    pub api: ApiConfig,
    pub vault: VaultConfig,
    pub payment: PaymentConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sip: SipConfig::default(),
            media: MediaConfig::default(),
            routes: vec![RouteConfig::default()],
            api: ApiConfig::default(),
            vault: VaultConfig::default(),
            payment: PaymentConfig::default(),
            log: LogConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// Address SIP listens on over UDP and TCP.
    pub listen: SocketAddr,
    /// "udp", "tcp", "tls": the transports SIP listens on.
    pub transports: Vec<Transport>,
    /// Where SIP over TLS listens; default: `listen` with its port + 1 (5061 beside 5060).
    pub tls_listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) that SIP over TLS presents; needed with "tls".
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, a TLS client must present a certificate signed by one of
    /// these CAs (mutual TLS), or the handshake fails.
    pub tls_client_ca: Option<PathBuf>,
    /// Host put in Via, Contact and Record-Route; defaults to the listen address.
    pub advertised_host: Option<String>,
    /// Calls in progress beyond which new INVITEs get 503 with Retry-After.
    pub max_calls: usize,
    /// Seconds suggested in Retry-After when over the call limit or draining.
    pub retry_after_s: u32,
    /// Draining (SIGTERM, `POST /v1/admin/drain`): how long calls in progress may go on
    /// before the ones still up are hung up.
    pub drain_s: u64,
    pub max_message_size: usize,
    /// Headers carried from the A-leg INVITE to the B-leg (besides From/To users and P-Asserted-Identity).
    pub carry_headers: Vec<String>,
    pub user_agent: String,
    /// An accepted TCP connection that has not sent a whole message (or a CRLF keep-alive)
    /// this many seconds after it opened is closed.
    pub tcp_first_message_s: u64,
    /// After that, a TCP connection with no whole message or keep-alive for this long is closed.
    pub tcp_idle_s: u64,
    /// Accepted SIP TCP connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Accepted SIP TCP connections from one address (IPv6: one /64) open at once.
    pub max_connections_per_source: usize,
}

impl SipConfig {
    /// Where SIP over TLS listens (validation has made sure the default port exists).
    pub fn tls_listen_addr(&self) -> SocketAddr {
        self.tls_listen.unwrap_or_else(|| {
            let mut a = self.listen;
            a.set_port(a.port().saturating_add(1));
            a
        })
    }

    /// The TLS certificate and key files when SIP listens over TLS (validation has made sure
    /// they are set together).
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        if !self.transports.contains(&Transport::Tls) {
            return None;
        }
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            transports: vec![Transport::Udp, Transport::Tcp],
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            advertised_host: None,
            max_calls: 1000,
            retry_after_s: 5,
            drain_s: 300,
            max_message_size: 65_535,
            carry_headers: vec!["X-Agent".into(), "X-Locator".into(), "X-Call-Ref".into()],
            user_agent: concat!("tonewall/", env!("CARGO_PKG_VERSION")).into(),
            tcp_first_message_s: 30,
            tcp_idle_s: 7_200,
            max_connections: 2048,
            max_connections_per_source: 1024,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Address RTP sockets bind to and that SDP advertises.
    pub address: IpAddr,
    /// Even first port of the RTP range; RTCP uses port + 1.
    pub port_min: u16,
    pub port_max: u16,
    /// Both legs are hung up after this long without media from either side.
    pub inactivity_timeout_s: u64,
    /// Delay line (look-ahead for masking) in milliseconds.
    pub delay_ms: f64,
    pub mask: MaskName,
    /// Where per-call stereo recordings are written (none when unset).
    pub record_dir: Option<PathBuf>,
    /// Media threads; each call's relay runs on one of them for its whole life. 0: one per CPU.
    pub threads: usize,
    /// How long a media thread rests after a wake-up that brought packets, in µs, so that the
    /// next wake-up brings more at once. 0: none. Adds at most this much delay and jitter.
    pub batch_us: u64,
}

impl MediaConfig {
    /// Media threads to start: `threads`, or one per CPU when it is 0.
    pub fn worker_threads(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    pub fn batch(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.batch_us)
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            address: IpAddr::from([127, 0, 0, 1]),
            port_min: 30_000,
            port_max: 39_999,
            inactivity_timeout_s: 60,
            delay_ms: 10.0,
            mask: MaskName::Noise,
            record_dir: None,
            threads: 0,
            batch_us: 1000,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MaskName {
    Silence,
    Noise,
    Tone,
}

impl From<MaskName> for MaskKind {
    fn from(m: MaskName) -> MaskKind {
        match m {
            MaskName::Silence => MaskKind::Silence,
            MaskName::Noise => MaskKind::Noise,
            MaskName::Tone => MaskKind::Tone,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScrubMode {
    /// Caller→agent audio is scrubbed for the whole call.
    Always,
    /// Scrubbing is switched on and off at run time (control API).
    OnDemand,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteConfig {
    pub name: String,
    pub mode: RouteMode,
    /// Source networks allowed to use this route (trunk allow-list); empty = any source.
    pub sources: Vec<IpNet>,
    /// Request-URI user this route matches; unset = any user.
    pub user: Option<String>,
    /// Contact-centre URI the B-leg is sent to.
    pub target: String,
    /// "udp", "tcp" or "tls"; default "tls" for a sips: target, "udp" otherwise.
    pub target_transport: Option<Transport>,
    /// PEM CA bundle the contact centre's TLS certificate must chain to; default: the
    /// system's trusted roots.
    pub target_tls_ca: Option<PathBuf>,
    /// Name the contact centre's certificate must carry (DNS name or IP address); default:
    /// the target URI's host.
    pub target_tls_name: Option<String>,
    /// PEM certificate chain tonewall presents to the contact centre (mutual TLS), with
    /// `target_tls_key`; none by default.
    pub target_tls_cert: Option<PathBuf>,
    pub target_tls_key: Option<PathBuf>,
    /// Addresses the contact centre may send in-dialog requests and responses from, besides
    /// the target's (and the fallback's) host: for contact centres that answer from several.
    pub peer_sources: Vec<IpNet>,
    pub scrub: ScrubMode,
    /// Inline routes: listen on the agent→caller direction until the agent keys a payment
    /// session's locator on their phone, then bind the call to that session.
    pub agent_locator: bool,
    // The keys below only mean something for `mode = "loop"`.
    /// Locator sources: "ruri" and "header" tried in this order, then "dtmf" if listed.
    pub locator_from: Vec<LocatorSource>,
    pub locator_header: String,
    /// Header that tells the contact centre which agent the returning call is for.
    pub agent_header: String,
    /// How long DTMF collection and locator resolution may take.
    pub locator_timeout_s: u64,
    pub on_failure: OnFailure,
    /// sip: URI with an IP host, called when the locator is not found (`on_failure =
    /// "fallback"`) or when the return call fails.
    pub fallback: Option<String>,
    /// How long the failure tone plays before the BYE.
    pub announce_ms: u64,
    /// SRTP (SDES, RFC 4568) toward the trunk: "off" (RTP/SAVP offers get 488), "optional"
    /// (SRTP when the trunk offers it) or "required" (plain offers get 488). Inline routes.
    pub srtp_trunk: SrtpPolicy,
    /// SRTP toward the contact centre: "off", "optional" (best-effort: RTP/AVP offered with
    /// our keys, plain if it ignores them) or "required" (RTP/SAVP, or the call fails).
    pub srtp_target: SrtpPolicy,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            name: "inline".into(),
            mode: RouteMode::Inline,
            sources: vec!["127.0.0.0/8".parse().unwrap_or_else(|_| IpNet::default())],
            user: None,
            target: "sip:agents@127.0.0.1:5080".into(),
            target_transport: None,
            target_tls_ca: None,
            target_tls_name: None,
            target_tls_cert: None,
            target_tls_key: None,
            peer_sources: Vec::new(),
            scrub: ScrubMode::Always,
            agent_locator: true,
            locator_from: vec![
                LocatorSource::Ruri,
                LocatorSource::Header,
                LocatorSource::Dtmf,
            ],
            locator_header: "X-Locator".into(),
            agent_header: "X-Agent".into(),
            locator_timeout_s: 15,
            on_failure: OnFailure::Announce,
            fallback: None,
            announce_ms: 3000,
            srtp_trunk: SrtpPolicy::Optional,
            srtp_target: SrtpPolicy::Off,
        }
    }
}

impl RouteConfig {
    /// How the B-leg reaches the contact centre: `target_transport`, or TLS for a sips:
    /// target (RFC 3261 §26.2.2: a SIPS URI is reached over TLS), UDP otherwise.
    pub fn transport(&self) -> Transport {
        self.target_transport.unwrap_or(if is_sips(&self.target) {
            Transport::Tls
        } else {
            Transport::Udp
        })
    }

    /// The name the contact centre's TLS certificate must carry: `target_tls_name`, or the
    /// target URI's host (an IP literal without brackets).
    pub fn tls_name(&self) -> String {
        if let Some(n) = &self.target_tls_name {
            return n.clone();
        }
        crate::sip::uri::Uri::parse(&self.target)
            .ok()
            .and_then(|u| u.as_sip().map(|s| s.host.to_string()))
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned()
    }

    /// The route the B2BUA core takes calls on: target and fallback resolved to addresses,
    /// the locator timeout in milliseconds.
    pub fn route(&self) -> Result<Route, B2buaError> {
        let rc = self;
        let port = default_port(rc.transport());
        let target = ip_sip_uri(&rc.target, port).ok_or_else(|| B2buaError::RouteTarget {
            route: rc.name.clone(),
            target: rc.target.clone(),
        })?;
        let loop_route = match rc.mode {
            RouteMode::Inline => None,
            RouteMode::Loop
                if rc.srtp_trunk == SrtpPolicy::Required || rc.srtp_target != SrtpPolicy::Off =>
            {
                return Err(B2buaError::LoopSrtp {
                    route: rc.name.clone(),
                });
            }
            RouteMode::Loop => {
                let fallback = match &rc.fallback {
                    None => None,
                    Some(f) => {
                        let addr =
                            ip_sip_uri(f, port).ok_or_else(|| B2buaError::RouteFallback {
                                route: rc.name.clone(),
                                fallback: f.clone(),
                            })?;
                        Some((f.clone(), addr))
                    }
                };
                if rc.on_failure == OnFailure::Fallback && fallback.is_none() {
                    return Err(B2buaError::MissingFallback {
                        route: rc.name.clone(),
                    });
                }
                Some(LoopRoute {
                    locator_from: rc.locator_from.clone(),
                    locator_header: rc.locator_header.clone(),
                    agent_header: rc.agent_header.clone(),
                    locator_timeout_ms: rc.locator_timeout_s.saturating_mul(1000),
                    on_failure: rc.on_failure,
                    fallback,
                    announce_ms: rc.announce_ms,
                })
            }
        };
        Ok(Route {
            name: rc.name.clone(),
            sources: rc.sources.clone(),
            user: rc.user.clone(),
            target_uri: rc.target.clone(),
            target,
            transport: rc.transport(),
            peer_sources: rc.peer_sources.clone(),
            mode: rc.mode,
            loop_route,
            srtp_trunk: rc.srtp_trunk,
            srtp_target: rc.srtp_target,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Environment variable holding the bearer tokens (comma-separated `name:token` pairs).
    pub tokens_env: String,
    /// PEM certificate chain (leaf first) for HTTPS; set with `tls_key`, or neither for HTTP.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// A connection whose request headers (the first request's, from the moment it opened,
    /// TLS handshake included) have not all arrived after this many seconds is closed.
    pub header_read_timeout_s: u64,
    /// A connection that has moved no byte for this long is closed.
    pub idle_timeout_s: u64,
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// Connections from one address (IPv6: one /64) open at once.
    pub max_connections_per_source: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens_env: "TONEWALL_API_TOKENS".into(),
            tls_cert: None,
            tls_key: None,
            header_read_timeout_s: 10,
            idle_timeout_s: 60,
            max_connections: 1024,
            max_connections_per_source: 256,
        }
    }
}

impl ApiConfig {
    /// The certificate and key files when the API serves HTTPS (validation has made sure they
    /// are set together).
    pub fn tls_files(&self) -> Option<(&Path, &Path)> {
        Some((self.tls_cert.as_deref()?, self.tls_key.as_deref()?))
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// File holding the 32-byte master key (32 raw bytes, or 64 hex characters); takes precedence over `master_key_env`.
    pub master_key_file: Option<PathBuf>,
    pub master_key_env: String,
    pub ttl_s: u64,
    pub max_tries: u32,
    pub store: StoreName,
    pub redis_url: String,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            master_key_file: None,
            master_key_env: "TONEWALL_MASTER_KEY".into(),
            ttl_s: 120,
            max_tries: 3,
            store: StoreName::Memory,
            redis_url: "redis://127.0.0.1:6379/".into(),
        }
    }
}

/// Payment sessions and card capture.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentConfig {
    /// Digits in a session's locator (3-8; 6 by default, shorter ones are easier to guess).
    pub locator_len: usize,
    /// Digits in the unlock PIN (4-12).
    pub pin_len: usize,
    /// A session nobody asks a TTL for lives this long.
    pub session_ttl_s: u64,
    /// A card field with digits in it ends this long after its last key.
    pub inter_digit_timeout_s: u64,
    /// Invalid entries allowed per field before the capture fails.
    pub max_attempts: u32,
    /// Keys of one locator (keyed by a contact flow or an agent) may be this far apart.
    pub locator_inter_key_ms: u64,
    /// Live sessions one API token may hold at once.
    pub max_live_sessions_per_token: usize,
    /// Ended sessions kept readable for their linger time at most (oldest forgotten first).
    pub max_ended_sessions: usize,
    /// Failed locator look-ups from one source within `lookup_window_s` that lock it out.
    pub lookup_failures_max: u32,
    /// The window failed look-ups are counted in, in seconds.
    pub lookup_window_s: u64,
    /// How long a source that failed too often is refused look-ups, in seconds.
    pub lookup_lockout_s: u64,
}

impl Default for PaymentConfig {
    fn default() -> Self {
        PaymentConfig {
            locator_len: 6,
            pin_len: 6,
            session_ttl_s: 900,
            inter_digit_timeout_s: 6,
            max_attempts: 3,
            locator_inter_key_ms: 3_000,
            max_live_sessions_per_token: 20,
            max_ended_sessions: 2_000,
            lookup_failures_max: 10,
            lookup_window_s: 60,
            lookup_lockout_s: 300,
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreName {
    Memory,
    Redis,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `tonewall=debug`.
    pub level: String,
    pub json: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            json: false,
        }
    }
}

fn is_header_name(h: &str) -> bool {
    !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The port a URI without one means (RFC 3261 §19.1.2): 5061 over TLS, 5060 otherwise.
fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tls => 5061,
        Transport::Udp | Transport::Tcp => 5060,
    }
}

fn is_sips(uri: &str) -> bool {
    crate::sip::dialog::is_sips(uri)
}

/// Where signalling for a sip: URI with an IP host goes (`default_port` unless the URI says
/// otherwise); `None` for any other URI (the B2BUA core does no DNS).
fn ip_sip_uri(s: &str, default_port: u16) -> Option<SocketAddr> {
    let uri = crate::sip::uri::Uri::parse(s).ok()?;
    let sip = uri.as_sip()?;
    let ip: IpAddr = sip
        .host
        .to_string()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, sip.port.unwrap_or(default_port)))
}

/// A sip:/sips: URI whose host is an IP literal.
fn is_ip_sip_uri(s: &str) -> bool {
    ip_sip_uri(s, 5060).is_some()
}

/// The loop-model keys of one route (`key` names the route in messages).
fn validate_loop(r: &RouteConfig, key: &str) -> Result<(), ConfigError> {
    if r.mode != RouteMode::Loop {
        if r.fallback.is_some() || r.on_failure == OnFailure::Fallback {
            return Err(invalid(
                format!("{key}.fallback"),
                "only meaningful for mode = \"loop\"",
            ));
        }
        return Ok(());
    }
    if r.locator_from.is_empty() {
        return Err(invalid(
            format!("{key}.locator_from"),
            "needs at least one of \"ruri\", \"header\", \"dtmf\"",
        ));
    }
    for (i, s) in r.locator_from.iter().enumerate() {
        if r.locator_from.iter().skip(i + 1).any(|t| t == s) {
            return Err(invalid(
                format!("{key}.locator_from"),
                format!("{s:?} is listed twice"),
            ));
        }
    }
    for (name, h) in [
        ("locator_header", &r.locator_header),
        ("agent_header", &r.agent_header),
    ] {
        if !is_header_name(h) {
            return Err(invalid(
                format!("{key}.{name}"),
                format!("{h:?} is not a header name"),
            ));
        }
    }
    if r.locator_header.eq_ignore_ascii_case(&r.agent_header) {
        return Err(invalid(
            format!("{key}.agent_header"),
            "must differ from locator_header",
        ));
    }
    if !(1..=300).contains(&r.locator_timeout_s) {
        return Err(invalid(
            format!("{key}.locator_timeout_s"),
            "must be between 1 and 300 seconds",
        ));
    }
    if !(100..=60_000).contains(&r.announce_ms) {
        return Err(invalid(
            format!("{key}.announce_ms"),
            "must be between 100 and 60000 ms",
        ));
    }
    match &r.fallback {
        None if r.on_failure == OnFailure::Fallback => Err(invalid(
            format!("{key}.fallback"),
            "on_failure = \"fallback\" needs a fallback URI",
        )),
        Some(f) if !is_ip_sip_uri(f) => Err(invalid(
            format!("{key}.fallback"),
            format!("{f:?} is not a sip: URI whose host is an IP address"),
        )),
        _ => Ok(()),
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Settings of the B2BUA core: our host:port for Via and Contact, the media address, the
    /// routes and the limits. `id_seed` seeds the core's identifier CSPRNG.
    pub fn b2bua(&self, id_seed: [u8; 32]) -> Result<B2buaConfig, B2buaError> {
        let host = self
            .sip
            .advertised_host
            .clone()
            .unwrap_or_else(|| self.sip.listen.ip().to_string());
        // RFC 3261 §25.1: an IPv6 reference in a host:port is bracketed.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(B2buaConfig {
            sip_host: format!("{host}:{}", self.sip.listen.port()),
            tls_host: format!("{host}:{}", self.sip.tls_listen_addr().port()),
            media_address: self.media.address,
            routes: self
                .routes
                .iter()
                .map(RouteConfig::route)
                .collect::<Result<_, _>>()?,
            max_calls: self.sip.max_calls,
            retry_after_s: self.sip.retry_after_s,
            carry_headers: self.sip.carry_headers.clone(),
            user_agent: self.sip.user_agent.clone(),
            timers: TimerConfig::default(),
            id_seed,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sip.transports.is_empty() {
            return Err(invalid(
                "sip.transports",
                "needs at least one of \"udp\", \"tcp\", \"tls\"",
            ));
        }
        self.validate_sip_tls()?;
        if self.sip.max_calls == 0 {
            return Err(invalid("sip.max_calls", "must be at least 1"));
        }
        if self.sip.drain_s > 86_400 {
            return Err(invalid(
                "sip.drain_s",
                "must be at most 86400 (a day); 0 hangs calls up at once",
            ));
        }
        if !(1024..=1_048_576).contains(&self.sip.max_message_size) {
            return Err(invalid(
                "sip.max_message_size",
                "must be between 1024 and 1048576 bytes",
            ));
        }
        for h in &self.sip.carry_headers {
            if !is_header_name(h) {
                return Err(invalid(
                    "sip.carry_headers",
                    format!("{h:?} is not a header name"),
                ));
            }
        }
        let m = &self.media;
        if m.threads > 256 {
            return Err(invalid(
                "media.threads",
                "must be at most 256 (0: one per CPU)",
            ));
        }
        if m.batch_us > 5_000 {
            return Err(invalid(
                "media.batch_us",
                "must be at most 5000 (5 ms of added delay; 0: no rest)",
            ));
        }
        if !m.port_min.is_multiple_of(2) {
            return Err(invalid(
                "media.port_min",
                "must be even (RTP even, RTCP odd)",
            ));
        }
        if m.port_min < 1024 || m.port_max <= m.port_min {
            return Err(invalid(
                "media.port_max",
                format!(
                    "range {}..{} must lie above 1023 and hold at least one RTP/RTCP pair",
                    m.port_min, m.port_max
                ),
            ));
        }
        if m.address.is_unspecified() {
            return Err(invalid(
                "media.address",
                "must be a concrete address: it is advertised in SDP",
            ));
        }
        if !(0.0..=20.0).contains(&m.delay_ms) {
            return Err(invalid("media.delay_ms", "must be between 0 and 20"));
        }
        if m.inactivity_timeout_s == 0 {
            return Err(invalid("media.inactivity_timeout_s", "must be at least 1"));
        }
        self.validate_routes()?;
        match (&self.api.tls_cert, &self.api.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "api.tls_key",
                    "missing: api.tls_cert is set, and HTTPS needs both (or neither for HTTP)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "api.tls_cert",
                    "missing: api.tls_key is set, and HTTPS needs both (or neither for HTTP)",
                ));
            }
            _ => {}
        }
        if self.vault.ttl_s == 0 || self.vault.ttl_s > 3600 {
            return Err(invalid("vault.ttl_s", "must be between 1 and 3600 seconds"));
        }
        if self.vault.max_tries == 0 {
            return Err(invalid("vault.max_tries", "must be at least 1"));
        }
        self.validate_payment()?;
        if self.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        self.validate_connections()?;
        Ok(())
    }

    /// The `[sip]` TLS keys: certificate and key with "tls", none of them without it, and a
    /// TLS port apart from the TCP one. The files themselves are read at start-up by the shell.
    fn validate_sip_tls(&self) -> Result<(), ConfigError> {
        let s = &self.sip;
        if !s.transports.contains(&Transport::Tls) {
            let set = [
                ("sip.tls_listen", s.tls_listen.is_some()),
                ("sip.tls_cert", s.tls_cert.is_some()),
                ("sip.tls_key", s.tls_key.is_some()),
                ("sip.tls_client_ca", s.tls_client_ca.is_some()),
            ];
            if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                return Err(invalid(
                    *key,
                    "only meaningful when sip.transports has \"tls\"",
                ));
            }
            return Ok(());
        }
        for (key, set) in [
            ("sip.tls_cert", s.tls_cert.is_some()),
            ("sip.tls_key", s.tls_key.is_some()),
        ] {
            if !set {
                return Err(invalid(
                    key,
                    "missing: sip.transports has \"tls\", which needs tls_cert and tls_key (PEM files)",
                ));
            }
        }
        if s.tls_listen.is_none() && s.listen.port() == u16::MAX {
            return Err(invalid(
                "sip.tls_listen",
                "must be set: sip.listen's port + 1 does not exist",
            ));
        }
        if s.tls_listen_addr() == s.listen && s.transports.contains(&Transport::Tcp) {
            return Err(invalid(
                "sip.tls_listen",
                "must differ from sip.listen, where SIP over TCP listens",
            ));
        }
        Ok(())
    }

    /// A route's TLS keys: only with TLS towards the contact centre, a client certificate
    /// with its key, a sips: target only over TLS.
    fn validate_route_tls(r: &RouteConfig, key: &str) -> Result<(), ConfigError> {
        if is_sips(&r.target) && r.transport() != Transport::Tls {
            return Err(invalid(
                format!("{key}.target_transport"),
                "a sips: target is reached over TLS only (RFC 3261 §26.2.2): use \"tls\" or a sip: target",
            ));
        }
        if r.transport() != Transport::Tls {
            let set = [
                ("target_tls_ca", r.target_tls_ca.is_some()),
                ("target_tls_name", r.target_tls_name.is_some()),
                ("target_tls_cert", r.target_tls_cert.is_some()),
                ("target_tls_key", r.target_tls_key.is_some()),
            ];
            if let Some((name, _)) = set.iter().find(|(_, on)| *on) {
                return Err(invalid(
                    format!("{key}.{name}"),
                    "only meaningful with target_transport = \"tls\"",
                ));
            }
            return Ok(());
        }
        match (&r.target_tls_cert, &r.target_tls_key) {
            (Some(_), None) => Err(invalid(
                format!("{key}.target_tls_key"),
                "missing: target_tls_cert is set, and a client certificate needs its key",
            )),
            (None, Some(_)) => Err(invalid(
                format!("{key}.target_tls_cert"),
                "missing: target_tls_key is set, and a client certificate needs its key",
            )),
            _ if r.tls_name().is_empty() => Err(invalid(
                format!("{key}.target_tls_name"),
                "must not be empty",
            )),
            _ => Ok(()),
        }
    }

    /// Every route's target, user and loop keys.
    fn validate_routes(&self) -> Result<(), ConfigError> {
        if self.routes.is_empty() {
            return Err(invalid("route", "at least one [[route]] is needed"));
        }
        for (i, r) in self.routes.iter().enumerate() {
            let key = format!("route[{i}] ({})", r.name);
            if !(r.target.starts_with("sip:") || r.target.starts_with("sips:")) {
                return Err(invalid(
                    format!("{key}.target"),
                    format!("{:?} is not a sip: URI", r.target),
                ));
            }
            if let Some(u) = &r.user
                && u.is_empty()
            {
                return Err(invalid(format!("{key}.user"), "must not be empty"));
            }
            validate_loop(r, &key)?;
            Config::validate_route_tls(r, &key)?;
        }
        Ok(())
    }

    /// Locator and PIN lengths, session lifetimes and the look-up limits of the payment desk.
    fn validate_payment(&self) -> Result<(), ConfigError> {
        let p = &self.payment;
        if !(3..=8).contains(&p.locator_len) {
            return Err(invalid("payment.locator_len", "must be between 3 and 8"));
        }
        if !(4..=12).contains(&p.pin_len) {
            return Err(invalid("payment.pin_len", "must be between 4 and 12"));
        }
        if !(30..=3600).contains(&p.session_ttl_s) {
            return Err(invalid(
                "payment.session_ttl_s",
                "must be between 30 and 3600 seconds",
            ));
        }
        if !(1..=60).contains(&p.inter_digit_timeout_s) {
            return Err(invalid(
                "payment.inter_digit_timeout_s",
                "must be between 1 and 60 seconds",
            ));
        }
        if p.max_attempts == 0 {
            return Err(invalid("payment.max_attempts", "must be at least 1"));
        }
        if !(200..=30_000).contains(&p.locator_inter_key_ms) {
            return Err(invalid(
                "payment.locator_inter_key_ms",
                "must be between 200 and 30000 ms",
            ));
        }
        if !(1..=1_000).contains(&p.max_live_sessions_per_token) {
            return Err(invalid(
                "payment.max_live_sessions_per_token",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=100_000).contains(&p.max_ended_sessions) {
            return Err(invalid(
                "payment.max_ended_sessions",
                "must be between 1 and 100000",
            ));
        }
        if !(1..=1_000).contains(&p.lookup_failures_max) {
            return Err(invalid(
                "payment.lookup_failures_max",
                "must be between 1 and 1000",
            ));
        }
        if !(1..=86_400).contains(&p.lookup_window_s) {
            return Err(invalid(
                "payment.lookup_window_s",
                "must be between 1 and 86400 seconds",
            ));
        }
        if !(1..=86_400).contains(&p.lookup_lockout_s) {
            return Err(invalid(
                "payment.lookup_lockout_s",
                "must be between 1 and 86400 seconds",
            ));
        }
        Ok(())
    }

    /// Connection timeouts and caps of SIP over TCP and of the control API.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        let s = &self.sip;
        if !(1..=300).contains(&s.tcp_first_message_s) {
            return Err(invalid(
                "sip.tcp_first_message_s",
                "must be between 1 and 300 seconds",
            ));
        }
        if !(s.tcp_first_message_s..=86_400).contains(&s.tcp_idle_s) {
            return Err(invalid(
                "sip.tcp_idle_s",
                "must be between sip.tcp_first_message_s and 86400 seconds",
            ));
        }
        let a = &self.api;
        if !(1..=30).contains(&a.header_read_timeout_s) {
            return Err(invalid(
                "api.header_read_timeout_s",
                "must be between 1 and 30 seconds",
            ));
        }
        // Event streams send a keep-alive comment every 15 s; a shorter idle timeout would cut them.
        if !(20..=3600).contains(&a.idle_timeout_s) {
            return Err(invalid(
                "api.idle_timeout_s",
                "must be between 20 and 3600 seconds",
            ));
        }
        for (key, max, per) in [
            ("sip", s.max_connections, s.max_connections_per_source),
            ("api", a.max_connections, a.max_connections_per_source),
        ] {
            if !(1..=1_000_000).contains(&max) {
                return Err(invalid(
                    format!("{key}.max_connections"),
                    "must be between 1 and 1000000",
                ));
            }
            if !(1..=max).contains(&per) {
                return Err(invalid(
                    format!("{key}.max_connections_per_source"),
                    format!("must be between 1 and {key}.max_connections"),
                ));
            }
        }
        Ok(())
    }

    /// Delay line length in samples (8 kHz).
    pub fn delay_samples(&self) -> usize {
        (self.media.delay_ms * 8.0).round() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::b2bua::Leg;

    #[test]
    fn defaults_are_valid_and_on_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.sip.listen.ip().is_loopback());
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].scrub, ScrubMode::Always);
        assert_eq!(c.delay_samples(), 80);
    }

    #[test]
    fn the_sample_config_parses_and_matches_the_defaults() {
        let text = include_str!("../config/tonewall.toml");
        let c = Config::parse(text).unwrap();
        let d = Config::default();
        assert_eq!(c.sip.listen, d.sip.listen);
        assert_eq!(c.routes[0].target, "sip:agents@127.0.0.1:5080");
        assert_eq!(c.media.port_min, d.media.port_min);
    }

    #[test]
    fn api_tls_needs_both_files_or_neither() {
        let plain = Config::parse("[api]\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        assert_eq!(plain.api.tls_files(), None);

        let both = Config::parse(
            "[api]\ntls_cert = \"/etc/tw/cert.pem\"\ntls_key = \"/etc/tw/key.pem\"\n",
        )
        .unwrap();
        assert_eq!(
            both.api.tls_files(),
            Some((Path::new("/etc/tw/cert.pem"), Path::new("/etc/tw/key.pem")))
        );

        let e = Config::parse("[api]\ntls_cert = \"/etc/tw/cert.pem\"\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "api.tls_key"),
            "{e}"
        );
        assert!(e.to_string().contains("api.tls_cert is set"), "{e}");

        let e = Config::parse("[api]\ntls_key = \"/etc/tw/key.pem\"\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Invalid { key, .. } if key == "api.tls_cert"),
            "{e}"
        );
        assert!(e.to_string().contains("api.tls_key is set"), "{e}");
    }

    /// The key a config text's validation error names.
    fn bad_key(text: &str) -> (String, String) {
        match Config::parse(text) {
            Err(ConfigError::Invalid { key, message }) => (key, message),
            other => panic!("expected an invalid key, got {other:?}\n{text}"),
        }
    }

    #[test]
    fn sip_tls_defaults_and_its_keys() {
        let plain = Config::default();
        assert_eq!(plain.sip.transports, [Transport::Udp, Transport::Tcp]);
        assert_eq!(plain.sip.tls_files(), None);
        assert_eq!(plain.routes[0].transport(), Transport::Udp);

        let tls = Config::parse(
            "[sip]\nlisten = \"127.0.0.1:5070\"\ntransports = [\"udp\", \"tcp\", \"tls\"]\n\
             tls_cert = \"/etc/tw/sip.pem\"\ntls_key = \"/etc/tw/sip.key\"\n",
        )
        .unwrap();
        assert_eq!(tls.sip.tls_listen_addr(), "127.0.0.1:5071".parse().unwrap());
        assert_eq!(
            tls.sip.tls_files(),
            Some((Path::new("/etc/tw/sip.pem"), Path::new("/etc/tw/sip.key")))
        );
        assert_eq!(tls.b2bua([0; 32]).unwrap().tls_host, "127.0.0.1:5071");

        let (key, msg) = bad_key("[sip]\ntransports = [\"tls\"]\ntls_key = \"/k.pem\"\n");
        assert_eq!(key, "sip.tls_cert");
        assert!(msg.contains("needs tls_cert and tls_key"), "{msg}");
        let (key, _) = bad_key("[sip]\ntransports = [\"tls\"]\ntls_cert = \"/c.pem\"\n");
        assert_eq!(key, "sip.tls_key");
        let (key, msg) = bad_key("[sip]\ntls_client_ca = \"/ca.pem\"\n");
        assert_eq!(key, "sip.tls_client_ca");
        assert!(msg.contains("only meaningful"), "{msg}");
        let (key, _) = bad_key(
            "[sip]\nlisten = \"127.0.0.1:5060\"\ntls_listen = \"127.0.0.1:5060\"\n\
             transports = [\"tcp\", \"tls\"]\ntls_cert = \"/c\"\ntls_key = \"/k\"\n",
        );
        assert_eq!(key, "sip.tls_listen");
        let (key, _) = bad_key(
            "[sip]\nlisten = \"127.0.0.1:65535\"\ntransports = [\"tls\"]\n\
             tls_cert = \"/c\"\ntls_key = \"/k\"\n",
        );
        assert_eq!(key, "sip.tls_listen");
    }

    #[test]
    fn route_tls_keys() {
        let route = |extra: &str| format!("[[route]]\nname = \"cc\"\n{extra}\n");
        // A sips: target is reached over TLS on 5061 unless the URI says otherwise.
        let c = Config::parse(&route("target = \"sips:agents@192.0.2.7\"")).unwrap();
        assert_eq!(c.routes[0].transport(), Transport::Tls);
        assert_eq!(c.routes[0].tls_name(), "192.0.2.7");
        let r = c.routes[0].route().unwrap();
        assert_eq!(r.target, "192.0.2.7:5061".parse().unwrap());
        assert_eq!(r.transport, Transport::Tls);
        let c = Config::parse(&route(
            "target = \"sip:agents@[2001:db8::7]:5071\"\ntarget_transport = \"tls\"\n\
             target_tls_ca = \"/ca.pem\"\ntarget_tls_cert = \"/me.pem\"\ntarget_tls_key = \"/me.key\"",
        ))
        .unwrap();
        assert_eq!(c.routes[0].tls_name(), "2001:db8::7");
        let c = Config::parse(&route(
            "target = \"sip:agents@192.0.2.7\"\ntarget_transport = \"tls\"\ntarget_tls_name = \"cc.example\"",
        ))
        .unwrap();
        assert_eq!(c.routes[0].tls_name(), "cc.example");

        let (key, msg) = bad_key(&route(
            "target = \"sips:agents@192.0.2.7\"\ntarget_transport = \"udp\"",
        ));
        assert_eq!(key, "route[0] (cc).target_transport");
        assert!(msg.contains("sips:"), "{msg}");
        let (key, msg) = bad_key(&route(
            "target = \"sip:agents@192.0.2.7\"\ntarget_tls_ca = \"/ca.pem\"",
        ));
        assert_eq!(key, "route[0] (cc).target_tls_ca");
        assert!(msg.contains("target_transport = \"tls\""), "{msg}");
        let (key, _) = bad_key(&route(
            "target = \"sips:agents@192.0.2.7\"\ntarget_tls_cert = \"/me.pem\"",
        ));
        assert_eq!(key, "route[0] (cc).target_tls_key");
        let (key, _) = bad_key(&route(
            "target = \"sips:agents@192.0.2.7\"\ntarget_tls_name = \"\"",
        ));
        assert_eq!(key, "route[0] (cc).target_tls_name");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Config::parse("[sip]\nlisten = \"127.0.0.1:5060\"\nlistne = 1\n").unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let cases = [
            ("[media]\nport_min = 30001\n", "media.port_min"),
            (
                "[media]\nport_min = 30000\nport_max = 29000\n",
                "media.port_max",
            ),
            ("[media]\naddress = \"0.0.0.0\"\n", "media.address"),
            ("[media]\ndelay_ms = 50\n", "media.delay_ms"),
            ("[media]\nbatch_us = 20000\n", "media.batch_us"),
            ("[[route]]\ntarget = \"http://x\"\n", "target"),
            ("[sip]\ntransports = []\n", "sip.transports"),
            ("[vault]\nttl_s = 0\n", "vault.ttl_s"),
            (
                "[sip]\ntcp_first_message_s = 0\n",
                "sip.tcp_first_message_s",
            ),
            (
                "[sip]\ntcp_first_message_s = 30\ntcp_idle_s = 10\n",
                "sip.tcp_idle_s",
            ),
            ("[sip]\nmax_connections = 0\n", "sip.max_connections"),
            (
                "[sip]\nmax_connections = 10\nmax_connections_per_source = 11\n",
                "sip.max_connections_per_source",
            ),
            (
                "[api]\nheader_read_timeout_s = 31\n",
                "api.header_read_timeout_s",
            ),
            ("[api]\nidle_timeout_s = 5\n", "api.idle_timeout_s"),
            (
                "[api]\nmax_connections_per_source = 0\n",
                "api.max_connections_per_source",
            ),
        ];
        for (text, key) in cases {
            let e = Config::parse(text).unwrap_err();
            assert!(e.to_string().contains(key), "{text:?} gave {e}");
        }
    }

    #[test]
    fn loop_route_keys_parse_with_defaults() {
        let c = Config::parse(
            "[[route]]\nname = \"loop\"\nmode = \"loop\"\nuser = \"pay\"\ntarget = \"sip:return@127.0.0.1:5080\"\n",
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.mode, RouteMode::Loop);
        assert_eq!(
            r.locator_from,
            vec![
                LocatorSource::Ruri,
                LocatorSource::Header,
                LocatorSource::Dtmf
            ]
        );
        assert_eq!(r.on_failure, OnFailure::Announce);
        assert_eq!((r.locator_timeout_s, r.announce_ms), (15, 3000));
        let c = Config::parse(
            "[[route]]\nmode = \"loop\"\nlocator_from = [\"dtmf\"]\non_failure = \"fallback\"\nfallback = \"sip:queue@127.0.0.1:5090\"\n",
        )
        .unwrap();
        assert_eq!(c.routes[0].locator_from, vec![LocatorSource::Dtmf]);
        assert_eq!(
            c.routes[0].fallback.as_deref(),
            Some("sip:queue@127.0.0.1:5090")
        );
    }

    #[test]
    fn loop_route_errors_name_the_key() {
        let cases = [
            (
                "[[route]]\nmode = \"loop\"\non_failure = \"fallback\"\n",
                "fallback",
                "needs a fallback URI",
            ),
            (
                "[[route]]\nmode = \"loop\"\nfallback = \"sip:queue@cc.example.com\"\n",
                "fallback",
                "IP address",
            ),
            (
                "[[route]]\nmode = \"loop\"\nfallback = \"http://127.0.0.1\"\n",
                "fallback",
                "not a sip: URI",
            ),
            (
                "[[route]]\nfallback = \"sip:q@127.0.0.1\"\n",
                "fallback",
                "only meaningful",
            ),
            (
                "[[route]]\nmode = \"loop\"\nlocator_from = []\n",
                "locator_from",
                "at least one",
            ),
            (
                "[[route]]\nmode = \"loop\"\nlocator_from = [\"dtmf\", \"dtmf\"]\n",
                "locator_from",
                "twice",
            ),
            (
                "[[route]]\nmode = \"loop\"\nagent_header = \"X Agent\"\n",
                "agent_header",
                "header name",
            ),
            (
                "[[route]]\nmode = \"loop\"\nlocator_timeout_s = 0\n",
                "locator_timeout_s",
                "between",
            ),
            (
                "[[route]]\nmode = \"loop\"\nannounce_ms = 0\n",
                "announce_ms",
                "between",
            ),
        ];
        for (text, key, msg) in cases {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(msg), "{text:?} gave {e}");
        }
        assert!(Config::parse("[[route]]\nmode = \"loop\"\nlocator_from = [\"sms\"]\n").is_err());
    }

    #[test]
    fn source_networks_parse_as_cidr() {
        let c = Config::parse(
            "[[route]]\nname = \"trunk\"\nsources = [\"192.0.2.0/24\", \"2001:db8::/32\"]\ntarget = \"sip:cc@127.0.0.1:5080\"\n",
        )
        .unwrap();
        assert_eq!(c.routes[0].sources.len(), 2);
        assert!(Config::parse("[[route]]\nsources = [\"300.1.1.0/24\"]\n").is_err());
    }

    #[test]
    fn route_target_must_be_an_ip_literal() {
        let mut rc = RouteConfig::default();
        let r = rc.route().unwrap();
        assert_eq!(r.target, "127.0.0.1:5080".parse().unwrap());
        rc.target = "sip:agents@cc.example.com".into();
        assert!(rc.route().is_err());
    }

    #[test]
    fn a_route_hears_each_leg_only_from_its_peer() {
        let mut rc = RouteConfig {
            sources: vec!["192.0.2.0/24".parse().unwrap()],
            peer_sources: vec!["198.51.100.7/32".parse().unwrap()],
            ..RouteConfig::default()
        };
        let r = rc.route().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(r.may_speak(Leg::A, ip("192.0.2.9")));
        assert!(
            r.may_speak(Leg::A, ip("::ffff:192.0.2.9")),
            "IPv4 seen on a dual-stack socket"
        );
        assert!(r.may_speak(Leg::B, ip("::ffff:127.0.0.1")));
        assert!(
            !r.may_speak(Leg::A, ip("127.0.0.1")),
            "the target is not the trunk"
        );
        assert!(!r.may_speak(Leg::A, ip("198.51.100.7")));
        assert!(r.may_speak(Leg::B, ip("127.0.0.1")), "the target's host");
        assert!(
            r.may_speak(Leg::B, ip("198.51.100.7")),
            "a listed peer source"
        );
        assert!(
            !r.may_speak(Leg::B, ip("192.0.2.9")),
            "the trunk is not the contact centre"
        );
        rc.sources.clear();
        let any = rc.route().unwrap();
        assert!(
            any.may_speak(Leg::A, ip("203.0.113.1")),
            "an empty allow-list is anyone"
        );
        assert!(!any.may_speak(Leg::B, ip("203.0.113.1")));
    }
}
