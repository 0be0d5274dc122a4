//! Attacks on connections (issue 18, item 4): holding SIP TCP and control API connections open
//! idle or half-sent, opening many from one source, connecting from off the allow-list, and a
//! config whose calls cannot fit in the open-file limit. tonewall runs in-process with short
//! timeouts; every wait is bounded.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonewall::config::Config;
use tonewall::net::run::RunError;
use tonewall::net::ua::{SipUa, UaConfig};

use crate::common::free_port;

const TOKENS_ENV: &str = "TONEWALL_ADVERSARY_CONN_TOKENS";
const KEY_ENV: &str = "TONEWALL_ADVERSARY_CONN_KEY";
/// Parses as `name:token` and as `name:token:role`.
const TOKENS: &str = "conn:connconnconnconnconnconn:admin";

const LO: Ipv4Addr = Ipv4Addr::LOCALHOST;
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);

/// Only one tonewall reads the environment at a time: its variables are set just before it
/// starts (tonewall may remove them once read).
static START: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tonewall running in-process.
struct Running {
    sip: SocketAddr,
    api: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RunError>>,
}

impl Running {
    /// Starts tonewall with `extra` appended to a config that listens on free ports, with SIP
    /// over UDP and TCP and one route to `cc` taking calls from `sources`.
    async fn start(cc: SocketAddr, sources: &str, media: u16, extra: &str) -> Running {
        let (sip_port, api_port) = (free_port(), free_port());
        let text = format!(
            r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp", "tcp"]
max_calls = 20
{sip_extra}
[media]
port_min = {media}
port_max = {media_max}
threads = 1
[[route]]
name = "trunk"
sources = [{sources}]
target = "sip:agents@{cc}"
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "{TOKENS_ENV}"
{api_extra}
[vault]
master_key_env = "{KEY_ENV}"
"#,
            media_max = media + 99,
            sip_extra = section(extra, "sip"),
            api_extra = section(extra, "api"),
        );
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let _one = START.lock().await;
        set_env();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tonewall::net::run::run(config, async {
            let _ = stopped.await;
        }));
        let api = SocketAddr::from((LO, api_port));
        for _ in 0..250 {
            if TcpStream::connect(api).await.is_ok() {
                break;
            }
            assert!(!task.is_finished(), "tonewall stopped at start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Running {
            sip: SocketAddr::from((LO, sip_port)),
            api,
            stop: Some(stop),
            task,
        }
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

    /// `GET path` on a new connection from 127.0.0.1: status and body.
    async fn get(&self, path: &str) -> (u16, String) {
        let res = reqwest::Client::new()
            .get(format!("http://{}{path}", self.api))
            .bearer_auth("connconnconnconnconnconn")
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (res.status().as_u16(), res.text().await.unwrap_or_default())
    }

    /// A counter from /metrics (0 when absent).
    async fn metric(&self, line_start: &str) -> u64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The lines of `extra` under `[name]` (a tiny subset of TOML: `[sip]` / `[api]` headers).
fn section(extra: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in extra.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{name}]");
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn set_env() {
    // SAFETY: tests of this module set these variables only under START, and no other module
    // reads them.
    unsafe {
        std::env::set_var(TOKENS_ENV, TOKENS);
        std::env::set_var(KEY_ENV, "33".repeat(32));
    }
}

/// Lifts this process's soft open-file limit and checks it holds what a test opens (both ends
/// of every connection live in this process).
fn need_files(n: u64) {
    let limit = tonewall::net::limits::raise_nofile(n);
    assert!(
        limit >= n,
        "this test needs {n} open files and the limit is {limit}: raise ulimit -Hn"
    );
}

async fn connect_from(ip: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::from((ip, 0))).unwrap();
    s.connect(to).await.unwrap()
}

/// Whether the peer closed `s` (EOF or reset) before `deadline`; what it sent is ignored.
async fn closed_by(s: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// How many of `conns` the peer closed before `deadline`, checked concurrently.
async fn count_closed(conns: Vec<TcpStream>, deadline: Instant) -> usize {
    let checks: Vec<_> = conns
        .into_iter()
        .map(|mut s| tokio::spawn(async move { closed_by(&mut s, deadline).await }))
        .collect();
    let mut n = 0;
    for c in checks {
        if c.await.unwrap_or(false) {
            n += 1;
        }
    }
    n
}

/// A contact centre and a trunk on 127.0.0.1 (UDP).
async fn endpoints() -> (SipUa, SipUa) {
    let ua = |user: &str| UaConfig {
        ip: IpAddr::from(LO),
        user: user.into(),
        timeout: Duration::from_secs(10),
        ..UaConfig::default()
    };
    (
        SipUa::bind(ua("agents")).await.unwrap(),
        SipUa::bind(ua("caller")).await.unwrap(),
    )
}

/// A whole call from the trunk through tonewall to the contact centre, answered and hung up.
async fn call_goes_through(tw: &Running, trunk: &SipUa, cc: &mut SipUa) {
    let target = format!("sip:5550100@{}", tw.sip);
    let (a, b) = tokio::join!(trunk.call(&target, tw.sip, &[]), async {
        let inc = cc.accept().await?;
        inc.answer().await
    });
    let mut a = a.expect("the trunk's call is answered");
    let mut b = b.expect("the contact centre gets the call");
    a.hangup().await.expect("the caller hangs up");
    b.wait_ended(Duration::from_secs(10))
        .await
        .expect("the hangup reaches the contact centre");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_sip_tcp_connections_are_closed_and_calls_go_on() {
    const IDLE: usize = 2000;
    need_files(2 * IDLE as u64 + 1024);
    let (mut cc, trunk) = endpoints().await;
    let tw = Running::start(
        cc.local_addr(),
        "\"127.0.0.1/32\"",
        47_000,
        "[sip]\ntcp_first_message_s = 3\nmax_connections = 4000\nmax_connections_per_source = 4000",
    )
    .await;
    let opened = Instant::now();
    let mut conns = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        conns.push(TcpStream::connect(tw.sip).await.expect("connect to SIP"));
    }
    // A real call while they are held.
    call_goes_through(&tw, &trunk, &mut cc).await;
    let closed = count_closed(conns, opened + Duration::from_secs(3 + 10)).await;
    assert_eq!(
        closed, IDLE,
        "idle SIP TCP connections still open after the first-message timeout"
    );
    assert!(
        tw.metric("tonewall_connections_closed_total{transport=\"sip_tcp\",reason=\"first_message_timeout\"}")
            .await
            >= IDLE as u64
    );
    // And after.
    call_goes_through(&tw, &trunk, &mut cc).await;
    tw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_sip_headers_are_closed() {
    need_files(512);
    let (cc, _trunk) = endpoints().await;
    let tw = Running::start(
        cc.local_addr(),
        "\"127.0.0.1/32\"",
        47_100,
        "[sip]\ntcp_first_message_s = 2",
    )
    .await;
    let head = "INVITE sip:5550100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK1\r\n";
    // 60 KB of headers that never end, under max_message_size: closed by the first-message
    // timeout however slowly or quickly it is sent.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(tw.sip).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let filler = format!("X-Filler: {}\r\n", "a".repeat(100));
        for _ in 0..(60_000 / filler.len()) {
            s.write_all(filler.as_bytes()).await.unwrap();
        }
        slow.push(s);
    }
    // One that sends a byte every 500 ms: bytes alone do not keep it.
    let mut dribble = TcpStream::connect(tw.sip).await.unwrap();
    let started = Instant::now();
    let mut dribble_closed = false;
    for b in head.bytes() {
        if dribble.write_all(&[b]).await.is_err() {
            dribble_closed = true;
            break;
        }
        if closed_by(&mut dribble, Instant::now() + Duration::from_millis(500)).await {
            dribble_closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(12) {
            break;
        }
    }
    assert!(
        dribble_closed,
        "a byte-at-a-time header kept its connection"
    );
    let closed = count_closed(slow, started + Duration::from_secs(12)).await;
    assert_eq!(
        closed, 20,
        "60 KB unterminated headers kept their connections"
    );
    // Beyond max_message_size, the connection goes at once, not at the timeout.
    let mut big = TcpStream::connect(tw.sip).await.unwrap();
    let mut sent = head.as_bytes().to_vec();
    sent.extend(std::iter::repeat_n(b'a', 70_000));
    let _ = big.write_all(&sent).await;
    assert!(
        closed_by(&mut big, Instant::now() + Duration::from_millis(1500)).await,
        "headers beyond max_message_size kept their connection"
    );
    // The count follows the close (the connection task counts after it has let go of the
    // socket): wait for it, bounded.
    let too_large = "tonewall_connections_closed_total{transport=\"sip_tcp\",reason=\"too_large\"}";
    let until = Instant::now() + Duration::from_secs(5);
    while tw.metric(too_large).await == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tw.metric(too_large).await >= 1);
    tw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_more_than_its_share_of_sip_tcp() {
    need_files(512);
    let (cc, _trunk) = endpoints().await;
    let tw = Running::start(
        cc.local_addr(),
        "\"127.0.0.0/8\"",
        47_200,
        "[sip]\ntcp_first_message_s = 30\nmax_connections = 12\nmax_connections_per_source = 5",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(STRANGER, tw.sip).await);
    }
    let mut over = connect_from(STRANGER, tw.sip).await;
    assert!(
        closed_by(&mut over, Instant::now() + Duration::from_secs(3)).await,
        "a sixth connection from one source was kept"
    );
    // Another source still gets in, and the five held are still open.
    let mut other = TcpStream::connect(tw.sip).await.unwrap();
    assert!(!closed_by(&mut other, Instant::now() + Duration::from_millis(300)).await);
    for s in &mut held {
        assert!(!closed_by(s, Instant::now() + Duration::from_millis(50)).await);
    }
    // The global cap: 6 open now, 12 allowed; 127.0.0.3..5 fill it, the 13th is refused.
    for ip in [3, 4, 5] {
        for _ in 0..2 {
            held.push(connect_from(Ipv4Addr::new(127, 0, 0, ip), tw.sip).await);
        }
    }
    let mut past_cap = connect_from(Ipv4Addr::new(127, 0, 0, 6), tw.sip).await;
    assert!(
        closed_by(&mut past_cap, Instant::now() + Duration::from_secs(3)).await,
        "a connection past the global cap was kept"
    );
    let refused = |r: &str| {
        format!("tonewall_connections_refused_total{{transport=\"sip_tcp\",reason=\"{r}\"}}")
    };
    assert_eq!(tw.metric(&refused("source_cap")).await, 1);
    assert_eq!(tw.metric(&refused("global_cap")).await, 1);
    // Closing some gives their places back.
    held.truncate(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = connect_from(STRANGER, tw.sip).await;
    assert!(!closed_by(&mut again, Instant::now() + Duration::from_millis(300)).await);
    tw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connection_from_off_the_allow_list_is_closed_at_accept() {
    need_files(512);
    let (mut cc, trunk) = endpoints().await;
    let tw = Running::start(
        cc.local_addr(),
        "\"127.0.0.1/32\"",
        47_300,
        "[sip]\ntcp_first_message_s = 30",
    )
    .await;
    let mut stranger = connect_from(STRANGER, tw.sip).await;
    let options = format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.2:5999;branch=z9hG4bKconn1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:x@127.0.0.2>;tag=1\r\nTo: <sip:{sip}>\r\n\
         Call-ID: conn-allow@127.0.0.2\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        sip = tw.sip
    );
    let _ = stranger.write_all(options.as_bytes()).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(3);
    let closed = loop {
        match tokio::time::timeout_at(deadline, stranger.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    assert!(closed, "a connection from 127.0.0.2 was kept open");
    assert!(
        got.is_empty(),
        "tonewall answered a stranger over TCP: {}",
        String::from_utf8_lossy(&got)
    );
    // The allowed trunk connects and stays.
    let mut trunk_tcp = TcpStream::connect(tw.sip).await.unwrap();
    trunk_tcp.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(3), trunk_tcp.read_exact(&mut pong))
        .await
        .expect("a CRLF pong")
        .expect("read the pong");
    assert_eq!(&pong, b"\r\n");
    assert_eq!(
        tw.metric(
            "tonewall_connections_refused_total{transport=\"sip_tcp\",reason=\"not_allowed\"}"
        )
        .await,
        1
    );
    call_goes_through(&tw, &trunk, &mut cc).await;
    tw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_sent_api_connections_are_closed_after_the_header_timeout() {
    const EACH: usize = 300;
    need_files(4 * EACH as u64 + 1024);
    let (cc, _trunk) = endpoints().await;
    let tw = Running::start(
        cc.local_addr(),
        "\"127.0.0.1/32\"",
        47_400,
        "[api]\nheader_read_timeout_s = 2\nmax_connections = 1000\nmax_connections_per_source = 700",
    )
    .await;
    let opened = Instant::now();
    let mut conns = Vec::new();
    for i in 0..2 * EACH {
        let mut s = connect_from(STRANGER, tw.api).await;
        if i % 2 == 1 {
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: tonewall\r\nX-Slow: ")
                .await
                .unwrap();
        }
        conns.push(s);
    }
    // A kept-alive connection that asked once and then says nothing.
    let mut kept = connect_from(STRANGER, tw.api).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: tonewall\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), kept.read(&mut buf))
        .await
        .expect("an answer")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // The health check answers while they are held (it comes from another source).
    assert_eq!(tw.get("/healthz").await.0, 200);
    conns.push(kept);
    let closed = count_closed(conns, opened + Duration::from_secs(2 + 10)).await;
    assert_eq!(
        closed,
        2 * EACH + 1,
        "idle or half-sent API connections still open after the header timeout"
    );
    assert_eq!(tw.get("/healthz").await.0, 200);
    assert!(
        tw.metric("tonewall_connections_closed_total{transport=\"api\",reason=\"header_timeout\"}")
            .await
            >= (2 * EACH) as u64
    );
    tw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_source_cannot_take_the_api_from_the_health_check() {
    need_files(512);
    let (cc, _trunk) = endpoints().await;
    let tw = Running::start(
        cc.local_addr(),
        "\"127.0.0.1/32\"",
        47_500,
        "[api]\nheader_read_timeout_s = 30\nmax_connections = 50\nmax_connections_per_source = 10",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(connect_from(STRANGER, tw.api).await);
    }
    let mut over = connect_from(STRANGER, tw.api).await;
    assert!(
        closed_by(&mut over, Instant::now() + Duration::from_secs(3)).await,
        "an eleventh API connection from one source was kept"
    );
    assert_eq!(tw.get("/healthz").await.0, 200);
    assert_eq!(
        tw.metric("tonewall_connections_refused_total{transport=\"api\",reason=\"source_cap\"}")
            .await,
        1
    );
    drop(held);
    tw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonewall_refuses_to_start_when_its_calls_cannot_fit_in_the_open_file_limit() {
    let (cc, _trunk) = endpoints().await;
    let mut config = Config::parse(&format!(
        "[sip]\nlisten = \"127.0.0.1:{}\"\nmax_calls = 100000000\n[[route]]\ntarget = \"sip:agents@{}\"\n[api]\nlisten = \"127.0.0.1:{}\"\ntokens_env = \"{TOKENS_ENV}\"\n[vault]\nmaster_key_env = \"{KEY_ENV}\"\n",
        free_port(),
        cc.local_addr(),
        free_port(),
    ))
    .unwrap();
    config.media.threads = 1;
    let r = {
        let _one = START.lock().await;
        set_env();
        tokio::time::timeout(
            Duration::from_secs(10),
            tonewall::net::run::run(config, std::future::pending()),
        )
        .await
        .expect("tonewall refuses at once")
    };
    let e = r
        .expect_err("tonewall started with 100,000,000 calls")
        .to_string();
    for part in ["sip.max_calls 100000000", "per call", "RLIMIT_NOFILE"] {
        assert!(e.contains(part), "{e}");
    }
}

#[test]
fn the_binary_refuses_to_start_under_a_low_ulimit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tonewall.toml");
    std::fs::write(
        &path,
        format!(
            "[sip]\nlisten = \"127.0.0.1:{}\"\n[api]\nlisten = \"127.0.0.1:{}\"\ntokens_env = \"{TOKENS_ENV}\"\n[vault]\nmaster_key_env = \"{KEY_ENV}\"\n",
            free_port(),
            free_port()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_tonewall");
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 1024 && exec '{bin}' run --config '{}'",
            path.display()
        ))
        .env(TOKENS_ENV, TOKENS)
        .env(KEY_ENV, "33".repeat(32))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = status.unwrap_or_else(|| panic!("tonewall ran under ulimit -n 1024: {text}"));
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("open-file limit") && text.contains("sip.max_calls 1000"),
        "{text}"
    );
}
