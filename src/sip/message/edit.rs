//! Byte-splicing edits of a [`Message`]: only the bytes an edit targets change, and the
//! result is indexed again (RFC 3261 §7.3 header field syntax is checked on the way in).

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use super::parse::index;
use super::view::{Message, StartLine};
use crate::sip::error::{EditError, ParseError};
use crate::sip::headers::{HeaderName, is_token, split_list};
use crate::sip::uri::Uri;

pub(super) fn check_value(v: &str) -> Result<(), EditError> {
    if v.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
        Err(EditError::BadValue)
    } else {
        Ok(())
    }
}

pub(super) fn check_name(n: &str) -> Result<(), EditError> {
    if is_token(n.as_bytes()) {
        Ok(())
    } else {
        Err(EditError::BadName)
    }
}

pub(super) fn header_line(name: &str, value: &[u8]) -> Vec<u8> {
    let mut l = Vec::with_capacity(name.len() + value.len() + 4);
    l.extend_from_slice(name.as_bytes());
    l.extend_from_slice(b": ");
    l.extend_from_slice(value);
    l.extend_from_slice(b"\r\n");
    l
}

impl Message {
    /// Replaces byte ranges (sorted, non-overlapping) and re-indexes. Bytes outside the
    /// ranges are copied unchanged.
    pub(super) fn splice(
        &mut self,
        mut edits: Vec<(Range<usize>, Vec<u8>)>,
    ) -> Result<(), EditError> {
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
