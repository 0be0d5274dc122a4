//! What a call's stereo recording holds and where each byte of it goes, without the file:
//! left is what the agent received, right what the caller received.
//!
//! Memory per call is fixed: a ring of `WINDOW` stereo frames (64 KB) in which each channel's
//! audio is placed by RTP timestamp (so reordered packets land where they belong). When a
//! packet would write past the ring, its oldest `CHUNK` frames (16 KB) are handed over, with
//! their offset in the file, for the caller to write; audio arriving later than the ring's span
//! (about 2 s) is lost. Stretches nobody spoke in are skipped rather than handed over: the file's
//! gap reads back as silence.
//!
//! The file is a 16-bit stereo WAV at 8 kHz: a 44-byte header, then the frames in order. Its
//! name is `<call>-<unix ms>.wav` (`-N` before the extension when two calls of one id start in
//! one millisecond), with the call id reduced to characters safe in a file name.
//!
//! Sans-IO: time comes in as the sample count since the call started, and the ring allocates
//! nothing after `RecordRing::new`; the caller owns the file and any thread writing it.

use crate::dsp::g711::Codec;
use crate::rtp::packet::RtpView;
use crate::wav;

/// Stereo frames the ring holds: a power of two, about 2 s at 8 kHz.
pub const WINDOW: usize = 1 << 14;
/// Frames handed over at a time: about 0.5 s, 16 KB.
pub const CHUNK: usize = 1 << 12;
/// Bytes of one stereo frame in the file.
pub const FRAME_BYTES: usize = 4;
/// Bytes of the WAV header before the first frame.
const HEADER: u64 = 44;
/// RTP timestamp steps beyond which a channel re-anchors on the clock (10 minutes at 8 kHz).
const REANCHOR: u32 = 8000 * 600;

/// Left or right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// What the agent received.
    Agent = 0,
    /// What the caller received.
    Caller = 1,
}

/// Where one channel's RTP timestamps fall on the recording's sample clock: anchored at the
/// wall-clock sample of the channel's first packet so the two channels line up.
#[derive(Debug, Default)]
struct Anchor {
    origin: Option<(u32, usize)>,
}

impl Anchor {
    /// The frame the packet's first sample goes to.
    fn place(&mut self, timestamp: u32, now_sample: usize) -> usize {
        let (ts0, at0) = *self.origin.get_or_insert((timestamp, now_sample));
        let off = timestamp.wrapping_sub(ts0);
        // A timestamp jump backwards or far ahead (new SSRC) re-anchors on the clock.
        if off < REANCHOR {
            at0 + off as usize
        } else {
            self.origin = Some((timestamp, now_sample));
            now_sample
        }
    }
}

/// The recording's frames not yet handed over.
#[derive(Debug)]
pub struct RecordRing {
    anchors: [Anchor; 2],
    ring: Box<[[i16; 2]]>,
    /// The frame at the ring's start: a multiple of `CHUNK`; everything before it is handed on.
    base: usize,
    /// One past the last frame written.
    end: usize,
    /// Frames recorded at most.
    cap: usize,
}

impl RecordRing {
    /// An empty recording of at most `max_s` seconds.
    pub fn new(max_s: u64) -> RecordRing {
        RecordRing {
            anchors: [Anchor::default(), Anchor::default()],
            ring: vec![[0i16; 2]; WINDOW].into_boxed_slice(),
            base: 0,
            end: 0,
            cap: (max_s as usize).saturating_mul(8000),
        }
    }

    /// Places a packet's audio (G.711 decoded) on its channel; other payloads are ignored.
    /// `now_sample`: 8 kHz samples since the call started. Chunks pushed out of the ring go to
    /// `hand_over` with their byte offset in the file, then their slots are cleared.
    pub fn put(
        &mut self,
        ch: Channel,
        pkt: &[u8],
        now_sample: usize,
        hand_over: &mut impl FnMut(u64, &[[i16; 2]]),
    ) {
        let Ok(v) = RtpView::parse(pkt) else {
            return;
        };
        let Some(codec) = Codec::from_payload_type(v.payload_type()) else {
            return;
        };
        let ch = ch as usize;
        let at = self.anchors[ch].place(v.timestamp(), now_sample);
        let payload = v.payload();
        let end = at.saturating_add(payload.len()).min(self.cap);
        if end <= at {
            return;
        }
        if end > self.base + WINDOW {
            self.advance(end - WINDOW, hand_over);
        }
        // Audio from before the ring's start is too late: it has been handed over.
        let from = at.max(self.base);
        for (f, &b) in (from..end).zip(payload.get(from - at..).unwrap_or_default()) {
            if let Some(slot) = self.ring.get_mut(f % WINDOW) {
                slot[ch] = codec.decode(b);
            }
        }
        self.end = self.end.max(end);
    }

    /// Hands frames before `to` (rounded up to a chunk) over.
    fn advance(&mut self, to: usize, hand_over: &mut impl FnMut(u64, &[[i16; 2]])) {
        let to = to.div_ceil(CHUNK) * CHUNK;
        while self.base < to {
            if self.base >= self.end {
                // Nothing written from here on: the ring is all silence, and so is the file's
                // gap (read back as zeros).
                self.base = to;
                break;
            }
            let start = self.base % WINDOW;
            if let Some(frames) = self.ring.get_mut(start..start + CHUNK) {
                hand_over(data_offset(self.base), frames);
                frames.fill([0, 0]);
            }
            self.base += CHUNK;
        }
    }

    /// What the ring still holds when the call ends: its byte offset in the file and the
    /// frames, in order.
    pub fn tail(&self) -> (u64, impl Iterator<Item = &[i16; 2]>) {
        let start = self.base % WINDOW;
        let n = self.end.saturating_sub(self.base).min(WINDOW);
        let frames = self.ring.get(start..).unwrap_or_default().iter();
        (
            data_offset(self.base),
            frames.chain(self.ring.iter()).take(n),
        )
    }

    /// The file's header for the frames recorded so far.
    pub fn header(&self) -> [u8; 44] {
        empty_header_with(self.end as u64)
    }
}

/// The header of a recording with no frames yet, written when the file is created.
pub fn empty_header() -> [u8; 44] {
    empty_header_with(0)
}

fn empty_header_with(frames: u64) -> [u8; 44] {
    wav::pcm16_header(2, frames)
}

/// Where frame `frame` starts in the file.
fn data_offset(frame: usize) -> u64 {
    HEADER + (frame * FRAME_BYTES) as u64
}

/// Writes `frames` as the file holds them (16-bit little-endian, left then right) into the
/// start of `out`, `FRAME_BYTES` a frame; frames beyond `out` are left out.
pub fn encode(frames: &[[i16; 2]], out: &mut [u8]) {
    for (o, f) in out.chunks_exact_mut(FRAME_BYTES).zip(frames) {
        o[..2].copy_from_slice(&f[0].to_le_bytes());
        o[2..].copy_from_slice(&f[1].to_le_bytes());
    }
}

/// The file name stem for call `label` started at `unix_ms`.
pub fn stem(label: &str, unix_ms: u128) -> String {
    format!("{}-{unix_ms}", sanitize(label))
}

/// The `n`th file name tried for `stem` (0 first): `n` tells apart calls of one id that start
/// in one millisecond.
pub fn file_name(stem: &str, n: u32) -> String {
    if n == 0 {
        format!("{stem}.wav")
    } else {
        format!("{stem}-{n}.wav")
    }
}

/// Keeps a label usable as a file name stem: no separators, no leading dot.
fn sanitize(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with('.') {
        format!("call{s}")
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p.extend_from_slice(payload);
        assert!(RtpView::parse(&p).is_ok());
        p
    }

    /// The file a ring's hand-overs and tail make, as frames (the header left out).
    #[derive(Default)]
    struct File {
        frames: Vec<[i16; 2]>,
        handed: usize,
    }

    impl File {
        fn write(&mut self, offset: u64, frames: &[[i16; 2]]) {
            let at = (offset - HEADER) as usize / FRAME_BYTES;
            if self.frames.len() < at + frames.len() {
                self.frames.resize(at + frames.len(), [0, 0]);
            }
            self.frames[at..at + frames.len()].copy_from_slice(frames);
            self.handed += 1;
        }

        fn finish(mut self, ring: &RecordRing) -> Vec<[i16; 2]> {
            let (offset, tail) = ring.tail();
            let tail: Vec<[i16; 2]> = tail.copied().collect();
            self.write(offset, &tail);
            self.frames.truncate(ring.end);
            self.frames
        }
    }

    #[test]
    fn reordered_packets_land_by_timestamp_through_many_hand_overs() {
        let mut ring = RecordRing::new(3600);
        let mut file = File::default();
        let payload: Vec<u8> = (0..160u32).map(|i| (i % 251) as u8).collect();
        let n = 500;
        let mut put = |ring: &mut RecordRing, j: usize| {
            let p = packet(1000 + 160 * j as u32, &payload);
            ring.put(Channel::Caller, &p, 0, &mut |o, f| file.write(o, f));
        };
        put(&mut ring, 0);
        for k in (1..n).step_by(2) {
            for j in [k + 1, k].into_iter().filter(|&j| j < n) {
                put(&mut ring, j);
            }
        }
        // 80,000 frames: all but the last 16,384 or fewer, in whole chunks, were handed over.
        assert_eq!(file.handed, 16);
        let frames = file.finish(&ring);
        assert_eq!(frames.len(), 160 * n);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f[0], 0, "left is silent");
            assert_eq!(f[1], Codec::Pcmu.decode(payload[i % 160]), "frame {i}");
        }
    }

    #[test]
    fn channels_line_up_on_the_clock_not_on_their_timestamps() {
        let mut ring = RecordRing::new(10);
        let mut none = |_: u64, _: &[[i16; 2]]| panic!("nothing to hand over");
        ring.put(Channel::Agent, &packet(50_000, &[0x00; 160]), 0, &mut none);
        // The caller's stream starts 20 ms later with a timestamp of its own.
        ring.put(Channel::Caller, &packet(7, &[0x00; 160]), 160, &mut none);
        let frames: Vec<[i16; 2]> = ring.tail().1.copied().collect();
        assert_eq!(frames.len(), 320);
        let loud = Codec::Pcmu.decode(0x00);
        assert!(frames[..160].iter().all(|f| *f == [loud, 0]));
        assert!(frames[160..].iter().all(|f| *f == [0, loud]));
        assert_eq!(ring.header(), wav::pcm16_header(2, 320));
    }

    #[test]
    fn a_jump_far_ahead_hands_over_only_what_was_spoken() {
        let mut ring = RecordRing::new(3600);
        let mut offsets = Vec::new();
        ring.put(Channel::Agent, &packet(0, &[0x00; 160]), 0, &mut |o, _| {
            offsets.push(o)
        });
        ring.put(
            Channel::Agent,
            &packet(800_000, &[0xff; 160]),
            0,
            &mut |o, f| {
                assert!(f[..160].iter().all(|f| f[0] != 0));
                offsets.push(o);
            },
        );
        // One chunk held the first packet; the silence after it was skipped, not handed over.
        assert_eq!(offsets, [HEADER]);
        let base = (800_160 - WINDOW).div_ceil(CHUNK) * CHUNK;
        let (offset, tail) = ring.tail();
        assert_eq!(offset, data_offset(base));
        assert_eq!(tail.count(), 800_160 - base);
    }

    #[test]
    fn audio_past_the_cap_and_unknown_payloads_are_left_out() {
        let mut ring = RecordRing::new(1);
        let mut none = |_: u64, _: &[[i16; 2]]| {};
        ring.put(Channel::Agent, &packet(0, &[0x00; 160]), 7_900, &mut none);
        assert_eq!(ring.tail().1.count(), 8000);
        ring.put(Channel::Agent, &packet(160, &[0x00; 160]), 0, &mut none);
        assert_eq!(ring.tail().1.count(), 8000);
        let mut video = packet(0, &[0x00; 160]);
        video[1] = 96;
        ring.put(Channel::Caller, &video, 0, &mut none);
        assert!(ring.tail().1.all(|f| f[1] == 0));
        ring.put(Channel::Caller, &[0x80, 0], 0, &mut none);
    }

    #[test]
    fn frames_are_written_little_endian_left_first() {
        let mut out = [0u8; 8];
        encode(&[[1, -2], [0x1234, 0]], &mut out);
        assert_eq!(out, [1, 0, 0xfe, 0xff, 0x34, 0x12, 0, 0]);
    }

    #[test]
    fn labels_become_safe_file_names() {
        assert_eq!(sanitize("abc-1_2.x"), "abc-1_2.x");
        assert_eq!(sanitize("../etc/passwd"), "call.._etc_passwd");
        assert_eq!(sanitize(""), "call");
        assert_eq!(stem("a/b", 17), "a_b-17");
        assert_eq!(file_name("a-17", 0), "a-17.wav");
        assert_eq!(file_name("a-17", 2), "a-17-2.wav");
    }
}
