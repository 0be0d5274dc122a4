//! Card capture: the sans-IO state machine that assembles the caller's keys into fields (PAN,
//! expiry, CVV, then any configured numeric fields), validates them and, when every field is
//! good, yields a [`CardData`].
//!
//! Keys: `0`-`9` are digits, `#` ends the current field early, `*` clears it; `A`-`D` are
//! ignored. A field also ends when it is full (the brand's longest PAN, 4 expiry digits, the
//! CVV length, an extra field's maximum) or when the inter-digit timeout passes. A field that
//! ends invalid costs an attempt and is asked again; the last attempt fails the capture.
//!
//! Time is an input (`at_ms`/`now_ms`, any monotonic millisecond clock), so timeouts are
//! deterministic. Outputs are [`CaptureEvent`]s for the agent: field, digit count, state,
//! brand, and the last four of the PAN once it is complete (PCI DSS 3.4.1) — never a digit.
//! The digits live only in zeroizing buffers here and in the final `CardData`.

use serde::Serialize;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::digit::{Digit, DigitSource};
use crate::payment::card::{
    Brand, CardData, CardError, Cvv, Expiry, FieldName, Last4, PAN_MAX_LEN, Pan, YearMonth,
};

/// A numeric field captured after the card fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtraField {
    pub name: FieldName,
    pub min_digits: usize,
    pub max_digits: usize,
    /// `#` on an empty optional field skips it.
    pub optional: bool,
}

impl ExtraField {
    /// The numeric part of a postcode (US ZIP, the digits of a UK postcode for AVS).
    pub fn postcode() -> ExtraField {
        ExtraField {
            name: FieldName::Postcode,
            min_digits: 1,
            max_digits: 10,
            optional: false,
        }
    }
}

/// What to capture and how patiently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Capture the expiry after the PAN.
    pub expiry: bool,
    /// Capture the CVV after the expiry.
    pub cvv: bool,
    /// Further numeric fields, in order, after the card fields.
    pub extra: Vec<ExtraField>,
    /// A field with digits in it ends this long after its last digit.
    pub inter_digit_timeout_ms: u64,
    /// Invalid entries allowed per field before the capture fails.
    pub max_attempts: u32,
    /// Accept a Luhn-valid 12-19 digit PAN outside every known IIN range.
    pub allow_unknown_brand: bool,
    /// Fields the caller keys twice (match-twice): a valid first entry is held while the
    /// caller keys it again, and only a matching second entry is accepted.
    pub confirm: Vec<FieldName>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            expiry: true,
            cvv: true,
            extra: Vec::new(),
            inter_digit_timeout_ms: 6_000,
            max_attempts: 3,
            allow_unknown_brand: false,
            confirm: Vec::new(),
        }
    }
}

impl CaptureConfig {
    /// The config for the API's `fields` list (`pan` is required and always first; the order of
    /// the rest is fixed: expiry, CVV, then extra fields as listed).
    pub fn for_fields(fields: &[FieldName]) -> Result<CaptureConfig, CaptureError> {
        if !fields.contains(&FieldName::Pan) {
            return Err(CaptureError::PanRequired);
        }
        let mut cfg = CaptureConfig {
            expiry: fields.contains(&FieldName::Expiry),
            cvv: fields.contains(&FieldName::Cvv),
            ..CaptureConfig::default()
        };
        for f in fields {
            match f {
                FieldName::Pan | FieldName::Expiry | FieldName::Cvv => {}
                FieldName::Postcode => cfg.extra.push(ExtraField::postcode()),
                FieldName::Other(_) => return Err(CaptureError::UnknownField),
            }
        }
        Ok(cfg)
    }

    /// The same capture with `confirm`'s fields keyed twice (match-twice); each must be one
    /// of the captured fields.
    pub fn with_confirm(mut self, confirm: &[FieldName]) -> Result<CaptureConfig, CaptureError> {
        for f in confirm {
            let captured = match f {
                FieldName::Pan => true,
                FieldName::Expiry => self.expiry,
                FieldName::Cvv => self.cvv,
                other => self.extra.iter().any(|e| &e.name == other),
            };
            if !captured {
                return Err(CaptureError::UnknownField);
            }
        }
        self.confirm = confirm.to_vec();
        Ok(self)
    }
}

/// One input to the capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureInput {
    /// A key from the caller. `at_ms` is the key's onset on the media clock (the RFC 4733
    /// event timestamp or the tone detector's onset), so the in-band and RFC 4733 copies of one
    /// key carry the same value. Upstream dedupes those copies; if both still arrive, a key
    /// equal to the previous key in both `digit` and `at_ms` is dropped as a duplicate,
    /// whatever its `source`. Two real presses of one key cannot share an onset (a key lasts at
    /// least 40 ms, ITU-T Q.24).
    Digit {
        digit: Digit,
        source: DigitSource,
        at_ms: u64,
    },
    /// Time passes: ends a field whose inter-digit timeout has run out.
    Tick { now_ms: u64 },
    /// The agent clears every field and starts again (attempt counts too).
    Reset { now_ms: u64 },
    /// The agent asks for one field again (its value and attempts are cleared).
    Request { field: FieldName, now_ms: u64 },
}

/// Where a field stands, as the agent sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldState {
    /// Not reached yet.
    Waiting,
    /// Digits arriving; the value so far is not acceptable yet.
    Capturing,
    /// Digits arriving and the value would be accepted now (`#` or the timeout completes it).
    Valid,
    Complete,
    /// The last entry was rejected (or, for a PAN, the digits so far fit no known range).
    Invalid,
    Skipped,
}

/// Why an entry was rejected: error kinds an agent can put into words for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    NotDigits,
    /// Fewer digits than the field (or the card's brand) needs.
    TooShort,
    /// More digits than the field (or the card's brand) allows.
    TooLong,
    /// The card number's check digit is wrong (a mistyped digit).
    LuhnFailed,
    UnknownBrand,
    /// The expiry's month is not 01-12.
    BadMonth,
    Expired,
    /// The inter-digit timeout ended an entry that was not acceptable.
    Timeout,
    /// A field that must be keyed twice was keyed differently the second time.
    Mismatch,
}

impl RejectReason {
    /// `Length` split by which way the entry was wrong: `max` is the longest entry the field
    /// takes.
    fn from_card(e: CardError, len: usize, max: usize) -> RejectReason {
        match e {
            CardError::NotDigits => RejectReason::NotDigits,
            CardError::Length if len > max => RejectReason::TooLong,
            CardError::Length => RejectReason::TooShort,
            CardError::Luhn => RejectReason::LuhnFailed,
            CardError::UnknownBrand => RejectReason::UnknownBrand,
            CardError::Month => RejectReason::BadMonth,
            CardError::Expired => RejectReason::Expired,
        }
    }
}

/// A field's progress for the agent: counts and states, never digits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldProgress {
    pub field: FieldName,
    /// How many digits are keyed, never which.
    pub digits: usize,
    pub state: FieldState,
    /// PAN only, once the IIN decides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brand: Option<Brand>,
    /// PAN only, once complete and valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last4: Option<Last4>,
    /// Rejected entries so far.
    pub attempts: u32,
    /// Rejected entries the caller may still make before the capture fails.
    pub attempts_left: u32,
    /// Why the last entry was rejected, while the state is `invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<RejectReason>,
    /// The field is keyed twice; `true` while the first entry is taken and the caller is to
    /// key it again to confirm.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub confirming: bool,
}

/// What the capture tells the agent (and the shell, which may play prompts). Serialises as
/// `{"event": "...", ...progress}` for SSE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CaptureEvent {
    /// A digit was counted or the field was cleared.
    Progress(FieldProgress),
    /// The field's value was accepted (or, optional and empty, skipped).
    FieldComplete(FieldProgress),
    /// The entry was rejected; `reason` says why. The field is asked again unless this was
    /// the last attempt.
    FieldRejected(FieldProgress),
    /// The caller should now key this field.
    FieldRequested(FieldProgress),
    /// The field ran out of attempts; the capture has failed.
    Failed(FieldProgress),
    /// Every field is captured; [`Capture::take_card`] yields the card once.
    Complete {
        #[serde(skip_serializing_if = "Option::is_none")]
        brand: Option<Brand>,
        last4: Last4,
    },
}

/// The capture as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptureStatus {
    Capturing,
    Complete,
    Failed,
}

/// Agent commands the capture cannot follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum CaptureError {
    #[error("field is not part of this capture")]
    UnknownField,
    #[error("the capture is complete; start a new session")]
    Finished,
    #[error("the PAN field is required")]
    PanRequired,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Pan,
    Expiry,
    Cvv,
    Extra(ExtraField),
}

/// A field's accepted value.
enum Value {
    Pan(Pan),
    Expiry(Expiry),
    Cvv(Cvv),
    Digits(Zeroizing<Vec<u8>>),
}

/// What the agent may know about an accepted field.
#[derive(Clone, Copy)]
struct Summary {
    digits: usize,
    brand: Option<Brand>,
    last4: Option<Last4>,
    skipped: bool,
}

struct Field {
    kind: Kind,
    /// Allocated once at [`PAN_MAX_LEN`] and never grown, so no copy is left behind.
    buf: Zeroizing<Vec<u8>>,
    /// The accepted value, until the capture completes and moves it into the card.
    value: Option<Value>,
    /// Set when the field is accepted or skipped; outlives `value`.
    summary: Option<Summary>,
    attempts: u32,
    reason: Option<RejectReason>,
    /// Match-twice: the caller keys this field twice.
    confirm: bool,
    /// Match-twice: the first entry, held (allocated once, never grown) until the second.
    first: Zeroizing<Vec<u8>>,
}

impl Field {
    fn new(kind: Kind, confirm: bool) -> Field {
        Field {
            kind,
            buf: Zeroizing::new(Vec::with_capacity(PAN_MAX_LEN)),
            confirm,
            first: Zeroizing::new(Vec::with_capacity(if confirm { PAN_MAX_LEN } else { 0 })),
            value: None,
            summary: None,
            attempts: 0,
            reason: None,
        }
    }

    fn name(&self) -> FieldName {
        match &self.kind {
            Kind::Pan => FieldName::Pan,
            Kind::Expiry => FieldName::Expiry,
            Kind::Cvv => FieldName::Cvv,
            Kind::Extra(e) => e.name.clone(),
        }
    }

    fn clear(&mut self) {
        // Zeroize before truncating: `clear` alone leaves the bytes in the allocation.
        zeroize::Zeroize::zeroize(&mut *self.buf);
        zeroize::Zeroize::zeroize(&mut *self.first);
        self.value = None;
        self.summary = None;
        self.reason = None;
    }
}

/// The capture state machine for one payment.
pub struct Capture {
    cfg: CaptureConfig,
    today: YearMonth,
    fields: Vec<Field>,
    current: usize,
    status: CaptureStatus,
    last_key: Option<(Digit, u64)>,
    last_digit_at: Option<u64>,
    duplicates: u64,
    card: Option<CardData>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture")
            .field("status", &self.status)
            .field("progress", &self.progress())
            .finish_non_exhaustive()
    }
}

impl Capture {
    /// A capture waiting for the first PAN digit. `today` is the month expiry is checked
    /// against.
    pub fn new(cfg: CaptureConfig, today: YearMonth) -> Capture {
        let twice = |name: FieldName| cfg.confirm.contains(&name);
        let mut fields = vec![Field::new(Kind::Pan, twice(FieldName::Pan))];
        if cfg.expiry {
            fields.push(Field::new(Kind::Expiry, twice(FieldName::Expiry)));
        }
        if cfg.cvv {
            fields.push(Field::new(Kind::Cvv, twice(FieldName::Cvv)));
        }
        for e in &cfg.extra {
            fields.push(Field::new(Kind::Extra(e.clone()), twice(e.name.clone())));
        }
        Capture {
            cfg,
            today,
            fields,
            current: 0,
            status: CaptureStatus::Capturing,
            last_key: None,
            last_digit_at: None,
            duplicates: 0,
            card: None,
        }
    }

    pub fn status(&self) -> CaptureStatus {
        self.status
    }

    /// The field the caller is keying, while capturing.
    pub fn current_field(&self) -> Option<FieldName> {
        (self.status == CaptureStatus::Capturing)
            .then(|| self.fields.get(self.current).map(Field::name))
            .flatten()
    }

    /// Keys dropped as exact duplicates (see [`CaptureInput::Digit`]).
    pub fn duplicates_ignored(&self) -> u64 {
        self.duplicates
    }

    /// When the shell should send a [`CaptureInput::Tick`]: the current field's timeout.
    pub fn next_deadline(&self) -> Option<u64> {
        let field = self.fields.get(self.current)?;
        if self.status != CaptureStatus::Capturing || field.buf.is_empty() {
            return None;
        }
        self.last_digit_at
            .map(|t| t.saturating_add(self.cfg.inter_digit_timeout_ms))
    }

    /// Every field's progress, in capture order.
    pub fn progress(&self) -> Vec<FieldProgress> {
        (0..self.fields.len())
            .filter_map(|i| self.field_progress(i))
            .collect()
    }

    /// The card, once, after [`CaptureEvent::Complete`].
    pub fn take_card(&mut self) -> Option<CardData> {
        self.card.take()
    }

    /// Feeds one input; returns what the agent should learn from it.
    pub fn handle(&mut self, input: CaptureInput) -> Result<Vec<CaptureEvent>, CaptureError> {
        let mut out = Vec::new();
        match input {
            CaptureInput::Digit { digit, at_ms, .. } => {
                if self.last_key == Some((digit, at_ms)) {
                    self.duplicates += 1;
                    return Ok(out);
                }
                self.last_key = Some((digit, at_ms));
                if self.status != CaptureStatus::Capturing {
                    return Ok(out);
                }
                // A key after the deadline finds the field already ended (the shell's tick
                // may not have come first).
                self.tick(at_ms, &mut out);
                if self.status == CaptureStatus::Capturing {
                    self.key(digit, at_ms, &mut out);
                }
            }
            CaptureInput::Tick { now_ms } => self.tick(now_ms, &mut out),
            CaptureInput::Reset { .. } => {
                if self.status == CaptureStatus::Complete {
                    return Err(CaptureError::Finished);
                }
                for f in &mut self.fields {
                    f.clear();
                    f.attempts = 0;
                }
                self.status = CaptureStatus::Capturing;
                self.last_digit_at = None;
                self.current = 0;
                self.requested(&mut out);
            }
            CaptureInput::Request { field, .. } => {
                if self.status == CaptureStatus::Complete {
                    return Err(CaptureError::Finished);
                }
                let idx = self
                    .fields
                    .iter()
                    .position(|f| f.name() == field)
                    .ok_or(CaptureError::UnknownField)?;
                // Partial digits of the field being keyed are abandoned with it.
                if let Some(cur) = self.fields.get_mut(self.current)
                    && cur.summary.is_none()
                {
                    cur.clear();
                }
                if let Some(f) = self.fields.get_mut(idx) {
                    f.clear();
                    f.attempts = 0;
                }
                self.status = CaptureStatus::Capturing;
                self.last_digit_at = None;
                self.current = idx;
                self.requested(&mut out);
            }
        }
        Ok(out)
    }

    fn key(&mut self, digit: Digit, at_ms: u64, out: &mut Vec<CaptureEvent>) {
        match digit.reveal() {
            '#' => self.end_field(true, false, out),
            '*' => {
                let Some(f) = self.fields.get_mut(self.current) else {
                    return;
                };
                if !f.buf.is_empty() || f.reason.is_some() {
                    f.clear();
                    self.last_digit_at = None;
                    self.push_progress(CaptureEvent::Progress, out);
                }
            }
            c @ '0'..='9' => {
                let max = self.max_len(self.current);
                let Some(f) = self.fields.get_mut(self.current) else {
                    return;
                };
                if f.buf.len() >= max.min(f.buf.capacity()) {
                    return;
                }
                f.buf.push(c as u8);
                f.reason = None;
                self.last_digit_at = Some(at_ms);
                let full = f.buf.len() >= max;
                self.push_progress(CaptureEvent::Progress, out);
                if full {
                    self.end_field(false, false, out);
                }
            }
            _ => {}
        }
    }

    fn tick(&mut self, now_ms: u64, out: &mut Vec<CaptureEvent>) {
        if let Some(deadline) = self.next_deadline()
            && now_ms >= deadline
        {
            self.end_field(false, true, out);
        }
    }

    /// Longest entry the current field can take before it ends by itself.
    fn max_len(&self, idx: usize) -> usize {
        let Some(f) = self.fields.get(idx) else {
            return 0;
        };
        match &f.kind {
            Kind::Pan => Brand::detect(&f.buf).map_or(PAN_MAX_LEN, Brand::max_len),
            Kind::Expiry => 4,
            Kind::Cvv => self.pan_brand().map_or(3, Brand::cvv_len),
            Kind::Extra(e) => e.max_digits.min(PAN_MAX_LEN),
        }
    }

    fn pan_brand(&self) -> Option<Brand> {
        self.fields.iter().find_map(|f| match &f.value {
            Some(Value::Pan(p)) => p.brand(),
            _ => None,
        })
    }

    /// Validates the current entry as it stands.
    fn evaluate(&self, idx: usize) -> Result<Value, RejectReason> {
        let Some(f) = self.fields.get(idx) else {
            return Err(RejectReason::TooShort);
        };
        let (len, max) = (f.buf.len(), self.max_len(idx));
        let why = |e: CardError| RejectReason::from_card(e, len, max);
        match &f.kind {
            Kind::Pan => Pan::parse(&f.buf, self.cfg.allow_unknown_brand)
                .map(Value::Pan)
                .map_err(why),
            Kind::Expiry => Expiry::parse(&f.buf, self.today)
                .map(Value::Expiry)
                .map_err(why),
            Kind::Cvv => Cvv::parse(&f.buf, self.pan_brand())
                .map(Value::Cvv)
                .map_err(why),
            Kind::Extra(e) => {
                if len < e.min_digits {
                    Err(RejectReason::TooShort)
                } else if len > e.max_digits {
                    Err(RejectReason::TooLong)
                } else {
                    let mut v = Zeroizing::new(Vec::with_capacity(len));
                    v.extend_from_slice(&f.buf);
                    Ok(Value::Digits(v))
                }
            }
        }
    }

    /// The entry ends (`#`, full, or timeout): accept, skip or reject it.
    fn end_field(&mut self, hash: bool, timeout: bool, out: &mut Vec<CaptureEvent>) {
        let idx = self.current;
        let Some(f) = self.fields.get(idx) else {
            return;
        };
        if f.buf.is_empty() {
            if hash && matches!(&f.kind, Kind::Extra(e) if e.optional) {
                if let Some(f) = self.fields.get_mut(idx) {
                    f.summary = Some(Summary {
                        digits: 0,
                        brand: None,
                        last4: None,
                        skipped: true,
                    });
                }
                self.push_progress(CaptureEvent::FieldComplete, out);
                self.advance(out);
            }
            // A stray `#` on an empty required field costs the caller nothing.
            return;
        }
        self.last_digit_at = None;
        let verdict = self
            .evaluate(idx)
            .and_then(|value| self.confirmed(idx, value));
        match verdict {
            Ok(None) => {
                // Match-twice: the first entry is held; the caller keys the field again.
                if let Some(f) = self.fields.get_mut(idx) {
                    f.first.extend_from_slice(&f.buf);
                    zeroize::Zeroize::zeroize(&mut *f.buf);
                }
                self.push_progress(CaptureEvent::FieldRequested, out);
            }
            Ok(Some(value)) => {
                let is_pan = matches!(value, Value::Pan(_));
                if let Some(f) = self.fields.get_mut(idx) {
                    let (brand, last4) = match &value {
                        Value::Pan(p) => (p.brand(), Some(p.last4())),
                        _ => (None, None),
                    };
                    f.summary = Some(Summary {
                        digits: f.buf.len(),
                        brand,
                        last4,
                        skipped: false,
                    });
                    zeroize::Zeroize::zeroize(&mut *f.buf);
                    f.value = Some(value);
                    f.reason = None;
                }
                if is_pan {
                    self.recheck_cvv();
                }
                self.push_progress(CaptureEvent::FieldComplete, out);
                self.advance(out);
            }
            Err(reason) => {
                let max_attempts = self.cfg.max_attempts;
                let Some(f) = self.fields.get_mut(idx) else {
                    return;
                };
                f.clear();
                f.attempts = f.attempts.saturating_add(1);
                f.reason = Some(if timeout {
                    RejectReason::Timeout
                } else {
                    reason
                });
                let exhausted = f.attempts >= max_attempts;
                self.push_progress(CaptureEvent::FieldRejected, out);
                if exhausted {
                    self.status = CaptureStatus::Failed;
                    self.push_progress(CaptureEvent::Failed, out);
                } else {
                    self.push_progress(CaptureEvent::FieldRequested, out);
                }
            }
        }
    }

    /// Match-twice: `Some(value)` when the field is accepted now (it is keyed once, or this
    /// second entry matches the first), `None` when this was the first of two entries, and a
    /// mismatch when the second differs. Compared in constant time.
    fn confirmed(&self, idx: usize, value: Value) -> Result<Option<Value>, RejectReason> {
        let Some(f) = self.fields.get(idx) else {
            return Ok(Some(value));
        };
        if !f.confirm {
            return Ok(Some(value));
        }
        if f.first.is_empty() {
            return Ok(None);
        }
        let same = f.first.len() == f.buf.len()
            && bool::from(subtle::ConstantTimeEq::ct_eq(&f.first[..], &f.buf[..]));
        if same {
            Ok(Some(value))
        } else {
            Err(RejectReason::Mismatch)
        }
    }

    /// A PAN entered again may change the brand and with it the CVV length: a captured CVV of
    /// the wrong length must be keyed again.
    fn recheck_cvv(&mut self) {
        let want = self.pan_brand().map_or(3, Brand::cvv_len);
        for f in &mut self.fields {
            if let Some(Value::Cvv(c)) = &f.value
                && c.len() != want
            {
                f.clear();
            }
        }
    }

    /// Moves to the first field still without a value, or completes the capture.
    fn advance(&mut self, out: &mut Vec<CaptureEvent>) {
        match self.fields.iter().position(|f| f.summary.is_none()) {
            Some(next) => {
                self.current = next;
                self.requested(out);
            }
            None => self.complete(out),
        }
    }

    fn requested(&mut self, out: &mut Vec<CaptureEvent>) {
        self.push_progress(CaptureEvent::FieldRequested, out);
    }

    fn complete(&mut self, out: &mut Vec<CaptureEvent>) {
        let mut pan = None;
        let mut expiry = None;
        let mut cvv = None;
        let mut extra = Vec::new();
        for f in &mut self.fields {
            match f.value.take() {
                Some(Value::Pan(p)) => pan = Some(p),
                Some(Value::Expiry(e)) => expiry = Some(e),
                Some(Value::Cvv(c)) => cvv = Some(c),
                Some(Value::Digits(d)) => extra.push((f.name(), d)),
                None => {}
            }
        }
        let Some(pan) = pan else {
            // Unreachable: the PAN field is always present and complete here.
            self.status = CaptureStatus::Failed;
            return;
        };
        let last4 = pan.last4();
        let brand = pan.brand();
        let mut card = CardData::new(pan, expiry, cvv);
        for (name, digits) in extra {
            // Capture admits only ASCII digits and never a card field's name here.
            let _ = card.push_extra(name, &digits);
        }
        self.status = CaptureStatus::Complete;
        self.card = Some(card);
        out.push(CaptureEvent::Complete { brand, last4 });
    }

    fn push_progress(&self, make: fn(FieldProgress) -> CaptureEvent, out: &mut Vec<CaptureEvent>) {
        if let Some(p) = self.field_progress(self.current) {
            out.push(make(p));
        }
    }

    fn field_progress(&self, idx: usize) -> Option<FieldProgress> {
        let f = self.fields.get(idx)?;
        let is_pan = f.kind == Kind::Pan;
        let state = match f.summary {
            Some(s) if s.skipped => FieldState::Skipped,
            Some(_) => FieldState::Complete,
            None if f.reason.is_some() => FieldState::Invalid,
            None if f.buf.is_empty() => FieldState::Waiting,
            None if is_pan && !self.cfg.allow_unknown_brand && !Brand::possible(&f.buf) => {
                FieldState::Invalid
            }
            None if self.evaluate(idx).is_ok() => FieldState::Valid,
            None => FieldState::Capturing,
        };
        let (digits, brand, last4) = match f.summary {
            Some(s) => (s.digits, s.brand, s.last4),
            None if is_pan => (f.buf.len(), Brand::detect(&f.buf), None),
            None => (f.buf.len(), None, None),
        };
        Some(FieldProgress {
            field: f.name(),
            digits,
            state,
            brand,
            last4,
            attempts: f.attempts,
            attempts_left: self.cfg.max_attempts.saturating_sub(f.attempts),
            reason: f.reason,
            confirming: f.summary.is_none() && !f.first.is_empty(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TODAY: YearMonth = YearMonth {
        year: 2026,
        month: 6,
    };
    const STEP: u64 = 150;

    /// Drives a capture on a virtual clock: keys 150 ms apart.
    struct Rig {
        cap: Capture,
        t: u64,
        events: Vec<CaptureEvent>,
    }

    impl Rig {
        fn new(cfg: CaptureConfig) -> Rig {
            Rig {
                cap: Capture::new(cfg, TODAY),
                t: 1_000,
                events: Vec::new(),
            }
        }

        fn keys(&mut self, keys: &str) -> &mut Self {
            for c in keys.chars() {
                self.t += STEP;
                let digit = Digit::from_char(c).unwrap();
                let ev = self
                    .cap
                    .handle(CaptureInput::Digit {
                        digit,
                        source: DigitSource::InBand,
                        at_ms: self.t,
                    })
                    .unwrap();
                self.events.extend(ev);
            }
            self
        }

        fn tick(&mut self, after_ms: u64) -> &mut Self {
            self.t += after_ms;
            let ev = self
                .cap
                .handle(CaptureInput::Tick { now_ms: self.t })
                .unwrap();
            self.events.extend(ev);
            self
        }

        fn field(&self, name: FieldName) -> FieldProgress {
            self.cap
                .progress()
                .into_iter()
                .find(|p| p.field == name)
                .unwrap()
        }

        fn rejected(&self) -> Vec<(FieldName, RejectReason)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    CaptureEvent::FieldRejected(p) => Some((p.field.clone(), p.reason.unwrap())),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn test_card_with_hash_after_pan_completes() {
        let mut r = Rig::new(CaptureConfig::default());
        r.keys("4111111111111111");
        // Visa may run to 19 digits: valid, but waiting for `#` or the timeout.
        let pan = r.field(FieldName::Pan);
        assert_eq!(pan.state, FieldState::Valid);
        assert_eq!(pan.digits, 16);
        assert_eq!(pan.brand, Some(Brand::Visa));
        assert_eq!(pan.last4, None, "last four only once complete");
        r.keys("#");
        let pan = r.field(FieldName::Pan);
        assert_eq!(pan.state, FieldState::Complete);
        assert_eq!(pan.last4.unwrap().as_str(), "1111");
        assert_eq!(r.cap.current_field(), Some(FieldName::Expiry));
        r.keys("1230");
        assert_eq!(r.cap.current_field(), Some(FieldName::Cvv));
        r.keys("123");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
        assert!(matches!(
            r.events.last(),
            Some(CaptureEvent::Complete { brand: Some(Brand::Visa), last4 }) if last4.as_str() == "1111"
        ));
        let card = r.cap.take_card().unwrap();
        assert_eq!(card.pan().reveal(), "4111111111111111");
        assert_eq!(card.expiry().unwrap().reveal_mmyy().as_str(), "1230");
        assert_eq!(card.cvv().unwrap().reveal(), "123");
        assert!(r.cap.take_card().is_none(), "the card is handed out once");
        // Progress still tells the agent what was captured, without values.
        let all = r.cap.progress();
        assert!(all.iter().all(|p| p.state == FieldState::Complete));
        assert_eq!(all[0].last4.unwrap().as_str(), "1111");
        assert_eq!(all[2].digits, 3);
    }

    #[test]
    fn fixed_length_pans_end_by_themselves() {
        let mut r = Rig::new(CaptureConfig::default());
        r.keys("5555555555554444");
        assert_eq!(r.field(FieldName::Pan).state, FieldState::Complete);
        r.keys("1230").keys("1234");
        // Mastercard takes a 3-digit CVV: the fourth key is the first of nothing.
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
        let card = r.cap.take_card().unwrap();
        assert_eq!(card.cvv().unwrap().reveal(), "123");

        let mut r = Rig::new(CaptureConfig::default());
        r.keys("378282246310005").keys("1230").keys("1234");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
        assert_eq!(r.cap.take_card().unwrap().cvv().unwrap().reveal(), "1234");
    }

    #[test]
    fn timeout_completes_a_valid_field_and_rejects_a_partial_one() {
        let cfg = CaptureConfig::default();
        let timeout = cfg.inter_digit_timeout_ms;
        let mut r = Rig::new(cfg.clone());
        r.keys("4111111111111111");
        assert_eq!(r.cap.next_deadline(), Some(r.t + timeout));
        r.tick(timeout - 1);
        assert_eq!(r.field(FieldName::Pan).state, FieldState::Valid, "not yet");
        r.tick(1);
        assert_eq!(r.field(FieldName::Pan).state, FieldState::Complete);
        assert_eq!(r.cap.next_deadline(), None, "no timer on an empty field");

        let mut r = Rig::new(cfg.clone());
        r.keys("41111111");
        r.tick(timeout);
        assert_eq!(r.rejected(), vec![(FieldName::Pan, RejectReason::Timeout)]);
        let pan = r.field(FieldName::Pan);
        assert_eq!(
            (pan.state, pan.digits, pan.attempts),
            (FieldState::Invalid, 0, 1)
        );

        // A key arriving after the deadline finds the field already ended.
        let mut r = Rig::new(cfg);
        r.keys("4111111111111111");
        r.t += timeout;
        r.keys("1");
        assert_eq!(r.field(FieldName::Pan).state, FieldState::Complete);
        assert_eq!(r.field(FieldName::Expiry).digits, 1);
    }

    #[test]
    fn star_clears_the_field_and_hash_ends_it_early() {
        let mut r = Rig::new(CaptureConfig::default());
        r.keys("4111222*");
        let pan = r.field(FieldName::Pan);
        assert_eq!(
            (pan.digits, pan.state, pan.attempts),
            (0, FieldState::Waiting, 0)
        );
        r.keys("411111111#");
        assert_eq!(r.rejected(), vec![(FieldName::Pan, RejectReason::TooShort)]);
        r.keys("4111111111111112#");
        assert_eq!(
            r.rejected().last(),
            Some(&(FieldName::Pan, RejectReason::LuhnFailed))
        );
        assert_eq!(r.field(FieldName::Pan).attempts, 2);
        // A stray `#` on an empty field costs nothing.
        r.keys("#");
        assert_eq!(r.field(FieldName::Pan).attempts, 2);
        r.keys("4111111111111111#1230123");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
        // A-D keys are not digits and change nothing.
        let mut r = Rig::new(CaptureConfig::default());
        r.keys("4A1B");
        assert_eq!(r.field(FieldName::Pan).digits, 2);
    }

    #[test]
    fn unknown_range_shows_invalid_while_keying() {
        let mut r = Rig::new(CaptureConfig::default());
        r.keys("99");
        assert_eq!(r.field(FieldName::Pan).state, FieldState::Invalid);
        r.keys("0000000000000#");
        assert_eq!(
            r.rejected(),
            vec![(FieldName::Pan, RejectReason::UnknownBrand)]
        );
    }

    #[test]
    fn expiry_and_cvv_are_checked() {
        let mut r = Rig::new(CaptureConfig::default());
        r.keys("4111111111111111#").keys("1330");
        assert_eq!(
            r.rejected(),
            vec![(FieldName::Expiry, RejectReason::BadMonth)]
        );
        r.keys("0525");
        assert_eq!(
            r.rejected().last(),
            Some(&(FieldName::Expiry, RejectReason::Expired))
        );
        r.keys("1230").keys("12#");
        assert_eq!(
            r.rejected().last(),
            Some(&(FieldName::Cvv, RejectReason::TooShort))
        );
        r.keys("123");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
    }

    #[test]
    fn attempts_run_out() {
        let cfg = CaptureConfig {
            max_attempts: 2,
            ..CaptureConfig::default()
        };
        let mut r = Rig::new(cfg);
        r.keys("4111111111111112#").keys("4111111111111113#");
        assert_eq!(r.cap.status(), CaptureStatus::Failed);
        assert!(
            matches!(r.events.last(), Some(CaptureEvent::Failed(p)) if p.field == FieldName::Pan)
        );
        let n = r.events.len();
        r.keys("4111111111111111#");
        assert_eq!(r.events.len(), n, "keys after failure do nothing");
        // The agent may start again.
        let ev = r.cap.handle(CaptureInput::Reset { now_ms: r.t }).unwrap();
        assert!(
            matches!(&ev[..], [CaptureEvent::FieldRequested(p)] if p.field == FieldName::Pan && p.attempts == 0)
        );
        r.keys("4111111111111111#1230123");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
        assert_eq!(
            r.cap.handle(CaptureInput::Reset { now_ms: r.t }),
            Err(CaptureError::Finished)
        );
    }

    #[test]
    fn agent_can_reset_and_request_a_field_again() {
        let mut r = Rig::new(CaptureConfig::default());
        r.keys("4111111111111111#12");
        r.cap.handle(CaptureInput::Reset { now_ms: r.t }).unwrap();
        assert!(
            r.cap
                .progress()
                .iter()
                .all(|p| p.digits == 0 && p.state == FieldState::Waiting)
        );
        r.keys("4111111111111111#1230");
        // Re-ask the expiry while the CVV is being keyed: CVV partial digits are dropped.
        r.keys("1");
        let ev = r
            .cap
            .handle(CaptureInput::Request {
                field: FieldName::Expiry,
                now_ms: r.t,
            })
            .unwrap();
        assert!(
            matches!(&ev[..], [CaptureEvent::FieldRequested(p)] if p.field == FieldName::Expiry)
        );
        assert_eq!(r.field(FieldName::Cvv).digits, 0);
        r.keys("1129");
        assert_eq!(r.cap.current_field(), Some(FieldName::Cvv));
        r.keys("321");
        let card = r.cap.take_card().unwrap();
        assert_eq!(card.expiry().unwrap().reveal_mmyy().as_str(), "1129");
        assert_eq!(card.cvv().unwrap().reveal(), "321");
        assert_eq!(
            Capture::new(CaptureConfig::default(), TODAY).handle(CaptureInput::Request {
                field: FieldName::Postcode,
                now_ms: 0
            }),
            Err(CaptureError::UnknownField)
        );
    }

    #[test]
    fn a_new_pan_of_another_brand_invalidates_the_cvv() {
        // A postcode after the CVV keeps the capture open while the agent re-asks the PAN.
        let mut r = Rig::new(
            CaptureConfig::for_fields(&[
                FieldName::Pan,
                FieldName::Expiry,
                FieldName::Cvv,
                FieldName::Postcode,
            ])
            .unwrap(),
        );
        r.keys("4111111111111111#1230123");
        assert_eq!(r.cap.current_field(), Some(FieldName::Postcode));
        r.cap
            .handle(CaptureInput::Request {
                field: FieldName::Pan,
                now_ms: r.t,
            })
            .unwrap();
        r.keys("378282246310005");
        // Amex needs four CVV digits: the 3-digit CVV must be keyed again; expiry stands.
        assert_eq!(r.cap.current_field(), Some(FieldName::Cvv));
        assert_eq!(r.field(FieldName::Expiry).state, FieldState::Complete);
        r.keys("1234").keys("90210#");
        let card = r.cap.take_card().unwrap();
        assert_eq!(card.cvv().unwrap().reveal(), "1234");
        assert_eq!(card.reveal_extra(&FieldName::Postcode), Some("90210"));
    }

    #[test]
    fn optional_field_is_skipped_with_hash() {
        let cfg = CaptureConfig {
            extra: vec![ExtraField {
                name: FieldName::Other("member".into()),
                min_digits: 4,
                max_digits: 8,
                optional: true,
            }],
            ..CaptureConfig::default()
        };
        let mut r = Rig::new(cfg.clone());
        r.keys("4111111111111111#1230123#");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
        assert_eq!(
            r.field(FieldName::Other("member".into())).state,
            FieldState::Skipped
        );
        assert!(r.cap.take_card().unwrap().extra().is_empty());

        let mut r = Rig::new(cfg);
        r.keys("4111111111111111#1230123").keys("12#");
        assert_eq!(
            r.rejected(),
            vec![(FieldName::Other("member".into()), RejectReason::TooShort)]
        );
        r.keys("12345678");
        let card = r.cap.take_card().unwrap();
        assert_eq!(
            card.reveal_extra(&FieldName::Other("member".into())),
            Some("12345678")
        );
    }

    #[test]
    fn exact_duplicates_are_ignored_but_repeated_presses_count() {
        let mut cap = Capture::new(CaptureConfig::default(), TODAY);
        let four = Digit::from_char('4').unwrap();
        let one = Digit::from_char('1').unwrap();
        let press = |cap: &mut Capture, digit, source, at_ms| {
            cap.handle(CaptureInput::Digit {
                digit,
                source,
                at_ms,
            })
            .unwrap()
        };
        assert_eq!(press(&mut cap, four, DigitSource::Rfc4733, 100).len(), 1);
        // The in-band copy of the same key, same onset: dropped.
        assert!(press(&mut cap, four, DigitSource::InBand, 100).is_empty());
        assert_eq!(cap.duplicates_ignored(), 1);
        // The same key pressed again later is a new digit.
        press(&mut cap, one, DigitSource::Rfc4733, 300);
        press(&mut cap, one, DigitSource::Rfc4733, 500);
        assert!(press(&mut cap, one, DigitSource::Rfc4733, 500).is_empty());
        assert_eq!(cap.progress()[0].digits, 3);
        assert_eq!(cap.duplicates_ignored(), 2);
        // A duplicated `#` must not end the next field too.
        let hash = Digit::from_char('#').unwrap();
        for (i, c) in "1111111111111".chars().enumerate() {
            press(
                &mut cap,
                Digit::from_char(c).unwrap(),
                DigitSource::InBand,
                700 + 200 * i as u64,
            );
        }
        press(&mut cap, hash, DigitSource::InBand, 5_000);
        press(&mut cap, hash, DigitSource::Rfc4733, 5_000);
        assert_eq!(cap.current_field(), Some(FieldName::Expiry));
        assert_eq!(cap.progress()[1].state, FieldState::Waiting);
    }

    #[test]
    fn events_serialise_without_digits() {
        let mut r = Rig::new(
            CaptureConfig::for_fields(&[
                FieldName::Pan,
                FieldName::Expiry,
                FieldName::Cvv,
                FieldName::Postcode,
            ])
            .unwrap(),
        );
        r.keys("4111111111111112#4111111111111111#1330*1230123")
            .keys("90210#");
        let mut saw_last4 = false;
        for e in &r.events {
            let json = serde_json::to_string(e).unwrap();
            for secret in ["41111", "1230", "123", "90210", "1330"] {
                assert!(!json.contains(secret), "{json}");
            }
            let dbg = format!("{e:?}");
            assert!(!dbg.contains("41111") && !dbg.contains("90210"), "{dbg}");
            saw_last4 |= json.contains("\"last4\":\"1111\"");
        }
        assert!(saw_last4);
        let complete = serde_json::to_value(r.events.last().unwrap()).unwrap();
        assert_eq!(complete["event"], "complete");
        assert_eq!(complete["brand"], "visa");
        let progress = serde_json::to_value(&r.events[0]).unwrap();
        assert_eq!(progress["event"], "progress");
        assert_eq!(progress["field"], "pan");
        assert_eq!(progress["digits"], 1);
        assert_eq!(progress["state"], "capturing");
        assert!(!format!("{:?}", r.cap).contains("41111"));
    }

    #[test]
    fn match_twice_accepts_a_matching_second_entry_and_rejects_a_different_one() {
        let cfg = CaptureConfig::default()
            .with_confirm(&[FieldName::Cvv])
            .unwrap();
        let mut r = Rig::new(cfg);
        r.keys("4111111111111111#1230").keys("123");
        // The first entry is held: the CVV is asked again, nothing accepted yet.
        let cvv = r.field(FieldName::Cvv);
        assert!(cvv.confirming);
        assert_eq!((cvv.state, cvv.digits), (FieldState::Waiting, 0));
        assert_eq!(r.cap.current_field(), Some(FieldName::Cvv));
        assert_eq!(r.cap.status(), CaptureStatus::Capturing);
        // A different second entry is a mismatch: both go, an attempt is spent.
        r.keys("124");
        assert_eq!(
            r.rejected().last(),
            Some(&(FieldName::Cvv, RejectReason::Mismatch))
        );
        let cvv = r.field(FieldName::Cvv);
        assert!(!cvv.confirming);
        assert_eq!((cvv.attempts, cvv.attempts_left), (1, 2));
        // Keyed the same twice: accepted, and the card holds it.
        r.keys("321").keys("321");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
        assert_eq!(r.cap.take_card().unwrap().cvv().unwrap().reveal(), "321");
        let json = serde_json::to_string(&r.events).unwrap();
        assert!(json.contains("\"reason\":\"mismatch\""), "{json}");
        assert!(json.contains("\"confirming\":true"), "{json}");
        for secret in ["123", "124", "321"] {
            assert!(!json.contains(secret), "{json}");
        }
    }

    #[test]
    fn match_twice_an_invalid_first_entry_is_rejected_at_once() {
        let cfg = CaptureConfig::default()
            .with_confirm(&[FieldName::Pan, FieldName::Expiry])
            .unwrap();
        let mut r = Rig::new(cfg);
        r.keys("4111111111111112#");
        assert_eq!(
            r.rejected(),
            vec![(FieldName::Pan, RejectReason::LuhnFailed)]
        );
        assert!(!r.field(FieldName::Pan).confirming);
        r.keys("4111111111111111#4111111111111111#");
        assert_eq!(r.field(FieldName::Pan).state, FieldState::Complete);
        // Asking for the field again forgets a held first entry.
        r.keys("1230");
        assert!(r.field(FieldName::Expiry).confirming);
        r.cap
            .handle(CaptureInput::Request {
                field: FieldName::Expiry,
                now_ms: r.t,
            })
            .unwrap();
        assert!(!r.field(FieldName::Expiry).confirming);
        r.keys("1230").keys("1230").keys("123");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
    }

    #[test]
    fn confirm_names_only_captured_fields() {
        let base = CaptureConfig::for_fields(&[FieldName::Pan, FieldName::Expiry]).unwrap();
        assert_eq!(
            base.clone().with_confirm(&[FieldName::Cvv]),
            Err(CaptureError::UnknownField)
        );
        assert!(base.with_confirm(&[FieldName::Expiry]).is_ok());
    }

    #[test]
    fn amex_needs_four_cvv_digits_and_attempts_left_count_down() {
        let mut r = Rig::new(CaptureConfig::default());
        r.keys("378282246310005").keys("1230");
        assert_eq!(r.field(FieldName::Pan).brand, Some(Brand::Amex));
        r.keys("123#");
        let cvv = r.field(FieldName::Cvv);
        assert_eq!(cvv.reason, Some(RejectReason::TooShort));
        assert_eq!((cvv.attempts, cvv.attempts_left), (1, 2));
        let json = serde_json::to_value(&cvv).unwrap();
        assert_eq!(json["reason"], "too_short");
        assert_eq!(json["attempts_left"], 2);
        r.keys("1234");
        assert_eq!(r.cap.status(), CaptureStatus::Complete);
    }

    #[test]
    fn for_fields_needs_the_pan() {
        assert_eq!(
            CaptureConfig::for_fields(&[FieldName::Expiry]),
            Err(CaptureError::PanRequired)
        );
        let cfg = CaptureConfig::for_fields(&[FieldName::Pan]).unwrap();
        let mut cap = Capture::new(cfg, TODAY);
        for (i, c) in "5555555555554444".chars().enumerate() {
            cap.handle(CaptureInput::Digit {
                digit: Digit::from_char(c).unwrap(),
                source: DigitSource::InBand,
                at_ms: i as u64 * 200,
            })
            .unwrap();
        }
        assert_eq!(cap.status(), CaptureStatus::Complete);
        let card = cap.take_card().unwrap();
        assert!(card.expiry().is_none() && card.cvv().is_none());
    }
}
