//! SDP on the relay: anchoring a peer's description on our ports for the other leg (RFC 3264
//! via [`Sdp::rewrite`]), and the descriptions we write ourselves when a loop call answers the
//! caller or offers to the return leg.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::srtp::Offered;
use super::types::RelayPorts;
use crate::sip::message::Message;
use crate::sip::sdp::{
    Codecs, Direction, MediaInfo, MediaPorts, RewriteTarget, Sdp, SdpError, SecureAudio,
};

pub(super) fn is_sdp(msg: &Message) -> bool {
    !msg.body().is_empty() && matches!(msg.content_type(), Ok(Some(ct)) if ct.is_sdp())
}

/// Reason phrase for a rejected SDP body: 488 when we cannot use the offer (RFC 3261 §21.4.26),
/// else the body was malformed.
pub(super) fn sdp_failure_reason(status: u16) -> &'static str {
    if status == 488 {
        "Not Acceptable Here"
    } else {
        "Bad Request"
    }
}

/// The Warning (RFC 3261 §20.43) for an SDP body refused by SRTP policy: which policy says
/// it in words an operator can act on; none for other refusals, whose status says enough.
pub(super) fn sdp_warning(e: &SdpError, host: &str) -> Option<String> {
    matches!(e, SdpError::Srtp { .. }).then(|| {
        format!("399 {host} \"SRTP offer or answer does not meet this route's srtp policy\"")
    })
}

/// Result of anchoring one SDP body: the rewritten body and what the sender said.
pub(super) struct Anchored {
    pub body: Vec<u8>,
    pub remote: Option<(SocketAddr, Codecs)>,
}

/// Rewrites `body` so media goes to `ports` on `addr` (RFC 3264 via [`Sdp::rewrite`]). Only
/// the first active audio section is anchored; a second one makes the rewrite fail.
///
/// `secure` reads what the sender said about SRTP in that section and says what the rewritten
/// description offers or answers (see `srtp::CallSrtp`).
pub(super) fn anchor(
    body: &[u8],
    addr: IpAddr,
    ports: RelayPorts,
    secure: impl FnOnce(&Offered<'_>) -> Result<Option<SecureAudio>, SdpError>,
) -> Result<Anchored, SdpError> {
    let sdp = Sdp::parse(body)?;
    let media = sdp.media()?;
    let idx = media
        .iter()
        .position(|m| m.kind == "audio" && !m.is_disabled());
    let offered = Offered {
        savp: idx
            .and_then(|i| media.get(i))
            .is_some_and(|m| m.proto.to_ascii_uppercase().contains("SAVP")),
        crypto: idx.map(|i| sdp.crypto_attrs(i)).unwrap_or_default(),
    };
    let secure = secure(&offered)?;
    let target = RewriteTarget {
        address: addr,
        media: (0..media.len())
            .map(|i| {
                (Some(i) == idx).then_some(MediaPorts {
                    rtp: ports.rtp,
                    rtcp: (ports.rtcp != ports.rtp.wrapping_add(1)).then_some(ports.rtcp),
                })
            })
            .collect(),
        secure,
    };
    let rw = sdp.rewrite(&target)?;
    let remote = idx.and_then(|i| {
        let orig = media.get(i)?;
        let codecs = rw.media.get(i).map_or(orig.codecs, |m| m.codecs);
        Some((orig.rtp_addr()?, codecs))
    });
    Ok(Anchored {
        body: hide_origin(&rw.body, addr),
        remote,
    })
}

/// Puts our address in the `o=` line (RFC 8866 §5.2): the peer's host must not cross legs.
/// Session id and version are kept, so the peer's version stepping still reads as it meant.
pub(super) fn hide_origin(body: &[u8], addr: IpAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    for line in body.split_inclusive(|b| *b == b'\n') {
        let content_len = line
            .iter()
            .rposition(|b| *b != b'\r' && *b != b'\n')
            .map_or(0, |p| p + 1);
        let (content, term) = line.split_at(content_len);
        let fields: Vec<&[u8]> = content.split(|b| *b == b' ').collect();
        if content.starts_with(b"o=") && fields.len() == 6 {
            let kind: &[u8] = if addr.is_ipv4() { b"IP4" } else { b"IP6" };
            for f in fields.iter().take(4) {
                out.extend_from_slice(f);
                out.push(b' ');
            }
            out.extend_from_slice(kind);
            out.push(b' ');
            out.extend_from_slice(addr.to_string().as_bytes());
            out.extend_from_slice(term);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Telephone-event payload type we use in our own offers (RFC 4733 §7: dynamic).
pub(super) const TE_PT: u8 = 101;

/// Our SDP origin towards one leg (RFC 8866 §5.2): the version steps with every description
/// we send, so the peer reads each as a modification of one session (RFC 3264 §8).
#[derive(Debug, Clone, Copy)]
pub(super) struct Origin {
    pub session: u64,
    pub version: u64,
}

impl Origin {
    pub(super) fn next(&mut self) -> Origin {
        self.version = self.version.wrapping_add(1);
        *self
    }
}

pub(super) fn ip_kind(addr: IpAddr) -> &'static str {
    if addr.is_ipv4() { "IP4" } else { "IP6" }
}

pub(super) fn session_head(addr: IpAddr, o: Origin) -> String {
    let k = ip_kind(addr);
    format!(
        "v=0\r\no=tonewall {} {} IN {k} {addr}\r\ns=tonewall\r\nc=IN {k} {addr}\r\nt=0 0\r\n",
        o.session, o.version
    )
}

pub(super) fn audio_lines(out: &mut String, ports: RelayPorts, proto: &str, codecs: &[(u8, &str)]) {
    let pts: Vec<String> = codecs.iter().map(|(pt, _)| pt.to_string()).collect();
    let _ = write!(out, "m=audio {} {proto} {}\r\n", ports.rtp, pts.join(" "));
    if ports.rtcp != ports.rtp.wrapping_add(1) {
        // RFC 3605: RTCP is not on the port above RTP.
        let _ = write!(out, "a=rtcp:{}\r\n", ports.rtcp);
    }
    for (pt, name) in codecs {
        let _ = write!(out, "a=rtpmap:{pt} {name}/8000\r\n");
        if *name == "telephone-event" {
            let _ = write!(out, "a=fmtp:{pt} 0-15\r\n");
        }
    }
    out.push_str("a=ptime:20\r\n");
}

/// Our offer on `ports`: `codecs` in order of preference (RFC 3264 §5).
pub(super) fn local_offer(
    addr: IpAddr,
    ports: RelayPorts,
    codecs: &[(u8, &str)],
    o: Origin,
) -> Vec<u8> {
    let mut s = session_head(addr, o);
    audio_lines(&mut s, ports, "RTP/AVP", codecs);
    s.push_str("a=sendrecv\r\n");
    s.into_bytes()
}

/// The offer for the return leg: the codec the A-leg uses (both G.711 laws when not known
/// yet) and telephone-event, with the A-leg's payload type numbers, so that the relay passes
/// packets between the legs without renumbering (RFC 3264 §6.1: the answer keeps them).
pub(super) fn return_offer_codecs(a: Option<Codecs>) -> Vec<(u8, &'static str)> {
    let mut v = match a {
        Some(Codecs { pcmu: Some(pt), .. }) => vec![(pt, "PCMU")],
        Some(Codecs { pcma: Some(pt), .. }) => vec![(pt, "PCMA")],
        _ => vec![(0, "PCMU"), (8, "PCMA")],
    };
    let te = a.and_then(|c| c.telephone_event).unwrap_or(TE_PT);
    v.push((te, "telephone-event"));
    v
}

/// What we agreed with a peer when we answered its offer ourselves.
pub(super) struct LocalAnswer {
    pub body: Vec<u8>,
    pub remote: SocketAddr,
    pub codecs: Codecs,
}

pub(super) fn first_audio(sdp: &Sdp<'_>) -> Result<MediaInfo, SdpError> {
    let media = sdp.media()?;
    let m = media
        .into_iter()
        .find(|m| m.kind == "audio" && !m.is_disabled())
        .ok_or(SdpError::NoG711 { index: 0 })?;
    let proto = m.proto.to_ascii_uppercase();
    if proto.contains("SAVP") {
        return Err(SdpError::Srtp { index: m.index });
    }
    if proto != "RTP/AVP" && proto != "RTP/AVPF" {
        return Err(SdpError::UnsupportedTransport { index: m.index });
    }
    Ok(m)
}

/// Answers `offer` on `ports` (RFC 3264 §6): the first of PCMU/PCMA in the offer's order (the
/// one in `keep` if offered, so a re-offer does not switch laws), telephone-event if offered;
/// every other `m=` line is refused with port 0.
pub(super) fn answer_offer(
    offer: &[u8],
    addr: IpAddr,
    ports: RelayPorts,
    keep: Option<Codecs>,
    o: Origin,
) -> Result<LocalAnswer, SdpError> {
    let sdp = Sdp::parse(offer)?;
    let media = sdp.media()?;
    let audio = first_audio(&sdp)?;
    let c = audio.codecs;
    let kept = keep.and_then(|k| {
        if k.pcmu.is_some() && c.pcmu.is_some() {
            c.pcmu.map(|pt| (pt, "PCMU"))
        } else if k.pcma.is_some() && c.pcma.is_some() {
            c.pcma.map(|pt| (pt, "PCMA"))
        } else {
            None
        }
    });
    let chosen = kept
        .or_else(|| {
            audio.payload_types.iter().find_map(|pt| {
                if Some(*pt) == c.pcmu {
                    Some((*pt, "PCMU"))
                } else if Some(*pt) == c.pcma {
                    Some((*pt, "PCMA"))
                } else {
                    None
                }
            })
        })
        .ok_or(SdpError::NoG711 { index: audio.index })?;
    let remote = audio
        .rtp_addr()
        .ok_or(SdpError::MissingConnection { index: audio.index })?;
    let mut codecs = Codecs::default();
    match chosen.1 {
        "PCMU" => codecs.pcmu = Some(chosen.0),
        _ => codecs.pcma = Some(chosen.0),
    }
    codecs.telephone_event = c.telephone_event;
    let mut list = vec![chosen];
    if let Some(te) = c.telephone_event {
        list.push((te, "telephone-event"));
    }
    let dir = match audio.direction {
        Direction::SendRecv => "sendrecv",
        Direction::SendOnly => "recvonly",
        Direction::RecvOnly => "sendonly",
        Direction::Inactive => "inactive",
    };
    let mut s = session_head(addr, o);
    for m in &media {
        if m.index == audio.index {
            audio_lines(&mut s, ports, &m.proto, &list);
            let _ = write!(s, "a={dir}\r\n");
        } else {
            let fmt = m
                .payload_types
                .first()
                .map_or_else(|| "0".to_owned(), u8::to_string);
            let _ = write!(s, "m={} 0 {} {fmt}\r\n", m.kind, m.proto);
        }
    }
    Ok(LocalAnswer {
        body: s.into_bytes(),
        remote,
        codecs,
    })
}

/// Reads a peer's answer to our offer: where its audio goes and which of our codecs it kept.
pub(super) fn read_answer(body: &[u8]) -> Result<(SocketAddr, Codecs), SdpError> {
    let sdp = Sdp::parse(body)?;
    let audio = first_audio(&sdp)?;
    let c = audio.codecs;
    if c.pcmu.is_none() && c.pcma.is_none() {
        return Err(SdpError::NoG711 { index: audio.index });
    }
    let remote = audio
        .rtp_addr()
        .ok_or(SdpError::MissingConnection { index: audio.index })?;
    Ok((remote, c))
}

/// Replaces the `o=` line with ours (RFC 8866 §5.2): the leg keeps seeing one session although
/// the descriptions behind it come from the other leg.
pub(super) fn set_origin(body: &[u8], addr: IpAddr, o: Origin) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    for line in body.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"o=") {
            let term: &[u8] = if line.ends_with(b"\r\n") {
                b"\r\n"
            } else if line.ends_with(b"\n") {
                b"\n"
            } else {
                b""
            };
            let o_line = format!(
                "o=tonewall {} {} IN {} {addr}",
                o.session,
                o.version,
                ip_kind(addr)
            );
            out.extend_from_slice(o_line.as_bytes());
            out.extend_from_slice(term);
        } else {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn origin_address_is_ours_and_the_rest_untouched() {
        let body = b"v=0\r\no=alice 2890844526 2890844527 IN IP4 192.0.2.10\r\ns=-\r\n";
        let out = hide_origin(body, "10.0.0.1".parse().unwrap());
        assert_eq!(
            out,
            b"v=0\r\no=alice 2890844526 2890844527 IN IP4 10.0.0.1\r\ns=-\r\n".to_vec()
        );
        let v6 = hide_origin(
            b"o=- 1 1 IN IP4 192.0.2.10\n",
            "2001:db8::1".parse().unwrap(),
        );
        assert_eq!(v6, b"o=- 1 1 IN IP6 2001:db8::1\n".to_vec());
    }

    #[test]
    fn answer_picks_first_g711_in_offer_order_and_refuses_other_media() {
        let offer = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 18 8 0 96\r\na=rtpmap:96 telephone-event/8000\r\na=sendonly\r\n\
m=video 4002 RTP/AVP 97\r\n";
        let o = Origin {
            session: 5,
            version: 1,
        };
        let ports = RelayPorts {
            rtp: 30000,
            rtcp: 30001,
        };
        let a = answer_offer(offer, "10.0.0.1".parse().unwrap(), ports, None, o).unwrap();
        let body = String::from_utf8(a.body).unwrap();
        assert!(body.contains("m=audio 30000 RTP/AVP 8 96\r\n"), "{body}");
        assert!(body.contains("a=rtpmap:96 telephone-event/8000"));
        assert!(body.contains("a=recvonly"));
        assert!(body.contains("m=video 0 RTP/AVP 97\r\n"));
        assert!(body.contains("o=tonewall 5 1 IN IP4 10.0.0.1"));
        assert_eq!(a.remote, "192.0.2.1:4000".parse().unwrap());
        assert_eq!((a.codecs.pcma, a.codecs.pcmu), (Some(8), None));
        // A re-offer keeps the law already in use when it still offers it.
        let again = answer_offer(offer, "10.0.0.1".parse().unwrap(), ports, Some(a.codecs), o);
        assert_eq!(again.unwrap().codecs.pcma, Some(8));
        let g729 = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\n";
        assert_eq!(
            answer_offer(g729, "10.0.0.1".parse().unwrap(), ports, None, o)
                .err()
                .map(|e| e.sip_status()),
            Some(488)
        );
    }

    #[test]
    fn origin_is_replaced_and_the_rest_kept() {
        let o = Origin {
            session: 9,
            version: 3,
        };
        let out = set_origin(
            b"v=0\r\no=x 1 2 IN IP4 1.2.3.4\r\ns=-\r\n",
            "10.0.0.1".parse().unwrap(),
            o,
        );
        assert_eq!(
            out,
            b"v=0\r\no=tonewall 9 3 IN IP4 10.0.0.1\r\ns=-\r\n".to_vec()
        );
    }
}
