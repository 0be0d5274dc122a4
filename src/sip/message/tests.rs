//! Message layer tests: parsing, rejections, edits and builders.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use bytes::Bytes;

use super::*;
use crate::sip::error::{EditError, ParseError};
use crate::sip::headers::DisplayName;
use crate::sip::headers::{CSeq, Contacts};
use crate::sip::uri::Host;

const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: \"Alice \\\"A\\\"\" <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
X-Custom:   keep   me  \r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

fn parse(s: &[u8], framing: Framing) -> Result<Message, Rejected> {
    Message::parse(Bytes::copy_from_slice(s), framing, &Limits::default())
}

fn ok(s: &str) -> Message {
    parse(s.as_bytes(), Framing::Datagram).unwrap()
}

#[test]
fn parses_a_plain_invite() {
    let m = ok(INVITE);
    assert_eq!(m.as_bytes(), INVITE.as_bytes());
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.request_uri_str(), Some("sip:bob@biloxi.example.com"));
    assert_eq!(m.call_id(), Some("a84b4c76e66710@pc33.atlanta.example.com"));
    assert_eq!(
        m.cseq(),
        Some(CSeq {
            seq: 314159,
            method: "INVITE"
        })
    );
    assert_eq!(m.max_forwards(), Some(70));
    assert_eq!(m.from_tag(), Some("1928301774"));
    assert_eq!(m.to_tag(), None);
    let from = m.from().unwrap();
    assert_eq!(from.display_name.unwrap().unescaped(), br#"Alice "A""#);
    let via = m.top_via().unwrap();
    assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
    assert_eq!(via.rport(), Some(None));
    assert_eq!(m.get("x-custom"), Some(&b"keep   me"[..]));
    assert!(m.content_type().unwrap().unwrap().is_sdp());
    assert_eq!(m.body(), b"v=0\n");
    assert_eq!(m.content_length(), Some(4));
}

#[test]
fn compact_forms_folding_bare_lf_and_space_before_colon() {
    let raw = "OPTIONS sip:x@example.com SIP/2.0\n\
v : SIP/2.0/UDP a.example.com;branch=z9hG4bK1,\n  SIP/2.0/TCP [2001:db8::1]:5062;branch=z9hG4bK2\n\
VIA: SIP/2.0/UDP c.example.com;branch=z9hG4bK3\n\
f: <sip:a@example.com>;tag=1\n\
t:\n\tsip:x@example.com\n\
i: abc@host\n\
CSEQ: 1 OPTIONS\n\
m: *\n\
k: 100rel,\n timer\n\
l: 0\n\n";
    let m = ok(raw);
    assert_eq!(m.as_bytes(), raw.as_bytes());
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[1].host, Host::V6("2001:db8::1".parse().unwrap()));
    assert_eq!(vias[1].port, Some(5062));
    assert_eq!(vias[2].branch(), Some("z9hG4bK3"));
    assert_eq!(m.to().unwrap().uri_raw, "sip:x@example.com");
    assert_eq!(m.call_id(), Some("abc@host"));
    assert_eq!(m.contacts().unwrap(), Contacts::Star);
    assert_eq!(m.supported().unwrap(), vec!["100rel", "timer"]);
    assert_eq!(m.get_all("Via").count(), 2);
    assert_eq!(m.get("Call-ID"), m.get("i"));
}

#[test]
fn typed_views_for_b2bua_headers() {
    let raw = "BYE tel:+15551234;phone-context=example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\
From: <tel:+15550000>;tag=a\r\nTo: <sip:b@h>;tag=b\r\nCall-ID: c\r\nCSeq: 2 BYE\r\n\
Record-Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Route: <sip:p3.example.com;lr>\r\n\
P-Asserted-Identity: \"Caller\" <sip:+15550000@trunk.example.com>, <tel:+15550000>\r\n\
Require: timer\r\nProxy-Require: foo\r\n\
Reason: Q.850;cause=16;text=\"Normal\"\r\n\
Retry-After: 30\r\nContent-Length: 0\r\n\r\n";
    let m = ok(raw);
    assert_eq!(m.request_uri().unwrap().scheme(), "tel");
    assert_eq!(m.from().unwrap().uri.scheme(), "tel");
    assert_eq!(m.record_routes().unwrap().len(), 2);
    assert!(m.routes().unwrap()[0].uri.as_sip().unwrap().lr());
    let pai = m.p_asserted_identities().unwrap();
    assert_eq!(pai.len(), 2);
    assert_eq!(pai[0].display_name, Some(DisplayName::Quoted(b"Caller")));
    assert_eq!(m.require().unwrap(), vec!["timer"]);
    assert_eq!(m.proxy_require().unwrap(), vec!["foo"]);
    assert_eq!(m.reasons().unwrap()[0].cause(), Some(16));
    assert_eq!(m.retry_after().unwrap().unwrap().seconds, 30);
    assert_eq!(m.max_forwards(), None);
}

#[test]
fn unknown_method_parses() {
    let raw = "NEWMETHOD sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:x@h>\r\nCall-ID: 1\r\nCSeq: 1 NEWMETHOD\r\n\r\n";
    assert_eq!(ok(raw).method(), Some(Method::Other("NEWMETHOD")));
}

#[test]
fn content_length_rules() {
    // Datagram: trailing bytes past Content-Length are dropped.
    let mut raw = INVITE.as_bytes().to_vec();
    raw.extend_from_slice(b"GARBAGE");
    let m = parse(&raw, Framing::Datagram).unwrap();
    assert_eq!(m.as_bytes(), INVITE.as_bytes());
    // Shorter body than declared: 400.
    let short = INVITE.replace("Content-Length: 4", "Content-Length: 40");
    let r = parse(short.as_bytes(), Framing::Datagram).unwrap_err();
    assert_eq!(r.status(), 400);
    assert!(matches!(
        r.error(),
        ParseError::BodyTooShort {
            declared: 40,
            actual: 4
        }
    ));
    assert!(r.can_respond());
    // No Content-Length: datagram keeps the rest, stream has no body.
    let none = INVITE.replace("Content-Length: 4\r\n", "");
    assert_eq!(
        parse(none.as_bytes(), Framing::Datagram).unwrap().body(),
        b"v=0\n"
    );
    assert_eq!(parse(none.as_bytes(), Framing::Stream).unwrap().body(), b"");
    // Negative, non-numeric, conflicting.
    for bad in [
        "Content-Length: -4",
        "Content-Length: five",
        "Content-Length: 4\r\nl: 5",
    ] {
        let m = INVITE.replace("Content-Length: 4", bad);
        assert_eq!(
            parse(m.as_bytes(), Framing::Datagram).unwrap_err().status(),
            400,
            "{bad}"
        );
    }
    // Same value twice is fine.
    let twice = INVITE.replace("Content-Length: 4", "Content-Length: 4\r\nl: 4");
    assert!(parse(twice.as_bytes(), Framing::Datagram).is_ok());
}

#[test]
fn binary_body_is_untouched() {
    let mut raw = INVITE
        .replace("Content-Length: 4", "Content-Length: 6")
        .into_bytes();
    raw.truncate(raw.len() - 4);
    raw.extend_from_slice(&[0, 0xff, b'\r', b'\n', 0x80, 0]);
    let m = parse(&raw, Framing::Datagram).unwrap();
    assert_eq!(m.body(), &[0, 0xff, b'\r', b'\n', 0x80, 0]);
    assert_eq!(m.as_bytes(), &raw[..]);
}

#[test]
fn rejections_carry_their_answer() {
    let cases: &[(&str, &str, u16, bool)] = &[
        (
            "INVITE sip:bob@biloxi.example.com SIP/2.0",
            "INVITE sip:bob@biloxi.example.com SIP/3.0",
            505,
            true,
        ),
        ("CSeq: 314159 INVITE", "CSeq: 314159 BYE", 400, true),
        (
            "Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n",
            "",
            400,
            false,
        ),
        ("Max-Forwards: 70", "Max-Forwards: 256", 400, true),
        (
            "To: Bob <sip:bob@biloxi.example.com>",
            "To: Bob <sip:bob@biloxi.example.com>\r\nt: <sip:x@y>",
            400,
            true,
        ),
        (
            "Contact: <sip:alice@pc33.atlanta.example.com>",
            "Contact: <sip:a@b>;;",
            400,
            true,
        ),
        (
            "INVITE sip:bob@biloxi.example.com SIP/2.0",
            "INVITE  sip:bob@biloxi.example.com SIP/2.0",
            400,
            true,
        ),
    ];
    for (from, to, status, answerable) in cases {
        let m = INVITE.replace(from, to);
        let r = parse(m.as_bytes(), Framing::Datagram).unwrap_err();
        assert_eq!(r.status(), *status, "{to}: {:?}", r.error());
        assert_eq!(r.can_respond(), *answerable, "{to}");
        if *answerable {
            let resp = r.response("srvtag").unwrap();
            assert_eq!(resp.status(), Some(*status));
            assert_eq!(resp.to_tag(), Some("srvtag"));
            assert_eq!(
                resp.call_id(),
                Some("a84b4c76e66710@pc33.atlanta.example.com")
            );
        }
    }
    assert_eq!(
        ParseError::MissingHeader("Call-ID").reason_phrase(),
        "Missing Call-ID header field"
    );
    // Responses and ACKs are never answered.
    let ack = INVITE
        .replace("INVITE sip", "ACK sip")
        .replace("314159 INVITE", "314159 ACK");
    let ack = ack.replace("Max-Forwards: 70", "Max-Forwards: 300");
    assert!(
        !parse(ack.as_bytes(), Framing::Datagram)
            .unwrap_err()
            .can_respond()
    );
}

#[test]
fn size_and_header_limits() {
    let limits = Limits {
        max_size: 100,
        max_headers: 256,
    };
    let r = Message::parse(Bytes::from(INVITE), Framing::Datagram, &limits).unwrap_err();
    assert_eq!(r.status(), 413);
    assert!(r.can_respond());
    let limits = Limits {
        max_size: 65535,
        max_headers: 3,
    };
    let r = Message::parse(Bytes::from(INVITE), Framing::Datagram, &limits).unwrap_err();
    assert!(matches!(r.error(), ParseError::TooManyHeaders { limit: 3 }));
}

#[test]
fn edits_touch_only_their_bytes() {
    let mut m = ok(INVITE);
    m.set_header("Max-Forwards", "69").unwrap();
    assert_eq!(
        m.as_bytes(),
        INVITE
            .replace("Max-Forwards: 70", "Max-Forwards: 69")
            .as_bytes()
    );
    m.remove_header("x-custom").unwrap();
    m.append_header("X-Leg", "b").unwrap();
    let expect = INVITE
        .replace("Max-Forwards: 70", "Max-Forwards: 69")
        .replace("X-Custom:   keep   me  \r\n", "")
        .replace("\r\n\r\nv=0", "\r\nX-Leg: b\r\n\r\nv=0");
    assert_eq!(m.as_bytes(), expect.as_bytes());

    m.set_request_uri("sip:agent@cc.example.com").unwrap();
    assert_eq!(m.request_uri_str(), Some("sip:agent@cc.example.com"));
    assert!(m.set_request_uri("not a uri").is_err());

    m.set_body(Some("application/sdp"), b"v=0\r\ns=-\r\n")
        .unwrap();
    assert_eq!(m.content_length(), Some(10));
    assert_eq!(m.body(), b"v=0\r\ns=-\r\n");
    m.set_body(None, b"").unwrap();
    assert_eq!(m.get("Content-Type"), None);
    assert_eq!(m.get("Content-Length"), Some(&b"0"[..]));

    // The edited message is still a valid message.
    let again = parse(m.as_bytes(), Framing::Stream).unwrap();
    assert_eq!(again.as_bytes(), m.as_bytes());

    assert_eq!(m.set_header("Bad Name", "x"), Err(EditError::BadName));
    assert_eq!(
        m.append_header("X", "a\r\nInjected: 1"),
        Err(EditError::BadValue)
    );
}

#[test]
fn via_push_and_pop() {
    let raw = "SIP/2.0 200 OK\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP b;branch=z9hG4bK2\r\n\
Via: SIP/2.0/UDP c;branch=z9hG4bK3\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:x@h>;tag=2\r\n\
Call-ID: 1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let mut m = ok(raw);
    assert!(m.pop_via().unwrap());
    assert_eq!(m.vias().unwrap().len(), 2);
    assert!(
        m.as_bytes()
            .starts_with(b"SIP/2.0 200 OK\r\nv: SIP/2.0/UDP b;branch=z9hG4bK2\r\n")
    );
    assert!(m.pop_via().unwrap());
    m.push_via("SIP/2.0/TCP relay.example.com;branch=z9hG4bKnew")
        .unwrap();
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[0].branch(), Some("z9hG4bKnew"));
    assert_eq!(vias[1].branch(), Some("z9hG4bK3"));
    assert!(m.pop_via().unwrap());
    assert!(m.pop_via().unwrap());
    assert!(!m.pop_via().unwrap());
}

#[test]
fn response_builder_follows_8_2_6() {
    let req = ok(INVITE);
    let resp = ResponseBuilder::new(&req, 180, "Ringing")
        .to_tag("uas1")
        .header("Contact", "<sip:relay@10.0.0.1>")
        .build()
        .unwrap();
    assert_eq!(resp.status(), Some(180));
    assert_eq!(resp.reason_phrase(), Some(&b"Ringing"[..]));
    assert_eq!(resp.to_tag(), Some("uas1"));
    assert_eq!(resp.from_tag(), Some("1928301774"));
    assert_eq!(resp.cseq(), req.cseq());
    assert_eq!(resp.get("Via"), req.get("Via"));
    assert_eq!(resp.body(), b"");
    // The built response is a valid message.
    parse(resp.as_bytes(), Framing::Stream).unwrap();

    let trying = ResponseBuilder::new(&req, 100, "Trying")
        .to_tag("x")
        .build()
        .unwrap();
    assert_eq!(trying.to_tag(), None);

    let ok200 = ResponseBuilder::new(&req, 200, "OK")
        .to_tag("t")
        .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
        .build()
        .unwrap();
    assert_eq!(ok200.content_length(), Some(5));
    assert_eq!(ok200.body(), b"v=0\r\n");

    assert!(ResponseBuilder::new(&req, 99, "x").build().is_err());
    assert!(ResponseBuilder::new(&ok200, 200, "OK").build().is_err());
}

#[test]
fn request_builder_validates() {
    let m = RequestBuilder::new("INVITE", "sip:agent@cc.example.com")
        .header("Via", "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKb1;rport")
        .header("Max-Forwards", "70")
        .header("From", "<sip:caller@relay.example.com>;tag=b1")
        .header("To", "<sip:agent@cc.example.com>")
        .header("Call-ID", "leg-b-1")
        .header("CSeq", "1 INVITE")
        .body("application/sdp", Bytes::from_static(b"v=0\r\n"))
        .build()
        .unwrap();
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.body(), b"v=0\r\n");
    let missing = RequestBuilder::new("BYE", "sip:a@b")
        .header("Via", "SIP/2.0/UDP h")
        .build();
    assert!(matches!(
        missing,
        Err(EditError::Invalid(ParseError::MissingHeader(_)))
    ));
    assert_eq!(
        RequestBuilder::new("BAD METHOD", "sip:a@b")
            .build()
            .unwrap_err(),
        EditError::BadName
    );
}

#[test]
fn debug_hides_values_and_body() {
    let raw = INVITE.replace("v=0\n", "1234");
    let m = ok(&raw);
    let dbg = format!("{m:?}");
    assert!(!dbg.contains("1234"), "{dbg}");
    assert!(!dbg.contains("keep"), "{dbg}");
    assert!(dbg.contains("body_len: 4"));
}

#[test]
fn garbage_is_rejected_not_panicking() {
    for g in [
        &b""[..],
        b"\r\n\r\n",
        b"INVITE",
        b"SIP/2.0 200 OK\r\n",
        b"\xff\xfe\r\n\r\n",
        b"A B C\r\n:x\r\n\r\n",
        b"A B C\r\n x\r\n\r\n",
    ] {
        assert!(parse(g, Framing::Datagram).is_err());
    }
}
