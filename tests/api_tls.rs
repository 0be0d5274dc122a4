//! The control API over HTTPS: `serve_tls` with a self-signed certificate made at test time
//! (rcgen), real TLS clients on loopback, plain HTTP refused, graceful shutdown; and the
//! start-up errors of `tls_acceptor`, which name the file and never show its content.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tonewall::net::api::{ApiState, ApiTokens, serve_tls};
use tonewall::net::clock::Clock;
use tonewall::net::http::{TlsConfigError, tls_acceptor};

const DESK: &str = "desk-token-0123456789abcdef";
const T: Duration = Duration::from_secs(5);

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files in a temporary folder.
struct Pki {
    dir: tempfile::TempDir,
    cert_der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        Pki {
            dir,
            cert_der: ck.cert.der().clone(),
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// A client trusting only this certificate.
    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }
}

async fn tls_connect(pki: &Pki, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    pki.connector().connect(name, tcp).await.unwrap()
}

/// Sends `req` and reads until the server closes.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, req: &str) -> String {
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // A peer that drops the socket without close_notify is an error to rustls, not EOF;
    // what was read before it still counts.
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

const HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn https_serves_the_api_refuses_plain_http_and_shuts_down() {
    let pki = Pki::new();
    let tls = tls_acceptor(&pki.cert(), &pki.key()).unwrap();
    let tokens = ApiTokens::parse(&format!("desk:{DESK}:desk")).unwrap();
    let state = ApiState::in_memory(tokens, Clock::system());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_tls(listener, state, tls, async {
        let _ = stopped.await;
    }));

    let health = tokio::time::timeout(T, async {
        exchange(tls_connect(&pki, addr).await, HEALTH).await
    })
    .await
    .unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("{\"status\":\"ok\"}"), "{health}");

    // Plain HTTP on the TLS port fails the handshake: no HTTP answer at all.
    let plain = tokio::time::timeout(T, async {
        exchange(TcpStream::connect(addr).await.unwrap(), HEALTH).await
    })
    .await
    .unwrap();
    assert!(!plain.contains("HTTP/1.1"), "{plain:?}");

    // The failed handshake did not stop the server; authenticated routes work over TLS too.
    let body = r#"{"agent":"agent-1"}"#;
    let created = tokio::time::timeout(T, async {
        exchange(tls_connect(&pki, addr).await, &format!(
            "POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DESK}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )).await
    })
    .await
    .unwrap();
    assert!(created.starts_with("HTTP/1.1 201"), "{created}");
    let json: serde_json::Value =
        serde_json::from_str(created.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let id = json["id"].as_str().unwrap();

    // An open progress stream over TLS must not hold the shutdown up.
    let mut sse = BufReader::new(tls_connect(&pki, addr).await);
    sse.write_all(
        format!(
            "GET /v1/sessions/{id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {DESK}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let first = tokio::time::timeout(T, async {
        let mut seen = String::new();
        while !seen.contains("\"state\"") {
            if sse.read_line(&mut seen).await.unwrap() == 0 {
                break;
            }
        }
        seen
    })
    .await
    .unwrap();
    assert!(
        first.contains("text/event-stream") && first.contains("\"state\":\"pending\""),
        "{first}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(T, server)
        .await
        .expect("shutdown ends the server")
        .unwrap()
        .unwrap();
    // The stream was ended by the server, not left hanging.
    tokio::time::timeout(T, async {
        let mut rest = Vec::new();
        let _ = sse.read_to_end(&mut rest).await;
    })
    .await
    .expect("the SSE stream ends on shutdown");
    // And the port no longer serves.
    let after = TcpStream::connect(addr).await;
    assert!(after.is_err(), "listener still accepting after shutdown");
}

/// The error `tls_acceptor` gives for these files (TlsAcceptor has no Debug for `unwrap_err`).
fn load_err(cert: &Path, key: &Path) -> TlsConfigError {
    match tls_acceptor(cert, key) {
        Ok(_) => panic!("{} and {} were accepted", cert.display(), key.display()),
        Err(e) => e,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn unusable_cert_or_key_files_are_named_without_their_content() {
    let pki = Pki::new();
    let dir = pki.dir.path();

    let missing = dir.join("absent.pem");
    let e = load_err(&missing, &pki.key());
    assert!(
        matches!(
            e,
            TlsConfigError::Read {
                what: "certificate",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("absent.pem"), "{e}");

    let e = load_err(&pki.cert(), &missing);
    assert!(
        matches!(e, TlsConfigError::Read { what: "key", .. }),
        "{e:?}"
    );

    // The key file given as the certificate: PEM, but no CERTIFICATE block.
    let e = load_err(&pki.key(), &pki.key());
    assert!(
        matches!(
            e,
            TlsConfigError::Pem {
                what: "certificate",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("key.pem"), "{e}");

    // A damaged key: the message names the file and shows none of its content.
    let secret = "c2VjcmV0LWtleS1tYXRlcmlhbA!!";
    let bad = write(
        dir,
        "bad-key.pem",
        &format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n"),
    );
    let e = load_err(&pki.cert(), &bad);
    assert!(
        matches!(e, TlsConfigError::Pem { what: "key", .. }),
        "{e:?}"
    );
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("bad-key.pem"), "{shown}");
    assert!(!shown.contains("c2VjcmV0"), "{shown}");

    // A well-formed key that does not belong to the certificate.
    let other = rcgen::KeyPair::generate().unwrap();
    let stranger = write(dir, "other-key.pem", &other.serialize_pem());
    let e = load_err(&pki.cert(), &stranger);
    assert!(matches!(e, TlsConfigError::Rejected { .. }), "{e:?}");
    assert!(e.to_string().contains("other-key.pem"), "{e}");
}
