//! The shells' wall clock and how its instants are shown: the control API and the call list
//! both render times as RFC 3339, so this sits below both.

/// Milliseconds since the UNIX epoch, advanced by tokio's clock so `tokio::time::pause` and
/// `advance` drive TTLs in tests.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_unix_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    /// The system's wall clock at start, advanced monotonically.
    pub fn system() -> Clock {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock::starting_at(base)
    }

    /// A clock that reads `unix_ms` now.
    pub fn starting_at(unix_ms: u64) -> Clock {
        Clock {
            base_unix_ms: unix_ms,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_unix_ms
            .saturating_add(self.start.elapsed().as_millis() as u64)
    }
}

/// RFC 3339 UTC timestamp with milliseconds. Instants past the year 9999 (which no clock or
/// TTL here reaches) show as its last millisecond rather than as a longer year.
pub fn rfc3339(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_render_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 is a leap day; 951_782_400 s since the epoch.
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_798_761_599_000), "2026-12-31T23:59:59.000Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
