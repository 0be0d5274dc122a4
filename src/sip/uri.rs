//! SIP, SIPS and tel URIs as borrowed views (RFC 3261 §19.1, RFC 3966).
//!
//! Owns URI syntax only: what a B2BUA reads out of a Request-URI, From/To, Contact or Route.
//! Escapes (`%HH`) are kept as received, because RFC 3261 §19.1.4 compares escaped and
//! unescaped forms as equal only after decoding, and a relay must forward what it got.
//! Unknown schemes are kept opaque so the caller can answer 416 (RFC 3261 §8.2.2.1).
//! Never panics on wire input.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Why a URI did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("missing or malformed scheme")]
    Scheme,
    #[error("whitespace or angle bracket inside a URI")]
    IllegalChar,
    #[error("malformed host")]
    Host,
    #[error("malformed port")]
    Port,
    #[error("malformed URI parameter")]
    Param,
    #[error("empty user part")]
    User,
    #[error("empty tel number")]
    Number,
}

/// A host as written in a URI or Via sent-by: name, IPv4 or bracketed IPv6 (RFC 3261 §25.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    Name(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl<'a> Host<'a> {
    /// Parses `hostname`, `IPv4address` or `[IPv6reference]`.
    pub fn parse(s: &'a str) -> Result<Host<'a>, UriError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(UriError::Host)?;
            return inner.parse().map(Host::V6).map_err(|_| UriError::Host);
        }
        if let Ok(v4) = s.parse::<Ipv4Addr>() {
            return Ok(Host::V4(v4));
        }
        // hostname = *( domainlabel "." ) toplabel [ "." ]; '_' is not in the grammar but
        // appears in real deployments (SRV-style names), so it is tolerated.
        if s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err(UriError::Host);
        }
        Ok(Host::Name(s))
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// One `;name[=value]` parameter. Values are raw: quoted values keep their quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param<'a> {
    pub name: &'a str,
    pub value: Option<&'a str>,
}

impl<'a> Param<'a> {
    /// The value without surrounding quotes (escapes inside are left as they are).
    pub fn unquoted(&self) -> Option<&'a str> {
        self.value.map(|v| {
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v)
        })
    }
}

/// Looks a parameter up by name, case-insensitively (RFC 3261 §7.3.1, §19.1.4).
/// `Some(None)` means present without a value (a flag such as `lr` or `rport`).
pub fn find_param<'a>(params: &[Param<'a>], name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(name))
        .map(|p| p.unquoted())
}

/// `sip:` / `sips:` URI (RFC 3261 §19.1.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    pub secure: bool,
    /// User part as received (may hold escapes, `;` and `?`: RFC 4475 §3.1.1.2, §3.1.1.9).
    pub user: Option<&'a str>,
    pub password: Option<&'a str>,
    pub host: Host<'a>,
    pub port: Option<u16>,
    pub params: Vec<Param<'a>>,
    /// `?hname=hvalue&...` as received, without the `?`.
    pub headers: Option<&'a str>,
}

impl<'a> SipUri<'a> {
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(&self.params, name)
    }

    /// Loose routing flag (RFC 3261 §16.4, §19.1.1).
    pub fn lr(&self) -> bool {
        self.param("lr").is_some()
    }

    pub fn transport(&self) -> Option<&'a str> {
        self.param("transport").flatten()
    }

    fn parse(secure: bool, rest: &'a str) -> Result<SipUri<'a>, UriError> {
        // '@' cannot appear unescaped in userinfo, params or headers, so the first one ends
        // the userinfo; the user part itself may hold ';', '?', ',' (RFC 4475 §3.1.1.2).
        let (userinfo, hostpart) = match rest.split_once('@') {
            Some((ui, hp)) => (Some(ui), hp),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match ui.split_once(':') {
                    Some((u, p)) => (u, Some(p)),
                    None => (ui, None),
                };
                if u.is_empty() {
                    return Err(UriError::User);
                }
                (Some(u), p)
            }
        };
        let (before_headers, headers) = match hostpart.split_once('?') {
            Some((b, h)) => (b, Some(h)),
            None => (hostpart, None),
        };
        let mut parts = before_headers.split(';');
        let hostport = parts.next().unwrap_or("");
        let (host, port) = split_hostport(hostport)?;
        let mut params = Vec::new();
        for p in parts {
            params.push(parse_uri_param(p)?);
        }
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }
}

/// Splits `host[:port]`, with IPv6 references in brackets.
pub(crate) fn split_hostport(s: &str) -> Result<(Host<'_>, Option<u16>), UriError> {
    let (host, port) = if s.starts_with('[') {
        let close = s.find(']').ok_or(UriError::Host)?;
        let (h, rest) = s.split_at(close + 1);
        match rest {
            "" => (h, None),
            _ => (h, Some(rest.strip_prefix(':').ok_or(UriError::Port)?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let port = port.map(parse_port).transpose()?;
    Ok((Host::parse(host)?, port))
}

pub(crate) fn parse_port(p: &str) -> Result<u16, UriError> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UriError::Port);
    }
    p.parse().map_err(|_| UriError::Port)
}

fn parse_uri_param(p: &str) -> Result<Param<'_>, UriError> {
    let (name, value) = match p.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (p, None),
    };
    if name.is_empty() || value == Some("") {
        return Err(UriError::Param);
    }
    Ok(Param { name, value })
}

/// `tel:` URI (RFC 3966 §3): the number as written plus its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TelUri<'a> {
    pub number: &'a str,
    pub params: Vec<Param<'a>>,
}

impl<'a> TelUri<'a> {
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        find_param(&self.params, name)
    }

    /// Global numbers start with '+'; local ones need a phone-context (RFC 3966 §5.1.5).
    pub fn is_global(&self) -> bool {
        self.number.starts_with('+')
    }
}

/// Any URI a SIP message may carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Uri<'a> {
    Sip(SipUri<'a>),
    Tel(TelUri<'a>),
    /// A scheme we do not interpret (RFC 4475 §3.3.2 and §3.3.4); kept opaque.
    Other {
        scheme: &'a str,
        opaque: &'a str,
    },
}

impl<'a> Uri<'a> {
    /// Parses an absolute URI. Whitespace and angle brackets are never part of one
    /// (RFC 4475 §3.1.2.7, §3.1.2.8).
    pub fn parse(s: &'a str) -> Result<Uri<'a>, UriError> {
        if s.bytes()
            .any(|b| b.is_ascii_whitespace() || matches!(b, b'<' | b'>' | b'"') || b < 0x20)
        {
            return Err(UriError::IllegalChar);
        }
        let (scheme, rest) = s.split_once(':').ok_or(UriError::Scheme)?;
        let mut sb = scheme.bytes();
        let scheme_ok = sb.next().is_some_and(|b| b.is_ascii_alphabetic())
            && sb.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok || rest.is_empty() {
            return Err(UriError::Scheme);
        }
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse(false, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse(true, rest).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            let mut parts = rest.split(';');
            let number = parts.next().unwrap_or("");
            if number.is_empty() {
                return Err(UriError::Number);
            }
            let params = parts.map(parse_uri_param).collect::<Result<Vec<_>, _>>()?;
            Ok(Uri::Tel(TelUri { number, params }))
        } else {
            Ok(Uri::Other {
                scheme,
                opaque: rest,
            })
        }
    }

    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Other { scheme, .. } => scheme,
        }
    }

    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_with_everything() {
        let u = Uri::parse("sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?Subject=hi").unwrap();
        let Uri::Sip(s) = u else { panic!("not sip") };
        assert!(s.secure);
        assert_eq!(s.user, Some("alice"));
        assert_eq!(s.password, Some("pw"));
        assert_eq!(s.host, Host::V6("2001:db8::1".parse().unwrap()));
        assert_eq!(s.port, Some(5061));
        assert_eq!(s.transport(), Some("tcp"));
        assert!(s.lr());
        assert_eq!(s.headers, Some("Subject=hi"));
    }

    #[test]
    fn user_part_keeps_escapes_and_odd_characters() {
        let Uri::Sip(s) = Uri::parse("sip:user;par=u%40example.net@example.com").unwrap() else {
            panic!()
        };
        assert_eq!(s.user, Some("user;par=u%40example.net"));
        assert_eq!(s.host, Host::Name("example.com"));
        assert!(s.params.is_empty());
    }

    #[test]
    fn tel_and_unknown_schemes() {
        let Uri::Tel(t) = Uri::parse("tel:+1-201-555-0123;ext=7").unwrap() else {
            panic!()
        };
        assert_eq!(t.number, "+1-201-555-0123");
        assert!(t.is_global());
        assert_eq!(t.param("EXT"), Some(Some("7")));
        let u = Uri::parse("soap.beep://192.0.2.103:3002").unwrap();
        assert_eq!(u.scheme(), "soap.beep");
        assert!(Uri::parse("tel:").is_err());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "<sip:user@example.com>",
            "sip:user@example.com; lr",
            "sip:",
            "sip:@host",
            "sip:host:99999",
            "sip:host:",
            "sip:[::1",
            "sip:host;;lr",
            "sip:ho st",
            "1sip:x",
            "sip:bad!host",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn ipv6_reference_with_embedded_ipv4_and_odd_params() {
        let Uri::Sip(s) = Uri::parse("sip:user@[::1:199.9.9.1]:9060;foo[1]=+id").unwrap() else {
            panic!()
        };
        assert_eq!(s.host, Host::V6("::1:199.9.9.1".parse().unwrap()));
        assert_eq!(s.port, Some(9060));
        assert_eq!(s.param("foo[1]"), Some(Some("+id")));
    }

    #[test]
    fn host_display_brackets_v6() {
        assert_eq!(Host::parse("[::1]").unwrap().to_string(), "[::1]");
        assert_eq!(Host::parse("10.0.0.1").unwrap().to_string(), "10.0.0.1");
    }
}
