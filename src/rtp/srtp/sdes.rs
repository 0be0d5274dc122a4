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
        ((1..=MAX_MKI_LEN).contains(&len) && fits).then_some(Mki { value, len })
    }

    /// The MKI's value.
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Its length on the wire, in bytes (1-128, never empty).
    pub fn wire_len(&self) -> u8 {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4568 §4's example offer line.
    const RFC_LINE: &str = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4";

    fn b64_of(key: &SrtpMasterKey) -> String {
        STANDARD.encode(key.key_salt())
    }

    #[test]
    fn reads_the_rfc_example() {
        let a = CryptoAttribute::parse(RFC_LINE).unwrap().unwrap();
        assert_eq!(a.tag, 1);
        assert_eq!(a.suite(), SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(a.lifetime, Some(1 << 20));
        assert_eq!(a.mki, Some(Mki::new(1, 4).unwrap()));
        assert_eq!(b64_of(&a.key), "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR");
        assert!(a.check_usable().is_ok());
        // Without "a=", with CRLF, tabs between fields.
        let b = CryptoAttribute::parse("crypto:1\tAES_CM_128_HMAC_SHA1_80  inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(b.key.key_salt(), a.key.key_salt());
        assert_eq!((b.lifetime, b.mki), (None, None));
        // A decimal lifetime and an MKI alone.
        let c = CryptoAttribute::parse("a=crypto:7 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|1000").unwrap().unwrap();
        assert_eq!((c.tag, c.lifetime), (7, Some(1000)));
        let d = CryptoAttribute::parse("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|258:2").unwrap().unwrap();
        assert!(d.mki.unwrap().matches(&[1, 2]));
        assert!(!d.mki.unwrap().matches(&[0, 1, 2]));
    }

    #[test]
    fn our_line_reads_back_as_the_same_key_for_every_suite() {
        for suite in SrtpSuite::ALL {
            let key = SrtpMasterKey::generate(suite).unwrap();
            let line = CryptoLine::new(42, &key);
            let text = line.expose_line();
            assert!(
                text.starts_with(&format!("a=crypto:42 {} inline:", suite.sdp_name())),
                "{text}"
            );
            assert!(!text.contains('|') && !text.ends_with('\n'));
            let back = CryptoAttribute::parse(text).unwrap().unwrap();
            assert_eq!(back.tag, 42);
            assert_eq!(back.suite(), suite);
            assert_eq!(back.key.key_salt(), key.key_salt());
        }
        // Padding is written, and a peer that leaves it off is read all the same.
        let gcm = SrtpMasterKey::generate(SrtpSuite::AeadAes128Gcm).unwrap();
        let line = CryptoLine::new(1, &gcm);
        assert!(line.expose_line().ends_with("=="), "28 bytes need padding");
        let unpadded = line.expose_line().trim_end_matches('=');
        let back = CryptoAttribute::parse(unpadded).unwrap().unwrap();
        assert_eq!(back.key.key_salt(), gcm.key_salt());
        assert_eq!(CryptoLine::new(999_999_999, &gcm).tag(), 999_999_999);
        assert!(
            CryptoLine::new(0, &gcm)
                .expose_line()
                .starts_with("a=crypto:0 ")
        );
    }

    #[test]
    fn the_line_and_the_attribute_print_without_key() {
        for suite in SrtpSuite::ALL {
            let key = SrtpMasterKey::generate(suite).unwrap();
            let b64 = b64_of(&key);
            let line = CryptoLine::new(3, &key);
            let attr = CryptoAttribute::parse(line.expose_line()).unwrap().unwrap();
            let offer = SdesOffer::new(&[suite]).unwrap();
            let negotiated = NegotiatedSrtp::answer(std::slice::from_ref(&attr)).unwrap();
            let texts = [
                format!("{line:?}"),
                line.to_string(),
                format!("{attr:?}"),
                format!("{offer:?}"),
                format!("{negotiated:?}"),
                format!("{:?}", negotiated.local_line()),
            ];
            assert_eq!(
                texts[0],
                format!("CryptoLine(a=crypto:3 {suite} inline:•••)")
            );
            assert_eq!(texts[1], format!("a=crypto:3 {suite} inline:•••"));
            let ours = b64_of(&negotiated.local);
            for text in &texts {
                // Not the whole key, nor any 8-character run of its base64.
                for secret in [&b64, &ours] {
                    for w in 0..secret.len() - 8 {
                        assert!(!text.contains(&secret[w..w + 8]), "{text}");
                    }
                }
            }
        }
    }

    #[test]
    fn suites_we_do_not_speak_are_skipped() {
        let sdp = [
            "m=audio 4000 RTP/SAVP 0",
            "a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:whatever-the-format-of-an-unknown-suite-is",
            "a=crypto:2 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5QUJDREUwMTIzNDU2Nzg5QUJjZGVm",
            "a=rtpmap:0 PCMU/8000",
            "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "a=crypto:4 AEAD_AES_128_GCM inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaQ==",
        ];
        let attrs = CryptoAttribute::parse_all(sdp).unwrap();
        let got: Vec<(u32, SrtpSuite)> = attrs.iter().map(|a| (a.tag, a.suite())).collect();
        assert_eq!(
            got,
            [
                (3, SrtpSuite::AesCm128HmacSha1_32),
                (4, SrtpSuite::AeadAes128Gcm)
            ]
        );
        assert!(CryptoAttribute::parse(sdp[1]).unwrap().is_none());
    }

    #[test]
    fn malformed_attributes_are_typed_errors() {
        let key = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
        let cases: &[(&str, SdesError)] = &[
            ("a=rtpmap:0 PCMU/8000", SdesError::NotCrypto),
            (
                "a=crypto: AES_CM_128_HMAC_SHA1_80 inline:x",
                SdesError::BadTag,
            ),
            (
                "a=crypto:x1 AES_CM_128_HMAC_SHA1_80 inline:x",
                SdesError::BadTag,
            ),
            (
                "a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:x",
                SdesError::BadTag,
            ),
            ("a=crypto:1 AES_CM_128_HMAC_SHA1_80", SdesError::Truncated),
            ("a=crypto:1", SdesError::Truncated),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 uri:{key}"),
                SdesError::BadKeyMethod,
            ),
            (
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!!notbase64!!!!",
                SdesError::BadBase64,
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^x"),
                SdesError::BadLifetime,
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^64"),
                SdesError::BadLifetime,
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|0"),
                SdesError::BadLifetime,
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:4|2^20"),
                SdesError::BadLifetime,
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:0"),
                SdesError::BadMki,
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|256:1"),
                SdesError::BadMki,
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:129"),
                SdesError::BadMki,
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|x:4"),
                SdesError::BadMki,
            ),
            // 30 bytes where GCM needs 28; 29 where AES-CM needs 30.
            (
                &format!("a=crypto:1 AEAD_AES_128_GCM inline:{key}"),
                SdesError::BadKeyLength {
                    suite: SrtpSuite::AeadAes128Gcm,
                    got: 30,
                    want: 28,
                },
            ),
            (
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVA",
                SdesError::BadKeyLength {
                    suite: SrtpSuite::AesCm128HmacSha1_80,
                    got: 29,
                    want: 30,
                },
            ),
            (
                &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}{key}"),
                SdesError::BadKeyLength {
                    suite: SrtpSuite::AesCm128HmacSha1_80,
                    got: 60,
                    want: 30,
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(CryptoAttribute::parse(line).unwrap_err(), *want, "{line}");
            // Errors never quote the line (and so never the key).
            assert!(!want.to_string().contains("PS1u"));
        }
        // One malformed attribute fails the whole offer.
        let lines = [
            RFC_LINE,
            "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:c2hvcnQ=",
        ];
        assert_eq!(
            CryptoAttribute::parse_all(lines).unwrap_err(),
            SdesError::BadKeyLength {
                suite: SrtpSuite::AesCm128HmacSha1_32,
                got: 5,
                want: 30
            }
        );
    }

    #[test]
    fn the_answer_takes_the_first_usable_offer_with_a_key_of_our_own() {
        let key = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
        let offer = CryptoAttribute::parse_all([
            format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP").as_str(),
            format!("a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{key};inline:{key}").as_str(),
            format!("a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{key} KDR=5").as_str(),
            format!("a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{key} FOO=1").as_str(),
            format!("a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{key} WSH=64 KDR=0").as_str(),
            format!("a=crypto:6 AES_CM_128_HMAC_SHA1_80 inline:{key}").as_str(),
        ])
        .unwrap();
        assert_eq!(
            offer[0].check_usable(),
            Err(SdesError::Unsupported("unencrypted media"))
        );
        assert_eq!(
            offer[1].check_usable(),
            Err(SdesError::Unsupported("more than one master key"))
        );
        assert!(offer[2].check_usable().is_err() && offer[3].check_usable().is_err());
        let n = NegotiatedSrtp::answer(&offer).unwrap();
        assert_eq!((n.tag(), n.suite()), (5, SrtpSuite::AesCm128HmacSha1_32));
        // RFC 4568 §6.1: our own key, never the peer's echoed back.
        let line = n.local_line();
        assert!(!line.expose_line().contains(key));
        let ours = CryptoAttribute::parse(line.expose_line()).unwrap().unwrap();
        assert_eq!(
            (ours.tag, ours.suite()),
            (5, SrtpSuite::AesCm128HmacSha1_32)
        );
        assert_ne!(ours.key.key_salt(), offer[4].key.key_salt());
        // Each answer draws a new key.
        let again = NegotiatedSrtp::answer(&offer).unwrap();
        assert_ne!(again.local.key_salt(), n.local.key_salt());

        let nothing =
            CryptoAttribute::parse_all([offer_line(1, "UNENCRYPTED_SRTCP").as_str()]).unwrap();
        assert_eq!(
            NegotiatedSrtp::answer(&nothing).unwrap_err(),
            SdesError::NoAcceptableOffer
        );
        assert_eq!(
            NegotiatedSrtp::answer(&[]).unwrap_err(),
            SdesError::NoAcceptableOffer
        );
    }

    fn offer_line(tag: u32, param: &str) -> String {
        format!(
            "a=crypto:{tag} AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR {param}"
        )
    }

    /// Both sides of a leg built from SDP text alone: media protected by one side's outbound
    /// context opens with the other's inbound one, in both directions.
    fn assert_media_flows(a_out: &mut OutboundSrtp, b_in: &mut InboundSrtp) {
        let mut buf = [0u8; 200];
        buf[0] = 0x80;
        buf[3] = 9;
        buf[11] = 1;
        buf[12..172].fill(0xd5);
        let plain = buf;
        let n = a_out.protect_rtp(&mut buf, 172).unwrap();
        assert_ne!(buf[12..172], plain[12..172]);
        assert_eq!(b_in.unprotect_rtp(&mut buf, n).unwrap(), 172);
        assert_eq!(buf[..172], plain[..172]);
    }

    #[test]
    fn offer_and_answer_key_both_directions() {
        // We offer (toward the contact centre); the peer answers with its own key.
        let ours = SdesOffer::new(&SrtpSuite::ALL).unwrap();
        let lines = ours.lines();
        let tags: Vec<u32> = lines.iter().map(CryptoLine::tag).collect();
        assert_eq!(tags, [1, 2, 3]);
        assert_eq!(lines[1].suite(), SrtpSuite::AeadAes128Gcm);
        // The peer reads our offer and answers it.
        let offered =
            CryptoAttribute::parse_all(lines.iter().map(CryptoLine::expose_line)).unwrap();
        let peer = NegotiatedSrtp::answer(&offered).unwrap();
        let answer = CryptoAttribute::parse(peer.local_line().expose_line())
            .unwrap()
            .unwrap();
        let us = ours.accept(&answer).unwrap();
        assert_eq!((us.tag(), us.suite()), (1, SrtpSuite::AesCm128HmacSha1_80));

        assert_media_flows(&mut us.outbound().unwrap(), &mut peer.inbound().unwrap());
        assert_media_flows(&mut peer.outbound().unwrap(), &mut us.inbound().unwrap());

        // An answer under a tag we never offered, or with another suite, is refused.
        let mut stray = answer.clone();
        stray.tag = 9;
        assert_eq!(
            ours.accept(&stray).unwrap_err(),
            SdesError::TagNotOffered(9)
        );
        let gcm_key = SrtpMasterKey::generate(SrtpSuite::AeadAes128Gcm).unwrap();
        let switched = CryptoAttribute::parse(CryptoLine::new(1, &gcm_key).expose_line())
            .unwrap()
            .unwrap();
        assert_eq!(ours.accept(&switched).unwrap_err(), SdesError::SuiteChanged);
        let unusable = CryptoAttribute::parse(&offer_line(1, "UNAUTHENTICATED_SRTP"))
            .unwrap()
            .unwrap();
        assert_eq!(
            ours.accept(&unusable).unwrap_err(),
            SdesError::Unsupported("unauthenticated media")
        );
    }

    #[test]
    fn the_peers_mki_and_lifetime_reach_its_inbound_context() {
        let peer_key = SrtpMasterKey::generate(SrtpSuite::AesCm128HmacSha1_80).unwrap();
        let b64 = STANDARD.encode(peer_key.key_salt());
        let attr = CryptoAttribute::parse(&format!(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^1|7:1"
        ))
        .unwrap()
        .unwrap();
        let n = NegotiatedSrtp::answer(&[attr]).unwrap();
        let mut inb = n.inbound().unwrap();
        let mut peer_out = OutboundSrtp::new(&peer_key).unwrap();
        for seq in 1..=3u16 {
            let mut buf = [0u8; 200];
            buf[0] = 0x80;
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            let n = peer_out.protect_rtp(&mut buf, 172).unwrap();
            // The peer's MKI (7, one byte) goes in before the 10-byte tag.
            buf.copy_within(n - 10..n, n - 9);
            buf[n - 10] = 7;
            let got = inb.unprotect_rtp(&mut buf, n + 1);
            if seq <= 2 {
                assert_eq!(got, Ok(172));
            } else {
                assert_eq!(got, Err(SrtpError::KeyExhausted), "lifetime 2^1");
            }
        }
    }
}
