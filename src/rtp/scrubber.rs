//! The per-direction scrubber: one caller→agent RTP stream in, sanitized RTP out, plus the
//! digits it heard (for capture).
//!
//! It owns the delay line that makes zero-leak masking possible (ARCHITECTURE.md, invariants 1 and 3): output
//! packet N carries the audio D samples behind input packet N under the same RTP header, so the
//! presence detector has D samples of look-ahead and can mask a tone from its first sample.
//! RFC 4733 telephone-event packets never leave while scrubbing is on: each becomes a frame of
//! masking audio in the audio payload type, with the stream's sequence, timestamp and SSRC kept
//! continuous.
//!
//! It must never allocate, lock, log or panic per packet; it never reads a clock (time arrives as
//! an argument). Digits it reports are `Digit`s, which never print.
//!
//! [`DigitTap`] is its read-only sibling for the other direction: it hears the agent's keys
//! (in-band and RFC 4733) without touching the packets.

use crate::digit::{Digit, DigitSource};
use crate::dsp::dtmf::{
    DetectorConfig, DigitEvent, DtmfDetector, PresenceConfig, PresenceDetector, process_both,
};
use crate::dsp::g711::Codec;
use crate::dsp::mask::{MaskKind, Masker};
use crate::rtp::event::{EventError, TelephoneEvent};
use crate::rtp::packet::{RtpError, RtpView, write_header};

/// Largest audio frame accepted, in samples (200 ms at 8 kHz); larger payloads are dropped.
pub const MAX_FRAME: usize = 1600;
/// Largest delay line the scrubber supports, in samples (20 ms).
pub const MAX_DELAY: usize = 160;
/// Frames go through the delay line and detectors in pieces of at most this many samples
/// (20 ms), so the working buffers stay small: at thousands of calls the scrubbers' state is
/// read from memory on every packet, and its size is what the cache and TLB pay for. Every
/// stage is a streaming one, so pieces give exactly the result of whole frames.
const CHUNK: usize = 160;
/// RTP static payload type for comfort noise (RFC 3389).
const PT_CN: u8 = 13;

/// How the scrubber is set up for one stream.
#[derive(Clone, Debug)]
pub struct ScrubberConfig {
    /// Negotiated telephone-event payload type, if any.
    pub event_pt: Option<u8>,
    /// Codec assumed for masking frames before any audio packet has been seen.
    pub default_codec: Codec,
    pub mask: MaskKind,
    pub presence: PresenceConfig,
    pub detector: DetectorConfig,
    /// An event with no packet for this long has lost its end packets (RFC 4733 §2.5.2.2).
    pub event_timeout_ms: u64,
    /// Scrubbing state at start.
    pub enabled: bool,
    /// The route scrubs always (`scrub = "always"`): scrubbing cannot be switched off, by
    /// anyone, whatever the control path asks.
    pub always: bool,
}

impl Default for ScrubberConfig {
    fn default() -> Self {
        ScrubberConfig {
            event_pt: Some(101),
            default_codec: Codec::Pcmu,
            mask: MaskKind::default(),
            presence: PresenceConfig::default(),
            detector: DetectorConfig::default(),
            event_timeout_ms: 250,
            enabled: true,
            always: false,
        }
    }
}

/// What to do with one input packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the first `len` bytes of the output buffer.
    Forward(usize),
    /// Send nothing; counted under the reason.
    Drop(DropReason),
}

/// Why a packet was not forwarded. Each has a counter in [`ScrubStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    #[error("malformed RTP: {0}")]
    Malformed(#[from] RtpError),
    #[error("malformed telephone-event: {0}")]
    BadEvent(#[from] EventError),
    /// A payload the scrubber cannot inspect while scrubbing is on (fail closed).
    #[error("payload type {0} cannot be inspected")]
    UnsupportedPayload(u8),
    #[error("audio frame longer than the scrubber accepts")]
    Oversize,
    #[error("output buffer too small")]
    OutputTooSmall,
    /// An event packet sent alongside in-band audio for the same span: the audio is masked,
    /// the event has no slot of its own in the agent's timeline.
    #[error("telephone-event duplicated by concurrent audio")]
    EventWithAudio,
    /// The same packet again (the sequence number and timestamp of one of the last few).
    #[error("duplicate packet")]
    Duplicate,
    /// A telephone-event packet for time the agent's stream already has: a late update, a
    /// late copy of the end, a repeat.
    #[error("telephone-event packet for time already sent")]
    LateEvent,
    /// An audio packet for time an event's frames already filled: a key's onset sent in-band
    /// that arrived after the event dated from it.
    #[error("audio packet for time an event already filled")]
    LateAudio,
}

/// A digit the scrubber heard, placed on its own sample timeline (samples fed since start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubbedDigit {
    pub digit: Digit,
    pub source: DigitSource,
    pub start: u64,
    pub end: u64,
}

/// Counters; never contain digits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubStats {
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped_malformed: u64,
    pub dropped_bad_event: u64,
    pub dropped_unsupported: u64,
    pub dropped_oversize: u64,
    pub dropped_event_with_audio: u64,
    pub dropped_duplicate: u64,
    pub dropped_late_event: u64,
    pub dropped_late_audio: u64,
    /// Telephone-event packets turned into masking audio.
    pub events_converted: u64,
    pub digits_inband: u64,
    pub digits_rfc4733: u64,
    /// Copies of one key arriving on both paths, reported once.
    pub digits_deduplicated: u64,
    /// Samples whose output differs from input because of masking.
    pub samples_masked: u64,
    /// Masked spans started.
    pub mask_spans: u64,
}

/// Two reports of the same key from different paths this close (samples) are one key.
const DEDUP_GAP: u64 = 1600;

/// How many recent packets a duplicate is looked for among. A network duplicates a packet
/// within a few packets of the original (a trunk with redundant paths, a retransmitting SBC);
/// eight is one cache line of identities.
const RECENT: usize = 8;

/// Identities (sequence number, timestamp) of the last [`RECENT`] packets received: a packet
/// that matches one is a duplicate, even with other packets between it and its original.
#[derive(Clone, Copy, Debug, Default)]
struct Recent {
    ids: [(u16, u32); RECENT],
    /// Slots filled so far (at most `RECENT`), and the next slot to overwrite.
    filled: usize,
    next: usize,
}

impl Recent {
    /// True if `id` is among the recent identities; otherwise remembers it.
    fn seen(&mut self, id: (u16, u32)) -> bool {
        if self.ids[..self.filled].contains(&id) {
            return true;
        }
        self.ids[self.next] = id;
        self.next = (self.next + 1) % RECENT;
        self.filled = (self.filled + 1).min(RECENT);
        false
    }
}

/// The RFC 4733 event currently sounding.
#[derive(Clone, Copy, Debug)]
struct ActiveEvent {
    digit: Option<Digit>,
    /// An event is its SSRC and timestamp (RFC 4733 §2.5.1.2).
    ssrc: u32,
    rtp_ts: u32,
    /// Sequence number of its first packet received.
    first_seq: u16,
    /// Largest duration seen so far.
    duration: u32,
    /// How much of the event's time, from its timestamp, the agent's stream already has:
    /// synthesized frames, or audio the sender sent before it dated the event back.
    covered: u32,
    /// Where, from its timestamp, the frames synthesized for it begin.
    synth_from: u32,
    ended: bool,
    /// Audio packets are arriving inside the event's span: the sender sends both.
    with_audio: bool,
    start_pos: u64,
    last_seen_ms: u64,
    reported: bool,
}

/// A packet sent, by where its frame ends on its stream.
#[derive(Clone, Copy, Debug)]
struct Sent {
    ssrc: u32,
    seq: u16,
    /// Timestamp just after its audio (its own, for comfort noise).
    end_ts: u32,
}

/// A repeated end packet's frame lies at most this many frames past its event's duration
/// (RFC 4733 §2.5.1.4 sends the final packet three times).
const END_SLOTS: u32 = 3;

/// An RFC 4733 event's key, the first time it is asked for (None after, or for a non-DTMF
/// event code).
fn report_once(
    reported: &mut bool,
    digit: Option<Digit>,
    start: u64,
    duration: u32,
) -> Option<ScrubbedDigit> {
    if std::mem::replace(reported, true) {
        return None;
    }
    Some(ScrubbedDigit {
        digit: digit?,
        source: DigitSource::Rfc4733,
        start,
        end: start + u64::from(duration),
    })
}

pub struct Scrubber {
    cfg: ScrubberConfig,
    enabled: bool,
    presence: PresenceDetector,
    detector: DtmfDetector,
    masker: Masker,
    delay: usize,
    /// The delay line between packets: the last `delay` codec bytes received. Each piece of a
    /// frame goes out as the line's bytes followed by its own first ones, written straight
    /// into the packet being sent; nothing else is copied.
    line: [u8; MAX_DELAY],
    forced: Forced,
    /// Codec of the bytes in the delay line.
    codec: Option<Codec>,
    /// Samples pushed through the pipeline since start: the digit timeline.
    pos: u64,
    /// Stream samples the current strict detector did not hear (before it was created, and
    /// synthesized event frames), added to its offsets.
    detector_skew: u64,
    last_audio_pt: Option<u8>,
    /// Of the packets sent on the current stream, the one whose frame ends latest: where the
    /// agent's stream stands. A late packet goes out behind it and leaves it.
    front: Option<Sent>,
    last_frame_len: usize,
    /// Stream and timestamp just after the last audio pushed through the pipeline: audio that
    /// does not start there is joined to it out of time.
    fed_end: Option<(u32, u32)>,
    /// Packets received lately while scrubbing, to drop duplicates.
    recent: Recent,
    event: Option<ActiveEvent>,
    last_digit: Option<ScrubbedDigit>,
    was_masking: bool,
    stats: ScrubStats,
}

/// Words of a piece's mask, a bit per sample.
const MASK_WORDS: usize = CHUNK.div_ceil(64);

/// Which samples must be masked whatever the detectors say (frames inside an RFC 4733 event),
/// a bit per sample on the stream's timeline, from when they go into the delay line until they
/// come out of it. Bits are cleared as they are taken, so a stream that never forces anything
/// keeps it all zero and pays one test of it per piece.
struct Forced {
    ring: [u64; FORCED_WORDS],
}

/// Must cover the delay line and a piece: MAX_DELAY + CHUNK samples.
const FORCED_WORDS: usize = 8;
const _: () = assert!(FORCED_WORDS * 64 >= MAX_DELAY + CHUNK);
const FORCED_BITS: u64 = (FORCED_WORDS * 64) as u64;

impl Forced {
    fn new() -> Forced {
        Forced {
            ring: [0; FORCED_WORDS],
        }
    }

    /// Marks the `n` samples from stream position `from`.
    fn set(&mut self, from: u64, n: usize) {
        for k in 0..n as u64 {
            let i = (from.wrapping_add(k) % FORCED_BITS) as usize;
            self.ring[i / 64] |= 1 << (i % 64);
        }
    }

    /// ORs into `mask` (bit `i` for sample `from + i`) the marks of the `n` samples from `from`,
    /// and clears them.
    fn take(&mut self, from: u64, n: usize, mask: &mut [u64]) {
        if self.ring.iter().all(|&w| w == 0) {
            return;
        }
        for k in 0..n {
            // Wrapping: before the stream's start `from` is "negative", and the ring's length
            // divides 2^64.
            let i = (from.wrapping_add(k as u64) % FORCED_BITS) as usize;
            let (word, bit) = (&mut self.ring[i / 64], 1u64 << (i % 64));
            if *word & bit != 0 {
                *word &= !bit;
                if let Some(m) = mask.get_mut(k / 64) {
                    *m |= 1 << (k % 64);
                }
            }
        }
    }
}

/// What a frame pushed through the delay line carries.
#[derive(Clone, Copy)]
enum Samples<'a> {
    /// The sender's G.711 bytes.
    Audio(&'a [u8]),
    /// Silence standing in for an RFC 4733 event, as long as the output.
    Silence,
}

impl Scrubber {
    pub fn new(cfg: ScrubberConfig) -> Scrubber {
        let presence = PresenceDetector::new(cfg.presence.clone());
        let delay = presence.delay().min(MAX_DELAY);
        let mut s = Scrubber {
            enabled: cfg.enabled || cfg.always,
            detector: DtmfDetector::new(cfg.detector.clone()),
            masker: Masker::new(cfg.mask),
            presence,
            delay,
            line: [0; MAX_DELAY],
            forced: Forced::new(),
            codec: None,
            pos: 0,
            detector_skew: 0,
            last_audio_pt: None,
            front: None,
            last_frame_len: 160,
            fed_end: None,
            recent: Recent::default(),
            event: None,
            last_digit: None,
            was_masking: false,
            stats: ScrubStats::default(),
            cfg,
        };
        s.prime_delay_line();
        s
    }

    /// The configuration it was built with (scrubbing state aside).
    pub fn config(&self) -> &ScrubberConfig {
        &self.cfg
    }

    /// The added delay in samples (D).
    pub fn delay_samples(&self) -> usize {
        self.delay
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn stats(&self) -> &ScrubStats {
        &self.stats
    }

    /// Changes the negotiated telephone-event payload type (re-INVITE).
    pub fn set_event_pt(&mut self, pt: Option<u8>) {
        self.cfg.event_pt = pt;
    }

    /// Switches scrubbing on or off between packets. Off is a bit-exact pass-through; switching
    /// on starts a fresh delay line (D samples of silence), so the agent hears a D-sample gap
    /// once rather than a click or a digit fragment.
    /// Switches scrubbing; switching off a scrubber built with `always` does nothing and
    /// returns false.
    pub fn set_enabled(&mut self, on: bool, on_digit: &mut dyn FnMut(ScrubbedDigit)) -> bool {
        if !on && self.cfg.always {
            return false;
        }
        if on == self.enabled {
            return true;
        }
        if !on {
            self.finish_event(on_digit);
            self.detector.finish(&mut |ev| {
                let _ = ev;
            });
        } else {
            self.presence.reset();
            self.detector = DtmfDetector::new(self.cfg.detector.clone());
            self.detector_skew = self.pos;
            self.masker = Masker::new(self.cfg.mask);
            self.prime_delay_line();
            self.event = None;
            self.was_masking = false;
        }
        self.enabled = on;
        true
    }

    fn prime_delay_line(&mut self) {
        let silence = self.codec.unwrap_or(self.cfg.default_codec).encode(0);
        self.line[..self.delay].fill(silence);
        self.forced = Forced::new();
    }

    /// Processes one datagram received at `now_ms`; writes the packet to send into `out`.
    pub fn process(
        &mut self,
        now_ms: u64,
        input: &[u8],
        out: &mut [u8],
        on_digit: &mut dyn FnMut(ScrubbedDigit),
    ) -> Verdict {
        self.stats.packets_in += 1;
        let verdict = self.process_inner(now_ms, input, out, on_digit);
        match verdict {
            Verdict::Forward(_) => self.stats.packets_out += 1,
            Verdict::Drop(reason) => match reason {
                DropReason::Malformed(_) => self.stats.dropped_malformed += 1,
                DropReason::BadEvent(_) => self.stats.dropped_bad_event += 1,
                DropReason::UnsupportedPayload(_) => self.stats.dropped_unsupported += 1,
                DropReason::Oversize | DropReason::OutputTooSmall => {
                    self.stats.dropped_oversize += 1
                }
                DropReason::EventWithAudio => self.stats.dropped_event_with_audio += 1,
                DropReason::Duplicate => self.stats.dropped_duplicate += 1,
                DropReason::LateEvent => self.stats.dropped_late_event += 1,
                DropReason::LateAudio => self.stats.dropped_late_audio += 1,
            },
        }
        verdict
    }

    /// Whether an RFC 4733 event is sounding without its end seen: only then does
    /// [`Scrubber::tick`] have anything to time out, so the shell can tick slowly otherwise.
    pub fn event_pending(&self) -> bool {
        matches!(self.event, Some(ev) if !ev.ended)
    }

    /// Lets time pass without packets: ends an event whose end packets were all lost.
    pub fn tick(&mut self, now_ms: u64, on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        if let Some(ev) = self.event
            && !ev.ended
            && now_ms.saturating_sub(ev.last_seen_ms) >= self.cfg.event_timeout_ms
        {
            self.finish_event(on_digit);
        }
    }

    fn process_inner(
        &mut self,
        now_ms: u64,
        input: &[u8],
        out: &mut [u8],
        on_digit: &mut dyn FnMut(ScrubbedDigit),
    ) -> Verdict {
        let view = match RtpView::parse(input) {
            Ok(v) => v,
            Err(e) => return Verdict::Drop(e.into()),
        };
        if !self.enabled {
            let Some(dst) = out.get_mut(..input.len()) else {
                return Verdict::Drop(DropReason::OutputTooSmall);
            };
            dst.copy_from_slice(input);
            return Verdict::Forward(input.len());
        }
        if self.recent.seen((view.sequence(), view.timestamp())) {
            return Verdict::Drop(DropReason::Duplicate);
        }
        self.tick(now_ms, on_digit);
        let pt = view.payload_type();
        if Some(pt) == self.cfg.event_pt {
            return self.process_event(now_ms, &view, out, on_digit);
        }
        if let Some(codec) = Codec::from_payload_type(pt) {
            return self.process_audio(codec, &view, out, on_digit);
        }
        if pt == PT_CN {
            // Comfort noise carries a level, never a tone; it says the sender fell silent.
            let Some(dst) = out.get_mut(..input.len()) else {
                return Verdict::Drop(DropReason::OutputTooSmall);
            };
            dst.copy_from_slice(input);
            if self.after_gap(&view, 0) {
                self.end_tone(on_digit);
            }
            self.note_sent(&view, view.timestamp(), 0);
            return Verdict::Forward(input.len());
        }
        Verdict::Drop(DropReason::UnsupportedPayload(pt))
    }

    fn process_audio(
        &mut self,
        codec: Codec,
        view: &RtpView<'_>,
        out: &mut [u8],
        on_digit: &mut dyn FnMut(ScrubbedDigit),
    ) -> Verdict {
        let payload = view.payload();
        let n = payload.len();
        if n > MAX_FRAME {
            return Verdict::Drop(DropReason::Oversize);
        }
        let input = view.as_bytes();
        let hl = view.header_len();
        if out.len() < input.len() {
            return Verdict::Drop(DropReason::OutputTooSmall);
        }
        if let Some(ev) = self.event
            && ev.ssrc == view.ssrc()
            && ev.covered > ev.synth_from
        {
            let at = i64::from(view.timestamp().wrapping_sub(ev.rtp_ts) as i32);
            if at < i64::from(ev.covered) && at + n as i64 > i64::from(ev.synth_from) {
                // Sent, it would overlap those frames in the agent's stream.
                return Verdict::Drop(DropReason::LateAudio);
            }
        }
        self.switch_codec(codec);

        let mut force = false;
        if let Some(ev) = self.event.as_mut()
            && !ev.ended
        {
            let offset = i64::from(view.timestamp().wrapping_sub(ev.rtp_ts) as i32);
            let sent_before = (view.sequence().wrapping_sub(ev.first_seq) as i16) < 0;
            let n = n as i64;
            if ev.ssrc != view.ssrc() {
                // Another stream (a re-INVITE, a media server switch): the old one's end
                // packets will not come, and its timestamps say nothing of this one's.
                self.finish_event(on_digit);
            } else if sent_before {
                // A late packet from before the event: neither part of it nor past it.
            } else if offset >= i64::from(ev.duration) + n {
                // Audio resumed past the event: its end packets were lost.
                self.finish_event(on_digit);
            } else if offset > -n {
                // Audio inside a live event's span: the sender sends both, so this audio is
                // the key.
                ev.with_audio = true;
                force = true;
            }
        }

        // RFC 3551 §4.1: the marker opens a talkspurt; after a gap in time but none in
        // sequence, silence was suppressed. A gap in sequence too is loss, and a marker there
        // (gateways set it after internal switches) says nothing of the caller's keys.
        if view.marker()
            && self.after_gap(view, 1)
            && self
                .front
                .is_some_and(|f| view.sequence() == f.seq.wrapping_add(1))
        {
            self.end_tone(on_digit);
        }
        if self
            .fed_end
            .is_some_and(|end| end != (view.ssrc(), view.timestamp()))
        {
            self.presence.splice();
            self.detector.splice();
        }
        self.fed_end = Some((view.ssrc(), view.timestamp().wrapping_add(n as u32)));
        out[..input.len()].copy_from_slice(input);
        self.delay_frame(
            codec,
            Samples::Audio(payload),
            force,
            &mut out[hl..hl + n],
            on_digit,
        );
        self.last_audio_pt = Some(view.payload_type());
        self.last_frame_len = n.max(1);
        self.note_sent(view, view.timestamp(), n);
        Verdict::Forward(input.len())
    }

    fn process_event(
        &mut self,
        now_ms: u64,
        view: &RtpView<'_>,
        out: &mut [u8],
        on_digit: &mut dyn FnMut(ScrubbedDigit),
    ) -> Verdict {
        let ev = match TelephoneEvent::parse(view.payload()) {
            Ok(ev) => ev,
            Err(e) => return Verdict::Drop(e.into()),
        };
        let (ts, seq, ssrc) = (view.timestamp(), view.sequence(), view.ssrc());
        let same = matches!(self.event, Some(a) if a.rtp_ts == ts && a.ssrc == ssrc);
        let older = matches!(self.event, Some(a) if a.ssrc == ssrc && (ts.wrapping_sub(a.rtp_ts) as i32) < 0);
        if older {
            // A late packet of an event the next one superseded: its time and its key went
            // with that event; taken for a new one it would bring the key back a second time.
            return Verdict::Drop(DropReason::LateEvent);
        }
        if !same {
            // A new event (RFC 4733 §2.5.1.2: a new timestamp starts a new event).
            self.finish_event(on_digit);
            self.event = Some(ActiveEvent {
                digit: Digit::from_event_code(ev.event),
                ssrc,
                rtp_ts: ts,
                first_seq: seq,
                duration: 0,
                covered: self.already_sent(ssrc, seq, ts),
                synth_from: self.already_sent(ssrc, seq, ts),
                ended: false,
                with_audio: false,
                start_pos: self.pos,
                last_seen_ms: now_ms,
                reported: false,
            });
        }
        let frame = self.last_frame_len as u32;
        let lockstep = self.lockstep_end(ssrc, seq, ts, frame);
        let Some(active) = self.event.as_mut() else {
            return Verdict::Drop(DropReason::BadEvent(EventError::BadLength));
        };
        active.last_seen_ms = now_ms;
        let dur = u32::from(ev.duration);
        if dur > active.duration {
            active.duration = dur;
        } else if !same && dur == 0 {
            active.duration = frame;
        }
        let with_audio = active.with_audio;
        if ev.end {
            active.ended = true;
        }
        if with_audio {
            if ev.end {
                self.finish_event(on_digit);
            }
            return Verdict::Drop(DropReason::EventWithAudio);
        }

        // The packet stands for the event's time up to its duration, or up to where its
        // sequence number puts its frame when that is later and plausible. Some senders open
        // an event with duration 0 (sipp's dtmf_2833 captures do): that packet still stands for
        // the event's first frame. What the agent's stream does not have yet of that time goes
        // out now, as one frame: lost predecessors' time with it, so the stream stays
        // continuous. A packet whose time went out already (a late or repeated update, a late
        // copy of the end) adds nothing, and goes nowhere: sent in its own slot it would
        // overlap the frames sent, or go back in time.
        let own = if dur == 0 { frame } else { dur };
        let until = match lockstep {
            Some(l) if l > own && l - own <= END_SLOTS * frame => l,
            _ => own,
        };
        if until <= active.covered {
            if ev.end {
                self.report_event(on_digit);
            }
            return Verdict::Drop(DropReason::LateEvent);
        }
        let mut from = active.covered;
        if until - from > MAX_FRAME as u32 {
            from = until - frame;
        }
        active.covered = until;
        let (out_ts, n) = (ts.wrapping_add(from), (until - from) as usize);
        let codec = self.codec.unwrap_or(self.cfg.default_codec);
        let pt = self.last_audio_pt.unwrap_or(codec.payload_type());
        if out.len() < 12 + n {
            return Verdict::Drop(DropReason::OutputTooSmall);
        }

        // Under the event packet's own SSRC and number: its timestamp is of that stream.
        let hl = write_header(out, false, pt, seq, out_ts, ssrc);
        self.fed_end = Some((ssrc, out_ts.wrapping_add(n as u32)));
        self.delay_frame(
            codec,
            Samples::Silence,
            true,
            &mut out[hl..hl + n],
            on_digit,
        );
        self.stats.events_converted += 1;
        self.note_sent(view, out_ts, n);
        if ev.end {
            self.report_event(on_digit);
        }
        Verdict::Forward(hl + n)
    }

    /// Pushes a frame through the delay line piece by piece, writing the delayed (and masked)
    /// samples to `out` (as long as the frame). `force` masks the frame whatever the detectors say.
    fn delay_frame(
        &mut self,
        codec: Codec,
        frame: Samples<'_>,
        force: bool,
        out: &mut [u8],
        on_digit: &mut dyn FnMut(ScrubbedDigit),
    ) {
        let silence = codec.encode(0);
        for (at, piece) in out.chunks_mut(CHUNK).enumerate() {
            let n = piece.len();
            let input = match frame {
                Samples::Audio(payload) => payload.get(at * CHUNK..at * CHUNK + n),
                Samples::Silence => None,
            };
            // Linear samples for the detectors, on the stack: hot in cache whichever call
            // runs next.
            let mut lin = [0i16; CHUNK];
            if let Some(input) = input {
                codec.decode_into(input, &mut lin);
            }
            if force {
                self.forced.set(self.pos, n);
            }
            // The strict detector does not hear synthesized frames: a sender that sends a key
            // both in its audio and as events would otherwise have silence spliced into its tone.
            let mask = self.detect(&lin[..n], input.is_some(), on_digit);
            self.delay_piece(input, silence, piece);
            self.mask_piece(codec, piece, mask);
        }
    }

    /// Runs the detectors over one piece's linear samples; returns the mask of the delayed
    /// samples that go out in its place (bit `i % 64` of word `i / 64` for sample `i`), forced
    /// samples included.
    fn detect(
        &mut self,
        lin: &[i16],
        strict: bool,
        on_digit: &mut dyn FnMut(ScrubbedDigit),
    ) -> [u64; MASK_WORDS] {
        let n = lin.len();
        let mut mask = [0u64; MASK_WORDS];
        if strict {
            // Detector offsets count only the samples it heard; map them back to the stream.
            let mut report = in_band(
                &mut self.last_digit,
                &mut self.stats,
                self.detector_skew,
                on_digit,
            );
            process_both(
                &mut self.presence,
                &mut self.detector,
                lin,
                &mut mask,
                &mut report,
            );
        } else {
            self.presence.process_bits(lin, &mut mask);
            self.detector_skew += n as u64;
        }
        self.forced
            .take(self.pos.wrapping_sub(self.delay as u64), n, &mut mask);
        self.pos += n as u64;
        mask
    }

    /// Writes to `piece` the delayed bytes that go out in place of `input` (its bytes, or
    /// silence when None) and keeps the last `delay` bytes for the next piece.
    fn delay_piece(&mut self, input: Option<&[u8]>, silence: u8, piece: &mut [u8]) {
        let (d, n) = (self.delay, piece.len());
        let Some(line) = self.line.get_mut(..d) else {
            return;
        };
        if n >= d {
            let (head, tail) = piece.split_at_mut(d);
            head.copy_from_slice(line);
            match input {
                Some(input) if input.len() == n => {
                    tail.copy_from_slice(&input[..n - d]);
                    line.copy_from_slice(&input[n - d..]);
                }
                _ => {
                    tail.fill(silence);
                    line.fill(silence);
                }
            }
        } else {
            piece.copy_from_slice(&line[..n]);
            line.copy_within(n.., 0);
            match input {
                Some(input) if input.len() == n => line[d - n..].copy_from_slice(input),
                _ => line[d - n..].fill(silence),
            }
        }
    }

    /// Masks the samples of `piece` that `mask` marks, with the masker's ramps, which may carry
    /// on into the next piece.
    fn mask_piece(&mut self, codec: Codec, piece: &mut [u8], mask: [u64; MASK_WORDS]) {
        let n = piece.len();
        let any = mask.iter().any(|&w| w != 0);
        if !any && !self.was_masking {
            return;
        }
        if any && !self.was_masking {
            self.stats.mask_spans += 1;
        }
        let mut flags = [false; CHUNK];
        for (i, f) in flags[..n].iter_mut().enumerate() {
            *f = mask[i / 64] >> (i % 64) & 1 != 0;
        }
        let mut lin = [0i16; CHUNK];
        codec.decode_into(piece, &mut lin);
        self.masker.apply(&mut lin[..n], &flags[..n]);
        for (w, &l) in piece.iter_mut().zip(lin.iter()) {
            if l != codec.decode(*w) {
                *w = codec.encode(l);
                self.stats.samples_masked += 1;
            }
        }
        // A span (and its ramp) may continue into the next piece.
        self.was_masking = n
            .checked_sub(1)
            .map_or(self.was_masking, |last| flags[last]);
    }

    /// Re-encodes the delay line when the sender changes G.711 law mid-stream.
    fn switch_codec(&mut self, codec: Codec) {
        match self.codec {
            Some(old) if old != codec => {
                for b in &mut self.line[..self.delay] {
                    *b = codec.encode(old.decode(*b));
                }
            }
            None => {
                let silence = codec.encode(0);
                let old_silence = self.cfg.default_codec.encode(0);
                for b in &mut self.line[..self.delay] {
                    if *b == old_silence {
                        *b = silence;
                    }
                }
            }
            _ => {}
        }
        self.codec = Some(codec);
    }

    /// Notes that the packet for input `view` went out at `ts` with `n` samples.
    fn note_sent(&mut self, view: &RtpView<'_>, ts: u32, n: usize) {
        let sent = Sent {
            ssrc: view.ssrc(),
            seq: view.sequence(),
            end_ts: ts.wrapping_add(n as u32),
        };
        let ahead = self
            .front
            .is_none_or(|f| f.ssrc != sent.ssrc || sent.end_ts.wrapping_sub(f.end_ts) as i32 >= 0);
        if ahead {
            self.front = Some(sent);
        }
    }

    /// Whether `view` lies at least `gap` samples past the front of the stream sent, on the
    /// same stream: not a late packet.
    fn after_gap(&self, view: &RtpView<'_>, gap: i32) -> bool {
        self.front.is_some_and(|l| {
            l.ssrc == view.ssrc() && view.timestamp().wrapping_sub(l.end_ts) as i32 >= gap
        })
    }

    /// The sender fell silent (comfort noise, RFC 3389, or a talkspurt after a gap): a tone the
    /// strict detector is hearing has ended, whatever comes next. The scrubber hears packets
    /// in arrival order, where suppressed silence takes no time: without this, two presses
    /// of one key with the pause between suppressed would be one long press.
    fn end_tone(&mut self, on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        let mut report = in_band(
            &mut self.last_digit,
            &mut self.stats,
            self.detector_skew,
            on_digit,
        );
        self.detector.finish(&mut report);
    }

    /// How much time from `ts` the stream of `ssrc` already sent before the packet numbered
    /// `seq`: a carrier that turns a key into events only once it has heard it sends the
    /// onset in-band, and may date the event from the onset (RFC 4733 §2.5.1.1).
    fn already_sent(&self, ssrc: u32, seq: u16, ts: u32) -> u32 {
        match self.front {
            Some(l) if l.ssrc == ssrc && (seq.wrapping_sub(l.seq) as i16) > 0 => {
                u32::try_from(l.end_ts.wrapping_sub(ts) as i32)
                    .ok()
                    .filter(|&t| t <= u32::from(u16::MAX))
                    .unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Where, counted from `ts`, the frame of the packet numbered `seq` ends if the sender
    /// sent one packet per frame since the front of the stream, as senders of RFC 4733 events do
    /// at the audio's packet interval. It places what a duration cannot: a repeated end
    /// packet (after the event), a packet whose predecessors were lost (its frame, and theirs,
    /// not only the time it adds), one whose predecessor arrives after it (not that one's
    /// frame). None when the packets are of different streams or it lands before `ts`.
    fn lockstep_end(&self, ssrc: u32, seq: u16, ts: u32, frame: u32) -> Option<u32> {
        let last = self.front.filter(|l| l.ssrc == ssrc)?;
        let packets = i64::from(seq.wrapping_sub(last.seq) as i16);
        let end = i64::from(last.end_ts.wrapping_sub(ts) as i32) + packets * i64::from(frame);
        u32::try_from(end).ok().filter(|&e| e > 0)
    }

    fn report_event(&mut self, on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        let Some(ev) = self.event.as_mut() else {
            return;
        };
        if let Some(d) = report_once(&mut ev.reported, ev.digit, ev.start_pos, ev.duration) {
            emit_digit(&mut self.last_digit, &mut self.stats, d, on_digit);
        }
    }

    /// Ends the current event (end packets seen, lost, or superseded) and reports its key.
    /// The event is kept, marked ended, so late copies of its packets (same timestamp) are
    /// recognised as stragglers rather than a new key.
    fn finish_event(&mut self, on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        self.report_event(on_digit);
        if let Some(ev) = self.event.as_mut() {
            ev.ended = true;
        }
    }

    /// Flushes at the end of a stream: reports a digit still sounding.
    pub fn finish(&mut self, on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        self.finish_event(on_digit);
        let mut report = in_band(
            &mut self.last_digit,
            &mut self.stats,
            self.detector_skew,
            on_digit,
        );
        self.detector.finish(&mut report);
    }
}

/// An RFC 4733 event heard by a [`DigitTap`].
#[derive(Clone, Copy, Debug)]
struct TapEvent {
    digit: Option<Digit>,
    rtp_ts: u32,
    duration: u32,
    ended: bool,
    start_pos: u64,
    last_seen_ms: u64,
    reported: bool,
}

/// Listens for keys on a stream it must not alter: the agent→caller direction, where the agent
/// keys a payment session's locator on their phone. The strict detector runs on the decoded
/// G.711 audio and RFC 4733 events are parsed; a key carried both ways is reported once. No
/// presence detector, no delay line, no masking: the packets are only read.
///
/// Same rules as the scrubber: no allocation, lock, log or panic per packet, no clock.
pub struct DigitTap {
    event_pt: Option<u8>,
    event_timeout_ms: u64,
    detector: DtmfDetector,
    /// Audio samples heard: the timeline of reported digits.
    pos: u64,
    recent: Recent,
    event: Option<TapEvent>,
    last_digit: Option<ScrubbedDigit>,
    stats: ScrubStats,
}

impl DigitTap {
    /// A tap with the scrubber's detector settings, event payload type and event timeout.
    pub fn new(cfg: &ScrubberConfig) -> DigitTap {
        DigitTap {
            event_pt: cfg.event_pt,
            event_timeout_ms: cfg.event_timeout_ms,
            detector: DtmfDetector::new(cfg.detector.clone()),
            pos: 0,
            recent: Recent::default(),
            event: None,
            last_digit: None,
            stats: ScrubStats::default(),
        }
    }

    /// Counters: `packets_in`, the `digits_*` and `dropped_*` (packets not inspected) apply.
    pub fn stats(&self) -> &ScrubStats {
        &self.stats
    }

    /// Changes the negotiated telephone-event payload type (re-INVITE).
    pub fn set_event_pt(&mut self, pt: Option<u8>) {
        self.event_pt = pt;
    }

    /// Whether an event is sounding without its end seen (see [`Scrubber::event_pending`]).
    pub fn event_pending(&self) -> bool {
        matches!(self.event, Some(ev) if !ev.ended)
    }

    /// Reads one datagram received at `now_ms`. Packets it cannot inspect (malformed, other
    /// payload types, oversize) are counted and ignored; the caller forwards every packet as
    /// it was, whatever this says.
    pub fn observe(&mut self, now_ms: u64, input: &[u8], on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        self.stats.packets_in += 1;
        let view = match RtpView::parse(input) {
            Ok(v) => v,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if self.recent.seen((view.sequence(), view.timestamp())) {
            self.stats.dropped_duplicate += 1;
            return;
        }
        self.tick(now_ms, on_digit);
        let pt = view.payload_type();
        if Some(pt) == self.event_pt {
            self.observe_event(now_ms, &view, on_digit);
        } else if let Some(codec) = Codec::from_payload_type(pt) {
            self.observe_audio(codec, &view, on_digit);
        } else if pt != PT_CN {
            self.stats.dropped_unsupported += 1;
        }
    }

    fn observe_audio(
        &mut self,
        codec: Codec,
        view: &RtpView<'_>,
        on_digit: &mut dyn FnMut(ScrubbedDigit),
    ) {
        let payload = view.payload();
        let n = payload.len();
        if n > MAX_FRAME {
            self.stats.dropped_oversize += 1;
            return;
        }
        if let Some(ev) = self.event
            && !ev.ended
            && view.timestamp().wrapping_sub(ev.rtp_ts) >= ev.duration.saturating_add(n as u32)
        {
            // Audio resumed past the event: its end packets were lost.
            self.finish_event(on_digit);
        }
        let mut report = in_band(&mut self.last_digit, &mut self.stats, 0, on_digit);
        let mut lin = [0i16; CHUNK];
        for piece in payload.chunks(CHUNK) {
            codec.decode_into(piece, &mut lin);
            self.detector.process(&lin[..piece.len()], &mut report);
        }
        self.pos += n as u64;
    }

    fn observe_event(
        &mut self,
        now_ms: u64,
        view: &RtpView<'_>,
        on_digit: &mut dyn FnMut(ScrubbedDigit),
    ) {
        let ev = match TelephoneEvent::parse(view.payload()) {
            Ok(ev) => ev,
            Err(_) => {
                self.stats.dropped_bad_event += 1;
                return;
            }
        };
        let ts = view.timestamp();
        if !matches!(self.event, Some(a) if a.rtp_ts == ts) {
            // RFC 4733 §2.5.1.2: a new timestamp starts a new event.
            self.finish_event(on_digit);
            self.event = Some(TapEvent {
                digit: Digit::from_event_code(ev.event),
                rtp_ts: ts,
                duration: 0,
                ended: false,
                start_pos: self.pos,
                last_seen_ms: now_ms,
                reported: false,
            });
        }
        if let Some(active) = self.event.as_mut() {
            active.last_seen_ms = now_ms;
            active.duration = active.duration.max(u32::from(ev.duration));
        }
        if ev.end {
            self.finish_event(on_digit);
        }
    }

    /// Lets time pass without packets: ends an event whose end packets were all lost
    /// (RFC 4733 §2.5.2.2).
    pub fn tick(&mut self, now_ms: u64, on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        if let Some(ev) = self.event
            && !ev.ended
            && now_ms.saturating_sub(ev.last_seen_ms) >= self.event_timeout_ms
        {
            self.finish_event(on_digit);
        }
    }

    /// Ends the current event and reports its key once; late copies of its packets (same
    /// timestamp) are then stragglers, not a new key.
    fn finish_event(&mut self, on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        let Some(ev) = self.event.as_mut() else {
            return;
        };
        ev.ended = true;
        if let Some(d) = report_once(&mut ev.reported, ev.digit, ev.start_pos, ev.duration) {
            emit_digit(&mut self.last_digit, &mut self.stats, d, on_digit);
        }
    }

    /// Flushes at the end of a stream (or when the tap is switched off): reports a key still
    /// sounding.
    pub fn finish(&mut self, on_digit: &mut dyn FnMut(ScrubbedDigit)) {
        self.finish_event(on_digit);
        let mut report = in_band(&mut self.last_digit, &mut self.stats, 0, on_digit);
        self.detector.finish(&mut report);
    }
}

/// The strict detector's reports as in-band digits on the stream's timeline (`skew`: samples
/// of the stream the detector did not hear), through [`emit_digit`].
fn in_band<'a>(
    last: &'a mut Option<ScrubbedDigit>,
    stats: &'a mut ScrubStats,
    skew: u64,
    on_digit: &'a mut dyn FnMut(ScrubbedDigit),
) -> impl FnMut(DigitEvent) + 'a {
    move |ev: DigitEvent| {
        let d = ScrubbedDigit {
            digit: ev.digit,
            source: DigitSource::InBand,
            start: ev.start + skew,
            end: ev.end + skew,
        };
        emit_digit(last, stats, d, on_digit);
    }
}

/// Reports a digit unless it is the other path's copy of the key just reported.
fn emit_digit(
    last: &mut Option<ScrubbedDigit>,
    stats: &mut ScrubStats,
    d: ScrubbedDigit,
    on_digit: &mut dyn FnMut(ScrubbedDigit),
) {
    if let Some(prev) = *last
        && prev.digit == d.digit
        && prev.source != d.source
        && d.start <= prev.end + DEDUP_GAP
        && prev.start <= d.end + DEDUP_GAP
    {
        stats.digits_deduplicated += 1;
        return;
    }
    match d.source {
        DigitSource::InBand => stats.digits_inband += 1,
        DigitSource::Rfc4733 => stats.digits_rfc4733 += 1,
        DigitSource::SipInfo => {}
    }
    *last = Some(d);
    on_digit(d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::trunk::{KeySpan, TrunkConfig, depacketize, packetize};

    fn key(c: char) -> Digit {
        Digit::from_char(c).unwrap()
    }

    /// A dual tone at about -10 dBm0 per component.
    fn tone(d: Digit, len: usize) -> Vec<i16> {
        let (lo, hi) = d.freqs();
        (0..len)
            .map(|i| {
                let t = i as f64 / 8000.0;
                let v = 7000.0 * (2.0 * std::f64::consts::PI * f64::from(lo) * t).sin()
                    + 7000.0 * (2.0 * std::f64::consts::PI * f64::from(hi) * t).sin();
                v as i16
            })
            .collect()
    }

    /// Speech-like filler: a few drifting harmonics of a low voice, nothing dual-tone-like.
    fn voice(len: usize, seed: u32) -> Vec<i16> {
        let f0 = 110.0 + f64::from(seed % 40);
        (0..len)
            .map(|i| {
                let t = i as f64 / 8000.0;
                let env = 0.5 + 0.5 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
                let mut v = 0.0;
                for h in 1..6 {
                    v += (2.0 * std::f64::consts::PI * f0 * f64::from(h) * t).sin() / f64::from(h);
                }
                (3000.0 * env * v) as i16
            })
            .collect()
    }

    fn run(scrubber: &mut Scrubber, packets: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<ScrubbedDigit>) {
        let mut out = Vec::new();
        let mut digits = Vec::new();
        let mut buf = [0u8; 2048];
        for (i, p) in packets.iter().enumerate() {
            let now = i as u64 * 20;
            if let Verdict::Forward(len) =
                scrubber.process(now, p, &mut buf, &mut |d| digits.push(d))
            {
                out.push(buf[..len].to_vec());
            }
        }
        scrubber.finish(&mut |d| digits.push(d));
        (out, digits)
    }

    fn assert_continuous(out: &[Vec<u8>]) {
        let views: Vec<RtpView<'_>> = out.iter().map(|p| RtpView::parse(p).unwrap()).collect();
        for w in views.windows(2) {
            assert_eq!(
                w[1].sequence(),
                w[0].sequence().wrapping_add(1),
                "sequence gap"
            );
            let step = w[0].payload().len() as u32;
            assert_eq!(
                w[1].timestamp(),
                w[0].timestamp().wrapping_add(step),
                "timestamp jump"
            );
            assert_eq!(w[1].ssrc(), w[0].ssrc(), "SSRC change");
            assert!(Codec::from_payload_type(w[1].payload_type()).is_some());
        }
    }

    /// Per SSRC, in sequence order: timestamps never go back and frames never overlap, and
    /// consecutive sequence numbers are consecutive frames.
    fn assert_in_order(out: &[Vec<u8>], label: &str) {
        let mut views: Vec<RtpView<'_>> = out.iter().map(|p| RtpView::parse(p).unwrap()).collect();
        let base = views[0].sequence();
        views.sort_by_key(|v| (v.ssrc(), v.sequence().wrapping_sub(base) as i16));
        for w in views.windows(2) {
            if w[0].ssrc() != w[1].ssrc() {
                continue;
            }
            let gap = w[1].timestamp().wrapping_sub(w[0].timestamp()) as i32;
            let len = w[0].payload().len() as i32;
            let what = format!(
                "{label}: {} at {} ({len}), then {} at {}",
                w[0].sequence(),
                w[0].timestamp(),
                w[1].sequence(),
                w[1].timestamp()
            );
            assert!(gap >= len, "{what}: back or overlapping");
            if w[1].sequence() == w[0].sequence().wrapping_add(1) {
                assert_eq!(gap, len, "{what}: not consecutive");
            }
            assert!(Codec::from_payload_type(w[1].payload_type()).is_some());
        }
    }

    #[test]
    fn event_packets_lost_or_out_of_order_keep_the_frames_in_order() {
        // The key's frames 5 to 9 go as updates (packets 5 to 8) and the end (9), repeated in
        // the next two frame slots (10, 11); audio resumes at packet 12.
        let spans = [KeySpan {
            digit: key('3'),
            start: 800,
            end: 1600,
        }];
        let packets = packetize(&voice(4800, 9), &TrunkConfig::default(), Some(&spans));
        let swap = |i: usize| {
            let mut p = packets.clone();
            p.swap(i, i + 1);
            p
        };
        let lose = |r: std::ops::Range<usize>| {
            let mut p = packets.clone();
            p.drain(r);
            p
        };
        let cases = [
            ("first update after the second", swap(5), 1),
            ("last update after the end", swap(8), 1),
            ("end after its first repeat", swap(9), 1),
            ("last repeat after the audio", swap(11), 0),
            ("first three packets lost", lose(5..8), 0),
            ("end lost", lose(9..10), 0),
        ];
        for (label, stream, late) in cases {
            let mut s = Scrubber::new(ScrubberConfig::default());
            let (out, digits) = run(&mut s, &stream);
            assert_in_order(&out, label);
            assert_eq!(digits.len(), 1, "{label}");
            assert_eq!(s.stats().dropped_late_event, late, "{label}");
            let rx = depacketize(out.iter().map(|p| p.as_slice()), 80_000);
            assert_eq!(rx.non_audio_packets, 0, "{label}");
        }
    }

    #[test]
    fn a_late_packet_of_the_previous_key_does_not_bring_it_back() {
        // Two keys back to back, no audio between: the first key's last repeated end packet
        // (11) arrives after the second key's first update (12).
        let spans = [
            KeySpan {
                digit: key('1'),
                start: 800,
                end: 1600,
            },
            KeySpan {
                digit: key('1'),
                start: 1920,
                end: 2720,
            },
        ];
        let mut packets = packetize(&voice(4800, 11), &TrunkConfig::default(), Some(&spans));
        packets.swap(11, 12);
        let mut s = Scrubber::new(ScrubberConfig::default());
        let (out, digits) = run(&mut s, &packets);
        assert_eq!(digits.len(), 2, "two keys, each once");
        assert_eq!(s.stats().dropped_late_event, 1);
        assert_in_order(&out, "late packet of the previous key");
    }

    #[test]
    fn audio_of_a_new_ssrc_ends_a_live_event_and_passes_untouched() {
        // A key as events whose end packets were lost; then the media server switches and the
        // new stream's timestamps happen to fall inside the old event's span. Its speech is
        // not the key: it must pass, not be masked as the key's in-band copy.
        let spans = [KeySpan {
            digit: key('6'),
            start: 800,
            end: 1600,
        }];
        let old = packetize(&voice(1600, 12), &TrunkConfig::default(), Some(&spans));
        let mut packets: Vec<Vec<u8>> = old
            .into_iter()
            .filter(|p| {
                let v = RtpView::parse(p).unwrap();
                v.payload_type() != 101 || !TelephoneEvent::parse(v.payload()).unwrap().end
            })
            .collect();
        let switched = TrunkConfig {
            ssrc: 0x0bad_5eed,
            first_seq: 40_000,
            first_ts: 80_000 + 960,
            ..TrunkConfig::default()
        };
        let fresh = packetize(&voice(3200, 13), &switched, None);
        packets.extend(fresh.iter().cloned());
        let mut s = Scrubber::new(ScrubberConfig::default());
        let mut digits = Vec::new();
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        for (i, p) in packets.iter().enumerate() {
            if let Verdict::Forward(len) =
                s.process(i as u64 * 20, p, &mut buf, &mut |d| digits.push(d))
            {
                out.push(buf[..len].to_vec());
            }
            if *p == fresh[0] {
                assert!(!s.event_pending(), "the new stream ends the old event");
                assert_eq!(digits.len(), 1, "and its key is reported");
            }
        }
        let d = s.delay_samples();
        let sent: Vec<u8> = fresh.iter().flat_map(|p| p[12..].to_vec()).collect();
        let got: Vec<u8> = out[out.len() - fresh.len()..]
            .iter()
            .flat_map(|p| p[12..].to_vec())
            .collect();
        // Past the masker's ramp out of the event's frames.
        let ramp = 240;
        assert_eq!(
            got[d + ramp..],
            sent[ramp..sent.len() - d],
            "the new stream's speech passes bit-exact behind the delay line"
        );
    }

    #[test]
    fn a_late_audio_packet_from_before_an_event_leaves_it_sounding() {
        let spans = [KeySpan {
            digit: key('0'),
            start: 800,
            end: 1600,
        }];
        let mut packets = packetize(&voice(4800, 14), &TrunkConfig::default(), Some(&spans));
        // The last audio packet before the key arrives after the key's first update.
        packets.swap(4, 5);
        let mut s = Scrubber::new(ScrubberConfig::default());
        let mut buf = [0u8; 2048];
        let mut digits = Vec::new();
        for (i, p) in packets.iter().take(6).enumerate() {
            s.process(i as u64 * 20, p, &mut buf, &mut |d| digits.push(d));
        }
        assert!(s.event_pending(), "the key is still sounding");
        assert!(digits.is_empty(), "and not reported before its end");
        let mut s = Scrubber::new(ScrubberConfig::default());
        let (out, digits) = run(&mut s, &packets);
        assert_eq!(digits.len(), 1);
        assert_in_order(&out, "late audio before an event");
    }

    /// Voice with key `c` at 1120..1920, from a carrier that sends the key's first 15 ms
    /// in-band (frame 7, 1120..1280) and then events dated from the onset (from packet 8).
    fn onset_then_backdated_event(seed: u32, c: char) -> Vec<Vec<u8>> {
        let mut audio = voice(6400, seed);
        audio[1120..1920].copy_from_slice(&tone(key(c), 800));
        let spans = [KeySpan {
            digit: key(c),
            start: 1120,
            end: 1920,
        }];
        let imp = crate::rtp::trunk::Impairments {
            late_events: Some(crate::rtp::trunk::LateEvents {
                fragment: 120,
                backdated: true,
            }),
            ..Default::default()
        };
        crate::rtp::trunk::deliver(&audio, &TrunkConfig::default(), Some(&spans), &imp)
            .into_iter()
            .map(|p| p.bytes)
            .collect()
    }

    #[test]
    fn an_event_dated_back_to_its_onset_starts_after_the_onset_sent_even_out_of_order() {
        // The frame carrying the key's onset in-band arrives before the frame preceding it,
        // and the event's first packet is lost: the next one, dated from the onset, must not
        // go over the onset's frame, which went out before the late one.
        let mut packets = onset_then_backdated_event(15, '9');
        // Frame 7 (1120..1280) is the onset in-band; packet 8 the event's first.
        packets.swap(6, 7);
        packets.remove(8);
        let mut s = Scrubber::new(ScrubberConfig::default());
        let (out, digits) = run(&mut s, &packets);
        assert_in_order(&out, "onset out of order");
        assert_eq!(digits.len(), 1);
    }

    #[test]
    fn a_pause_suppressed_between_two_presses_of_one_key_still_parts_them() {
        // "1", 60 ms of digital silence, "1": a sender without hang-over suppresses the pause,
        // so in arrival order the two tones touch.
        let mut audio = vec![0i16; 800];
        for _ in 0..2 {
            audio.extend(tone(key('1'), 480));
            audio.extend(vec![0; 480]);
        }
        audio.extend(vec![0; 1120]);
        let imp = crate::rtp::trunk::Impairments {
            silence_suppression: Some(crate::rtp::trunk::SilenceSuppression {
                threshold: 0,
                hangover: 0,
                cn_every: 4,
            }),
            ..Default::default()
        };
        let packets: Vec<Vec<u8>> =
            crate::rtp::trunk::deliver(&audio, &TrunkConfig::default(), None, &imp)
                .into_iter()
                .map(|p| p.bytes)
                .collect();
        // A sender that sends no comfort noise numbers its packets without gaps.
        let mut without_cn: Vec<Vec<u8>> = packets
            .iter()
            .filter(|p| RtpView::parse(p).unwrap().payload_type() != PT_CN)
            .cloned()
            .collect();
        for (i, p) in without_cn.iter_mut().enumerate() {
            let mut v = crate::rtp::packet::RtpViewMut::parse(p).unwrap();
            v.set_sequence(1000 + i as u16);
        }
        for (label, stream) in [("comfort noise", packets), ("marker alone", without_cn)] {
            let mut s = Scrubber::new(ScrubberConfig::default());
            let (_, digits) = run(&mut s, &stream);
            let keys: String = digits.iter().map(|d| d.digit.reveal()).collect();
            assert_eq!(keys, "11", "{label}");
        }
    }

    #[test]
    fn an_event_dated_back_to_an_onset_sent_in_band_follows_that_audio() {
        // The carrier sent the key's first 20 ms in-band, then events timestamped at the
        // onset: their first duration covers audio the agent's stream already has.
        let mut audio = voice(6400, 10);
        audio[1000..1800].copy_from_slice(&tone(key('8'), 800));
        let spans = [KeySpan {
            digit: key('8'),
            start: 1000,
            end: 1800,
        }];
        let imp = crate::rtp::trunk::Impairments {
            late_events: Some(crate::rtp::trunk::LateEvents {
                fragment: 160,
                backdated: true,
            }),
            ..Default::default()
        };
        let packets: Vec<Vec<u8>> =
            crate::rtp::trunk::deliver(&audio, &TrunkConfig::default(), Some(&spans), &imp)
                .into_iter()
                .map(|p| p.bytes)
                .collect();
        let mut s = Scrubber::new(ScrubberConfig::default());
        let (out, digits) = run(&mut s, &packets);
        assert_eq!(out.len(), packets.len());
        assert_in_order(&out, "backdated");
        assert_eq!(digits.len(), 1);
        assert_eq!(digits[0].source, DigitSource::Rfc4733);
    }

    #[test]
    fn an_onset_sent_in_band_that_arrives_after_its_event_is_dropped() {
        // The carrier sent the key's first 20 ms in-band, then events dated from the onset;
        // the event's first packet overtook the onset's frame. Its frame already filled that
        // time: sent, the onset would overlap it in the agent's stream.
        let mut packets = onset_then_backdated_event(11, '6');
        // Packet 7 carries the onset in-band (1120..1280), packet 8 the event's first.
        assert_eq!(RtpView::parse(&packets[7]).unwrap().payload_type(), 0);
        assert_eq!(RtpView::parse(&packets[8]).unwrap().payload_type(), 101);
        packets.swap(7, 8);
        let mut s = Scrubber::new(ScrubberConfig::default());
        let (out, digits) = run(&mut s, &packets);
        assert_eq!(out.len(), packets.len() - 1);
        assert_eq!(s.stats().dropped_late_audio, 1);
        assert_in_order(&out, "onset after its event");
        assert_eq!(digits.len(), 1);
    }

    #[test]
    fn off_is_a_bit_exact_pass_through() {
        let mut s = Scrubber::new(ScrubberConfig {
            enabled: false,
            ..ScrubberConfig::default()
        });
        let mut audio = voice(4000, 1);
        audio.extend(tone(key('5'), 800));
        let spans = [KeySpan {
            digit: key('7'),
            start: 1600,
            end: 2400,
        }];
        let packets = packetize(&audio, &TrunkConfig::default(), Some(&spans));
        let (out, digits) = run(&mut s, &packets);
        assert_eq!(out, packets);
        assert!(digits.is_empty());
    }

    #[test]
    fn speech_leaves_bit_exact_behind_the_delay_line() {
        let mut s = Scrubber::new(ScrubberConfig::default());
        let d = s.delay_samples();
        let audio = voice(8000, 7);
        let cfg = TrunkConfig::default();
        let packets = packetize(&audio, &cfg, None);
        let (out, digits) = run(&mut s, &packets);
        assert!(digits.is_empty());
        assert_eq!(out.len(), packets.len());
        for (o, i) in out.iter().zip(&packets) {
            assert_eq!(o[..12], i[..12], "audio keeps its header");
        }
        let sent: Vec<u8> = packets.iter().flat_map(|p| p[12..].to_vec()).collect();
        let got: Vec<u8> = out.iter().flat_map(|p| p[12..].to_vec()).collect();
        assert_eq!(
            got[d..],
            sent[..sent.len() - d],
            "speech must pass bit-exact, delayed by D"
        );
        assert_eq!(s.stats().samples_masked, 0);
    }

    #[test]
    fn frame_length_does_not_change_what_the_agent_hears() {
        // Frames longer than the scrubber's working piece (20 ms) go through in pieces; the
        // audio out, the masking and the digits must be those of 20 ms frames.
        let mut audio = voice(6000, 5);
        audio.extend(tone(key('3'), 720));
        audio.extend(voice(2400, 6));
        audio.extend(tone(key('#'), 480));
        audio.extend(voice(4800, 8));
        let heard = |ptime: usize| {
            let cfg = TrunkConfig {
                ptime,
                ..TrunkConfig::default()
            };
            let packets = packetize(&audio, &cfg, None);
            let mut s = Scrubber::new(ScrubberConfig::default());
            let (out, digits) = run(&mut s, &packets);
            let payload: Vec<u8> = out.iter().flat_map(|p| p[12..].to_vec()).collect();
            let keys: Vec<(Digit, u64, u64)> =
                digits.iter().map(|d| (d.digit, d.start, d.end)).collect();
            (payload, keys, s.stats().samples_masked)
        };
        let (base, keys, masked) = heard(160);
        assert_eq!(keys.len(), 2, "both keys heard at 20 ms");
        assert!(masked > 1000, "the keys are masked at 20 ms");
        // 40 and 200 give pieces shorter than the delay line (80), which it shifts through.
        for ptime in [40, 80, 200, 240, 480, 1600] {
            let (payload, k, m) = heard(ptime);
            assert_eq!(payload, base, "audio at {ptime} samples per packet");
            assert_eq!(k, keys, "digits at {ptime} samples per packet");
            assert_eq!(m, masked, "masked samples at {ptime} samples per packet");
        }
    }

    #[test]
    fn events_become_masked_audio_with_continuous_timing() {
        let mut s = Scrubber::new(ScrubberConfig::default());
        let mut audio = voice(16000, 3);
        let mut spans = Vec::new();
        for (k, c) in "4111".chars().enumerate() {
            let start = 2000 + k as u64 * 1600;
            spans.push(KeySpan {
                digit: key(c),
                start,
                end: start + 800,
            });
        }
        for sp in &spans {
            let t = tone(sp.digit, 800);
            audio[sp.start as usize..sp.end as usize].copy_from_slice(&t);
        }
        let packets = packetize(&audio, &TrunkConfig::default(), Some(&spans));
        let (out, digits) = run(&mut s, &packets);
        assert_eq!(
            out.len(),
            packets.len(),
            "packet count in = packet count out"
        );
        assert_continuous(&out);
        let rx = depacketize(out.iter().map(|p| p.as_slice()), 80_000);
        assert_eq!(
            rx.non_audio_packets, 0,
            "no telephone-event reaches the agent"
        );
        let keys: String = digits.iter().map(|d| d.digit.reveal()).collect();
        assert_eq!(keys, "4111");
        assert!(digits.iter().all(|d| d.source == DigitSource::Rfc4733));
        assert!(s.stats().events_converted > 0);
    }

    #[test]
    fn an_always_scrubber_cannot_be_switched_off() {
        let cfg = ScrubberConfig {
            enabled: false,
            always: true,
            ..ScrubberConfig::default()
        };
        let mut s = Scrubber::new(cfg);
        assert!(
            s.is_enabled(),
            "always wins over a start-up `enabled = false`"
        );
        assert!(!s.set_enabled(false, &mut |_| {}), "the switch is refused");
        assert!(s.is_enabled());
        let spans = [KeySpan {
            digit: key('5'),
            start: 800,
            end: 1600,
        }];
        let packets = packetize(&voice(4000, 4), &TrunkConfig::default(), Some(&spans));
        let (out, digits) = run(&mut s, &packets);
        let rx = depacketize(out.iter().map(|p| p.as_slice()), 32_000);
        assert_eq!(
            rx.non_audio_packets, 0,
            "the key's events are still stripped"
        );
        assert_eq!(digits.len(), 1);

        let mut on_demand = Scrubber::new(ScrubberConfig::default());
        assert!(on_demand.set_enabled(false, &mut |_| {}));
        assert!(!on_demand.is_enabled());
    }

    #[test]
    fn lost_end_packets_time_out_into_one_digit() {
        let mut s = Scrubber::new(ScrubberConfig::default());
        let spans = [KeySpan {
            digit: key('9'),
            start: 800,
            end: 1600,
        }];
        let packets = packetize(&voice(4000, 2), &TrunkConfig::default(), Some(&spans));
        // Keep only the packets before the end packets: the E-bit copies are all lost.
        let cut: Vec<Vec<u8>> = packets
            .iter()
            .take_while(|p| {
                let v = RtpView::parse(p).unwrap();
                v.payload_type() != 101 || !TelephoneEvent::parse(v.payload()).unwrap().end
            })
            .cloned()
            .collect();
        let mut digits = Vec::new();
        let mut buf = [0u8; 2048];
        for (i, p) in cut.iter().enumerate() {
            s.process(i as u64 * 20, p, &mut buf, &mut |d| digits.push(d));
        }
        assert!(digits.is_empty(), "not reported before the timeout");
        s.tick(cut.len() as u64 * 20 + 1000, &mut |d| digits.push(d));
        assert_eq!(digits.len(), 1);
        assert_eq!(digits[0].digit, key('9'));
    }

    #[test]
    fn duplicates_are_dropped_and_reordered_updates_keep_the_timeline() {
        let mut s = Scrubber::new(ScrubberConfig::default());
        let spans = [KeySpan {
            digit: key('3'),
            start: 800,
            end: 2400,
        }];
        let mut packets = packetize(&voice(4800, 5), &TrunkConfig::default(), Some(&spans));
        packets.insert(7, packets[6].clone());
        let mut buf = [0u8; 2048];
        let mut digits = Vec::new();
        let mut dropped = 0;
        for (i, p) in packets.iter().enumerate() {
            if let Verdict::Drop(DropReason::Duplicate) =
                s.process(i as u64 * 20, p, &mut buf, &mut |d| digits.push(d))
            {
                dropped += 1;
            }
        }
        assert_eq!(dropped, 1);
        assert_eq!(digits.len(), 1);
    }

    #[test]
    fn a_duplicate_arriving_after_other_packets_is_still_dropped() {
        // Speech with a key in-band: a copy of a tone packet three packets later would put the
        // same audio through the delay line twice and out under one sequence number twice.
        let mut audio = voice(6400, 8);
        audio[1600..2400].copy_from_slice(&tone(key('2'), 800));
        let packets = packetize(&audio, &TrunkConfig::default(), None);
        let mut late = packets.clone();
        late.insert(14, packets[11].clone());
        late.insert(24, packets[20].clone());
        let mut s = Scrubber::new(ScrubberConfig::default());
        let (out, digits) = run(&mut s, &late);
        assert_eq!(s.stats().dropped_duplicate, 2);
        assert_eq!(out.len(), packets.len());
        assert_continuous(&out);
        assert_eq!(digits.len(), 1);

        let mut tap = DigitTap::new(&ScrubberConfig::default());
        for (i, p) in late.iter().enumerate() {
            tap.observe(i as u64 * 20, p, &mut |_| {});
        }
        assert_eq!(tap.stats().dropped_duplicate, 2);
    }

    #[test]
    fn a_key_sent_in_band_and_as_events_is_one_digit() {
        // Sender sends the tone in its audio and RFC 4733 events for the same span.
        let mut s = Scrubber::new(ScrubberConfig::default());
        let mut audio = voice(6400, 4);
        audio[1600..2400].copy_from_slice(&tone(key('6'), 800));
        let cfg = TrunkConfig::default();
        let inband = packetize(&audio, &cfg, None);
        let spans = [KeySpan {
            digit: key('6'),
            start: 1600,
            end: 2400,
        }];
        let with_events = packetize(&audio, &cfg, Some(&spans));
        let events: Vec<Vec<u8>> = with_events
            .into_iter()
            .filter(|p| RtpView::parse(p).unwrap().payload_type() == 101)
            .collect();
        // Interleave: each event packet right after the audio packet of its time.
        let mut mixed = Vec::new();
        let mut ev = events.into_iter();
        for (i, p) in inband.into_iter().enumerate() {
            mixed.push(p);
            if (10..=14).contains(&i) {
                mixed.extend(ev.next());
            }
        }
        mixed.extend(ev);
        let (out, digits) = run(&mut s, &mixed);
        assert_eq!(
            digits.len(),
            1,
            "one key, reported once: {:?}",
            digits
                .iter()
                .map(|d| (d.source, d.start, d.end))
                .collect::<Vec<_>>()
        );
        assert_eq!(digits[0].digit, key('6'));
        let rx = depacketize(out.iter().map(|p| p.as_slice()), 80_000);
        assert_eq!(rx.non_audio_packets, 0);
    }

    #[test]
    fn malformed_packets_are_dropped_and_counted() {
        let mut s = Scrubber::new(ScrubberConfig::default());
        let mut buf = [0u8; 2048];
        let bad: [&[u8]; 4] = [
            &[0x80, 0, 0],
            &[0x40, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x80, 101, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2],
        ];
        for p in bad {
            assert!(matches!(
                s.process(0, p, &mut buf, &mut |_| {}),
                Verdict::Drop(_)
            ));
        }
        assert_eq!(s.stats().dropped_malformed + s.stats().dropped_bad_event, 4);
        assert_eq!(s.stats().packets_out, 0);
    }

    #[test]
    fn uninspectable_payloads_are_dropped_while_scrubbing() {
        let mut s = Scrubber::new(ScrubberConfig::default());
        let mut pkt = vec![0u8; 32];
        write_header(&mut pkt, false, 18, 1, 160, 7);
        let mut buf = [0u8; 2048];
        assert_eq!(
            s.process(0, &pkt, &mut buf, &mut |_| {}),
            Verdict::Drop(DropReason::UnsupportedPayload(18))
        );
    }

    #[test]
    fn tap_hears_in_band_and_event_keys_without_a_copy() {
        let mut audio = vec![0i16; 800];
        audio.extend(tone(key('4'), 800));
        audio.extend(vec![0; 800]);
        audio.extend(tone(key('9'), 800));
        audio.extend(vec![0; 1600]);
        let spans = [KeySpan {
            digit: key('9'),
            start: 2400,
            end: 3200,
        }];
        let packets = packetize(&audio, &TrunkConfig::default(), Some(&spans));
        let mut tap = DigitTap::new(&ScrubberConfig::default());
        let mut got = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            tap.observe(i as u64 * 20, p, &mut |d| got.push(d));
        }
        tap.finish(&mut |d| got.push(d));
        let keys: String = got.iter().map(|d| d.digit.reveal()).collect();
        assert_eq!(keys, "49");
        assert_eq!(got[0].source, DigitSource::InBand);
        assert_eq!(got[1].source, DigitSource::Rfc4733);
        assert_eq!(tap.stats().packets_in, packets.len() as u64);
    }
}
