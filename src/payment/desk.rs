//! The payment desk: every payment session of one relay with its live capture, the calls bound
//! to sessions, and sealing. The control API's shell and the call core drive it; it owns no
//! I/O and reads no clock: every method takes `now_ms` (UNIX milliseconds) and first expires
//! what is due.
//!
//! What needs the outside world is handed back instead of done: a completed card comes back as
//! a [`SealJob`] for the shell to store (then [`Desk::stored`] or [`Desk::store_failed`]), a
//! session filed in a shared store's directory comes back from [`Desk::tick`] to withdraw once
//! it ends, and what the shell counts, logs or shows its followers is queued as [`Notice`]s
//! ([`Desk::take_notices`]). None of it carries a card digit.

use std::collections::HashMap;
use std::sync::Arc;

use crate::digit::{Digit, DigitSource};
use crate::ids::CallId;
use crate::payment::capture::{
    Capture, CaptureConfig, CaptureError, CaptureEvent, CaptureInput, CaptureStatus,
};
use crate::payment::card::{CardData, FieldName, YearMonth};
use crate::payment::directory;
use crate::payment::pin::Pin;
use crate::payment::session::{
    AgentId, Created, DestroyReason, FailReason, Locator, NewSession, RetrievalToken, Session,
    SessionConfig, SessionError, SessionId, SessionState, SessionTable, SharedSession,
};
use crate::payment::vault::{self, MasterKey, SealedRecord};

/// Ended sessions stay readable this long so the agent's desktop can show the outcome.
pub const DEFAULT_LINGER_MS: u64 = 300_000;

/// A sealed record (and its session) lives this long after the capture completes.
pub const DEFAULT_RECORD_TTL_MS: u64 = 120_000;

/// How far a mapped key time may stray from the desk's clock before the media clock is taken
/// to have restarted (a new leg, a new RTP timestamp base) and is anchored again.
const MEDIA_CLOCK_SLACK_MS: i128 = 60_000;

/// The desk's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeskConfig {
    pub sessions: SessionConfig,
    pub record_ttl_ms: u64,
    /// Ended sessions stay readable this long.
    pub linger_ms: u64,
    /// Capture rules other than the field list (which each session names).
    pub capture: CaptureConfig,
}

impl Default for DeskConfig {
    fn default() -> DeskConfig {
        DeskConfig {
            sessions: SessionConfig::default(),
            record_ttl_ms: DEFAULT_RECORD_TTL_MS,
            linger_ms: DEFAULT_LINGER_MS,
            capture: CaptureConfig::default(),
        }
    }
}

/// Why the desk refused. The first variants are the normal cases a caller tells apart (a key
/// on a call with no session, a session not capturing yet); none carries card data or input.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DeskError {
    #[error("no session is bound to this call")]
    NoSession,
    #[error("the session is not capturing")]
    NotCapturing,
    #[error("the session is no longer capturing")]
    CaptureOver,
    #[error("the call is bound to another session")]
    CallTaken,
    #[error("the session was taken by another relay")]
    TakenElsewhere,
    #[error("no such session")]
    NotFound,
    /// Reported by the shell: binding needs a live call and the call is not (or no longer) up.
    #[error("no live call has this id")]
    NoCall,
    /// Reported by the shell: the shared store behind the session directory did not answer.
    #[error("the shared session store is unavailable")]
    StoreUnavailable,
    #[error("the clock is outside the calendar")]
    ClockOutOfRange,
    #[error("sealing failed")]
    Seal,
    #[error("the session could not be filed for other relays")]
    Directory,
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

/// What happened, for the shell to count, log and show. Drained with [`Desk::take_notices`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The session's state or progress changed: its followers should see it again. Queued
    /// once per session until drained.
    Changed(SessionId),
    /// The session reached a terminal state; `outcome` is a fixed word (metric label).
    Ended {
        id: SessionId,
        outcome: &'static str,
    },
    /// A field ran out of attempts: the capture failed.
    CaptureFailed(SessionId),
    /// The completed card could not be sealed; the session failed.
    SealFailed { id: SessionId, error: DeskError },
    /// A numeric key counted toward the card (not a duplicate copy, not after the end).
    DigitTaken(SessionId),
    /// The desk no longer knows the session (purged after its linger, or rolled back).
    Forgotten(SessionId),
}

/// A sealed record for the shell to put in the vault store, outside any lock.
#[derive(Debug)]
pub struct SealJob {
    pub id: SessionId,
    pub record: SealedRecord,
}

/// What the housekeeping tick hands the shell.
#[derive(Debug, Default)]
pub struct Tick {
    /// Captures that completed on their deadline.
    pub seals: Vec<SealJob>,
    /// Ended sessions this relay filed in the shared directory: take them out.
    pub withdraw: Vec<(Locator, SessionId)>,
}

/// A session as the desk holds it: the table's entry, its capture and its call.
#[derive(Clone, Copy, Debug)]
pub struct View<'a> {
    pub session: &'a Session,
    pub capture: &'a Capture,
    pub call: Option<CallId>,
}

/// What the desk keeps per session next to the [`SessionTable`] entry.
#[derive(Debug)]
struct Live {
    capture: Capture,
    call: Option<CallId>,
    /// Desk clock minus media clock, fixed at the first key (see [`Live::media_to_desk`]).
    media_offset: Option<i128>,
    /// Filed in the shared store's session directory by this relay: binding must claim it
    /// back first, so that no other relay captures the same session.
    published: bool,
}

impl Live {
    /// Maps a key's onset on the media clock onto the desk's clock, which the capture's
    /// timeouts, resets and the tick all use. One offset per session keeps the spacing of keys
    /// (and equal onsets of duplicate copies) exactly as the media path saw them.
    fn media_to_desk(&mut self, at_ms: u64, now_ms: u64) -> u64 {
        let (at, now) = (i128::from(at_ms), i128::from(now_ms));
        let offset = match self.media_offset {
            Some(o) if (at + o - now).abs() <= MEDIA_CLOCK_SLACK_MS => o,
            _ => now - at,
        };
        self.media_offset = Some(offset);
        u64::try_from((at + offset).max(0)).unwrap_or(now_ms)
    }
}

/// The payment sessions of one relay. See the module documentation.
pub struct Desk {
    cfg: DeskConfig,
    master: Arc<MasterKey>,
    table: SessionTable,
    live: HashMap<SessionId, Live>,
    calls: HashMap<CallId, SessionId>,
    /// Ended sessions still filed in the shared directory, to take out (by the next tick).
    withdraw: Vec<(Locator, SessionId)>,
    notices: Vec<Notice>,
}

impl std::fmt::Debug for Desk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Desk")
            .field("sessions", &self.live.len())
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

/// The fixed word for how a session ended (`live` while it has not).
pub fn outcome(state: &SessionState) -> &'static str {
    match state {
        SessionState::Unlocked => "unlocked",
        SessionState::Destroyed {
            reason: DestroyReason::Cancelled,
        } => "cancelled",
        SessionState::Destroyed {
            reason: DestroyReason::TriesExhausted,
        } => "tries_exhausted",
        SessionState::Failed {
            reason: FailReason::CaptureFailed,
        } => "capture_failed",
        SessionState::Failed {
            reason: FailReason::CallEnded,
        } => "call_ended",
        SessionState::Failed {
            reason: FailReason::VaultError,
        } => "vault_error",
        SessionState::Expired => "expired",
        _ => "live",
    }
}

impl Desk {
    /// A desk sealing with `master` (the key the vault store opens with).
    pub fn new(cfg: DeskConfig, master: Arc<MasterKey>) -> Desk {
        Desk {
            table: SessionTable::new(cfg.sessions.clone()),
            cfg,
            master,
            live: HashMap::new(),
            calls: HashMap::new(),
            withdraw: Vec::new(),
            notices: Vec::new(),
        }
    }

    /// Expires every session past its TTL and forgets purged ones, so no read shows a live
    /// session that is due. Every method does this first.
    pub fn advance(&mut self, now_ms: u64) {
        for id in self.table.expire_due(now_ms) {
            self.ended(&id);
        }
        self.forget_purged();
    }

    /// What happened since the last call, oldest first.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// The session, if the desk still knows it.
    pub fn session(&self, id: &SessionId) -> Option<&Session> {
        self.table.get(id)
    }

    /// The session with its capture and call.
    pub fn view(&self, id: &SessionId) -> Option<View<'_>> {
        let session = self.table.get(id)?;
        let live = self.live.get(id)?;
        Some(View {
            session,
            capture: &live.capture,
            call: live.call,
        })
    }

    /// The sessions `owner` created that the desk still knows (live, or ended and lingering),
    /// newest first.
    pub fn owned_by(&self, owner: &str) -> Vec<SessionId> {
        let mut v: Vec<(u64, SessionId)> = self
            .live
            .keys()
            .filter_map(|id| self.table.get(id))
            .filter(|s| s.owner() == Some(owner))
            .map(|s| (s.created_at_ms(), s.id()))
            .collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// The session bound to `call`, if any.
    pub fn session_on(&self, call: CallId) -> Option<SessionId> {
        self.calls.get(&call).copied()
    }

    /// Live (not ended) sessions.
    pub fn live(&self) -> usize {
        self.table.live()
    }

    /// AddAgent. With `shared`, the session is also to be filed in a shared store's directory
    /// for other relays: the entry to file (sealed with the master key) comes back with it.
    pub fn create(
        &mut self,
        new: NewSession,
        shared: bool,
        now_ms: u64,
    ) -> Result<(Created, Option<String>), DeskError> {
        self.create_confirming(new, &[], shared, now_ms)
    }

    /// [`Desk::create`] with `confirm`'s fields keyed twice (match-twice). The choice stays on
    /// this relay: a session another relay adopts from the shared directory keys each field
    /// once.
    pub fn create_confirming(
        &mut self,
        new: NewSession,
        confirm: &[FieldName],
        shared: bool,
        now_ms: u64,
    ) -> Result<(Created, Option<String>), DeskError> {
        self.advance(now_ms);
        let live = self.live_for(&new.fields, confirm, now_ms, shared)?;
        let created = self.table.create(new, now_ms)?;
        self.live.insert(created.id, live);
        let entry = if shared {
            let s = self
                .table
                .export(&created.id, now_ms)
                .ok_or(DeskError::Directory)?;
            Some(directory::encode(&s, &self.master).map_err(|_| DeskError::Directory)?)
        } else {
            None
        };
        Ok((created, entry))
    }

    /// Takes back a session just created whose filing in the shared directory failed.
    pub fn forget(&mut self, id: &SessionId) {
        self.table.remove(id);
        if self.live.remove(id).is_some() {
            self.notices.push(Notice::Forgotten(*id));
        }
    }

    /// GetAgent on this relay's own sessions: the live session holding `locator`.
    pub fn locate(&mut self, locator: &str, now_ms: u64) -> Option<(SessionId, AgentId)> {
        self.advance(now_ms);
        let locator = Locator::parse(locator).ok()?;
        let s = self.table.by_locator(&locator, now_ms)?;
        Some((s.id(), s.agent().clone()))
    }

    /// The live session holding `locator` (read only: a session past its TTL is not shown,
    /// but is expired only by the next method that advances the desk).
    pub fn by_locator(&self, locator: &Locator, now_ms: u64) -> Option<&Session> {
        self.table.by_locator(locator, now_ms)
    }

    /// Takes over a session another relay created (claimed from the shared directory): only
    /// this relay can capture it from now on.
    pub fn adopt(
        &mut self,
        shared: SharedSession,
        now_ms: u64,
    ) -> Result<(SessionId, AgentId), DeskError> {
        self.advance(now_ms);
        let live = self.live_for(&shared.fields, &[], now_ms, false)?;
        let (id, agent) = (shared.id, shared.agent.clone());
        self.table.adopt(shared, now_ms)?;
        self.live.insert(id, live);
        Ok((id, agent))
    }

    /// The locator to claim back from the shared directory before `id` is bound here, when
    /// this relay filed it there.
    pub fn filed_locator(&self, id: &SessionId) -> Option<Locator> {
        match (self.live.get(id), self.table.get(id)) {
            (Some(l), Some(s)) if l.published => Some(s.locator().clone()),
            _ => None,
        }
    }

    /// The directory's answer to that claim: the session it held under the locator, if any.
    /// Anything but `id` itself means another relay took the session.
    pub fn claimed(&mut self, id: &SessionId, held: Option<SessionId>) -> Result<(), DeskError> {
        if held != Some(*id) {
            return Err(DeskError::TakenElsewhere);
        }
        if let Some(l) = self.live.get_mut(id) {
            l.published = false;
        }
        Ok(())
    }

    /// Binds `call` to the session, and starts capturing when `start`.
    pub fn bind(
        &mut self,
        id: SessionId,
        call: CallId,
        start: bool,
        now_ms: u64,
    ) -> Result<(), DeskError> {
        self.advance(now_ms);
        if self.calls.contains_key(&call) {
            return Err(DeskError::CallTaken);
        }
        self.table.bind(&id, call, now_ms)?;
        self.calls.insert(call, id);
        if let Some(l) = self.live.get_mut(&id) {
            l.call = Some(call);
        }
        if start {
            self.table.start_capture(&id, now_ms)?;
        }
        self.changed(id);
        Ok(())
    }

    /// Starts capturing on the bound call.
    pub fn start(&mut self, id: &SessionId, now_ms: u64) -> Result<(), DeskError> {
        self.advance(now_ms);
        self.table.start_capture(id, now_ms)?;
        self.changed(*id);
        Ok(())
    }

    /// The agent starts the capture over.
    pub fn reset(&mut self, id: &SessionId, now_ms: u64) -> Result<(), DeskError> {
        self.command(id, CaptureInput::Reset { now_ms }, now_ms)
    }

    /// The agent asks for `field` again.
    pub fn request_field(
        &mut self,
        id: &SessionId,
        field: FieldName,
        now_ms: u64,
    ) -> Result<(), DeskError> {
        self.command(id, CaptureInput::Request { field, now_ms }, now_ms)
    }

    /// Reset and field requests apply while the session is live and not yet sealed.
    fn command(
        &mut self,
        id: &SessionId,
        input: CaptureInput,
        now_ms: u64,
    ) -> Result<(), DeskError> {
        self.advance(now_ms);
        let state = self
            .table
            .get(id)
            .map(Session::state)
            .ok_or(DeskError::NotFound)?;
        if state.is_terminal() || matches!(state, SessionState::Completed { .. }) {
            return Err(DeskError::CaptureOver);
        }
        let live = self.live.get_mut(id).ok_or(DeskError::NotFound)?;
        live.capture.handle(input)?;
        self.changed(*id);
        Ok(())
    }

    /// One key from the caller on `call`. `at_ms` is the key's onset on the media path's clock
    /// (any monotonic milliseconds; the in-band and RFC 4733 copies of one key must carry the
    /// same value), mapped onto the desk's clock for the inter-digit timeout. Returns the
    /// capture's events (no digits), and the sealed card when this key completed it.
    pub fn feed(
        &mut self,
        call: CallId,
        digit: Digit,
        source: DigitSource,
        at_ms: u64,
        now_ms: u64,
    ) -> Result<(Vec<CaptureEvent>, Option<SealJob>), DeskError> {
        self.advance(now_ms);
        let id = self.session_on(call).ok_or(DeskError::NoSession)?;
        let capturing = self
            .table
            .get(&id)
            .is_some_and(|s| matches!(s.state(), SessionState::Capturing { .. }));
        if !capturing {
            return Err(DeskError::NotCapturing);
        }
        let live = self.live.get_mut(&id).ok_or(DeskError::NotFound)?;
        let dups = live.capture.duplicates_ignored();
        let was_capturing = live.capture.status() == CaptureStatus::Capturing;
        let at_ms = live.media_to_desk(at_ms, now_ms);
        let events = live.capture.handle(CaptureInput::Digit {
            digit,
            source,
            at_ms,
        })?;
        if was_capturing && digit.is_numeric() && live.capture.duplicates_ignored() == dups {
            self.notices.push(Notice::DigitTaken(id));
        }
        let job = self.after_capture(&id, &events, now_ms);
        Ok((events, job))
    }

    /// The call ended: a session still bound or capturing on it fails.
    pub fn call_ended(&mut self, call: CallId, now_ms: u64) {
        self.advance(now_ms);
        let Some(id) = self.session_on(call) else {
            return;
        };
        let open = self.table.get(&id).is_some_and(|s| {
            matches!(
                s.state(),
                SessionState::Bound { .. } | SessionState::Capturing { .. }
            )
        });
        if open && self.table.fail(&id, FailReason::CallEnded, now_ms).is_ok() {
            self.ended(&id);
        }
    }

    /// The shell stored a [`SealJob`]'s record: the session shows as completed.
    pub fn stored(&mut self, id: &SessionId, now_ms: u64) {
        self.advance(now_ms);
        self.changed(*id);
    }

    /// Storing a [`SealJob`]'s record failed: the session fails.
    pub fn store_failed(&mut self, id: &SessionId, now_ms: u64) {
        self.advance(now_ms);
        if self.table.fail(id, FailReason::VaultError, now_ms).is_ok() {
            self.ended(id);
        }
    }

    /// Cancels the session (its sealed record, if any, is the shell's to destroy).
    pub fn cancel(&mut self, id: &SessionId, now_ms: u64) -> Result<(), DeskError> {
        self.advance(now_ms);
        self.table.destroy(id, DestroyReason::Cancelled, now_ms)?;
        self.ended(id);
        Ok(())
    }

    /// The store opened the session's record: the session is done. A session this desk does
    /// not know (it lives on another relay) is no error.
    pub fn unlocked(&mut self, id: &SessionId, now_ms: u64) {
        self.advance(now_ms);
        if self.table.unlocked(id, now_ms).is_ok() {
            self.ended(id);
        }
    }

    /// The store destroyed the session's record after too many wrong PINs.
    pub fn tries_exhausted(&mut self, id: &SessionId, now_ms: u64) {
        self.advance(now_ms);
        if self
            .table
            .destroy(id, DestroyReason::TriesExhausted, now_ms)
            .is_ok()
        {
            self.ended(id);
        }
    }

    /// The one hand-out of a desk-created session's token and PIN.
    pub fn take_credentials(
        &mut self,
        id: &SessionId,
        now_ms: u64,
    ) -> Result<(RetrievalToken, Pin), DeskError> {
        self.advance(now_ms);
        Ok(self.table.take_credentials(id, now_ms)?)
    }

    /// Housekeeping: capture timeouts (which may complete a card), TTLs, purging ended
    /// sessions past their linger.
    pub fn tick(&mut self, now_ms: u64) -> Tick {
        self.advance(now_ms);
        let due: Vec<SessionId> = self
            .live
            .iter()
            .filter(|(_, l)| l.capture.next_deadline().is_some_and(|d| d <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        let mut seals = Vec::new();
        for id in due {
            let events = match self.live.get_mut(&id) {
                Some(l) => l
                    .capture
                    .handle(CaptureInput::Tick { now_ms })
                    .unwrap_or_default(),
                None => continue,
            };
            seals.extend(self.after_capture(&id, &events, now_ms));
        }
        self.table.purge_ended(now_ms, self.cfg.linger_ms);
        self.forget_purged();
        Tick {
            seals,
            withdraw: std::mem::take(&mut self.withdraw),
        }
    }

    /// The capture state for a new or adopted session.
    fn live_for(
        &self,
        fields: &[FieldName],
        confirm: &[FieldName],
        now_ms: u64,
        published: bool,
    ) -> Result<Live, DeskError> {
        let mut capture_cfg = CaptureConfig::for_fields(fields)?.with_confirm(confirm)?;
        capture_cfg.inter_digit_timeout_ms = self.cfg.capture.inter_digit_timeout_ms;
        capture_cfg.max_attempts = self.cfg.capture.max_attempts;
        capture_cfg.allow_unknown_brand = self.cfg.capture.allow_unknown_brand;
        let today = YearMonth::at_unix_ms(now_ms).ok_or(DeskError::ClockOutOfRange)?;
        Ok(Live {
            capture: Capture::new(capture_cfg, today),
            call: None,
            media_offset: None,
            published,
        })
    }

    fn forget_purged(&mut self) {
        for id in self.table.take_forgotten() {
            if self.live.remove(&id).is_some() {
                self.notices.push(Notice::Forgotten(id));
            }
        }
    }

    fn changed(&mut self, id: SessionId) {
        if !self.notices.contains(&Notice::Changed(id)) {
            self.notices.push(Notice::Changed(id));
        }
    }

    /// Bookkeeping for a session that just reached a terminal state.
    fn ended(&mut self, id: &SessionId) {
        if let Some(s) = self.table.get(id) {
            let outcome = outcome(s.state());
            self.notices.push(Notice::Ended { id: *id, outcome });
        }
        if let Some(call) = self.live.get(id).and_then(|l| l.call) {
            self.calls.remove(&call);
        }
        let filed = self
            .live
            .get_mut(id)
            .is_some_and(|l| std::mem::take(&mut l.published));
        if filed && let Some(s) = self.table.get(id) {
            self.withdraw.push((s.locator().clone(), *id));
        }
        self.changed(*id);
    }

    /// After capture events: fail or seal as the capture says.
    fn after_capture(
        &mut self,
        id: &SessionId,
        events: &[CaptureEvent],
        now_ms: u64,
    ) -> Option<SealJob> {
        let complete = events
            .iter()
            .any(|e| matches!(e, CaptureEvent::Complete { .. }));
        if events.iter().any(|e| matches!(e, CaptureEvent::Failed(_))) {
            self.notices.push(Notice::CaptureFailed(*id));
        }
        if !complete {
            if !events.is_empty() {
                self.changed(*id);
            }
            return None;
        }
        let card = self.live.get_mut(id).and_then(|l| l.capture.take_card())?;
        match self.seal(id, &card, now_ms) {
            Ok(job) => Some(job),
            Err(error) => {
                self.notices.push(Notice::SealFailed { id: *id, error });
                if self.table.fail(id, FailReason::VaultError, now_ms).is_ok() {
                    self.ended(id);
                }
                None
            }
        }
        // `card` drops (and zeroizes) here.
    }

    fn seal(&mut self, id: &SessionId, card: &CardData, now_ms: u64) -> Result<SealJob, DeskError> {
        let pin = self.table.complete(id, self.cfg.record_ttl_ms, now_ms)?;
        let s = self.table.get(id).ok_or(DeskError::NotFound)?;
        let record = vault::seal(card, &self.master, &pin, *id, s.locator(), s.token_hash())
            .map_err(|_| DeskError::Seal)?;
        Ok(SealJob { id: *id, record })
    }
}

#[cfg(test)]
mod tests;
