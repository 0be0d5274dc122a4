//! SRTP with SDES keying (RFC 3711, RFC 4568, RFC 7714), sans-IO.
//!
//! Owns the SRTP suites tonewall speaks, the per-leg policy, the master keys, the SDP
//! `a=crypto` attribute and the per-direction transforms. It must never open a socket, read a
//! clock, log, or let key material reach a `Debug`, `Display` or error string.
//!
//! The transform itself is the `rtc-srtp` crate (ARCHITECTURE.md, "Dependencies"). Its API
//! returns a fresh buffer per packet; [`context`] hides that behind in-place calls on the
//! relay's buffer, so the cost is one heap allocation and one copy per packet inside the
//! crate (see `benches/srtp.rs` for the figures), not an API the relay has to change for.
//!
//! Each leg is negotiated on its own: tonewall generates its own key per leg and direction
//! ([`SrtpMasterKey::generate`]) and never sends one leg's key to the other (RFC 4568 §6.1).

pub mod context;
pub mod key;
pub mod sdes;

pub use context::{InboundSrtp, OutboundSrtp, SrtpError};
pub use key::{KeyGenError, SrtpMasterKey};
pub use sdes::{CryptoAttribute, CryptoLine, Mki, NegotiatedSrtp, SdesError, SdesOffer};

use std::fmt;

use serde::Deserialize;

/// The SRTP crypto suites tonewall negotiates, in our order of preference when we offer.
///
/// AES-256 and the F8 suites are left out: the issue asks for these three, and every SIP
/// trunk we know of offers one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    /// RFC 4568 §6.2.1: AES-128 counter mode, 80-bit HMAC-SHA1 tag on SRTP and SRTCP.
    AesCm128HmacSha1_80,
    /// RFC 4568 §6.2.2: as above with a 32-bit tag on SRTP (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
    /// RFC 7714 §14.2: AES-128 in GCM, 16-byte AEAD tag.
    AeadAes128Gcm,
}

impl SrtpSuite {
    /// Every suite, in our preference order when we offer.
    pub const ALL: [SrtpSuite; 3] = [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AeadAes128Gcm,
        SrtpSuite::AesCm128HmacSha1_32,
    ];

    /// The crypto-suite name in an SDP `a=crypto` attribute (RFC 4568 §6.2, RFC 7714 §14.2).
    pub const fn sdp_name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }

    /// The suite an SDP crypto-suite name stands for; `None` for suites we do not speak.
    /// Names are case-sensitive (RFC 4568 §9.2 registers them in upper case).
    pub fn from_sdp_name(name: &str) -> Option<SrtpSuite> {
        SrtpSuite::ALL.into_iter().find(|s| s.sdp_name() == name)
    }

    /// Master key length in bytes.
    pub const fn key_len(self) -> usize {
        16
    }

    /// Master salt length in bytes: 112 bits for AES-CM (RFC 3711 §8.2), 96 for GCM
    /// (RFC 7714 §12).
    pub const fn salt_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => 14,
            SrtpSuite::AeadAes128Gcm => 12,
        }
    }

    /// Authentication tag appended to each SRTP packet, in bytes.
    pub const fn rtp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
            SrtpSuite::AeadAes128Gcm => 16,
        }
    }

    /// Authentication tag appended to each SRTCP packet, in bytes: SRTCP always keeps the
    /// 80-bit tag with the HMAC suites (RFC 4568 §6.2.2).
    pub const fn rtcp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => 10,
            SrtpSuite::AeadAes128Gcm => 16,
        }
    }

    /// Bytes protection adds to an RTP packet: the room a caller's buffer needs past the
    /// plain packet.
    pub const fn rtp_overhead(self) -> usize {
        self.rtp_tag_len()
    }

    /// Bytes protection adds to an RTCP packet: the tag and the 4-byte E flag and SRTCP
    /// index (RFC 3711 §3.4).
    pub const fn rtcp_overhead(self) -> usize {
        self.rtcp_tag_len() + 4
    }

    pub(crate) const fn profile(self) -> rtc_srtp::protection_profile::ProtectionProfile {
        use rtc_srtp::protection_profile::ProtectionProfile as P;
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => P::Aes128CmHmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32 => P::Aes128CmHmacSha1_32,
            SrtpSuite::AeadAes128Gcm => P::AeadAes128Gcm,
        }
    }
}

impl fmt::Display for SrtpSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sdp_name())
    }
}

/// Whether a leg encrypts its media: config `srtp_trunk` / `srtp_target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// Plain RTP only: an offer with only `RTP/SAVP` is refused.
    Off,
    /// SRTP when the peer offers or accepts it, plain RTP otherwise.
    Optional,
    /// SRTP or no call.
    Required,
}

impl SrtpPolicy {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            SrtpPolicy::Off => "off",
            SrtpPolicy::Optional => "optional",
            SrtpPolicy::Required => "required",
        }
    }
}

impl fmt::Display for SrtpPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suites_carry_their_rfc_names_and_sizes() {
        for s in SrtpSuite::ALL {
            assert_eq!(SrtpSuite::from_sdp_name(s.sdp_name()), Some(s));
            assert_eq!(s.to_string(), s.sdp_name());
            let p = s.profile();
            assert_eq!(p.key_len(), s.key_len());
            assert_eq!(p.salt_len(), s.salt_len());
            assert_eq!(
                p.rtp_auth_tag_len() + p.aead_auth_tag_len(),
                s.rtp_tag_len()
            );
            assert_eq!(
                p.rtcp_auth_tag_len() + p.aead_auth_tag_len(),
                s.rtcp_tag_len()
            );
        }
        assert_eq!(SrtpSuite::from_sdp_name("aes_cm_128_hmac_sha1_80"), None);
        assert_eq!(SrtpSuite::from_sdp_name("AES_256_CM_HMAC_SHA1_80"), None);
        assert_eq!(SrtpSuite::AeadAes128Gcm.salt_len(), 12);
        assert_eq!(SrtpSuite::AesCm128HmacSha1_32.rtp_tag_len(), 4);
        assert_eq!(SrtpSuite::AesCm128HmacSha1_32.rtcp_overhead(), 14);
    }

    #[test]
    fn policy_reads_the_config_spellings() {
        #[derive(Deserialize)]
        struct Leg {
            srtp: SrtpPolicy,
        }
        for (text, want) in [
            ("off", SrtpPolicy::Off),
            ("optional", SrtpPolicy::Optional),
            ("required", SrtpPolicy::Required),
        ] {
            let leg: Leg = toml::from_str(&format!("srtp = \"{text}\"")).unwrap();
            assert_eq!(leg.srtp, want);
            assert_eq!(want.to_string(), text);
        }
        assert!(toml::from_str::<Leg>("srtp = \"Required\"").is_err());
        assert!(toml::from_str::<Leg>("srtp = \"on\"").is_err());
    }
}
