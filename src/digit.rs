//! The DTMF key as a value: keypad layout, tone frequencies and RFC 4733 event codes.
//!
//! A `Digit` is card data once a caller keys it, so its `Debug` and `Display` render as `•`.
//! The only way to see the key is the explicit [`Digit::reveal`], which capture and the
//! auditor's `scan` tool call on purpose. Never pass a revealed char to a log, metric or error.

use std::fmt;

/// Low-group (row) frequencies in Hz, ITU-T Q.23.
pub const LOW_FREQS: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
/// High-group (column) frequencies in Hz, ITU-T Q.23.
pub const HIGH_FREQS: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];

/// Keypad layout: `KEYPAD[row][col]`, row = low tone, col = high tone.
const KEYPAD: [[u8; 4]; 4] = [
    [b'1', b'2', b'3', b'A'],
    [b'4', b'5', b'6', b'B'],
    [b'7', b'8', b'9', b'C'],
    [b'*', b'0', b'#', b'D'],
];

/// One DTMF key (`0`-`9`, `*`, `#`, `A`-`D`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digit(u8);

impl Digit {
    /// All sixteen keys in RFC 4733 event-code order (0-9, *, #, A-D).
    pub const ALL: [Digit; 16] = [
        Digit(b'0'),
        Digit(b'1'),
        Digit(b'2'),
        Digit(b'3'),
        Digit(b'4'),
        Digit(b'5'),
        Digit(b'6'),
        Digit(b'7'),
        Digit(b'8'),
        Digit(b'9'),
        Digit(b'*'),
        Digit(b'#'),
        Digit(b'A'),
        Digit(b'B'),
        Digit(b'C'),
        Digit(b'D'),
    ];

    /// Parses a key character; lower-case `a`-`d` are accepted.
    pub fn from_char(c: char) -> Option<Digit> {
        let c = c.to_ascii_uppercase();
        match c {
            '0'..='9' | '*' | '#' | 'A'..='D' => Some(Digit(c as u8)),
            _ => None,
        }
    }

    /// RFC 4733 §3.2 event code (0-15) to key; codes above 15 are not DTMF keys.
    pub fn from_event_code(code: u8) -> Option<Digit> {
        Digit::ALL.get(usize::from(code)).copied()
    }

    /// RFC 4733 §3.2 event code of this key.
    pub fn event_code(self) -> u8 {
        match self.0 {
            b'0'..=b'9' => self.0 - b'0',
            b'*' => 10,
            b'#' => 11,
            other => 12 + (other - b'A'),
        }
    }

    /// Key for a (row, column) position in the keypad, both 0..4.
    pub fn from_position(row: usize, col: usize) -> Option<Digit> {
        KEYPAD.get(row).and_then(|r| r.get(col)).map(|&c| Digit(c))
    }

    /// (row, column) of this key: indices into [`LOW_FREQS`] and [`HIGH_FREQS`].
    pub fn position(self) -> (usize, usize) {
        for (r, row) in KEYPAD.iter().enumerate() {
            for (c, &k) in row.iter().enumerate() {
                if k == self.0 {
                    return (r, c);
                }
            }
        }
        // Every constructor only admits keypad characters.
        unreachable!("Digit holds a keypad character")
    }

    /// Nominal (low, high) tone frequencies in Hz.
    pub fn freqs(self) -> (f32, f32) {
        let (r, c) = self.position();
        (LOW_FREQS[r], HIGH_FREQS[c])
    }

    /// True for `0`-`9`: the keys that carry card data.
    pub fn is_numeric(self) -> bool {
        self.0.is_ascii_digit()
    }

    /// The key itself. Call only where the key is the product (capture, the auditor's scan):
    /// never feed the result into logs, metrics or errors.
    pub fn reveal(self) -> char {
        char::from(self.0)
    }
}

impl fmt::Debug for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digit(•)")
    }
}

impl fmt::Display for Digit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("•")
    }
}

/// Which signalling path a key arrived on. A key sent both in-band and as RFC 4733 events is
/// one key; the source says which copy was kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigitSource {
    /// Dual tone in the G.711 audio.
    InBand,
    /// RFC 4733 telephone-event packets.
    Rfc4733,
    /// SIP INFO (`application/dtmf-relay` or `application/dtmf`).
    SipInfo,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_codes_round_trip_for_all_keys() {
        for (code, d) in Digit::ALL.iter().enumerate() {
            assert_eq!(usize::from(d.event_code()), code);
            assert_eq!(Digit::from_event_code(code as u8), Some(*d));
            assert_eq!(Digit::from_char(d.reveal()), Some(*d));
        }
        assert_eq!(Digit::from_event_code(16), None);
    }

    #[test]
    fn keypad_frequencies_follow_q23() {
        assert_eq!(Digit::from_char('1').unwrap().freqs(), (697.0, 1209.0));
        assert_eq!(Digit::from_char('0').unwrap().freqs(), (941.0, 1336.0));
        assert_eq!(Digit::from_char('d').unwrap().freqs(), (941.0, 1633.0));
        assert_eq!(Digit::from_char('#').unwrap().event_code(), 11);
    }

    #[test]
    fn formatting_never_shows_the_key() {
        for d in Digit::ALL {
            assert_eq!(format!("{d}"), "•");
            assert_eq!(format!("{d:?}"), "Digit(•)");
        }
    }

    #[test]
    fn non_keys_are_rejected() {
        for c in ['e', 'x', ' ', '!', 'é'] {
            assert_eq!(Digit::from_char(c), None);
        }
    }
}
