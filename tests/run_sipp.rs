//! `tonewall run` in-process on loopback between two sipp instances: a trunk UAC calling
//! tonewall and a contact-centre UAS behind it. The call must be set up and torn down through
//! tonewall (both sipp runs exit 0); with media, what reaches the contact centre must carry no
//! RFC 4733 telephone-event packet.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::oneshot;
use tonewall::config::Config;

const SIPP: &str = "/usr/bin/sipp";
const TOKENS_ENV: &str = "TONEWALL_RUN_SIPP_TEST_TOKENS";
/// Longest a whole sipp run may take (sipp's own -timeout is shorter).
const WAIT: Duration = Duration::from_secs(40);

fn sipp_available() -> bool {
    Path::new(SIPP).exists()
}

/// A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both).
fn free_port() -> u16 {
    for _ in 0..100 {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
    panic!("no free port");
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: Config,
    sip_port: u16,
    cc_port: u16,
}

fn setup(media_min: u16, scrub: &str, target_transport: &str) -> Setup {
    // The API needs tokens; every test sets the same value, so concurrent writes agree.
    // SAFETY: all writers store the same value before any reader in this binary runs.
    unsafe { std::env::set_var(TOKENS_ENV, "test:0123456789abcdef0123") };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let key = dir.join("master.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    let sip_port = free_port();
    let cc_port = free_port();
    let api_port = free_port();
    let text = format!(
        r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp", "tcp"]
[media]
address = "127.0.0.1"
port_min = {media_min}
port_max = {media_max}
inactivity_timeout_s = 30
[[route]]
name = "inline"
sources = ["127.0.0.0/8"]
target = "sip:agents@127.0.0.1:{cc_port}"
target_transport = "{target_transport}"
scrub = "{scrub}"
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "{TOKENS_ENV}"
[vault]
master_key_file = "{key}"
"#,
        media_max = media_min + 999,
        key = key.display(),
    );
    let config = Config::parse(&text).unwrap();
    Setup {
        _dir: tmp,
        dir,
        config,
        sip_port,
        cc_port,
    }
}

/// Starts tonewall; the sender stops it.
fn start(config: Config) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        tonewall::net::run::run(config, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (tx, task)
}

async fn wait_sip_ready(port: u16) {
    // tonewall binds before serving; TCP connect succeeds once the listener is up.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("tonewall did not start listening on {port}");
}

fn sipp(dir: &Path, args: &[String]) -> Command {
    let mut c = Command::new(SIPP);
    c.current_dir(dir)
        .args(["-nostdin", "-timeout", "20s", "-m", "1", "-i", "127.0.0.1"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn finish(name: &str, child: tokio::process::Child) {
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} did not finish"))
        .unwrap();
    assert!(
        out.status.success(),
        "{name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A UDP port sipp's UAS is not yet using, for its own SIP socket.
async fn start_uas(s: &Setup, extra: &[String]) -> tokio::process::Child {
    let mut args = vec!["-p".to_string(), s.cc_port.to_string()];
    args.extend_from_slice(extra);
    let child = sipp(&s.dir, &args).spawn().unwrap();
    // sipp binds its port at start; wait until it is taken.
    let tcp = extra.iter().any(|a| a == "t1");
    for _ in 0..200 {
        let taken = if tcp {
            TcpListener::bind(("127.0.0.1", s.cc_port)).is_err()
        } else {
            UdpSocket::bind(("127.0.0.1", s.cc_port)).is_err()
        };
        if taken {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sipp UAS did not bind {}", s.cc_port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_call_is_set_up_and_torn_down_through_tonewall() {
    assert!(
        sipp_available(),
        "sipp is needed (the test script installs it: apt-get install sip-tester)"
    );
    let s = setup(41_000, "always", "udp");
    let (stop, task) = start(s.config.clone());
    wait_sip_ready(s.sip_port).await;
    let uas = start_uas(&s, &["-sn".into(), "uas".into()]).await;
    let uac = sipp(
        &s.dir,
        &[
            "-sn".into(),
            "uac".into(),
            format!("127.0.0.1:{}", s.sip_port),
            "-p".into(),
            free_port().to_string(),
        ],
    )
    .spawn()
    .unwrap();
    finish("sipp UAC (trunk)", uac).await;
    finish("sipp UAS (contact centre)", uas).await;
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

/// Both legs over TCP: tonewall accepts the trunk's connection and opens one to the contact
/// centre (RFC 3261 §18.1.1), answering each side on its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sipp_call_over_tcp_on_both_legs() {
    assert!(
        sipp_available(),
        "sipp is needed (the test script installs it: apt-get install sip-tester)"
    );
    let s = setup(44_000, "always", "tcp");
    let (stop, task) = start(s.config.clone());
    wait_sip_ready(s.sip_port).await;
    let uas = start_uas(&s, &["-sn".into(), "uas".into(), "-t".into(), "t1".into()]).await;
    let uac = sipp(
        &s.dir,
        &[
            "-sn".into(),
            "uac".into(),
            "-t".into(),
            "t1".into(),
            format!("127.0.0.1:{}", s.sip_port),
            "-p".into(),
            free_port().to_string(),
        ],
    )
    .spawn()
    .unwrap();
    finish("sipp UAC (trunk, TCP)", uac).await;
    finish("sipp UAS (contact centre, TCP)", uas).await;
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}

fn pcaps_available() -> bool {
    let ok = sipp_available() && Path::new("/usr/share/sip-tester/dtmf_2833_1.pcap").exists();
    assert!(
        ok,
        "sipp and its pcaps are needed (the test script installs them: apt-get install sip-tester)"
    );
    ok
}

/// One trunk call with G.711 A-law speech and RFC 2833 keys; returns what reached the
/// contact centre: audio packets, telephone-event (PT 101) packets, payload types seen.
async fn pcap_call(media_min: u16, scrub: &str) -> (usize, usize, Vec<u8>) {
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp");
    let s = setup(media_min, scrub, "udp");
    // The contact centre's media goes to a socket the test owns.
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let capture_addr: SocketAddr = capture.local_addr().unwrap();
    let inf = s.dir.join("users.csv");
    std::fs::write(&inf, "SEQUENTIAL\nagents;\n").unwrap();

    let (stop, task) = start(s.config.clone());
    wait_sip_ready(s.sip_port).await;
    let uas = start_uas(
        &s,
        &[
            "-sf".into(),
            scenarios.join("cc_uas_capture.xml").display().to_string(),
            "-key".into(),
            "capture_ip".into(),
            "127.0.0.1".into(),
            "-key".into(),
            "capture_port".into(),
            capture_addr.port().to_string(),
        ],
    )
    .await;
    let collector = tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        let mut audio = 0usize;
        let mut events = 0usize;
        let mut pts = std::collections::BTreeSet::new();
        // Packets stop when the call ends; a quiet second after that ends the collection.
        loop {
            let wait = if audio + events == 0 {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(2)
            };
            match tokio::time::timeout(wait, capture.recv_from(&mut buf)).await {
                Ok(Ok((n, _))) if n >= 12 => {
                    let pt = buf[1] & 0x7f;
                    pts.insert(pt);
                    if pt == 101 {
                        events += 1;
                    } else {
                        audio += 1;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        (audio, events, pts)
    });
    let uac = sipp(
        &s.dir,
        &[
            "-sf".into(),
            scenarios.join("trunk_uac_pcap.xml").display().to_string(),
            "-inf".into(),
            inf.display().to_string(),
            format!("127.0.0.1:{}", s.sip_port),
            "-p".into(),
            free_port().to_string(),
            "-mp".into(),
            free_port().to_string(),
        ],
    )
    .spawn()
    .unwrap();
    finish("sipp UAC (trunk, pcap media)", uac).await;
    finish("sipp UAS (contact centre)", uas).await;
    let (audio, events, pts) = collector.await.unwrap();
    stop.send(()).unwrap();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    (audio, events, pts.into_iter().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_relayed_and_telephone_events_do_not_reach_the_contact_centre() {
    pcaps_available();
    let (audio, events, pts) = pcap_call(42_000, "always").await;
    assert!(
        audio > 50,
        "too little audio reached the contact centre: {audio}"
    );
    assert_eq!(
        events, 0,
        "telephone-event packets reached the contact centre (payload types seen: {pts:?})"
    );
    assert_eq!(pts, vec![8]);
}

/// The same call on an on-demand route (scrubbing off until the API turns it on): the keys'
/// telephone-events do reach the contact centre, so the test above can see a leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_scrubbing_the_same_call_leaks_telephone_events() {
    pcaps_available();
    let (audio, events, pts) = pcap_call(43_000, "on-demand").await;
    assert!(audio > 50, "audio packets: {audio}");
    assert!(events > 0, "no telephone-event passed unscrubbed: {pts:?}");
}
