//! Request and response builders (RFC 3261 §8.1.1, §8.2.6): what they produce is indexed and
//! validated like a received message, so a broken header is refused here, not by the peer.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::Bytes;

use super::edit::{check_name, check_value, header_line};
use super::parse::{Rejected, index};
use super::view::{Framing, Limits, Message};
use crate::sip::error::EditError;
use crate::sip::headers::{HeaderName, NameAddr, is_token};
use crate::sip::uri::Uri;

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

// The answer to a rejected request is built here, next to the builder, so that the parser
// (which the builder uses to index what it built) does not depend on the builder.
impl Rejected {
    /// Builds the error response (RFC 3261 §8.2.6), adding `to_tag` unless To has one.
    pub fn response(&self, to_tag: &str) -> Option<Message> {
        let req = self.request()?;
        ResponseBuilder::new(req, self.status(), &self.reason_phrase())
            .to_tag(to_tag)
            .build()
            .ok()
    }
}
