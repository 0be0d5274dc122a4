//! Stream framing of SIP over TCP/TLS (RFC 3261 §18.3) and CRLF keep-alives (RFC 5626 §3.5.1).
//!
//! Owns cutting a byte stream into whole messages by Content-Length and recognising
//! keep-alives between messages. It never parses a message beyond the one header it needs,
//! never reads a socket and never buffers past the configured message size.
//!
//! Resync policy: a framing error (a Content-Length that is not a number, conflicting
//! Content-Lengths, a message larger than the limit) leaves no reliable way to find the next
//! message, so the framer stays failed and the caller closes the connection (RFC 4475
//! §3.1.2.3). A message whose start line or other headers are broken is still framed: the
//! message layer answers it with 400 and the connection lives on.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::{Buf, Bytes, BytesMut};

use super::headers::{HeaderName, parse_number};
use super::message::Limits;

/// What the stream yielded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// One whole message (start line through body) for [`super::message::Message::parse`]
    /// with [`super::message::Framing::Stream`].
    Message(Bytes),
    /// A double-CRLF ping: answer with a single CRLF pong (RFC 5626 §3.5.1).
    Ping,
    /// A single CRLF: a pong to our ping, or a stray CRLF to ignore (RFC 3261 §7.5).
    Pong,
}

/// The CRLF pong to write back for a [`Frame::Ping`].
pub const PONG: &[u8] = b"\r\n";

/// Unrecoverable framing errors: the connection must be closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("Content-Length missing a usable value or given twice differently")]
    BadContentLength,
}

/// Accumulates stream bytes and yields frames.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_size: usize,
    /// How far the search for the end of the header section has already looked.
    scanned: usize,
    /// The last frame was a lone CRLF at the end of the buffer: a CRLF arriving next completes
    /// a ping that TCP split in two.
    half_ping: bool,
    failed: Option<FrameError>,
}

impl StreamFramer {
    pub fn new(limits: &Limits) -> StreamFramer {
        StreamFramer {
            buf: BytesMut::new(),
            max_size: limits.max_size,
            scanned: 0,
            half_ping: false,
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes held but not yet framed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next frame, `Ok(None)` when more bytes are needed. After an error every call
    /// returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.next_inner() {
            Err(e) => {
                self.failed = Some(e);
                self.buf.clear();
                Err(e)
            }
            ok => ok,
        }
    }

    fn next_inner(&mut self) -> Result<Option<Frame>, FrameError> {
        // Bare LFs between messages are noise (RFC 3261 §7.5 is lenient about what precedes a
        // start line); only CRLF carries keep-alive meaning.
        while self.buf.first() == Some(&b'\n') {
            self.buf.advance(1);
            self.scanned = 0;
        }
        match self.buf.as_ref() {
            [] | [b'\r'] | [b'\r', b'\n', b'\r'] => return Ok(None),
            [b'\r', b'\n', b'\r', b'\n', ..] => {
                self.buf.advance(4);
                self.half_ping = false;
                return Ok(Some(Frame::Ping));
            }
            [b'\r', b'\n', rest @ ..] => {
                let at_end = rest.is_empty();
                self.buf.advance(2);
                let frame = if std::mem::take(&mut self.half_ping) {
                    Frame::Ping
                } else {
                    self.half_ping = at_end;
                    Frame::Pong
                };
                return Ok(Some(frame));
            }
            _ => self.half_ping = false,
        }
        let Some(head_len) = self.find_head_end() else {
            if self.buf.len() > self.max_size {
                return Err(FrameError::TooLarge {
                    limit: self.max_size,
                });
            }
            return Ok(None);
        };
        let head = self.buf.get(..head_len).unwrap_or(&[]);
        let body_len = content_length(head)?.unwrap_or(0);
        let total = usize::try_from(body_len)
            .ok()
            .and_then(|b| b.checked_add(head_len))
            .filter(|&t| t <= self.max_size)
            .ok_or(FrameError::TooLarge {
                limit: self.max_size,
            })?;
        if self.buf.len() < total {
            return Ok(None);
        }
        self.scanned = 0;
        Ok(Some(Frame::Message(self.buf.split_to(total).freeze())))
    }

    /// Length of the start line plus headers plus the empty line, if all have arrived.
    fn find_head_end(&mut self) -> Option<usize> {
        let data = self.buf.as_ref();
        let from = self.scanned.saturating_sub(3);
        for (i, &b) in data.iter().enumerate().skip(from) {
            if b != b'\n' {
                continue;
            }
            match (data.get(i + 1), data.get(i + 2)) {
                (Some(b'\n'), _) => return Some(i + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(i + 3),
                _ => {}
            }
        }
        self.scanned = data.len();
        None
    }
}

/// Finds Content-Length (or `l`) in a header section, unfolding continuation lines and
/// tolerating whitespace before the colon. Differing values are a framing error.
fn content_length(head: &[u8]) -> Result<Option<u64>, FrameError> {
    let mut found: Option<u64> = None;
    let mut lines = head.split(|&b| b == b'\n').skip(1).peekable();
    while let Some(line) = lines.next() {
        if matches!(line.first(), Some(b' ' | b'\t') | None) {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line.get(..colon).unwrap_or(&[]);
        let name_end = name
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |p| p + 1);
        if HeaderName::from_bytes(name.get(..name_end).unwrap_or(&[])) != HeaderName::ContentLength
        {
            continue;
        }
        let mut value = line.get(colon + 1..).unwrap_or(&[]).to_vec();
        while let Some(next) = lines.next_if(|l| matches!(l.first(), Some(b' ' | b'\t'))) {
            value.push(b' ');
            value.extend_from_slice(next);
        }
        let n = parse_number(&value).ok_or(FrameError::BadContentLength)?;
        if found.is_some_and(|f| f != n) {
            return Err(FrameError::BadContentLength);
        }
        found = Some(n);
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
l : 5\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\nhello";

    fn framer() -> StreamFramer {
        StreamFramer::new(&Limits::default())
    }

    fn drain(f: &mut StreamFramer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(fr) = f.next_frame().unwrap() {
            out.push(fr);
        }
        out
    }

    #[test]
    fn frames_back_to_back_messages_fed_byte_by_byte() {
        let mut f = framer();
        let mut stream = MSG.to_vec();
        stream.extend_from_slice(MSG);
        let mut frames = Vec::new();
        for b in &stream {
            f.push(&[*b]);
            frames.extend(drain(&mut f));
        }
        assert_eq!(
            frames,
            vec![
                Frame::Message(Bytes::from_static(MSG)),
                Frame::Message(Bytes::from_static(MSG))
            ]
        );
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn keepalives() {
        let mut f = framer();
        f.push(b"\r\n\r\n");
        assert_eq!(drain(&mut f), vec![Frame::Ping]);
        f.push(b"\r\n");
        assert_eq!(drain(&mut f), vec![Frame::Pong]);
        // A ping split by TCP: the second half completes it.
        f.push(b"\r\n");
        assert_eq!(drain(&mut f), vec![Frame::Ping]);
        // A CRLF before a message is a pong, then the message.
        f.push(b"\r\n");
        f.push(MSG);
        assert_eq!(
            drain(&mut f),
            vec![Frame::Pong, Frame::Message(Bytes::from_static(MSG))]
        );
        // Half a CRLF waits.
        f.push(b"\r");
        assert_eq!(drain(&mut f), vec![]);
        f.push(b"\n\r\n");
        assert_eq!(drain(&mut f), vec![Frame::Ping]);
    }

    #[test]
    fn bare_lf_headers_and_missing_content_length() {
        let mut f = framer();
        f.push(b"SIP/2.0 200 OK\nVia: SIP/2.0/TCP h\n\nNEXT");
        assert_eq!(
            drain(&mut f),
            vec![Frame::Message(Bytes::from_static(
                b"SIP/2.0 200 OK\nVia: SIP/2.0/TCP h\n\n"
            ))]
        );
        assert_eq!(f.buffered(), 4);
    }

    #[test]
    fn folded_content_length() {
        let mut f = framer();
        f.push(b"A b SIP/2.0\r\nContent-Length:\r\n 2\r\n\r\nxyz");
        let Some(Frame::Message(m)) = f.next_frame().unwrap() else {
            panic!()
        };
        assert!(m.ends_with(b"\r\n\r\nxy"));
    }

    #[test]
    fn fatal_errors_stick() {
        for bad in [
            &b"Content-Length: -999"[..],
            b"Content-Length: five",
            b"l: 1\r\nl: 2",
        ] {
            let mut f = framer();
            f.push(b"INVITE sip:a@b SIP/2.0\r\n");
            f.push(bad);
            f.push(b"\r\n\r\nbody");
            assert_eq!(f.next_frame(), Err(FrameError::BadContentLength));
            f.push(MSG);
            assert_eq!(f.next_frame(), Err(FrameError::BadContentLength));
        }
    }

    #[test]
    fn size_limit() {
        let limits = Limits {
            max_size: 64,
            ..Limits::default()
        };
        let mut f = StreamFramer::new(&limits);
        f.push(&[b'A'; 65]);
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 64 }));
        let mut f = StreamFramer::new(&limits);
        f.push(b"A b SIP/2.0\r\nl: 100\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FrameError::TooLarge { limit: 64 }));
        let mut f = StreamFramer::new(&limits);
        f.push(b"A b SIP/2.0\r\nl: 99999999999999999999999\r\n\r\n");
        assert!(f.next_frame().is_err());
    }
}
