//! SIP over TLS (RFC 3261 §26.2), the settings side: the certificate the TLS listener presents
//! (and the CA its clients must chain to, for mutual TLS), and per contact-centre address the
//! client settings of the route that reaches it (CA bundle or the system's roots, the name to
//! verify, an optional client certificate). Everything is read and checked once at start-up,
//! so a bad file stops `tonewall run` with the key and the path, never later on a call.
//!
//! It also turns a failed handshake into a fixed word for the metric label. It must never put
//! key bytes in an error, a log line or a `Debug`: errors name the config key and the file,
//! PEM parser messages (which can quote the offending line) are not kept, and the file buffers
//! holding keys are zeroized.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use zeroize::Zeroizing;

use crate::config::{Config, RouteConfig, Transport};

/// A TLS file or setting that cannot be used. Names the config key and the file, never what
/// is in it.
#[derive(Debug, thiserror::Error)]
pub enum SipTlsError {
    #[error("{key}: cannot read {path}")]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {path}: {problem}")]
    Pem {
        key: String,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("{key}: the certificate {cert} and the key {key_file} cannot be used together")]
    Rejected {
        key: String,
        cert: PathBuf,
        key_file: PathBuf,
        source: Box<rustls::Error>,
    },
    #[error("{key}: {path}: no usable CA certificate")]
    NoCa { key: String, path: PathBuf },
    #[error("{key}: {path}: cannot verify client certificates with these CAs")]
    ClientCa {
        key: String,
        path: PathBuf,
        source: Box<rustls::server::VerifierBuilderError>,
    },
    #[error("{key}: {name:?} is not a DNS name or an IP address")]
    Name { key: String, name: String },
    #[error(
        "{key}: no trusted root certificate found on this system; set it to the contact centre's CA bundle"
    )]
    NoSystemRoots { key: String },
    #[error("TLS set-up: {0}")]
    Setup(Box<rustls::Error>),
}

/// How tonewall opens TLS towards one contact-centre address.
#[derive(Clone)]
pub(super) struct TlsPeer {
    pub connector: TlsConnector,
    /// The name its certificate must carry (RFC 5922 §7.2 matches it as a DNS name or an IP).
    pub name: ServerName<'static>,
}

/// The TLS listener's acceptor and the client settings per contact-centre address.
#[derive(Clone, Default)]
pub struct SipTls {
    pub(super) acceptor: Option<TlsAcceptor>,
    peers: HashMap<SocketAddr, TlsPeer>,
}

impl std::fmt::Debug for SipTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipTls")
            .field("listens", &self.acceptor.is_some())
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn provider() -> Arc<CryptoProvider> {
    // Given explicitly: no process-wide crypto provider has to be installed.
    Arc::new(rustls::crypto::ring::default_provider())
}

impl SipTls {
    /// Reads every TLS file the config names: the listener's when `sip.transports` has "tls",
    /// and each TLS route's. The system's roots are loaded once, only when a TLS route has no
    /// `target_tls_ca`.
    pub fn from_config(config: &Config) -> Result<SipTls, SipTlsError> {
        let acceptor = match config.sip.tls_files() {
            Some((cert, key)) => Some(acceptor(cert, key, config.sip.tls_client_ca.as_deref())?),
            None => None,
        };
        let mut system_roots = None;
        let mut peers = HashMap::new();
        for (i, rc) in config.routes.iter().enumerate() {
            if rc.transport() != Transport::Tls {
                continue;
            }
            let key = format!("route[{i}] ({})", rc.name);
            let peer = route_peer(rc, &key, &mut system_roots)?;
            // A route the core cannot take fails start-up with its own error first.
            let Ok(route) = rc.route() else { continue };
            let fallback = route.loop_route.and_then(|l| l.fallback).map(|(_, a)| a);
            for addr in std::iter::once(route.target).chain(fallback) {
                // Two routes to one address: the first one's settings hold.
                peers.entry(addr).or_insert_with(|| peer.clone());
            }
        }
        Ok(SipTls { acceptor, peers })
    }

    /// The client settings for `addr`, when some TLS route leads there.
    pub(super) fn peer(&self, addr: SocketAddr) -> Option<&TlsPeer> {
        self.peers.get(&addr).or_else(|| {
            // A dual-stack socket may name an IPv4 peer as ::ffff:a.b.c.d.
            let canon = SocketAddr::new(addr.ip().to_canonical(), addr.port());
            self.peers.get(&canon)
        })
    }

    /// Whether SIP listens over TLS.
    pub fn listens(&self) -> bool {
        self.acceptor.is_some()
    }
}

fn read(key: &str, path: &Path) -> Result<Zeroizing<Vec<u8>>, SipTlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| SipTlsError::Read {
            key: key.to_owned(),
            path: path.to_owned(),
            source,
        })
}

fn pem_error(key: &str, path: &Path, problem: &'static str) -> SipTlsError {
    SipTlsError::Pem {
        key: key.to_owned(),
        path: path.to_owned(),
        problem,
    }
}

fn certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, SipTlsError> {
    let chain = CertificateDer::pem_slice_iter(&read(key, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| pem_error(key, path, "malformed PEM"))?;
    if chain.is_empty() {
        return Err(pem_error(key, path, "no CERTIFICATE block"));
    }
    Ok(chain)
}

fn private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, SipTlsError> {
    PrivateKeyDer::from_pem_slice(&read(key, path)?).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => pem_error(key, path, "no private key block"),
        _ => pem_error(key, path, "malformed PEM"),
    })
}

fn ca_store(key: &str, path: &Path) -> Result<RootCertStore, SipTlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs(key, path)?);
    if added == 0 {
        return Err(SipTlsError::NoCa {
            key: key.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// The listener's settings: our chain and key, and client certificates required when
/// `client_ca` is set.
fn acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<TlsAcceptor, SipTlsError> {
    let chain = certs("sip.tls_cert", cert)?;
    let private = private_key("sip.tls_key", key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SipTlsError::Setup(Box::new(e)))?;
    let builder = match client_ca {
        Some(path) => {
            let k = "sip.tls_client_ca";
            let roots = Arc::new(ca_store(k, path)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|source| SipTlsError::ClientCa {
                    key: k.to_owned(),
                    path: path.to_owned(),
                    source: Box::new(source),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config =
        builder
            .with_single_cert(chain, private)
            .map_err(|source| SipTlsError::Rejected {
                key: "sip.tls_key".to_owned(),
                cert: cert.to_owned(),
                key_file: key.to_owned(),
                source: Box::new(source),
            })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A TLS route's client settings: its CA bundle (or the system's roots), the name to verify
/// and its client certificate.
fn route_peer(
    rc: &RouteConfig,
    key: &str,
    system_roots: &mut Option<Arc<RootCertStore>>,
) -> Result<TlsPeer, SipTlsError> {
    let roots = match &rc.target_tls_ca {
        Some(path) => Arc::new(ca_store(&format!("{key}.target_tls_ca"), path)?),
        None => match system_roots {
            Some(r) => r.clone(),
            None => {
                let r = Arc::new(load_system_roots(&format!("{key}.target_tls_ca"))?);
                *system_roots = Some(r.clone());
                r
            }
        },
    };
    let name = rc.tls_name();
    let server_name = match name.parse::<IpAddr>() {
        Ok(ip) => ServerName::IpAddress(ip.into()),
        Err(_) => ServerName::try_from(name.clone()).map_err(|_| SipTlsError::Name {
            key: format!("{key}.target_tls_name"),
            name,
        })?,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SipTlsError::Setup(Box::new(e)))?
        .with_root_certificates(roots);
    let config = match (&rc.target_tls_cert, &rc.target_tls_key) {
        (Some(cert), Some(key_file)) => {
            let chain = certs(&format!("{key}.target_tls_cert"), cert)?;
            let private = private_key(&format!("{key}.target_tls_key"), key_file)?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|source| SipTlsError::Rejected {
                    key: format!("{key}.target_tls_key"),
                    cert: cert.clone(),
                    key_file: key_file.clone(),
                    source: Box::new(source),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsPeer {
        connector: TlsConnector::from(Arc::new(config)),
        name: server_name,
    })
}

fn load_system_roots(key: &str) -> Result<RootCertStore, SipTlsError> {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::debug!(
            errors = found.errors.len(),
            "some system root certificates could not be read"
        );
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(SipTlsError::NoSystemRoots {
            key: key.to_owned(),
        });
    }
    Ok(roots)
}

/// A fixed word for why a handshake failed, for the metric label (the log line carries the
/// error itself, which names no key material).
pub(super) fn failure_label(e: &std::io::Error) -> &'static str {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match e.kind() {
            std::io::ErrorKind::TimedOut => "timeout",
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => "closed",
            _ => "io",
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "wrong_name"
            }
            _ => "bad_certificate",
        },
        rustls::Error::NoCertificatesPresented => "no_client_certificate",
        rustls::Error::AlertReceived(_) => "refused_by_peer",
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => "not_tls",
        rustls::Error::PeerIncompatible(_) => "incompatible",
        _ => "other",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn io(e: rustls::Error) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn handshake_failures_have_fixed_labels() {
        let cases = [
            (CertificateError::Expired, "expired"),
            (CertificateError::UnknownIssuer, "unknown_ca"),
            (CertificateError::NotValidForName, "wrong_name"),
            (CertificateError::BadSignature, "bad_certificate"),
        ];
        for (c, label) in cases {
            assert_eq!(
                failure_label(&io(rustls::Error::InvalidCertificate(c))),
                label
            );
        }
        assert_eq!(
            failure_label(&io(rustls::Error::NoCertificatesPresented)),
            "no_client_certificate"
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(failure_label(&eof), "closed");
    }
}
