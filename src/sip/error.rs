//! Typed errors of the SIP message layer and the status each parse error is answered with
//! (400, 413, 505; RFC 3261 §8.2, §21.4).
//!
//! A leaf of the message layer: it knows no message, so the parser and the builders can both
//! use it. Error texts name the header that failed, never its value, so nothing from the wire
//! (which may carry digits in secure mode) reaches logs through them.

/// What was wrong with a received message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("empty message")]
    Empty,
    #[error("malformed start line")]
    BadStartLine,
    #[error("malformed Request-URI")]
    BadRequestUri,
    #[error("unsupported SIP version")]
    BadVersion,
    #[error("status code out of range")]
    BadStatus,
    #[error("malformed header line")]
    BadHeaderLine,
    #[error("no empty line after the header fields")]
    NoHeaderEnd,
    #[error("missing {0} header field")]
    MissingHeader(&'static str),
    #[error("more than one {0} header field")]
    DuplicateHeader(&'static str),
    #[error("malformed {0} header field")]
    BadHeader(&'static str),
    #[error("CSeq method does not match the request method")]
    CSeqMismatch,
    #[error("body shorter than Content-Length ({declared} declared, {actual} present)")]
    BodyTooShort { declared: usize, actual: usize },
}

impl ParseError {
    /// The status a server answers this error with.
    pub fn status(&self) -> u16 {
        match self {
            // RFC 3261 §21.4.11: the request body is larger than the server will process.
            ParseError::TooLarge { .. } => 413,
            // RFC 3261 §8.2.2 / §21.5.7; RFC 4475 §3.1.2.16.
            ParseError::BadVersion => 505,
            _ => 400,
        }
    }

    /// Reason phrase naming the syntax problem (RFC 3261 §21.4.1 suggests e.g.
    /// "Missing Call-ID header field").
    pub fn reason_phrase(&self) -> String {
        match self.status() {
            413 => "Request Entity Too Large".to_owned(),
            505 => "Version Not Supported".to_owned(),
            _ => {
                let text = match self {
                    // Numbers in these two are harmless but make phrases unstable; keep it short.
                    ParseError::BodyTooShort { .. } => {
                        "Body shorter than Content-Length".to_owned()
                    }
                    ParseError::TooManyHeaders { .. } => "Too many header fields".to_owned(),
                    other => other.to_string(),
                };
                let mut c = text.chars();
                match c.next() {
                    Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                    None => "Bad Request".to_owned(),
                }
            }
        }
    }
}

/// Why an edit or a builder refused to produce a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("header name is not a token")]
    BadName,
    /// CR, LF or NUL in a value would let it forge header lines (header injection).
    #[error("value contains CR, LF or NUL")]
    BadValue,
    #[error("status code out of range")]
    BadStatus,
    #[error("malformed URI")]
    BadUri,
    #[error("not a request")]
    NotARequest,
    #[error("built or edited message does not parse: {0}")]
    Invalid(ParseError),
}
