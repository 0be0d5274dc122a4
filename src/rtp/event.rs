//! RFC 4733 telephone-event payload parse and generate (§2.3).

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("telephone-event payload is not a whole number of 4-byte events")]
    BadLength,
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

impl TelephoneEvent {
    /// Parses the first event of a payload.
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, EventError> {
        let _ = payload;
        Err(EventError::BadLength)
    }

    /// Writes the 4-byte block.
    pub fn write(&self, out: &mut [u8; 4]) {
        let _ = out;
    }
}
