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
//! Three things are done here rather than trusted to the crate (rtc-srtp 0.21):
//! - **Replay protection** is ours (RFC 3711 §3.3.2, on the 48-bit packet index and the
//!   31-bit SRTCP index). The crate's window is seeded by the first packet it *checks*, before
//!   authentication, so one forged packet ahead of the first genuine one made the genuine
//!   stream look "too old" for up to 32 767 packets.
//! - An SRTCP packet with the E flag clear is refused before the crate sees it: the crate
//!   returns such a packet without checking its tag, and we never negotiate
//!   UNENCRYPTED_SRTCP.
//! - SSRCs per context are capped: the crate makes state for every SSRC it is shown, before
//!   authenticating, so a spoofed flood of SSRCs would otherwise grow it without bound.

use rtc_shared::error::Error as CrateError;
use rtc_srtp::context::Context;
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
    #[error("not an RTP or RTCP packet (version bits)")]
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

/// RFC 3711 §3.3.2 replay window over one stream's packet indexes, committed only once a
/// packet has authenticated.
#[derive(Clone, Copy, Default)]
struct ReplayWindow {
    /// Highest index accepted, when any was.
    highest: Option<u64>,
    /// Bit `n` set: index `highest - n` was accepted.
    seen: u128,
}

const _: () = assert!(REPLAY_WINDOW == u128::BITS as usize);

impl ReplayWindow {
    fn check(&self, index: u64) -> Result<(), SrtpError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if index > highest {
            return Ok(());
        }
        let behind = highest - index;
        if behind >= REPLAY_WINDOW as u64 || self.seen >> behind & 1 == 1 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        match self.highest {
            Some(highest) if index <= highest => {
                let behind = highest - index;
                if behind < REPLAY_WINDOW as u64 {
                    self.seen |= 1 << behind;
                }
            }
            Some(highest) => {
                let ahead = index - highest;
                let shifted = u32::try_from(ahead)
                    .ok()
                    .and_then(|a| self.seen.checked_shl(a));
                self.seen = shifted.unwrap_or(0) | 1;
                self.highest = Some(index);
            }
            None => {
                self.seen = 1;
                self.highest = Some(index);
            }
        }
    }

    /// RFC 3711 §3.3.1 / Appendix A: the packet index a sequence number most likely
    /// stands for, from the highest one accepted. Before the first, the ROC is 0 (SDES
    /// signals none).
    fn estimate_rtp_index(&self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            return u64::from(seq);
        };
        let roc = highest >> 16;
        let s_l = highest & 0xffff;
        let seq64 = u64::from(seq);
        let v = if s_l < 0x8000 {
            if seq64 > s_l + 0x8000 {
                roc.saturating_sub(1)
            } else {
                roc
            }
        } else if s_l - 0x8000 > seq64 {
            roc + 1
        } else {
            roc
        };
        v << 16 | seq64
    }
}

/// The streams (SSRCs) a context has shown the crate, with their replay windows, in fixed
/// storage: new SSRCs past [`MAX_SSRCS`] are refused without a heap map.
#[derive(Default)]
struct Streams {
    ssrcs: [u32; MAX_SSRCS],
    windows: [ReplayWindow; MAX_SSRCS],
    len: usize,
}

impl Streams {
    /// The slot for `ssrc`, taking a new one if it is new and one is free.
    fn admit(&mut self, ssrc: u32) -> Result<usize, SrtpError> {
        let known = self.ssrcs.get(..self.len).unwrap_or(&[]);
        if let Some(at) = known.iter().position(|&s| s == ssrc) {
            return Ok(at);
        }
        let slot = self
            .ssrcs
            .get_mut(self.len)
            .ok_or(SrtpError::TooManyStreams)?;
        *slot = ssrc;
        self.len += 1;
        Ok(self.len - 1)
    }

    fn window(&mut self, at: usize) -> Result<&mut ReplayWindow, SrtpError> {
        self.windows.get_mut(at).ok_or(SrtpError::TooManyStreams)
    }
}

fn new_context(key: &SrtpMasterKey) -> Result<Context, SrtpError> {
    let provider = rtc_srtp::crypto::default_provider().map_err(|_| SrtpError::Setup)?;
    // No crate replay options: without them the crate keeps no window, and ours decides.
    Context::new(
        key.key(),
        key.salt(),
        key.suite().profile(),
        None,
        None,
        provider.crypto(),
    )
    .map_err(|_| SrtpError::Setup)
}

/// The big-endian 32-bit word at `at`.
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

/// The packet in `buf[..len]` to protect, once `buf` has `overhead` bytes of room past it and
/// the packet is at least a header of `header` bytes with RTP's version.
fn outgoing(buf: &[u8], len: usize, overhead: usize, header: usize) -> Result<&[u8], SrtpError> {
    if buf.len() < len + overhead {
        return Err(SrtpError::BufferTooSmall);
    }
    let pkt = buf.get(..len).ok_or(SrtpError::BufferTooSmall)?;
    if len < header {
        return Err(SrtpError::TooShort);
    }
    check_version(pkt)?;
    Ok(pkt)
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
    rtp_streams: Streams,
    rtcp_streams: Streams,
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
            ctx: new_context(key)?,
            suite: key.suite(),
            mki,
            rtp_streams: Streams::default(),
            rtcp_streams: Streams::default(),
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
        let stream = self.rtp_streams.admit(ssrc_at(pkt, 8)?)?;
        if self.lifetime_left == 0 {
            return Err(SrtpError::KeyExhausted);
        }
        let seq = pkt
            .get(2..4)
            .and_then(|b| <[u8; 2]>::try_from(b).ok())
            .map(u16::from_be_bytes)
            .ok_or(SrtpError::TooShort)?;
        let window = self.rtp_streams.window(stream)?;
        let index = window.estimate_rtp_index(seq);
        window.check(index)?;
        let src = pkt.get(..len).ok_or(SrtpError::TooShort)?;
        let mut out = self
            .ctx
            .decrypt_rtp(src)
            .map_err(|e| SrtpError::from_crate(&e))?;
        self.rtp_streams.window(stream)?.accept(index);
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
        let e_index = ssrc_at(pkt, e_at)?;
        if e_index & 0x8000_0000 == 0 {
            return Err(SrtpError::Unencrypted);
        }
        let index = u64::from(e_index & 0x7fff_ffff);
        let stream = self.rtcp_streams.admit(ssrc_at(pkt, 4)?)?;
        if self.lifetime_left == 0 {
            return Err(SrtpError::KeyExhausted);
        }
        self.rtcp_streams.window(stream)?.check(index)?;
        let src = pkt.get(..len).ok_or(SrtpError::TooShort)?;
        let mut out = self
            .ctx
            .decrypt_rtcp(src)
            .map_err(|e| SrtpError::from_crate(&e))?;
        self.rtcp_streams.window(stream)?.accept(index);
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
    let mki_len = usize::from(mki.wire_len());
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
    rtp_streams: Streams,
    rtcp_streams: Streams,
}

impl OutboundSrtp {
    /// A context protecting with `key` (ours: no MKI, the RFC 3711 lifetime).
    pub fn new(key: &SrtpMasterKey) -> Result<OutboundSrtp, SrtpError> {
        Ok(OutboundSrtp {
            ctx: new_context(key)?,
            suite: key.suite(),
            rtp_streams: Streams::default(),
            rtcp_streams: Streams::default(),
        })
    }

    /// The suite this context encrypts with.
    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Protects the RTP packet in `buf[..len]` in place; `buf` needs
    /// [`SrtpSuite::rtp_overhead`] bytes of room past `len`. Returns the SRTP length.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let pkt = outgoing(buf, len, self.suite.rtp_overhead(), RTP_HEADER_LEN)?;
        self.rtp_streams.admit(ssrc_at(pkt, 8)?)?;
        let out = self
            .ctx
            .encrypt_rtp(pkt)
            .map_err(|e| SrtpError::from_crate(&e))?;
        copy_back(buf, &out)
    }

    /// Protects the RTCP compound packet in `buf[..len]` in place; `buf` needs
    /// [`SrtpSuite::rtcp_overhead`] bytes of room past `len`. Returns the SRTCP length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let pkt = outgoing(buf, len, self.suite.rtcp_overhead(), RTCP_HEADER_LEN)?;
        self.rtcp_streams.admit(ssrc_at(pkt, 4)?)?;
        let out = self
            .ctx
            .encrypt_rtcp(pkt)
            .map_err(|e| SrtpError::from_crate(&e))?;
        copy_back(buf, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SSRC: u32 = 0xcafe_babe;

    /// key||salt 0x10, 0x11, …: the key the libsrtp vectors below were made with.
    fn kat_key(suite: SrtpSuite) -> SrtpMasterKey {
        let bytes: Vec<u8> = (0x10..0x10 + 30).collect();
        SrtpMasterKey::from_key_salt(suite, &bytes[..suite.key_len() + suite.salt_len()]).unwrap()
    }

    /// A 172-byte G.711 packet: 12-byte header, 160 bytes of payload.
    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&123_456u32.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend((12..172).map(|i| 0xd5 ^ i as u8));
        p
    }

    /// A 28-byte RTCP sender report.
    fn rtcp(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 200, 0, 6];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend(8..28u8);
        p
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Protects `plain` into a buffer with room, returns exactly the protected bytes.
    fn protect(out: &mut OutboundSrtp, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + 32, 0);
        let n = out.protect_rtp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn protect_rtcp(out: &mut OutboundSrtp, plain: &[u8]) -> Vec<u8> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + 32, 0);
        let n = out.protect_rtcp(&mut buf, plain.len()).unwrap();
        buf.truncate(n);
        buf
    }

    fn unprotect(inb: &mut InboundSrtp, wire: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = wire.to_vec();
        let n = inb.unprotect_rtp(&mut buf, wire.len())?;
        buf.truncate(n);
        Ok(buf)
    }

    fn unprotect_rtcp(inb: &mut InboundSrtp, wire: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = wire.to_vec();
        let n = inb.unprotect_rtcp(&mut buf, wire.len())?;
        buf.truncate(n);
        Ok(buf)
    }

    fn pair(suite: SrtpSuite) -> (OutboundSrtp, InboundSrtp) {
        let key = SrtpMasterKey::generate(suite).unwrap();
        (
            OutboundSrtp::new(&key).unwrap(),
            InboundSrtp::new(&key).unwrap(),
        )
    }

    /// Made with libsrtp2 2.5.0 (Debian's libsrtp2-1), `srtp_protect` and
    /// `srtp_protect_rtcp` on a fresh session with [`kat_key`], on `rtp(0x1234, SSRC)` and
    /// `rtcp(SSRC)` (its first SRTCP index is 1, as ours is). An independent implementation,
    /// so this checks key derivation, the keystream, the tag and the packet layout at once.
    const LIBSRTP: [(SrtpSuite, &str, &str); 3] = [
        (
            SrtpSuite::AesCm128HmacSha1_80,
            "800012340001e240cafebabe0312fc25b2df98e215905a38f10a161a1be449a7675f41682498be12116827eb052a56c35833caf1143aaad5022045e6e8714bfabf3430a7f98aab8c06c6ed99ff84991901c2d0db6df92f2baaf2b0d55c55281471e1eb8de25c986768eba432bc3cf8e98f142d05fa92f742e76c130cc289ed9306cca7e785ca85465925b03c046d7d87fa7d5c3ddd3e32cdc2c62fd0cde414a6cfe7fbe43332b025e2372d97ca6be09eb09291d99717",
            "80c80006cafebabe63e0ffff6b7f86c0cce4f52d0ef2987bb14103688000000145733e69447d10c8c73c",
        ),
        (
            SrtpSuite::AesCm128HmacSha1_32,
            "800012340001e240cafebabe0312fc25b2df98e215905a38f10a161a1be449a7675f41682498be12116827eb052a56c35833caf1143aaad5022045e6e8714bfabf3430a7f98aab8c06c6ed99ff84991901c2d0db6df92f2baaf2b0d55c55281471e1eb8de25c986768eba432bc3cf8e98f142d05fa92f742e76c130cc289ed9306cca7e785ca85465925b03c046d7d87fa7d5c3ddd3e32cdc2c62fd0cde414a6cfe7fbe43332b025e2372d97ca6be09e",
            "80c80006cafebabe63e0ffff6b7f86c0cce4f52d0ef2987bb14103688000000145733e69447d10c8c73c",
        ),
        (
            SrtpSuite::AeadAes128Gcm,
            "800012340001e240cafebabe00688a0f15c7e1b04ed2b895da9a74c1685d5d99aeaf7e9beacf06998b11d1ca01d3c858f7dd4ee658066eac94179c1809debaac621fa7249a29a4c03abd40a2bfc7d3fe9bf22899b53d8290f8b7632e1f8ee33fa30ad78c029a29be51b5f1b75d060cdd31c7bb60c1ed7a12b4cd094c46dae912e1563e41a98054b88b98a58a250a6bf7390b958193fbab0d392312befbb4d5c21c1c878a26c0be0b7716e117f545803803c6628952e94d4de992e128",
            "80c80006cafebabea69696b271c5f76103f5b00d0ceaf8a8c49ce98bee9aabf8943799c67bb982f720dd161780000001",
        ),
    ];

    #[test]
    fn matches_libsrtp_byte_for_byte() {
        for (suite, srtp, srtcp) in LIBSRTP {
            let (srtp, srtcp) = (hex(srtp), hex(srtcp));
            let mut out = OutboundSrtp::new(&kat_key(suite)).unwrap();
            assert_eq!(protect(&mut out, &rtp(0x1234, SSRC)), srtp, "{suite} SRTP");
            assert_eq!(protect_rtcp(&mut out, &rtcp(SSRC)), srtcp, "{suite} SRTCP");

            let mut inb = InboundSrtp::new(&kat_key(suite)).unwrap();
            assert_eq!(unprotect(&mut inb, &srtp).unwrap(), rtp(0x1234, SSRC));
            assert_eq!(unprotect_rtcp(&mut inb, &srtcp).unwrap(), rtcp(SSRC));
        }
    }

    #[test]
    fn every_suite_round_trips_rtp_and_rtcp_in_place() {
        for suite in SrtpSuite::ALL {
            let (mut out, mut inb) = pair(suite);
            for seq in 1000..1010u16 {
                let plain = rtp(seq, SSRC);
                let wire = protect(&mut out, &plain);
                assert_eq!(wire.len(), plain.len() + suite.rtp_overhead());
                assert_eq!(wire[..12], plain[..12], "header stays clear");
                assert_ne!(wire[12..172], plain[12..], "payload is encrypted");
                assert_eq!(unprotect(&mut inb, &wire).unwrap(), plain);
            }
            for _ in 0..3 {
                let plain = rtcp(SSRC);
                let wire = protect_rtcp(&mut out, &plain);
                assert_eq!(wire.len(), plain.len() + suite.rtcp_overhead());
                assert_eq!(unprotect_rtcp(&mut inb, &wire).unwrap(), plain);
            }
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_authentication() {
        for suite in SrtpSuite::ALL {
            let (mut out, mut inb) = pair(suite);
            let wire = protect(&mut out, &rtp(7, SSRC));
            // Header, payload, and the last byte (the tag).
            for at in [2, 40, wire.len() - 1] {
                let mut bad = wire.clone();
                bad[at] ^= 0x01;
                assert_eq!(
                    unprotect(&mut inb, &bad),
                    Err(SrtpError::AuthFailed),
                    "{suite} @{at}"
                );
            }
            // Failures leave no trace in the replay window: the genuine packet still passes.
            assert_eq!(unprotect(&mut inb, &wire).unwrap(), rtp(7, SSRC));

            let wire = protect_rtcp(&mut out, &rtcp(SSRC));
            for at in [12, wire.len() - 1] {
                let mut bad = wire.clone();
                bad[at] ^= 0x01;
                assert_eq!(unprotect_rtcp(&mut inb, &bad), Err(SrtpError::AuthFailed));
            }
            assert!(unprotect_rtcp(&mut inb, &wire).is_ok());

            // Another key entirely.
            let (_, mut stranger) = pair(suite);
            let wire = protect(&mut out, &rtp(8, SSRC));
            assert_eq!(unprotect(&mut stranger, &wire), Err(SrtpError::AuthFailed));
        }
    }

    #[test]
    fn the_same_packet_twice_is_a_replay() {
        for suite in SrtpSuite::ALL {
            let (mut out, mut inb) = pair(suite);
            let wire = protect(&mut out, &rtp(500, SSRC));
            assert!(unprotect(&mut inb, &wire).is_ok());
            assert_eq!(unprotect(&mut inb, &wire), Err(SrtpError::Replayed));

            let wire = protect_rtcp(&mut out, &rtcp(SSRC));
            assert!(unprotect_rtcp(&mut inb, &wire).is_ok());
            assert_eq!(unprotect_rtcp(&mut inb, &wire), Err(SrtpError::Replayed));
        }
    }

    #[test]
    fn reordering_within_the_window_passes_and_older_is_refused() {
        for suite in SrtpSuite::ALL {
            let (mut out, mut inb) = pair(suite);
            let wires: Vec<Vec<u8>> = (0..301u16)
                .map(|s| protect(&mut out, &rtp(s, SSRC)))
                .collect();
            // 0..=260 in order, except 150..160, which arrive after 260 (101-110 behind).
            for s in (0..=260).filter(|s| !(150..160).contains(s)) {
                unprotect(&mut inb, &wires[s]).unwrap();
            }
            for wire in &wires[250..=260] {
                assert_eq!(unprotect(&mut inb, wire), Err(SrtpError::Replayed));
            }
            for s in (150..160).rev() {
                assert_eq!(unprotect(&mut inb, &wires[s]).unwrap(), rtp(s as u16, SSRC));
                assert_eq!(unprotect(&mut inb, &wires[s]), Err(SrtpError::Replayed));
            }
            // The window's edge: 127 behind the newest passes, 128 behind is too old.
            let (mut out, mut inb) = pair(suite);
            let wires: Vec<Vec<u8>> = (0..301u16)
                .map(|s| protect(&mut out, &rtp(s, SSRC)))
                .collect();
            unprotect(&mut inb, &wires[300]).unwrap();
            assert!(unprotect(&mut inb, &wires[173]).is_ok());
            assert_eq!(unprotect(&mut inb, &wires[172]), Err(SrtpError::Replayed));
        }
    }

    #[test]
    fn a_forgery_before_the_first_genuine_packet_does_not_block_the_stream() {
        for suite in SrtpSuite::ALL {
            let (mut out, mut inb) = pair(suite);
            // Far ahead of the genuine stream, with a garbage tag.
            let mut forged = protect(&mut out, &rtp(30_000, SSRC));
            let last = forged.len() - 1;
            forged[last] ^= 0xff;
            assert_eq!(unprotect(&mut inb, &forged), Err(SrtpError::AuthFailed));
            for seq in 1..20u16 {
                let wire = protect(&mut out, &rtp(seq, SSRC));
                assert_eq!(
                    unprotect(&mut inb, &wire).unwrap(),
                    rtp(seq, SSRC),
                    "{suite}"
                );
            }
            let mut forged = protect_rtcp(&mut out, &rtcp(SSRC));
            let last = forged.len() - 1;
            forged[last] ^= 0xff;
            assert_eq!(
                unprotect_rtcp(&mut inb, &forged),
                Err(SrtpError::AuthFailed)
            );
            let wire = protect_rtcp(&mut out, &rtcp(SSRC));
            assert!(unprotect_rtcp(&mut inb, &wire).is_ok());
        }
    }

    #[test]
    fn sequence_wrap_advances_the_rollover_counter() {
        for suite in SrtpSuite::ALL {
            let (mut out, mut inb) = pair(suite);
            // 65530 → 65535 → 0 → 9: the sender's ROC becomes 1 at 0 (RFC 3711 §3.3.1).
            let seqs: Vec<u16> = (65530..=65535).chain(0..10).collect();
            let wires: Vec<Vec<u8>> = seqs
                .iter()
                .map(|&s| protect(&mut out, &rtp(s, SSRC)))
                .collect();
            // 65535 arrives after 0 and 1: the receiver must guess ROC 0 for it, 1 after.
            let order = [0, 1, 2, 3, 4, 6, 7, 5, 8, 9, 10, 11, 12, 13, 14, 15];
            for i in order {
                assert_eq!(
                    unprotect(&mut inb, &wires[i]).unwrap(),
                    rtp(seqs[i], SSRC),
                    "{suite} seq {}",
                    seqs[i]
                );
            }
            assert_eq!(unprotect(&mut inb, &wires[9]), Err(SrtpError::Replayed));
        }
        // Seq 3 as sent before any wrap (ROC 0), shown after the wrap: the receiver reads it
        // as ROC 1, so it cannot authenticate, and cannot pass for the packet it replaces.
        let key = SrtpMasterKey::generate(SrtpSuite::AesCm128HmacSha1_80).unwrap();
        let mut before = OutboundSrtp::new(&key).unwrap();
        let old = protect(&mut before, &rtp(3, SSRC));
        let mut out = OutboundSrtp::new(&key).unwrap();
        let mut inb = InboundSrtp::new(&key).unwrap();
        for seq in (65000..=65535).chain(0..2) {
            unprotect(&mut inb, &protect(&mut out, &rtp(seq, SSRC))).unwrap();
        }
        assert_eq!(unprotect(&mut inb, &old), Err(SrtpError::AuthFailed));
        let new = protect(&mut out, &rtp(3, SSRC));
        assert_ne!(new, old, "ROC 1 changes the keystream and tag");
        assert_eq!(unprotect(&mut inb, &new).unwrap(), rtp(3, SSRC));
    }

    #[test]
    fn srtcp_without_the_e_flag_is_refused_before_the_crate_sees_it() {
        for suite in SrtpSuite::ALL {
            let (mut out, mut inb) = pair(suite);
            let mut wire = protect_rtcp(&mut out, &rtcp(SSRC));
            let e_at = wire.len()
                - 4
                - match suite {
                    SrtpSuite::AeadAes128Gcm => 0,
                    _ => suite.rtcp_tag_len(),
                };
            assert_eq!(wire[e_at] & 0x80, 0x80);
            wire[e_at] &= 0x7f;
            assert_eq!(unprotect_rtcp(&mut inb, &wire), Err(SrtpError::Unencrypted));
        }
    }

    #[test]
    fn truncated_and_foreign_packets_are_errors_not_panics() {
        for suite in SrtpSuite::ALL {
            let (mut out, mut inb) = pair(suite);
            let wire = protect(&mut out, &rtp(1, SSRC));
            for len in 0..wire.len() {
                assert!(
                    unprotect(&mut inb, &wire[..len]).is_err(),
                    "{suite} len {len}"
                );
            }
            let wire = protect_rtcp(&mut out, &rtcp(SSRC));
            for len in 0..wire.len() {
                assert!(
                    unprotect_rtcp(&mut inb, &wire[..len]).is_err(),
                    "{suite} len {len}"
                );
            }
            let mut v1 = protect(&mut out, &rtp(2, SSRC));
            v1[0] = 0x40;
            assert_eq!(unprotect(&mut inb, &v1), Err(SrtpError::Malformed));

            // Protecting needs room for the tag; a buffer without it is refused, untouched.
            let mut tight = rtp(3, SSRC);
            assert_eq!(
                out.protect_rtp(&mut tight, 172),
                Err(SrtpError::BufferTooSmall)
            );
            assert_eq!(tight, rtp(3, SSRC));
            let mut buf = [0u8; 4];
            assert_eq!(out.protect_rtp(&mut buf, 8), Err(SrtpError::BufferTooSmall));
            assert_eq!(
                inb.unprotect_rtp(&mut buf, 8),
                Err(SrtpError::BufferTooSmall)
            );
        }
    }

    #[test]
    fn an_mki_is_checked_and_removed() {
        for suite in SrtpSuite::ALL {
            let key = SrtpMasterKey::generate(suite).unwrap();
            let mut out = OutboundSrtp::new(&key).unwrap();
            let mki = Mki::new(0x0102_0304, 4).unwrap();
            let mut inb = InboundSrtp::with_params(&key, Some(mki), None).unwrap();
            let with_mki = |wire: Vec<u8>, trailer: usize, mki: [u8; 4]| {
                let at = wire.len() - trailer;
                let mut w = wire[..at].to_vec();
                w.extend_from_slice(&mki);
                w.extend_from_slice(&wire[at..]);
                w
            };
            let rtp_trailer = if suite == SrtpSuite::AeadAes128Gcm {
                0
            } else {
                suite.rtp_tag_len()
            };
            let rtcp_trailer = if suite == SrtpSuite::AeadAes128Gcm {
                0
            } else {
                suite.rtcp_tag_len()
            };

            let wire = with_mki(protect(&mut out, &rtp(1, SSRC)), rtp_trailer, [1, 2, 3, 4]);
            assert_eq!(unprotect(&mut inb, &wire).unwrap(), rtp(1, SSRC));
            let wire = with_mki(protect(&mut out, &rtp(2, SSRC)), rtp_trailer, [1, 2, 3, 5]);
            assert_eq!(unprotect(&mut inb, &wire), Err(SrtpError::UnknownMki));
            let wire = with_mki(
                protect_rtcp(&mut out, &rtcp(SSRC)),
                rtcp_trailer,
                [1, 2, 3, 4],
            );
            assert_eq!(unprotect_rtcp(&mut inb, &wire).unwrap(), rtcp(SSRC));
            // A packet without the MKI the peer promised does not pass.
            let bare = protect(&mut out, &rtp(3, SSRC));
            assert!(unprotect(&mut inb, &bare).is_err());
        }
    }

    #[test]
    fn the_key_lifetime_is_enforced() {
        let key = SrtpMasterKey::generate(SrtpSuite::AesCm128HmacSha1_80).unwrap();
        let mut out = OutboundSrtp::new(&key).unwrap();
        let mut inb = InboundSrtp::with_params(&key, None, Some(3)).unwrap();
        assert!(unprotect(&mut inb, &protect(&mut out, &rtp(1, SSRC))).is_ok());
        // A forgery does not use up the key.
        let mut bad = protect(&mut out, &rtp(2, SSRC));
        bad[20] ^= 1;
        assert_eq!(unprotect(&mut inb, &bad), Err(SrtpError::AuthFailed));
        assert!(unprotect(&mut inb, &protect(&mut out, &rtp(3, SSRC))).is_ok());
        assert!(unprotect_rtcp(&mut inb, &protect_rtcp(&mut out, &rtcp(SSRC))).is_ok());
        assert_eq!(
            unprotect(&mut inb, &protect(&mut out, &rtp(4, SSRC))),
            Err(SrtpError::KeyExhausted)
        );
    }

    #[test]
    fn ssrcs_per_context_are_capped() {
        let (mut out, mut inb) = pair(SrtpSuite::AesCm128HmacSha1_80);
        for ssrc in 0..MAX_SSRCS as u32 {
            let wire = protect(&mut out, &rtp(1, ssrc));
            assert!(unprotect(&mut inb, &wire).is_ok());
        }
        let mut buf = rtp(1, 999);
        buf.resize(200, 0);
        assert_eq!(
            out.protect_rtp(&mut buf, 172),
            Err(SrtpError::TooManyStreams)
        );
        // Junk under a new SSRC is refused without the crate making state for it.
        let mut junk = rtp(1, 999);
        junk.extend_from_slice(&[0; 10]);
        assert_eq!(unprotect(&mut inb, &junk), Err(SrtpError::TooManyStreams));
        // Known SSRCs carry on.
        let wire = protect(&mut out, &rtp(2, 0));
        assert!(unprotect(&mut inb, &wire).is_ok());
    }

    #[test]
    fn errors_name_no_key_or_packet_bytes() {
        for e in [
            SrtpError::TooShort,
            SrtpError::Malformed,
            SrtpError::AuthFailed,
            SrtpError::Replayed,
            SrtpError::UnknownMki,
            SrtpError::Unencrypted,
            SrtpError::KeyExhausted,
            SrtpError::TooManyStreams,
            SrtpError::BufferTooSmall,
            SrtpError::Setup,
        ] {
            let text = format!("{e} {e:?}");
            assert!(!text.chars().any(|c| c.is_ascii_digit()), "{text}");
        }
    }
}
