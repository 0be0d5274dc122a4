//! One SRTP master key and salt: generated from the OS random source or read from a peer's
//! SDP. It must never print its bytes, and it wipes them when dropped.

use std::fmt;

use rand::TryRng;
use rand::rngs::SysRng;
use thiserror::Error;
use zeroize::Zeroizing;

use super::SrtpSuite;

/// Longest key||salt of the suites we speak (AES-CM: 16 + 14).
const MAX_KEY_SALT: usize = 30;

/// The OS random source failed; no key was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("the OS random source failed to produce an SRTP key")]
pub struct KeyGenError;

/// A master key and master salt for one suite (RFC 3711 §8.2).
///
/// Fixed-size storage so a key never sits in a heap buffer that could be reallocated and
/// left behind unwiped.
#[derive(Clone)]
pub struct SrtpMasterKey {
    suite: SrtpSuite,
    bytes: Zeroizing<[u8; MAX_KEY_SALT]>,
}

impl SrtpMasterKey {
    /// A fresh key and salt from the OS CSPRNG (getrandom), not a user-space generator: one
    /// key per leg and direction is rare enough that the system call costs nothing, and a
    /// forked or snapshotted process cannot repeat it.
    pub fn generate(suite: SrtpSuite) -> Result<SrtpMasterKey, KeyGenError> {
        let mut bytes = Zeroizing::new([0u8; MAX_KEY_SALT]);
        let len = suite.key_len() + suite.salt_len();
        let out = bytes.get_mut(..len).ok_or(KeyGenError)?;
        SysRng.try_fill_bytes(out).map_err(|_| KeyGenError)?;
        Ok(SrtpMasterKey { suite, bytes })
    }

    /// A key from its concatenated key||salt bytes, as carried in `inline:`; `None` when the
    /// length is not the suite's.
    pub fn from_key_salt(suite: SrtpSuite, key_salt: &[u8]) -> Option<SrtpMasterKey> {
        if key_salt.len() != suite.key_len() + suite.salt_len() {
            return None;
        }
        let mut bytes = Zeroizing::new([0u8; MAX_KEY_SALT]);
        bytes.get_mut(..key_salt.len())?.copy_from_slice(key_salt);
        Some(SrtpMasterKey { suite, bytes })
    }

    /// The suite this key is for.
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// key||salt: what `inline:` carries and what builds a transform. Crate-only so no
    /// caller outside the SRTP code can hold the bytes.
    pub(crate) fn key_salt(&self) -> &[u8] {
        let len = self.suite.key_len() + self.suite.salt_len();
        self.bytes.get(..len).unwrap_or(&[])
    }

    pub(crate) fn key(&self) -> &[u8] {
        self.key_salt().get(..self.suite.key_len()).unwrap_or(&[])
    }

    pub(crate) fn salt(&self) -> &[u8] {
        self.key_salt().get(self.suite.key_len()..).unwrap_or(&[])
    }
}

impl fmt::Debug for SrtpMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SrtpMasterKey({}, •••)", self.suite)
    }
}

impl fmt::Display for SrtpMasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("•••")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_sized_fresh_and_redacted() {
        for suite in SrtpSuite::ALL {
            let a = SrtpMasterKey::generate(suite).unwrap();
            let b = SrtpMasterKey::generate(suite).unwrap();
            assert_eq!(a.key().len(), 16);
            assert_eq!(a.salt().len(), suite.salt_len());
            assert_ne!(a.key_salt(), b.key_salt(), "two draws gave the same key");
            // Not the all-zero buffer it started as.
            assert!(a.key().iter().any(|&x| x != 0));

            let debug = format!("{a:?}");
            let display = a.to_string();
            assert_eq!(debug, format!("SrtpMasterKey({suite}, •••)"));
            // Exact strings: nothing of the key can be in them.
            assert_eq!(display, "•••");
        }
    }

    #[test]
    fn key_salt_must_have_the_suites_length() {
        let bytes: Vec<u8> = (0..30).collect();
        let k = SrtpMasterKey::from_key_salt(SrtpSuite::AesCm128HmacSha1_80, &bytes).unwrap();
        assert_eq!(k.key(), &bytes[..16]);
        assert_eq!(k.salt(), &bytes[16..]);
        assert!(SrtpMasterKey::from_key_salt(SrtpSuite::AeadAes128Gcm, &bytes).is_none());
        let gcm = SrtpMasterKey::from_key_salt(SrtpSuite::AeadAes128Gcm, &bytes[..28]).unwrap();
        assert_eq!(gcm.salt(), &bytes[16..28]);
        assert!(
            SrtpMasterKey::from_key_salt(SrtpSuite::AesCm128HmacSha1_32, &bytes[..29]).is_none()
        );
    }
}
