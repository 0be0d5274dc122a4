//! The numeric PIN that unlocks one sealed record: made when a session is created, held by
//! the session until sealing, presented at unlock. Below both `session` and `vault`, which
//! each need it.

use std::fmt;

use subtle::ConstantTimeEq;
use thiserror::Error;
use zeroize::Zeroizing;

/// Unlock PIN digits unless configured otherwise.
pub const DEFAULT_PIN_LEN: usize = 6;
/// Shortest and longest PIN accepted.
pub const PIN_LEN: std::ops::RangeInclusive<usize> = 4..=12;

/// The numeric PIN that unlocks one record. Redacted, zeroized, compared in constant time.
#[derive(Clone)]
pub struct Pin(Zeroizing<String>);

impl Pin {
    /// Uniformly random digits; `len` is clamped to [`PIN_LEN`].
    pub fn generate(len: usize) -> Pin {
        let len = len.clamp(*PIN_LEN.start(), *PIN_LEN.end());
        let mut s = Zeroizing::new(String::with_capacity(len));
        for _ in 0..len {
            s.push(char::from(b'0' + rand::random_range(0..10u8)));
        }
        Pin(s)
    }

    /// A PIN as presented at unlock: 4-12 ASCII digits.
    pub fn parse(s: &str) -> Result<Pin, PinError> {
        if PIN_LEN.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Pin(Zeroizing::new(s.to_string())))
        } else {
            Err(PinError)
        }
    }

    /// Only for the creation response.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Pin {
    fn eq(&self, other: &Pin) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Pin {}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pin(•••)")
    }
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("•••")
    }
}

/// A presented PIN is not 4-12 digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("PIN must be 4-12 digits")]
pub struct PinError;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_numeric_and_redacted() {
        for len in [4, 6, 12] {
            let p = Pin::generate(len);
            assert_eq!(p.reveal().len(), len);
            assert!(p.reveal().bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(format!("{p:?}"), "Pin(•••)");
            assert_eq!(p.to_string(), "•••");
        }
        assert_eq!(Pin::generate(1).reveal().len(), 4, "clamped");
        // Digits are spread over 0-9 (1200 draws: every digit appears).
        let mut seen = [false; 10];
        for _ in 0..100 {
            for b in Pin::generate(12).reveal().bytes() {
                seen[usize::from(b - b'0')] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(Pin::parse("12a456"), Err(PinError));
        assert_eq!(Pin::parse("123"), Err(PinError));
        assert!(Pin::parse("123456").is_ok());
    }
}
