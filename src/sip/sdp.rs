//! SDP parse and rewrite for media anchoring (RFC 4566/8866 syntax, RFC 3264 offer/answer).
//!
//! Owns reading what a B2BUA needs from a session description (connection address and port
//! per media, direction, audio codecs and the telephone-event payload type) and rewriting it
//! so that media flows through the relay: `c=`, `m=` port and `a=rtcp` point at our address and
//! ports, and the codec policy keeps only what the scrubber can inspect (PCMU, PCMA,
//! telephone-event/8000, CN). Lines it does not deliberately change (direction, ptime,
//! unknown attributes, `o=`, `s=`, bandwidth, ...) leave byte-identical with their own line
//! endings. It never touches sockets and never panics on wire input.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a description cannot be used. [`SdpError::sip_status`] gives the SIP answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("line {line} is not <type>=<value>")]
    Malformed { line: usize },
    #[error("media {index}: malformed m= line")]
    BadMedia { index: usize },
    #[error("line {line}: malformed c= line")]
    BadConnection { line: usize },
    /// SRTP offered where the route's policy refuses it, or refused where it requires it.
    #[error("media {index}: secure RTP is not acceptable on this route")]
    Srtp { index: usize },
    #[error("media {index}: transport is not RTP/AVP or RTP/SAVP")]
    UnsupportedTransport { index: usize },
    /// Only G.711 can be scrubbed in the sample domain.
    #[error("media {index}: audio offers neither PCMU nor PCMA")]
    NoG711 { index: usize },
    #[error("media {index}: no connection address")]
    MissingConnection { index: usize },
    #[error("media {index}: no relay ports given")]
    NoPorts { index: usize },
}

impl SdpError {
    /// 488 Not Acceptable Here for what our policy refuses (RFC 3261 §21.4.26), 400 for a
    /// broken description, 500 when the caller gave us no ports.
    pub fn sip_status(&self) -> u16 {
        match self {
            SdpError::Srtp { .. }
            | SdpError::UnsupportedTransport { .. }
            | SdpError::NoG711 { .. } => 488,
            SdpError::NoPorts { .. } => 500,
            _ => 400,
        }
    }
}

/// Media direction (RFC 3264 §5.1, §8.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_attr(name: &[u8]) -> Option<Direction> {
        match name {
            b"sendrecv" => Some(Direction::SendRecv),
            b"sendonly" => Some(Direction::SendOnly),
            b"recvonly" => Some(Direction::RecvOnly),
            b"inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The RFC 2543 hold (c= 0.0.0.0) means "do not send to me".
    fn without_receive(self) -> Direction {
        match self {
            Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
            Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
        }
    }
}

/// Payload types of the codecs the relay handles, as found in one media section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Codecs {
    pub pcmu: Option<u8>,
    pub pcma: Option<u8>,
    /// RFC 4733 telephone-event/8000.
    pub telephone_event: Option<u8>,
    /// RFC 3389 comfort noise at 8000 Hz.
    pub cn: Option<u8>,
}

/// What one `m=` section says, after applying session-level defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaInfo {
    /// Position among the `m=` lines, from 0.
    pub index: usize,
    /// `audio`, `video`, `image`, ...
    pub kind: String,
    /// 0 means the stream is disabled (RFC 3264 §5.1).
    pub port: u16,
    pub proto: String,
    /// Numeric formats in `m=` order (non-numeric formats of non-RTP media are left out).
    pub payload_types: Vec<u8>,
    /// Effective connection address; `None` if absent or a domain name.
    pub connection: Option<IpAddr>,
    /// `a=rtcp` port (RFC 3605), if given.
    pub rtcp_port: Option<u16>,
    /// Effective direction, with a 0.0.0.0 connection counted as hold.
    pub direction: Direction,
    pub codecs: Codecs,
}

impl MediaInfo {
    /// Where the peer wants this stream's RTP sent.
    pub fn rtp_addr(&self) -> Option<SocketAddr> {
        self.connection.map(|ip| SocketAddr::new(ip, self.port))
    }

    pub fn is_disabled(&self) -> bool {
        self.port == 0
    }
}

/// Our ports for one media section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaPorts {
    pub rtp: u16,
    /// `None`: RTP + 1, the RFC 3550 §11 default, and no `a=rtcp` is added.
    pub rtcp: Option<u16>,
}

/// Where the rewritten description points media.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteTarget {
    pub address: IpAddr,
    /// Indexed like the `m=` lines; needed for every active audio section.
    pub media: Vec<Option<MediaPorts>>,
    /// SRTP toward the peer that reads the rewritten description, for the anchored audio
    /// sections; `None`: plain RTP/AVP. The original's own `a=crypto` lines never cross: each
    /// leg has its own keys (RFC 4568 §6.1).
    pub secure: Option<SecureAudio>,
}

/// How an anchored audio section offers or answers SRTP (RFC 4568 SDES).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecureAudio {
    /// `RTP/SAVP(F)` when set; otherwise `RTP/AVP(F)` carrying `a=crypto`, the "best effort"
    /// SRTP that many user agents offer and that a peer without SRTP simply ignores.
    pub savp: bool,
    /// Our `a=crypto` values, each holding one of our keys.
    pub crypto: Vec<CryptoLine>,
}

/// The value of one `a=crypto` attribute (after `crypto:`): it carries a master key inline,
/// so it is redacted in `Debug` and wiped when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoLine(zeroize::Zeroizing<String>);

impl CryptoLine {
    pub fn new(value: String) -> CryptoLine {
        CryptoLine(zeroize::Zeroizing::new(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for CryptoLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tag and suite are not secret and say which line this is.
        let public: String = self.0.split(" inline:").next().unwrap_or("").to_owned();
        write!(f, "CryptoLine({public} inline:<redacted>)")
    }
}

/// The rewritten body and what it now offers per media section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub body: Vec<u8>,
    /// Per `m=` line, as the peer on the other side will read it: audio formats filtered, ports
    /// and connection ours; `connection` and `port` of the *original* are in [`Sdp::media`].
    pub media: Vec<MediaInfo>,
}

#[derive(Clone, Copy, Debug)]
struct Line<'a> {
    /// 1-based line number, for errors.
    number: usize,
    kind: u8,
    /// After `x=`.
    value: &'a [u8],
    /// The whole line without its terminator.
    content: &'a [u8],
    /// `\r\n`, `\n` or empty for a last line without one.
    term: &'a [u8],
}

/// A parsed description borrowing the body it came from.
#[derive(Clone, Debug)]
pub struct Sdp<'a> {
    lines: Vec<Line<'a>>,
    /// Index into `lines` of each `m=` line.
    media_starts: Vec<usize>,
}

fn split_lines(body: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (content, term, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let end = if lf > 0 && rest.get(lf - 1) == Some(&b'\r') {
                    lf - 1
                } else {
                    lf
                };
                (
                    rest.get(..end).unwrap_or(&[]),
                    rest.get(end..=lf).unwrap_or(&[]),
                    rest.get(lf + 1..).unwrap_or(&[]),
                )
            }
            None => (rest, &[][..], &[][..]),
        };
        out.push((content, term));
        rest = next;
    }
    out
}

fn utf8(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

struct MLine<'a> {
    kind: &'a str,
    port: u16,
    proto: &'a str,
    formats: Vec<&'a str>,
}

fn parse_m(value: &[u8]) -> Option<MLine<'_>> {
    let mut parts = utf8(value)?.split(' ');
    let kind = parts.next().filter(|k| !k.is_empty())?;
    let port_field = parts.next()?;
    let port = port_field.split('/').next()?.parse().ok()?;
    let proto = parts.next().filter(|p| !p.is_empty())?;
    let formats: Vec<&str> = parts.filter(|f| !f.is_empty()).collect();
    Some(MLine {
        kind,
        port,
        proto,
        formats,
    })
}

/// `c=IN IP4 addr[/ttl[/n]]`: `Ok(None)` for a domain name.
fn parse_c(value: &[u8]) -> Option<Option<IpAddr>> {
    let mut parts = utf8(value)?.split(' ');
    if parts.next()? != "IN" {
        return None;
    }
    let addrtype = parts.next()?;
    let addr = parts.next()?.split('/').next()?;
    if parts.next().is_some() {
        return None;
    }
    let ip = match addrtype {
        "IP4" => addr.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        "IP6" => addr.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        _ => return None,
    };
    Some(ip)
}

/// Splits `a=name[:value]`.
fn attr(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    match value.iter().position(|&b| b == b':') {
        Some(c) => (value.get(..c).unwrap_or(&[]), value.get(c + 1..)),
        None => (value, None),
    }
}

/// `a=rtpmap:<pt> <name>/<rate>[/<channels>]` → (pt, name, rate).
fn parse_rtpmap(v: &[u8]) -> Option<(u8, &str, u32)> {
    let s = utf8(v)?;
    let (pt, enc) = s.split_once(' ')?;
    let mut enc = enc.trim().split('/');
    let name = enc.next()?;
    let rate = enc.next()?.parse().ok()?;
    Some((pt.parse().ok()?, name, rate))
}

/// Leading payload type of `a=fmtp:<pt> ...` / `a=rtcp-fb:<pt> ...`; `None` for `*` or junk.
fn leading_pt(v: &[u8]) -> Option<u8> {
    let s = utf8(v)?;
    s.split(' ').next()?.parse().ok()
}

/// Attributes dropped everywhere: no SRTP (SDES, DTLS) and no ICE until the relay supports them.
fn is_dropped_attr(name: &[u8]) -> bool {
    matches!(
        name,
        b"crypto"
            | b"candidate"
            | b"remote-candidates"
            | b"end-of-candidates"
            | b"fingerprint"
            | b"setup"
    ) || name.starts_with(b"ice-")
}

fn is_hold_addr(ip: IpAddr) -> bool {
    ip.is_unspecified()
}

fn c_value(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("IN IP4 {a}"),
        IpAddr::V6(a) => format!("IN IP6 {a}"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Pcmu,
    Pcma,
    TelephoneEvent,
    Cn,
}

/// What a payload type carries, by its rtpmap or, failing that, the RFC 3551 static table.
fn role(pt: u8, rtpmap: &[(u8, &str, u32)]) -> Option<Role> {
    let (name, rate) = match rtpmap.iter().find(|(p, _, _)| *p == pt) {
        Some((_, n, r)) => (*n, *r),
        None => match pt {
            0 => ("PCMU", 8000),
            8 => ("PCMA", 8000),
            13 => ("CN", 8000),
            _ => return None,
        },
    };
    if rate != 8000 {
        return None;
    }
    [
        ("PCMU", Role::Pcmu),
        ("PCMA", Role::Pcma),
        ("telephone-event", Role::TelephoneEvent),
        ("CN", Role::Cn),
    ]
    .iter()
    .find(|(n, _)| n.eq_ignore_ascii_case(name))
    .map(|(_, r)| *r)
}

fn codecs_of(pts: &[u8], rtpmap: &[(u8, &str, u32)]) -> Codecs {
    let mut c = Codecs::default();
    for &pt in pts {
        let slot = match role(pt, rtpmap) {
            Some(Role::Pcmu) => &mut c.pcmu,
            Some(Role::Pcma) => &mut c.pcma,
            Some(Role::TelephoneEvent) => &mut c.telephone_event,
            Some(Role::Cn) => &mut c.cn,
            None => continue,
        };
        slot.get_or_insert(pt);
    }
    c
}

impl<'a> Sdp<'a> {
    /// Splits the body into lines. Every non-empty line must be `<letter>=<value>`
    /// (RFC 8866 §5); empty lines are kept and passed through.
    pub fn parse(body: &'a [u8]) -> Result<Sdp<'a>, SdpError> {
        let mut lines = Vec::new();
        let mut media_starts = Vec::new();
        for (i, (content, term)) in split_lines(body).into_iter().enumerate() {
            let number = i + 1;
            let (kind, value) = match content {
                [] => (0, &[][..]),
                [k, b'=', value @ ..] if k.is_ascii_lowercase() => (*k, value),
                _ => return Err(SdpError::Malformed { line: number }),
            };
            if kind == b'm' {
                media_starts.push(lines.len());
            }
            lines.push(Line {
                number,
                kind,
                value,
                content,
                term,
            });
        }
        Ok(Sdp {
            lines,
            media_starts,
        })
    }

    fn session(&self) -> &[Line<'a>] {
        let end = self
            .media_starts
            .first()
            .copied()
            .unwrap_or(self.lines.len());
        self.lines.get(..end).unwrap_or(&[])
    }

    fn section(&self, index: usize) -> &[Line<'a>] {
        let Some(&start) = self.media_starts.get(index) else {
            return &[];
        };
        let end = self
            .media_starts
            .get(index + 1)
            .copied()
            .unwrap_or(self.lines.len());
        self.lines.get(start..end).unwrap_or(&[])
    }

    /// The session-level connection address (`Ok(None)` if absent or a domain name).
    pub fn session_connection(&self) -> Result<Option<IpAddr>, SdpError> {
        match self.session().iter().find(|l| l.kind == b'c') {
            Some(l) => parse_c(l.value).ok_or(SdpError::BadConnection { line: l.number }),
            None => Ok(None),
        }
    }

    /// The values of the `a=crypto` attributes of `m=` section `index`, in order (RFC 4568
    /// §9.1: the offerer's preference). They hold the peer's keys: parse them and let go.
    pub fn crypto_attrs(&self, index: usize) -> Vec<&'a [u8]> {
        self.section(index)
            .iter()
            .filter(|l| l.kind == b'a')
            .filter_map(|l| match attr(l.value) {
                (b"crypto", Some(v)) => Some(v),
                _ => None,
            })
            .collect()
    }

    fn session_direction(&self) -> Direction {
        self.session()
            .iter()
            .filter(|l| l.kind == b'a')
            .find_map(|l| Direction::from_attr(l.value))
            .unwrap_or(Direction::SendRecv)
    }

    /// What every `m=` section says.
    pub fn media(&self) -> Result<Vec<MediaInfo>, SdpError> {
        let session_c = self.session_connection()?;
        let session_dir = self.session_direction();
        (0..self.media_starts.len())
            .map(|i| self.media_info(i, session_c, session_dir))
            .collect()
    }

    fn media_info(
        &self,
        index: usize,
        session_c: Option<IpAddr>,
        session_dir: Direction,
    ) -> Result<MediaInfo, SdpError> {
        let section = self.section(index);
        let m = section
            .first()
            .and_then(|l| parse_m(l.value))
            .ok_or(SdpError::BadMedia { index })?;
        let mut connection = session_c;
        let mut direction = session_dir;
        let mut rtcp_port = None;
        let mut rtpmap = Vec::new();
        for l in section.iter().skip(1) {
            match l.kind {
                b'c' => {
                    connection =
                        parse_c(l.value).ok_or(SdpError::BadConnection { line: l.number })?;
                }
                b'a' => {
                    let (name, value) = attr(l.value);
                    if let Some(d) = Direction::from_attr(name) {
                        direction = d;
                    } else if name == b"rtpmap" {
                        rtpmap.extend(value.and_then(parse_rtpmap));
                    } else if name == b"rtcp" {
                        rtcp_port = value
                            .and_then(utf8)
                            .and_then(|v| v.split(' ').next())
                            .and_then(|p| p.parse().ok());
                    }
                }
                _ => {}
            }
        }
        if connection.is_some_and(is_hold_addr) {
            direction = direction.without_receive();
        }
        let payload_types: Vec<u8> = m.formats.iter().filter_map(|f| f.parse().ok()).collect();
        Ok(MediaInfo {
            index,
            kind: m.kind.to_owned(),
            port: m.port,
            proto: m.proto.to_owned(),
            codecs: codecs_of(&payload_types, &rtpmap),
            payload_types,
            connection,
            rtcp_port,
            direction,
        })
    }

    /// Rewrites the description to anchor media on `target` and applies the codec policy.
    ///
    /// Active audio sections must be RTP/AVP(F) (SRTP is refused) and keep PCMU, PCMA,
    /// telephone-event/8000 and CN; other payload types go, with their rtpmap/fmtp/rtcp-fb.
    /// Other active media (video, T.38 image, ...) are disabled with port 0, which RFC 3264
    /// §5.1/§6 allows in offers and answers. Disabled sections pass through unchanged.
    /// A 0.0.0.0 (or ::) connection is kept, so an RFC 2543-style hold stays a hold.
    pub fn rewrite(&self, target: &RewriteTarget) -> Result<Rewritten, SdpError> {
        let session_c = self.session_connection()?;
        let session_dir = self.session_direction();
        let ours = c_value(target.address);
        let mut out: Vec<u8> = Vec::new();

        for l in self.session() {
            match l.kind {
                b'c' if !session_c.is_some_and(is_hold_addr) => {
                    push_line(&mut out, format!("c={ours}").as_bytes(), l.term);
                }
                b'a' if is_dropped_attr(attr(l.value).0) => {}
                _ => push_line(&mut out, l.content, l.term),
            }
        }

        let mut media = Vec::with_capacity(self.media_starts.len());
        for index in 0..self.media_starts.len() {
            let original = self.media_info(index, session_c, session_dir)?;
            let section = self.section(index);
            let m = section
                .first()
                .and_then(|l| parse_m(l.value))
                .ok_or(SdpError::BadMedia { index })?;
            let m_line = section.first().ok_or(SdpError::BadMedia { index })?;

            if m.port == 0 {
                // Kept as it is, but for a key it may still carry: keys never cross legs.
                for l in section {
                    if !(l.kind == b'a' && attr(l.value).0 == b"crypto") {
                        push_line(&mut out, l.content, l.term);
                    }
                }
                media.push(original);
            } else if !m.kind.eq_ignore_ascii_case("audio") {
                disable_section(&mut out, section, &m, m_line);
                media.push(MediaInfo {
                    port: 0,
                    ..original
                });
            } else {
                let audio = AudioSection {
                    index,
                    section,
                    m: &m,
                    m_line,
                    ours: &ours,
                };
                media.push(audio.rewrite(&mut out, target, original)?);
            }
        }
        Ok(Rewritten { body: out, media })
    }
}

fn push_line(out: &mut Vec<u8>, content: &[u8], term: &[u8]) {
    out.extend_from_slice(content);
    out.extend_from_slice(term);
}

/// Writes a non-audio section with port 0 (RFC 3264 §5.1/§6: declined), its lines kept.
fn disable_section(out: &mut Vec<u8>, section: &[Line<'_>], m: &MLine<'_>, m_line: &Line<'_>) {
    let rest = m_line.value.get(m.kind.len() + 1..).unwrap_or(&[]);
    let after_port = rest
        .iter()
        .position(|&b| b == b' ')
        .and_then(|p| rest.get(p..))
        .unwrap_or(&[]);
    let mut line = format!("m={} 0", m.kind).into_bytes();
    line.extend_from_slice(after_port);
    push_line(out, &line, m_line.term);
    for l in section.iter().skip(1) {
        if !(l.kind == b'a' && is_dropped_attr(attr(l.value).0)) {
            push_line(out, l.content, l.term);
        }
    }
}

/// One active audio section being anchored on the relay's ports.
struct AudioSection<'s, 'a> {
    index: usize,
    section: &'s [Line<'a>],
    m: &'s MLine<'a>,
    m_line: &'s Line<'a>,
    /// Our connection address as SDP writes it.
    ours: &'s str,
}

impl AudioSection<'_, '_> {
    /// Payload types the relay keeps (G.711, telephone-event, CN), in the offer's order.
    fn kept(&self, rtpmap: &[(u8, &str, u32)]) -> Result<Vec<u8>, SdpError> {
        let index = self.index;
        let mut kept = Vec::new();
        for f in &self.m.formats {
            let pt: u8 = f.parse().map_err(|_| SdpError::BadMedia { index })?;
            if pt <= 127 && role(pt, rtpmap).is_some() && !kept.contains(&pt) {
                kept.push(pt);
            }
        }
        Ok(kept)
    }

    fn rewrite(
        &self,
        out: &mut Vec<u8>,
        target: &RewriteTarget,
        original: MediaInfo,
    ) -> Result<MediaInfo, SdpError> {
        let index = self.index;
        // Whether to carry SRTP is the caller's decision (`target.secure`): here the profile is
        // only read for its feedback flavour. DTLS-SRTP (UDP/TLS/RTP/SAVP) is not supported.
        let feedback = match self.m.proto.to_ascii_uppercase().as_str() {
            "RTP/AVP" | "RTP/SAVP" => false,
            "RTP/AVPF" | "RTP/SAVPF" => true,
            _ => return Err(SdpError::UnsupportedTransport { index }),
        };
        let savp = target.secure.as_ref().is_some_and(|s| s.savp);
        let proto = match (savp, feedback) {
            (false, false) => "RTP/AVP",
            (false, true) => "RTP/AVPF",
            (true, false) => "RTP/SAVP",
            (true, true) => "RTP/SAVPF",
        };
        let ports = target
            .media
            .get(index)
            .copied()
            .flatten()
            .ok_or(SdpError::NoPorts { index })?;
        let rtcp = ports.rtcp.unwrap_or(ports.rtp.wrapping_add(1));
        if original.connection.is_none() {
            return Err(SdpError::MissingConnection { index });
        }
        let media_hold = original.connection.is_some_and(is_hold_addr);

        let rtpmap: Vec<(u8, &str, u32)> = self
            .section
            .iter()
            .filter(|l| l.kind == b'a')
            .filter_map(|l| match attr(l.value) {
                (b"rtpmap", Some(v)) => parse_rtpmap(v),
                _ => None,
            })
            .collect();
        let kept = self.kept(&rtpmap)?;
        let codecs = codecs_of(&kept, &rtpmap);
        if codecs.pcmu.is_none() && codecs.pcma.is_none() {
            return Err(SdpError::NoG711 { index });
        }

        let mut line = format!("m={} {} {proto}", self.m.kind, ports.rtp);
        for pt in &kept {
            line.push_str(&format!(" {pt}"));
        }
        push_line(out, line.as_bytes(), self.m_line.term);
        let saw_rtcp = self.write_lines(out, &kept, media_hold, rtcp);
        if let Some(secure) = &target.secure {
            for c in &secure.crypto {
                if !out.is_empty() && !out.ends_with(b"\n") {
                    out.extend_from_slice(b"\r\n");
                }
                let mut l = zeroize::Zeroizing::new(Vec::with_capacity(c.as_str().len() + 9));
                l.extend_from_slice(b"a=crypto:");
                l.extend_from_slice(c.as_str().as_bytes());
                push_line(out, &l, b"\r\n");
            }
        }
        if !saw_rtcp && ports.rtcp.is_some_and(|p| p != ports.rtp.wrapping_add(1)) {
            if !out.is_empty() && !out.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("a=rtcp:{rtcp}\r\n").as_bytes());
        }
        Ok(MediaInfo {
            port: ports.rtp,
            proto: proto.to_owned(),
            payload_types: kept,
            connection: Some(if media_hold {
                original.connection.unwrap_or(target.address)
            } else {
                target.address
            }),
            rtcp_port: if saw_rtcp || ports.rtcp.is_some() {
                Some(rtcp)
            } else {
                None
            },
            codecs,
            ..original
        })
    }

    /// The section's lines after the m= line: our address, the kept payload types' attributes,
    /// our RTCP port. Returns whether the section had an a=rtcp line.
    fn write_lines(&self, out: &mut Vec<u8>, kept: &[u8], media_hold: bool, rtcp: u16) -> bool {
        let ours = self.ours;
        let mut saw_rtcp = false;
        for l in self.section.iter().skip(1) {
            match l.kind {
                b'c' if !media_hold => push_line(out, format!("c={ours}").as_bytes(), l.term),
                b'a' => {
                    let (name, value) = attr(l.value);
                    if is_dropped_attr(name) {
                        continue;
                    }
                    match name {
                        b"rtpmap" | b"fmtp" | b"rtcp-fb" => {
                            if value
                                .and_then(leading_pt)
                                .is_some_and(|pt| !kept.contains(&pt))
                            {
                                continue;
                            }
                            push_line(out, l.content, l.term);
                        }
                        b"rtcp" => {
                            saw_rtcp = true;
                            // RFC 3605: port, optionally followed by a connection address.
                            let has_addr =
                                value.and_then(utf8).is_some_and(|v| v.trim().contains(' '));
                            let v = if has_addr {
                                format!("a=rtcp:{rtcp} {ours}")
                            } else {
                                format!("a=rtcp:{rtcp}")
                            };
                            push_line(out, v.as_bytes(), l.term);
                        }
                        _ => push_line(out, l.content, l.term),
                    }
                }
                _ => push_line(out, l.content, l.term),
            }
        }
        saw_rtcp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\n\
o=trunk 2890844526 2890844526 IN IP4 198.51.100.7\r\n\
s=-\r\n\
c=IN IP4 198.51.100.7\r\n\
t=0 0\r\n\
a=ice-ufrag:F7gI\r\n\
a=x-unknown:keep me\r\n\
m=audio 49170 RTP/AVP 18 0 8 101 13 96\r\n\
a=rtpmap:18 G729/8000\r\n\
a=fmtp:18 annexb=no\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=rtpmap:96 telephone-event/48000\r\n\
a=rtcp:49171 IN IP4 198.51.100.7\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=candidate:1 1 UDP 2130706431 10.0.1.1 8998 typ host\r\n\
a=fingerprint:sha-256 AA:BB\r\n\
a=setup:actpass\r\n\
m=video 51372 RTP/AVP 31\r\n\
a=rtpmap:31 H261/90000\r\n";

    fn target() -> RewriteTarget {
        RewriteTarget {
            address: "203.0.113.5".parse().unwrap(),
            media: vec![
                Some(MediaPorts {
                    rtp: 30000,
                    rtcp: None,
                }),
                None,
            ],
            secure: None,
        }
    }

    #[test]
    fn extracts_media() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let media = sdp.media().unwrap();
        assert_eq!(media.len(), 2);
        let a = &media[0];
        assert_eq!(a.kind, "audio");
        assert_eq!(a.rtp_addr(), Some("198.51.100.7:49170".parse().unwrap()));
        assert_eq!(a.rtcp_port, Some(49171));
        assert_eq!(a.direction, Direction::SendRecv);
        assert_eq!(a.payload_types, vec![18, 0, 8, 101, 13, 96]);
        assert_eq!(
            a.codecs,
            Codecs {
                pcmu: Some(0),
                pcma: Some(8),
                telephone_event: Some(101),
                cn: Some(13)
            }
        );
        assert_eq!(media[1].kind, "video");
    }

    #[test]
    fn rewrite_anchors_media_and_filters_codecs() {
        let sdp = Sdp::parse(OFFER.as_bytes()).unwrap();
        let r = sdp.rewrite(&target()).unwrap();
        let expect = "v=0\r\n\
o=trunk 2890844526 2890844526 IN IP4 198.51.100.7\r\n\
s=-\r\n\
c=IN IP4 203.0.113.5\r\n\
t=0 0\r\n\
a=x-unknown:keep me\r\n\
m=audio 30000 RTP/AVP 0 8 101 13\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=rtcp:30001 IN IP4 203.0.113.5\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n\
m=video 0 RTP/AVP 31\r\n\
a=rtpmap:31 H261/90000\r\n";
        assert_eq!(String::from_utf8(r.body.clone()).unwrap(), expect);
        assert_eq!(r.media[0].codecs.telephone_event, Some(101));
        assert_eq!(r.media[0].payload_types, vec![0, 8, 101, 13]);
        assert_eq!(
            r.media[0].rtp_addr(),
            Some("203.0.113.5:30000".parse().unwrap())
        );
        assert!(r.media[1].is_disabled());
        // The rewritten body parses and reports the same.
        assert_eq!(
            Sdp::parse(&r.body).unwrap().media().unwrap()[0].codecs,
            r.media[0].codecs
        );
    }

    #[test]
    fn ipv6_bare_lf_dynamic_cn_and_explicit_rtcp() {
        let body = "v=0\no=- 1 1 IN IP6 2001:db8::7\ns=-\nt=0 0\n\
m=audio 5004 RTP/AVP 8 97 98\nc=IN IP6 2001:db8::7\n\
a=rtpmap:97 CN/8000\na=rtpmap:98 telephone-event/8000\na=recvonly";
        let sdp = Sdp::parse(body.as_bytes()).unwrap();
        let t = RewriteTarget {
            address: "2001:db8::1".parse().unwrap(),
            media: vec![Some(MediaPorts {
                rtp: 40000,
                rtcp: Some(40011),
            })],
            secure: None,
        };
        let r = sdp.rewrite(&t).unwrap();
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            "v=0\no=- 1 1 IN IP6 2001:db8::7\ns=-\nt=0 0\n\
m=audio 40000 RTP/AVP 8 97 98\nc=IN IP6 2001:db8::1\n\
a=rtpmap:97 CN/8000\na=rtpmap:98 telephone-event/8000\na=recvonly\r\na=rtcp:40011\r\n"
        );
        assert_eq!(r.media[0].codecs.cn, Some(97));
        assert_eq!(r.media[0].direction, Direction::RecvOnly);
    }

    #[test]
    fn hold_and_disabled_streams_are_kept() {
        let body = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=audio 49170 RTP/AVP 0\r\nm=audio 0 RTP/SAVP 0\r\na=crypto:1 x\r\n";
        let sdp = Sdp::parse(body.as_bytes()).unwrap();
        let info = sdp.media().unwrap();
        assert_eq!(info[0].direction, Direction::SendOnly);
        let t = RewriteTarget {
            address: "203.0.113.5".parse().unwrap(),
            media: vec![Some(MediaPorts {
                rtp: 30000,
                rtcp: None,
            })],
            secure: None,
        };
        let r = sdp.rewrite(&t).unwrap();
        let text = String::from_utf8(r.body).unwrap();
        assert!(text.contains("c=IN IP4 0.0.0.0\r\n"), "{text}");
        assert!(text.contains("m=audio 30000 RTP/AVP 0\r\n"));
        assert!(text.ends_with("m=audio 0 RTP/SAVP 0\r\n"), "{text}");
        assert_eq!(r.media[0].direction, Direction::SendOnly);
    }

    const KEY_A: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
    const KEY_OURS: &str = "d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj";

    fn secure_offer(proto: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 {proto} 0 101\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}\r\n\
a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_A}|2^20\r\na=sendrecv\r\n"
        )
    }

    fn one_audio(secure: Option<SecureAudio>) -> RewriteTarget {
        RewriteTarget {
            address: "203.0.113.5".parse().unwrap(),
            media: vec![Some(MediaPorts {
                rtp: 30000,
                rtcp: None,
            })],
            secure,
        }
    }

    #[test]
    fn a_peers_keys_never_cross_to_the_other_leg() {
        let body = secure_offer("RTP/SAVP");
        let sdp = Sdp::parse(body.as_bytes()).unwrap();
        let attrs: Vec<&[u8]> = sdp.crypto_attrs(0);
        assert_eq!(attrs.len(), 2);
        assert!(attrs[0].starts_with(b"1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert!(attrs[1].ends_with(b"|2^20"));
        // Toward a plain peer: RTP/AVP, and neither of the trunk's keys.
        let plain = sdp.rewrite(&one_audio(None)).unwrap();
        let text = String::from_utf8(plain.body).unwrap();
        assert!(text.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{text}");
        assert!(!text.contains("crypto") && !text.contains(KEY_A), "{text}");
        assert_eq!(plain.media[0].proto, "RTP/AVP");
        // Toward an SRTP peer: our own key only, once, in the section it belongs to.
        let ours = SecureAudio {
            savp: true,
            crypto: vec![CryptoLine::new(format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_OURS}"
            ))],
        };
        let sec = sdp.rewrite(&one_audio(Some(ours))).unwrap();
        let text = String::from_utf8(sec.body).unwrap();
        assert!(text.contains("m=audio 30000 RTP/SAVP 0 101\r\n"), "{text}");
        assert!(!text.contains(KEY_A), "{text}");
        assert_eq!(text.matches("a=crypto:").count(), 1, "{text}");
        assert!(text.ends_with(&format!(
            "a=sendrecv\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_OURS}\r\n"
        )));
        let back = Sdp::parse(text.as_bytes()).unwrap();
        assert_eq!(back.crypto_attrs(0).len(), 1);
        assert_eq!(back.media().unwrap()[0].proto, "RTP/SAVP");
    }

    #[test]
    fn profile_follows_the_choice_and_keeps_feedback() {
        for (offered, savp, want) in [
            ("RTP/AVP", true, "RTP/SAVP"),
            ("RTP/AVPF", true, "RTP/SAVPF"),
            ("RTP/SAVPF", false, "RTP/AVPF"),
            ("RTP/AVP", false, "RTP/AVP"),
        ] {
            let body = secure_offer(offered);
            let secure = SecureAudio {
                savp,
                crypto: vec![CryptoLine::new(format!(
                    "7 AEAD_AES_128_GCM inline:{KEY_OURS}"
                ))],
            };
            let r = Sdp::parse(body.as_bytes())
                .unwrap()
                .rewrite(&one_audio(Some(secure)))
                .unwrap();
            let text = String::from_utf8(r.body).unwrap();
            assert!(
                text.contains(&format!("m=audio 30000 {want} 0 101\r\n")),
                "{text}"
            );
            // Best-effort SRTP: RTP/AVP that carries our key for a peer that wants it.
            assert!(text.contains("a=crypto:7 AEAD_AES_128_GCM"), "{text}");
        }
    }

    #[test]
    fn crypto_lines_are_redacted_in_debug() {
        let secure = SecureAudio {
            savp: true,
            crypto: vec![CryptoLine::new(format!(
                "1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_OURS}"
            ))],
        };
        let shown = format!("{:?}", one_audio(Some(secure)));
        assert!(shown.contains("AES_CM_128_HMAC_SHA1_80"), "{shown}");
        assert!(!shown.contains(KEY_OURS), "{shown}");
        assert!(!shown.contains(&KEY_OURS[..8]), "{shown}");
    }

    #[test]
    fn policy_errors_map_to_488() {
        let base = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
        let t = RewriteTarget {
            address: "203.0.113.5".parse().unwrap(),
            media: vec![Some(MediaPorts {
                rtp: 30000,
                rtcp: None,
            })],
            secure: None,
        };
        for (m, err) in [
            (
                "m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n",
                SdpError::NoG711 { index: 0 },
            ),
            (
                "m=audio 4000 UDP/TLS/RTP/SAVPF 0\r\n",
                SdpError::UnsupportedTransport { index: 0 },
            ),
            (
                "m=audio 4000 udptl t38\r\n",
                SdpError::UnsupportedTransport { index: 0 },
            ),
            (
                "m=audio 4000 RTP/AVP 0 8\r\na=rtpmap:0 opus/48000\r\na=rtpmap:8 G722/8000\r\n",
                SdpError::NoG711 { index: 0 },
            ),
        ] {
            let body = format!("{base}{m}");
            let e = Sdp::parse(body.as_bytes())
                .unwrap()
                .rewrite(&t)
                .unwrap_err();
            assert_eq!(e, err, "{m}");
            assert_eq!(e.sip_status(), 488);
        }
        let no_c = "v=0\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        assert_eq!(
            Sdp::parse(no_c.as_bytes())
                .unwrap()
                .rewrite(&t)
                .unwrap_err(),
            SdpError::MissingConnection { index: 0 }
        );
        let two = format!("{base}m=audio 4000 RTP/AVP 0\r\nm=audio 4002 RTP/AVP 0\r\n");
        assert_eq!(
            Sdp::parse(two.as_bytes()).unwrap().rewrite(&t).unwrap_err(),
            SdpError::NoPorts { index: 1 }
        );
    }

    #[test]
    fn malformed_lines() {
        assert_eq!(
            Sdp::parse(b"v=0\r\nm =video 3227 RTP/AVP 31\r\n").unwrap_err(),
            SdpError::Malformed { line: 2 }
        );
        assert!(
            Sdp::parse(b"v=0\r\nc=IN IP4 not-an-ip.example\r\nm=audio 1 RTP/AVP 0\r\n")
                .unwrap()
                .media()
                .unwrap()[0]
                .connection
                .is_none()
        );
        assert!(Sdp::parse(b"v=0\r\nc=XX\r\n").unwrap().media().is_err());
        assert!(
            Sdp::parse(b"m=audio x RTP/AVP 0\r\n")
                .unwrap()
                .media()
                .is_err()
        );
        assert!(Sdp::parse(b"").unwrap().media().unwrap().is_empty());
    }
}
