//! SIP messages as received bytes plus an index (RFC 3261 §7).
//!
//! Owns framing of one message out of a datagram or a stream chunk, the header index (names
//! canonicalised once, compact forms expanded), validation of what a B2BUA relies on, typed
//! views parsed on demand, byte-splicing edits and the request/response builders.
//!
//! Byte transparency: a [`Message`] keeps the bytes it was parsed from; an untouched message
//! serialises to exactly those bytes, and an edit changes only the bytes it targets. It must
//! never re-serialise headers it was not asked to change, never panic on wire input, and never
//! print a body (which may carry DTMF digits in SIP INFO) through `Debug`.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fmt;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

use super::error::{EditError, ParseError, Rejected};
use super::headers::{
    CSeq, Contacts, ContentType, HeaderName, NameAddr, Reason, RetryAfter, Via, is_lws, is_token,
    parse_number, parse_tokens, split_list, trim_lws,
};
use super::uri::Uri;

/// How the bytes arrived, which decides what Content-Length means (RFC 3261 §18.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// UDP: the datagram is the message; Content-Length may be absent (body = rest).
    Datagram,
    /// TCP/TLS: the framer cut exactly one message; absent Content-Length means no body.
    Stream,
}

/// Safety limits; over-limit input is rejected, never buffered without bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (start line, headers and body) accepted, in bytes.
    pub max_size: usize,
    /// Most header fields (lines, not comma-separated values) accepted.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // The largest UDP payload; TCP messages beyond it are refused too.
            max_size: 65_535,
            max_headers: 256,
        }
    }
}

/// A request method (RFC 3261 §7.1; method names are case-sensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Refer,
    Notify,
    Subscribe,
    Message,
    Publish,
    /// An extension method, answered 501 by the B2BUA (RFC 3261 §8.2.1).
    Other(&'a str),
}

impl<'a> Method<'a> {
    pub fn parse(s: &'a str) -> Method<'a> {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "REFER" => Method::Refer,
            "NOTIFY" => Method::Notify,
            "SUBSCRIBE" => Method::Subscribe,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other),
        }
    }

    pub fn as_str(&self) -> &'a str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Refer => "REFER",
            Method::Notify => "NOTIFY",
            Method::Subscribe => "SUBSCRIBE",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum StartLine {
    Request {
        method: Range<usize>,
        uri: Range<usize>,
        version: Range<usize>,
    },
    Response {
        version: Range<usize>,
        status: u16,
        reason: Range<usize>,
    },
}

/// One header field line as indexed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    name: HeaderName,
    raw_name: Range<usize>,
    /// Value without the LWS after the colon and at the end; may span folded lines.
    value: Range<usize>,
    /// The whole field: name through the terminator of its last continuation line.
    line: Range<usize>,
}

/// A header field as seen by iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderField<'a> {
    pub name: HeaderName,
    /// The name as it was written (`i`, `CALL-ID`, ...).
    pub raw_name: &'a [u8],
    pub value: &'a [u8],
}

/// A SIP request or response: its bytes and an index of them.
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    start_line: Range<usize>,
    headers: Vec<Entry>,
    /// Offset of the empty line that ends the header section.
    blank: usize,
    /// Offset of the body, which runs to the end of `buf`.
    body_start: usize,
}

impl fmt::Debug for Message {
    /// Start line, header names and body length only: bodies may carry DTMF (INFO) and
    /// header values are not needed to debug framing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .headers
            .iter()
            .map(|e| String::from_utf8_lossy(self.slice(&e.raw_name)).into_owned())
            .collect();
        f.debug_struct("Message")
            .field(
                "start_line",
                &String::from_utf8_lossy(self.slice(&self.start_line)),
            )
            .field("headers", &names)
            .field("body_len", &self.body().len())
            .finish()
    }
}

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
fn index(buf: Bytes, max_headers: usize) -> Result<Message, ParseError> {
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

fn check_value(v: &str) -> Result<(), EditError> {
    if v.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Err(EditError::BadValue)
    } else {
        Ok(())
    }
}

fn check_name(n: &str) -> Result<(), EditError> {
    if is_token(n.as_bytes()) {
        Ok(())
    } else {
        Err(EditError::BadName)
    }
}

fn header_line(name: &str, value: &[u8]) -> Vec<u8> {
    let mut l = Vec::with_capacity(name.len() + value.len() + 4);
    l.extend_from_slice(name.as_bytes());
    l.extend_from_slice(b": ");
    l.extend_from_slice(value);
    l.extend_from_slice(b"\r\n");
    l
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

    fn slice(&self, r: &Range<usize>) -> &[u8] {
        self.buf.get(r.clone()).unwrap_or(&[])
    }

    fn entry_matches(&self, e: &Entry, name: HeaderName, raw: &[u8]) -> bool {
        e.name == name
            && (name != HeaderName::Other || self.slice(&e.raw_name).eq_ignore_ascii_case(raw))
    }

    fn values<'s>(
        &'s self,
        name: HeaderName,
        raw: &'s [u8],
    ) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |e| self.entry_matches(e, name, raw))
            .map(|e| self.slice(&e.value))
    }

    fn first(&self, name: HeaderName) -> Option<&[u8]> {
        self.values(name, b"").next()
    }

    fn count(&self, name: HeaderName) -> usize {
        self.values(name, b"").count()
    }

    // ---- whole message -------------------------------------------------------------------

    /// The message bytes (exactly as received unless edited).
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    pub fn into_bytes(self) -> Bytes {
        self.buf
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body_start..).unwrap_or(&[])
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn is_response(&self) -> bool {
        !self.is_request()
    }

    // ---- start line ----------------------------------------------------------------------

    pub fn method(&self) -> Option<Method<'_>> {
        match &self.start {
            StartLine::Request { method, .. } => std::str::from_utf8(self.slice(method))
                .ok()
                .map(Method::parse),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI as written.
    pub fn request_uri_str(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => std::str::from_utf8(self.slice(uri)).ok(),
            StartLine::Response { .. } => None,
        }
    }

    pub fn request_uri(&self) -> Option<Uri<'_>> {
        Uri::parse(self.request_uri_str()?).ok()
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    /// Reason-Phrase bytes (UTF-8 per RFC 3261, not checked: RFC 4475 §3.1.1.12).
    pub fn reason_phrase(&self) -> Option<&[u8]> {
        match &self.start {
            StartLine::Response { reason, .. } => Some(self.slice(reason)),
            StartLine::Request { .. } => None,
        }
    }

    // ---- generic header access -----------------------------------------------------------

    /// All header fields in order.
    pub fn header_fields(&self) -> impl Iterator<Item = HeaderField<'_>> {
        self.headers.iter().map(|e| HeaderField {
            name: e.name,
            raw_name: self.slice(&e.raw_name),
            value: self.slice(&e.value),
        })
    }

    pub fn header_count(&self) -> usize {
        self.headers.len()
    }

    /// Values of every field with this name (any case, compact or long form), in order.
    /// A value may hold several comma-separated elements; see [`split_list`].
    pub fn get_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.values(HeaderName::from_bytes(name.as_bytes()), name.as_bytes())
    }

    /// The first value of a field.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let (n, raw) = Self::lookup(name);
        self.headers
            .iter()
            .find(|e| self.entry_matches(e, n, raw))
            .map(|e| self.slice(&e.value))
    }

    /// The first value of a field, if it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.get(name)?).ok()
    }

    // ---- typed views ---------------------------------------------------------------------

    /// Every Via value, topmost first, across fields and comma lists.
    pub fn vias(&self) -> Result<Vec<Via<'_>>, ParseError> {
        let mut out = Vec::new();
        for v in self.values(HeaderName::Via, b"") {
            out.extend(Via::parse_list(v).map_err(|_| ParseError::BadHeader("Via"))?);
        }
        Ok(out)
    }

    pub fn top_via(&self) -> Option<Via<'_>> {
        let v = self.first(HeaderName::Via)?;
        let r = split_list(v).into_iter().next()?;
        Via::parse(v.get(r)?).ok()
    }

    fn name_addr(&self, name: HeaderName, label: &'static str) -> Result<NameAddr<'_>, ParseError> {
        let v = self.first(name).ok_or(ParseError::MissingHeader(label))?;
        NameAddr::parse(v).map_err(|_| ParseError::BadHeader(label))
    }

    pub fn from(&self) -> Result<NameAddr<'_>, ParseError> {
        self.name_addr(HeaderName::From, "From")
    }

    pub fn to(&self) -> Result<NameAddr<'_>, ParseError> {
        self.name_addr(HeaderName::To, "To")
    }

    pub fn from_tag(&self) -> Option<&str> {
        self.from().ok()?.tag()
    }

    pub fn to_tag(&self) -> Option<&str> {
        self.to().ok()?.tag()
    }

    /// Call-ID: `word ["@" word]`, no whitespace inside (RFC 3261 §25.1).
    pub fn call_id(&self) -> Option<&str> {
        let v = trim_lws(self.first(HeaderName::CallId)?);
        if v.is_empty() || v.iter().any(|&b| is_lws(b)) {
            return None;
        }
        std::str::from_utf8(v).ok()
    }

    pub fn cseq(&self) -> Option<CSeq<'_>> {
        CSeq::parse(self.first(HeaderName::CSeq)?).ok()
    }

    /// Max-Forwards, `None` when absent (an RFC 2543 peer) or out of range.
    pub fn max_forwards(&self) -> Option<u8> {
        parse_number(self.first(HeaderName::MaxForwards)?).and_then(|n| u8::try_from(n).ok())
    }

    /// All Contact values (an empty list when there is no Contact).
    pub fn contacts(&self) -> Result<Contacts<'_>, ParseError> {
        Contacts::parse(self.values(HeaderName::Contact, b""))
            .map_err(|_| ParseError::BadHeader("Contact"))
    }

    fn name_addr_list(
        &self,
        name: HeaderName,
        label: &'static str,
    ) -> Result<Vec<NameAddr<'_>>, ParseError> {
        let mut out = Vec::new();
        for v in self.values(name, b"") {
            out.extend(NameAddr::parse_list(v).map_err(|_| ParseError::BadHeader(label))?);
        }
        Ok(out)
    }

    pub fn record_routes(&self) -> Result<Vec<NameAddr<'_>>, ParseError> {
        self.name_addr_list(HeaderName::RecordRoute, "Record-Route")
    }

    pub fn routes(&self) -> Result<Vec<NameAddr<'_>>, ParseError> {
        self.name_addr_list(HeaderName::Route, "Route")
    }

    /// P-Asserted-Identity (RFC 3325 §9.1): the caller identity a trusted trunk asserts.
    pub fn p_asserted_identities(&self) -> Result<Vec<NameAddr<'_>>, ParseError> {
        self.name_addr_list(HeaderName::PAssertedIdentity, "P-Asserted-Identity")
    }

    pub fn content_type(&self) -> Result<Option<ContentType<'_>>, ParseError> {
        self.first(HeaderName::ContentType)
            .map(|v| ContentType::parse(v).map_err(|_| ParseError::BadHeader("Content-Type")))
            .transpose()
    }

    /// Content-Length as declared (the body length after parsing, when present).
    pub fn content_length(&self) -> Option<usize> {
        parse_number(self.first(HeaderName::ContentLength)?).and_then(|n| usize::try_from(n).ok())
    }

    fn tokens(&self, name: HeaderName, label: &'static str) -> Result<Vec<&str>, ParseError> {
        let mut out = Vec::new();
        for v in self.values(name, b"") {
            out.extend(parse_tokens(v).map_err(|_| ParseError::BadHeader(label))?);
        }
        Ok(out)
    }

    /// Option tags the sender requires; unknown ones are answered 420 (RFC 3261 §8.2.2.3).
    pub fn require(&self) -> Result<Vec<&str>, ParseError> {
        self.tokens(HeaderName::Require, "Require")
    }

    pub fn proxy_require(&self) -> Result<Vec<&str>, ParseError> {
        self.tokens(HeaderName::ProxyRequire, "Proxy-Require")
    }

    pub fn supported(&self) -> Result<Vec<&str>, ParseError> {
        self.tokens(HeaderName::Supported, "Supported")
    }

    /// Reason values (RFC 3326), as carried on BYE and CANCEL.
    pub fn reasons(&self) -> Result<Vec<Reason<'_>>, ParseError> {
        let mut out = Vec::new();
        for v in self.values(HeaderName::Reason, b"") {
            out.extend(Reason::parse_list(v).map_err(|_| ParseError::BadHeader("Reason"))?);
        }
        Ok(out)
    }

    pub fn retry_after(&self) -> Result<Option<RetryAfter<'_>>, ParseError> {
        self.first(HeaderName::RetryAfter)
            .map(|v| RetryAfter::parse(v).map_err(|_| ParseError::BadHeader("Retry-After")))
            .transpose()
    }

    // ---- edits ---------------------------------------------------------------------------

    /// Replaces byte ranges (sorted, non-overlapping) and re-indexes. Bytes outside the
    /// ranges are copied unchanged.
    fn splice(&mut self, mut edits: Vec<(Range<usize>, Vec<u8>)>) -> Result<(), EditError> {
        edits.sort_by_key(|(r, _)| r.start);
        let extra: usize = edits.iter().map(|(_, b)| b.len()).sum();
        let mut out = BytesMut::with_capacity(self.buf.len() + extra);
        let mut pos = 0;
        for (r, bytes) in &edits {
            let keep = self
                .buf
                .get(pos..r.start)
                .ok_or(EditError::Invalid(ParseError::BadHeaderLine))?;
            out.put_slice(keep);
            out.put_slice(bytes);
            pos = r.end.max(pos);
        }
        out.put_slice(self.buf.get(pos..).unwrap_or(&[]));
        *self = index(out.freeze(), usize::MAX).map_err(EditError::Invalid)?;
        Ok(())
    }

    fn lookup(name: &str) -> (HeaderName, &[u8]) {
        (HeaderName::from_bytes(name.as_bytes()), name.as_bytes())
    }

    /// Removes every field with this name; returns how many were removed.
    pub fn remove_header(&mut self, name: &str) -> Result<usize, EditError> {
        let (n, raw) = Self::lookup(name);
        let edits: Vec<_> = self
            .headers
            .iter()
            .filter(|e| self.entry_matches(e, n, raw))
            .map(|e| (e.line.clone(), Vec::new()))
            .collect();
        let count = edits.len();
        if count > 0 {
            self.splice(edits)?;
        }
        Ok(count)
    }

    /// Adds a field after the last one.
    pub fn append_header(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        check_name(name)?;
        check_value(value)?;
        let at = self.blank;
        self.splice(vec![(at..at, header_line(name, value.as_bytes()))])
    }

    /// Adds a field right after the start line.
    pub fn prepend_header(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        check_name(name)?;
        check_value(value)?;
        let at = self.headers.first().map_or(self.blank, |e| e.line.start);
        self.splice(vec![(at..at, header_line(name, value.as_bytes()))])
    }

    /// Sets a field's value: the first field keeps its name as written and gets `value`,
    /// any further fields of that name are removed; appended if absent.
    pub fn set_header(&mut self, name: &str, value: &str) -> Result<(), EditError> {
        check_name(name)?;
        check_value(value)?;
        let (n, raw) = Self::lookup(name);
        let mut edits = Vec::new();
        for e in self
            .headers
            .iter()
            .filter(|e| self.entry_matches(e, n, raw))
        {
            if edits.is_empty() {
                edits.push((e.value.clone(), value.as_bytes().to_vec()));
            } else {
                edits.push((e.line.clone(), Vec::new()));
            }
        }
        if edits.is_empty() {
            return self.append_header(name, value);
        }
        self.splice(edits)
    }

    /// Replaces the body and sets Content-Length to match; sets Content-Type when given, and
    /// removes it when the new body is empty and none is given.
    pub fn set_body(&mut self, content_type: Option<&str>, body: &[u8]) -> Result<(), EditError> {
        let body_range = self.body_start..self.buf.len();
        self.splice(vec![(body_range, body.to_vec())])?;
        self.set_header("Content-Length", &body.len().to_string())?;
        match content_type {
            Some(ct) => self.set_header("Content-Type", ct),
            None if body.is_empty() => self.remove_header("Content-Type").map(|_| ()),
            None => Ok(()),
        }
    }

    /// Replaces the Request-URI (the B-leg target of a B2BUA).
    pub fn set_request_uri(&mut self, uri: &str) -> Result<(), EditError> {
        let StartLine::Request { uri: range, .. } = &self.start else {
            return Err(EditError::NotARequest);
        };
        if Uri::parse(uri).is_err() {
            return Err(EditError::BadUri);
        }
        let range = range.clone();
        self.splice(vec![(range, uri.as_bytes().to_vec())])
    }

    /// Adds a Via above all others (RFC 3261 §16.6 step 8; a B2BUA's UAC side does the same).
    pub fn push_via(&mut self, value: &str) -> Result<(), EditError> {
        check_value(value)?;
        let at = self
            .headers
            .iter()
            .find(|e| e.name == HeaderName::Via)
            .or(self.headers.first())
            .map_or(self.blank, |e| e.line.start);
        self.splice(vec![(at..at, header_line("Via", value.as_bytes()))])
    }

    /// Removes the topmost Via value (RFC 3261 §16.7 step 3), even when it shares a field
    /// with others in a comma list. Returns false when there is no Via.
    pub fn pop_via(&mut self) -> Result<bool, EditError> {
        let Some(e) = self.headers.iter().find(|e| e.name == HeaderName::Via) else {
            return Ok(false);
        };
        let value = self.slice(&e.value);
        let parts = split_list(value);
        let cut = match (parts.first(), parts.get(1)) {
            (Some(_), Some(second)) => e.value.start..e.value.start + second.start,
            _ => e.line.clone(),
        };
        self.splice(vec![(cut, Vec::new())])?;
        Ok(true)
    }
}

/// Builds a response to a request (RFC 3261 §8.2.6): Via, From, To, Call-ID and CSeq are
/// copied; To gets the UAS tag unless it has one (§8.2.6.2) or this is a 100 (§8.2.6.1).
#[derive(Debug)]
pub struct ResponseBuilder<'r> {
    request: &'r Message,
    status: u16,
    reason: String,
    to_tag: Option<String>,
    record_route: bool,
    extra: Vec<(String, String)>,
    body: Option<(String, Bytes)>,
    error: Option<EditError>,
}

impl<'r> ResponseBuilder<'r> {
    pub fn new(request: &'r Message, status: u16, reason: &str) -> ResponseBuilder<'r> {
        ResponseBuilder {
            request,
            status,
            reason: reason.to_owned(),
            to_tag: None,
            record_route: false,
            extra: Vec::new(),
            body: None,
            error: None,
        }
    }

    pub fn to_tag(mut self, tag: &str) -> Self {
        if !is_token(tag.as_bytes()) {
            self.error.get_or_insert(EditError::BadValue);
        }
        self.to_tag = Some(tag.to_owned());
        self
    }

    /// Copies Record-Route, as a dialog-creating response must (RFC 3261 §12.1.1).
    pub fn record_route(mut self) -> Self {
        self.record_route = true;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Err(e) = check_name(name).and_then(|()| check_value(value)) {
            self.error.get_or_insert(e);
        }
        self.extra.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        if let Err(e) = check_value(content_type) {
            self.error.get_or_insert(e);
        }
        self.body = Some((content_type.to_owned(), body.into()));
        self
    }

    pub fn build(self) -> Result<Message, EditError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let req = self.request;
        if !req.is_request() {
            return Err(EditError::NotARequest);
        }
        if !(100..=699).contains(&self.status) {
            return Err(EditError::BadStatus);
        }
        check_value(&self.reason)?;
        let mut out = Vec::with_capacity(req.len() / 2 + 256);
        out.extend_from_slice(format!("SIP/2.0 {} {}\r\n", self.status, self.reason).as_bytes());
        for v in req.values(HeaderName::Via, b"") {
            out.extend(header_line("Via", v));
        }
        if let Some(v) = req.first(HeaderName::From) {
            out.extend(header_line("From", v));
        }
        if let Some(v) = req.first(HeaderName::To) {
            let mut to = v.to_vec();
            // Only a To that parses gets a tag appended: gluing one onto a broken value (an
            // unterminated quote, RFC 4475 §3.1.2.6) would land inside it.
            let add = self.status != 100 && NameAddr::parse(v).is_ok_and(|n| n.tag().is_none());
            if let (true, Some(tag)) = (add, &self.to_tag) {
                to.extend_from_slice(b";tag=");
                to.extend_from_slice(tag.as_bytes());
            }
            out.extend(header_line("To", &to));
        }
        for (name, label) in [(HeaderName::CallId, "Call-ID"), (HeaderName::CSeq, "CSeq")] {
            if let Some(v) = req.first(name) {
                out.extend(header_line(label, v));
            }
        }
        if self.record_route {
            for v in req.values(HeaderName::RecordRoute, b"") {
                out.extend(header_line("Record-Route", v));
            }
        }
        for (n, v) in &self.extra {
            out.extend(header_line(n, v.as_bytes()));
        }
        let body = self.body.unwrap_or_default();
        if !body.1.is_empty() || !body.0.is_empty() {
            out.extend(header_line("Content-Type", body.0.as_bytes()));
        }
        out.extend(header_line(
            "Content-Length",
            body.1.len().to_string().as_bytes(),
        ));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body.1);
        index(Bytes::from(out), usize::MAX).map_err(EditError::Invalid)
    }
}

/// Builds a request; the result is validated exactly as a received request would be, so a
/// request missing Via, From, To, Call-ID or CSeq is refused here rather than by the peer.
#[derive(Debug, Default)]
pub struct RequestBuilder {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: Option<(String, Bytes)>,
    error: Option<EditError>,
}

impl RequestBuilder {
    pub fn new(method: &str, uri: &str) -> RequestBuilder {
        let mut b = RequestBuilder {
            method: method.to_owned(),
            uri: uri.to_owned(),
            ..RequestBuilder::default()
        };
        if check_name(method).is_err() {
            b.error = Some(EditError::BadName);
        } else if Uri::parse(uri).is_err() {
            b.error = Some(EditError::BadUri);
        }
        b
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        if let Err(e) = check_name(name).and_then(|()| check_value(value)) {
            self.error.get_or_insert(e);
        }
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, content_type: &str, body: impl Into<Bytes>) -> Self {
        if let Err(e) = check_value(content_type) {
            self.error.get_or_insert(e);
        }
        self.body = Some((content_type.to_owned(), body.into()));
        self
    }

    pub fn build(self) -> Result<Message, EditError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(format!("{} {} SIP/2.0\r\n", self.method, self.uri).as_bytes());
        for (n, v) in &self.headers {
            out.extend(header_line(n, v.as_bytes()));
        }
        let body = self.body.unwrap_or_default();
        if !body.1.is_empty() || !body.0.is_empty() {
            out.extend(header_line("Content-Type", body.0.as_bytes()));
        }
        out.extend(header_line(
            "Content-Length",
            body.1.len().to_string().as_bytes(),
        ));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body.1);
        let limits = Limits {
            max_size: usize::MAX,
            max_headers: usize::MAX,
        };
        Message::parse(Bytes::from(out), Framing::Stream, &limits)
            .map_err(|r| EditError::Invalid(r.error().clone()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::sip::headers::DisplayName;
    use crate::sip::uri::Host;

    const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: \"Alice \\\"A\\\"\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
X-Custom:   keep   me  \r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    fn parse(s: &[u8], framing: Framing) -> Result<Message, Rejected> {
        Message::parse(Bytes::copy_from_slice(s), framing, &Limits::default())
    }

    fn ok(s: &str) -> Message {
        parse(s.as_bytes(), Framing::Datagram).unwrap()
    }

    #[test]
    fn parses_a_plain_invite() {
        let m = ok(INVITE);
        assert_eq!(m.as_bytes(), INVITE.as_bytes());
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.request_uri_str(), Some("sip:bob@biloxi.example.com"));
        assert_eq!(m.call_id(), Some("a84b4c76e66710@pc33.atlanta.example.com"));
        assert_eq!(
            m.cseq(),
            Some(CSeq {
                seq: 314159,
                method: "INVITE"
            })
        );
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.from_tag(), Some("1928301774"));
        assert_eq!(m.to_tag(), None);
        let from = m.from().unwrap();
        assert_eq!(from.display_name.unwrap().unescaped(), br#"Alice "A""#);
        let via = m.top_via().unwrap();
        assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(via.rport(), Some(None));
        assert_eq!(m.get("x-custom"), Some(&b"keep   me"[..]));
        assert!(m.content_type().unwrap().unwrap().is_sdp());
        assert_eq!(m.body(), b"v=0\n");
        assert_eq!(m.content_length(), Some(4));
    }

    #[test]
    fn compact_forms_folding_bare_lf_and_space_before_colon() {
        let raw = "OPTIONS sip:x@example.com SIP/2.0\n\
v : SIP/2.0/UDP a.example.com;branch=z9hG4bK1,\n  SIP/2.0/TCP [2001:db8::1]:5062;branch=z9hG4bK2\n\
VIA: SIP/2.0/UDP c.example.com;branch=z9hG4bK3\n\
f: <sip:a@example.com>;tag=1\n\
t:\n\tsip:x@example.com\n\
i: abc@host\n\
CSEQ: 1 OPTIONS\n\
m: *\n\
k: 100rel,\n timer\n\
l: 0\n\n";
        let m = ok(raw);
        assert_eq!(m.as_bytes(), raw.as_bytes());
        let vias = m.vias().unwrap();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[1].host, Host::V6("2001:db8::1".parse().unwrap()));
        assert_eq!(vias[1].port, Some(5062));
        assert_eq!(vias[2].branch(), Some("z9hG4bK3"));
        assert_eq!(m.to().unwrap().uri_raw, "sip:x@example.com");
        assert_eq!(m.call_id(), Some("abc@host"));
        assert_eq!(m.contacts().unwrap(), Contacts::Star);
        assert_eq!(m.supported().unwrap(), vec!["100rel", "timer"]);
        assert_eq!(m.get_all("Via").count(), 2);
        assert_eq!(m.get("Call-ID"), m.get("i"));
    }

    #[test]
    fn typed_views_for_b2bua_headers() {
        let raw = "BYE tel:+15551234;phone-context=example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\
From: <tel:+15550000>;tag=a\r\nTo: <sip:b@h>;tag=b\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\
Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
P-Asserted-Identity: \"Caller\" <sip:+15550000@trunk.example.com>, <tel:+15550000>\r\n\
Require: timer\r\nProxy-Require: foo\r\n\
Reason: Q.850;cause=16;text=\"Normal\"\r\n\
Retry-After: 30\r\nContent-Length: 0\r\n\r\n";
        let m = ok(raw);
        assert_eq!(m.request_uri().unwrap().scheme(), "tel");
        assert_eq!(m.from().unwrap().uri.scheme(), "tel");
        assert_eq!(m.record_routes().unwrap().len(), 2);
        assert!(m.routes().unwrap()[0].uri.as_sip().unwrap().lr());
        let pai = m.p_asserted_identities().unwrap();
        assert_eq!(pai.len(), 2);
        assert_eq!(pai[0].display_name, Some(DisplayName::Quoted(b"Caller")));
        assert_eq!(m.require().unwrap(), vec!["timer"]);
        assert_eq!(m.proxy_require().unwrap(), vec!["foo"]);
        assert_eq!(m.reasons().unwrap()[0].cause(), Some(16));
        assert_eq!(m.retry_after().unwrap().unwrap().seconds, 30);
        assert_eq!(m.max_forwards(), None);
    }

    #[test]
    fn unknown_method_parses() {
        let raw = "NEWMETHOD sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: 1\r\nCSeq: 1 NEWMETHOD\r\n\r\n";
        assert_eq!(ok(raw).method(), Some(Method::Other("NEWMETHOD")));
    }

    #[test]
    fn content_length_rules() {
        // Datagram: trailing bytes past Content-Length are dropped.
        let mut raw = INVITE.as_bytes().to_vec();
        raw.extend_from_slice(b"GARBAGE");
        let m = parse(&raw, Framing::Datagram).unwrap();
        assert_eq!(m.as_bytes(), INVITE.as_bytes());
        // Shorter body than declared: 400.
        let short = INVITE.replace("Content-Length: 4", "Content-Length: 40");
        let r = parse(short.as_bytes(), Framing::Datagram).unwrap_err();
        assert_eq!(r.status(), 400);
        assert!(matches!(
            r.error(),
            ParseError::BodyTooShort {
                declared: 40,
                actual: 4
            }
        ));
        assert!(r.can_respond());
        // No Content-Length: datagram keeps the rest, stream has no body.
        let none = INVITE.replace("Content-Length: 4\r\n", "");
        assert_eq!(
            parse(none.as_bytes(), Framing::Datagram).unwrap().body(),
            b"v=0\n"
        );
        assert_eq!(parse(none.as_bytes(), Framing::Stream).unwrap().body(), b"");
        // Negative, non-numeric, conflicting.
        for bad in [
            "Content-Length: -4",
            "Content-Length: five",
            "Content-Length: 4\r\nl: 5",
        ] {
            let m = INVITE.replace("Content-Length: 4", bad);
            assert_eq!(
                parse(m.as_bytes(), Framing::Datagram).unwrap_err().status(),
                400,
                "{bad}"
            );
        }
        // Same value twice is fine.
        let twice = INVITE.replace("Content-Length: 4", "Content-Length: 4\r\nl: 4");
        assert!(parse(twice.as_bytes(), Framing::Datagram).is_ok());
    }

    #[test]
    fn binary_body_is_untouched() {
        let mut raw = INVITE
            .replace("Content-Length: 4", "Content-Length: 6")
            .into_bytes();
        raw.truncate(raw.len() - 4);
        raw.extend_from_slice(&[0, 0xff, b'\r', b'\n', 0x80, 0]);
        let m = parse(&raw, Framing::Datagram).unwrap();
        assert_eq!(m.body(), &[0, 0xff, b'\r', b'\n', 0x80, 0]);
        assert_eq!(m.as_bytes(), &raw[..]);
    }

    #[test]
    fn rejections_carry_their_answer() {
        let cases: &[(&str, &str, u16, bool)] = &[
            (
                "INVITE sip:bob@biloxi.example.com SIP/2.0",
                "INVITE sip:bob@biloxi.example.com SIP/3.0",
                505,
                true,
            ),
            ("CSeq: 314159 INVITE", "CSeq: 314159 BYE", 400, true),
            (
                "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n",
                "",
                400,
                false,
            ),
            ("Max-Forwards: 70", "Max-Forwards: 256", 400, true),
            (
                "To: Bob <sip:bob@biloxi.example.com>",
                "To: Bob <sip:bob@biloxi.example.com>\r\nt: <sip:x@y>",
                400,
                true,
            ),
            (
                "Contact: <sip:alice@pc33.atlanta.example.com>",
                "Contact: <sip:a@b>;;",
                400,
                true,
            ),
            (
                "INVITE sip:bob@biloxi.example.com SIP/2.0",
                "INVITE  sip:bob@biloxi.example.com SIP/2.0",
                400,
                true,
            ),
        ];
        for (from, to, status, answerable) in cases {
            let m = INVITE.replace(from, to);
            let r = parse(m.as_bytes(), Framing::Datagram).unwrap_err();
            assert_eq!(r.status(), *status, "{to}: {:?}", r.error());
            assert_eq!(r.can_respond(), *answerable, "{to}");
            if *answerable {
                let resp = r.response("srvtag").unwrap();
                assert_eq!(resp.status(), Some(*status));
                assert_eq!(resp.to_tag(), Some("srvtag"));
                assert_eq!(
                    resp.call_id(),
                    Some("a84b4c76e66710@pc33.atlanta.example.com")
                );
            }
        }
        assert_eq!(
            ParseError::MissingHeader("Call-ID").reason_phrase(),
            "Missing Call-ID header field"
        );
        // Responses and ACKs are never answered.
        let ack = INVITE
            .replace("INVITE sip", "ACK sip")
            .replace("314159 INVITE", "314159 ACK");
        let ack = ack.replace("Max-Forwards: 70", "Max-Forwards: 300");
        assert!(
            !parse(ack.as_bytes(), Framing::Datagram)
                .unwrap_err()
                .can_respond()
        );
    }

    #[test]
    fn size_and_header_limits() {
        let limits = Limits {
            max_size: 100,
            max_headers: 256,
        };
        let r = Message::parse(Bytes::from(INVITE), Framing::Datagram, &limits).unwrap_err();
        assert_eq!(r.status(), 413);
        assert!(r.can_respond());
        let limits = Limits {
            max_size: 65535,
            max_headers: 3,
        };
        let r = Message::parse(Bytes::from(INVITE), Framing::Datagram, &limits).unwrap_err();
        assert!(matches!(r.error(), ParseError::TooManyHeaders { limit: 3 }));
    }

    #[test]
    fn edits_touch_only_their_bytes() {
        let mut m = ok(INVITE);
        m.set_header("Max-Forwards", "69").unwrap();
        assert_eq!(
            m.as_bytes(),
            INVITE
                .replace("Max-Forwards: 70", "Max-Forwards: 69")
                .as_bytes()
        );
        m.remove_header("x-custom").unwrap();
        m.append_header("X-Leg", "b").unwrap();
        let expect = INVITE
            .replace("Max-Forwards: 70", "Max-Forwards: 69")
            .replace("X-Custom:   keep   me  \r\n", "")
            .replace("\r\n\r\nv=0", "\r\nX-Leg: b\r\n\r\nv=0");
        assert_eq!(m.as_bytes(), expect.as_bytes());

        m.set_request_uri("sip:agent@cc.example.com").unwrap();
        assert_eq!(m.request_uri_str(), Some("sip:agent@cc.example.com"));
        assert!(m.set_request_uri("not a uri").is_err());

        m.set_body(Some("application/sdp"), b"v=0\r\ns=-\r\n")
            .unwrap();
        assert_eq!(m.content_length(), Some(10));
        assert_eq!(m.body(), b"v=0\r\ns=-\r\n");
        m.set_body(None, b"").unwrap();
        assert_eq!(m.get("Content-Type"), None);
        assert_eq!(m.get("Content-Length"), Some(&b"0"[..]));

        // The edited message is still a valid message.
        let again = parse(m.as_bytes(), Framing::Stream).unwrap();
        assert_eq!(again.as_bytes(), m.as_bytes());

        assert_eq!(m.set_header("Bad Name", "x"), Err(EditError::BadName));
        assert_eq!(
            m.append_header("X", "a\r\nInjected: 1"),
            Err(EditError::BadValue)
        );
    }

    #[test]
    fn via_push_and_pop() {
        let raw = "SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP b;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP c;branch=z9hG4bK3\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:x@h>;tag=2\r\n\
Call-ID: 1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let mut m = ok(raw);
        assert!(m.pop_via().unwrap());
        assert_eq!(m.vias().unwrap().len(), 2);
        assert!(
            m.as_bytes()
                .starts_with(b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP b;branch=z9hG4bK2\r\n")
        );
        assert!(m.pop_via().unwrap());
        m.push_via("SIP/2.0/TCP relay.example.com;branch=z9hG4bKnew")
            .unwrap();
        let vias = m.vias().unwrap();
        assert_eq!(vias.len(), 2);
        assert_eq!(vias[0].branch(), Some("z9hG4bKnew"));
        assert_eq!(vias[1].branch(), Some("z9hG4bK3"));
        assert!(m.pop_via().unwrap());
        assert!(m.pop_via().unwrap());
        assert!(!m.pop_via().unwrap());
    }

    #[test]
    fn response_builder_follows_8_2_6() {
        let req = ok(INVITE);
        let resp = ResponseBuilder::new(&req, 180, "Ringing")
            .to_tag("uas1")
            .header("Contact", "<sip:relay@10.0.0.1>")
            .build()
            .unwrap();
        assert_eq!(resp.status(), Some(180));
        assert_eq!(resp.reason_phrase(), Some(&b"Ringing"[..]));
        assert_eq!(resp.to_tag(), Some("uas1"));
        assert_eq!(resp.from_tag(), Some("1928301774"));
        assert_eq!(resp.cseq(), req.cseq());
        assert_eq!(resp.get("Via"), req.get("Via"));
        assert_eq!(resp.body(), b"");
        // The built response is a valid message.
        parse(resp.as_bytes(), Framing::Stream).unwrap();

        let trying = ResponseBuilder::new(&req, 100, "Trying")
            .to_tag("x")
            .build()
            .unwrap();
        assert_eq!(trying.to_tag(), None);

        let ok200 = ResponseBuilder::new(&req, 200, "OK")
            .to_tag("t")
            .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
            .build()
            .unwrap();
        assert_eq!(ok200.content_length(), Some(5));
        assert_eq!(ok200.body(), b"v=0\r\n");

        assert!(ResponseBuilder::new(&req, 99, "x").build().is_err());
        assert!(ResponseBuilder::new(&ok200, 200, "OK").build().is_err());
    }

    #[test]
    fn request_builder_validates() {
        let m = RequestBuilder::new("INVITE", "sip:agent@cc.example.com")
            .header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKb1;rport")
            .header("Max-Forwards", "70")
            .header("From", "<sip:caller@relay.example.com>;tag=b1")
            .header("To", "<sip:agent@cc.example.com>")
            .header("Call-ID", "leg-b-1")
            .header("CSeq", "1 INVITE")
            .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
            .build()
            .unwrap();
        assert_eq!(m.method(), Some(Method::Invite));
        assert_eq!(m.body(), b"v=0\r\n");
        let missing = RequestBuilder::new("BYE", "sip:a@b")
            .header("Via", "SIP/2.0/UDP h")
            .build();
        assert!(matches!(
            missing,
            Err(EditError::Invalid(ParseError::MissingHeader(_)))
        ));
        assert_eq!(
            RequestBuilder::new("BAD METHOD", "sip:a@b")
                .build()
                .unwrap_err(),
            EditError::BadName
        );
    }

    #[test]
    fn debug_hides_values_and_body() {
        let raw = INVITE.replace("v=0\n", "1234");
        let m = ok(&raw);
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("1234"), "{dbg}");
        assert!(!dbg.contains("keep"), "{dbg}");
        assert!(dbg.contains("body_len: 4"));
    }

    #[test]
    fn garbage_is_rejected_not_panicking() {
        for g in [
            &b""[..],
            b"\r\n\r\n",
            b"INVITE",
            b"SIP/2.0 200 OK\r\n",
            b"\xff\xfe\r\n\r\n",
            b"A B C\r\n:x\r\n\r\n",
            b"A B C\r\n x\r\n\r\n",
        ] {
            assert!(parse(g, Framing::Datagram).is_err());
        }
    }
}
