//! SDES keying: the SDP `a=crypto` attribute (RFC 4568 §9.1) and the offer/answer choice
//! of one (RFC 4568 §6.1, §7.1).
//!
//! Owns reading a peer's attributes, writing ours and pairing them into the two keys of a
//! leg. It must never echo a peer's key back (each side sends its own, §6.1), never carry a
//! key into an error, and never print one: an `a=crypto` line is secret material and is only
//! ever held as a [`CryptoLine`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use thiserror::Error;
use zeroize::Zeroizing;

use super::{InboundSrtp, KeyGenError, OutboundSrtp, SrtpError, SrtpMasterKey, SrtpSuite};

/// Longest base64 `inline:` key||salt we read: 64 characters decode to 48 bytes, more than any
/// suite we know needs, so a longer one is wrong whatever its suite.
const MAX_INLINE_B64: usize = 64;

/// RFC 4568 §9.1: `mki-length = 1*3DIGIT ; range 1..128`.
const MAX_MKI_LEN: u8 = 128;

/// Why an `a=crypto` attribute was refused. No variant carries key bytes.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SdesError {
    #[error("not an a=crypto attribute")]
    NotCrypto,
    #[error("a=crypto tag is not 1-9 digits")]
    BadTag,
    #[error("a=crypto has no crypto-suite or key parameters")]
    Truncated,
    #[error("a=crypto key method is not inline")]
    BadKeyMethod,
    #[error("a=crypto inline key is not base64")]
    BadBase64,
    #[error("a=crypto key||salt is {got} bytes, {suite} needs {want}")]
    BadKeyLength {
        suite: SrtpSuite,
        got: usize,
        want: usize,
    },
    #[error("a=crypto key lifetime is malformed")]
    BadLifetime,
    #[error("a=crypto MKI is malformed")]
    BadMki,
    #[error("a=crypto asks for what tonewall does not do: {0}")]
    Unsupported(&'static str),
    #[error("no offered a=crypto attribute is one tonewall can do")]
    NoAcceptableOffer,
    #[error("a=crypto answer tag {0} was not offered")]
    TagNotOffered(u32),
    #[error("a=crypto answer changes the suite offered with its tag")]
    SuiteChanged,
    #[error(transparent)]
    KeyGen(#[from] KeyGenError),
}

/// A master key identifier (RFC 3711 §3.1): a `len`-byte big-endian number the sender puts
/// in every packet. Not secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mki {
    value: u64,
    len: u8,
}

impl Mki {
    /// `value` in `len` bytes; `None` when `len` is not 1-128 or `value` does not fit.
    pub fn new(value: u64, len: u8) -> Option<Mki> {
        let fits = len >= 8 || value >> (8 * u32::from(len)) == 0;
        (len >= 1 && len <= MAX_MKI_LEN && fits).then_some(Mki { value, len })
    }

    /// The MKI's value.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Its length on the wire, in bytes.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether `field` is this MKI as the sender writes it.
    pub(crate) fn matches(&self, field: &[u8]) -> bool {
        if field.len() != usize::from(self.len) {
            return false;
        }
        // Lengths past 8 bytes can only carry zeros above the u64.
        let (high, low) = field.split_at(field.len().saturating_sub(8));
        let value = low.iter().fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        high.iter().all(|&b| b == 0) && value == self.value
    }
}

/// One `a=crypto` attribute a peer sent, for a suite we speak.
#[derive(Clone, Debug)]
pub struct CryptoAttribute {
    /// Pairs the answer with the offer (RFC 4568 §6.1).
    pub tag: u32,
    /// The peer's key: what its packets are protected with.
    pub key: SrtpMasterKey,
    /// Packets the key may protect, when the peer limits it (RFC 4568 §6.1).
    pub lifetime: Option<u64>,
    /// The MKI the peer puts in its packets, when it does.
    pub mki: Option<Mki>,
    /// Why we cannot use this attribute, if we cannot: a choice skips it for the next.
    unusable: Option<&'static str>,
}

impl CryptoAttribute {
    /// Reads one `a=crypto:` attribute (with or without the `a=`, trailing CR LF ignored).
    /// `Ok(None)` for a suite we do not speak: an offer may list suites we skip (§7.1.1).
    pub fn parse(line: &str) -> Result<Option<CryptoAttribute>, SdesError> {
        let line = line.trim_end_matches(['\r', '\n']);
        let line = line.strip_prefix("a=").unwrap_or(line);
        let rest = line.strip_prefix("crypto:").ok_or(SdesError::NotCrypto)?;
        let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());

        let tag = fields.next().ok_or(SdesError::BadTag)?;
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SdesError::BadTag);
        }
        let tag: u32 = tag.parse().map_err(|_| SdesError::BadTag)?;
        let suite_name = fields.next().ok_or(SdesError::Truncated)?;
        let key_params = fields.next().ok_or(SdesError::Truncated)?;
        let Some(suite) = SrtpSuite::from_sdp_name(suite_name) else {
            return Ok(None);
        };

        let mut unusable = None;
        let mut keys = key_params.split(';');
        let first = keys.next().unwrap_or_default();
        if keys.next().is_some() {
            // Several master keys are told apart by MKI, and the crate keys one per context.
            unusable = Some("more than one master key");
        }
        let (key, lifetime, mki) = parse_key_param(suite, first)?;

        for param in fields {
            if let Some(reason) = session_param_unusable(param) {
                unusable.get_or_insert(reason);
            }
        }
        Ok(Some(CryptoAttribute {
            tag,
            key,
            lifetime,
            mki,
            unusable,
        }))
    }

    /// Every `a=crypto` attribute among a media section's lines, in order; other lines are
    /// passed over and suites we do not speak are skipped. A malformed attribute fails the
    /// whole set: an offer we cannot read is not one to guess at.
    pub fn parse_all<'a>(
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<CryptoAttribute>, SdesError> {
        let mut out = Vec::new();
        for line in lines {
            let bare = line.strip_prefix("a=").unwrap_or(line);
            if bare.starts_with("crypto:")
                && let Some(attr) = CryptoAttribute::parse(line)?
            {
                out.push(attr);
            }
        }
        Ok(out)
    }

    /// The suite of the key.
    pub fn suite(&self) -> SrtpSuite {
        self.key.suite()
    }

    /// `Ok` when tonewall can receive with this attribute; otherwise what it asks that we do
    /// not do (several master keys, an unencrypted or unauthenticated mode, a key derivation
    /// rate, an unknown session parameter).
    pub fn check_usable(&self) -> Result<(), SdesError> {
        match self.unusable {
            None => Ok(()),
            Some(reason) => Err(SdesError::Unsupported(reason)),
        }
    }

    /// A transform for the packets the peer protects with this key.
    pub fn inbound(&self) -> Result<InboundSrtp, SrtpError> {
        InboundSrtp::with_params(&self.key, self.mki, self.lifetime)
    }
}

/// `inline:<base64 key||salt>[|lifetime][|MKI:length]` (RFC 4568 §6.1, §9.1).
fn parse_key_param(
    suite: SrtpSuite,
    param: &str,
) -> Result<(SrtpMasterKey, Option<u64>, Option<Mki>), SdesError> {
    let info = param
        .strip_prefix("inline:")
        .ok_or(SdesError::BadKeyMethod)?;
    let mut parts = info.split('|');
    let b64 = parts.next().unwrap_or_default();
    let mut lifetime = None;
    let mut mki = None;
    for part in parts {
        if let Some((value, len)) = part.split_once(':') {
            if mki.is_some() {
                return Err(SdesError::BadMki);
            }
            mki = Some(parse_mki(value, len)?);
        } else {
            // The lifetime comes before the MKI when both are present (§9.1).
            if lifetime.is_some() || mki.is_some() {
                return Err(SdesError::BadLifetime);
            }
            lifetime = Some(parse_lifetime(part)?);
        }
    }

    let want = suite.key_len() + suite.salt_len();
    if b64.len() > MAX_INLINE_B64 {
        return Err(SdesError::BadKeyLength {
            suite,
            got: b64.len() / 4 * 3,
            want,
        });
    }
    let mut raw = Zeroizing::new([0u8; MAX_INLINE_B64 / 4 * 3]);
    let got = STANDARD_PAD_INDIFFERENT
        .decode_slice(b64, &mut raw[..])
        .map_err(|_| SdesError::BadBase64)?;
    let key_salt = raw.get(..got).unwrap_or(&[]);
    let key = SrtpMasterKey::from_key_salt(suite, key_salt).ok_or(SdesError::BadKeyLength {
        suite,
        got,
        want,
    })?;
    Ok((key, lifetime, mki))
}

/// `["2^"] 1*DIGIT` packets.
fn parse_lifetime(text: &str) -> Result<u64, SdesError> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let value = match text.strip_prefix("2^") {
        Some(exp) if digits(exp) => {
            let exp: u32 = exp.parse().map_err(|_| SdesError::BadLifetime)?;
            1u64.checked_shl(exp)
                .filter(|_| exp < 64)
                .ok_or(SdesError::BadLifetime)?
        }
        None if digits(text) => text.parse().map_err(|_| SdesError::BadLifetime)?,
        _ => return Err(SdesError::BadLifetime),
    };
    if value == 0 {
        return Err(SdesError::BadLifetime);
    }
    Ok(value)
}

/// `mki-value ":" mki-length`, both decimal.
fn parse_mki(value: &str, len: &str) -> Result<Mki, SdesError> {
    let digits = |s: &str, max: usize| {
        !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(value, 20) || !digits(len, 3) {
        return Err(SdesError::BadMki);
    }
    let value: u64 = value.parse().map_err(|_| SdesError::BadMki)?;
    let len: u8 = len.parse().map_err(|_| SdesError::BadMki)?;
    Mki::new(value, len).ok_or(SdesError::BadMki)
}

/// RFC 4568 §6.3 session parameters: what we can honour passes, the rest makes the
/// attribute one we skip.
fn session_param_unusable(param: &str) -> Option<&'static str> {
    match param {
        // A window-size hint only asks for at least that window; ours is fixed.
        p if p.starts_with("WSH=") => None,
        "FEC_ORDER=FEC_SRTP" | "KDR=0" => None,
        p if p.starts_with("KDR=") => Some("a key derivation rate"),
        "UNENCRYPTED_SRTP" | "UNENCRYPTED_SRTCP" => Some("unencrypted media"),
        "UNAUTHENTICATED_SRTP" => Some("unauthenticated media"),
        p if p.starts_with("FEC_") => Some("FEC ordering or keys"),
        _ => Some("an unknown session parameter"),
    }
}

/// Our `a=crypto` line: `a=crypto:<tag> <suite> inline:<base64 key||salt>`. Its text is key
/// material, so it only prints redacted and wipes itself when dropped.
pub struct CryptoLine {
    tag: u32,
    suite: SrtpSuite,
    text: Zeroizing<String>,
}

impl CryptoLine {
    /// The line for `key` under `tag`, without line ending.
    pub fn new(tag: u32, key: &SrtpMasterKey) -> CryptoLine {
        let mut b64 = Zeroizing::new([0u8; MAX_INLINE_B64]);
        let n = STANDARD
            .encode_slice(key.key_salt(), &mut b64[..])
            .unwrap_or(0);
        let inline = std::str::from_utf8(b64.get(..n).unwrap_or(&[])).unwrap_or("");
        let suite = key.suite();
        // Sized once so the String never reallocates and leaves a copy of the key behind.
        let mut text = Zeroizing::new(String::with_capacity(
            "a=crypto:4294967295  inline:".len() + suite.sdp_name().len() + n,
        ));
        text.push_str("a=crypto:");
        text.push_str(itoa(tag).as_str());
        text.push(' ');
        text.push_str(suite.sdp_name());
        text.push_str(" inline:");
        text.push_str(inline);
        CryptoLine { tag, suite, text }
    }

    /// The line to put in the SDP we send. Only the SDP writer should call this.
    pub fn expose_line(&self) -> &str {
        &self.text
    }

    /// The tag it carries.
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// The suite it carries.
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }
}

/// A tag as text without a heap buffer of its own.
fn itoa(n: u32) -> ItoaBuf {
    let mut buf = [0u8; 10];
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        if let Some(slot) = buf.get_mut(at) {
            *slot = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ItoaBuf { buf, at }
}

struct ItoaBuf {
    buf: [u8; 10],
    at: usize,
}

impl ItoaBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(self.at..).unwrap_or(&[])).unwrap_or("0")
    }
}

impl fmt::Debug for CryptoLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CryptoLine(a=crypto:{} {} inline:•••)",
            self.tag, self.suite
        )
    }
}

impl fmt::Display for CryptoLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a=crypto:{} {} inline:•••", self.tag, self.suite)
    }
}

/// One leg's SRTP once offer and answer agree: our key (we protect with it, the peer was
/// sent it) and the peer's (we check and decrypt with it).
#[derive(Debug)]
pub struct NegotiatedSrtp {
    tag: u32,
    local: SrtpMasterKey,
    remote: CryptoAttribute,
}

impl NegotiatedSrtp {
    /// Answering a peer's offer (RFC 4568 §7.1.2): the first offered attribute we can do,
    /// answered under its tag and suite with a key of our own, freshly generated.
    pub fn answer(offered: &[CryptoAttribute]) -> Result<NegotiatedSrtp, SdesError> {
        let chosen = offered
            .iter()
            .find(|a| a.check_usable().is_ok())
            .ok_or(SdesError::NoAcceptableOffer)?;
        Ok(NegotiatedSrtp {
            tag: chosen.tag,
            local: SrtpMasterKey::generate(chosen.suite())?,
            remote: chosen.clone(),
        })
    }

    /// The tag offer and answer agreed on.
    pub fn tag(&self) -> u32 {
        self.tag
    }

    /// The suite offer and answer agreed on.
    pub fn suite(&self) -> SrtpSuite {
        self.local.suite()
    }

    /// Our `a=crypto` line: in the answer when we answered, as offered when we offered.
    pub fn local_line(&self) -> CryptoLine {
        CryptoLine::new(self.tag, &self.local)
    }

    /// The transform for what the peer sends us.
    pub fn inbound(&self) -> Result<InboundSrtp, SrtpError> {
        self.remote.inbound()
    }

    /// The transform for what we send the peer.
    pub fn outbound(&self) -> Result<OutboundSrtp, SrtpError> {
        OutboundSrtp::new(&self.local)
    }
}

/// Our offer (RFC 4568 §7.1.1): one attribute per suite, tags from 1, each with its own
/// fresh key, kept until the answer picks one.
#[derive(Debug)]
pub struct SdesOffer {
    keys: Vec<(u32, SrtpMasterKey)>,
}

impl SdesOffer {
    /// An offer of `suites`, in that order of preference.
    pub fn new(suites: &[SrtpSuite]) -> Result<SdesOffer, SdesError> {
        let mut keys = Vec::with_capacity(suites.len());
        for (tag, &suite) in (1u32..).zip(suites) {
            keys.push((tag, SrtpMasterKey::generate(suite)?));
        }
        Ok(SdesOffer { keys })
    }

    /// The lines to put in the offer, in order.
    pub fn lines(&self) -> Vec<CryptoLine> {
        self.keys
            .iter()
            .map(|(tag, key)| CryptoLine::new(*tag, key))
            .collect()
    }

    /// The peer's answer (RFC 4568 §7.1.3): one attribute, under a tag we offered and with
    /// that tag's suite.
    pub fn accept(&self, answer: &CryptoAttribute) -> Result<NegotiatedSrtp, SdesError> {
        let (tag, key) = self
            .keys
            .iter()
            .find(|(tag, _)| *tag == answer.tag)
            .ok_or(SdesError::TagNotOffered(answer.tag))?;
        if key.suite() != answer.suite() {
            return Err(SdesError::SuiteChanged);
        }
        answer.check_usable()?;
        Ok(NegotiatedSrtp {
            tag: *tag,
            local: key.clone(),
            remote: answer.clone(),
        })
    }
}
