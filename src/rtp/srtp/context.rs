//! The per-direction SRTP transforms: [`InboundSrtp`] checks and decrypts what a peer sent,
//! [`OutboundSrtp`] encrypts what we send. Both work in place on the relay's buffer.
//!
//! They must never panic on wire bytes, never log, and never put key material or packet
//! bytes into an error. A context is one direction of one leg: never share one between
//! directions (the rollover counter and replay window are per direction, RFC 3711 §3.3.1).
//!
//! Cost: `rtc-srtp` returns each packet in a new heap buffer, which these wrappers copy back
//! into the caller's buffer (and wipe, for plaintext) — one allocation and one ~170-byte copy
//! per packet on top of the cipher. `benches/srtp.rs` measures the whole call.
//!
//! Two things are guarded here rather than trusted to the crate: an SRTCP packet with the E
//! flag clear is refused before the crate sees it (rtc-srtp 0.21 returns such a packet
//! without checking its tag, and we never negotiate UNENCRYPTED_SRTCP), and the number of
//! SSRCs per context is capped (the crate creates state for every SSRC it is shown, before
//! authenticating, so a spoofed flood of SSRCs would otherwise grow it without bound).

use rtc_shared::error::Error as CrateError;
use rtc_srtp::context::Context;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use thiserror::Error;

use super::{Mki, SrtpMasterKey, SrtpSuite};

/// Replay window, in packets: libsrtp's default, twice RFC 3711 §3.3.2's minimum of 64, so
/// a trunk's reordering across a jitter burst is not mistaken for replay.
pub const REPLAY_WINDOW: usize = 128;

/// SSRCs one context keeps state for. A call has one stream per direction; a few more cover
/// SSRC changes on re-INVITE or transfer.
pub const MAX_SSRCS: usize = 8;

/// RFC 3711 §9.2: a master key protects at most 2^48 SRTP packets.
const MAX_LIFETIME: u64 = 1 << 48;

const RTP_HEADER_LEN: usize = 12;
/// RTCP header up to and including the sender's SSRC.
const RTCP_HEADER_LEN: usize = 8;
const SRTCP_INDEX_LEN: usize = 4;

/// Why a packet was not protected or unprotected. Each is a drop with its own counter; none
/// carries key or packet bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SrtpError {
    #[error("packet too short for SRTP")]
    TooShort,
    #[error("packet is not RTP/RTCP version 2")]
    Malformed,
    #[error("SRTP authentication failed")]
    AuthFailed,
    #[error("replayed or too old for the replay window")]
    Replayed,
    #[error("MKI does not match the negotiated key")]
    UnknownMki,
    #[error("SRTCP packet without encryption refused")]
    Unencrypted,
    #[error("the master key's lifetime is used up")]
    KeyExhausted,
    #[error("too many SSRCs on one SRTP context")]
    TooManyStreams,
    #[error("buffer too small for the protected packet")]
    BufferTooSmall,
    #[error("SRTP context could not be set up")]
    Setup,
}

impl SrtpError {
    fn from_crate(e: &CrateError) -> SrtpError {
        match e {
            CrateError::RtpFailedToVerifyAuthTag
            | CrateError::RtcpFailedToVerifyAuthTag
            | CrateError::ErrFailedToVerifyAuthTag
            | CrateError::RtcpInvalidLengthAuthTag(..) => SrtpError::AuthFailed,
            CrateError::SrtpSsrcDuplicated(..) | CrateError::SrtcpSsrcDuplicated(..) => {
                SrtpError::Replayed
            }
            CrateError::ErrTooShortRtp
            | CrateError::ErrTooShortRtcp
            | CrateError::SrtpTooSmall(..)
            | CrateError::SrtcpTooSmall(..)
            | CrateError::ErrHeaderSizeInsufficient
            | CrateError::ErrHeaderSizeInsufficientForExtension
            | CrateError::PacketTooShort
            | CrateError::BufferTooShort => SrtpError::TooShort,
            CrateError::ErrExceededMaxPackets => SrtpError::KeyExhausted,
            _ => SrtpError::Malformed,
        }
    }
}

/// The SSRCs a context has shown the crate, so it can refuse new ones past [`MAX_SSRCS`]
/// without a heap map.
#[derive(Default)]
struct SsrcCap {
    seen: [u32; MAX_SSRCS],
    len: usize,
}

impl SsrcCap {
    fn admit(&mut self, ssrc: u32) -> Result<(), SrtpError> {
        let seen = self.seen.get(..self.len).unwrap_or(&[]);
        if seen.contains(&ssrc) {
            return Ok(());
        }
        let slot = self.seen.get_mut(self.len).ok_or(SrtpError::TooManyStreams)?;
        *slot = ssrc;
        self.len += 1;
        Ok(())
    }
}

fn new_context(key: &SrtpMasterKey, replay: bool) -> Result<Context, SrtpError> {
    let provider = rtc_srtp::crypto::default_provider().map_err(|_| SrtpError::Setup)?;
    // Without options the crate turns replay protection off, so the inbound side asks.
    let (srtp_opt, srtcp_opt) = if replay {
        (
            Some(srtp_replay_protection(REPLAY_WINDOW)),
            Some(srtcp_replay_protection(REPLAY_WINDOW)),
        )
    } else {
        (None, None)
    };
    Context::new(
        key.key(),
        key.salt(),
        key.suite().profile(),
        srtp_opt,
        srtcp_opt,
        provider.crypto(),
    )
    .map_err(|_| SrtpError::Setup)
}

fn ssrc_at(pkt: &[u8], at: usize) -> Result<u32, SrtpError> {
    let b = pkt
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .ok_or(SrtpError::TooShort)?;
    Ok(u32::from_be_bytes(b))
}

fn check_version(pkt: &[u8]) -> Result<(), SrtpError> {
    match pkt.first() {
        Some(b) if b >> 6 == 2 => Ok(()),
        Some(_) => Err(SrtpError::Malformed),
        None => Err(SrtpError::TooShort),
    }
}

/// Copies the crate's output back over the caller's buffer.
fn copy_back(buf: &mut [u8], out: &[u8]) -> Result<usize, SrtpError> {
    buf.get_mut(..out.len())
        .ok_or(SrtpError::BufferTooSmall)?
        .copy_from_slice(out);
    Ok(out.len())
}

/// Checks and decrypts one peer's SRTP and SRTCP, with the key it sent us.
pub struct InboundSrtp {
    ctx: Context,
    suite: SrtpSuite,
    mki: Option<Mki>,
    rtp_ssrcs: SsrcCap,
    rtcp_ssrcs: SsrcCap,
    /// Packets this key may still authenticate (the `a=crypto` lifetime, RFC 4568 §6.1).
    lifetime_left: u64,
}

impl InboundSrtp {
    /// A context for packets protected with `key`, no MKI, the RFC 3711 lifetime.
    pub fn new(key: &SrtpMasterKey) -> Result<InboundSrtp, SrtpError> {
        InboundSrtp::with_params(key, None, None)
    }

    /// A context for the peer's key as its `a=crypto` attribute gave it: the MKI its packets
    /// carry (checked and removed here; the crate knows no MKI) and the key's lifetime.
    pub fn with_params(
        key: &SrtpMasterKey,
        mki: Option<Mki>,
        lifetime: Option<u64>,
    ) -> Result<InboundSrtp, SrtpError> {
        Ok(InboundSrtp {
            ctx: new_context(key, true)?,
            suite: key.suite(),
            mki,
            rtp_ssrcs: SsrcCap::default(),
            rtcp_ssrcs: SsrcCap::default(),
            lifetime_left: lifetime.unwrap_or(MAX_LIFETIME).min(MAX_LIFETIME),
        })
    }

    /// The suite this context decrypts.
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Authenticates, replay-checks and decrypts the SRTP packet in `buf[..len]`, leaving the
    /// RTP packet at the front of `buf`; returns its length. On error the packet is to be
    /// dropped and `buf`'s contents are unspecified.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let pkt = buf.get_mut(..len).ok_or(SrtpError::BufferTooSmall)?;
        if len < RTP_HEADER_LEN + self.suite.rtp_tag_len() {
            return Err(SrtpError::TooShort);
        }
        check_version(pkt)?;
        // RFC 3711 §3.1: the MKI sits before the HMAC tag; RFC 7714 §9.1: after the AEAD
        // ciphertext, which ends with its tag.
        let trailer = match self.suite {
            SrtpSuite::AeadAes128Gcm => 0,
            _ => self.suite.rtp_tag_len(),
        };
        let len = strip_mki(pkt, self.mki, trailer, RTP_HEADER_LEN)?;
        self.rtp_ssrcs.admit(ssrc_at(pkt, 8)?)?;
        if self.lifetime_left == 0 {
            return Err(SrtpError::KeyExhausted);
        }
        let src = pkt.get(..len).ok_or(SrtpError::TooShort)?;
        let mut out = self
            .ctx
            .decrypt_rtp(src)
            .map_err(|e| SrtpError::from_crate(&e))?;
        let n = copy_back(buf, &out);
        // The crate's buffer held the caller's audio (keys pressed included): wipe it before
        // it goes back to the allocator.
        out.fill(0);
        self.lifetime_left -= 1;
        n
    }

    /// Authenticates, replay-checks and decrypts the SRTCP packet in `buf[..len]`, leaving the
    /// RTCP compound packet at the front of `buf`; returns its length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let pkt = buf.get_mut(..len).ok_or(SrtpError::BufferTooSmall)?;
        if len < RTCP_HEADER_LEN + self.suite.rtcp_overhead() {
            return Err(SrtpError::TooShort);
        }
        check_version(pkt)?;
        // RFC 3711 §3.4: E||index, then MKI, then the HMAC tag; RFC 7714 §9.2: the AEAD tag
        // comes before E||index and the MKI ends the packet.
        let trailer = match self.suite {
            SrtpSuite::AeadAes128Gcm => 0,
            _ => self.suite.rtcp_tag_len(),
        };
        let len = strip_mki(pkt, self.mki, trailer, RTCP_HEADER_LEN)?;
        let e_at = len
            .checked_sub(trailer + SRTCP_INDEX_LEN)
            .ok_or(SrtpError::TooShort)?;
        match pkt.get(e_at) {
            Some(b) if b & 0x80 != 0 => {}
            Some(_) => return Err(SrtpError::Unencrypted),
            None => return Err(SrtpError::TooShort),
        }
        self.rtcp_ssrcs.admit(ssrc_at(pkt, 4)?)?;
        if self.lifetime_left == 0 {
            return Err(SrtpError::KeyExhausted);
        }
        let src = pkt.get(..len).ok_or(SrtpError::TooShort)?;
        let mut out = self
            .ctx
            .decrypt_rtcp(src)
            .map_err(|e| SrtpError::from_crate(&e))?;
        let n = copy_back(buf, &out);
        out.fill(0);
        self.lifetime_left -= 1;
        n
    }
}

/// Checks and removes the MKI that sits `trailer` bytes before the end of `pkt`, moving the
/// trailer down over it; returns the new length. The MKI is not authenticated (RFC 3711
/// §3.1), so removing it leaves a packet the crate can check.
fn strip_mki(
    pkt: &mut [u8],
    mki: Option<Mki>,
    trailer: usize,
    header: usize,
) -> Result<usize, SrtpError> {
    let len = pkt.len();
    let Some(mki) = mki else {
        return Ok(len);
    };
    let mki_len = usize::from(mki.len());
    let start = len
        .checked_sub(trailer + mki_len)
        .filter(|&s| s >= header)
        .ok_or(SrtpError::TooShort)?;
    let field = pkt.get(start..start + mki_len).ok_or(SrtpError::TooShort)?;
    if !mki.matches(field) {
        return Err(SrtpError::UnknownMki);
    }
    pkt.copy_within(start + mki_len..len, start);
    Ok(len - mki_len)
}

/// Encrypts and authenticates what we send on one leg, with the key we sent the peer.
pub struct OutboundSrtp {
    ctx: Context,
    suite: SrtpSuite,
    rtp_ssrcs: SsrcCap,
    rtcp_ssrcs: SsrcCap,
}

impl OutboundSrtp {
    /// A context protecting with `key` (ours: no MKI, the RFC 3711 lifetime).
    pub fn new(key: &SrtpMasterKey) -> Result<OutboundSrtp, SrtpError> {
        Ok(OutboundSrtp {
            ctx: new_context(key, false)?,
            suite: key.suite(),
            rtp_ssrcs: SsrcCap::default(),
            rtcp_ssrcs: SsrcCap::default(),
        })
    }

    /// The suite this context encrypts with.
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Protects the RTP packet in `buf[..len]` in place; `buf` needs
    /// [`SrtpSuite::rtp_overhead`] bytes of room past `len`. Returns the SRTP length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if buf.len() < len + self.suite.rtp_overhead() {
            return Err(SrtpError::BufferTooSmall);
        }
        let pkt = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        if len < RTP_HEADER_LEN {
            return Err(SrtpError::TooShort);
        }
        check_version(pkt)?;
        self.rtp_ssrcs.admit(ssrc_at(pkt, 8)?)?;
        let out = self
            .ctx
            .encrypt_rtp(pkt)
            .map_err(|e| SrtpError::from_crate(&e))?;
        copy_back(buf, &out)
    }

    /// Protects the RTCP compound packet in `buf[..len]` in place; `buf` needs
    /// [`SrtpSuite::rtcp_overhead`] bytes of room past `len`. Returns the SRTCP length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        if buf.len() < len + self.suite.rtcp_overhead() {
            return Err(SrtpError::BufferTooSmall);
        }
        let pkt = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
        if len < RTCP_HEADER_LEN {
            return Err(SrtpError::TooShort);
        }
        check_version(pkt)?;
        self.rtcp_ssrcs.admit(ssrc_at(pkt, 4)?)?;
        let out = self
            .ctx
            .encrypt_rtcp(pkt)
            .map_err(|e| SrtpError::from_crate(&e))?;
        copy_back(buf, &out)
    }
}
