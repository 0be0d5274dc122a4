//! Reading a locator from keys: the loop model's "locator as DTMF after answer" and the inline
//! model's "agent keys the locator on their own phone".
//!
//! A contact flow sends the locator after a few pauses (PCI Pal's seed dials `,,1234`), so the
//! time before the first key does not count; between keys a gap longer than the inter-key limit
//! starts the locator again. `*` clears what was keyed, `#` ends it early (a short locator then
//! simply matches no session). A key carried both in-band and as an RFC 4733 event arrives
//! here once: the scrubber and the agent-side tap report it once. Onsets are not used to tell
//! keys apart, because a stream of events without audio between them (the tap's timeline only
//! moves with audio) gives two presses of one key the same onset.
//!
//! Sans-IO: times are the caller's milliseconds. A locator is not card data, but the collector
//! never logs what it holds either.

use crate::digit::Digit;
use crate::payment::session::{LOCATOR_LEN, Locator};

/// Default gap between two keys of one locator (ITU-T E.161-style keying by a PBX is ~100 ms
/// apart; a person keying on a phone is well inside 3 s).
pub const DEFAULT_INTER_KEY_MS: u64 = 3_000;

/// Collects keys into a locator of a fixed length.
#[derive(Clone, Debug)]
pub struct LocatorCollector {
    len: usize,
    inter_key_ms: u64,
    keys: String,
    last_ms: Option<u64>,
}

impl LocatorCollector {
    /// `len` is clamped to the locator lengths the API hands out ([`LOCATOR_LEN`]).
    pub fn new(len: usize, inter_key_ms: u64) -> LocatorCollector {
        let len = len.clamp(*LOCATOR_LEN.start(), *LOCATOR_LEN.end());
        LocatorCollector {
            len,
            inter_key_ms,
            keys: String::with_capacity(len),
            last_ms: None,
        }
    }

    /// Keys held towards the next locator.
    pub fn pending(&self) -> usize {
        self.keys.len()
    }

    /// One key with its onset. Returns a locator when one is complete (the collector is then
    /// empty again, ready for another try).
    pub fn push(&mut self, digit: Digit, at_ms: u64) -> Option<Locator> {
        if let Some(t) = self.last_ms
            && at_ms.saturating_sub(t) > self.inter_key_ms
        {
            self.keys.clear();
        }
        self.last_ms = Some(at_ms);
        match digit.reveal() {
            '*' => {
                self.keys.clear();
                None
            }
            '#' => self.finish(),
            c @ '0'..='9' => {
                self.keys.push(c);
                if self.keys.len() >= self.len {
                    self.finish()
                } else {
                    None
                }
            }
            // A-D are never part of a locator.
            _ => None,
        }
    }

    fn finish(&mut self) -> Option<Locator> {
        let out = Locator::parse(&self.keys).ok();
        self.keys.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(c: &mut LocatorCollector, s: &str, start: u64, step: u64) -> Vec<String> {
        s.chars()
            .enumerate()
            .filter_map(|(i, ch)| c.push(Digit::from_char(ch).unwrap(), start + step * i as u64))
            .map(|l| l.as_str().to_string())
            .collect()
    }

    #[test]
    fn fixed_length_after_leading_pause() {
        let mut c = LocatorCollector::new(4, DEFAULT_INTER_KEY_MS);
        // The first key may come any time after answer.
        assert_eq!(keys(&mut c, "4821", 9_000, 150), vec!["4821"]);
        assert_eq!(c.pending(), 0);
        // A second locator after it is read too.
        assert_eq!(keys(&mut c, "0007", 20_000, 150), vec!["0007"]);
    }

    #[test]
    fn repeated_presses_count_even_with_one_onset() {
        // Events without audio between them: every key carries the same onset.
        let mut c = LocatorCollector::new(4, DEFAULT_INTER_KEY_MS);
        assert_eq!(keys(&mut c, "0077", 5_000, 0), vec!["0077"]);
    }

    #[test]
    fn star_clears_hash_ends_and_gaps_restart() {
        let mut c = LocatorCollector::new(4, 3_000);
        assert_eq!(keys(&mut c, "12*3456", 0, 200), vec!["3456"]);
        // `#` ends a short locator: it parses (3 digits) and will match no 4-digit session.
        assert_eq!(keys(&mut c, "123#", 10_000, 200), vec!["123"]);
        // Too short to be a locator at all: nothing.
        assert!(keys(&mut c, "12#", 20_000, 200).is_empty());
        // A long gap drops the partial locator.
        assert!(keys(&mut c, "98", 30_000, 200).is_empty());
        assert_eq!(keys(&mut c, "7654", 40_000, 200), vec!["7654"]);
        // A-D are ignored.
        assert_eq!(keys(&mut c, "1A234", 50_000, 200), vec!["1234"]);
    }

    #[test]
    fn length_is_clamped_to_locator_lengths() {
        let mut c = LocatorCollector::new(1, 3_000);
        assert!(keys(&mut c, "12", 0, 100).is_empty());
        assert_eq!(keys(&mut c, "3", 200, 100), vec!["123"]);
    }
}
