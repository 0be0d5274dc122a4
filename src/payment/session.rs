//! Payment sessions and their locators: the loop model's AddAgent (create a session for an
//! agent, get a short locator) and GetAgent (resolve a live locator to the agent).
//!
//! A session moves Created → Bound(call) → Capturing → Completed (sealed) → Unlocked, or ends
//! Destroyed, Expired or Failed on the way. Every transition takes `now` (milliseconds on the
//! shell's clock; use UNIX time so `expires_at` can be shown) and checks the TTL first.
//! The retrieval token is random and kept only as its SHA-256 hash, compared in constant time;
//! the token itself goes to the payment integration once, either in the answer to its own
//! create or, for a session an agent's desktop created, held here (zeroizing) until the payment
//! integration takes it with [`SessionTable::take_credentials`]. The unlock PIN is held only
//! until the record is sealed (and the hand-out copy until it is taken or the session ends).
//!
//! Resources a caller can make the table hold are bounded: live sessions per owner (the API
//! token's name) and overall, and ended sessions kept for display (oldest forgotten first).
//! Expiry and purging walk deadline-ordered structures, never every session.
//! This module owns no I/O and reads no clock.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::ids::CallId;
use crate::payment::card::FieldName;
use crate::payment::hex;
use crate::payment::pin::Pin;

/// Random 128-bit session id, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId([u8; 16]);

impl SessionId {
    pub fn generate() -> SessionId {
        let mut b = [0u8; 16];
        rand::fill(&mut b);
        SessionId(b)
    }

    /// Parses the 32-hex-digit form (a path parameter).
    pub fn parse(s: &str) -> Result<SessionId, SessionError> {
        let mut b = [0u8; 16];
        hex::decode_into(s, &mut b).map_err(|_| SessionError::BadId)?;
        Ok(SessionId(b))
    }

    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SessionId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Shortest and longest locators (the API's `^[0-9]{3,8}$`).
pub const LOCATOR_LEN: std::ops::RangeInclusive<usize> = 3..=8;

/// Short numeric code an agent reads out or a contact flow dials; unique among live sessions.
/// Not card data.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Locator(String);

impl Locator {
    pub fn parse(s: &str) -> Result<Locator, SessionError> {
        if LOCATOR_LEN.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Locator(s.to_string()))
        } else {
            Err(SessionError::BadLocator)
        }
    }

    fn from_index(n: u64, len: usize) -> Locator {
        Locator(format!("{n:0len$}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Locator {
    type Error = SessionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Locator::parse(&s)
    }
}

impl From<Locator> for String {
    fn from(l: Locator) -> String {
        l.0
    }
}

impl fmt::Display for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Locator({})", self.0)
    }
}

/// The agent's identity in the contact centre (extension, login).
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize)]
pub struct AgentId(String);

impl AgentId {
    /// 1-128 characters, no control characters (it goes into SIP headers and logs).
    pub fn parse(s: &str) -> Result<AgentId, SessionError> {
        if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
            return Err(SessionError::BadAgent);
        }
        Ok(AgentId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The retrieval token the payment integration presents at unlock. Shown once at creation;
/// redacted in `Debug`/`Display`, zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct RetrievalToken(Zeroizing<String>);

impl RetrievalToken {
    /// 256 random bits as 64 hex digits.
    pub fn generate() -> RetrievalToken {
        let mut b = Zeroizing::new([0u8; 32]);
        rand::fill(&mut b[..]);
        RetrievalToken(Zeroizing::new(hex::encode(&b[..])))
    }

    /// A token as presented at unlock; any string, judged by [`TokenHash::matches`].
    pub fn from_presented(s: &str) -> RetrievalToken {
        RetrievalToken(Zeroizing::new(s.to_string()))
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// Only for the creation response.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RetrievalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RetrievalToken(•••)")
    }
}

impl fmt::Display for RetrievalToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("•••")
    }
}

/// SHA-256 of a retrieval token: what sessions and sealed records keep.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Constant-time comparison with a presented token's hash.
    pub fn matches(&self, token: &RetrievalToken) -> bool {
        self.0.ct_eq(&token.hash().0).into()
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }

    pub fn from_hex(s: &str) -> Option<TokenHash> {
        let mut b = [0u8; 32];
        hex::decode_into(s, &mut b).ok()?;
        Some(TokenHash(b))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(…)")
    }
}

impl Serialize for TokenHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TokenHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad token hash"))
    }
}

/// Why a session was destroyed before its natural end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DestroyReason {
    /// The agent or integration cancelled it.
    Cancelled,
    /// The sealed record took its last wrong PIN.
    TriesExhausted,
}

/// Why a session failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// A field ran out of attempts.
    CaptureFailed,
    /// The call ended before the capture completed.
    CallEnded,
    /// Sealing or storing the record failed.
    VaultError,
}

/// Where a session stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionState {
    Created,
    Bound {
        call: CallId,
    },
    Capturing {
        call: CallId,
    },
    /// The card is sealed in the vault, waiting for the one-time unlock.
    Completed {
        call: CallId,
    },
    Unlocked,
    Destroyed {
        reason: DestroyReason,
    },
    Expired,
    Failed {
        reason: FailReason,
    },
}

impl SessionState {
    /// Terminal states free the locator.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            SessionState::Unlocked
                | SessionState::Destroyed { .. }
                | SessionState::Expired
                | SessionState::Failed { .. }
        )
    }

    /// The control API's name for the state (docs/openapi.yaml `Session.state`).
    pub fn api_name(&self) -> &'static str {
        match self {
            SessionState::Created => "pending",
            SessionState::Bound { .. } => "bound",
            SessionState::Capturing { .. } => "capturing",
            SessionState::Completed { .. } => "sealed",
            SessionState::Unlocked => "unlocked",
            SessionState::Destroyed {
                reason: DestroyReason::Cancelled,
            } => "cancelled",
            SessionState::Destroyed {
                reason: DestroyReason::TriesExhausted,
            }
            | SessionState::Failed { .. } => "failed",
            SessionState::Expired => "expired",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            SessionState::Created => "created",
            SessionState::Bound { .. } => "bound",
            SessionState::Capturing { .. } => "capturing",
            SessionState::Completed { .. } => "completed",
            SessionState::Unlocked => "unlocked",
            SessionState::Destroyed { .. } => "destroyed",
            SessionState::Expired => "expired",
            SessionState::Failed { .. } => "failed",
        }
    }

    fn call(&self) -> Option<&CallId> {
        match self {
            SessionState::Bound { call }
            | SessionState::Capturing { call }
            | SessionState::Completed { call } => Some(call),
            _ => None,
        }
    }
}

/// Session rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Locator digits, 3-8.
    pub locator_len: usize,
    /// Unlock PIN digits.
    pub pin_len: usize,
    /// TTL when the request names none.
    pub default_ttl_ms: u64,
    pub min_ttl_ms: u64,
    pub max_ttl_ms: u64,
    /// Live sessions at most (the locator space bounds it too).
    pub max_live: usize,
    /// Live sessions at most per owner (API token name).
    pub max_live_per_owner: usize,
    /// Ended sessions kept for display at most; the oldest are forgotten first.
    pub max_ended: usize,
}

/// Default locator length: 10^6 codes, so that with a few hundred live sessions and the
/// failed-lookup lockout ([`crate::payment::guard`]) guessing one is impractical.
pub const DEFAULT_LOCATOR_LEN: usize = 6;

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            locator_len: DEFAULT_LOCATOR_LEN,
            pin_len: crate::payment::pin::DEFAULT_PIN_LEN,
            default_ttl_ms: 900_000,
            min_ttl_ms: 30_000,
            max_ttl_ms: 3_600_000,
            max_live: 1_000,
            max_live_per_owner: 20,
            max_ended: 2_000,
        }
    }
}

/// Transitions and look-ups that cannot be done. Never carries card data.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SessionError {
    #[error("no such session")]
    NotFound,
    #[error("session has expired")]
    Expired,
    #[error("cannot {action} a session that is {from}")]
    InvalidTransition {
        from: &'static str,
        action: &'static str,
    },
    #[error("no free locator")]
    LocatorSpaceExhausted,
    #[error("too many live sessions")]
    TooMany,
    #[error("this integration has as many live sessions as it may hold; end one first")]
    QuotaReached,
    #[error("the session's retrieval token and PIN were already handed out")]
    CredentialsTaken,
    #[error("ttl must be between {min_ms} and {max_ms} ms")]
    BadTtl { min_ms: u64, max_ms: u64 },
    #[error("agent id must be 1-128 characters without control characters")]
    BadAgent,
    #[error("locator must be 3-8 digits")]
    BadLocator,
    #[error("session id must be 32 hex digits")]
    BadId,
    #[error("the PIN was already handed out for sealing")]
    PinGone,
    #[error("the locator is held by another live session")]
    LocatorTaken,
}

/// What a new session asks for.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub agent: AgentId,
    /// `None`: the configured default.
    pub ttl_ms: Option<u64>,
    pub fields: Vec<FieldName>,
    /// For display only.
    pub amount: Option<String>,
    /// For display only.
    pub reference: Option<String>,
    /// Who asked (the API token's name): counts against that owner's quota.
    pub owner: Option<String>,
    /// Keep the token and PIN for one later [`SessionTable::take_credentials`] (the creator
    /// is not the one who unlocks).
    pub hand_out: bool,
}

/// The creation result: the token and PIN, for the creator if it is the one who unlocks.
#[derive(Debug)]
pub struct Created {
    pub id: SessionId,
    pub locator: Locator,
    pub token: RetrievalToken,
    pub pin: Pin,
    pub expires_at_ms: u64,
}

/// One payment session.
#[derive(Debug)]
pub struct Session {
    id: SessionId,
    agent: AgentId,
    locator: Locator,
    state: SessionState,
    created_at_ms: u64,
    expires_at_ms: u64,
    ended_at_ms: Option<u64>,
    token_hash: TokenHash,
    /// Held from creation until sealing, then dropped (zeroized).
    pin: Option<Pin>,
    /// The token and PIN waiting for their one hand-out; dropped when taken or at the end.
    hand_out: Option<(RetrievalToken, Pin)>,
    owner: Option<String>,
    fields: Vec<FieldName>,
    amount: Option<String>,
    reference: Option<String>,
}

impl Session {
    pub fn id(&self) -> SessionId {
        self.id
    }
    pub fn agent(&self) -> &AgentId {
        &self.agent
    }
    pub fn locator(&self) -> &Locator {
        &self.locator
    }
    pub fn state(&self) -> &SessionState {
        &self.state
    }
    pub fn call(&self) -> Option<&CallId> {
        self.state.call()
    }
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }
    pub fn expires_at_ms(&self) -> u64 {
        self.expires_at_ms
    }
    pub fn token_hash(&self) -> TokenHash {
        self.token_hash
    }
    pub fn fields(&self) -> &[FieldName] {
        &self.fields
    }
    pub fn amount(&self) -> Option<&str> {
        self.amount.as_deref()
    }
    pub fn reference(&self) -> Option<&str> {
        self.reference.as_deref()
    }
    /// The API token name that created it; `None` for a session taken over from another relay.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }
}

/// A session not yet bound, as one relay hands it to another through a shared store (the
/// loop call may land on another node than the one the agent's desktop asked). Carries the
/// PIN, so it only ever travels wrapped (see [`crate::payment::directory`]).
#[derive(Clone, Debug)]
pub struct SharedSession {
    pub id: SessionId,
    pub agent: AgentId,
    pub locator: Locator,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub token_hash: TokenHash,
    pub pin: Pin,
    pub fields: Vec<FieldName>,
    pub amount: Option<String>,
    pub reference: Option<String>,
}

/// The live sessions of one relay, by id and by locator. Sans-IO; the shell wraps it in its
/// own lock or task.
#[derive(Debug)]
pub struct SessionTable {
    cfg: SessionConfig,
    by_id: HashMap<SessionId, Session>,
    /// Live (non-terminal) sessions only.
    by_locator: HashMap<Locator, SessionId>,
    /// Live sessions by (expiry, id): expiring walks only the due ones.
    deadlines: BTreeSet<(u64, SessionId)>,
    /// Ended sessions in the order they ended, with the time: purging and the cap take the
    /// oldest first.
    ended: VecDeque<(u64, SessionId)>,
    /// Live sessions per owner.
    live_by_owner: HashMap<String, usize>,
    /// Sessions forgotten (purged or over the cap) since the shell last asked.
    forgotten: Vec<SessionId>,
}

impl SessionTable {
    pub fn new(cfg: SessionConfig) -> SessionTable {
        let cfg = SessionConfig {
            max_ended: cfg.max_ended.max(1),
            ..cfg
        };
        SessionTable {
            cfg,
            by_id: HashMap::new(),
            by_locator: HashMap::new(),
            deadlines: BTreeSet::new(),
            ended: VecDeque::new(),
            live_by_owner: HashMap::new(),
            forgotten: Vec::new(),
        }
    }

    /// Live sessions `owner` holds.
    pub fn live_for(&self, owner: &str) -> usize {
        self.live_by_owner.get(owner).copied().unwrap_or(0)
    }

    /// AddAgent: a new session with a fresh locator, token and PIN.
    pub fn create(&mut self, new: NewSession, now_ms: u64) -> Result<Created, SessionError> {
        let ttl = new.ttl_ms.unwrap_or(self.cfg.default_ttl_ms);
        if !(self.cfg.min_ttl_ms..=self.cfg.max_ttl_ms).contains(&ttl) {
            return Err(SessionError::BadTtl {
                min_ms: self.cfg.min_ttl_ms,
                max_ms: self.cfg.max_ttl_ms,
            });
        }
        // Sessions past their TTL must not hold locators or count against the limits.
        self.expire_due(now_ms);
        if let Some(owner) = &new.owner
            && self.live_for(owner) >= self.cfg.max_live_per_owner
        {
            return Err(SessionError::QuotaReached);
        }
        if self.by_locator.len() >= self.cfg.max_live {
            return Err(SessionError::TooMany);
        }
        let locator = self.free_locator()?;
        let mut id = SessionId::generate();
        while self.by_id.contains_key(&id) {
            id = SessionId::generate();
        }
        let token = RetrievalToken::generate();
        let pin = Pin::generate(self.cfg.pin_len);
        let expires_at_ms = now_ms.saturating_add(ttl);
        let session = Session {
            id,
            agent: new.agent,
            locator: locator.clone(),
            state: SessionState::Created,
            created_at_ms: now_ms,
            expires_at_ms,
            ended_at_ms: None,
            token_hash: token.hash(),
            pin: Some(pin.clone()),
            hand_out: new.hand_out.then(|| (token.clone(), pin.clone())),
            owner: new.owner,
            fields: new.fields,
            amount: new.amount,
            reference: new.reference,
        };
        if let Some(owner) = &session.owner {
            *self.live_by_owner.entry(owner.clone()).or_insert(0) += 1;
        }
        self.by_locator.insert(locator.clone(), id);
        self.deadlines.insert((expires_at_ms, id));
        self.by_id.insert(id, session);
        Ok(Created {
            id,
            locator,
            token,
            pin,
            expires_at_ms,
        })
    }

    /// A copy of a session that is still waiting for its call (Created), for another relay.
    pub fn export(&self, id: &SessionId, now_ms: u64) -> Option<SharedSession> {
        let s = self.by_id.get(id)?;
        if s.state != SessionState::Created || now_ms >= s.expires_at_ms {
            return None;
        }
        Some(SharedSession {
            id: s.id,
            agent: s.agent.clone(),
            locator: s.locator.clone(),
            created_at_ms: s.created_at_ms,
            expires_at_ms: s.expires_at_ms,
            token_hash: s.token_hash,
            pin: s.pin.clone()?,
            fields: s.fields.clone(),
            amount: s.amount.clone(),
            reference: s.reference.clone(),
        })
    }

    /// Takes over a session another relay created (Created, same id, locator, token and PIN).
    pub fn adopt(&mut self, shared: SharedSession, now_ms: u64) -> Result<(), SessionError> {
        self.expire_due(now_ms);
        if now_ms >= shared.expires_at_ms {
            return Err(SessionError::Expired);
        }
        if let Some(other) = self.by_locator.get(&shared.locator) {
            return if *other == shared.id {
                Ok(())
            } else {
                Err(SessionError::LocatorTaken)
            };
        }
        if self.by_id.contains_key(&shared.id) {
            // Known here and already ended: the other relay's copy is stale.
            return Err(SessionError::InvalidTransition {
                from: "ended",
                action: "adopt",
            });
        }
        if self.by_locator.len() >= self.cfg.max_live {
            return Err(SessionError::TooMany);
        }
        self.by_locator.insert(shared.locator.clone(), shared.id);
        self.deadlines.insert((shared.expires_at_ms, shared.id));
        self.by_id.insert(
            shared.id,
            Session {
                id: shared.id,
                agent: shared.agent,
                locator: shared.locator,
                state: SessionState::Created,
                created_at_ms: shared.created_at_ms,
                expires_at_ms: shared.expires_at_ms,
                ended_at_ms: None,
                token_hash: shared.token_hash,
                pin: Some(shared.pin),
                // The creating relay hands the credentials out; here nobody owns it but admin.
                hand_out: None,
                owner: None,
                fields: shared.fields,
                amount: shared.amount,
                reference: shared.reference,
            },
        );
        Ok(())
    }

    /// Forgets a session outright (its creation could not be shared, so it never existed).
    pub fn remove(&mut self, id: &SessionId) {
        let Some(s) = self.by_id.remove(id) else {
            return;
        };
        if s.ended_at_ms.is_some() {
            // Rare (creation rolled back after an end): a scan of the ended list is fine.
            self.ended.retain(|(_, e)| e != id);
            return;
        }
        self.deadlines.remove(&(s.expires_at_ms, *id));
        if let Some(owner) = &s.owner {
            self.owner_ended(owner);
        }
        if self.by_locator.get(&s.locator) == Some(id) {
            self.by_locator.remove(&s.locator);
        }
    }

    fn owner_ended(&mut self, owner: &str) {
        if let Some(n) = self.live_by_owner.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.live_by_owner.remove(owner);
            }
        }
    }

    /// The retrieval token and PIN of a live session created for a later hand-out, once:
    /// a second call is [`SessionError::CredentialsTaken`]. Works until the session ends, also
    /// after sealing.
    pub fn take_credentials(
        &mut self,
        id: &SessionId,
        now_ms: u64,
    ) -> Result<(RetrievalToken, Pin), SessionError> {
        self.check_live(id, now_ms)?;
        let s = self.by_id.get_mut(id).ok_or(SessionError::NotFound)?;
        if s.state.is_terminal() {
            return Err(SessionError::InvalidTransition {
                from: s.state.name(),
                action: "hand out the credentials of",
            });
        }
        s.hand_out.take().ok_or(SessionError::CredentialsTaken)
    }

    /// Ids of sessions forgotten since the last call (purged after their linger, or over the
    /// cap of ended sessions kept), so the shell can drop its own state for them.
    pub fn take_forgotten(&mut self) -> Vec<SessionId> {
        std::mem::take(&mut self.forgotten)
    }

    /// A random locator not held by a live session: a random start, then the next free one,
    /// so the search ends even when the space is nearly full.
    fn free_locator(&self) -> Result<Locator, SessionError> {
        let len = self
            .cfg
            .locator_len
            .clamp(*LOCATOR_LEN.start(), *LOCATOR_LEN.end());
        let space = 10u64.pow(len as u32);
        let start = rand::random_range(0..space);
        (0..space)
            .map(|i| Locator::from_index((start + i) % space, len))
            .find(|l| !self.by_locator.contains_key(l))
            .ok_or(SessionError::LocatorSpaceExhausted)
    }

    pub fn get(&self, id: &SessionId) -> Option<&Session> {
        self.by_id.get(id)
    }

    /// GetAgent: the live session behind a locator, if it has not expired by `now`.
    pub fn by_locator(&self, locator: &Locator, now_ms: u64) -> Option<&Session> {
        let id = self.by_locator.get(locator)?;
        self.by_id
            .get(id)
            .filter(|s| !s.state.is_terminal() && now_ms < s.expires_at_ms)
    }

    /// Live sessions (holding a locator).
    pub fn live(&self) -> usize {
        self.by_locator.len()
    }

    /// Binds a call: Created → Bound.
    pub fn bind(
        &mut self,
        id: &SessionId,
        call: CallId,
        now_ms: u64,
    ) -> Result<&Session, SessionError> {
        self.transition(id, now_ms, "bind", |s| match s {
            SessionState::Created => Some(SessionState::Bound { call }),
            _ => None,
        })
    }

    /// Starts capturing on the bound call: Bound → Capturing.
    pub fn start_capture(&mut self, id: &SessionId, now_ms: u64) -> Result<&Session, SessionError> {
        self.transition(id, now_ms, "start capturing", |s| match s {
            SessionState::Bound { call } => Some(SessionState::Capturing { call: *call }),
            _ => None,
        })
    }

    /// Capture completed: Capturing → Completed. Hands out the PIN for sealing (once; the
    /// session forgets it) and moves the expiry to `now + record_ttl_ms`, so the session ends
    /// with its record.
    pub fn complete(
        &mut self,
        id: &SessionId,
        record_ttl_ms: u64,
        now_ms: u64,
    ) -> Result<Pin, SessionError> {
        let has_pin = self.by_id.get(id).is_some_and(|s| s.pin.is_some());
        if !has_pin {
            return match self.check_live(id, now_ms) {
                Ok(()) => Err(SessionError::PinGone),
                Err(e) => Err(e),
            };
        }
        self.transition(id, now_ms, "complete", |s| match s {
            SessionState::Capturing { call } => Some(SessionState::Completed { call: *call }),
            _ => None,
        })?;
        let s = self.by_id.get_mut(id).ok_or(SessionError::NotFound)?;
        let old = s.expires_at_ms;
        s.expires_at_ms = now_ms.saturating_add(record_ttl_ms);
        let pin = s.pin.take().ok_or(SessionError::PinGone);
        self.deadlines.remove(&(old, *id));
        self.deadlines.insert((s.expires_at_ms, *id));
        pin
    }

    /// The record was unlocked: Completed → Unlocked.
    pub fn unlocked(&mut self, id: &SessionId, now_ms: u64) -> Result<&Session, SessionError> {
        self.transition(id, now_ms, "unlock", |s| match s {
            SessionState::Completed { .. } => Some(SessionState::Unlocked),
            _ => None,
        })
    }

    /// Cancelled, or the record's tries ran out: any live state → Destroyed.
    pub fn destroy(
        &mut self,
        id: &SessionId,
        reason: DestroyReason,
        now_ms: u64,
    ) -> Result<&Session, SessionError> {
        self.transition(id, now_ms, "destroy", |_| {
            Some(SessionState::Destroyed { reason })
        })
    }

    /// Any live state → Failed.
    pub fn fail(
        &mut self,
        id: &SessionId,
        reason: FailReason,
        now_ms: u64,
    ) -> Result<&Session, SessionError> {
        self.transition(id, now_ms, "fail", |_| {
            Some(SessionState::Failed { reason })
        })
    }

    /// Marks every live session past its TTL Expired and frees its locator; returns their ids.
    /// Walks only the due sessions (the deadline order), so calling it often is cheap.
    pub fn expire_due(&mut self, now_ms: u64) -> Vec<SessionId> {
        let mut due = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if now_ms < at {
                break;
            }
            self.deadlines.remove(&(at, id));
            if self.by_id.get(&id).is_some_and(|s| s.ended_at_ms.is_none()) {
                self.end(&id, SessionState::Expired, now_ms);
                due.push(id);
            }
        }
        due
    }

    /// Forgets sessions that ended at least `linger_ms` ago (they stay visible for a while so
    /// the agent's desktop can read the outcome). Walks only those due.
    pub fn purge_ended(&mut self, now_ms: u64, linger_ms: u64) -> usize {
        let mut n = 0;
        while let Some(&(at, id)) = self.ended.front() {
            if now_ms < at.saturating_add(linger_ms) {
                break;
            }
            self.ended.pop_front();
            if self.by_id.remove(&id).is_some() {
                self.forgotten.push(id);
                n += 1;
            }
        }
        n
    }

    /// Live and within TTL; a session found past its TTL is expired on the spot.
    fn check_live(&mut self, id: &SessionId, now_ms: u64) -> Result<(), SessionError> {
        let s = self.by_id.get(id).ok_or(SessionError::NotFound)?;
        if s.state == SessionState::Expired {
            return Err(SessionError::Expired);
        }
        if !s.state.is_terminal() && now_ms >= s.expires_at_ms {
            self.end(id, SessionState::Expired, now_ms);
            return Err(SessionError::Expired);
        }
        Ok(())
    }

    fn transition(
        &mut self,
        id: &SessionId,
        now_ms: u64,
        action: &'static str,
        next: impl FnOnce(&SessionState) -> Option<SessionState>,
    ) -> Result<&Session, SessionError> {
        self.check_live(id, now_ms)?;
        let s = self.by_id.get(id).ok_or(SessionError::NotFound)?;
        let from = s.state.name();
        let next = if s.state.is_terminal() {
            None
        } else {
            next(&s.state)
        };
        let next = next.ok_or(SessionError::InvalidTransition { from, action })?;
        if next.is_terminal() {
            self.end(id, next, now_ms);
        } else if let Some(s) = self.by_id.get_mut(id) {
            s.state = next;
        }
        self.by_id.get(id).ok_or(SessionError::NotFound)
    }

    fn end(&mut self, id: &SessionId, state: SessionState, now_ms: u64) {
        let Some(s) = self.by_id.get_mut(id) else {
            return;
        };
        if s.ended_at_ms.is_some() {
            return;
        }
        s.state = state;
        // The PIN and the credentials are useless once the session ends.
        s.pin = None;
        s.hand_out = None;
        s.ended_at_ms = Some(now_ms);
        let (expires, owner) = (s.expires_at_ms, s.owner.clone());
        if self.by_locator.get(&s.locator) == Some(id) {
            let locator = s.locator.clone();
            self.by_locator.remove(&locator);
        }
        self.deadlines.remove(&(expires, *id));
        if let Some(owner) = owner {
            self.owner_ended(&owner);
        }
        self.ended.push_back((now_ms, *id));
        // The one just ended is the newest, so the cap never forgets it.
        while self.ended.len() > self.cfg.max_ended {
            if let Some((_, old)) = self.ended.pop_front()
                && self.by_id.remove(&old).is_some()
            {
                self.forgotten.push(old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(agent: &str) -> NewSession {
        NewSession {
            agent: AgentId::parse(agent).unwrap(),
            ttl_ms: None,
            fields: vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv],
            amount: Some("12.50 GBP".into()),
            reference: None,
            owner: None,
            hand_out: false,
        }
    }

    fn table() -> SessionTable {
        SessionTable::new(SessionConfig::default())
    }

    #[test]
    fn full_life_of_a_session() {
        let mut t = table();
        let c = t.create(new("agent-7"), 1_000).unwrap();
        assert_eq!(c.locator.as_str().len(), DEFAULT_LOCATOR_LEN);
        assert_eq!(c.pin.reveal().len(), 6);
        assert_eq!(c.expires_at_ms, 1_000 + 900_000);
        let s = t.by_locator(&c.locator, 2_000).unwrap();
        assert_eq!((s.id(), s.agent().as_str()), (c.id, "agent-7"));
        t.bind(&c.id, CallId(1), 2_000).unwrap();
        let s = t.start_capture(&c.id, 3_000).unwrap();
        assert_eq!(s.state().api_name(), "capturing");
        assert_eq!(s.call(), Some(&CallId(1)));
        let pin = t.complete(&c.id, 120_000, 4_000).unwrap();
        assert_eq!(pin, c.pin);
        assert_eq!(t.get(&c.id).unwrap().expires_at_ms(), 124_000);
        // The session no longer holds the PIN.
        assert_eq!(
            t.complete(&c.id, 120_000, 4_001),
            Err(SessionError::PinGone)
        );
        t.unlocked(&c.id, 5_000).unwrap();
        assert_eq!(t.get(&c.id).unwrap().state(), &SessionState::Unlocked);
        assert!(t.by_locator(&c.locator, 5_000).is_none(), "locator freed");
        assert_eq!(t.live(), 0);
    }

    #[test]
    fn transitions_out_of_order_are_refused() {
        let mut t = table();
        let c = t.create(new("a"), 0).unwrap();
        assert_eq!(
            t.start_capture(&c.id, 1).unwrap_err(),
            SessionError::InvalidTransition {
                from: "created",
                action: "start capturing"
            }
        );
        assert!(matches!(
            t.unlocked(&c.id, 1),
            Err(SessionError::InvalidTransition { .. })
        ));
        t.bind(&c.id, CallId(7), 1).unwrap();
        assert!(matches!(
            t.bind(&c.id, CallId(8), 1),
            Err(SessionError::InvalidTransition { from: "bound", .. })
        ));
        t.destroy(&c.id, DestroyReason::Cancelled, 2).unwrap();
        assert_eq!(t.get(&c.id).unwrap().state().api_name(), "cancelled");
        assert!(matches!(
            t.fail(&c.id, FailReason::CallEnded, 3),
            Err(SessionError::InvalidTransition {
                from: "destroyed",
                ..
            })
        ));
        assert_eq!(
            t.bind(&SessionId::generate(), CallId(9), 0).unwrap_err(),
            SessionError::NotFound
        );
    }

    #[test]
    fn ttl_expires_sessions_and_frees_locators() {
        let mut t = table();
        let mut req = new("a");
        req.ttl_ms = Some(60_000);
        let c = t.create(req, 0).unwrap();
        assert!(t.by_locator(&c.locator, 59_999).is_some());
        assert!(t.by_locator(&c.locator, 60_000).is_none());
        assert_eq!(
            t.bind(&c.id, CallId(7), 60_000).unwrap_err(),
            SessionError::Expired
        );
        assert_eq!(t.get(&c.id).unwrap().state(), &SessionState::Expired);
        assert_eq!(t.live(), 0);
        let d = t.create(new("b"), 0).unwrap();
        assert_eq!(t.expire_due(900_000), vec![d.id]);
        // c ended at 60 s, d at 900 s; each lingers 60 s.
        assert_eq!(t.purge_ended(900_000 + 59_999, 60_000), 1);
        assert!(t.get(&c.id).is_none());
        assert!(t.get(&d.id).is_some());
        assert_eq!(t.purge_ended(960_000, 60_000), 1);
        assert!(t.get(&d.id).is_none());

        let mut bad = new("c");
        bad.ttl_ms = Some(10);
        assert!(matches!(t.create(bad, 0), Err(SessionError::BadTtl { .. })));
    }

    #[test]
    fn locators_are_unique_among_live_sessions() {
        let cfg = SessionConfig {
            locator_len: 3,
            max_live: 2_000,
            ..SessionConfig::default()
        };
        let mut t = SessionTable::new(cfg);
        let mut seen = std::collections::HashSet::new();
        let mut first = None;
        for i in 0..1_000 {
            let c = t.create(new(&format!("a{i}")), 0).unwrap();
            assert!(seen.insert(c.locator.clone()), "duplicate {}", c.locator);
            first.get_or_insert(c.id);
        }
        assert_eq!(
            t.create(new("full"), 0).unwrap_err(),
            SessionError::LocatorSpaceExhausted
        );
        // Ending one frees exactly its locator.
        let id = first.unwrap();
        let freed = t.get(&id).unwrap().locator().clone();
        t.destroy(&id, DestroyReason::Cancelled, 1).unwrap();
        assert_eq!(t.create(new("again"), 1).unwrap().locator, freed);
    }

    #[test]
    fn live_session_limit_holds() {
        let cfg = SessionConfig {
            max_live: 2,
            ..SessionConfig::default()
        };
        let mut t = SessionTable::new(cfg);
        t.create(new("a"), 0).unwrap();
        t.create(new("b"), 0).unwrap();
        assert_eq!(t.create(new("c"), 0).unwrap_err(), SessionError::TooMany);
    }

    fn owned(agent: &str, owner: &str, hand_out: bool) -> NewSession {
        NewSession {
            owner: Some(owner.into()),
            hand_out,
            ..new(agent)
        }
    }

    #[test]
    fn each_owner_has_a_quota_of_live_sessions() {
        let cfg = SessionConfig {
            max_live_per_owner: 3,
            ..SessionConfig::default()
        };
        let mut t = SessionTable::new(cfg);
        let ids: Vec<SessionId> = (0..3)
            .map(|i| {
                t.create(owned(&format!("a{i}"), "desk1", false), 0)
                    .unwrap()
                    .id
            })
            .collect();
        assert_eq!(
            t.create(owned("a", "desk1", false), 0).unwrap_err(),
            SessionError::QuotaReached
        );
        // Another owner, and a session without owner, are not affected.
        t.create(owned("b", "desk2", false), 0).unwrap();
        t.create(new("c"), 0).unwrap();
        assert_eq!((t.live_for("desk1"), t.live_for("desk2")), (3, 1));
        // Ending one (any way: cancel, expiry) gives the slot back.
        t.destroy(&ids[0], DestroyReason::Cancelled, 1).unwrap();
        t.create(owned("a", "desk1", false), 1).unwrap();
        let mut short = owned("d", "desk3", false);
        short.ttl_ms = Some(30_000);
        t.create(short, 0).unwrap();
        assert_eq!(t.live_for("desk3"), 1);
        t.expire_due(30_000);
        assert_eq!(t.live_for("desk3"), 0);
    }

    #[test]
    fn ended_sessions_kept_are_capped_oldest_first() {
        let cfg = SessionConfig {
            max_ended: 3,
            ..SessionConfig::default()
        };
        let mut t = SessionTable::new(cfg);
        let mut ids = Vec::new();
        for i in 0..5u64 {
            let c = t.create(owned("a", "desk1", false), i).unwrap();
            t.destroy(&c.id, DestroyReason::Cancelled, i).unwrap();
            ids.push(c.id);
        }
        assert_eq!(t.take_forgotten(), vec![ids[0], ids[1]]);
        assert!(t.get(&ids[1]).is_none());
        assert!(t.get(&ids[2]).is_some());
        assert!(t.take_forgotten().is_empty());
        // Purging after the linger walks the same order.
        assert_eq!(t.purge_ended(1_002, 1_000), 1);
        assert_eq!(t.take_forgotten(), vec![ids[2]]);
        assert_eq!(t.by_id.len(), 2);
        assert!(t.deadlines.is_empty());
    }

    #[test]
    fn churn_keeps_the_table_bounded() {
        let mut t = table();
        for i in 0..10_000u64 {
            let c = t.create(owned("a", "desk1", false), i).unwrap();
            t.destroy(&c.id, DestroyReason::Cancelled, i).unwrap();
        }
        assert_eq!(t.by_id.len(), SessionConfig::default().max_ended);
        assert_eq!(t.live(), 0);
        assert!(t.live_by_owner.is_empty());
        assert_eq!(t.take_forgotten().len(), 10_000 - t.by_id.len());
    }

    #[test]
    fn expiry_follows_the_deadline_moved_by_sealing() {
        let mut t = table();
        let mut req = new("a");
        req.ttl_ms = Some(60_000);
        let c = t.create(req, 0).unwrap();
        t.bind(&c.id, CallId(7), 1).unwrap();
        t.start_capture(&c.id, 2).unwrap();
        // Sealed at 50 s with a 120 s record TTL: lives to 170 s, not 60 s.
        t.complete(&c.id, 120_000, 50_000).unwrap();
        assert!(t.expire_due(60_000).is_empty());
        assert_eq!(t.expire_due(170_000), vec![c.id]);
        assert_eq!(t.get(&c.id).unwrap().state(), &SessionState::Expired);
        // A session ended another way is not expired later.
        let d = t.create(new("b"), 0).unwrap();
        t.destroy(&d.id, DestroyReason::Cancelled, 1).unwrap();
        assert!(t.expire_due(10_000_000).is_empty());
        assert_eq!(t.get(&d.id).unwrap().state().api_name(), "cancelled");
    }

    #[test]
    fn credentials_are_handed_out_once() {
        let mut t = table();
        let c = t.create(owned("a", "desk1", true), 0).unwrap();
        let (token, pin) = t.take_credentials(&c.id, 1).unwrap();
        assert_eq!((token, pin), (c.token.clone(), c.pin.clone()));
        assert_eq!(
            t.take_credentials(&c.id, 2).unwrap_err(),
            SessionError::CredentialsTaken
        );
        // Not kept for a creator that got them in its own answer.
        let d = t.create(owned("a", "pay", false), 0).unwrap();
        assert_eq!(
            t.take_credentials(&d.id, 1).unwrap_err(),
            SessionError::CredentialsTaken
        );
        // Still there after sealing; gone once the session ends.
        let e = t.create(owned("a", "desk1", true), 0).unwrap();
        t.bind(&e.id, CallId(8), 1).unwrap();
        t.start_capture(&e.id, 2).unwrap();
        t.complete(&e.id, 120_000, 3).unwrap();
        assert!(t.take_credentials(&e.id, 4).is_ok());
        let f = t.create(owned("a", "desk1", true), 0).unwrap();
        t.destroy(&f.id, DestroyReason::Cancelled, 1).unwrap();
        assert!(matches!(
            t.take_credentials(&f.id, 2),
            Err(SessionError::InvalidTransition { .. })
        ));
        assert!(!format!("{:?}", t.get(&e.id).unwrap()).contains(c.token.reveal()));
    }

    #[test]
    fn token_is_kept_as_a_hash_and_checked() {
        let mut t = table();
        let c = t.create(new("a"), 0).unwrap();
        let h = t.get(&c.id).unwrap().token_hash();
        assert!(h.matches(&RetrievalToken::from_presented(c.token.reveal())));
        assert!(!h.matches(&RetrievalToken::from_presented("guess")));
        let mut almost = c.token.reveal().to_string();
        almost.pop();
        assert!(!h.matches(&RetrievalToken::from_presented(&almost)));
        assert_eq!(c.token.reveal().len(), 64);
        assert_ne!(c.token, RetrievalToken::generate());
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
    }

    #[test]
    fn ids_and_locators_parse() {
        let id = SessionId::generate();
        assert_eq!(SessionId::parse(&id.to_string()), Ok(id));
        assert_eq!(SessionId::parse("xyz"), Err(SessionError::BadId));
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
        assert!(Locator::parse("0042").is_ok());
        for bad in ["12", "123456789", "12a4", ""] {
            assert_eq!(Locator::parse(bad), Err(SessionError::BadLocator), "{bad}");
        }
        assert!(AgentId::parse("").is_err());
        assert!(AgentId::parse("a\r\nb").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let mut t = table();
        let c = t.create(new("a"), 0).unwrap();
        let dbg = format!("{c:?} {:?}", t.get(&c.id).unwrap());
        assert!(!dbg.contains(c.token.reveal()), "{dbg}");
        assert!(!dbg.contains(&c.token.reveal()[..8]), "{dbg}");
        assert!(!dbg.contains(&format!("\"{}\"", c.pin.reveal())), "{dbg}");
        assert!(!dbg.contains(&format!("({})", c.pin.reveal())), "{dbg}");
        assert!(!dbg.contains(&t.get(&c.id).unwrap().token_hash().to_hex()[..8]));
        assert!(dbg.contains(c.locator.as_str()));
    }
}
