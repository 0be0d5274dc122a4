//! The UA's one SDP offer/answer (RFC 3264): G.711 and telephone-event (RFC 4733) on one
//! audio stream.

use std::net::{IpAddr, SocketAddr};

use super::UaError;
use crate::dsp::g711::Codec;
use crate::sip::sdp::Sdp;

/// The peer's RTP address, the codec to send and the telephone-event payload type, from an
/// SDP answer.
pub(super) fn answer_media(body: &[u8]) -> Result<(SocketAddr, Codec, Option<u8>), UaError> {
    let sdp = Sdp::parse(body)?;
    let media = sdp.media()?;
    let audio = media
        .iter()
        .find(|m| m.kind == "audio" && !m.is_disabled())
        .ok_or(UaError::NoAudio)?;
    let addr = audio.rtp_addr().ok_or(UaError::NoAudio)?;
    // The first G.711 format of the answer is what the peer will send (RFC 3264 §6.1).
    let codec = audio
        .payload_types
        .iter()
        .find_map(|&pt| {
            if Some(pt) == audio.codecs.pcmu {
                Some(Codec::Pcmu)
            } else if Some(pt) == audio.codecs.pcma {
                Some(Codec::Pcma)
            } else {
                None
            }
        })
        .ok_or(UaError::NoAudio)?;
    Ok((addr, codec, audio.codecs.telephone_event))
}

pub(super) fn sdp_body(ip: IpAddr, port: u16, codecs: &[Codec], event_pt: Option<u8>) -> String {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let session = rand::random::<u32>();
    let mut pts: Vec<String> = codecs
        .iter()
        .map(|c| c.payload_type().to_string())
        .collect();
    pts.extend(event_pt.map(|p| p.to_string()));
    let mut s = format!(
        "v=0\r\no=- {session} {session} IN {family} {ip}\r\ns=tonewall-ua\r\nc=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {}\r\n",
        pts.join(" ")
    );
    for c in codecs {
        let name = match c {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        };
        s.push_str(&format!("a=rtpmap:{} {name}/8000\r\n", c.payload_type()));
    }
    if let Some(pt) = event_pt {
        s.push_str(&format!(
            "a=rtpmap:{pt} telephone-event/8000\r\na=fmtp:{pt} 0-15\r\n"
        ));
    }
    s.push_str("a=ptime:20\r\na=sendrecv\r\n");
    s
}

/// What we answer to an offer: the peer's RTP address, the codec (ours when offered, else
/// the other G.711) and the telephone-event payload type if offered.
pub(super) fn offer_media(
    body: &[u8],
    preferred: Codec,
) -> Result<(SocketAddr, Codec, Option<u8>), UaError> {
    let offer = Sdp::parse(body)?;
    let media = offer.media()?;
    let audio = media
        .iter()
        .find(|m| m.kind == "audio" && !m.is_disabled())
        .ok_or(UaError::NoAudio)?;
    let remote_rtp = audio.rtp_addr().ok_or(UaError::NoAudio)?;
    let (pcmu, pcma) = (audio.codecs.pcmu.is_some(), audio.codecs.pcma.is_some());
    let codec = match preferred {
        Codec::Pcmu if pcmu => Codec::Pcmu,
        Codec::Pcma if pcma => Codec::Pcma,
        _ if pcmu => Codec::Pcmu,
        _ if pcma => Codec::Pcma,
        _ => return Err(UaError::NoAudio),
    };
    Ok((remote_rtp, codec, audio.codecs.telephone_event))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn our_offer_reads_back_as_what_we_offered() {
        let ip = IpAddr::from([127, 0, 0, 1]);
        let body = sdp_body(ip, 40_000, &[Codec::Pcma, Codec::Pcmu], Some(96));
        let (addr, codec, te) = answer_media(body.as_bytes()).unwrap();
        assert_eq!(addr, SocketAddr::new(ip, 40_000));
        // The first G.711 format listed is the one the peer sends.
        assert_eq!(codec, Codec::Pcma);
        assert_eq!(te, Some(96));
    }

    #[test]
    fn answers_without_usable_audio_are_typed_errors() {
        let no_g711 = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
        assert!(matches!(
            answer_media(no_g711.as_bytes()),
            Err(UaError::NoAudio)
        ));
        let disabled = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 0 RTP/AVP 0\r\n";
        assert!(matches!(
            answer_media(disabled.as_bytes()),
            Err(UaError::NoAudio)
        ));
        assert!(matches!(answer_media(b"not sdp\r\n"), Err(UaError::Sdp(_))));
        assert!(matches!(answer_media(b""), Err(UaError::NoAudio)));
    }
}
