//! Framing and indexing received bytes into a [`Message`], validation of what a B2BUA relies
//! on, and the refusal that says how to answer a message that fails (RFC 3261 §7, §8.2).

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::ops::Range;

use bytes::Bytes;

use super::view::{Entry, Framing, Limits, Message, Method, StartLine};
use crate::sip::error::ParseError;
use crate::sip::headers::{HeaderName, is_token, parse_number};
use crate::sip::uri::Uri;

/// Finds the line starting at `from`: (end of content without CR, start of the next line).
/// Both CRLF and a bare LF end a line.
fn line_at(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let lf = from + data.get(from..)?.iter().position(|&b| b == b'\n')?;
    let end = if lf > from && data.get(lf - 1) == Some(&b'\r') {
        lf - 1
    } else {
        lf
    };
    Some((end, lf + 1))
}

/// Trims SP/HTAB from both ends of `r` within `data`; an all-blank range collapses to its end.
fn trim_sp(data: &[u8], r: Range<usize>) -> Range<usize> {
    let (mut a, mut b) = (r.start, r.end);
    while a < b && matches!(data.get(a), Some(b' ' | b'\t')) {
        a += 1;
    }
    while b > a && matches!(data.get(b - 1), Some(b' ' | b'\t')) {
        b -= 1;
    }
    if a == b { r.end..r.end } else { a..b }
}

fn parse_start_line(data: &[u8], r: Range<usize>) -> Result<StartLine, ParseError> {
    let line = data.get(r.clone()).ok_or(ParseError::BadStartLine)?;
    let at = |a: usize, b: usize| r.start + a..r.start + b;
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"))
    {
        // Status-Line = SIP-Version SP Status-Code SP Reason-Phrase (RFC 3261 §7.2). An empty
        // reason with or without its SP is accepted (RFC 4475 §3.1.1.13).
        let sp = line
            .iter()
            .position(|&b| b == b' ')
            .ok_or(ParseError::BadStartLine)?;
        let rest = line.get(sp + 1..).unwrap_or(&[]);
        let code_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let code = rest.get(..code_len).unwrap_or(&[]);
        if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
            // RFC 4475 §3.1.2.19: 4294967301 must not break the receiver.
            return Err(ParseError::BadStatus);
        }
        let status = code
            .iter()
            .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
        let reason_start = (sp + 1 + code_len + 1).min(line.len());
        Ok(StartLine::Response {
            version: at(0, sp),
            status,
            reason: at(reason_start, line.len()),
        })
    } else {
        // Request-Line = Method SP Request-URI SP SIP-Version. Indexed as method up to the
        // first SP, version after the last, URI between, so that a line with extra SP
        // (RFC 4475 §3.1.2.8-10) is still an answerable request; validation then rejects it.
        let sp1 = line
            .iter()
            .position(|&b| b == b' ')
            .ok_or(ParseError::BadStartLine)?;
        let sp2 = line
            .iter()
            .rposition(|&b| b == b' ')
            .filter(|&p| p > sp1)
            .ok_or(ParseError::BadStartLine)?;
        if !is_token(line.get(..sp1).unwrap_or(&[])) {
            return Err(ParseError::BadStartLine);
        }
        Ok(StartLine::Request {
            method: at(0, sp1),
            uri: at(sp1 + 1, sp2),
            version: at(sp2 + 1, line.len()),
        })
    }
}

/// Builds the index. The body is taken to be everything after the empty line; Content-Length
/// is applied by the caller.
pub(super) fn index(buf: Bytes, max_headers: usize) -> Result<Message, ParseError> {
    let data: &[u8] = &buf;
    // RFC 3261 §7.5: CRLFs before the start line are ignored (keep-alives on streams).
    let mut pos = data
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .ok_or(ParseError::Empty)?;
    let (sl_end, mut next) = line_at(data, pos).ok_or(ParseError::NoHeaderEnd)?;
    let start_line = pos..sl_end;
    let start = parse_start_line(data, start_line.clone())?;
    let mut headers: Vec<Entry> = Vec::new();
    let blank = loop {
        pos = next;
        let (end, nx) = line_at(data, pos).ok_or(ParseError::NoHeaderEnd)?;
        next = nx;
        if end == pos {
            break pos;
        }
        if matches!(data.get(pos), Some(b' ' | b'\t')) {
            // RFC 3261 §7.3.1: a line starting with whitespace continues the previous field.
            let last = headers.last_mut().ok_or(ParseError::BadHeaderLine)?;
            let content = trim_sp(data, pos..end);
            if !content.is_empty() {
                if last.value.is_empty() {
                    last.value = content;
                } else {
                    last.value.end = content.end;
                }
            }
            last.line.end = nx;
            continue;
        }
        let line = data.get(pos..end).ok_or(ParseError::BadHeaderLine)?;
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(ParseError::BadHeaderLine)?;
        // HCOLON = *( SP / HTAB ) ":" SWS: whitespace before the colon is legal.
        let raw_name = trim_sp(data, pos..pos + colon);
        let name_bytes = data.get(raw_name.clone()).unwrap_or(&[]);
        if !is_token(name_bytes) || raw_name.start != pos {
            return Err(ParseError::BadHeaderLine);
        }
        if headers.len() >= max_headers {
            return Err(ParseError::TooManyHeaders { limit: max_headers });
        }
        headers.push(Entry {
            name: HeaderName::from_bytes(name_bytes),
            raw_name,
            value: trim_sp(data, pos + colon + 1..end),
            line: pos..nx,
        });
    };
    Ok(Message {
        buf,
        start,
        start_line,
        headers,
        blank,
        body_start: next,
    })
}

impl Message {
    /// Parses one message (RFC 3261 §7). On success every header a B2BUA depends on (Via,
    /// From, To, Call-ID, CSeq, Max-Forwards, Contact, Content-Type, Content-Length) is known
    /// to parse. On failure the [`Rejected`] says how to answer.
    ///
    /// Content-Length (RFC 3261 §18.3, §20.14): bytes past it are dropped (RFC 4475 §3.1.1.8);
    /// a body shorter than it is an error (§3.1.2.2); several differing values are an error
    /// (§3.3.9). Without it, a datagram's body is the rest and a stream message has none.
    pub fn parse(data: Bytes, framing: Framing, limits: &Limits) -> Result<Message, Rejected> {
        let size = data.len();
        let mut msg = index(data, limits.max_headers).map_err(|e| Rejected::new(e, None))?;
        if let Err(e) = msg.apply_content_length(framing) {
            return Err(Rejected::new(e, Some(msg)));
        }
        if size > limits.max_size {
            let e = ParseError::TooLarge {
                size,
                limit: limits.max_size,
            };
            return Err(Rejected::new(e, Some(msg)));
        }
        match msg.validate() {
            Ok(()) => Ok(msg),
            Err(e) => Err(Rejected::new(e, Some(msg))),
        }
    }

    fn apply_content_length(&mut self, framing: Framing) -> Result<(), ParseError> {
        let declared = self.declared_length()?;
        let available = self.buf.len().saturating_sub(self.body_start);
        let want = match (declared, framing) {
            (None, Framing::Datagram) => return Ok(()),
            (None, Framing::Stream) => 0,
            (Some(n), _) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        if want > available {
            return Err(ParseError::BodyTooShort {
                declared: want,
                actual: available,
            });
        }
        self.buf.truncate(self.body_start + want);
        Ok(())
    }

    /// The Content-Length all Content-Length fields agree on (RFC 4475 §3.3.9).
    fn declared_length(&self) -> Result<Option<u64>, ParseError> {
        let mut declared: Option<u64> = None;
        for v in self.values(HeaderName::ContentLength, b"") {
            let n = parse_number(v).ok_or(ParseError::BadHeader("Content-Length"))?;
            if declared.is_some_and(|d| d != n) {
                return Err(ParseError::DuplicateHeader("Content-Length"));
            }
            declared = Some(n);
        }
        Ok(declared)
    }

    fn validate(&self) -> Result<(), ParseError> {
        let version = match &self.start {
            StartLine::Request { version, uri, .. } => {
                // Exactly single SPs: extra or trailing SP is rejected (allowed by RFC 4475
                // §3.1.2.9, §3.1.2.10), and so is LWS inside the URI (§3.1.2.8).
                let uri = self.slice(uri);
                if uri.is_empty() || uri.contains(&b' ') || self.slice(version).is_empty() {
                    return Err(ParseError::BadStartLine);
                }
                version
            }
            StartLine::Response { version, .. } => version,
        };
        if !self.slice(version).eq_ignore_ascii_case(b"SIP/2.0") {
            return Err(ParseError::BadVersion);
        }
        match &self.start {
            StartLine::Request { uri, .. } => {
                let uri =
                    std::str::from_utf8(self.slice(uri)).map_err(|_| ParseError::BadRequestUri)?;
                match Uri::parse(uri) {
                    // RFC 3261 §19.1.1: headers are not allowed in a Request-URI
                    // (RFC 4475 §3.1.2.11).
                    Ok(Uri::Sip(s)) if s.headers.is_some() => {
                        return Err(ParseError::BadRequestUri);
                    }
                    Ok(_) => {}
                    Err(_) => return Err(ParseError::BadRequestUri),
                }
            }
            StartLine::Response { status, .. } => {
                if !(100..=699).contains(status) {
                    return Err(ParseError::BadStatus);
                }
            }
        }
        // RFC 3261 §8.1.1 mandatory headers. Max-Forwards is not required, so that RFC 2543
        // requests still pass (RFC 4475 §3.4.1); single-valued fields must not repeat
        // (RFC 4475 §3.3.8).
        if self.count(HeaderName::Via) == 0 {
            return Err(ParseError::MissingHeader("Via"));
        }
        for (name, label) in [
            (HeaderName::From, "From"),
            (HeaderName::To, "To"),
            (HeaderName::CallId, "Call-ID"),
            (HeaderName::CSeq, "CSeq"),
        ] {
            match self.count(name) {
                0 => return Err(ParseError::MissingHeader(label)),
                1 => {}
                _ => return Err(ParseError::DuplicateHeader(label)),
            }
        }
        if self.count(HeaderName::MaxForwards) > 1 {
            return Err(ParseError::DuplicateHeader("Max-Forwards"));
        }
        let cseq = self.cseq().ok_or(ParseError::BadHeader("CSeq"))?;
        if let StartLine::Request { method, .. } = &self.start
            && self.slice(method) != cseq.method.as_bytes()
        {
            // RFC 4475 §3.1.2.17 and §3.1.2.18.
            return Err(ParseError::CSeqMismatch);
        }
        self.call_id().ok_or(ParseError::BadHeader("Call-ID"))?;
        self.from().map_err(|_| ParseError::BadHeader("From"))?;
        self.to().map_err(|_| ParseError::BadHeader("To"))?;
        self.vias().map_err(|_| ParseError::BadHeader("Via"))?;
        if let Some(v) = self.first(HeaderName::MaxForwards) {
            parse_number(v)
                .filter(|&n| n <= 255)
                .ok_or(ParseError::BadHeader("Max-Forwards"))?;
        }
        self.contacts()
            .map_err(|_| ParseError::BadHeader("Contact"))?;
        self.content_type()
            .map_err(|_| ParseError::BadHeader("Content-Type"))?;
        Ok(())
    }

    /// A request other than ACK with everything a response copies (RFC 3261 §8.2.6.2,
    /// §17.1.1.3: ACK is never answered).
    pub(crate) fn can_be_answered(&self) -> bool {
        self.is_request()
            && self.method() != Some(Method::Ack)
            && [
                HeaderName::Via,
                HeaderName::From,
                HeaderName::To,
                HeaderName::CallId,
                HeaderName::CSeq,
            ]
            .iter()
            .all(|&n| self.count(n) > 0)
    }
}

/// A message the parser refused, with what is needed to answer it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("SIP message rejected ({}): {error}", error.status())]
pub struct Rejected {
    error: ParseError,
    /// The indexed request, kept only when an answer can be built from it.
    request: Option<Box<Message>>,
}

impl Rejected {
    pub(crate) fn new(error: ParseError, indexed: Option<Message>) -> Rejected {
        let request = indexed.filter(Message::can_be_answered).map(Box::new);
        Rejected { error, request }
    }

    pub fn error(&self) -> &ParseError {
        &self.error
    }

    /// The status this rejection is answered with (when [`Rejected::can_respond`]).
    pub fn status(&self) -> u16 {
        self.error.status()
    }

    pub fn reason_phrase(&self) -> String {
        self.error.reason_phrase()
    }

    /// False for responses, ACKs and requests lacking a header a response must copy: those
    /// are dropped (and counted) instead.
    pub fn can_respond(&self) -> bool {
        self.request.is_some()
    }

    /// The rejected request as indexed, for logging its Call-ID or answering it.
    pub fn request(&self) -> Option<&Message> {
        self.request.as_deref()
    }
}
