//! The indexed message: its bytes, the index of its start line and header fields, and the
//! typed views parsed from them on demand.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fmt;
use std::ops::Range;

use bytes::Bytes;

use crate::sip::error::ParseError;
use crate::sip::headers::{
    CSeq, Contacts, ContentType, HeaderName, NameAddr, Reason, RetryAfter, Via, is_lws,
    parse_number, parse_tokens, split_list, trim_lws,
};
use crate::sip::uri::Uri;

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
pub(super) enum StartLine {
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
pub(super) struct Entry {
    pub(super) name: HeaderName,
    pub(super) raw_name: Range<usize>,
    /// Value without the LWS after the colon and at the end; may span folded lines.
    pub(super) value: Range<usize>,
    /// The whole field: name through the terminator of its last continuation line.
    pub(super) line: Range<usize>,
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
    pub(super) buf: Bytes,
    pub(super) start: StartLine,
    pub(super) start_line: Range<usize>,
    pub(super) headers: Vec<Entry>,
    /// Offset of the empty line that ends the header section.
    pub(super) blank: usize,
    /// Offset of the body, which runs to the end of `buf`.
    pub(super) body_start: usize,
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

impl Message {
    /// A header name as the index knows it, and as written (for extension headers).
    pub(super) fn lookup(name: &str) -> (HeaderName, &[u8]) {
        (HeaderName::from_bytes(name.as_bytes()), name.as_bytes())
    }

    pub(super) fn slice(&self, r: &Range<usize>) -> &[u8] {
        self.buf.get(r.clone()).unwrap_or(&[])
    }

    pub(super) fn entry_matches(&self, e: &Entry, name: HeaderName, raw: &[u8]) -> bool {
        e.name == name
            && (name != HeaderName::Other || self.slice(&e.raw_name).eq_ignore_ascii_case(raw))
    }

    pub(super) fn values<'s>(
        &'s self,
        name: HeaderName,
        raw: &'s [u8],
    ) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers
            .iter()
            .filter(move |e| self.entry_matches(e, name, raw))
            .map(|e| self.slice(&e.value))
    }

    pub(super) fn first(&self, name: HeaderName) -> Option<&[u8]> {
        self.values(name, b"").next()
    }

    pub(super) fn count(&self, name: HeaderName) -> usize {
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

    pub(super) fn name_addr(
        &self,
        name: HeaderName,
        label: &'static str,
    ) -> Result<NameAddr<'_>, ParseError> {
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

    pub(super) fn name_addr_list(
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

    pub(super) fn tokens(
        &self,
        name: HeaderName,
        label: &'static str,
    ) -> Result<Vec<&str>, ParseError> {
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
}
