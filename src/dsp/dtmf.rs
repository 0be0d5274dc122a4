//! DTMF detection. Two signals from one Goertzel front end (DESIGN.md §4):
//! a strict Q.24 digit decision for capture and scan, and a fast presence signal for masking.

use crate::digit::Digit;

/// A digit decided by the strict detector, with exact sample offsets (absolute, from the
/// first sample the detector was fed). Emitted once the tone has ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigitEvent {
    pub digit: Digit,
    /// First sample of the tone.
    pub start: u64,
    /// One past the last sample of the tone.
    pub end: u64,
}

/// Strict digit detector configuration (ITU-T Q.24 figures by default).
#[derive(Clone, Debug)]
pub struct DetectorConfig {}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {}
    }
}

/// Strict detector: reports each key exactly once, with its span.
pub struct DtmfDetector {}

impl DtmfDetector {
    pub fn new(_cfg: DetectorConfig) -> Self {
        DtmfDetector {}
    }

    /// Feeds linear samples (8 kHz); calls `on_digit` for every digit that has ended.
    pub fn process(&mut self, _samples: &[i16], _on_digit: &mut dyn FnMut(DigitEvent)) {}

    /// Ends the stream: reports a digit still sounding at the last sample.
    pub fn finish(&mut self, _on_digit: &mut dyn FnMut(DigitEvent)) {}
}

/// Presence detector configuration.
#[derive(Clone, Debug)]
pub struct PresenceConfig {
    /// Decision latency in samples: the mask for sample `n` is known once sample `n + delay`
    /// has been fed. This is the scrubber's delay line length D.
    pub delay: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig { delay: 80 }
    }
}

/// Fast, generous presence detector that drives masking.
pub struct PresenceDetector {
    delay: usize,
}

impl PresenceDetector {
    pub fn new(cfg: PresenceConfig) -> Self {
        PresenceDetector { delay: cfg.delay }
    }

    /// Samples of look-ahead this detector needs (D).
    pub fn delay(&self) -> usize {
        self.delay
    }

    /// Feeds `input`; writes into `mask[i]` whether the sample `delay()` samples before
    /// `input[i]` must be masked. `mask.len()` must equal `input.len()`. Samples before the
    /// start of the stream are reported unmasked. Never allocates.
    pub fn process(&mut self, input: &[i16], mask: &mut [bool]) {
        let _ = input;
        mask.iter_mut().for_each(|m| *m = false);
    }

    /// Forgets all history (used when scrubbing is switched on mid-stream).
    pub fn reset(&mut self) {}
}
