//! The Redis vault store against a real `redis-server` on 127.0.0.1: round trip, tries, native
//! TTL, one-time unlock under two concurrent relays, a record surviving a relay restart, and
//! sessions shared between relays (created on one, captured on another, unlocked on either).
//!
//! Each test starts its own server on a free port in a temp dir (no persistence) and kills it
//! on drop. `./scripts/test` installs redis-server when missing; without it these tests fail
//! and say so.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tonewall::payment::card::{CardData, Cvv, Expiry, Pan, YearMonth};
use tonewall::payment::pin::Pin;
use tonewall::payment::redis_store::RedisStore;
use tonewall::payment::session::{Locator, RetrievalToken, SessionId};
use tonewall::payment::store::{UnlockError, VaultStore};
use tonewall::payment::vault::{self, MasterKey, SealedRecord};

struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn redis_server_bin() -> PathBuf {
    let candidates = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"];
    if let Some(p) = candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
        return p;
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v redis-server"])
        .output()
        && out.status.success()
    {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    panic!(
        "redis-server not found: these tests need a real Redis. Install it \
         (apt-get install redis-server) or run ./scripts/test, which does."
    );
}

impl RedisServer {
    fn start() -> RedisServer {
        let bin = redis_server_bin();
        // A port just freed by the OS can be taken again before redis binds it: retry.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("no free port on 127.0.0.1");
            let dir = tempfile::tempdir().expect("temp dir");
            let child = Command::new(&bin)
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", ""])
                .args(["--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut server = RedisServer {
                child,
                port,
                _dir: dir,
            };
            if server.wait_ready() {
                return server;
            }
        }
        panic!("redis-server did not answer PING on 127.0.0.1");
    }

    /// Bounded wait for `+PONG` (up to ~5 s); false if the server exited or never answered.
    fn wait_ready(&mut self) -> bool {
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok()
                    && s.read_exact(&mut buf).is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn card() -> CardData {
    CardData::new(
        Pan::parse(b"4111111111111111", false).unwrap(),
        Some(Expiry::parse(b"1230", YearMonth::new(2026, 1).unwrap()).unwrap()),
        Some(Cvv::parse(b"123", None).unwrap()),
    )
}

struct Sealed {
    record: SealedRecord,
    id: SessionId,
    token: RetrievalToken,
    pin: Pin,
}

fn seal(master: &MasterKey) -> Sealed {
    let id = SessionId::generate();
    let token = RetrievalToken::generate();
    let pin = Pin::generate(6);
    let record = vault::seal(
        &card(),
        master,
        &pin,
        id,
        &Locator::parse("2468").unwrap(),
        token.hash(),
    )
    .unwrap();
    Sealed {
        record,
        id,
        token,
        pin,
    }
}

fn wrong(pin: &Pin) -> Pin {
    let s: String = pin
        .reveal()
        .bytes()
        .map(|b| char::from(b'0' + (b - b'0' + 1) % 10))
        .collect();
    Pin::parse(&s).unwrap()
}

async fn store(server: &RedisServer, master: &Arc<MasterKey>) -> RedisStore {
    RedisStore::connect(&server.url(), master.clone(), 3)
        .await
        .expect("connect to the test redis-server")
}

async fn pttl(server: &RedisServer, id: &SessionId) -> i64 {
    let client = redis::Client::open(server.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("PTTL")
        .arg(format!("tonewall:vault:{id}"))
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn round_trip_once() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let s = store(&server, &master).await;
    let r = seal(&master);
    s.put(r.record.clone(), 60_000, 0).await.unwrap();
    assert_eq!(
        s.put(r.record.clone(), 60_000, 0).await,
        Err(tonewall::payment::store::StoreError::Duplicate)
    );
    let c = s.unlock(&r.id, &r.token, &r.pin, 0).await.unwrap();
    assert_eq!(c, card());
    assert_eq!(c.pan().reveal(), "4111111111111111");
    assert_eq!(
        s.unlock(&r.id, &r.token, &r.pin, 0).await,
        Err(UnlockError::AlreadyUnlocked)
    );
    // The tombstone keeps the record's TTL (no key outlives it).
    let left = pttl(&server, &r.id).await;
    assert!(left > 0 && left <= 60_000, "PTTL {left}");
    assert_eq!(
        s.unlock(&SessionId::generate(), &r.token, &r.pin, 0).await,
        Err(UnlockError::NotFound)
    );
}

#[tokio::test]
async fn wrong_pins_count_and_the_last_destroys() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let s = store(&server, &master).await;
    let r = seal(&master);
    s.put(r.record.clone(), 60_000, 0).await.unwrap();
    let bad = wrong(&r.pin);
    assert_eq!(
        s.unlock(&r.id, &r.token, &bad, 0).await,
        Err(UnlockError::WrongPin { tries_left: 2 })
    );
    // A wrong token costs no try.
    assert_eq!(
        s.unlock(&r.id, &RetrievalToken::generate(), &r.pin, 0)
            .await,
        Err(UnlockError::BadToken)
    );
    assert_eq!(
        s.unlock(&r.id, &r.token, &bad, 0).await,
        Err(UnlockError::WrongPin { tries_left: 1 })
    );
    assert_eq!(
        s.unlock(&r.id, &r.token, &bad, 0).await,
        Err(UnlockError::TriesExhausted)
    );
    assert_eq!(
        s.unlock(&r.id, &r.token, &r.pin, 0).await,
        Err(UnlockError::TriesExhausted)
    );
    let left = pttl(&server, &r.id).await;
    assert!(left > 0 && left <= 60_000, "PTTL {left}");

    // Destroying a waiting record (session cancelled).
    let r = seal(&master);
    s.put(r.record.clone(), 60_000, 0).await.unwrap();
    assert!(s.destroy(&r.id, 0).await.unwrap());
    assert!(!s.destroy(&r.id, 0).await.unwrap());
    assert_eq!(
        s.unlock(&r.id, &r.token, &r.pin, 0).await,
        Err(UnlockError::Destroyed)
    );
}

#[tokio::test]
async fn native_ttl_removes_the_record() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let s = store(&server, &master).await;
    let r = seal(&master);
    s.put(r.record.clone(), 300, 0).await.unwrap();
    let left = pttl(&server, &r.id).await;
    assert!(left > 0 && left <= 300, "PX set with the record: {left}");
    // Wait (bounded) for Redis to expire it; no timing is asserted, only the outcome.
    let mut gone = false;
    for _ in 0..100 {
        if pttl(&server, &r.id).await == -2 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "record still there 5 s after a 300 ms TTL");
    assert_eq!(
        s.unlock(&r.id, &r.token, &r.pin, 0).await,
        Err(UnlockError::NotFound)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_cannot_both_unlock() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    // Two relays: separate clients and connections on one Redis.
    let a = store(&server, &master).await;
    let b = store(&server, &master).await;
    for _ in 0..25 {
        let r = Arc::new(seal(&master));
        a.put(r.record.clone(), 60_000, 0).await.unwrap();
        let (ra, rb) = {
            let (a, b, r1, r2) = (a.clone(), b.clone(), r.clone(), r.clone());
            let ta = tokio::spawn(async move { a.unlock(&r1.id, &r1.token, &r1.pin, 0).await });
            let tb = tokio::spawn(async move { b.unlock(&r2.id, &r2.token, &r2.pin, 0).await });
            (ta.await.unwrap(), tb.await.unwrap())
        };
        let wins = usize::from(ra.is_ok()) + usize::from(rb.is_ok());
        assert_eq!(wins, 1, "exactly one relay gets the card");
        let loser = if ra.is_ok() { rb } else { ra };
        assert_eq!(loser.unwrap_err(), UnlockError::AlreadyUnlocked);
    }
}

#[tokio::test]
async fn survives_a_relay_restart_within_ttl() {
    let server = RedisServer::start();
    let master_bytes: [u8; 32] = std::array::from_fn(|i| (i as u8).wrapping_mul(31) ^ 0x5a);
    let r = {
        let master = Arc::new(MasterKey::from_bytes(&master_bytes));
        let before = store(&server, &master).await;
        let r = seal(&master);
        before.put(r.record.clone(), 60_000, 0).await.unwrap();
        // A wrong PIN before the restart still counts after it.
        assert_eq!(
            before.unlock(&r.id, &r.token, &wrong(&r.pin), 0).await,
            Err(UnlockError::WrongPin { tries_left: 2 })
        );
        r
        // `before` and its master key are dropped: the relay is gone.
    };
    let master = Arc::new(MasterKey::from_bytes(&master_bytes));
    let after = store(&server, &master).await;
    assert_eq!(
        after.unlock(&r.id, &r.token, &wrong(&r.pin), 0).await,
        Err(UnlockError::WrongPin { tries_left: 1 })
    );
    let c = after.unlock(&r.id, &r.token, &r.pin, 0).await.unwrap();
    assert_eq!(c, card());
}

/// One relay's control API over a shared Redis store.
struct Node {
    state: tonewall::net::api::ApiState,
    router: axum::Router,
}

const DESK: &str = "dddddddddddddddddddddddd";

impl Node {
    async fn start(server: &RedisServer, master: &Arc<MasterKey>, prefix: &str) -> Node {
        use tonewall::net::api::{ApiSettings, ApiState, ApiTokens, router};
        use tonewall::net::clock::Clock;
        use tonewall::payment::redis_store::AnyStore;
        let store = store(server, master).await.with_prefix(prefix);
        let settings = ApiSettings::new(ApiTokens::parse(&format!("desk:{DESK}:payment")).unwrap());
        let state = ApiState::new(
            settings,
            AnyStore::Redis(store),
            master.clone(),
            Clock::system(),
        );
        Node {
            router: router(state.clone()),
            state,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {DESK}"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            ))
            .unwrap();
        let resp = self.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }
}

/// Several relays behind a SIP load balancer: the agent's desktop creates the session on one,
/// the looped call lands on another, the integration unlocks through a third path.
#[tokio::test]
async fn a_session_created_on_one_relay_is_captured_on_another() {
    use tonewall::digit::{Digit, DigitSource};
    use tonewall::ids::CallId;

    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let a = Node::start(&server, &master, "t:").await;
    let b = Node::start(&server, &master, "t:").await;

    let (st, created) = a
        .call(
            "POST",
            "/v1/sessions",
            Some(serde_json::json!({"agent": "agent-7"})),
        )
        .await;
    assert_eq!(st, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let locator = created["locator"].as_str().unwrap().to_string();

    // GetAgent on the other relay reads the directory without taking the session.
    let (st, body) = b
        .call("GET", &format!("/v1/locators/{locator}"), None)
        .await;
    assert_eq!(
        (st, body["agent"].as_str()),
        (200, Some("agent-7")),
        "{body}"
    );

    // The loop call lands on B: B takes the session over and captures it.
    let (sid, agent) = b.state.locate(&locator).await.expect("B finds A's session");
    assert_eq!((sid.to_string(), agent.as_str()), (id.clone(), "agent-7"));
    // A can no longer bind it: exactly one relay captures a session.
    let (st, body) = a
        .call(
            "POST",
            &format!("/v1/sessions/{id}/bind"),
            Some(serde_json::json!({"call_id": "1"})),
        )
        .await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    b.state.bind_call(sid, CallId(2), true).await.unwrap();
    for (i, c) in "4111111111111111#1230123".chars().enumerate() {
        b.state
            .feed_digit(
                CallId(2),
                Digit::from_char(c).unwrap(),
                DigitSource::Rfc4733,
                1_000 + 200 * i as u64,
            )
            .await
            .unwrap();
    }
    let (_, view) = b.call("GET", &format!("/v1/sessions/{id}"), None).await;
    assert_eq!(view["state"], "sealed", "{view}");

    // The payment integration reaches A: the sealed record is in the shared store.
    let unlock = serde_json::json!({
        "token": created["token"].as_str().unwrap(),
        "pin": created["pin"].as_str().unwrap(),
    });
    let (st, card) = a
        .call(
            "POST",
            &format!("/v1/sessions/{id}/unlock"),
            Some(unlock.clone()),
        )
        .await;
    assert_eq!((st, card["pan"].as_str()), (200, Some("4111111111111111")));
    let (st, _) = b
        .call("POST", &format!("/v1/sessions/{id}/unlock"), Some(unlock))
        .await;
    assert_eq!(st, 410, "a second unlock on another relay is refused");
}

#[tokio::test]
async fn a_cancelled_session_leaves_the_shared_directory() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let a = Node::start(&server, &master, "c:").await;
    let b = Node::start(&server, &master, "c:").await;
    let (_, created) = a
        .call(
            "POST",
            "/v1/sessions",
            Some(serde_json::json!({"agent": "agent-9"})),
        )
        .await;
    let id = created["id"].as_str().unwrap();
    let locator = created["locator"].as_str().unwrap();
    let (st, _) = a.call("DELETE", &format!("/v1/sessions/{id}"), None).await;
    assert!(st == 200 || st == 204, "{st}");
    a.state.tick().await;
    assert!(b.state.locate(locator).await.is_none());
    let (st, _) = b
        .call("GET", &format!("/v1/locators/{locator}"), None)
        .await;
    assert_eq!(st, 404);
}

// ---------------------------------------------------------------------------------------------
// A Redis writer (someone who can write to the store but holds no master key) changes a record
// or a directory entry. Each change is refused, and a refused record is destroyed.

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn hset(server: &RedisServer, id: &SessionId, field: &str, value: &str) {
    let mut c = raw(server).await;
    let _: i64 = redis::cmd("HSET")
        .arg(format!("tonewall:vault:{id}"))
        .arg(field)
        .arg(value)
        .query_async(&mut c)
        .await
        .unwrap();
}

async fn hget(server: &RedisServer, id: &SessionId, field: &str) -> Option<String> {
    let mut c = raw(server).await;
    redis::cmd("HGET")
        .arg(format!("tonewall:vault:{id}"))
        .arg(field)
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_redis_writer_cannot_reset_tries() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let a = store(&server, &master).await;
    let r = seal(&master);
    a.put(r.record.clone(), 60_000, 0).await.unwrap();
    let bad = wrong(&r.pin);
    for left in [2, 1] {
        assert_eq!(
            a.unlock(&r.id, &r.token, &bad, 0).await,
            Err(UnlockError::WrongPin { tries_left: left })
        );
    }
    // Back to full tries, read by a relay that has never seen the record: the MAC says no.
    hset(&server, &r.id, "tries", "0").await;
    let b = store(&server, &master).await;
    assert_eq!(
        b.unlock(&r.id, &r.token, &bad, 0).await,
        Err(UnlockError::Corrupt)
    );
    assert_eq!(b.tampered_total(), 1);
    // Refused means destroyed: not even the right PIN opens it now.
    assert_eq!(
        a.unlock(&r.id, &r.token, &r.pin, 0).await,
        Err(UnlockError::Destroyed)
    );
}

#[tokio::test]
async fn a_redis_writer_cannot_roll_a_record_back_on_the_relay_that_counted() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let a = store(&server, &master).await;
    let r = seal(&master);
    a.put(r.record.clone(), 60_000, 0).await.unwrap();
    // The writer keeps the fresh state (tries 0 and its genuine MAC) ...
    let (tries0, mac0) = (
        hget(&server, &r.id, "tries").await.unwrap(),
        hget(&server, &r.id, "mac").await.unwrap(),
    );
    let bad = wrong(&r.pin);
    assert_eq!(
        a.unlock(&r.id, &r.token, &bad, 0).await,
        Err(UnlockError::WrongPin { tries_left: 2 })
    );
    // ... and puts it back after a wrong PIN.
    hset(&server, &r.id, "tries", &tries0).await;
    hset(&server, &r.id, "mac", &mac0).await;
    assert_eq!(
        a.unlock(&r.id, &r.token, &bad, 0).await,
        Err(UnlockError::Corrupt)
    );
    assert_eq!(a.tampered_total(), 1);
}

#[tokio::test]
async fn a_redis_writer_cannot_swap_the_token_hash_or_extend_the_expiry() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let s = store(&server, &master).await;

    // The writer's own token: with `th` swapped it would pass the token check.
    let r = seal(&master);
    s.put(r.record.clone(), 60_000, 0).await.unwrap();
    let mine = RetrievalToken::generate();
    hset(&server, &r.id, "th", &mine.hash().to_hex()).await;
    assert_eq!(
        s.unlock(&r.id, &mine, &wrong(&r.pin), 0).await,
        Err(UnlockError::Corrupt)
    );
    assert_eq!(
        s.unlock(&r.id, &r.token, &r.pin, 0).await,
        Err(UnlockError::Destroyed)
    );

    // A longer life.
    let r = seal(&master);
    s.put(r.record.clone(), 60_000, 0).await.unwrap();
    hset(&server, &r.id, "exp", "999999999999999").await;
    assert_eq!(
        s.unlock(&r.id, &r.token, &r.pin, 0).await,
        Err(UnlockError::Corrupt)
    );

    // Redis's TTL removed (PERSIST): the record still ends at its authenticated expiry.
    let r = seal(&master);
    s.put(r.record.clone(), 60_000, 0).await.unwrap();
    let mut c = raw(&server).await;
    let _: i64 = redis::cmd("PERSIST")
        .arg(format!("tonewall:vault:{}", r.id))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        s.unlock(&r.id, &r.token, &r.pin, 60_000).await,
        Err(UnlockError::Expired)
    );
    assert_eq!(s.tampered_total(), 2);
}

#[tokio::test]
async fn a_redis_writer_cannot_redirect_a_shared_session() {
    let server = RedisServer::start();
    let master = Arc::new(MasterKey::generate());
    let a = Node::start(&server, &master, "d:").await;
    let b = Node::start(&server, &master, "d:").await;
    let mut c = raw(&server).await;
    for (field, value) in [
        ("agent", serde_json::json!("intruder-1")),
        ("expires_at_ms", serde_json::json!(u64::MAX / 2)),
    ] {
        let (st, created) = a
            .call(
                "POST",
                "/v1/sessions",
                Some(serde_json::json!({"agent": "agent-7"})),
            )
            .await;
        assert_eq!(st, 201, "{created}");
        let locator = created["locator"].as_str().unwrap().to_string();
        let key = format!("d:locator:{locator}");
        let entry: String = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&entry).unwrap();
        v[field] = value;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(v.to_string())
            .arg("KEEPTTL")
            .query_async(&mut c)
            .await
            .unwrap();
        // GetAgent on another relay does not believe it ...
        let (st, body) = b
            .call("GET", &format!("/v1/locators/{locator}"), None)
            .await;
        assert_ne!(st, 200, "{field}: {body}");
        // ... and the loop call landing there is not sent to the writer's agent.
        assert!(b.state.locate(&locator).await.is_none(), "{field}");
    }
}
