//! Payment sessions, card capture and the sealed vault. Sans-IO except the Redis store.
//!
//! `desk` drives them for the shells: sessions, their captures and calls, and sealing.
//! `card` holds the card rules, `capture` turns keys into a card, `session` tracks payment
//! sessions and locators, `pin` is the unlock PIN a session holds and the vault seals with,
//! `vault` seals and opens records, `store` keeps sealed records (in memory) and `redis_store`
//! keeps them in Redis for several relays. Only `redis_store` does I/O; nothing here reads a
//! clock.

pub mod capture;
pub mod card;
pub mod desk;
pub mod directory;
pub mod guard;
pub mod locator;
pub mod pin;
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

/// The whole payment path on a virtual clock, as the shell wires it.
#[cfg(test)]
mod flow_tests {
    use std::sync::Arc;

    use crate::digit::{Digit, DigitSource};
    use crate::ids::CallId;
    use crate::payment::capture::{Capture, CaptureConfig, CaptureInput};
    use crate::payment::card::YearMonth;
    use crate::payment::pin::Pin;
    use crate::payment::session::{
        AgentId, NewSession, RetrievalToken, SessionConfig, SessionState, SessionTable,
    };
    use crate::payment::store::{MemoryStore, UnlockError};
    use crate::payment::vault::{self, MasterKey};

    #[test]
    fn create_capture_seal_unlock() {
        let master = Arc::new(MasterKey::generate());
        let store = MemoryStore::new(master.clone(), 3);
        let mut table = SessionTable::new(SessionConfig::default());
        let created = table
            .create(
                NewSession {
                    agent: AgentId::parse("agent-1").unwrap(),
                    ttl_ms: None,
                    fields: vec![],
                    amount: None,
                    reference: None,
                    owner: None,
                    hand_out: false,
                },
                0,
            )
            .unwrap();
        // The integration keeps these two; the relay keeps neither in clear.
        let (token, pin) = (
            created.token.reveal().to_string(),
            created.pin.reveal().to_string(),
        );
        let id = created.id;
        let call = CallId(1);
        assert_eq!(table.by_locator(&created.locator, 10).unwrap().id(), id);
        table.bind(&id, call, 10).unwrap();
        table.start_capture(&id, 20).unwrap();

        let mut cap = Capture::new(CaptureConfig::default(), YearMonth::new(2026, 6).unwrap());
        let mut sse = Vec::new();
        for (i, c) in "4111111111111111#1230123".chars().enumerate() {
            let ev = cap
                .handle(CaptureInput::Digit {
                    digit: Digit::from_char(c).unwrap(),
                    source: DigitSource::Rfc4733,
                    at_ms: 1_000 + 200 * i as u64,
                })
                .unwrap();
            sse.extend(ev.iter().map(|e| serde_json::to_string(e).unwrap()));
        }
        assert!(
            sse.iter()
                .all(|j| !j.contains("41111") && !j.contains("1230"))
        );
        assert!(matches!(
            cap.handle(CaptureInput::Tick { now_ms: 10_000 }).unwrap()[..],
            []
        ));
        let card = cap.take_card().unwrap();

        let seal_pin = table.complete(&id, 120_000, 6_000).unwrap();
        let s = table.get(&id).unwrap();
        let record =
            vault::seal(&card, &master, &seal_pin, id, s.locator(), s.token_hash()).unwrap();
        drop((card, seal_pin));
        store.put_now(record, 120_000, 6_000).unwrap();

        let token = RetrievalToken::from_presented(&token);
        let pin = Pin::parse(&pin).unwrap();
        let card = store.unlock_now(&id, &token, &pin, 7_000).unwrap();
        assert_eq!(card.pan().reveal(), "4111111111111111");
        table.unlocked(&id, 7_000).unwrap();
        assert_eq!(table.get(&id).unwrap().state(), &SessionState::Unlocked);
        assert_eq!(
            store.unlock_now(&id, &token, &pin, 7_001),
            Err(UnlockError::AlreadyUnlocked)
        );
        assert!(matches!(sse.last(), Some(j) if j.contains("\"event\":\"complete\"")));
    }
}
