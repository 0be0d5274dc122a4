//! RFC 4475 torture messages (fixtures/sip/rfc4475), the fuzz harness over the whole corpus,
//! and property tests: untouched messages round-trip byte-identical, random bytes never panic.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use proptest::prelude::*;
use tonewall::sip::error::ParseError;
use tonewall::sip::framer::{Frame, FrameError, StreamFramer};
use tonewall::sip::fuzz::fuzz_parse;
use tonewall::sip::headers::{Contacts, DisplayName};
use tonewall::sip::message::{Framing, Limits, Message, Method};
use tonewall::sip::uri::{Host, Uri};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/sip")
}

fn load(name: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join("rfc4475").join(format!("{name}.sip")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn parse(name: &str) -> Result<Message, tonewall::sip::message::Rejected> {
    Message::parse(
        Bytes::from(load(name)),
        Framing::Datagram,
        &Limits::default(),
    )
}

fn valid(name: &str) -> Message {
    parse(name).unwrap_or_else(|r| panic!("{name} rejected: {r}"))
}

fn sip_host(u: &Uri<'_>) -> String {
    u.as_sip().expect("sip uri").host.to_string()
}

// ---- RFC 4475 §3.1.1 valid messages -----------------------------------------------------

#[test]
fn wsinv_short_tortuous_invite() {
    let m = valid("wsinv");
    assert_eq!(m.method(), Some(Method::Invite));
    let ruri = m.request_uri().unwrap();
    assert_eq!(ruri.as_sip().unwrap().user, Some("vivekg"));
    assert_eq!(ruri.as_sip().unwrap().param("unknownparam"), Some(None));
    let to = m.to().unwrap();
    assert_eq!(to.tag(), Some("1918181833n"));
    assert!(!to.bracketed);
    let from = m.from().unwrap();
    assert_eq!(
        from.display_name.unwrap().unescaped(),
        br#"J Rosenberg \""#.to_vec()
    );
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(m.max_forwards(), Some(68));
    assert_eq!(m.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(m.content_length(), Some(150));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, "INVITE"));
    let vias = m.vias().unwrap();
    let hosts: Vec<String> = vias.iter().map(|v| v.host.to_string()).collect();
    assert_eq!(
        hosts,
        ["192.0.2.2", "spindle.example.com", "192.168.255.111"]
    );
    assert_eq!(vias[0].transport, "UDP");
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert_eq!(vias[1].transport, "TCP");
    assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(m.get("Subject"), Some(&b""[..]));
    assert_eq!(
        m.get("newfangledheader"),
        Some(&b"newfangled value\r\n continued newfangled value"[..])
    );
    assert_eq!(
        m.get("UnknownHeaderWithUnusualValue"),
        Some(&b";;,,;;,;"[..])
    );
    assert!(m.content_type().unwrap().unwrap().is_sdp());
    let routes = m.routes().unwrap();
    assert!(routes[0].uri.as_sip().unwrap().lr());
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!("star")
    };
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0].display_name,
        Some(DisplayName::Quoted(br#"Quoted string \"\""#))
    );
    assert_eq!(c[0].param("newparam"), Some(Some("newvalue")));
    assert_eq!(c[0].param("secondparam"), Some(None));
    assert_eq!(c[0].param("q"), Some(Some("0.33")));
    assert_eq!(m.body().len(), 150);
}

#[test]
fn intmeth_wide_range_of_valid_characters() {
    let m = valid("intmeth");
    assert_eq!(
        m.method(),
        Some(Method::Other("!interesting-Method0123456789_*+`.%indeed'~"))
    );
    let ruri = m.request_uri().unwrap();
    let s = ruri.as_sip().unwrap();
    assert_eq!(
        s.user,
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        s.password,
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(s.host, Host::Name("example.com"));
    let to = m.to().unwrap();
    assert_eq!(
        to.display_name.unwrap().unescaped(),
        b"BEL:\x07 NUL:\x00 DEL:\x7f".to_vec()
    );
    assert_eq!(
        to.uri.as_sip().unwrap().user,
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    let from = m.from().unwrap();
    assert_eq!(
        from.display_name,
        Some(DisplayName::Tokens(b"token1~` token2'+_ token3*%!.-"))
    );
    assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
    assert_eq!(from.param("fromParam''~+*_!.-%"), Some(Some("работающий")));
    assert_eq!(
        m.call_id(),
        Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );
    assert_eq!(m.cseq().unwrap().seq, 139122385);
    assert_eq!(m.max_forwards(), Some(255));
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK-.!%66*_+`'~"));
    assert_eq!(
        m.get("extensionHeader-!.%*+_`'~"),
        Some("\u{feff}大停電".as_bytes())
    );
}

#[test]
fn esc01_escapes_are_kept_as_received() {
    let m = valid("esc01");
    let ruri = m.request_uri().unwrap();
    assert_eq!(
        ruri.as_sip().unwrap().user,
        Some("sips%3Auser%40example.com")
    );
    assert_eq!(sip_host(&ruri), "example.net");
    assert_eq!(m.to().unwrap().uri.as_sip().unwrap().user, Some("%75se%72"));
    assert_eq!(
        m.from().unwrap().uri.as_sip().unwrap().user,
        Some("I%20have%20spaces")
    );
    assert_eq!(m.call_id(), Some("esc01.239409asdfakjkn23onasd0-3234"));
    assert!(m.content_type().unwrap().unwrap().is_sdp());
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    let cu = c[0].uri.as_sip().unwrap();
    assert_eq!(cu.param("%6C%72"), Some(None));
    assert_eq!(cu.param("n%61me"), Some(Some("v%61lue%25%34%31")));
}

#[test]
fn escnull_two_contacts_with_escaped_nulls() {
    let m = valid("escnull");
    assert_eq!(m.method(), Some(Method::Register));
    assert_eq!(
        m.to().unwrap().uri.as_sip().unwrap().user,
        Some("null-%00-null")
    );
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    let users: Vec<_> = c.iter().map(|n| n.uri.as_sip().unwrap().user).collect();
    assert_eq!(users, [Some("%00"), Some("%00%00")]);
    assert_eq!(m.content_length(), Some(0));
}

#[test]
fn esc02_percent_is_not_an_escape_in_methods_and_names() {
    let m = valid("esc02");
    assert_eq!(m.method(), Some(Method::Other("RE%47IST%45R")));
    assert_eq!(m.cseq().unwrap().method, "RE%47IST%45R");
    assert_eq!(
        m.to().unwrap().display_name,
        Some(DisplayName::Quoted(b"%Z%45"))
    );
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK209%fzsnel234"));
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(c.len(), 2, "C%6Fntact is not a Contact");
    assert_eq!(
        m.get("C%6Fntact"),
        Some(&b"<sip:alias2@host2.example.com>"[..])
    );
}

#[test]
fn lwsdisp_display_name_glued_to_bracket() {
    let m = valid("lwsdisp");
    let from = m.from().unwrap();
    assert_eq!(from.display_name, Some(DisplayName::Tokens(b"caller")));
    assert_eq!(from.tag(), Some("323"));
}

#[test]
fn longreq_long_values_and_34_vias() {
    let m = valid("longreq");
    let to = m.to().unwrap();
    assert_eq!(to.uri.as_sip().unwrap().port, Some(6000));
    assert_eq!(to.uri.as_sip().unwrap().params.len(), 3);
    let from = m.from().unwrap();
    assert!(from.tag().unwrap().starts_with("12982982"));
    assert_eq!(from.params.len(), 3);
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 34);
    for (i, v) in vias.iter().take(33).enumerate() {
        assert_eq!(v.host.to_string(), format!("sip{}.example.com", 33 - i));
    }
    assert_eq!(vias[33].received(), Some("192.0.2.5"));
    assert!(vias[33].branch().unwrap().ends_with("branchvalue"));
    assert_eq!(m.content_length(), Some(150));
}

#[test]
fn dblreq_trailing_octets_of_a_datagram_are_ignored() {
    let raw = load("dblreq");
    let m = valid("dblreq");
    assert_eq!(m.method(), Some(Method::Register));
    assert!(m.as_bytes().len() < raw.len());
    assert!(m.as_bytes().ends_with(b"Content-Length: 0\r\n\r\n"));
    assert_eq!(m.body(), b"");
    // Over a stream the same octets are two messages.
    let mut f = StreamFramer::new(&Limits::default());
    f.push(&raw);
    let mut methods = Vec::new();
    while let Some(Frame::Message(b)) = f.next_frame().unwrap() {
        let m = Message::parse(b, Framing::Stream, &Limits::default()).unwrap();
        methods.push(m.method().unwrap().as_str().to_owned());
    }
    assert_eq!(methods, ["REGISTER", "INVITE"]);
}

#[test]
fn semiuri_user_part_with_params() {
    let m = valid("semiuri");
    let ruri = m.request_uri().unwrap();
    assert_eq!(
        ruri.as_sip().unwrap().user,
        Some("user;par=u%40example.net")
    );
    assert_eq!(sip_host(&ruri), "example.com");
    assert_eq!(m.get("Accept").map(|v| v.len() > 40), Some(true));
}

#[test]
fn transports_known_and_unknown() {
    let m = valid("transports");
    let t: Vec<_> = m
        .vias()
        .unwrap()
        .iter()
        .map(|v| v.transport.to_owned())
        .collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    assert_eq!(m.call_id(), Some("transports.kijh4akdnaqjkwendsasfdj"));
}

#[test]
fn mpart01_binary_body_survives() {
    let raw = load("mpart01");
    let m = valid("mpart01");
    assert_eq!(m.method(), Some(Method::Message));
    assert_eq!(m.as_bytes(), &raw[..]);
    assert!(m.body().contains(&0));
    assert_eq!(Some(m.body().len()), m.content_length());
    let ct = m.content_type().unwrap().unwrap();
    assert!(ct.is("multipart", "mixed"));
    assert_eq!(ct.param("boundary"), Some(Some("7a9cbec02ceef655")));
    let via = m.top_via().unwrap();
    assert_eq!(via.port, Some(5070));
    assert_eq!(via.rport(), Some(None));
}

#[test]
fn unreason_and_noreason() {
    let m = valid("unreason");
    assert_eq!(m.status(), Some(200));
    let reason = std::str::from_utf8(m.reason_phrase().unwrap()).unwrap();
    assert!(reason.starts_with("= 2**3 * 5**2 но сто"), "{reason}");
    assert_eq!(m.to_tag(), Some("2229"));
    let m = valid("noreason");
    assert_eq!(m.status(), Some(100));
    assert_eq!(m.reason_phrase(), Some(&b""[..]));
}

// ---- RFC 4475 §3.1.2 invalid messages ---------------------------------------------------

/// (name, status, answerable, expected error)
fn invalid_cases() -> Vec<(&'static str, u16, bool, ParseError)> {
    use ParseError::*;
    vec![
        ("badinv01", 400, true, BadHeader("Via")),
        (
            "clerr",
            400,
            true,
            BodyTooShort {
                declared: 9999,
                actual: 154,
            },
        ),
        ("ncl", 400, true, BadHeader("Content-Length")),
        ("scalar02", 400, true, BadHeader("CSeq")),
        // A response: dropped, never answered.
        ("scalarlg", 400, false, BadHeader("CSeq")),
        ("quotbal", 400, true, BadHeader("To")),
        ("ltgtruri", 400, true, BadRequestUri),
        ("lwsruri", 400, true, BadStartLine),
        ("lwsstart", 400, true, BadStartLine),
        ("trws", 400, true, BadStartLine),
        ("escruri", 400, true, BadRequestUri),
        ("regbadct", 400, true, BadHeader("Contact")),
        ("badaspec", 400, true, BadHeader("To")),
        ("baddn", 400, true, BadHeader("From")),
        ("badvers", 505, true, BadVersion),
        ("mismatch01", 400, true, CSeqMismatch),
        // RFC 4475 §3.1.2.18 allows 400 as well as 501.
        ("mismatch02", 400, true, CSeqMismatch),
        ("bigcode", 400, false, BadStatus),
        // §3.3: a request without To/From/Call-ID cannot be answered.
        ("insuf", 400, false, MissingHeader("From")),
        ("mcl01", 400, true, DuplicateHeader("Content-Length")),
        ("multi01", 400, true, DuplicateHeader("From")),
    ]
}

#[test]
fn invalid_messages_get_their_documented_answer() {
    use ParseError::BadHeader;
    for (name, status, answerable, error) in invalid_cases() {
        let r = parse(name).expect_err(name);
        assert_eq!(r.error(), &error, "{name}");
        assert_eq!(r.status(), status, "{name}");
        assert_eq!(r.can_respond(), answerable, "{name}");
        if answerable {
            let resp = r
                .response("tw-err")
                .unwrap_or_else(|| panic!("{name}: no answer"));
            assert_eq!(resp.status(), Some(status), "{name}");
            let req = r.request().unwrap();
            assert_eq!(resp.get("Call-ID"), req.get("Call-ID"), "{name}");
            assert_eq!(resp.get("CSeq"), req.get("CSeq"), "{name}");
            assert_eq!(
                resp.get_all("Via").count(),
                req.get_all("Via").count(),
                "{name}"
            );
            // The answer is well-formed, except where it must copy the broken field itself
            // (RFC 3261 §8.2.6.2 copies Via, From, To, Call-ID and CSeq verbatim).
            let copies_broken =
                matches!(error, BadHeader("Via" | "From" | "To" | "Call-ID" | "CSeq"));
            let reparsed = Message::parse(resp.into_bytes(), Framing::Stream, &Limits::default());
            assert_eq!(reparsed.is_ok(), !copies_broken, "{name}: {reparsed:?}");
        }
    }
}

#[test]
fn stream_framing_of_invalid_lengths() {
    // RFC 4475 §3.1.2.2: over TCP, a too-large Content-Length means waiting for more.
    let mut f = StreamFramer::new(&Limits::default());
    f.push(&load("clerr"));
    assert_eq!(f.next_frame(), Ok(None));
    // §3.1.2.3: a negative Content-Length is not recoverable on a stream.
    let mut f = StreamFramer::new(&Limits::default());
    f.push(&load("ncl"));
    assert_eq!(f.next_frame(), Err(FrameError::BadContentLength));
}

// ---- RFC 4475 §3.2-3.4: syntactically valid, handled above the parser -------------------

#[test]
fn semantic_cases_parse_for_the_application_to_judge() {
    let m = valid("badbranch");
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK"));

    // 416 Unsupported URI Scheme is the application's call.
    for name in ["unkscm", "novelsc"] {
        let m = valid(name);
        assert!(matches!(m.request_uri(), Some(Uri::Other { .. })), "{name}");
    }
    assert_eq!(
        valid("novelsc").request_uri().unwrap().scheme(),
        "soap.beep"
    );
    let m = valid("unksm2");
    assert_eq!(m.to().unwrap().uri.scheme(), "isbn");
    assert_eq!(m.from().unwrap().uri.scheme(), "http");

    // 420 Bad Extension is decided above the parser from the option tags.
    let m = valid("bext01");
    assert_eq!(
        m.require().unwrap(),
        ["nothingSupportsThis", "nothingSupportsThisEither"]
    );
    assert_eq!(m.proxy_require().unwrap().len(), 2);

    // 415 for an unknown body type.
    let invut = valid("invut");
    let ct = invut.content_type().unwrap().unwrap();
    assert!(ct.is("application", "unknownformat"));

    assert_eq!(
        valid("regaut01").get("Authorization"),
        Some(&b"NoOneKnowsThisScheme opaque-data=here"[..])
    );
    assert_eq!(valid("zeromf").max_forwards(), Some(0));
    assert_eq!(
        valid("sdp01").get("Accept"),
        Some(&b"text/nobodyKnowsThis"[..])
    );
    assert_eq!(
        valid("baddate").get("Date"),
        Some(&b"Fri, 01 Jan 2010 16:00:00 EST"[..])
    );

    let bcast = valid("bcast");
    assert_eq!(
        bcast.vias().unwrap()[1].host,
        Host::V4("255.255.255.255".parse().unwrap())
    );

    // cparam01: unbracketed, so ;unknownparam belongs to the header, not the URI.
    let cparam01 = valid("cparam01");
    let Contacts::List(c) = cparam01.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(c[0].param("unknownparam"), Some(None));
    assert!(c[0].uri.as_sip().unwrap().params.is_empty());
    let cparam02 = valid("cparam02");
    let Contacts::List(c) = cparam02.contacts().unwrap() else {
        panic!()
    };
    assert!(c[0].params.is_empty());
    assert_eq!(c[0].uri.as_sip().unwrap().param("unknownparam"), Some(None));

    let regescrt = valid("regescrt");
    let Contacts::List(c) = regescrt.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(
        c[0].uri.as_sip().unwrap().headers,
        Some("Route=%3Csip:sip.example.com%3E")
    );

    // RFC 2543 INVITE: no branch, no tags, no Max-Forwards, no Content-Length.
    let m = valid("inv2543");
    assert_eq!(m.max_forwards(), None);
    assert_eq!(m.top_via().unwrap().branch(), None);
    assert_eq!(m.from_tag(), None);
    assert!(m.body().ends_with(b"m=audio 49217 RTP/AVP 0\r\n"));
    assert_eq!(m.record_routes().unwrap().len(), 1);
}

// ---- whole corpus through the fuzz harness ----------------------------------------------

fn corpus() -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["rfc4475", "extra"] {
        let mut entries: Vec<_> = std::fs::read_dir(corpus_dir().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let data = std::fs::read(&p).unwrap();
            out.push((p, data));
        }
    }
    out
}

#[test]
fn corpus_has_all_rfc4475_messages() {
    let n = corpus()
        .iter()
        .filter(|(p, _)| p.parent().unwrap().ends_with("rfc4475"))
        .count();
    assert_eq!(n, 49);
}

#[test]
fn fuzz_harness_over_corpus() {
    for (path, data) in corpus() {
        fuzz_parse(&data);
        // Every prefix and a few mutations must not panic either.
        for cut in (0..data.len()).step_by(7) {
            fuzz_parse(&data[..cut]);
        }
        let mut flipped = data.clone();
        for i in (0..flipped.len()).step_by(11) {
            flipped[i] ^= 0x20;
        }
        fuzz_parse(&flipped);
        let _ = path;
    }
}

#[test]
fn untouched_corpus_messages_round_trip() {
    for (path, data) in corpus() {
        if let Ok(m) = Message::parse(
            Bytes::from(data.clone()),
            Framing::Datagram,
            &Limits::default(),
        ) {
            assert!(data.starts_with(m.as_bytes()), "{}", path.display());
            // Both of these hold more than one message on purpose.
            let several = ["dblreq.sip", "tcp_stream_keepalive.sip"]
                .contains(&path.file_name().unwrap().to_str().unwrap());
            if !several {
                assert_eq!(m.as_bytes(), &data[..], "{}", path.display());
            }
        }
    }
}

#[test]
fn extra_corpus_trunk_messages() {
    let inv = std::fs::read(corpus_dir().join("extra/trunk_invite.sip")).unwrap();
    let m = Message::parse(Bytes::from(inv), Framing::Datagram, &Limits::default()).unwrap();
    let pai = m.p_asserted_identities().unwrap();
    assert_eq!(pai[0].uri.as_sip().unwrap().user, Some("+441632960123"));
    let sdp = tonewall::sip::sdp::Sdp::parse(m.body()).unwrap();
    let media = sdp.media().unwrap();
    assert_eq!(media[0].codecs.telephone_event, Some(101));

    let stream = std::fs::read(corpus_dir().join("extra/tcp_stream_keepalive.sip")).unwrap();
    let mut f = StreamFramer::new(&Limits::default());
    f.push(&stream);
    let mut frames = Vec::new();
    while let Some(fr) = f.next_frame().unwrap() {
        frames.push(match fr {
            Frame::Message(b) => {
                let m = Message::parse(b, Framing::Stream, &Limits::default()).unwrap();
                m.call_id().unwrap().to_owned()
            }
            Frame::Ping => "ping".to_owned(),
            Frame::Pong => "pong".to_owned(),
        });
    }
    assert_eq!(
        frames,
        ["ping", "ka-1@192.0.2.9", "pong", "ka-2@192.0.2.9", "ping"]
    );
}

// ---- properties ---------------------------------------------------------------------------

/// One header line: (name as written, value) with optional folding and spacing.
fn arb_name(long: &'static str, compact: Option<&'static str>) -> impl Strategy<Value = String> {
    let forms: Vec<String> = std::iter::once(long.to_owned())
        .chain(std::iter::once(long.to_uppercase()))
        .chain(std::iter::once(long.to_lowercase()))
        .chain(compact.map(str::to_owned))
        .collect();
    prop::sample::select(forms)
}

prop_compose! {
    fn arb_message()(
        method in prop::sample::select(vec!["INVITE", "BYE", "OPTIONS", "INFO", "X-FOO"]),
        eol in prop::sample::select(vec!["\r\n", "\n"]),
        via_name in arb_name("Via", Some("v")),
        from_name in arb_name("From", Some("f")),
        to_name in arb_name("To", Some("t")),
        cid_name in arb_name("Call-ID", Some("i")),
        cl_name in arb_name("Content-Length", Some("l")),
        pre in prop::sample::select(vec!["", " ", "\t "]),
        post in prop::sample::select(vec!["", " ", "  "]),
        fold in any::<bool>(),
        branch in "[a-zA-Z0-9]{1,12}",
        tag in "[a-zA-Z0-9.-]{1,10}",
        call_id in "[a-zA-Z0-9.@-]{1,20}",
        seq in 0u32..(1 << 31),
        extra in prop::collection::vec(("X-[A-Za-z]{1,8}", "[ -~]{0,30}"), 0..5),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) -> (Vec<u8>, String, u32) {
        let mut s = format!("{method} sip:bob@example.com SIP/2.0{eol}");
        let fold_ws = if fold { format!("{eol} ") } else { " ".to_owned() };
        s += &format!("{via_name}{pre}:{post}SIP/2.0/UDP{fold_ws}192.0.2.1;branch=z9hG4bK{branch}{eol}");
        s += &format!("{from_name}{pre}:{post}<sip:a@example.com>;tag={tag}{eol}");
        s += &format!("{to_name}:{fold_ws}<sip:bob@example.com>{eol}");
        s += &format!("{cid_name}:{post}{call_id}{eol}");
        s += &format!("CSeq: {seq}{fold_ws}{method}{eol}");
        for (n, v) in &extra {
            s += &format!("{n}:{post}{}{eol}", v.trim());
        }
        s += &format!("{cl_name}{pre}: {}{eol}{eol}", body.len());
        let mut bytes = s.into_bytes();
        bytes.extend_from_slice(&body);
        (bytes, call_id, seq)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn untouched_message_serialises_byte_identical((raw, call_id, seq) in arb_message()) {
        for framing in [Framing::Datagram, Framing::Stream] {
            let m = Message::parse(Bytes::from(raw.clone()), framing, &Limits::default())
                .map_err(|e| TestCaseError::fail(format!("{e}")))?;
            prop_assert_eq!(m.as_bytes(), &raw[..]);
            prop_assert_eq!(m.call_id(), Some(call_id.as_str()));
            prop_assert_eq!(m.cseq().map(|c| c.seq), Some(seq));
            prop_assert_eq!(m.vias().map(|v| v.len()).ok(), Some(1));
        }
    }

    #[test]
    fn edits_leave_other_bytes_alone((raw, _cid, _seq) in arb_message(), v in "[a-z]{1,10}") {
        let mut m = Message::parse(Bytes::from(raw.clone()), Framing::Datagram, &Limits::default()).unwrap();
        m.append_header("X-Tonewall", &v).unwrap();
        let out = m.as_bytes().clone();
        // Removing what we added gives the original back, byte for byte.
        m.remove_header("x-tonewall").unwrap();
        prop_assert_eq!(m.as_bytes(), &raw[..]);
        prop_assert!(out.len() > raw.len());
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzz_parse(&data);
    }

    #[test]
    fn sip_like_noise_never_panics(data in "(INVITE|SIP/2.0|Via|v|:|;|,|<|>|\"|\\\\|\r\n|\n| |[a-z0-9=@.])*") {
        fuzz_parse(data.as_bytes());
    }
}
