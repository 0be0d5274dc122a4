//! Where sealed records wait for their one-time unlock: the [`VaultStore`] contract and the
//! embedded in-memory store (one relay). `redis_store` implements the same contract for
//! several relays.
//!
//! The contract: a record is put with a TTL; `unlock` checks the retrieval token (a wrong token
//! costs nothing: it is 256 random bits), then opens the record with the PIN. Success returns
//! the card once and destroys the record; a wrong PIN counts a try and the `max_tries`-th wrong
//! PIN destroys it; past the TTL it is gone. A destroyed record leaves a tombstone (no
//! ciphertext) until its TTL so callers learn why it is gone.
//!
//! Time is passed in (`now_ms`, the same clock as `ttl_ms`); no clock is read and nothing here
//! awaits anything, so the futures are ready at once. A DashMap shard lock is held only inside
//! one synchronous call, never across an `.await`.

use std::future::Future;
use std::sync::Arc;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use thiserror::Error;

use crate::payment::card::CardData;
use crate::payment::pin::Pin;
use crate::payment::session::{RetrievalToken, SessionId};
use crate::payment::vault::{self, MasterKey, OpenError, SealedRecord};

/// Wrong PINs a record takes before it is destroyed, unless configured otherwise.
pub const DEFAULT_MAX_TRIES: u32 = 3;

/// Why an unlock gave no card. Never carries card data or the PIN.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum UnlockError {
    #[error("no such record")]
    NotFound,
    #[error("the record has expired")]
    Expired,
    #[error("retrieval token does not match")]
    BadToken,
    #[error("wrong PIN ({tries_left} tries left)")]
    WrongPin { tries_left: u32 },
    #[error("too many wrong PINs; the record is destroyed")]
    TriesExhausted,
    #[error("the record was already unlocked")]
    AlreadyUnlocked,
    #[error("the record was destroyed")]
    Destroyed,
    #[error("the record is corrupt")]
    Corrupt,
    #[error("vault store unavailable: {0}")]
    Backend(String),
}

impl UnlockError {
    /// The control API's error code (docs/openapi.yaml `Error.code`).
    pub fn api_code(&self) -> &'static str {
        match self {
            UnlockError::NotFound | UnlockError::Destroyed => "not_found",
            UnlockError::Expired => "expired",
            UnlockError::BadToken => "unauthorized",
            UnlockError::WrongPin { .. } => "wrong_pin",
            UnlockError::TriesExhausted => "tries_exhausted",
            UnlockError::AlreadyUnlocked => "already_unlocked",
            UnlockError::Corrupt => "internal",
            UnlockError::Backend(_) => "unavailable",
        }
    }
}

/// A put or destroy that failed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("a record for this session already exists")]
    Duplicate,
    #[error("vault store unavailable: {0}")]
    Backend(String),
}

/// Why a record is gone before its TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    Unlocked,
    TriesExhausted,
    Destroyed,
}

impl Gone {
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::Unlocked => "unlocked",
            Gone::TriesExhausted => "exhausted",
            Gone::Destroyed => "destroyed",
        }
    }

    pub fn parse(s: &str) -> Option<Gone> {
        match s {
            "unlocked" => Some(Gone::Unlocked),
            "exhausted" => Some(Gone::TriesExhausted),
            "destroyed" => Some(Gone::Destroyed),
            _ => None,
        }
    }

    pub fn error(self) -> UnlockError {
        match self {
            Gone::Unlocked => UnlockError::AlreadyUnlocked,
            Gone::TriesExhausted => UnlockError::TriesExhausted,
            Gone::Destroyed => UnlockError::Destroyed,
        }
    }
}

/// What a wrong PIN leads to, given the tries counted so far (this one included).
pub fn after_wrong_pin(tries: u32, max_tries: u32) -> UnlockError {
    if tries >= max_tries {
        UnlockError::TriesExhausted
    } else {
        UnlockError::WrongPin {
            tries_left: max_tries - tries,
        }
    }
}

/// Keeps sealed records until their one-time unlock, their last wrong PIN or their TTL.
pub trait VaultStore: Send + Sync {
    /// Keeps `record` (filed under its session id) for `ttl_ms` from `now_ms`. Refuses to
    /// replace a record that is still there.
    fn put(
        &self,
        record: SealedRecord,
        ttl_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The one-time unlock: the card on the first right token and PIN, then never again.
    fn unlock(
        &self,
        id: &SessionId,
        token: &RetrievalToken,
        pin: &Pin,
        now_ms: u64,
    ) -> impl Future<Output = Result<CardData, UnlockError>> + Send;

    /// Destroys a waiting record (session cancelled). True if there was one.
    fn destroy(
        &self,
        id: &SessionId,
        now_ms: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Drops everything past its TTL; returns how many entries went.
    fn purge_expired(&self, now_ms: u64) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

enum Slot {
    Sealed {
        record: SealedRecord,
        tries: u32,
        expires_at_ms: u64,
    },
    Gone {
        why: Gone,
        expires_at_ms: u64,
    },
}

impl Slot {
    fn expires_at_ms(&self) -> u64 {
        match self {
            Slot::Sealed { expires_at_ms, .. } | Slot::Gone { expires_at_ms, .. } => *expires_at_ms,
        }
    }
}

/// The embedded store: records in a DashMap, in this process only.
pub struct MemoryStore {
    map: DashMap<SessionId, Slot>,
    master: Arc<MasterKey>,
    max_tries: u32,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.map.len())
            .field("max_tries", &self.max_tries)
            .finish()
    }
}

impl MemoryStore {
    pub fn new(master: Arc<MasterKey>, max_tries: u32) -> MemoryStore {
        MemoryStore {
            map: DashMap::new(),
            master,
            max_tries: max_tries.max(1),
        }
    }

    /// Entries held, tombstones included.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn put_now(
        &self,
        record: SealedRecord,
        ttl_ms: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let id = record.session();
        let slot = Slot::Sealed {
            record,
            tries: 0,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
        };
        match self.map.entry(id) {
            Entry::Occupied(mut o) => {
                if now_ms < o.get().expires_at_ms() {
                    return Err(StoreError::Duplicate);
                }
                o.insert(slot);
            }
            Entry::Vacant(v) => {
                v.insert(slot);
            }
        }
        Ok(())
    }

    pub fn unlock_now(
        &self,
        id: &SessionId,
        token: &RetrievalToken,
        pin: &Pin,
        now_ms: u64,
    ) -> Result<CardData, UnlockError> {
        // The entry's shard stays locked for the whole check-open-take, so two unlockers
        // serialise and only the first right PIN gets the card.
        let Entry::Occupied(mut o) = self.map.entry(*id) else {
            return Err(UnlockError::NotFound);
        };
        if now_ms >= o.get().expires_at_ms() {
            let was_sealed = matches!(o.get(), Slot::Sealed { .. });
            o.remove();
            return Err(if was_sealed {
                UnlockError::Expired
            } else {
                UnlockError::NotFound
            });
        }
        let expires_at_ms = o.get().expires_at_ms();
        let (record, tries) = match o.get_mut() {
            Slot::Gone { why, .. } => return Err(why.error()),
            Slot::Sealed { record, tries, .. } => (record, tries),
        };
        if !record.token_hash().matches(token) {
            return Err(UnlockError::BadToken);
        }
        match vault::open(record, &self.master, pin, id) {
            Ok(card) => {
                o.insert(Slot::Gone {
                    why: Gone::Unlocked,
                    expires_at_ms,
                });
                Ok(card)
            }
            Err(OpenError::Rejected) => {
                *tries += 1;
                let verdict = after_wrong_pin(*tries, self.max_tries);
                if verdict == UnlockError::TriesExhausted {
                    o.insert(Slot::Gone {
                        why: Gone::TriesExhausted,
                        expires_at_ms,
                    });
                }
                Err(verdict)
            }
            Err(OpenError::Malformed | OpenError::Version) => Err(UnlockError::Corrupt),
        }
    }

    pub fn destroy_now(&self, id: &SessionId, now_ms: u64) -> bool {
        let Entry::Occupied(mut o) = self.map.entry(*id) else {
            return false;
        };
        let expires_at_ms = o.get().expires_at_ms();
        if now_ms >= expires_at_ms {
            o.remove();
            return false;
        }
        if matches!(o.get(), Slot::Sealed { .. }) {
            o.insert(Slot::Gone {
                why: Gone::Destroyed,
                expires_at_ms,
            });
            true
        } else {
            false
        }
    }

    pub fn purge_expired_now(&self, now_ms: u64) -> usize {
        let before = self.map.len();
        self.map.retain(|_, s| now_ms < s.expires_at_ms());
        before.saturating_sub(self.map.len())
    }
}

impl VaultStore for MemoryStore {
    async fn put(&self, record: SealedRecord, ttl_ms: u64, now_ms: u64) -> Result<(), StoreError> {
        self.put_now(record, ttl_ms, now_ms)
    }

    async fn unlock(
        &self,
        id: &SessionId,
        token: &RetrievalToken,
        pin: &Pin,
        now_ms: u64,
    ) -> Result<CardData, UnlockError> {
        self.unlock_now(id, token, pin, now_ms)
    }

    async fn destroy(&self, id: &SessionId, now_ms: u64) -> Result<bool, StoreError> {
        Ok(self.destroy_now(id, now_ms))
    }

    async fn purge_expired(&self, now_ms: u64) -> Result<usize, StoreError> {
        Ok(self.purge_expired_now(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::card::{Cvv, Expiry, Pan, YearMonth};
    use crate::payment::session::{Locator, TokenHash};
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// The memory store's futures never wait: poll once.
    fn ready<T>(f: impl Future<Output = T>) -> T {
        match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("memory store future was pending"),
        }
    }

    struct Fx {
        store: Arc<MemoryStore>,
        id: SessionId,
        token: RetrievalToken,
        pin: Pin,
    }

    fn card() -> CardData {
        CardData::new(
            Pan::parse(b"4111111111111111", false).unwrap(),
            Some(Expiry::parse(b"1230", YearMonth::new(2026, 1).unwrap()).unwrap()),
            Some(Cvv::parse(b"123", None).unwrap()),
        )
    }

    fn sealed(master: &MasterKey, token: TokenHash) -> (SealedRecord, SessionId, Pin) {
        let id = SessionId::generate();
        let pin = Pin::generate(6);
        let rec = vault::seal(
            &card(),
            master,
            &pin,
            id,
            &Locator::parse("1234").unwrap(),
            token,
        )
        .unwrap();
        (rec, id, pin)
    }

    fn fx(ttl_ms: u64) -> Fx {
        let master = Arc::new(MasterKey::generate());
        let token = RetrievalToken::generate();
        let (rec, id, pin) = sealed(&master, token.hash());
        let store = Arc::new(MemoryStore::new(master, DEFAULT_MAX_TRIES));
        ready(store.put(rec, ttl_ms, 1_000)).unwrap();
        Fx {
            store,
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

    #[test]
    fn unlocks_once_then_is_gone() {
        let f = fx(60_000);
        let c = ready(f.store.unlock(&f.id, &f.token, &f.pin, 2_000)).unwrap();
        assert_eq!(c.pan().reveal(), "4111111111111111");
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &f.pin, 2_001)),
            Err(UnlockError::AlreadyUnlocked)
        );
        // The tombstone goes with the TTL.
        assert_eq!(ready(f.store.purge_expired(61_000)).unwrap(), 1);
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &f.pin, 61_001)),
            Err(UnlockError::NotFound)
        );
    }

    #[test]
    fn wrong_pins_count_and_the_last_destroys() {
        let f = fx(60_000);
        let bad = wrong(&f.pin);
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &bad, 2_000)),
            Err(UnlockError::WrongPin { tries_left: 2 })
        );
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &bad, 2_000)),
            Err(UnlockError::WrongPin { tries_left: 1 })
        );
        // A wrong token costs no try.
        let other = RetrievalToken::generate();
        assert_eq!(
            ready(f.store.unlock(&f.id, &other, &f.pin, 2_000)),
            Err(UnlockError::BadToken)
        );
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &bad, 2_000)),
            Err(UnlockError::TriesExhausted)
        );
        // Destroyed: the right PIN no longer helps.
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &f.pin, 2_000)),
            Err(UnlockError::TriesExhausted)
        );
    }

    #[test]
    fn right_pin_after_wrong_ones_still_opens() {
        let f = fx(60_000);
        let bad = wrong(&f.pin);
        for _ in 0..DEFAULT_MAX_TRIES - 1 {
            assert!(ready(f.store.unlock(&f.id, &f.token, &bad, 2_000)).is_err());
        }
        assert!(ready(f.store.unlock(&f.id, &f.token, &f.pin, 2_000)).is_ok());
    }

    #[test]
    fn ttl_destroys() {
        let f = fx(60_000);
        // put at 1 000 with 60 s: alive at 60 999, gone at 61 000.
        assert_eq!(
            ready(
                f.store
                    .unlock(&f.id, &RetrievalToken::generate(), &f.pin, 60_999)
            ),
            Err(UnlockError::BadToken)
        );
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &f.pin, 61_000)),
            Err(UnlockError::Expired)
        );
        assert!(f.store.is_empty());

        let f = fx(60_000);
        assert_eq!(ready(f.store.purge_expired(60_999)).unwrap(), 0);
        assert_eq!(ready(f.store.purge_expired(61_000)).unwrap(), 1);
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &f.pin, 61_000)),
            Err(UnlockError::NotFound)
        );
    }

    #[test]
    fn destroy_and_duplicate_put() {
        let f = fx(60_000);
        assert!(ready(f.store.destroy(&f.id, 2_000)).unwrap());
        assert!(!ready(f.store.destroy(&f.id, 2_000)).unwrap());
        assert_eq!(
            ready(f.store.unlock(&f.id, &f.token, &f.pin, 2_000)),
            Err(UnlockError::Destroyed)
        );
        let master = Arc::new(MasterKey::generate());
        let store = MemoryStore::new(master.clone(), 3);
        let (rec, _, _) = sealed(&master, RetrievalToken::generate().hash());
        ready(store.put(rec.clone(), 1_000, 0)).unwrap();
        assert_eq!(
            ready(store.put(rec.clone(), 1_000, 10)),
            Err(StoreError::Duplicate)
        );
        // Once expired, the id may be filed again.
        ready(store.put(rec, 1_000, 1_000)).unwrap();
    }

    #[test]
    fn concurrent_unlockers_get_one_card() {
        let f = fx(60_000);
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let f = &f;
                    s.spawn(move || f.store.unlock_now(&f.id, &f.token, &f.pin, 2_000).is_ok())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn errors_map_to_api_codes_and_show_no_secrets() {
        let f = fx(60_000);
        let e = ready(f.store.unlock(&f.id, &f.token, &wrong(&f.pin), 2_000)).unwrap_err();
        assert_eq!(e.api_code(), "wrong_pin");
        let text = format!("{e} {e:?} {:?}", f.store);
        assert!(!text.contains(f.pin.reveal()));
        assert!(!text.contains(wrong(&f.pin).reveal()));
        assert_eq!(UnlockError::TriesExhausted.api_code(), "tries_exhausted");
        assert_eq!(UnlockError::AlreadyUnlocked.api_code(), "already_unlocked");
        assert_eq!(after_wrong_pin(3, 3), UnlockError::TriesExhausted);
        assert_eq!(
            after_wrong_pin(1, 3),
            UnlockError::WrongPin { tries_left: 2 }
        );
    }
}
