//! RFC 4733 telephone-event payload parse and generate (§2.3).
//!
//! Owns the 4-octet event block and the walk over a payload that packs several of them
//! (§2.5.1.5). The event code is the key a caller pressed: it must never appear in `Debug`,
//! errors or logs; [`TelephoneEvent::digit`] hands it over as a [`Digit`], which prints `•`.

use crate::digit::Digit;

/// Size of one event block (RFC 4733 §2.3, Figure 1).
pub const EVENT_BLOCK_LEN: usize = 4;

/// Largest volume a block can carry: 6 bits, meaning −63 dBm0 (RFC 4733 §2.3.4).
pub const MAX_VOLUME: u8 = 0x3f;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("telephone-event payload is not a whole number of 4-byte events")]
    BadLength,
    #[error("telephone-event payload is empty")]
    Empty,
}

/// One telephone-event block (RFC 4733 §2.3).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code; 0-15 are DTMF keys.
    pub event: u8,
    /// E bit: this is (one copy of) the final packet of the event.
    pub end: bool,
    /// Power level, 0 to -63 dBm0, stored as the positive number.
    pub volume: u8,
    /// Duration in timestamp units since the event's RTP timestamp.
    pub duration: u16,
}

impl std::fmt::Debug for TelephoneEvent {
    // The event code is the key the caller pressed: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelephoneEvent")
            .field("event", &"•")
            .field("end", &self.end)
            .field("volume", &self.volume)
            .field("duration", &self.duration)
            .finish()
    }
}

/// Checks that a payload is one or more whole blocks (RFC 4733 §2.3, §2.5.1.5).
fn check_len(payload: &[u8]) -> Result<(), EventError> {
    if payload.is_empty() {
        Err(EventError::Empty)
    } else if !payload.len().is_multiple_of(EVENT_BLOCK_LEN) {
        Err(EventError::BadLength)
    } else {
        Ok(())
    }
}

impl TelephoneEvent {
    /// Parses the first event of a payload, after checking the whole payload is made of
    /// 4-byte blocks. The R bit is ignored on receive (RFC 4733 §2.3.3).
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, EventError> {
        check_len(payload)?;
        let block = payload
            .first_chunk::<EVENT_BLOCK_LEN>()
            .ok_or(EventError::BadLength)?;
        Ok(TelephoneEvent::from_block(block))
    }

    /// Every event block in a payload, in order. RFC 4733 §2.5.1.5 lets a sender pack several
    /// consecutive events into one packet; the last block is the current one.
    pub fn parse_all(payload: &[u8]) -> Result<EventBlocks<'_>, EventError> {
        check_len(payload)?;
        Ok(EventBlocks {
            chunks: payload.chunks_exact(EVENT_BLOCK_LEN),
        })
    }

    /// Decodes one block. Total: every 4-octet pattern is some event.
    pub fn from_block(block: &[u8; EVENT_BLOCK_LEN]) -> TelephoneEvent {
        TelephoneEvent {
            event: block[0],
            end: block[1] & 0x80 != 0,
            // §2.3.3: R is reserved, set to zero by senders and ignored by receivers.
            volume: block[1] & MAX_VOLUME,
            duration: u16::from_be_bytes([block[2], block[3]]),
        }
    }

    /// Writes the 4-byte block. R is sent as zero; a volume above 63 (−63 dBm0) is clamped,
    /// since the field has only 6 bits (§2.3.4).
    pub fn write(&self, out: &mut [u8; 4]) {
        out[0] = self.event;
        out[1] = if self.end { 0x80 } else { 0 } | self.volume.min(MAX_VOLUME);
        [out[2], out[3]] = self.duration.to_be_bytes();
    }

    /// The block as bytes.
    pub fn to_bytes(&self) -> [u8; EVENT_BLOCK_LEN] {
        let mut out = [0; EVENT_BLOCK_LEN];
        self.write(&mut out);
        out
    }

    /// The DTMF key, for event codes 0-15 (RFC 4733 §3.2); `None` for other events.
    pub fn digit(&self) -> Option<Digit> {
        Digit::from_event_code(self.event)
    }
}

/// Iterator over the event blocks of a validated payload.
#[derive(Clone, Debug)]
pub struct EventBlocks<'a> {
    chunks: std::slice::ChunksExact<'a, u8>,
}

impl Iterator for EventBlocks<'_> {
    type Item = TelephoneEvent;

    fn next(&mut self) -> Option<TelephoneEvent> {
        let block = self.chunks.next()?.first_chunk::<EVENT_BLOCK_LEN>()?;
        Some(TelephoneEvent::from_block(block))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.chunks.size_hint()
    }
}

impl ExactSizeIterator for EventBlocks<'_> {}

impl DoubleEndedIterator for EventBlocks<'_> {
    fn next_back(&mut self) -> Option<TelephoneEvent> {
        let block = self.chunks.next_back()?.first_chunk::<EVENT_BLOCK_LEN>()?;
        Some(TelephoneEvent::from_block(block))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_rfc_layout() {
        // Key 9, E bit, R bit set (ignored), volume 10, duration 1600.
        let e = TelephoneEvent::parse(&[9, 0x80 | 0x40 | 10, 0x06, 0x40]).unwrap();
        assert_eq!(e.event, 9);
        assert!(e.end);
        assert_eq!(e.volume, 10);
        assert_eq!(e.duration, 1600);
        assert_eq!(e.digit(), Digit::from_char('9'));
        let e = TelephoneEvent::parse(&[16, 0x3f, 0, 0]).unwrap();
        assert!(!e.end);
        assert_eq!(e.volume, 63);
        assert_eq!(e.digit(), None);
    }

    #[test]
    fn write_clears_r_and_clamps_volume() {
        let e = TelephoneEvent {
            event: 11,
            end: true,
            volume: 200,
            duration: 0xabcd,
        };
        assert_eq!(e.to_bytes(), [11, 0x80 | 0x3f, 0xab, 0xcd]);
        let e = TelephoneEvent {
            end: false,
            volume: 7,
            ..e
        };
        assert_eq!(e.to_bytes(), [11, 7, 0xab, 0xcd]);
    }

    #[test]
    fn lengths_are_checked() {
        assert_eq!(TelephoneEvent::parse(&[]), Err(EventError::Empty));
        for len in [1, 2, 3, 5, 6, 7, 9] {
            let p = vec![1u8; len];
            assert_eq!(TelephoneEvent::parse(&p), Err(EventError::BadLength));
            assert_eq!(
                TelephoneEvent::parse_all(&p).map(|i| i.count()),
                Err(EventError::BadLength)
            );
        }
    }

    #[test]
    fn packed_blocks_come_out_in_order() {
        let p = [1, 0x80 | 10, 0, 160, 2, 0x80 | 10, 0, 200, 3, 10, 0, 80];
        let all: Vec<_> = TelephoneEvent::parse_all(&p).unwrap().collect();
        assert_eq!(all.len(), 3);
        assert_eq!(all.iter().map(|e| e.event).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            all.iter().map(|e| e.duration).collect::<Vec<_>>(),
            [160, 200, 80]
        );
        assert_eq!(TelephoneEvent::parse(&p).unwrap(), all[0]);
        let last = TelephoneEvent::parse_all(&p).unwrap().next_back().unwrap();
        assert_eq!(last.event, 3);
        assert!(!last.end);
    }

    #[test]
    fn debug_hides_the_key() {
        let shown = |code| {
            format!(
                "{:?}",
                TelephoneEvent {
                    event: code,
                    end: false,
                    volume: 10,
                    duration: 160,
                }
            )
        };
        // Events that differ only in the key must print identically.
        let first = shown(0);
        assert!(first.contains('•'), "{first}");
        for code in 1..=255u8 {
            assert_eq!(shown(code), first);
        }
    }

    proptest! {
        #[test]
        fn any_block_round_trips_except_r(block in any::<[u8; 4]>()) {
            let e = TelephoneEvent::from_block(&block);
            let mut expected = block;
            expected[1] &= !0x40;
            prop_assert_eq!(e.to_bytes(), expected);
        }

        #[test]
        fn arbitrary_payloads_never_panic(p in prop::collection::vec(any::<u8>(), 0..64)) {
            let first = TelephoneEvent::parse(&p);
            match TelephoneEvent::parse_all(&p) {
                Ok(all) => {
                    prop_assert_eq!(all.len(), p.len() / 4);
                    prop_assert_eq!(all.clone().next(), first.ok());
                }
                Err(e) => prop_assert_eq!(Err(e), first),
            }
        }
    }
}
