//! The Redis vault store, so several relays share sealed records: whichever node the payment
//! integration reaches can unlock, and only one of them ever does.
//!
//! Layout: one hash per record, `{prefix}vault:{session}` with `rec` (the sealed record as
//! JSON), `th` (token hash), `tries`, `exp` (when it expires, ms), `mac`, and after the end
//! `gone` (why). The TTL is Redis's own (`PEXPIRE` set with the record, in the same script), so
//! a record outlives a relay restart and dies on time without a sweeper; `exp` is checked too,
//! because a Redis writer can remove a TTL.
//!
//! Redis is trusted to keep records, not to be honest about them: `mac` is HMAC-SHA256 (key
//! derived from the master key with HKDF, its own label) over the session id, `rec`, `th`,
//! `tries` and `exp`, checked on every read and recomputed by the relay for every try it counts.
//! A writer who resets `tries`, swaps `th` for the hash of a token they hold, or extends `exp`
//! gets a record that is refused and destroyed. A writer can still put back a whole earlier
//! state (a MAC cannot tell old from new): each relay remembers the tries it counted and the
//! records it saw end, until they expire, and refuses a record that went backwards, so a
//! rollback gains at most one relay's worth of tries per relay that never saw the record.
//!
//! The session directory (several relays behind a SIP load balancer): `{prefix}locator:{locator}`
//! holds a session still waiting for its call (`payment::directory`, PIN wrapped), set with
//! `NX` so no two relays hand out one locator, expiring with the session, and taken with
//! `GETDEL` by the one relay that binds a call to it.
//!
//! Unlock, with the decryption on the relay (Redis never sees a PIN or a key):
//! 1. read the record, check its MAC and expiry, compare the token in constant time (a wrong
//!    token costs no try);
//! 2. BEGIN script: count the try *before* opening (a relay that dies mid-unlock has still
//!    spent it): it writes the next `tries` and its MAC only if `mac` is still the one read in
//!    step 1 (a compare-and-set, so two relays never count the same try; the loser reads
//!    again);
//! 3. open locally; on success the TAKE script atomically swaps the record for a tombstone and
//!    only the relay whose TAKE found the record releases the card; on a wrong PIN at the last
//!    try the BURY script destroys it.
//!
//! Only the async shell around the pure reply parsing lives here; the parsing is unit-tested,
//! the round trips run against a real `redis-server` in `tests/vault_redis.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, Script};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::payment::hex;

use crate::payment::card::CardData;
use crate::payment::pin::Pin;
use crate::payment::session::{Locator, RetrievalToken, SessionId, TokenHash};
use crate::payment::store::{
    Gone, MemoryStore, StoreError, UnlockError, VaultStore, after_wrong_pin,
};
use crate::payment::vault::{self, MasterKey, OpenError, SealedRecord};

/// Fails if the key exists; else writes the record fields and the TTL together.
const PUT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'th', ARGV[2], 'tries', 0, 'exp', ARGV[4], 'mac', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Counts a try: `tries` = ARGV[2] with its MAC ARGV[3], only if the MAC is still ARGV[1] (the
/// state the relay checked). 1 if counted, 0 if the record changed meanwhile.
const BEGIN: &str = r"
if redis.call('HGET', KEYS[1], 'mac') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'tries', ARGV[2], 'mac', ARGV[3])
return 1
";

/// Reads of a record lost to a concurrent try before giving up (each loss means another relay
/// counted a try, so this bounds nothing an attacker controls).
const RACE_RETRIES: usize = 8;

const MAC_KDF_LABEL: &[u8] = b"tonewall redis record v1 mac";
const MAC_LABEL: &[u8] = b"tonewall redis record v1";

/// Replaces the record by a tombstone (`gone` = ARGV[1]) if it is still there; the TTL stays
/// because the key is never emptied (`gone` is set before the record fields go).
/// Returns 'taken' to exactly one caller, else why it is gone.
const TAKE: &str = r"
if redis.call('HEXISTS', KEYS[1], 'rec') == 0 then
  return redis.call('HGET', KEYS[1], 'gone') or 'none'
end
redis.call('HSET', KEYS[1], 'gone', ARGV[1])
redis.call('HDEL', KEYS[1], 'rec', 'th', 'mac', 'exp')
return 'taken'
";

/// The key of the record MAC, derived from the master key (RFC 5869), never stored.
pub struct RecordMac(Zeroizing<[u8; 32]>);

impl RecordMac {
    pub fn new(master: &MasterKey) -> RecordMac {
        let mut key = Zeroizing::new([0u8; 32]);
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit: expand cannot fail.
        let _ = Hkdf::<Sha256>::new(None, master.expose()).expand(MAC_KDF_LABEL, &mut key[..]);
        RecordMac(key)
    }

    fn hmac(&self, id: &SessionId, f: &Authenticated<'_>) -> Option<Hmac<Sha256>> {
        // HMAC takes keys of any length: this never fails.
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0[..]).ok()?;
        // Length-prefixed fields: no two different records feed the same bytes.
        let id = id.to_string();
        let tries = f.tries.to_string();
        let exp = f.exp_ms.to_string();
        for part in [
            MAC_LABEL,
            id.as_bytes(),
            f.rec.as_bytes(),
            f.th.as_bytes(),
            tries.as_bytes(),
            exp.as_bytes(),
        ] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        Some(m)
    }

    /// The MAC, hex, as stored in `mac`.
    pub fn tag(&self, id: &SessionId, f: &Authenticated<'_>) -> Option<String> {
        Some(hex::encode(&self.hmac(id, f)?.finalize().into_bytes()))
    }

    /// Whether `mac` (hex) is this record's MAC; compared in constant time.
    pub fn verify(&self, id: &SessionId, f: &Authenticated<'_>, mac: &str) -> bool {
        match (hex::decode(mac), self.hmac(id, f)) {
            (Ok(m), Some(h)) => h.verify_slice(&m).is_ok(),
            _ => false,
        }
    }
}

/// The fields of a record the MAC covers, as Redis holds them.
#[derive(Clone, Copy, Debug)]
pub struct Authenticated<'a> {
    pub rec: &'a str,
    pub th: &'a str,
    pub tries: u32,
    pub exp_ms: u64,
}

/// What this relay knows of a record whatever Redis says later: the tries it counted and
/// whether it saw the record end. Kept until the record's expiry.
#[derive(Clone, Copy, Debug)]
struct Seen {
    tries: u32,
    ended: bool,
    exp_ms: u64,
}

/// Records remembered at most; past this the oldest-expiring are forgotten first.
const SEEN_MAX: usize = 100_000;
/// How long a record seen to end is remembered when its expiry is not known (a record's TTL
/// is minutes).
const ENDED_KEPT_MS: u64 = 3_600_000;

/// What TAKE said: `Ok(())` for the one caller that took the record.
pub fn parse_take(reply: &str) -> Result<(), UnlockError> {
    match reply {
        "taken" => Ok(()),
        "none" => Err(UnlockError::NotFound),
        other => Err(Gone::parse(other).map(Gone::error).unwrap_or_else(|| {
            UnlockError::Backend("unexpected reply from the vault script".into())
        })),
    }
}

/// The hash key of a session's record.
pub fn record_key(prefix: &str, id: &SessionId) -> String {
    format!("{prefix}vault:{id}")
}

/// How long after a failed connection attempt the next one may be made: while Redis is
/// down, payment operations fail at once instead of each waiting for a connect timeout.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// How often the housekeeping pings Redis (so that `up` is true to the minute and the
/// connection comes back before a payment needs it).
const PING_EVERY_MS: u64 = 1_000;

/// The connection to Redis, made again after it broke. A `MultiplexedConnection` does not
/// reconnect by itself: once Redis restarts, every request on the old one fails. So an error
/// that says the connection is gone drops it, and the next operation (or the housekeeping's
/// ping) connects again, at most once per [`RECONNECT_AFTER`].
struct Link {
    client: redis::Client,
    cfg: AsyncConnectionConfig,
    conn: Mutex<Option<MultiplexedConnection>>,
    /// No connection attempt before this, after one failed.
    retry_at: Mutex<Option<Instant>>,
    up: AtomicBool,
    errors: AtomicU64,
    last_ping_ms: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Link {
    /// The live connection, or a new one.
    async fn get(&self) -> Result<MultiplexedConnection, String> {
        if let Some(c) = lock(&self.conn).clone() {
            return Ok(c);
        }
        if lock(&self.retry_at).is_some_and(|at| Instant::now() < at) {
            return Err("not connected to Redis".into());
        }
        match self
            .client
            .get_multiplexed_async_connection_with_config(&self.cfg)
            .await
        {
            Ok(c) => {
                *lock(&self.conn) = Some(c.clone());
                *lock(&self.retry_at) = None;
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("connected to Redis");
                }
                Ok(c)
            }
            Err(e) => {
                *lock(&self.retry_at) = Some(Instant::now() + RECONNECT_AFTER);
                self.errors.fetch_add(1, Ordering::Relaxed);
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot connect to Redis; payment operations fail until it is back");
                }
                Err(e.to_string())
            }
        }
    }

    /// An operation failed: counted; a broken connection is dropped so the next one reconnects.
    fn failed(&self, e: &redis::RedisError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.is_unrecoverable_error()
        {
            *lock(&self.conn) = None;
            if self.up.swap(false, Ordering::Relaxed) {
                tracing::warn!(error = %e, "lost the connection to Redis; payment operations fail until it is back");
            }
        }
    }
}

/// Deletes a directory entry only if it still names this session (the locator may have been
/// handed to a newer session since).
const WITHDRAW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.find(v, ARGV[1], 1, true) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// The directory key of a locator.
pub fn locator_key(prefix: &str, locator: &Locator) -> String {
    format!("{prefix}locator:{locator}")
}

/// Sealed records in Redis.
#[derive(Clone)]
pub struct RedisStore {
    link: Arc<Link>,
    master: Arc<MasterKey>,
    mac: Arc<RecordMac>,
    /// Records this relay counted tries on or saw end (rollback check).
    seen: Arc<Mutex<HashMap<SessionId, Seen>>>,
    /// Records refused because Redis held something this relay did not write.
    tampered: Arc<AtomicU64>,
    max_tries: u32,
    prefix: String,
    put: Arc<Script>,
    begin: Arc<Script>,
    take: Arc<Script>,
    withdraw: Arc<Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("max_tries", &self.max_tries)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (bounded: 2 s to connect, 2 s per reply). Keys go under `tonewall:`. Only a
    /// malformed URL is an error: when Redis cannot be reached the store starts without a
    /// connection (calls and scrubbing need none) and makes one when Redis answers.
    pub async fn connect(
        url: &str,
        master: Arc<MasterKey>,
        max_tries: u32,
    ) -> Result<RedisStore, StoreError> {
        // The URL may carry a password: never echo it.
        let client = redis::Client::open(url)
            .map_err(|_| StoreError::Backend("invalid vault.redis_url".into()))?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let link = Arc::new(Link {
            client,
            cfg,
            conn: Mutex::new(None),
            retry_at: Mutex::new(None),
            up: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            last_ping_ms: AtomicU64::new(0),
        });
        // The first connection now, so that a Redis down at start-up is said at once.
        let _ = link.get().await;
        Ok(RedisStore {
            link,
            mac: Arc::new(RecordMac::new(&master)),
            master,
            seen: Arc::new(Mutex::new(HashMap::new())),
            tampered: Arc::new(AtomicU64::new(0)),
            max_tries: max_tries.max(1),
            prefix: "tonewall:".into(),
            put: Arc::new(Script::new(PUT)),
            begin: Arc::new(Script::new(BEGIN)),
            take: Arc::new(Script::new(TAKE)),
            withdraw: Arc::new(Script::new(WITHDRAW)),
        })
    }

    /// Another key prefix (several deployments or tests on one Redis).
    pub fn with_prefix(mut self, prefix: &str) -> RedisStore {
        self.prefix = prefix.to_string();
        self
    }

    fn key(&self, id: &SessionId) -> String {
        record_key(&self.prefix, id)
    }

    fn backend(&self, e: redis::RedisError) -> StoreError {
        self.link.failed(&e);
        StoreError::Backend(e.to_string())
    }

    fn unlock_backend(&self, e: redis::RedisError) -> UnlockError {
        self.link.failed(&e);
        UnlockError::Backend(e.to_string())
    }

    /// Whether the last exchange with Redis (an operation or the housekeeping's ping) worked.
    pub fn up(&self) -> bool {
        self.link.up.load(Ordering::Relaxed)
    }

    /// Operations and connection attempts that failed since start.
    pub fn errors_total(&self) -> u64 {
        self.link.errors.load(Ordering::Relaxed)
    }

    /// PING, at most once per [`PING_EVERY_MS`] (the housekeeping calls it far more often):
    /// keeps [`Self::up`] true to the second and reconnects before a payment needs it.
    async fn ping(&self, now_ms: u64) {
        let last = self.link.last_ping_ms.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(PING_EVERY_MS) {
            return;
        }
        self.link.last_ping_ms.store(now_ms, Ordering::Relaxed);
        let Ok(mut conn) = self.link.get().await else {
            return;
        };
        let pong: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        match pong {
            Ok(_) => {
                if !self.link.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis answers again");
                }
            }
            Err(e) => self.link.failed(&e),
        }
    }

    /// Files a session that waits for its call under its locator, unless another relay's live
    /// session holds that locator (then false: pick another locator). Expires with the session.
    pub async fn publish_session(
        &self,
        locator: &Locator,
        entry: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.link.get().await.map_err(StoreError::Backend)?;
        let set: Option<String> = redis::cmd("SET")
            .arg(locator_key(&self.prefix, locator))
            .arg(entry)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.backend(e))?;
        Ok(set.is_some())
    }

    /// Takes the session filed under `locator` out of the directory (GETDEL: exactly one relay
    /// gets it).
    pub async fn claim_session(&self, locator: &Locator) -> Result<Option<String>, StoreError> {
        let mut conn = self.link.get().await.map_err(StoreError::Backend)?;
        redis::cmd("GETDEL")
            .arg(locator_key(&self.prefix, locator))
            .query_async(&mut conn)
            .await
            .map_err(|e| self.backend(e))
    }

    /// Reads the entry without taking it (GetAgent over HTTP on another node).
    pub async fn peek_session(&self, locator: &Locator) -> Result<Option<String>, StoreError> {
        let mut conn = self.link.get().await.map_err(StoreError::Backend)?;
        conn.get(locator_key(&self.prefix, locator))
            .await
            .map_err(|e| self.backend(e))
    }

    /// Removes the entry of session `id` (it ended or was taken here before anyone claimed it).
    pub async fn withdraw_session(
        &self,
        locator: &Locator,
        id: &SessionId,
    ) -> Result<(), StoreError> {
        let mut conn = self.link.get().await.map_err(StoreError::Backend)?;
        let _: i64 = self
            .withdraw
            .key(locator_key(&self.prefix, locator))
            .arg(id.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.backend(e))?;
        Ok(())
    }

    async fn bury(&self, key: &str, why: Gone) -> Result<(), UnlockError> {
        let mut conn = self.link.get().await.map_err(UnlockError::Backend)?;
        let _: String = self
            .take
            .key(key)
            .arg(why.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.unlock_backend(e))?;
        Ok(())
    }
}

impl RedisStore {
    /// Records refused so far because their MAC, expiry or tries did not hold up.
    pub fn tampered_total(&self) -> u64 {
        self.tampered.load(Ordering::Relaxed)
    }

    /// A record that is not what this relay wrote: destroyed, counted, logged (by session id
    /// only; nothing of the record is shown).
    async fn refuse_tampered(
        &self,
        key: &str,
        id: &SessionId,
        why: &'static str,
        now_ms: u64,
    ) -> UnlockError {
        self.tampered.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(session = %id, check = why, "vault record in Redis was altered; destroyed");
        self.remember(id, None, true, now_ms.saturating_add(ENDED_KEPT_MS));
        if let Err(e) = self.bury(key, Gone::Destroyed).await {
            tracing::warn!(session = %id, error = %e, "could not destroy an altered vault record");
        }
        UnlockError::Corrupt
    }

    /// Whether Redis shows less than this relay knows: fewer tries than it counted, or a
    /// record it saw end.
    fn went_back(&self, id: &SessionId, tries: u32, now_ms: u64) -> bool {
        let Ok(seen) = self.seen.lock() else {
            return false;
        };
        seen.get(id)
            .is_some_and(|s| s.exp_ms > now_ms && (s.ended || tries < s.tries))
    }

    /// Notes the tries counted (`Some`) or that the record ended, until `exp_ms`.
    fn remember(&self, id: &SessionId, tries: Option<u32>, ended: bool, exp_ms: u64) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.len() >= SEEN_MAX && !seen.contains_key(id) {
            // Bounded: forget the records expiring first.
            let mut exps: Vec<u64> = seen.values().map(|s| s.exp_ms).collect();
            exps.sort_unstable();
            let cut = exps.get(SEEN_MAX / 10).copied().unwrap_or(u64::MAX);
            seen.retain(|_, s| s.exp_ms > cut);
        }
        let e = seen.entry(*id).or_insert(Seen {
            tries: 0,
            ended: false,
            exp_ms,
        });
        if let Some(t) = tries {
            e.tries = e.tries.max(t);
        }
        e.ended |= ended;
        e.exp_ms = e.exp_ms.max(exp_ms);
    }

    /// Drops what was remembered of records past their expiry.
    fn forget_expired(&self, now_ms: u64) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.retain(|_, s| s.exp_ms > now_ms);
        }
    }
}

/// A vault record as Redis holds it, its MAC, try counter and expiry checked and its token
/// matched: what an unlock may believe.
struct CheckedRecord {
    rec: String,
    th: String,
    tries: u32,
    exp_ms: u64,
    mac: String,
}

impl RedisStore {
    /// Reads the record and checks it before anything in it is believed: a tampered one is
    /// refused (and counted), an expired one deleted, a wrong token refused (costing no try).
    async fn read_checked(
        &self,
        conn: &mut MultiplexedConnection,
        key: &str,
        id: &SessionId,
        token: &RetrievalToken,
        now_ms: u64,
    ) -> Result<CheckedRecord, UnlockError> {
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let (rec, th, tries, exp, mac, gone): Row = conn
            .hmget(key, &["rec", "th", "tries", "exp", "mac", "gone"])
            .await
            .map_err(|e| self.unlock_backend(e))?;
        let Some(rec) = rec else {
            return Err(match gone {
                Some(why) => Gone::parse(&why).map_or(UnlockError::NotFound, Gone::error),
                None => UnlockError::NotFound,
            });
        };
        let (Some(th), Some(tries), Some(exp), Some(mac)) = (th, tries, exp, mac) else {
            return Err(self.refuse_tampered(key, id, "fields", now_ms).await);
        };
        let (Ok(tries), Ok(exp_ms)) = (tries.parse::<u32>(), exp.parse::<u64>()) else {
            return Err(self.refuse_tampered(key, id, "fields", now_ms).await);
        };
        let fields = Authenticated {
            rec: &rec,
            th: &th,
            tries,
            exp_ms,
        };
        if !self.mac.verify(id, &fields, &mac) {
            return Err(self.refuse_tampered(key, id, "mac", now_ms).await);
        }
        if self.went_back(id, tries, now_ms) {
            return Err(self.refuse_tampered(key, id, "rollback", now_ms).await);
        }
        if now_ms >= exp_ms {
            let _ = redis::cmd("DEL").arg(key).query_async::<i64>(conn).await;
            return Err(UnlockError::Expired);
        }
        // Compared in constant time.
        let hash = TokenHash::from_hex(&th).ok_or(UnlockError::Corrupt)?;
        if !hash.matches(token) {
            return Err(UnlockError::BadToken);
        }
        Ok(CheckedRecord {
            rec,
            th,
            tries,
            exp_ms,
            mac,
        })
    }
}

impl VaultStore for RedisStore {
    async fn put(&self, record: SealedRecord, ttl_ms: u64, now_ms: u64) -> Result<(), StoreError> {
        let json = serde_json::to_string(&record)
            .map_err(|_| StoreError::Backend("record does not serialise".into()))?;
        let ttl_ms = ttl_ms.max(1);
        let exp_ms = now_ms.saturating_add(ttl_ms);
        let th = record.token_hash().to_hex();
        let fields = Authenticated {
            rec: &json,
            th: &th,
            tries: 0,
            exp_ms,
        };
        let mac = self
            .mac
            .tag(&record.session(), &fields)
            .ok_or_else(|| StoreError::Backend("record MAC failed".into()))?;
        let mut conn = self.link.get().await.map_err(StoreError::Backend)?;
        let created: i64 = self
            .put
            .key(self.key(&record.session()))
            .arg(&json)
            .arg(&th)
            .arg(ttl_ms)
            .arg(exp_ms)
            .arg(mac)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.backend(e))?;
        if created == 1 {
            Ok(())
        } else {
            Err(StoreError::Duplicate)
        }
    }

    async fn unlock(
        &self,
        id: &SessionId,
        token: &RetrievalToken,
        pin: &Pin,
        now_ms: u64,
    ) -> Result<CardData, UnlockError> {
        let key = self.key(id);
        let mut conn = self.link.get().await.map_err(UnlockError::Backend)?;
        let mut counted = None;
        for _ in 0..RACE_RETRIES {
            // 1. The record as Redis holds it, checked before anything is believed.
            let r = self
                .read_checked(&mut conn, &key, id, token, now_ms)
                .await?;
            if r.tries >= self.max_tries {
                self.bury(&key, Gone::TriesExhausted).await?;
                return Err(UnlockError::TriesExhausted);
            }
            // 2. Count the try before opening, if nobody counted one since step 1.
            let next = Authenticated {
                rec: &r.rec,
                th: &r.th,
                tries: r.tries + 1,
                exp_ms: r.exp_ms,
            };
            let next_mac = self.mac.tag(id, &next).ok_or(UnlockError::Corrupt)?;
            let done: i64 = self
                .begin
                .key(&key)
                .arg(&r.mac)
                .arg(next.tries)
                .arg(next_mac)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| self.unlock_backend(e))?;
            if done == 1 {
                self.remember(id, Some(next.tries), false, r.exp_ms);
                counted = Some((next.tries, r.exp_ms, r.rec));
                break;
            }
        }
        let Some((tries, exp_ms, json)) = counted else {
            return Err(UnlockError::Backend(
                "the vault record kept changing under this unlock".into(),
            ));
        };
        let record: SealedRecord = serde_json::from_str(&json).map_err(|_| UnlockError::Corrupt)?;
        // 3. Open here; only the relay that takes the record releases the card.
        match vault::open(&record, &self.master, pin, id) {
            Ok(card) => {
                let reply: String = self
                    .take
                    .key(&key)
                    .arg(Gone::Unlocked.as_str())
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| self.unlock_backend(e))?;
                self.remember(id, None, true, exp_ms);
                // On Err the card drops here and zeroizes: another relay took it first.
                parse_take(&reply).map(|()| card)
            }
            Err(OpenError::Rejected) => {
                let verdict = after_wrong_pin(tries, self.max_tries);
                if verdict == UnlockError::TriesExhausted {
                    self.remember(id, None, true, exp_ms);
                    self.bury(&key, Gone::TriesExhausted).await?;
                }
                Err(verdict)
            }
            Err(OpenError::Malformed | OpenError::Version) => Err(UnlockError::Corrupt),
        }
    }

    async fn destroy(&self, id: &SessionId, now_ms: u64) -> Result<bool, StoreError> {
        let mut conn = self.link.get().await.map_err(StoreError::Backend)?;
        let reply: String = self
            .take
            .key(self.key(id))
            .arg(Gone::Destroyed.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.backend(e))?;
        self.remember(id, None, true, now_ms.saturating_add(ENDED_KEPT_MS));
        Ok(reply == "taken")
    }

    /// Redis expires keys itself; only this relay's memory of records is trimmed here.
    async fn purge_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        self.forget_expired(now_ms);
        self.ping(now_ms).await;
        Ok(0)
    }
}

/// The store the config names, behind one type for the shell.
#[derive(Debug)]
pub enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
}

/// The session directory: only a shared (Redis) store has one; with the in-memory store the
/// relay's own table is the whole truth, so these are no-ops.
impl AnyStore {
    pub fn shares_sessions(&self) -> bool {
        matches!(self, AnyStore::Redis(_))
    }

    pub async fn publish_session(
        &self,
        locator: &Locator,
        entry: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        match self {
            AnyStore::Memory(_) => Ok(true),
            AnyStore::Redis(s) => s.publish_session(locator, entry, ttl_ms).await,
        }
    }

    pub async fn claim_session(&self, locator: &Locator) -> Result<Option<String>, StoreError> {
        match self {
            AnyStore::Memory(_) => Ok(None),
            AnyStore::Redis(s) => s.claim_session(locator).await,
        }
    }

    pub async fn peek_session(&self, locator: &Locator) -> Result<Option<String>, StoreError> {
        match self {
            AnyStore::Memory(_) => Ok(None),
            AnyStore::Redis(s) => s.peek_session(locator).await,
        }
    }

    pub async fn withdraw_session(
        &self,
        locator: &Locator,
        id: &SessionId,
    ) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(_) => Ok(()),
            AnyStore::Redis(s) => s.withdraw_session(locator, id).await,
        }
    }
}

impl VaultStore for AnyStore {
    async fn put(&self, record: SealedRecord, ttl_ms: u64, now_ms: u64) -> Result<(), StoreError> {
        match self {
            AnyStore::Memory(s) => s.put(record, ttl_ms, now_ms).await,
            AnyStore::Redis(s) => s.put(record, ttl_ms, now_ms).await,
        }
    }

    async fn unlock(
        &self,
        id: &SessionId,
        token: &RetrievalToken,
        pin: &Pin,
        now_ms: u64,
    ) -> Result<CardData, UnlockError> {
        match self {
            AnyStore::Memory(s) => s.unlock(id, token, pin, now_ms).await,
            AnyStore::Redis(s) => s.unlock(id, token, pin, now_ms).await,
        }
    }

    async fn destroy(&self, id: &SessionId, now_ms: u64) -> Result<bool, StoreError> {
        match self {
            AnyStore::Memory(s) => s.destroy(id, now_ms).await,
            AnyStore::Redis(s) => s.destroy(id, now_ms).await,
        }
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        match self {
            AnyStore::Memory(s) => s.purge_expired(now_ms).await,
            AnyStore::Redis(s) => s.purge_expired(now_ms).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_replies_parse() {
        assert_eq!(parse_take("taken"), Ok(()));
        assert_eq!(parse_take("unlocked"), Err(UnlockError::AlreadyUnlocked));
        assert_eq!(parse_take("exhausted"), Err(UnlockError::TriesExhausted));
        assert_eq!(parse_take("destroyed"), Err(UnlockError::Destroyed));
        assert_eq!(parse_take("none"), Err(UnlockError::NotFound));
        assert!(matches!(parse_take("??"), Err(UnlockError::Backend(_))));
        for g in [Gone::Unlocked, Gone::TriesExhausted, Gone::Destroyed] {
            assert_eq!(Gone::parse(g.as_str()), Some(g));
        }
    }

    #[test]
    fn the_mac_covers_every_field_and_the_key() {
        let master = MasterKey::generate();
        let mac = RecordMac::new(&master);
        let id = SessionId::generate();
        let f = Authenticated {
            rec: "{}",
            th: "ab",
            tries: 1,
            exp_ms: 60_000,
        };
        let tag = mac.tag(&id, &f).unwrap();
        assert!(mac.verify(&id, &f, &tag));
        let changed = [
            Authenticated { rec: "{ }", ..f },
            Authenticated { th: "ac", ..f },
            Authenticated { tries: 0, ..f },
            Authenticated {
                exp_ms: 60_001,
                ..f
            },
        ];
        for g in &changed {
            assert!(!mac.verify(&id, g, &tag), "{g:?}");
        }
        assert!(!mac.verify(&SessionId::generate(), &f, &tag));
        assert!(!RecordMac::new(&MasterKey::generate()).verify(&id, &f, &tag));
        assert!(!mac.verify(&id, &f, "zz"));
    }

    #[test]
    fn keys_are_namespaced_by_session() {
        let id = SessionId::parse("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(
            record_key("tonewall:", &id),
            "tonewall:vault:00112233445566778899aabbccddeeff"
        );
    }
}
