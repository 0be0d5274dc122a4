//! The sealed vault record: a captured card encrypted so that only the holder of its unlock PIN
//! (and the relay's master key) can open it.
//!
//! Sealing: key = HKDF-SHA256 (RFC 5869) with ikm = the 32-byte master key, salt = 32 random
//! bytes per record, info = a label, the session id and the PIN; cipher = AES-256-GCM with a
//! fresh random 96-bit nonce (NIST SP 800-38D §8.2.2: random nonces are safe far beyond the
//! records one key ever seals, and each record has its own key anyway); associated data = the
//! session id and locator, so a record moved to another session or locator does not open.
//! Neither the store (no master key) nor the relay (no PIN after sealing) can open a record
//! alone; with GCM a wrong PIN is a tag failure, indistinguishable from tampering, and the
//! tries counter lives in the store.
//!
//! Limits worth knowing: a 6-digit PIN is a million guesses; the store's tries counter stops
//! online guessing, but whoever holds both the master key and a record can search the PIN
//! space offline. The master key is the thing to protect.
//!
//! Plaintext exists only in zeroizing buffers sized once; keys and PINs live in `secrecy` or
//! `Zeroizing` wrappers and render redacted. This module reads no clock; `MasterKey::from_file`
//! and `from_env` are the only I/O, called once by the shell at start-up.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::payment::card::{CardData, Cvv, Expiry, FieldName, Pan};
use crate::payment::hex;
use crate::payment::pin::Pin;
use crate::payment::session::{Locator, SessionId, TokenHash};

/// Record format version.
const VERSION: u8 = 1;
const SALT_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const KDF_LABEL: &[u8] = b"tonewall vault v1 key";
const AAD_LABEL: &[u8] = b"tonewall vault v1 aad";

/// The relay's 32-byte master key. Never printed, zeroized on drop.
pub struct MasterKey(SecretBox<[u8; 32]>);

/// The master key could not be loaded. Names the source, never the material.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("master key file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("environment variable {0} with the master key is not set or not UTF-8")]
    EnvNotSet(String),
    #[error("master key from {0} must be 32 raw bytes or 64 hex digits")]
    Format(String),
    #[error("no master key: set vault.master_key_file or the {0} environment variable")]
    Missing(String),
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> MasterKey {
        MasterKey(SecretBox::init_with_mut(|k: &mut [u8; 32]| {
            k.copy_from_slice(bytes)
        }))
    }

    /// A random key (tests, demo).
    pub fn generate() -> MasterKey {
        MasterKey(SecretBox::init_with_mut(|k: &mut [u8; 32]| rand::fill(k)))
    }

    /// Key material as 32 raw bytes, or 64 hex digits with surrounding whitespace.
    /// `origin` names the source in errors.
    pub fn parse(material: &[u8], origin: &str) -> Result<MasterKey, KeyError> {
        // 32 hex characters are 16 bytes of key written as text, not 32 raw bytes: refuse
        // rather than silently use a weaker key. (Random raw bytes are all hex digits with
        // probability (22/256)^32.)
        if material.len() == 32 && material.iter().all(u8::is_ascii_hexdigit) {
            return Err(KeyError::Format(origin.to_string()));
        }
        if material.len() == 32 {
            let mut k = Zeroizing::new([0u8; 32]);
            k.copy_from_slice(material);
            return Ok(MasterKey::from_bytes(&k));
        }
        let text = std::str::from_utf8(material)
            .map_err(|_| KeyError::Format(origin.to_string()))?
            .trim();
        let mut k = Zeroizing::new([0u8; 32]);
        hex::decode_into(text, &mut k[..]).map_err(|_| KeyError::Format(origin.to_string()))?;
        Ok(MasterKey::from_bytes(&k))
    }

    /// Reads a key file (at most a few hundred bytes, into a zeroizing buffer).
    pub fn from_file(path: &Path) -> Result<MasterKey, KeyError> {
        let file_err = |source| KeyError::File {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(file_err)?;
        // Fixed buffer: a growing Vec would leave copies of the key in freed memory.
        let mut buf = Zeroizing::new([0u8; 256]);
        let mut n = 0;
        while let Some(rest) = buf.get_mut(n..) {
            if rest.is_empty() {
                return Err(KeyError::Format(path.display().to_string()));
            }
            match f.read(rest) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(file_err(e)),
            }
        }
        MasterKey::parse(
            buf.get(..n).unwrap_or_default(),
            &path.display().to_string(),
        )
    }

    /// Reads 64 hex digits from an environment variable, or the value `tonewall run` took out
    /// of the environment at start (`process::take_secret_env`). Prefer a key file in
    /// production: the variable is in the environment of whatever started the relay.
    pub fn from_env(var: &str) -> Result<MasterKey, KeyError> {
        let v =
            crate::process::secret_env(var).ok_or_else(|| KeyError::EnvNotSet(var.to_string()))?;
        MasterKey::parse(v.as_bytes(), &format!("${var}"))
    }

    /// The config's rule: the file if one is named, else the environment variable.
    pub fn load(file: Option<&Path>, env_var: &str) -> Result<MasterKey, KeyError> {
        match file {
            Some(p) => MasterKey::from_file(p),
            None => MasterKey::from_env(env_var).map_err(|e| match e {
                KeyError::EnvNotSet(v) => KeyError::Missing(v),
                other => other,
            }),
        }
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(•••)")
    }
}

/// A sealed card: what the store keeps. Session id, locator and token hash are in clear (none
/// is card data); the card fields are only in `ciphertext`. Serialises with hex bytes (JSON in
/// Redis).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRecord {
    v: u8,
    session: SessionId,
    locator: Locator,
    token_hash: TokenHash,
    #[serde(with = "hex_bytes")]
    salt: Vec<u8>,
    #[serde(with = "hex_bytes")]
    nonce: Vec<u8>,
    /// AES-GCM ciphertext followed by its 16-byte tag.
    #[serde(with = "hex_bytes")]
    ciphertext: Vec<u8>,
}

impl SealedRecord {
    pub fn session(&self) -> SessionId {
        self.session
    }
    pub fn locator(&self) -> &Locator {
        &self.locator
    }
    /// Hash of the retrieval token the store checks before counting a try.
    pub fn token_hash(&self) -> TokenHash {
        self.token_hash
    }
}

impl fmt::Debug for SealedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedRecord")
            .field("session", &self.session)
            .field("locator", &self.locator)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex::encode(b))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::hex::decode(&s).map_err(|_| serde::de::Error::custom("bad hex"))
    }
}

/// Sealing failed (the AEAD refused; not expected for card-sized input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("sealing the record failed")]
pub struct SealError;

/// A record did not open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum OpenError {
    /// Wrong PIN, other session, or any change to the record: GCM cannot tell them apart, and
    /// neither may we.
    #[error("wrong PIN or tampered record")]
    Rejected,
    #[error("unsupported record version")]
    Version,
    #[error("malformed record")]
    Malformed,
}

/// Encrypts `card` for `session`, openable with `pin`.
pub fn seal(
    card: &CardData,
    master: &MasterKey,
    pin: &Pin,
    session: SessionId,
    locator: &Locator,
    token_hash: TokenHash,
) -> Result<SealedRecord, SealError> {
    let mut salt = vec![0u8; SALT_LEN];
    rand::fill(&mut salt[..]);
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let cipher = cipher(master, &salt, &session, pin)?;
    let aad = aad(&session, locator);
    let mut buf = encode(card);
    let tag = cipher
        .encrypt_inout_detached(&Nonce::from(nonce), &aad, buf.as_mut_slice().into())
        .map_err(|_| SealError)?;
    let mut ciphertext = Vec::with_capacity(buf.len() + TAG_LEN);
    ciphertext.extend_from_slice(&buf);
    ciphertext.extend_from_slice(&tag);
    Ok(SealedRecord {
        v: VERSION,
        session,
        locator: locator.clone(),
        token_hash,
        salt,
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

/// Decrypts a record for `session` with `pin`. The session id comes from the caller (the id it
/// asked the store for), not from the record, so a record filed under another id fails.
pub fn open(
    record: &SealedRecord,
    master: &MasterKey,
    pin: &Pin,
    session: &SessionId,
) -> Result<CardData, OpenError> {
    if record.v != VERSION {
        return Err(OpenError::Version);
    }
    let nonce: [u8; NONCE_LEN] = record
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| OpenError::Malformed)?;
    if record.salt.len() != SALT_LEN {
        return Err(OpenError::Malformed);
    }
    let body_len = record
        .ciphertext
        .len()
        .checked_sub(TAG_LEN)
        .ok_or(OpenError::Malformed)?;
    let (body, tag) = record.ciphertext.split_at(body_len);
    let tag = Tag::try_from(tag).map_err(|_| OpenError::Malformed)?;
    let cipher = cipher(master, &record.salt, session, pin).map_err(|_| OpenError::Malformed)?;
    let aad = aad(session, &record.locator);
    let mut buf = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_inout_detached(&Nonce::from(nonce), &aad, buf.as_mut_slice().into(), &tag)
        .map_err(|_| OpenError::Rejected)?;
    decode(&buf).ok_or(OpenError::Malformed)
}

/// RFC 5869: extract with the record's salt, expand with the PIN in `info`.
fn cipher(
    master: &MasterKey,
    salt: &[u8],
    session: &SessionId,
    pin: &Pin,
) -> Result<Aes256Gcm, SealError> {
    let hk = Hkdf::<Sha256>::new(Some(salt), master.expose());
    let pin = pin.reveal().as_bytes();
    let mut info = Zeroizing::new(Vec::with_capacity(KDF_LABEL.len() + 16 + 1 + pin.len()));
    info.extend_from_slice(KDF_LABEL);
    info.extend_from_slice(session.as_bytes());
    info.push(pin.len() as u8);
    info.extend_from_slice(pin);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(&info, &mut key[..]).map_err(|_| SealError)?;
    Aes256Gcm::new_from_slice(&key[..]).map_err(|_| SealError)
}

/// Associated data: label, session id, length-prefixed locator.
fn aad(session: &SessionId, locator: &Locator) -> Vec<u8> {
    let loc = locator.as_str().as_bytes();
    let mut a = Vec::with_capacity(AAD_LABEL.len() + 16 + 1 + loc.len());
    a.extend_from_slice(AAD_LABEL);
    a.extend_from_slice(session.as_bytes());
    a.push(loc.len() as u8);
    a.extend_from_slice(loc);
    a
}

/// Plaintext layout: `name_len name value_len value` per field, values ASCII digits. Sized
/// exactly before writing so the buffer never reallocates.
fn encode(card: &CardData) -> Zeroizing<Vec<u8>> {
    let expiry = card.expiry().map(Expiry::reveal_mmyy);
    let mut fields: Vec<(&str, &str)> = vec![("pan", card.pan().reveal())];
    if let Some(e) = &expiry {
        fields.push(("expiry", e.as_str()));
    }
    if let Some(c) = card.cvv() {
        fields.push(("cvv", c.reveal()));
    }
    for x in card.extra() {
        fields.push((x.name.as_str(), x.reveal()));
    }
    // Names and values are short (field names are config, values at most 19 digits); longer
    // ones are cut at 255 so the length byte stays true.
    let len: usize = fields
        .iter()
        .map(|(n, v)| 2 + clip_bytes(n.as_bytes()) + clip_bytes(v.as_bytes()))
        .sum();
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    for (name, value) in fields {
        for part in [name.as_bytes(), value.as_bytes()] {
            let part = part.get(..clip_bytes(part)).unwrap_or_default();
            out.push(part.len() as u8);
            out.extend_from_slice(part);
        }
    }
    out
}

fn clip_bytes(b: &[u8]) -> usize {
    b.len().min(255)
}

fn decode(mut buf: &[u8]) -> Option<CardData> {
    let mut pan = None;
    let mut expiry = None;
    let mut cvv_digits: Option<&[u8]> = None;
    let mut extra = Vec::new();
    while !buf.is_empty() {
        let (name, rest) = take(buf)?;
        let (value, rest) = take(rest)?;
        buf = rest;
        match name {
            b"pan" => pan = Some(Pan::parse(value, true).ok()?),
            b"expiry" => expiry = Some(Expiry::parse_undated(value).ok()?),
            b"cvv" => cvv_digits = Some(value),
            other => extra.push((FieldName::parse(std::str::from_utf8(other).ok()?), value)),
        }
    }
    let pan = pan?;
    let cvv = match cvv_digits {
        Some(d) => Some(Cvv::parse(d, pan.brand()).ok()?),
        None => None,
    };
    let mut card = CardData::new(pan, expiry, cvv);
    for (name, value) in extra {
        card.push_extra(name, value).ok()?;
    }
    Some(card)
}

fn take(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&len, rest) = buf.split_first()?;
    let len = usize::from(len);
    Some((rest.get(..len)?, rest.get(len..)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::card::YearMonth;
    use crate::payment::pin::DEFAULT_PIN_LEN;
    use crate::payment::session::RetrievalToken;

    fn card() -> CardData {
        let today = YearMonth::new(2026, 6).unwrap();
        let pan = Pan::parse(b"4111111111111111", false).unwrap();
        let mut c = CardData::new(
            pan,
            Some(Expiry::parse(b"1230", today).unwrap()),
            Some(Cvv::parse(b"123", None).unwrap()),
        );
        c.push_extra(FieldName::Postcode, b"90210").unwrap();
        c
    }

    struct Fixture {
        master: MasterKey,
        pin: Pin,
        session: SessionId,
        locator: Locator,
        record: SealedRecord,
    }

    fn sealed() -> Fixture {
        let master = MasterKey::generate();
        let pin = Pin::generate(DEFAULT_PIN_LEN);
        let session = SessionId::generate();
        let locator = Locator::parse("4321").unwrap();
        let th = RetrievalToken::generate().hash();
        let record = seal(&card(), &master, &pin, session, &locator, th).unwrap();
        Fixture {
            master,
            pin,
            session,
            locator,
            record,
        }
    }

    fn other_pin(pin: &Pin) -> Pin {
        let mut s = pin.reveal().to_string();
        let last = s.pop().unwrap();
        s.push(if last == '0' { '1' } else { '0' });
        Pin::parse(&s).unwrap()
    }

    #[test]
    fn round_trip() {
        let f = sealed();
        let c = open(&f.record, &f.master, &f.pin, &f.session).unwrap();
        assert_eq!(c, card());
        assert_eq!(c.pan().reveal(), "4111111111111111");
        assert_eq!(c.expiry().unwrap().reveal_mmyy().as_str(), "1230");
        assert_eq!(c.cvv().unwrap().reveal(), "123");
        assert_eq!(c.reveal_extra(&FieldName::Postcode), Some("90210"));
        // Through JSON, as the Redis store keeps it.
        let json = serde_json::to_string(&f.record).unwrap();
        let back: SealedRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f.record);
        assert_eq!(open(&back, &f.master, &f.pin, &f.session).unwrap(), card());
    }

    #[test]
    fn ciphertext_hides_the_card() {
        let f = sealed();
        let json = serde_json::to_string(&f.record).unwrap();
        for secret in ["4111111111111111", "1230", "90210"] {
            assert!(!json.contains(secret));
            assert!(!json.contains(&hex::encode(secret.as_bytes())));
            let ct = &f.record.ciphertext;
            assert!(!ct.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
        // Fresh salt and nonce every time: the same card seals differently.
        let again = seal(
            &card(),
            &f.master,
            &f.pin,
            f.session,
            &f.locator,
            f.record.token_hash,
        )
        .unwrap();
        assert_ne!(again.salt, f.record.salt);
        assert_ne!(again.nonce, f.record.nonce);
        assert_ne!(again.ciphertext, f.record.ciphertext);
    }

    #[test]
    fn wrong_pin_wrong_key_or_other_session_is_rejected() {
        let f = sealed();
        let wrong = other_pin(&f.pin);
        assert_eq!(
            open(&f.record, &f.master, &wrong, &f.session),
            Err(OpenError::Rejected)
        );
        assert_eq!(
            open(&f.record, &MasterKey::generate(), &f.pin, &f.session),
            Err(OpenError::Rejected)
        );
        assert_eq!(
            open(&f.record, &f.master, &f.pin, &SessionId::generate()),
            Err(OpenError::Rejected)
        );
    }

    #[test]
    fn tampering_is_rejected() {
        let f = sealed();
        let wrong_pin = open(&f.record, &f.master, &other_pin(&f.pin), &f.session).unwrap_err();
        for i in 0..f.record.ciphertext.len() {
            let mut r = f.record.clone();
            r.ciphertext[i] ^= 0x01;
            // Same error as a wrong PIN: the caller cannot tell which.
            assert_eq!(open(&r, &f.master, &f.pin, &f.session), Err(wrong_pin));
        }
        let mut r = f.record.clone();
        r.locator = Locator::parse("4322").unwrap();
        assert_eq!(
            open(&r, &f.master, &f.pin, &f.session),
            Err(OpenError::Rejected)
        );
        let mut r = f.record.clone();
        r.salt[0] ^= 1;
        assert_eq!(
            open(&r, &f.master, &f.pin, &f.session),
            Err(OpenError::Rejected)
        );
        let mut r = f.record.clone();
        r.nonce[11] ^= 1;
        assert_eq!(
            open(&r, &f.master, &f.pin, &f.session),
            Err(OpenError::Rejected)
        );
        let mut r = f.record.clone();
        r.ciphertext.truncate(10);
        assert_eq!(
            open(&r, &f.master, &f.pin, &f.session),
            Err(OpenError::Malformed)
        );
        let mut r = f.record.clone();
        r.nonce.pop();
        assert_eq!(
            open(&r, &f.master, &f.pin, &f.session),
            Err(OpenError::Malformed)
        );
        let mut r = f.record.clone();
        r.v = 2;
        assert_eq!(
            open(&r, &f.master, &f.pin, &f.session),
            Err(OpenError::Version)
        );
    }

    #[test]
    fn master_key_loads_from_raw_hex_file_and_env() {
        let raw: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let hexed = hex::encode(&raw);
        let dir = tempfile::tempdir().unwrap();
        let f = sealed_with(&MasterKey::from_bytes(&raw));

        let raw_path = dir.path().join("raw.key");
        std::fs::write(&raw_path, raw).unwrap();
        let hex_path = dir.path().join("hex.key");
        std::fs::write(&hex_path, format!("  {hexed}\n")).unwrap();
        for p in [&raw_path, &hex_path] {
            let k = MasterKey::load(Some(p), "UNUSED_VAR").unwrap();
            assert!(
                open(&f.record, &k, &f.pin, &f.session).is_ok(),
                "{}",
                p.display()
            );
        }
        // A process-unique variable name keeps parallel tests apart.
        let var = format!("TONEWALL_TEST_MASTER_KEY_{}", std::process::id());
        // SAFETY: only this test touches this uniquely named variable.
        unsafe { std::env::set_var(&var, &hexed) };
        let k = MasterKey::load(None, &var).unwrap();
        assert!(open(&f.record, &k, &f.pin, &f.session).is_ok());
        unsafe { std::env::set_var(&var, "0011") };
        let e = MasterKey::from_env(&var).unwrap_err();
        assert!(matches!(e, KeyError::Format(_)));
        assert!(!e.to_string().contains("0011"));
        unsafe { std::env::remove_var(&var) };
        assert!(matches!(
            MasterKey::load(None, &var),
            Err(KeyError::Missing(_))
        ));

        let short_hex = dir.path().join("short.key");
        std::fs::write(&short_hex, &hexed[..32]).unwrap();
        assert!(matches!(
            MasterKey::from_file(&short_hex),
            Err(KeyError::Format(_))
        ));
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, "zz".repeat(32)).unwrap();
        let e = MasterKey::from_file(&bad).unwrap_err();
        assert!(
            e.to_string().contains("bad.key") && !e.to_string().contains("zzzz"),
            "{e}"
        );
        let big = dir.path().join("big.key");
        std::fs::write(&big, vec![b'a'; 1000]).unwrap();
        assert!(matches!(
            MasterKey::from_file(&big),
            Err(KeyError::Format(_))
        ));
        assert!(matches!(
            MasterKey::from_file(&dir.path().join("missing")),
            Err(KeyError::File { .. })
        ));
        assert_eq!(
            format!("{:?}", MasterKey::from_bytes(&raw)),
            "MasterKey(•••)"
        );
    }

    fn sealed_with(master: &MasterKey) -> Fixture {
        let pin = Pin::generate(DEFAULT_PIN_LEN);
        let session = SessionId::generate();
        let locator = Locator::parse("1234").unwrap();
        let record = seal(
            &card(),
            master,
            &pin,
            session,
            &locator,
            RetrievalToken::generate().hash(),
        )
        .unwrap();
        Fixture {
            master: MasterKey::generate(),
            pin,
            session,
            locator,
            record,
        }
    }

    #[test]
    fn debug_of_records_and_cards_shows_no_digits() {
        let f = sealed();
        let dbg = format!(
            "{:?} {:?}",
            f.record,
            open(&f.record, &f.master, &f.pin, &f.session)
        );
        for secret in ["41111", "1230", "90210", "123,"] {
            assert!(!dbg.contains(secret), "{dbg}");
        }
        assert!(!dbg.contains(&hex::encode(&f.record.ciphertext)[..16]));
    }
}
