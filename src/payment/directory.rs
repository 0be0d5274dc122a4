//! The shared session directory's record: how a relay hands a payment session that is still
//! waiting for its call to another relay through the shared store, so that a loop call (or an
//! agent keying the locator) on any node finds the session the agent's desktop created on
//! another.
//!
//! The entry is JSON filed under the locator. Everything in it is what `GET /v1/sessions/{id}`
//! shows anyway, plus the token *hash* and the unlock PIN, which is the one secret: it is
//! wrapped with AES-256-GCM under a key derived (HKDF-SHA256, RFC 5869) from the master key,
//! with every other field of the entry as associated data (session id, locator, agent, times,
//! token hash, fields, amount, reference), so the store alone cannot read the PIN, and a store
//! writer who changes the agent (to redirect the return call) or the expiry, or moves the entry
//! to another locator, gets an entry that does not open. A relay that adopts the session deletes
//! the entry in the same step (GETDEL), so exactly one relay captures it; the PIN then lives
//! only in that relay's memory until sealing, as on a single node.
//!
//! Sans-IO: the store round trips are `redis_store`'s.

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroizing;

use crate::payment::card::FieldName;
use crate::payment::hex;
use crate::payment::pin::Pin;
use crate::payment::session::{AgentId, Locator, SessionId, SharedSession, TokenHash};
use crate::payment::vault::MasterKey;

// 2: the associated data covers the whole entry (1 covered the id and locator only).
const VERSION: u8 = 2;
const KDF_LABEL: &[u8] = b"tonewall directory v1 pin wrap";
const AAD_LABEL: &[u8] = b"tonewall directory v2 aad";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why an entry could not be read. Never carries the entry's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum DirectoryError {
    #[error("malformed directory entry")]
    Malformed,
    #[error("directory entry does not open with this master key")]
    Rejected,
    #[error("wrapping the PIN failed")]
    Wrap,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    body: Body,
    /// nonce ‖ ciphertext ‖ tag, hex.
    pin: String,
}

/// Everything in the entry but the wrapped PIN: all of it is the PIN's associated data.
#[derive(Serialize, Deserialize)]
struct Body {
    v: u8,
    id: SessionId,
    agent: String,
    locator: Locator,
    created_at_ms: u64,
    expires_at_ms: u64,
    token_hash: String,
    fields: Vec<FieldName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    amount: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
}

fn cipher(master: &MasterKey) -> Result<Aes256Gcm, DirectoryError> {
    let hk = Hkdf::<Sha256>::new(None, master.expose());
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(KDF_LABEL, &mut key[..])
        .map_err(|_| DirectoryError::Wrap)?;
    Aes256Gcm::new_from_slice(&key[..]).map_err(|_| DirectoryError::Wrap)
}

/// The label, then the body as JSON: serde writes the fields in declaration order with one
/// escaping per value, so a decoded body serialises back to the bytes it was sealed with (or
/// to the same values, which is what counts).
fn aad(body: &Body) -> Result<Vec<u8>, DirectoryError> {
    let mut a = AAD_LABEL.to_vec();
    serde_json::to_writer(&mut a, body).map_err(|_| DirectoryError::Malformed)?;
    Ok(a)
}

/// The entry for `s`, its PIN wrapped under `master`.
pub fn encode(s: &SharedSession, master: &MasterKey) -> Result<String, DirectoryError> {
    let body = Body {
        v: VERSION,
        id: s.id,
        agent: s.agent.as_str().to_string(),
        locator: s.locator.clone(),
        created_at_ms: s.created_at_ms,
        expires_at_ms: s.expires_at_ms,
        token_hash: s.token_hash.to_hex(),
        fields: s.fields.clone(),
        amount: s.amount.clone(),
        reference: s.reference.clone(),
    };
    let mut nonce = [0u8; NONCE_LEN];
    rand::fill(&mut nonce);
    let mut buf = Zeroizing::new(s.pin.reveal().as_bytes().to_vec());
    let tag = cipher(master)?
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            &aad(&body).map_err(|_| DirectoryError::Wrap)?,
            buf.as_mut_slice().into(),
        )
        .map_err(|_| DirectoryError::Wrap)?;
    let mut wrapped = Vec::with_capacity(NONCE_LEN + buf.len() + TAG_LEN);
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&buf);
    wrapped.extend_from_slice(&tag);
    let entry = Entry {
        body,
        pin: hex::encode(&wrapped),
    };
    serde_json::to_string(&entry).map_err(|_| DirectoryError::Wrap)
}

/// Reads an entry and unwraps its PIN; an entry any field of which was changed does not open.
pub fn decode(json: &str, master: &MasterKey) -> Result<SharedSession, DirectoryError> {
    let Entry { body: e, pin } =
        serde_json::from_str(json).map_err(|_| DirectoryError::Malformed)?;
    if e.v != VERSION {
        return Err(DirectoryError::Malformed);
    }
    let wrapped = hex::decode(&pin).map_err(|_| DirectoryError::Malformed)?;
    if wrapped.len() < NONCE_LEN + TAG_LEN {
        return Err(DirectoryError::Malformed);
    }
    let (nonce, rest) = wrapped.split_at(NONCE_LEN);
    let (sealed, tag) = rest.split_at(rest.len() - TAG_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| DirectoryError::Malformed)?;
    let tag = Tag::try_from(tag).map_err(|_| DirectoryError::Malformed)?;
    let mut buf = Zeroizing::new(sealed.to_vec());
    cipher(master)?
        .decrypt_inout_detached(
            &Nonce::from(nonce),
            &aad(&e)?,
            buf.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| DirectoryError::Rejected)?;
    let pin = std::str::from_utf8(&buf)
        .ok()
        .and_then(|p| Pin::parse(p).ok())
        .ok_or(DirectoryError::Malformed)?;
    Ok(SharedSession {
        id: e.id,
        agent: AgentId::parse(&e.agent).map_err(|_| DirectoryError::Malformed)?,
        locator: e.locator,
        created_at_ms: e.created_at_ms,
        expires_at_ms: e.expires_at_ms,
        token_hash: TokenHash::from_hex(&e.token_hash).ok_or(DirectoryError::Malformed)?,
        pin,
        fields: e.fields,
        amount: e.amount,
        reference: e.reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::session::{NewSession, SessionConfig, SessionTable};

    fn shared() -> (SharedSession, String) {
        let mut t = SessionTable::new(SessionConfig::default());
        let c = t
            .create(
                NewSession {
                    agent: AgentId::parse("agent-7").unwrap(),
                    ttl_ms: None,
                    fields: vec![FieldName::Pan, FieldName::Cvv],
                    amount: Some("9.99 EUR".into()),
                    reference: None,
                    owner: None,
                    hand_out: false,
                },
                1_000,
            )
            .unwrap();
        (t.export(&c.id, 2_000).unwrap(), c.pin.reveal().to_string())
    }

    #[test]
    fn round_trip_keeps_the_session_and_hides_the_pin() {
        let master = MasterKey::generate();
        let (s, pin) = shared();
        let json = encode(&s, &master).unwrap();
        assert!(!json.contains(&pin), "the PIN travels wrapped");
        let back = decode(&json, &master).unwrap();
        assert_eq!(back.pin.reveal(), pin);
        assert_eq!(back.id, s.id);
        assert_eq!(back.locator, s.locator);
        assert_eq!(back.token_hash, s.token_hash);
        assert_eq!(back.fields, s.fields);
        assert_eq!(back.amount.as_deref(), Some("9.99 EUR"));
        // The adopting relay's table takes it as a Created session.
        let mut other = SessionTable::new(SessionConfig::default());
        other.adopt(back, 3_000).unwrap();
        assert_eq!(other.by_locator(&s.locator, 3_000).unwrap().id(), s.id);
    }

    #[test]
    fn another_key_or_a_moved_entry_does_not_open() {
        let master = MasterKey::generate();
        let (s, _) = shared();
        let json = encode(&s, &master).unwrap();
        assert_eq!(
            decode(&json, &MasterKey::generate()).err(),
            Some(DirectoryError::Rejected)
        );
        let other = if s.locator.as_str() == "0000" {
            "0001"
        } else {
            "0000"
        };
        let moved = json.replace(
            &format!("\"locator\":\"{}\"", s.locator.as_str()),
            &format!("\"locator\":\"{other}\""),
        );
        assert_ne!(moved, json);
        assert_eq!(
            decode(&moved, &master).err(),
            Some(DirectoryError::Rejected)
        );
        assert_eq!(
            decode("{\"v\":1}", &master).err(),
            Some(DirectoryError::Malformed)
        );
    }

    #[test]
    fn a_changed_agent_expiry_or_token_hash_does_not_open() {
        let master = MasterKey::generate();
        let (s, _) = shared();
        let json = encode(&s, &master).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let edits: [(&str, serde_json::Value); 4] = [
            ("agent", "intruder".into()),
            ("expires_at_ms", (s.expires_at_ms + 3_600_000).into()),
            ("token_hash", "00".repeat(32).into()),
            ("reference", "x".into()),
        ];
        for (field, value) in edits {
            let original = v[field].clone();
            v[field] = value;
            assert_eq!(
                decode(&v.to_string(), &master).err(),
                Some(DirectoryError::Rejected),
                "{field}"
            );
            v[field] = original;
        }
        // Put back as it was (the absent reference stays absent), it opens again.
        v.as_object_mut().unwrap().remove("reference");
        assert!(decode(&v.to_string(), &master).is_ok());
    }

    #[test]
    fn adopt_refuses_a_locator_held_by_another_session() {
        let (s, _) = shared();
        let mut t = SessionTable::new(SessionConfig::default());
        t.adopt(s.clone(), 3_000).unwrap();
        // Adopting the same session twice is harmless.
        t.adopt(s.clone(), 3_000).unwrap();
        let mut clash = s.clone();
        clash.id = SessionId::generate();
        assert_eq!(
            t.adopt(clash, 3_000),
            Err(crate::payment::session::SessionError::LocatorTaken)
        );
        let mut late = s;
        late.id = SessionId::generate();
        assert_eq!(
            SessionTable::new(SessionConfig::default()).adopt(late.clone(), late.expires_at_ms),
            Err(crate::payment::session::SessionError::Expired)
        );
    }
}
