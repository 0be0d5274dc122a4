//! Fuzz harness bodies for the SIP-side network parsers.
//!
//! Owns what "must hold for any input" means for the message layer, the stream framer and the
//! SDP rewriter. `cargo test` runs these over the checked-in corpus (`fixtures/sip/`) and
//! proptest inputs; cargo-fuzz targets under nightly call the same functions. A panic here is
//! a finding: the assertions state invariants (byte transparency, answerability), and every
//! other path must return an error rather than panic.

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;

use super::framer::{Frame, StreamFramer};
use super::message::{Framing, Limits, Message, ResponseBuilder};
use super::sdp::{MediaPorts, RewriteTarget, Sdp};

/// Feeds `data` to every SIP-side parser: as a datagram, as one stream message, through the
/// stream framer in uneven chunks, and (as a body) to the SDP parser and rewriter.
pub fn fuzz_parse(data: &[u8]) {
    let limits = Limits::default();
    for framing in [Framing::Datagram, Framing::Stream] {
        match Message::parse(Bytes::copy_from_slice(data), framing, &limits) {
            Ok(m) => check_message(&m, data, framing, &limits),
            Err(r) => {
                let _ = r.reason_phrase();
                if r.can_respond() {
                    let resp = r.response("fuzz");
                    assert!(resp.is_some(), "answerable rejection without an answer");
                    if let Some(resp) = resp {
                        assert_eq!(resp.status(), Some(r.status()));
                    }
                }
            }
        }
    }
    fuzz_framer(data);
    fuzz_sdp(data);
}

fn check_message(m: &Message, data: &[u8], framing: Framing, limits: &Limits) {
    // Byte transparency: an untouched message is exactly the bytes it came from (cut at
    // Content-Length), and parsing those bytes again gives the same message.
    assert!(
        data.starts_with(m.as_bytes()),
        "parsed bytes differ from input"
    );
    let again = Message::parse(m.as_bytes().clone(), framing, limits);
    assert!(
        matches!(&again, Ok(a) if a == m),
        "reparse changed the message"
    );

    let _ = (m.method(), m.request_uri(), m.status(), m.reason_phrase());
    let _ = (
        m.vias(),
        m.top_via(),
        m.from(),
        m.to(),
        m.from_tag(),
        m.to_tag(),
    );
    let _ = (m.call_id(), m.cseq(), m.max_forwards(), m.contacts());
    let _ = (m.record_routes(), m.routes(), m.p_asserted_identities());
    let _ = (
        m.content_type(),
        m.content_length(),
        m.require(),
        m.supported(),
    );
    let _ = (m.proxy_require(), m.reasons(), m.retry_after());
    let _ = format!("{m:?}");
    for f in m.header_fields() {
        let _ = m
            .get_all(std::str::from_utf8(f.raw_name).unwrap_or("x"))
            .count();
    }

    let mut e = m.clone();
    let _ = e.set_header("Max-Forwards", "69");
    let _ = e.push_via("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKfuzz");
    let _ = e.pop_via();
    let _ = e.remove_header("Contact");
    let _ = e.set_body(Some("application/sdp"), b"v=0\r\n");
    let _ = Message::parse(e.into_bytes(), Framing::Stream, limits);

    if m.is_request() {
        let _ = ResponseBuilder::new(m, 200, "OK")
            .to_tag("t")
            .record_route()
            .build();
    }
    fuzz_sdp(m.body());
}

/// Splits `data` into uneven chunks and drains the framer after each; frames must reassemble
/// into a prefix of the input.
pub fn fuzz_framer(data: &[u8]) {
    let mut f = StreamFramer::new(&Limits::default());
    let mut framed = 0usize;
    let mut rest = data;
    let mut step = 1usize;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        f.push(chunk);
        rest = tail;
        step = step % 97 + 13;
        loop {
            match f.next_frame() {
                Ok(Some(Frame::Message(b))) => {
                    framed += b.len();
                    let _ = Message::parse(b, Framing::Stream, &Limits::default());
                }
                Ok(Some(Frame::Ping | Frame::Pong)) => framed += 2,
                Ok(None) | Err(_) => break,
            }
        }
    }
    assert!(
        framed <= data.len() + 2,
        "framer produced more than it was given"
    );
}

/// Parses `data` as SDP, extracts media and rewrites it onto a fixed target.
pub fn fuzz_sdp(data: &[u8]) {
    let Ok(sdp) = Sdp::parse(data) else {
        return;
    };
    let media = sdp.media();
    let n = media.as_ref().map_or(4, Vec::len);
    let target = RewriteTarget {
        address: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
        media: (0..n)
            .map(|i| {
                Some(MediaPorts {
                    rtp: 30000 + 2 * u16::try_from(i % 1000).unwrap_or(0),
                    rtcp: None,
                })
            })
            .collect(),
        secure: None,
    };
    if let Ok(r) = sdp.rewrite(&target) {
        // What we emit must itself parse and agree on what it offers.
        let back = Sdp::parse(&r.body).and_then(|s| s.media());
        assert!(back.is_ok(), "rewritten SDP does not parse");
        if let Ok(back) = back {
            assert_eq!(back.len(), r.media.len());
        }
    }
}
