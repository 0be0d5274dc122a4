//! The Redis vault store, so several relays share sealed records: whichever node the payment
//! integration reaches can unlock, and only one of them ever does.
//!
//! Layout: one hash per record, `{prefix}vault:{session}` with `rec` (the sealed record as
//! JSON), `th` (token hash), `tries`, and after the end `gone` (why). The TTL is Redis's own
//! (`PEXPIRE` set with the record, in the same script), so a record outlives a relay restart
//! and dies on time without a sweeper; `now_ms` is not needed here.
//!
//! The session directory (several relays behind a SIP load balancer): `{prefix}locator:{locator}`
//! holds a session still waiting for its call (`payment::directory`, PIN wrapped), set with
//! `NX` so no two relays hand out one locator, expiring with the session, and taken with
//! `GETDEL` by the one relay that binds a call to it.
//!
//! Unlock, with the decryption on the relay (Redis never sees a PIN or a key):
//! 1. read `th` and compare the token in constant time (a wrong token costs no try);
//! 2. BEGIN script: atomically count the try *before* opening (a relay that dies mid-unlock has
//!    still spent it) and return the record, or say it is gone/exhausted;
//! 3. open locally; on success the TAKE script atomically swaps the record for a tombstone and
//!    only the relay whose TAKE found the record releases the card; on a wrong PIN at the last
//!    try the BURY script destroys it.
//!
//! Only the async shell around the pure reply parsing lives here; the parsing is unit-tested,
//! the round trips run against a real `redis-server` in `tests/vault_redis.rs`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, AsyncConnectionConfig, Script};

use crate::payment::card::CardData;
use crate::payment::session::{Locator, RetrievalToken, SessionId, TokenHash};
use crate::payment::store::{
    Gone, MemoryStore, StoreError, UnlockError, VaultStore, after_wrong_pin,
};
use crate::payment::vault::{self, MasterKey, OpenError, Pin, SealedRecord};

/// Fails if the key exists; else writes the record fields and the TTL together.
const PUT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1], 'th', ARGV[2], 'tries', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Counts a try and hands out the record, unless it is gone or out of tries.
const BEGIN: &str = r"
if redis.call('HEXISTS', KEYS[1], 'rec') == 0 then
  local gone = redis.call('HGET', KEYS[1], 'gone')
  if gone then return {'gone', gone} end
  return {'none'}
end
local tries = redis.call('HINCRBY', KEYS[1], 'tries', 1)
if tries > tonumber(ARGV[1]) then return {'exhausted'} end
return {'open', tostring(tries), redis.call('HGET', KEYS[1], 'rec')}
";

/// Replaces the record by a tombstone (`gone` = ARGV[1]) if it is still there; the TTL stays
/// because the key is never emptied (`gone` is set before the record fields go).
/// Returns 'taken' to exactly one caller, else why it is gone.
const TAKE: &str = r"
if redis.call('HEXISTS', KEYS[1], 'rec') == 0 then
  return redis.call('HGET', KEYS[1], 'gone') or 'none'
end
redis.call('HSET', KEYS[1], 'gone', ARGV[1])
redis.call('HDEL', KEYS[1], 'rec', 'th')
return 'taken'
";

/// What BEGIN said.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    None,
    Gone(Gone),
    Exhausted,
    Open { tries: u32, record: String },
}

/// Parses BEGIN's reply.
pub fn parse_begin(reply: &[String]) -> Result<Begin, UnlockError> {
    let bad = || UnlockError::Backend("unexpected reply from the vault script".into());
    match reply {
        [tag] if tag == "none" => Ok(Begin::None),
        [tag] if tag == "exhausted" => Ok(Begin::Exhausted),
        [tag, why] if tag == "gone" => Gone::parse(why).map(Begin::Gone).ok_or_else(bad),
        [tag, tries, record] if tag == "open" => Ok(Begin::Open {
            tries: tries.parse().map_err(|_| bad())?,
            record: record.clone(),
        }),
        _ => Err(bad()),
    }
}

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

fn backend(e: redis::RedisError) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn unlock_backend(e: redis::RedisError) -> UnlockError {
    UnlockError::Backend(e.to_string())
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
    conn: MultiplexedConnection,
    master: Arc<MasterKey>,
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
    /// Connects (bounded: 2 s to connect, 2 s per reply). Keys go under `tonewall:`.
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
        let conn = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(backend)?;
        Ok(RedisStore {
            conn,
            master,
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

    /// Files a session that waits for its call under its locator, unless another relay's live
    /// session holds that locator (then false: pick another locator). Expires with the session.
    pub async fn publish_session(
        &self,
        locator: &Locator,
        entry: &str,
        ttl_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(locator_key(&self.prefix, locator))
            .arg(entry)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(set.is_some())
    }

    /// Takes the session filed under `locator` out of the directory (GETDEL: exactly one relay
    /// gets it).
    pub async fn claim_session(&self, locator: &Locator) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("GETDEL")
            .arg(locator_key(&self.prefix, locator))
            .query_async(&mut conn)
            .await
            .map_err(backend)
    }

    /// Reads the entry without taking it (GetAgent over HTTP on another node).
    pub async fn peek_session(&self, locator: &Locator) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        conn.get(locator_key(&self.prefix, locator))
            .await
            .map_err(backend)
    }

    /// Removes the entry of session `id` (it ended or was taken here before anyone claimed it).
    pub async fn withdraw_session(
        &self,
        locator: &Locator,
        id: &SessionId,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .withdraw
            .key(locator_key(&self.prefix, locator))
            .arg(id.to_string())
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn bury(&self, key: &str, why: Gone) -> Result<(), UnlockError> {
        let mut conn = self.conn.clone();
        let _: String = self
            .take
            .key(key)
            .arg(why.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(unlock_backend)?;
        Ok(())
    }
}

impl VaultStore for RedisStore {
    async fn put(&self, record: SealedRecord, ttl_ms: u64, _now_ms: u64) -> Result<(), StoreError> {
        let json = serde_json::to_string(&record)
            .map_err(|_| StoreError::Backend("record does not serialise".into()))?;
        let mut conn = self.conn.clone();
        let created: i64 = self
            .put
            .key(self.key(&record.session()))
            .arg(json)
            .arg(record.token_hash().to_hex())
            .arg(ttl_ms.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
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
        _now_ms: u64,
    ) -> Result<CardData, UnlockError> {
        let key = self.key(id);
        let mut conn = self.conn.clone();
        // 1. Token first, compared here in constant time; it costs no try.
        let (th, gone): (Option<String>, Option<String>) = conn
            .hmget(&key, &["th", "gone"])
            .await
            .map_err(unlock_backend)?;
        match (th, gone) {
            (_, Some(why)) => {
                return Err(Gone::parse(&why).map_or(UnlockError::NotFound, Gone::error));
            }
            (None, None) => return Err(UnlockError::NotFound),
            (Some(th), None) => {
                let th = TokenHash::from_hex(&th).ok_or(UnlockError::Corrupt)?;
                if !th.matches(token) {
                    return Err(UnlockError::BadToken);
                }
            }
        }
        // 2. Count the try and fetch the record atomically.
        let reply: Vec<String> = self
            .begin
            .key(&key)
            .arg(self.max_tries)
            .invoke_async(&mut conn)
            .await
            .map_err(unlock_backend)?;
        let (tries, json) = match parse_begin(&reply)? {
            Begin::None => return Err(UnlockError::NotFound),
            Begin::Gone(why) => return Err(why.error()),
            Begin::Exhausted => return Err(UnlockError::TriesExhausted),
            Begin::Open { tries, record } => (tries, record),
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
                    .map_err(unlock_backend)?;
                // On Err the card drops here and zeroizes: another relay took it first.
                parse_take(&reply).map(|()| card)
            }
            Err(OpenError::Rejected) => {
                let verdict = after_wrong_pin(tries, self.max_tries);
                if verdict == UnlockError::TriesExhausted {
                    self.bury(&key, Gone::TriesExhausted).await?;
                }
                Err(verdict)
            }
            Err(OpenError::Malformed | OpenError::Version) => Err(UnlockError::Corrupt),
        }
    }

    async fn destroy(&self, id: &SessionId, _now_ms: u64) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let reply: String = self
            .take
            .key(self.key(id))
            .arg(Gone::Destroyed.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(reply == "taken")
    }

    /// Redis expires keys itself.
    async fn purge_expired(&self, _now_ms: u64) -> Result<usize, StoreError> {
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

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn begin_replies_parse() {
        assert_eq!(parse_begin(&v(&["none"])), Ok(Begin::None));
        assert_eq!(parse_begin(&v(&["exhausted"])), Ok(Begin::Exhausted));
        assert_eq!(
            parse_begin(&v(&["gone", "unlocked"])),
            Ok(Begin::Gone(Gone::Unlocked))
        );
        assert_eq!(
            parse_begin(&v(&["open", "2", "{}"])),
            Ok(Begin::Open {
                tries: 2,
                record: "{}".into()
            })
        );
        for bad in [
            &v(&[])[..],
            &v(&["open", "x", "{}"]),
            &v(&["gone", "?"]),
            &v(&["what"]),
        ] {
            assert!(
                matches!(parse_begin(bad), Err(UnlockError::Backend(_))),
                "{bad:?}"
            );
        }
    }

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
    fn keys_are_namespaced_by_session() {
        let id = SessionId::parse("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(
            record_key("tonewall:", &id),
            "tonewall:vault:00112233445566778899aabbccddeeff"
        );
    }
}
