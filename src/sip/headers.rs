//! Header names and typed header views (RFC 3261 §7.3, §20, §25.1).
//!
//! Owns the canonical header names (compact forms expanded, case folded once at parse time)
//! and the on-demand parsers for the header values a B2BUA reads: Via, name-addr headers
//! (From, To, Contact, Route, Record-Route, P-Asserted-Identity), CSeq, Max-Forwards,
//! Content-Length, Content-Type, option-tag lists, Reason and Retry-After. Views borrow from
//! the received bytes and never copy or re-serialise them. Folded lines (LWS continuation) are
//! whitespace to every parser here. Never panics on wire input.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::ops::Range;

use super::uri::{Host, Param, Uri, find_param, parse_port};

macro_rules! header_names {
    ($( $variant:ident = $canon:literal $(, $compact:literal)? ; )*) => {
        /// Canonical header name. Compact forms (RFC 3261 §7.3.3 and later RFCs) map to the
        /// same variant as their long form; anything unknown is [`HeaderName::Other`] and is
        /// compared by its raw bytes, case-insensitively.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $( $variant, )*
            Other,
        }

        const KNOWN: &[(HeaderName, &str)] = &[ $( (HeaderName::$variant, $canon), )* ];

        impl HeaderName {
            /// The canonical spelling, or `None` for [`HeaderName::Other`].
            pub fn canonical(self) -> Option<&'static str> {
                match self {
                    $( HeaderName::$variant => Some($canon), )*
                    HeaderName::Other => None,
                }
            }

            fn from_compact(c: u8) -> Option<HeaderName> {
                match c.to_ascii_lowercase() {
                    $( $( $compact => Some(HeaderName::$variant), )? )*
                    _ => None,
                }
            }
        }
    };
}

header_names! {
    Via = "Via", b'v';
    From = "From", b'f';
    To = "To", b't';
    CallId = "Call-ID", b'i';
    CSeq = "CSeq";
    MaxForwards = "Max-Forwards";
    Contact = "Contact", b'm';
    ContentLength = "Content-Length", b'l';
    ContentType = "Content-Type", b'c';
    ContentEncoding = "Content-Encoding", b'e';
    ContentDisposition = "Content-Disposition";
    Subject = "Subject", b's';
    Supported = "Supported", b'k';
    Require = "Require";
    ProxyRequire = "Proxy-Require";
    Unsupported = "Unsupported";
    Allow = "Allow";
    AllowEvents = "Allow-Events", b'u';
    Event = "Event", b'o';
    ReferTo = "Refer-To", b'r';
    ReferredBy = "Referred-By", b'b';
    SessionExpires = "Session-Expires", b'x';
    MinSe = "Min-SE";
    Route = "Route";
    RecordRoute = "Record-Route";
    PAssertedIdentity = "P-Asserted-Identity";
    PPreferredIdentity = "P-Preferred-Identity";
    Privacy = "Privacy";
    Reason = "Reason";
    RetryAfter = "Retry-After";
    Expires = "Expires";
    Accept = "Accept";
    Date = "Date";
    Timestamp = "Timestamp";
    UserAgent = "User-Agent";
    Server = "Server";
    Warning = "Warning";
    RSeq = "RSeq";
    RAck = "RAck";
    Authorization = "Authorization";
    ProxyAuthorization = "Proxy-Authorization";
    WwwAuthenticate = "WWW-Authenticate";
    ProxyAuthenticate = "Proxy-Authenticate";
    Identity = "Identity", b'y';
}

impl HeaderName {
    /// Canonicalises a name as it appears on the wire or in a lookup.
    pub fn from_bytes(raw: &[u8]) -> HeaderName {
        if let [c] = raw {
            return HeaderName::from_compact(*c).unwrap_or(HeaderName::Other);
        }
        KNOWN
            .iter()
            .find(|(_, canon)| canon.as_bytes().eq_ignore_ascii_case(raw))
            .map_or(HeaderName::Other, |(n, _)| *n)
    }

    /// Name used in error messages and reason phrases.
    pub fn label(self) -> &'static str {
        self.canonical().unwrap_or("extension")
    }
}

/// RFC 3261 §25.1 `token` characters.
pub fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_char(b))
}

/// Linear whitespace inside an indexed header value: SP, HTAB and the CR/LF of a fold
/// (the indexer only lets CR/LF into a value when a continuation line follows).
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub(crate) fn trim_lws(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_lws(b)).map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or(&[])
}

/// A header value did not match its grammar. The message layer turns it into
/// [`ParseError::BadHeader`](super::error::ParseError::BadHeader) naming the field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed header value")]
pub struct Malformed;

/// A small byte cursor; every access is bounds-checked.
pub(crate) struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a [u8]) -> Self {
        Cursor { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    /// Skips LWS and says whether there was any.
    fn skip_lws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_lws) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        self.s.get(start..self.pos).unwrap_or(&[])
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn rest(&self) -> &'a [u8] {
        self.s.get(self.pos..).unwrap_or(&[])
    }

    fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_token_char);
        if t.is_empty() {
            None
        } else {
            std::str::from_utf8(t).ok()
        }
    }

    /// A quoted-string (RFC 3261 §25.1), returned with its quotes; quoted-pairs may escape
    /// any octet but CR and LF, including NUL (RFC 4475 §3.1.1.2).
    fn quoted(&mut self) -> Option<&'a [u8]> {
        let start = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return self.s.get(start..self.pos);
                }
                b'\\' => {
                    self.pos += 1;
                    match self.peek()? {
                        b'\r' | b'\n' => return None,
                        _ => self.pos += 1,
                    }
                }
                _ => self.pos += 1,
            }
        }
    }

    /// `*( SEMI generic-param )` with LWS allowed around `;` and `=` (RFC 3261 §25.1 SEMI,
    /// EQUAL). An empty name (`;;`) is an error (RFC 4475 §3.1.2.1).
    fn params(&mut self) -> Option<Vec<Param<'a>>> {
        let mut out = Vec::new();
        loop {
            let save = self.pos;
            self.skip_lws();
            if !self.eat(b';') {
                self.pos = save;
                return Some(out);
            }
            self.skip_lws();
            let name = self.token()?;
            let save = self.pos;
            self.skip_lws();
            let value = if self.eat(b'=') {
                self.skip_lws();
                let v = if self.peek() == Some(b'"') {
                    self.quoted()?
                } else {
                    self.take_while(|b| {
                        !is_lws(b) && !matches!(b, b';' | b',' | b'"' | b'<' | b'>' | b'=')
                    })
                };
                if v.is_empty() {
                    return None;
                }
                Some(std::str::from_utf8(v).ok()?)
            } else {
                self.pos = save;
                None
            };
            out.push(Param { name, value });
        }
    }

    /// Succeeds only if nothing but LWS is left.
    fn finish(&mut self) -> Option<()> {
        self.skip_lws();
        self.at_end().then_some(())
    }
}

/// Splits a header value at commas that are outside quoted strings and angle brackets
/// (RFC 3261 §7.3.1), returning the trimmed element ranges. An empty element is kept as an
/// empty range so callers can reject `a,,b`.
pub fn split_list(value: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut escaped = false;
    for (i, &b) in value.iter().enumerate() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quote = false;
            }
            continue;
        }
        match b {
            b'"' => in_quote = true,
            b'<' => in_angle = true,
            b'>' => in_angle = false,
            b',' if !in_angle => {
                out.push(trim_range(value, start..i));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(trim_range(value, start..value.len()));
    out
}

fn trim_range(s: &[u8], r: Range<usize>) -> Range<usize> {
    let mut a = r.start;
    let mut b = r.end;
    while a < b && s.get(a).copied().is_some_and(is_lws) {
        a += 1;
    }
    while b > a && s.get(b - 1).copied().is_some_and(is_lws) {
        b -= 1;
    }
    a..b
}

/// Elements of a list value; `None` if any element is empty.
fn list_elements(value: &[u8]) -> Option<Vec<&[u8]>> {
    let ranges = split_list(value);
    if ranges.len() == 1 && ranges.first().is_some_and(|r| r.is_empty()) {
        return Some(Vec::new());
    }
    ranges
        .into_iter()
        .map(|r| value.get(r).filter(|e| !e.is_empty()))
        .collect()
}

/// Removes the backslashes of quoted-pairs: `J Rosenberg \\\"` becomes `J Rosenberg \"`.
pub fn unescape_quoted(inner: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(inner.len());
    let mut it = inner.iter();
    while let Some(&b) = it.next() {
        if b == b'\\' {
            if let Some(&n) = it.next() {
                out.push(n);
            }
        } else {
            out.push(b);
        }
    }
    out
}

/// Display name of a name-addr: raw bytes, since real trunks send Latin-1 as well as UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplayName<'a> {
    /// Inside the quotes, escapes as received.
    Quoted(&'a [u8]),
    /// Unquoted `*(token LWS)`, as received.
    Tokens(&'a [u8]),
}

impl DisplayName<'_> {
    /// The display name with quoted-pair escapes removed.
    pub fn unescaped(&self) -> Vec<u8> {
        match self {
            DisplayName::Quoted(q) => unescape_quoted(q),
            DisplayName::Tokens(t) => t.to_vec(),
        }
    }
}

/// `name-addr / addr-spec` followed by header parameters (From, To, Contact, Route, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display_name: Option<DisplayName<'a>>,
    /// Was the URI in `<>`? If not, every `;param` is a header parameter (RFC 3261 §20.10).
    pub bracketed: bool,
    pub uri_raw: &'a str,
    pub uri: Uri<'a>,
    pub params: Vec<Param<'a>>,
}

impl<'a> NameAddr<'a> {
    pub fn parse(value: &'a [u8]) -> Result<NameAddr<'a>, Malformed> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let mut display_name = None;
        let bracketed;
        if c.peek() == Some(b'"') {
            let q = c.quoted().ok_or(Malformed)?;
            display_name = Some(DisplayName::Quoted(q.get(1..q.len() - 1).ok_or(Malformed)?));
            c.skip_lws();
            bracketed = true;
        } else {
            // A '<' before any ';' or '"' means name-addr with an unquoted display name
            // (possibly glued to the '<': RFC 4475 §3.1.1.6).
            let rest = c.rest();
            let lt = rest.iter().position(|&b| b == b'<');
            let stop = rest.iter().position(|&b| matches!(b, b';' | b'"'));
            bracketed = match (lt, stop) {
                (Some(l), Some(s)) => l < s,
                (Some(_), None) => true,
                _ => false,
            };
            if let Some(l) = lt.filter(|_| bracketed) {
                let dn = trim_lws(rest.get(..l).ok_or(Malformed)?);
                // Unquoted display names are tokens separated by LWS (RFC 4475 §3.1.2.15).
                if !dn.iter().all(|&b| is_token_char(b) || is_lws(b)) {
                    return Err(Malformed);
                }
                if !dn.is_empty() {
                    display_name = Some(DisplayName::Tokens(dn));
                }
                c.pos += l;
            }
        }
        let uri_bytes = if bracketed {
            if !c.eat(b'<') {
                return Err(Malformed);
            }
            let u = c.take_while(|b| b != b'>');
            if !c.eat(b'>') {
                return Err(Malformed);
            }
            u
        } else {
            let u = c.take_while(|b| !is_lws(b) && b != b';' && b != b',');
            // An addr-spec with URI headers must be bracketed (RFC 4475 §3.1.2.13).
            if u.contains(&b'?') {
                return Err(Malformed);
            }
            u
        };
        let uri_raw = std::str::from_utf8(uri_bytes).map_err(|_| Malformed)?;
        // LWS inside the brackets is not allowed (RFC 4475 §3.1.2.14).
        let uri = Uri::parse(uri_raw).map_err(|_| Malformed)?;
        let params = c.params().ok_or(Malformed)?;
        c.finish().ok_or(Malformed)?;
        Ok(NameAddr {
            display_name,
            bracketed,
            uri_raw,
            uri,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(&self.params, name)
    }

    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten()
    }

    /// Parses a comma-separated list of name-addrs.
    pub fn parse_list(value: &'a [u8]) -> Result<Vec<NameAddr<'a>>, Malformed> {
        list_elements(value)
            .ok_or(Malformed)?
            .into_iter()
            .map(NameAddr::parse)
            .collect()
    }
}

/// Contact header values (RFC 3261 §20.10): `*` or a list of name-addrs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contacts<'a> {
    Star,
    List(Vec<NameAddr<'a>>),
}

impl<'a> Contacts<'a> {
    /// Parses all Contact field values of a message, in order.
    pub fn parse<I: IntoIterator<Item = &'a [u8]>>(values: I) -> Result<Contacts<'a>, Malformed> {
        let mut list = Vec::new();
        let mut star = false;
        for v in values {
            for e in list_elements(v).ok_or(Malformed)? {
                if e == b"*" {
                    star = true;
                } else {
                    list.push(NameAddr::parse(e)?);
                }
            }
        }
        match (star, list.is_empty()) {
            (true, true) => Ok(Contacts::Star),
            (true, false) => Err(Malformed),
            (false, _) => Ok(Contacts::List(list)),
        }
    }
}

/// One Via value (RFC 3261 §20.42).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    pub protocol_name: &'a str,
    pub protocol_version: &'a str,
    pub transport: &'a str,
    pub host: Host<'a>,
    pub port: Option<u16>,
    pub params: Vec<Param<'a>>,
}

impl<'a> Via<'a> {
    pub fn parse(value: &'a [u8]) -> Result<Via<'a>, Malformed> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let protocol_name = c.token().ok_or(Malformed)?;
        let slash = |c: &mut Cursor<'a>| -> Result<&'a str, Malformed> {
            c.skip_lws();
            if !c.eat(b'/') {
                return Err(Malformed);
            }
            c.skip_lws();
            c.token().ok_or(Malformed)
        };
        let protocol_version = slash(&mut c)?;
        let transport = slash(&mut c)?;
        if !c.skip_lws() {
            return Err(Malformed);
        }
        let host_bytes = if c.peek() == Some(b'[') {
            let h = c.take_while(|b| b != b']');
            if !c.eat(b']') {
                return Err(Malformed);
            }
            value.get(c.pos - h.len() - 1..c.pos).ok_or(Malformed)?
        } else {
            c.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        let host = Host::parse(std::str::from_utf8(host_bytes).map_err(|_| Malformed)?)
            .map_err(|_| Malformed)?;
        let save = c.pos;
        c.skip_lws();
        let port = if c.eat(b':') {
            c.skip_lws();
            let p = c.take_while(|b| b.is_ascii_digit());
            Some(
                parse_port(std::str::from_utf8(p).map_err(|_| Malformed)?)
                    .map_err(|_| Malformed)?,
            )
        } else {
            c.pos = save;
            None
        };
        let params = c.params().ok_or(Malformed)?;
        c.finish().ok_or(Malformed)?;
        Ok(Via {
            protocol_name,
            protocol_version,
            transport,
            host,
            port,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(&self.params, name)
    }

    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch").flatten()
    }

    /// RFC 3261 §17.2.3: a branch starting with the magic cookie identifies the transaction.
    pub fn has_magic_cookie(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with("z9hG4bK"))
    }

    pub fn received(&self) -> Option<&'a str> {
        self.param("received").flatten()
    }

    /// RFC 3581: `Some(None)` when the client asks for rport, `Some(Some(p))` once filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.param("rport")
            .map(|v| v.and_then(|p| parse_port(p).ok()))
    }

    pub fn maddr(&self) -> Option<&'a str> {
        self.param("maddr").flatten()
    }

    /// Parses every Via value in a list value.
    pub fn parse_list(value: &'a [u8]) -> Result<Vec<Via<'a>>, Malformed> {
        list_elements(value)
            .filter(|l| !l.is_empty())
            .ok_or(Malformed)?
            .into_iter()
            .map(Via::parse)
            .collect()
    }
}

/// CSeq (RFC 3261 §20.16): sequence number below 2^31 and the method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    pub fn parse(value: &'a [u8]) -> Result<CSeq<'a>, Malformed> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let seq = parse_u64(c.take_while(|b| b.is_ascii_digit())).ok_or(Malformed)?;
        // RFC 3261 §8.1.1.5: "MUST be ... less than 2**31" (RFC 4475 §3.1.2.4).
        let seq = u32::try_from(seq)
            .ok()
            .filter(|&s| s < 1 << 31)
            .ok_or(Malformed)?;
        if !c.skip_lws() {
            return Err(Malformed);
        }
        let method = c.token().ok_or(Malformed)?;
        c.finish().ok_or(Malformed)?;
        Ok(CSeq { seq, method })
    }
}

/// Parses `1*DIGIT` without overflow (RFC 4475 §3.1.2.3 warns about exactly this).
pub(crate) fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A value that is only `1*DIGIT`, surrounded by optional LWS.
pub(crate) fn parse_number(value: &[u8]) -> Option<u64> {
    parse_u64(trim_lws(value))
}

/// Content-Type (RFC 3261 §20.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentType<'a> {
    pub mtype: &'a str,
    pub subtype: &'a str,
    pub params: Vec<Param<'a>>,
}

impl<'a> ContentType<'a> {
    pub fn parse(value: &'a [u8]) -> Result<ContentType<'a>, Malformed> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let mtype = c.token().ok_or(Malformed)?;
        c.skip_lws();
        if !c.eat(b'/') {
            return Err(Malformed);
        }
        c.skip_lws();
        let subtype = c.token().ok_or(Malformed)?;
        let params = c.params().ok_or(Malformed)?;
        c.finish().ok_or(Malformed)?;
        Ok(ContentType {
            mtype,
            subtype,
            params,
        })
    }

    /// Media types compare case-insensitively (RFC 2045 §5.1).
    pub fn is(&self, mtype: &str, subtype: &str) -> bool {
        self.mtype.eq_ignore_ascii_case(mtype) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    pub fn is_sdp(&self) -> bool {
        self.is("application", "sdp")
    }

    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(&self.params, name)
    }
}

/// Option tags of Require, Supported, Proxy-Require, Unsupported (RFC 3261 §20.32).
pub fn parse_tokens(value: &[u8]) -> Result<Vec<&str>, Malformed> {
    list_elements(value)
        .ok_or(Malformed)?
        .into_iter()
        .map(|e| {
            if is_token(e) {
                std::str::from_utf8(e).map_err(|_| Malformed)
            } else {
                Err(Malformed)
            }
        })
        .collect()
}

/// Reason (RFC 3326): protocol, cause and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason<'a> {
    pub protocol: &'a str,
    pub params: Vec<Param<'a>>,
}

impl<'a> Reason<'a> {
    pub fn parse(value: &'a [u8]) -> Result<Reason<'a>, Malformed> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let protocol = c.token().ok_or(Malformed)?;
        let params = c.params().ok_or(Malformed)?;
        c.finish().ok_or(Malformed)?;
        Ok(Reason { protocol, params })
    }

    pub fn parse_list(value: &'a [u8]) -> Result<Vec<Reason<'a>>, Malformed> {
        list_elements(value)
            .ok_or(Malformed)?
            .into_iter()
            .map(Reason::parse)
            .collect()
    }

    /// `cause` as a number (a SIP status or a Q.850 cause value).
    pub fn cause(&self) -> Option<u16> {
        find_param(&self.params, "cause")
            .flatten()
            .and_then(|v| v.parse().ok())
    }

    /// `text`, without its quotes.
    pub fn text(&self) -> Option<&'a str> {
        find_param(&self.params, "text").flatten()
    }
}

/// Retry-After (RFC 3261 §20.33).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryAfter<'a> {
    pub seconds: u32,
    /// Comment without its parentheses.
    pub comment: Option<&'a [u8]>,
    pub params: Vec<Param<'a>>,
}

impl<'a> RetryAfter<'a> {
    pub fn parse(value: &'a [u8]) -> Result<RetryAfter<'a>, Malformed> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let seconds = parse_u64(c.take_while(|b| b.is_ascii_digit()))
            .and_then(|s| u32::try_from(s).ok())
            .ok_or(Malformed)?;
        c.skip_lws();
        let comment = if c.eat(b'(') {
            let start = c.pos;
            let mut depth = 1usize;
            while depth > 0 {
                match c.peek().ok_or(Malformed)? {
                    b'(' => depth += 1,
                    b')' => depth -= 1,
                    b'\\' => c.pos += 1,
                    _ => {}
                }
                c.pos += 1;
            }
            Some(value.get(start..c.pos - 1).ok_or(Malformed)?)
        } else {
            None
        };
        let params = c.params().ok_or(Malformed)?;
        c.finish().ok_or(Malformed)?;
        Ok(RetryAfter {
            seconds,
            comment,
            params,
        })
    }

    pub fn duration(&self) -> Option<u32> {
        find_param(&self.params, "duration")
            .flatten()
            .and_then(|v| v.parse().ok())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_case_insensitive_names() {
        for (raw, name) in [
            (&b"v"[..], HeaderName::Via),
            (b"VIA", HeaderName::Via),
            (b"i", HeaderName::CallId),
            (b"call-id", HeaderName::CallId),
            (b"L", HeaderName::ContentLength),
            (b"k", HeaderName::Supported),
            (b"x", HeaderName::SessionExpires),
            (b"o", HeaderName::Event),
            (b"b", HeaderName::ReferredBy),
            (b"p-asserted-identity", HeaderName::PAssertedIdentity),
            (b"C%6Fntact", HeaderName::Other),
            (b"q", HeaderName::Other),
        ] {
            assert_eq!(HeaderName::from_bytes(raw), name, "{raw:?}");
        }
        assert_eq!(HeaderName::CallId.canonical(), Some("Call-ID"));
    }

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        let v = br#""a,b" <sip:x@y;p=1,2>;q=1 , <sip:z>"#;
        let parts: Vec<_> = split_list(v).into_iter().map(|r| &v[r]).collect();
        assert_eq!(
            parts,
            vec![&br#""a,b" <sip:x@y;p=1,2>;q=1"#[..], b"<sip:z>"]
        );
        assert_eq!(list_elements(b"a,,b"), None);
        assert_eq!(list_elements(b"  "), Some(vec![]));
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            br#""J Rosenberg \\\""   <sip:j@example.com>
  ;
  tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(n.display_name.unwrap().unescaped(), br#"J Rosenberg \""#);
        assert_eq!(n.tag(), Some("98asjd8"));
        assert!(n.bracketed);

        let n = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display_name, Some(DisplayName::Tokens(b"caller")));
        assert_eq!(n.tag(), Some("323"));

        let n = NameAddr::parse(b"sip:+1555@gw.example.net;unknownparam").unwrap();
        assert!(!n.bracketed);
        assert_eq!(n.param("unknownparam"), Some(None));
        assert!(n.uri.as_sip().unwrap().params.is_empty());

        let n = NameAddr::parse(b"<tel:+15551234;phone-context=x>;tag=a").unwrap();
        assert_eq!(n.uri.scheme(), "tel");
    }

    #[test]
    fn name_addr_rejects() {
        for bad in [
            &br#""Mr. J. User <sip:j.user@example.com>"#[..],
            br#""Watson, Thomas" < sip:t.watson@example.org >"#,
            b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43",
            b"sip:user@example.com?Route=%3Csip:sip.example.com%3E",
            br#""Joe" <sip:joe@example.org>;;;;"#,
            b"<sip:joe@example.org",
            b"",
        ] {
            assert!(
                NameAddr::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn via_with_folds_ipv6_and_rport() {
        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, Host::V4("192.0.2.2".parse().unwrap()));
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.has_magic_cookie());

        let v = Via::parse(
            b"SIP/2.0/TCP [2001:db8::9]:5070;rport;received=2001:db8::1;branch=z9hG4bKx",
        )
        .unwrap();
        assert_eq!(v.host, Host::V6("2001:db8::9".parse().unwrap()));
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some("2001:db8::1"));
        assert!(v.has_magic_cookie());

        let v = Via::parse(b"SIP/2.0/UDP h;rport=5061").unwrap();
        assert_eq!(v.rport(), Some(Some(5061)));

        assert!(Via::parse_list(b"SIP/2.0/UDP 192.0.2.15;;,;,,").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP").is_err());
        assert!(Via::parse(b"SIP/2.0/UDP host:70000").is_err());
    }

    #[test]
    fn cseq_bounds() {
        assert_eq!(
            CSeq::parse(b"0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: "INVITE"
            }
        );
        assert!(CSeq::parse(b"2147483647 BYE").is_ok());
        assert!(CSeq::parse(b"2147483648 BYE").is_err());
        assert!(CSeq::parse(b"36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse(b"1INVITE").is_err());
        assert!(CSeq::parse(b"-1 INVITE").is_err());
    }

    #[test]
    fn contacts_star_and_list() {
        assert_eq!(Contacts::parse([&b" * "[..]]).unwrap(), Contacts::Star);
        let Contacts::List(l) = Contacts::parse([
            &b"<sip:a@b>;q=0.5, \"X\" <sip:c@d>"[..],
            b"sip:e@f;expires=60",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(l.len(), 3);
        assert_eq!(l[2].param("expires"), Some(Some("60")));
        assert!(Contacts::parse([&b"*, <sip:a@b>"[..]]).is_err());
    }

    #[test]
    fn small_headers() {
        let ct = ContentType::parse(b"Application/SDP ; charset=utf-8").unwrap();
        assert!(ct.is_sdp());
        assert_eq!(ct.param("charset"), Some(Some("utf-8")));
        assert_eq!(
            parse_tokens(b"100rel, timer").unwrap(),
            vec!["100rel", "timer"]
        );
        assert_eq!(parse_tokens(b"").unwrap(), Vec::<&str>::new());
        assert!(parse_tokens(b"a b").is_err());
        let r = Reason::parse_list(br#"Q.850;cause=16;text="Normal call clearing", SIP;cause=200"#)
            .unwrap();
        assert_eq!(r[0].cause(), Some(16));
        assert_eq!(r[0].text(), Some("Normal call clearing"));
        assert_eq!(r[1].protocol, "SIP");
        let ra = RetryAfter::parse(b"120 (I'm in a (meeting)) ;duration=3600").unwrap();
        assert_eq!(ra.seconds, 120);
        assert_eq!(ra.comment, Some(&b"I'm in a (meeting)"[..]));
        assert_eq!(ra.duration(), Some(3600));
        assert!(RetryAfter::parse(b"949302838503028349304023988").is_err());
        assert_eq!(parse_number(b" 0068 "), Some(68));
        assert_eq!(parse_number(b"-999"), None);
    }
}
