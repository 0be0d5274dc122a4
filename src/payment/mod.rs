//! Payment sessions, card capture and the sealed vault. Sans-IO except the Redis store.
//!
//! `card` holds the card rules, `capture` turns keys into a card, `session` tracks payment
//! sessions and locators, `vault` seals and opens records, `store` keeps sealed records
//! (in memory) and `redis_store` keeps them in Redis for several relays. Only `redis_store`
//! does I/O; nothing here reads a clock.

pub mod capture;
pub mod card;
pub mod redis_store;
pub mod session;
pub mod store;
pub mod vault;

/// Lower-case hex for ids, token hashes and record bytes.
pub(crate) mod hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub fn encode(bytes: &[u8]) -> String {
        let mut s = String::with_capacity(bytes.len() * 2);
        for &b in bytes {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
        s
    }

    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }

    /// Decodes exactly `out.len()` bytes; fails on any other length or a non-hex character.
    pub fn decode_into(s: &str, out: &mut [u8]) -> Result<(), ()> {
        let s = s.as_bytes();
        if s.len() != out.len() * 2 {
            return Err(());
        }
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            let (hi, lo) = match pair {
                [h, l] => (nibble(*h).ok_or(())?, nibble(*l).ok_or(())?),
                _ => return Err(()),
            };
            *o = hi << 4 | lo;
        }
        Ok(())
    }

    /// Decodes any even-length hex string.
    pub fn decode(s: &str) -> Result<Vec<u8>, ()> {
        let mut out = vec![0u8; s.len() / 2];
        decode_into(s, &mut out)?;
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trip_and_rejects() {
            let bytes = [0x00, 0x7f, 0x80, 0xff, 0x12];
            let s = super::encode(&bytes);
            assert_eq!(s, "007f80ff12");
            assert_eq!(super::decode(&s).unwrap(), bytes);
            assert_eq!(super::decode("ABcd").unwrap(), [0xab, 0xcd]);
            assert!(super::decode("abc").is_err());
            assert!(super::decode("zz").is_err());
        }
    }
}
