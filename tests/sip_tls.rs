//! SIP over TLS through a running tonewall (in-process, loopback only): a trunk that connects
//! over TLS and a contact centre that tonewall reaches over TLS, both played by small TLS SIP
//! peers written here on the project's own message layer. Certificates are made at test time
//! with rcgen: a test CA, a server certificate for localhost / 127.0.0.1, client certificates,
//! an expired one, one for another name and one from another CA.
//!
//! What it shows: a call set up and torn down over TLS on both legs, every message of a leg on
//! one connection (the BYE too); mutual TLS refusing a client without a certificate, or with
//! one from another CA, counted and logged; a contact centre whose certificate names another
//! host, comes from an unknown CA or has expired fails the call towards the trunk at once with
//! 503 and a Warning, and a log line naming the peer and the reason; and no key bytes in the
//! logs. Every wait is bounded.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonewall::config::Config;
use tonewall::sip::framer::{Frame, StreamFramer};
use tonewall::sip::message::{Framing, Limits, Message, ResponseBuilder};

const T: Duration = Duration::from_secs(5);
const TOKENS_ENV: &str = "TONEWALL_SIP_TLS_TOKENS";
const KEY_ENV: &str = "TONEWALL_SIP_TLS_KEY";
const TOKEN: &str = "tlsscrapertlsscrapertls";

// ---------------------------------------------------------------------------------------------
// Logs

/// Everything tonewall logs in this test binary, at TRACE (tests running at the same time
/// share it, which only adds lines to search).
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn logs() -> &'static LogBuf {
    static LOGS: OnceLock<LogBuf> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        tracing::subscriber::set_global_default(subscriber).unwrap();
        buf
    })
}

fn log_text() -> String {
    String::from_utf8_lossy(&logs().0.lock().unwrap()).into_owned()
}

/// Waits (bounded) for a log line holding every one of `needles`.
async fn log_line_with(needles: &[&str]) -> String {
    for _ in 0..100 {
        if let Some(l) = log_text()
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
        {
            return l.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line with {needles:?}:\n{}", log_text());
}

// ---------------------------------------------------------------------------------------------
// Certificates

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate authority made for the test.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names` (DNS names or IP addresses); `expired`: valid only in the past.
    fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, "leaf");
        if expired {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(30);
            params.not_after = now - time::Duration::days(1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
}

impl Leaf {
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }

    /// Writes `<name>.pem` and `<name>.key` into `dir`.
    fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, &self.cert_pem).unwrap();
        std::fs::write(&k, &self.key_pem).unwrap();
        (c, k)
    }
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut r = RootCertStore::empty();
    r.add(ca.issuer.der().clone()).unwrap();
    Arc::new(r)
}

/// A TLS client trusting `ca`, presenting `cert` when given.
fn client(ca: &Ca, cert: Option<&Leaf>) -> TlsConnector {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca));
    let config = match cert {
        Some(l) => b.with_client_auth_cert(l.chain(), l.key()).unwrap(),
        None => b.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// A TLS server presenting `leaf`, asking for a client certificate from `client_ca` when given.
fn server(leaf: &Leaf, client_ca: Option<&Ca>) -> TlsAcceptor {
    let b = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => b.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(roots(ca), provider())
                .build()
                .unwrap(),
        ),
        None => b.with_no_client_auth(),
    };
    let config = b.with_single_cert(leaf.chain(), leaf.key()).unwrap();
    TlsAcceptor::from(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// A SIP peer over one TLS connection

struct SipConn<S> {
    io: S,
    framer: StreamFramer,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SipConn<S> {
    fn new(io: S) -> SipConn<S> {
        SipConn {
            io,
            framer: StreamFramer::new(&Limits::default()),
        }
    }

    async fn send(&mut self, text: &str) {
        self.io.write_all(text.as_bytes()).await.unwrap();
        self.io.flush().await.unwrap();
    }

    /// The next message on this connection, or what ended it (EOF, TLS error, timeout).
    async fn recv(&mut self) -> Result<Message, String> {
        let read = async {
            loop {
                if let Some(Frame::Message(data)) = self.framer.next_frame().unwrap() {
                    let m = Message::parse(data, Framing::Stream, &Limits::default());
                    return m.map_err(|e| format!("unparsable: {}", e.error()));
                }
                let mut buf = [0u8; 8192];
                match self.io.read(&mut buf).await {
                    Ok(0) => return Err("closed".to_owned()),
                    Ok(n) => self.framer.push(&buf[..n]),
                    Err(e) => return Err(format!("error: {e}")),
                }
            }
        };
        tokio::time::timeout(T, read)
            .await
            .unwrap_or_else(|_| Err("timeout".to_owned()))
    }

    /// The next message that is not a 100 Trying.
    async fn recv_past_trying(&mut self) -> Message {
        loop {
            let m = self.recv().await.expect("a message");
            if m.status() != Some(100) {
                return m;
            }
        }
    }
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.as_bytes()).into_owned()
}

fn header(m: &Message, name: &str) -> String {
    String::from_utf8_lossy(
        m.get(name)
            .unwrap_or_else(|| panic!("no {name}:\n{}", text(m))),
    )
    .into_owned()
}

fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n"
    )
}

fn invite(user: &str, tls: SocketAddr, local: SocketAddr, call: &str) -> String {
    let body = sdp(40_000);
    format!(
        "INVITE sip:{user}@{tls};transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS {local};branch=z9hG4bK{call}1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=trunk-{call}\r\n\
To: <sip:{user}@127.0.0.1>\r\n\
Call-ID: {call}@trunk\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:trunk@{local};transport=tls>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A request of the trunk in the dialog `ok` (tonewall's 2xx) confirmed.
fn in_dialog(ok: &Message, method: &str, cseq: u32, local: SocketAddr, branch: &str) -> String {
    let target = header(ok, "Contact");
    let target = target.trim_start_matches('<').trim_end_matches('>');
    format!(
        "{method} {target} SIP/2.0\r\n\
Via: SIP/2.0/TLS {local};branch=z9hG4bK{branch};rport\r\n\
Max-Forwards: 70\r\n\
From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
        header(ok, "From"),
        header(ok, "To"),
        ok.call_id().unwrap(),
    )
}

fn answer(
    req: &Message,
    status: u16,
    reason: &str,
    cc: SocketAddr,
    body: Option<String>,
) -> String {
    let mut b = ResponseBuilder::new(req, status, reason)
        .to_tag("cc-tag")
        .header("Contact", &format!("<sip:agent@{cc};transport=tls>"));
    if let Some(s) = body {
        b = b.body("application/sdp", Bytes::from(s));
    }
    text(&b.build().unwrap())
}

// ---------------------------------------------------------------------------------------------
// tonewall in-process

/// Only one tonewall reads the environment at a time.
static START: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Tonewall {
    tls: SocketAddr,
    api: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), tonewall::net::run::RunError>>,
}

fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

impl Tonewall {
    /// Starts tonewall with SIP over UDP and TLS (`sip_extra` appended to `[sip]`) and the
    /// given `[[route]]` tables.
    async fn start(sip_extra: &str, routes: &str, media: u16) -> Tonewall {
        logs();
        let (sip_port, tls_port, api_port) = (free_port(), free_port(), free_port());
        let text = format!(
            r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp", "tls"]
tls_listen = "127.0.0.1:{tls_port}"
max_calls = 20
{sip_extra}
[media]
port_min = {media}
port_max = {media_max}
threads = 1
{routes}
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "{TOKENS_ENV}"
[vault]
master_key_env = "{KEY_ENV}"
"#,
            media_max = media + 99,
        );
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let _one = START.lock().await;
        // SAFETY: set only under START, read by the tonewall started just below.
        unsafe {
            std::env::set_var(TOKENS_ENV, format!("scraper:{TOKEN}:admin"));
            std::env::set_var(KEY_ENV, "44".repeat(32));
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tonewall::net::run::run(config, async {
            let _ = stopped.await;
        }));
        let (api, tls) = (
            SocketAddr::from(([127, 0, 0, 1], api_port)),
            SocketAddr::from(([127, 0, 0, 1], tls_port)),
        );
        for _ in 0..250 {
            if TcpStream::connect(api).await.is_ok() {
                break;
            }
            assert!(!task.is_finished(), "tonewall stopped at start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Tonewall {
            tls,
            api,
            stop: Some(stop),
            task,
        }
    }

    /// A TLS connection to tonewall's SIP listener (the handshake as the client sees it).
    async fn connect(
        &self,
        connector: &TlsConnector,
    ) -> io::Result<SipConn<tokio_rustls::client::TlsStream<TcpStream>>> {
        let tcp = TcpStream::connect(self.tls).await?;
        let name = ServerName::try_from("localhost").unwrap();
        let s = tokio::time::timeout(T, connector.connect(name, tcp))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        Ok(SipConn::new(s))
    }

    /// A counter from /metrics (0 when absent).
    async fn metric(&self, line_start: &str) -> u64 {
        let mut s = TcpStream::connect(self.api).await.unwrap();
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(T, s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("tonewall stops");
        r.expect("tonewall task").expect("tonewall ran");
    }
}

/// A test PKI on disk: the CA, tonewall's server certificate (localhost, 127.0.0.1) and its
/// client certificate towards the contact centre, and the contact centre's own.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    cc: Leaf,
    trunk: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("tonewall test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        ca.leaf(&["localhost", "127.0.0.1"], false)
            .write(dir.path(), "tonewall");
        ca.leaf(&["tonewall.test"], false)
            .write(dir.path(), "tonewall-client");
        Pki {
            cc: ca.leaf(&["localhost", "127.0.0.1"], false),
            trunk: ca.leaf(&["trunk.test"], false),
            dir,
            ca,
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// `[sip]` lines for tonewall's TLS listener (mutual TLS with `mutual`).
    fn sip_tls(&self, mutual: bool) -> String {
        let mut s = format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            self.path("tonewall.pem"),
            self.path("tonewall.key")
        );
        if mutual {
            s.push_str(&format!("tls_client_ca = \"{}\"\n", self.path("ca.pem")));
        }
        s
    }

    /// A route for Request-URI user `user` to a contact centre over TLS at `cc`, verified
    /// against the test CA as "localhost", with tonewall's client certificate.
    fn route(&self, user: &str, cc: SocketAddr) -> String {
        format!(
            r#"
[[route]]
name = "{user}"
user = "{user}"
sources = ["127.0.0.0/8"]
target = "sip:agents@{cc}"
target_transport = "tls"
target_tls_ca = "{ca}"
target_tls_name = "localhost"
target_tls_cert = "{cert}"
target_tls_key = "{key}"
"#,
            ca = self.path("ca.pem"),
            cert = self.path("tonewall-client.pem"),
            key = self.path("tonewall-client.key"),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_over_tls_on_both_legs_with_the_bye_on_the_same_connections() {
    let pki = Pki::new();
    let cc_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cc_addr = cc_listener.local_addr().unwrap();
    let tw = Tonewall::start(&pki.sip_tls(true), &pki.route("pay", cc_addr), 47_200).await;

    // The trunk: mutual TLS with a certificate from the CA tonewall trusts.
    let mut trunk = tw
        .connect(&client(&pki.ca, Some(&pki.trunk)))
        .await
        .expect("trunk's TLS handshake");
    let local: SocketAddr = "127.0.0.1:5999".parse().unwrap();
    trunk.send(&invite("pay", tw.tls, local, "tls-call")).await;
    assert_eq!(trunk.recv().await.unwrap().status(), Some(100));

    // The contact centre asks tonewall for its client certificate, from the same CA.
    let cc_accept = server(&pki.cc, Some(&pki.ca));
    let (tcp, _) = tokio::time::timeout(T, cc_listener.accept())
        .await
        .expect("tonewall connects to the contact centre")
        .unwrap();
    let mut cc = SipConn::new(
        tokio::time::timeout(T, cc_accept.accept(tcp))
            .await
            .unwrap()
            .expect("tonewall's client certificate is accepted"),
    );
    let inv = cc.recv().await.unwrap();
    assert_eq!(inv.method().unwrap().as_str(), "INVITE");
    let tls_port = tw.tls.port();
    assert!(
        header(&inv, "Via").starts_with(&format!("SIP/2.0/TLS 127.0.0.1:{tls_port};branch=")),
        "{}",
        text(&inv)
    );
    assert_eq!(
        header(&inv, "Contact"),
        format!("<sip:127.0.0.1:{tls_port};transport=tls>")
    );
    cc.send(&answer(&inv, 180, "Ringing", cc_addr, None)).await;
    cc.send(&answer(&inv, 200, "OK", cc_addr, Some(sdp(50_000))))
        .await;

    let ringing = trunk.recv_past_trying().await;
    assert_eq!(ringing.status(), Some(180));
    let ok = trunk.recv_past_trying().await;
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    assert_eq!(
        header(&ok, "Contact"),
        format!("<sip:127.0.0.1:{tls_port};transport=tls>")
    );
    trunk.send(&in_dialog(&ok, "ACK", 1, local, "ack1")).await;
    let ack = cc.recv().await.unwrap();
    assert_eq!(ack.method().unwrap().as_str(), "ACK");

    // The trunk hangs up on the connection it called on; tonewall answers there and sends
    // its BYE on the connection it opened to the contact centre.
    trunk.send(&in_dialog(&ok, "BYE", 2, local, "bye1")).await;
    let bye_ok = trunk.recv().await.unwrap();
    assert_eq!(bye_ok.status(), Some(200));
    assert_eq!(bye_ok.cseq().unwrap().method, "BYE");
    let bye = cc.recv().await.unwrap();
    assert_eq!(bye.method().unwrap().as_str(), "BYE");
    assert_eq!(bye.call_id(), inv.call_id());
    cc.send(&answer(&bye, 200, "OK", cc_addr, None)).await;

    // One connection each way carried the whole call.
    let second = tokio::time::timeout(Duration::from_millis(300), cc_listener.accept()).await;
    assert!(second.is_err(), "tonewall opened a second connection");
    log_line_with(&["call ended", "ByeFromA"]).await;
    assert_eq!(
        tw.metric("tonewall_sip_tls_handshakes_failed_total{").await,
        0
    );
    tw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let cc: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let tw = Tonewall::start(&pki.sip_tls(true), &pki.route("pay", cc), 47_300).await;
    let local: SocketAddr = "127.0.0.1:5998".parse().unwrap();

    // No certificate at all. Under TLS 1.3 the client's side of the handshake completes
    // before the server has checked it; the refusal arrives as the connection's end.
    let bare = client(&pki.ca, None);
    if let Ok(mut c) = tw.connect(&bare).await {
        let _ =
            c.io.write_all(invite("pay", tw.tls, local, "nocert").as_bytes())
                .await;
        let got = c.recv().await;
        assert!(
            got.is_err(),
            "an answer came without a client certificate: {got:?}"
        );
    }
    let line = log_line_with(&["SIP TLS handshake failed", "no_client_certificate"]).await;
    assert!(line.contains("127.0.0.1"), "{line}");
    let metric = "tonewall_sip_tls_handshakes_failed_total{direction=\"inbound\",reason=\"no_client_certificate\"}";
    assert!(tw.metric(metric).await >= 1);

    // A certificate, but from a CA tonewall does not trust.
    let other = Ca::new("another CA");
    let stranger = other.leaf(&["trunk.test"], false);
    if let Ok(mut c) = tw.connect(&client(&pki.ca, Some(&stranger))).await {
        let _ =
            c.io.write_all(invite("pay", tw.tls, local, "othca").as_bytes())
                .await;
        assert!(c.recv().await.is_err());
    }
    let metric =
        "tonewall_sip_tls_handshakes_failed_total{direction=\"inbound\",reason=\"unknown_ca\"}";
    for _ in 0..50 {
        if tw.metric(metric).await >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tw.metric(metric).await >= 1);

    // The listener still serves a client that does present one.
    let mut good = tw
        .connect(&client(&pki.ca, Some(&pki.trunk)))
        .await
        .unwrap();
    good.send(&invite("nobody", tw.tls, local, "good")).await;
    assert_eq!(good.recv().await.unwrap().status(), Some(100));
    assert_eq!(good.recv_past_trying().await.status(), Some(404));
    tw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contact_centre_with_a_bad_certificate_fails_the_call_with_503() {
    let pki = Pki::new();
    let other = Ca::new("another CA");
    let bad = [
        (
            "wrongname",
            pki.ca.leaf(&["other.example"], false),
            "wrong_name",
        ),
        ("unknownca", other.leaf(&["localhost"], false), "unknown_ca"),
        ("expired", pki.ca.leaf(&["localhost"], true), "expired"),
    ];
    let mut routes = String::new();
    let mut servers = Vec::new();
    let mut ccs = Vec::new();
    for (user, leaf, _) in &bad {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        routes.push_str(&pki.route(user, addr));
        ccs.push(addr);
        let acceptor = server(leaf, None);
        // Accepts and runs the handshake, whatever comes of it; bounded by the test's end.
        servers.push(tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let a = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(T, a.accept(tcp)).await;
                });
            }
        }));
    }
    let tw = Tonewall::start(&pki.sip_tls(false), &routes, 47_400).await;
    let local: SocketAddr = "127.0.0.1:5997".parse().unwrap();
    let mut trunk = tw.connect(&client(&pki.ca, None)).await.unwrap();

    for ((user, _, reason), cc) in bad.iter().zip(&ccs) {
        let started = tokio::time::Instant::now();
        trunk.send(&invite(user, tw.tls, local, user)).await;
        let no = trunk.recv_past_trying().await;
        assert_eq!(no.status(), Some(503), "{user}: {}", text(&no));
        assert!(
            header(&no, "Warning").contains("contact centre unreachable over TLS"),
            "{user}: {}",
            text(&no)
        );
        // At once, not after Timer B's 32 s.
        assert!(started.elapsed() < T, "{user}: {:?}", started.elapsed());
        let line = log_line_with(&[
            "SIP TLS handshake with the contact centre failed",
            &cc.to_string(),
        ])
        .await;
        assert!(line.contains(reason), "{user}: {line}");
        assert!(line.contains("name=localhost"), "{user}: {line}");
        let metric = format!(
            "tonewall_sip_tls_handshakes_failed_total{{direction=\"outbound\",reason=\"{reason}\"}}"
        );
        assert_eq!(tw.metric(&metric).await, 1, "{metric}");
        // The call is over on our side: the trunk's ACK for the 503 is absorbed.
        let ack = format!(
            "ACK sip:{user}@{tls};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK{user}1;rport\r\n\
Max-Forwards: 70\r\nFrom: <sip:alice@127.0.0.1>;tag=trunk-{user}\r\nTo: {to}\r\nCall-ID: {user}@trunk\r\n\
CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            tls = tw.tls,
            to = header(&no, "To"),
        );
        trunk.send(&ack).await;
    }
    let ended = "tonewall_calls_ended_total{cause=\"unreachable\",side=\"contact_centre\"}";
    assert_eq!(tw.metric(ended).await, 3);

    // No key material of any certificate in use reached the logs, at any level.
    let logs = log_text();
    for file in ["tonewall.key", "tonewall-client.key"] {
        let pem = std::fs::read_to_string(pki.dir.path().join(file)).unwrap();
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!logs.contains(line), "{file} in the logs");
        }
    }
    tw.stop().await;
    for s in servers {
        s.abort();
    }
}

#[tokio::test]
async fn start_up_names_the_file_that_cannot_be_used() {
    let pki = Pki::new();
    let dir = pki.dir.path();
    std::fs::write(dir.join("garbage.pem"), "not a certificate\n").unwrap();
    let other = pki.ca.leaf(&["localhost"], false);
    other.write(dir, "other");
    let cc: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases = [
        // (cert, key, what the error must say)
        ("missing.pem", "tonewall.key", "sip.tls_cert: cannot read"),
        ("garbage.pem", "tonewall.key", "no CERTIFICATE block"),
        ("tonewall.pem", "garbage.pem", "sip.tls_key"),
        ("tonewall.pem", "other.key", "cannot be used together"),
    ];
    for (cert, key, needle) in cases {
        let text = format!(
            "[sip]\nlisten = \"127.0.0.1:{}\"\ntransports = [\"tls\"]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [api]\nlisten = \"127.0.0.1:{}\"\n{}",
            free_port(),
            pki.path(cert),
            pki.path(key),
            free_port(),
            pki.route("pay", cc),
        );
        let config = Config::parse(&text).unwrap();
        let err = tonewall::net::sip::SipTls::from_config(&config).unwrap_err();
        let shown = format!("{err}");
        assert!(shown.contains(needle), "{cert}/{key}: {shown}");
        assert!(
            shown.contains(dir.to_str().unwrap()),
            "names the path: {shown}"
        );
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    }
    // A route's CA bundle that holds no certificate.
    let text = format!(
        "{}\ntarget_tls_ca = \"{}\"\n",
        pki.route("pay", cc)
            .replace(&format!("target_tls_ca = \"{}\"\n", pki.path("ca.pem")), ""),
        pki.path("garbage.pem"),
    );
    let config = Config::parse(&text).unwrap();
    let err = tonewall::net::sip::SipTls::from_config(&config).unwrap_err();
    assert!(
        err.to_string().contains("route[0] (pay).target_tls_ca"),
        "{err}"
    );
}
