//! SRTP per leg (RFC 4568 SDES over RFC 3264 offer/answer): what each leg's policy makes of the
//! SDP it sends us, the `a=crypto` lines we write toward it, and the keys the relay needs.
//!
//! Each leg is keyed on its own: the trunk's key is never the contact centre's (we answer each
//! with a key of our own and offer each a fresh one), so the relay decrypts what one leg sends,
//! scrubs it in the clear and encrypts it for the other.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use super::types::Leg;
use crate::rtp::srtp::{
    CryptoAttribute, InboundSrtp, NegotiatedSrtp, SdesOffer, SrtpError, SrtpPolicy, SrtpSuite,
};
use crate::sip::sdp::{CryptoLine, SdpError, SecureAudio};

/// Where one leg's keying stands.
#[derive(Debug, Default)]
enum Keying {
    /// Plain RTP (nothing offered or agreed).
    #[default]
    Plain,
    /// We offered these keys to the leg; its answer picks one.
    Offered { offer: SdesOffer, savp: bool },
    /// Keys agreed: from the leg's offer and our answer (`offer` None), or from our offer and
    /// its answer (`offer` kept, so a repeated answer, in a 183 then the 200, reads alike).
    Agreed {
        neg: NegotiatedSrtp,
        savp: bool,
        offer: Option<SdesOffer>,
    },
}

/// One leg: its route's policy and its keying.
#[derive(Debug)]
struct LegSrtp {
    policy: SrtpPolicy,
    keying: Keying,
}

/// What the SDP from a leg says about SRTP.
pub(super) struct Offered<'a> {
    /// `RTP/SAVP(F)` (rather than best-effort `RTP/AVP` with `a=crypto`).
    pub savp: bool,
    /// The `a=crypto` values of the anchored audio section.
    pub crypto: Vec<&'a [u8]>,
}

/// A call's SRTP: both legs, and a count that steps whenever a leg's keys change, so the
/// relay is handed new contexts exactly then.
#[derive(Debug)]
pub(super) struct CallSrtp {
    a: LegSrtp,
    b: LegSrtp,
    pub epoch: u32,
    /// The leg our last offer went to: SDP in its responses is the answer (once or more:
    /// a 183 and then the 200 may both carry it).
    offer_to: Option<Leg>,
}

/// A leg's two transforms for the relay: what the peer sends us, what we send it.
pub struct LegCrypto {
    pub inbound: InboundSrtp,
    pub outbound: crate::rtp::srtp::OutboundSrtp,
}

impl std::fmt::Debug for LegCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LegCrypto({})", self.inbound.suite())
    }
}

/// The contexts of both legs for the relay (`None`: plain RTP on that leg), numbered by the
/// call's keying epoch.
#[derive(Debug)]
pub struct RelaySrtp {
    pub epoch: u32,
    pub a: Option<LegCrypto>,
    pub b: Option<LegCrypto>,
}

impl PartialEq for RelaySrtp {
    /// Contexts carry no comparable state of their own; one epoch is one set of keys.
    fn eq(&self, other: &RelaySrtp) -> bool {
        self.epoch == other.epoch
    }
}
impl Eq for RelaySrtp {}

fn srtp_refused() -> SdpError {
    SdpError::Srtp { index: 0 }
}

impl CallSrtp {
    pub(super) fn new(trunk: SrtpPolicy, target: SrtpPolicy) -> CallSrtp {
        CallSrtp {
            a: LegSrtp {
                policy: trunk,
                keying: Keying::Plain,
            },
            b: LegSrtp {
                policy: target,
                keying: Keying::Plain,
            },
            epoch: 0,
            offer_to: None,
        }
    }

    fn leg(&mut self, leg: Leg) -> &mut LegSrtp {
        match leg {
            Leg::A => &mut self.a,
            Leg::B => &mut self.b,
        }
    }

    /// Whether SDP in a response from `from` answers an offer of ours (else it is an offer:
    /// the 2xx to an INVITE that carried none, RFC 3261 §13.2.1).
    pub(super) fn awaits_answer(&self, from: Leg) -> bool {
        self.offer_to == Some(from)
    }

    /// An offer from `from`: its keying is settled by its policy, and what we offer the other
    /// leg is prepared. Returns the SRTP of the rewritten offer toward the other leg. An offer
    /// the policy refuses (SRTP to a leg that is off, plain RTP or no usable key to one that
    /// requires it) gives `SdpError::Srtp`, answered 488.
    pub(super) fn on_offer(
        &mut self,
        from: Leg,
        offered: &Offered<'_>,
    ) -> Result<Option<SecureAudio>, SdpError> {
        let l = self.leg(from);
        let attrs = parse(&offered.crypto);
        let keying = match l.policy {
            SrtpPolicy::Off if offered.savp => return Err(srtp_refused()),
            SrtpPolicy::Off => Keying::Plain,
            policy => match attrs.as_deref().map(NegotiatedSrtp::answer) {
                Some(Ok(neg)) => Keying::Agreed {
                    neg,
                    savp: offered.savp,
                    offer: None,
                },
                // A best-effort offer we cannot key stays plain, unless the leg requires SRTP.
                _ if offered.savp || policy == SrtpPolicy::Required => {
                    return Err(srtp_refused());
                }
                _ => Keying::Plain,
            },
        };
        l.keying = keying;
        let other = self.leg(from.other());
        let secure = match other.policy {
            SrtpPolicy::Off => {
                other.keying = Keying::Plain;
                None
            }
            policy => {
                let offer = SdesOffer::new(&SrtpSuite::ALL).map_err(|_| srtp_refused())?;
                let savp = policy == SrtpPolicy::Required;
                let crypto = offer.lines().iter().map(to_sdp).collect();
                other.keying = Keying::Offered { offer, savp };
                Some(SecureAudio { savp, crypto })
            }
        };
        self.offer_to = Some(from.other());
        self.epoch = self.epoch.wrapping_add(1);
        Ok(secure)
    }

    /// The answer from `from` to our offer: its keys are agreed (or it stays plain where its
    /// policy allows), and the answer toward the other leg carries our key for it. An answer
    /// that drops SRTP a leg requires, or picks a key we did not offer, gives `SdpError::Srtp`.
    pub(super) fn on_answer(
        &mut self,
        from: Leg,
        answered: &Offered<'_>,
    ) -> Result<Option<SecureAudio>, SdpError> {
        let l = self.leg(from);
        let policy = l.policy;
        let (offer, savp) = match std::mem::take(&mut l.keying) {
            Keying::Offered { offer, savp } => (offer, savp),
            Keying::Agreed {
                offer: Some(offer),
                savp,
                ..
            } => (offer, savp),
            Keying::Plain => {
                // We offered this leg plain RTP: an answer may not turn it into SRTP.
                if answered.savp {
                    return Err(srtp_refused());
                }
                return Ok(self.toward(from.other()));
            }
            agreed => {
                // The leg offered and we answered: it has nothing to answer.
                l.keying = agreed;
                return Err(srtp_refused());
            }
        };
        let attrs = parse(&answered.crypto).unwrap_or_default();
        l.keying = match attrs.first().map(|a| offer.accept(a)) {
            Some(Ok(neg)) => Keying::Agreed {
                neg,
                savp,
                offer: Some(offer),
            },
            Some(Err(_)) => return Err(srtp_refused()),
            None if savp || policy == SrtpPolicy::Required || answered.savp => {
                return Err(srtp_refused());
            }
            None => Keying::Plain,
        };
        self.epoch = self.epoch.wrapping_add(1);
        Ok(self.toward(from.other()))
    }

    /// The SRTP of the SDP we send `leg` when answering its offer: our key under the tag it
    /// chose, in the profile it offered.
    fn toward(&self, leg: Leg) -> Option<SecureAudio> {
        let l = match leg {
            Leg::A => &self.a,
            Leg::B => &self.b,
        };
        match &l.keying {
            Keying::Agreed { neg, savp, .. } => Some(SecureAudio {
                savp: *savp,
                crypto: vec![to_sdp(&neg.local_line())],
            }),
            _ => None,
        }
    }

    /// Transforms for the relay, for each leg whose keys are agreed.
    pub(super) fn relay(&self) -> Result<RelaySrtp, SrtpError> {
        let crypto = |l: &LegSrtp| -> Result<Option<LegCrypto>, SrtpError> {
            match &l.keying {
                Keying::Agreed { neg, .. } => Ok(Some(LegCrypto {
                    inbound: neg.inbound()?,
                    outbound: neg.outbound()?,
                })),
                _ => Ok(None),
            }
        };
        Ok(RelaySrtp {
            epoch: self.epoch,
            a: crypto(&self.a)?,
            b: crypto(&self.b)?,
        })
    }

    /// Whether either leg is keyed.
    pub(super) fn any(&self) -> bool {
        matches!(self.a.keying, Keying::Agreed { .. })
            || matches!(self.b.keying, Keying::Agreed { .. })
    }
}

/// The peer's attributes we can read; `None` when there are none or one is malformed.
fn parse(values: &[&[u8]]) -> Option<Vec<CryptoAttribute>> {
    // The copies hold the peer's keys: wiped when they go.
    let lines: zeroize::Zeroizing<Vec<String>> = zeroize::Zeroizing::new(
        values
            .iter()
            .map(|v| format!("crypto:{}", String::from_utf8_lossy(v)))
            .collect(),
    );
    let attrs = CryptoAttribute::parse_all(lines.iter().map(String::as_str)).ok()?;
    (!attrs.is_empty()).then_some(attrs)
}

fn to_sdp(line: &crate::rtp::srtp::CryptoLine) -> CryptoLine {
    let text = line.expose_line();
    CryptoLine::new(text.strip_prefix("a=crypto:").unwrap_or(text).to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::rtp::srtp::{CryptoLine as OurLine, SrtpMasterKey};

    fn peer_line(tag: u32, suite: SrtpSuite) -> (String, SrtpMasterKey) {
        let key = SrtpMasterKey::generate(suite).unwrap();
        let line = OurLine::new(tag, &key).expose_line().to_owned();
        (line.strip_prefix("a=crypto:").unwrap().to_owned(), key)
    }

    fn offered(savp: bool, lines: &[String]) -> Offered<'_> {
        Offered {
            savp,
            crypto: lines.iter().map(|l| l.as_bytes()).collect(),
        }
    }

    /// Protects a packet with `key` as the peer would, and checks `inbound` takes it.
    fn decrypts(inbound: &mut InboundSrtp, key: &SrtpMasterKey) -> bool {
        let mut out = crate::rtp::srtp::OutboundSrtp::new(key).unwrap();
        let mut pkt = [0u8; 256];
        pkt[..12].copy_from_slice(&[0x80, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4]);
        pkt[12..172].fill(0xd5);
        let n = out.protect_rtp(&mut pkt, 172).unwrap();
        inbound.unprotect_rtp(&mut pkt, n) == Ok(172)
    }

    #[test]
    fn srtp_trunk_to_plain_contact_centre() {
        let mut s = CallSrtp::new(SrtpPolicy::Optional, SrtpPolicy::Off);
        let (l1, trunk_key) = peer_line(1, SrtpSuite::AesCm128HmacSha1_80);
        let toward_b = s
            .on_offer(Leg::A, &offered(true, std::slice::from_ref(&l1)))
            .unwrap();
        assert!(toward_b.is_none(), "plain toward the contact centre");
        assert!(s.awaits_answer(Leg::B) && !s.awaits_answer(Leg::A));
        // An answer with SRTP to our plain offer is refused; a plain one is taken.
        assert!(s.on_answer(Leg::B, &offered(true, &[])).is_err());
        let back = s.on_answer(Leg::B, &offered(false, &[])).unwrap().unwrap();
        assert!(back.savp, "the trunk offered RTP/SAVP");
        assert_eq!(back.crypto.len(), 1);
        let ours = back.crypto[0].as_str();
        assert!(
            ours.starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{ours:?}"
        );
        // Our key is our own, never the trunk's echoed back.
        assert!(!ours.contains(l1.split("inline:").nth(1).unwrap()));
        let relay = s.relay().unwrap();
        let mut a = relay.a.unwrap();
        assert!(relay.b.is_none());
        assert!(decrypts(&mut a.inbound, &trunk_key));
    }

    #[test]
    fn plain_trunk_to_srtp_contact_centre_and_the_answer_keys_it() {
        let mut s = CallSrtp::new(SrtpPolicy::Optional, SrtpPolicy::Required);
        let toward_b = s.on_offer(Leg::A, &offered(false, &[])).unwrap().unwrap();
        assert!(toward_b.savp);
        assert_eq!(toward_b.crypto.len(), SrtpSuite::ALL.len());
        assert!(s.awaits_answer(Leg::B));
        // The contact centre answers with the GCM line's tag and its own key.
        let gcm_tag = toward_b
            .crypto
            .iter()
            .position(|c| c.as_str().contains("AEAD_AES_128_GCM"))
            .unwrap() as u32
            + 1;
        let (answer, cc_key) = peer_line(gcm_tag, SrtpSuite::AeadAes128Gcm);
        let toward_a = s.on_answer(Leg::B, &offered(true, &[answer])).unwrap();
        assert!(toward_a.is_none(), "the trunk stays plain");
        let relay = s.relay().unwrap();
        assert!(relay.a.is_none());
        assert!(decrypts(&mut relay.b.unwrap().inbound, &cc_key));
        // A repeated answer (183, then 200) is still an answer.
        assert!(s.awaits_answer(Leg::B));
    }

    #[test]
    fn policies_refuse_what_they_must() {
        let (l, _) = peer_line(1, SrtpSuite::AesCm128HmacSha1_32);
        // SRTP offered to a trunk leg that is off.
        let mut s = CallSrtp::new(SrtpPolicy::Off, SrtpPolicy::Off);
        assert!(
            s.on_offer(Leg::A, &offered(true, std::slice::from_ref(&l)))
                .is_err()
        );
        // Best-effort crypto to an off leg: plain, accepted.
        assert!(
            s.on_offer(Leg::A, &offered(false, std::slice::from_ref(&l)))
                .unwrap()
                .is_none()
        );
        assert!(s.relay().unwrap().a.is_none());
        // Plain offered to a leg that requires SRTP.
        let mut s = CallSrtp::new(SrtpPolicy::Required, SrtpPolicy::Off);
        assert!(s.on_offer(Leg::A, &offered(false, &[])).is_err());
        // RTP/SAVP with nothing we can use.
        let junk =
            "1 F8_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw".to_owned();
        let mut s = CallSrtp::new(SrtpPolicy::Optional, SrtpPolicy::Off);
        assert!(s.on_offer(Leg::A, &offered(true, &[junk])).is_err());
        // A required contact-centre leg that answers plain.
        let mut s = CallSrtp::new(SrtpPolicy::Optional, SrtpPolicy::Required);
        s.on_offer(Leg::A, &offered(false, &[])).unwrap();
        assert!(s.on_answer(Leg::B, &offered(false, &[])).is_err());
        // An optional one that answers plain: plain.
        let mut s = CallSrtp::new(SrtpPolicy::Optional, SrtpPolicy::Optional);
        let offer = s.on_offer(Leg::A, &offered(false, &[])).unwrap().unwrap();
        assert!(!offer.savp, "optional offers best effort, on RTP/AVP");
        assert!(s.on_answer(Leg::B, &offered(false, &[])).unwrap().is_none());
        assert!(!s.any());
        // An answer under a tag we never offered.
        let mut s = CallSrtp::new(SrtpPolicy::Optional, SrtpPolicy::Required);
        s.on_offer(Leg::A, &offered(false, &[])).unwrap();
        let (bad, _) = peer_line(9, SrtpSuite::AesCm128HmacSha1_80);
        assert!(s.on_answer(Leg::B, &offered(true, &[bad])).is_err());
    }

    #[test]
    fn every_exchange_steps_the_epoch_and_debug_shows_no_key() {
        let mut s = CallSrtp::new(SrtpPolicy::Optional, SrtpPolicy::Optional);
        let (l, key) = peer_line(3, SrtpSuite::AesCm128HmacSha1_80);
        let e0 = s.epoch;
        let offer = s
            .on_offer(Leg::A, &offered(true, std::slice::from_ref(&l)))
            .unwrap()
            .unwrap();
        assert_ne!(s.epoch, e0);
        let shown = format!("{s:?} {offer:?} {:?}", s.relay().unwrap());
        let inline = l.split("inline:").nth(1).unwrap();
        assert!(!shown.contains(inline), "{shown}");
        for c in &offer.crypto {
            let ours = c.as_str().split("inline:").nth(1).unwrap();
            assert!(!shown.contains(ours), "{shown}");
        }
        let _ = key;
    }
}
