//! The agent's desk page in a real browser (headless Chromium through chromedriver), during a
//! real call through `tonewall run` on 127.0.0.1 (loop model): the in-repo UA is the trunk's
//! caller and the contact centre. The agent logs in with the keyboard, starts a payment, reads
//! the transfer code off the page; the caller is transferred, keys the card; the page shows the
//! masked progress, a rejected security code in words, the agent asks for it again, the event
//! stream is cut (a proxy between browser and API severs every connection) and the page
//! reconnects and ends sealed; the payment integration then unlocks the card.
//!
//! At every step the page's DOM, and at the end everything that crossed the proxy in either
//! direction (the page's whole network traffic), are searched for the card's digits: only the
//! last four may appear. A screenshot of each step goes to `target/desk-screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (Debian; `./scripts/test` installs them).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::free_port;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tonewall::config::Config;
use tonewall::digit::Digit;
use tonewall::net::ua::{SipUa, UaConfig};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The agent's desk token (its name is the agent's identity), the payment integration's and
/// the operator's.
const AGENT: &str = "7001";
const DESK_TOKEN: &str = "deskbrowser-0123456789";
const PAY_TOKEN: &str = "paybrowser-0123456789";
const OPS_TOKEN: &str = "opsbrowser-0123456789";

/// A Visa test number (Luhn-valid, never issued), its expiry and security code; the caller
/// first keys a security code one digit short.
const PAN: &str = "4012888888881881";
const EXPIRY: &str = "0829";
const SHORT_CVV: &str = "73#";
const CVV: &str = "737";

/// Longest any one wait on the page may take.
const WAIT: Duration = Duration::from_secs(20);

fn digits(s: &str) -> Vec<Digit> {
    s.chars().filter_map(Digit::from_char).collect()
}

// ---- The leak check -------------------------------------------------------------------------

/// What of the card `text` shows beyond the last four, after taking out the identifiers the
/// test knows to be random (session and call ids, the transfer code, which may by chance hold
/// a run of the same digits). Returns the first finding.
fn card_leak(text: &str, known_random: &[String]) -> Option<String> {
    let mut t = text.to_string();
    for r in known_random.iter().filter(|r| !r.is_empty()) {
        t = t.replace(r.as_str(), "<id>");
    }
    // Any six digits in a row of the first twelve (which the last four never contain).
    let head = &PAN[..12];
    for i in 0..=head.len() - 6 {
        let w = &head[i..i + 6];
        if t.contains(w) {
            return Some(format!("PAN digits {w}"));
        }
    }
    // HTTP framing carries numbers of its own: lengths and chunk sizes.
    let framing_free: String = t
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| {
            let length = l.to_ascii_lowercase().starts_with("content-length:");
            let chunk_size =
                !l.is_empty() && l.len() <= 8 && l.chars().all(|c| c.is_ascii_hexdigit());
            !(length || chunk_size)
        })
        .collect::<Vec<_>>()
        .join("\n");
    for (what, secret) in [
        ("expiry", EXPIRY),
        ("expiry", "08/29"),
        ("security code", CVV),
    ] {
        if framing_free.contains(secret) {
            return Some(format!("{what} {secret}"));
        }
    }
    None
}

#[test]
fn the_leak_check_finds_card_digits_and_passes_the_last_four() {
    let ids = vec!["401288123".to_string()];
    assert_eq!(card_leak("card •••• 1881 <id 401288123>", &ids), None);
    assert!(card_leak("{\"pan\":\"4012888888881881\"}", &ids).is_some());
    assert!(card_leak("data: 128888", &ids).is_some());
    assert!(card_leak("<b>0829</b>", &ids).is_some());
    assert!(card_leak("cvv 737 ok", &ids).is_some());
    assert_eq!(card_leak("Content-Length: 737\r\n2e1\r\n", &ids), None);
}

// ---- A proxy between the browser and the API, which can sever every connection ------------

/// Everything that crossed it, both ways, and a switch that cuts every open connection.
struct Proxy {
    addr: SocketAddr,
    to_browser: Arc<Mutex<Vec<u8>>>,
    from_browser: Arc<Mutex<Vec<u8>>>,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let to_browser = Arc::new(Mutex::new(Vec::new()));
        let from_browser = Arc::new(Mutex::new(Vec::new()));
        let (cut, cut_rx) = watch::channel(0u64);
        let (down, up) = (to_browser.clone(), from_browser.clone());
        tokio::spawn(async move {
            while let Ok((browser, _)) = listener.accept().await {
                let Ok(api) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let mut cut_rx = cut_rx.clone();
                cut_rx.mark_unchanged();
                let (down, up) = (down.clone(), up.clone());
                tokio::spawn(async move {
                    let (br, bw) = browser.into_split();
                    let (ar, aw) = api.into_split();
                    tokio::select! {
                        _ = pipe(br, aw, up) => {}
                        _ = pipe(ar, bw, down) => {}
                        _ = cut_rx.changed() => {}
                    }
                    // Dropping both halves closes both sockets: the browser sees the
                    // connection die mid-stream.
                });
            }
        });
        Proxy {
            addr,
            to_browser,
            from_browser,
            cut,
        }
    }

    /// Severs every connection open now.
    fn sever(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    fn requests_to(&self, what: &str) -> usize {
        let sent = self.from_browser.lock().unwrap();
        String::from_utf8_lossy(&sent).matches(what).count()
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    log: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        log.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

// ---- The browser ----------------------------------------------------------------------------

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(profile: &Path) -> (Driver, Client) {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "chromium and chromium-driver are needed (the test script installs them: apt-get install chromium chromium-driver)"
    );
    let port = free_port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver(child);
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(t0.elapsed() < WAIT, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--window-size=1360,1040",
                "--force-device-scale-factor=1",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let caps = match caps {
        Value::Object(m) => m,
        _ => unreachable!(),
    };
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a browser session");
    (driver, client)
}

/// Screenshots and DOM checks of each step.
struct Steps {
    client: Client,
    dir: PathBuf,
    n: usize,
    known_random: Vec<String>,
}

impl Steps {
    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Waits (bounded) until `script` returns true.
    async fn until(&self, what: &str, script: &str) {
        let t0 = Instant::now();
        loop {
            if self.js(script).await == Value::Bool(true) {
                return;
            }
            if t0.elapsed() > WAIT {
                let dom = self.js("return document.body.innerText").await;
                panic!("the page never showed {what}; it shows:\n{dom}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot of the step and checks the DOM for card digits.
    async fn step(&mut self, name: &str) {
        self.n += 1;
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = self.dir.join(format!("{:02}-{name}.png", self.n));
        std::fs::write(&path, png).expect("screenshot written");
        let dom = self.js("return document.documentElement.outerHTML").await;
        let dom = dom.as_str().unwrap_or_default();
        if let Some(leak) = card_leak(dom, &self.known_random) {
            panic!("step {name}: the DOM shows {leak}");
        }
    }

    async fn field_attr(&self, field: &str, attr: &str) -> Value {
        self.js(&format!(
            "const f = document.getElementById('field-{field}'); return f ? f.dataset.{attr} : null;"
        ))
        .await
    }
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("desk-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn api(
    method: reqwest::Method,
    base: &str,
    token: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(5));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_takes_a_card_payment_on_the_desk_page() {
    let started = Instant::now();
    // SAFETY: the only test here that starts tonewall; set before tonewall reads them.
    unsafe {
        std::env::set_var(
            "TONEWALL_DESK_TEST_TOKENS",
            format!("{AGENT}:{DESK_TOKEN}:desk,pay:{PAY_TOKEN}:payment,ops:{OPS_TOKEN}:admin"),
        );
        std::env::set_var("TONEWALL_DESK_TEST_KEY", "33".repeat(32));
    }
    let lo = IpAddr::from(Ipv4Addr::LOCALHOST);
    let ua = |user: &str| UaConfig {
        ip: lo,
        user: user.into(),
        timeout: Duration::from_secs(5),
        ..UaConfig::default()
    };
    let mut cc = SipUa::bind(ua("return")).await.unwrap();
    let trunk = SipUa::bind(ua("caller")).await.unwrap();
    let (sip_port, api_port) = (free_port(), free_port());
    let text = format!(
        r#"
[sip]
listen = "127.0.0.1:{sip_port}"
transports = ["udp"]
[media]
port_min = 44200
port_max = 44399
[[route]]
name = "pay"
mode = "loop"
user = "pay"
target = "sip:return@{cc}"
scrub = "always"
[api]
listen = "127.0.0.1:{api_port}"
tokens_env = "TONEWALL_DESK_TEST_TOKENS"
[vault]
master_key_env = "TONEWALL_DESK_TEST_KEY"
"#,
        cc = cc.local_addr()
    );
    let config = Config::parse(&text).unwrap();
    let sip = config.sip.listen;
    let (stop, stopped) = oneshot::channel::<()>();
    let relay = tokio::spawn(tonewall::net::run::run(config, async {
        let _ = stopped.await;
    }));
    let t0 = Instant::now();
    while TcpStream::connect(("127.0.0.1", api_port)).await.is_err() {
        assert!(t0.elapsed() < WAIT, "tonewall did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let base = format!("http://127.0.0.1:{api_port}");
    let proxy = Proxy::start(SocketAddr::new(lo, api_port)).await;
    let profile = tempfile::tempdir().unwrap();
    let (_driver, client) = browser(profile.path()).await;
    let mut s = Steps {
        client: client.clone(),
        dir: screenshot_dir(),
        n: 0,
        known_random: Vec::new(),
    };

    // 1. The page, its strict policy, and the login, by keyboard alone.
    let page = reqwest::get(format!("{base}/desk")).await.unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    client
        .goto(&format!("http://{}/desk", proxy.addr))
        .await
        .unwrap();
    s.until(
        "the login",
        "return !document.getElementById('login-view').hidden",
    )
    .await;
    s.until(
        "the token field focused",
        "return document.activeElement && document.activeElement.id === 'token'",
    )
    .await;
    s.step("login").await;
    let token = client.find(Locator::Id("token")).await.unwrap();
    token
        .send_keys(&format!("{DESK_TOKEN}\u{E007}"))
        .await
        .unwrap();
    s.until(
        "the desk",
        "return !document.getElementById('desk-view').hidden",
    )
    .await;
    assert_eq!(
        s.js("return document.getElementById('who').textContent")
            .await,
        format!("Agent {AGENT}")
    );
    assert_eq!(
        s.js("return document.cookie").await,
        "",
        "the login cookie is HttpOnly: the page's script cannot read it"
    );

    // 2. A new payment, typed and submitted from the keyboard (focus starts on the amount).
    s.until(
        "the amount focused",
        "return document.activeElement && document.activeElement.id === 'amount'",
    )
    .await;
    let amount = client.find(Locator::Id("amount")).await.unwrap();
    amount.send_keys("42.50").await.unwrap();
    let reference = client.find(Locator::Id("reference")).await.unwrap();
    reference.send_keys("ORDER-7731\u{E007}").await.unwrap();
    s.until(
        "the transfer code",
        "return /^[0-9]{6,}$/.test(document.getElementById('locator').textContent) && !document.getElementById('locator-box').hidden",
    )
    .await;
    let locator = s
        .js("return document.getElementById('locator').textContent")
        .await
        .as_str()
        .unwrap()
        .to_string();
    let session = s
        .js("return desk.current")
        .await
        .as_str()
        .unwrap()
        .to_string();
    s.known_random = vec![session.clone(), locator.clone()];
    assert_eq!(
        s.js("return document.activeElement.id").await,
        "pay-title",
        "focus moves to the payment"
    );
    s.step("transfer-code").await;

    // The payment integration takes the session's token and PIN (the page never sees them).
    let (st, creds) = api(
        reqwest::Method::POST,
        &base,
        PAY_TOKEN,
        &format!("/v1/sessions/{session}/credentials"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{creds}");

    // 3. The caller is transferred to the loop number with the code; tonewall calls the agent
    // back with the caller.
    let target = format!("sip:pay@{sip}");
    let a = trunk.call(&target, sip, &[]).await.unwrap();
    let locator_keys = digits(&locator);
    let (keyed, b) = tokio::join!(a.send_keys(&locator_keys, 70, 80), async {
        let inc = cc.accept().await?;
        inc.answer().await
    });
    keyed.unwrap();
    let b = b.unwrap();
    s.until(
        "the caller keying",
        "return document.getElementById('status').textContent === 'Caller is keying'",
    )
    .await;
    let (_, calls) = api(reqwest::Method::GET, &base, OPS_TOKEN, "/v1/calls", None).await;
    for c in calls["calls"].as_array().unwrap() {
        s.known_random
            .push(c["call_id"].as_str().unwrap().to_string());
    }
    s.step("call-connected").await;

    // 4. The caller keys the card number: masked digits arrive, then brand and last four.
    a.send_keys(&digits(&PAN[..9]), 70, 80).await.unwrap();
    s.until(
        "nine masked digits",
        "const f = document.getElementById('field-pan'); return !!f && f.dataset.digits === '9'",
    )
    .await;
    s.step("card-number-keying").await;
    a.send_keys(&digits(&format!("{}#", &PAN[9..])), 70, 80)
        .await
        .unwrap();
    s.until(
        "the card number complete",
        "const f = document.getElementById('field-pan'); return !!f && f.dataset.state === 'complete'",
    )
    .await;
    let pan_text = s
        .js("return document.getElementById('field-pan').innerText")
        .await;
    let pan_text = pan_text.as_str().unwrap();
    assert!(
        pan_text.contains("1881") && pan_text.to_lowercase().contains("visa"),
        "{pan_text}"
    );
    s.step("card-number-complete").await;

    // 5. Expiry, then a security code one digit short: rejected, in words for the caller.
    a.send_keys(&digits(EXPIRY), 70, 80).await.unwrap();
    s.until(
        "the expiry complete",
        "const f = document.getElementById('field-expiry'); return !!f && f.dataset.state === 'complete'",
    )
    .await;
    a.send_keys(&digits(SHORT_CVV), 70, 80).await.unwrap();
    s.until(
        "the security code rejected",
        "const f = document.getElementById('field-cvv'); return !!f && f.dataset.state === 'invalid'",
    )
    .await;
    let cvv_text = s
        .js("return document.getElementById('field-cvv').innerText")
        .await;
    let cvv_text = cvv_text.as_str().unwrap().to_string();
    assert!(
        cvv_text.contains("Not enough digits") && cvv_text.contains("2 attempts left"),
        "{cvv_text}"
    );
    s.step("security-code-rejected").await;

    // 6. The agent asks for the security code again (keyboard: Enter on the button).
    let again = client
        .find(Locator::Css("#field-cvv button[data-request='cvv']"))
        .await
        .unwrap();
    again.send_keys("\u{E007}").await.unwrap();
    s.until(
        "the security code asked again",
        "const f = document.getElementById('field-cvv'); return !!f && f.dataset.state === 'waiting' && !f.querySelector('.field-msg')",
    )
    .await;
    assert_eq!(
        s.js("return document.activeElement.dataset.request || null")
            .await,
        "cvv",
        "the focus stays on the agent's button across updates"
    );
    s.step("security-code-asked-again").await;

    // 7. The event stream is cut; the page says so, reconnects, and follows on.
    let streams = proxy.requests_to("/events HTTP/1.1");
    assert!(streams >= 1, "the page follows the session's events");
    proxy.sever();
    let t0 = Instant::now();
    while proxy.requests_to("/events HTTP/1.1") <= streams {
        assert!(
            t0.elapsed() < WAIT,
            "the page never reopened its event stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.until(
        "the stream live again",
        "return document.getElementById('conn').dataset.state === 'live'",
    )
    .await;

    // 8. The caller keys the right code: sealed, shown only through the reopened stream.
    a.send_keys(&digits(CVV), 70, 80).await.unwrap();
    s.until(
        "the payment sealed",
        "return document.getElementById('status').textContent === 'Sealed'",
    )
    .await;
    assert_eq!(s.field_attr("cvv", "state").await, "complete");
    s.step("sealed").await;

    // The payment integration unlocks the card once: what the caller keyed.
    let (st, card) = api(
        reqwest::Method::POST,
        &base,
        PAY_TOKEN,
        &format!("/v1/sessions/{session}/unlock"),
        Some(json!({"token": creds["token"], "pin": creds["pin"]})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(card["pan"], PAN);
    assert_eq!(card["cvv"], CVV);
    s.until(
        "the hand-over",
        "return document.getElementById('status').textContent === 'Handed over'",
    )
    .await;
    s.step("handed-over").await;

    // 9. The page's whole network traffic, both ways: no card digit beyond the last four.
    let down = String::from_utf8_lossy(&proxy.to_browser.lock().unwrap()).to_string();
    let up = String::from_utf8_lossy(&proxy.from_browser.lock().unwrap()).to_string();
    assert!(
        down.contains("\"last4\":\"1881\""),
        "the traffic was recorded"
    );
    assert!(
        up.contains("/v1/sessions/") && up.contains("X-Tonewall-CSRF"),
        "{up}"
    );
    if let Some(leak) = card_leak(&down, &s.known_random) {
        panic!("the API sent the page {leak}");
    }
    if let Some(leak) = card_leak(&up, &s.known_random) {
        panic!("the page sent {leak}");
    }
    assert!(
        !down.contains(creds["token"].as_str().unwrap())
            && !down.contains(creds["pin"].as_str().unwrap()),
        "the page never receives the retrieval token or the PIN"
    );

    client.close().await.unwrap();
    drop(b);
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), relay).await;
    eprintln!(
        "desk browser test: {:.1} s, screenshots in {}",
        started.elapsed().as_secs_f64(),
        s.dir.display()
    );
}
