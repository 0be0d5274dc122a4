//! Loop-model routes (PCI Pal style) over the in-memory wire on a virtual clock: the contact
//! centre transfers the caller to tonewall (here the "trunk" side, A-leg), tonewall learns the
//! locator from the Request-URI, a header or DTMF, the test plays the shell's resolver with
//! `Input::Located`, and the return call goes to the contact centre (B-leg). The wire's leak
//! checks apply to every message.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod sipwire;

use sipwire::*;
use tonewall::config::{LocatorSource, OnFailure, RouteConfig, RouteMode};
use tonewall::digit::Digit;
use tonewall::sip::b2bua::{
    B2buaConfig, CallEvent, CallId, EndCause, Input, LocateOutcome, LoopRoute, Output, Route, Side,
};
use tonewall::sip::message::{Message, ResponseBuilder};

const RETURN_URI: &str = "sip:return@198.51.100.20:5080";
const FALLBACK_URI: &str = "sip:queue@198.51.100.20:5080";

fn loop_config(on_failure: OnFailure, fallback: bool, from: &[LocatorSource]) -> B2buaConfig {
    let mut cfg = config(10);
    cfg.carry_headers = vec!["X-Call-Ref".into(), "X-Agent".into(), "X-Locator".into()];
    let inline = cfg.routes.remove(0);
    cfg.routes = vec![
        Route {
            name: "loop".into(),
            user: Some("pay".into()),
            target_uri: RETURN_URI.into(),
            mode: RouteMode::Loop,
            loop_route: Some(LoopRoute {
                locator_from: from.to_vec(),
                locator_header: "X-Locator".into(),
                agent_header: "X-Agent".into(),
                locator_timeout_ms: 15_000,
                on_failure,
                fallback: fallback.then(|| (FALLBACK_URI.to_owned(), addr(CC))),
                announce_ms: 3000,
            }),
            ..inline.clone()
        },
        inline,
    ];
    cfg
}

const ALL: [LocatorSource; 3] = [
    LocatorSource::Ruri,
    LocatorSource::Header,
    LocatorSource::Dtmf,
];

fn loop_wire(on_failure: OnFailure, fallback: bool) -> Wire {
    Wire::with(loop_config(on_failure, fallback, &ALL))
}

/// The contact centre's transfer to the loop number `user` (Request-URI and To).
fn loop_invite(user: &str, body: Option<&str>, extra: &str) -> String {
    trunk_invite("1", body, extra)
        .replacen("INVITE sip:5551234@", &format!("INVITE sip:{user}@"), 1)
        .replacen("To: <sip:5551234@", &format!("To: <sip:{user}@"), 1)
}

fn call_of(w: &Wire) -> CallId {
    w.events
        .iter()
        .find_map(|e| match e {
            Output::Event {
                call,
                event: CallEvent::Started { .. },
            } => Some(*call),
            _ => None,
        })
        .expect("call started")
}

fn locates(w: &Wire) -> Vec<Option<String>> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Output::Locate { locator, .. } => Some(locator.clone()),
            _ => None,
        })
        .collect()
}

fn has_event(w: &Wire, ev: &CallEvent) -> bool {
    w.events
        .iter()
        .any(|e| matches!(e, Output::Event { event, .. } if event == ev))
}

fn found(w: &mut Wire, agent: &str, locator: &str) {
    let call = call_of(w);
    w.input(Input::Located {
        call,
        outcome: LocateOutcome::Found {
            agent: agent.into(),
            locator: locator.into(),
        },
    });
}

fn not_found(w: &mut Wire) {
    let call = call_of(w);
    w.input(Input::Located {
        call,
        outcome: LocateOutcome::NotFound,
    });
}

fn header(m: &Message, name: &str) -> Vec<String> {
    m.get_all(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn method(m: &Message) -> String {
    m.method()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default()
}

fn last_media(
    w: &Wire,
) -> (
    tonewall::sip::b2bua::LegMedia,
    tonewall::sip::b2bua::LegMedia,
) {
    w.events
        .iter()
        .rev()
        .find_map(|e| match e {
            Output::Media { a, b, .. } => Some((*a, *b)),
            _ => None,
        })
        .expect("media configured")
}

/// DTMF mode up to the caller's ACK of our own 200: returns the trunk's peer and our 200.
fn dtmf_answered(w: &mut Wire, offer: Option<&str>) -> (Peer, Message) {
    w.deliver(TRUNK, &loop_invite("pay", offer, ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let ok = w.next_to_trunk();
    assert_eq!(ok.status(), Some(200));
    assert!(
        w.cc.is_empty(),
        "nothing to the contact centre while locating"
    );
    assert_eq!(locates(w), vec![None]);
    let mut trunk = trunk_peer(&ok);
    let answer = offer
        .is_none()
        .then(|| sdp("192.0.2.10", 40000, "8 101", "sendrecv"));
    w.deliver(TRUNK, &trunk.request("ACK", answer.as_deref(), ""));
    assert!(w.trunk.is_empty() && w.cc.is_empty());
    (trunk, ok)
}

#[test]
fn request_uri_locator_found_bridges_and_bye_from_return_leg_ends_both() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0 8 101", "sendrecv");
    w.deliver(TRUNK, &loop_invite("pay*1234", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    assert!(w.trunk.is_empty(), "not answered while locating");
    assert!(
        w.cc.is_empty(),
        "no return call before the locator resolves"
    );
    assert_eq!(locates(&w), vec![Some("1234".to_owned())]);

    found(&mut w, "agent-7", "1234");
    assert!(has_event(
        &w,
        &CallEvent::Located {
            agent: "agent-7".into()
        }
    ));
    let inv = w.next_to_cc();
    let t = text(&inv);
    assert!(
        t.starts_with(&format!("INVITE {RETURN_URI} SIP/2.0\r\n")),
        "{t}"
    );
    assert_eq!(header(&inv, "X-Agent"), vec!["agent-7"]);
    assert_eq!(header(&inv, "X-Locator"), vec!["1234"]);
    assert_eq!(header(&inv, "X-Call-Ref"), vec!["ref-77"]);
    assert!(
        !t.contains("pay*1234"),
        "the loop number does not cross:\n{t}"
    );
    assert_relay_sdp(&inv, 30002);

    let mut cc = cc_peer(&inv);
    w.deliver(CC, &cc_answer(&inv, 180, "Ringing", None));
    assert_eq!(w.next_to_trunk().status(), Some(180));
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.next_to_trunk();
    assert_eq!(ok.status(), Some(200));
    assert_relay_sdp(&ok, 30000);
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    assert_eq!(method(&w.next_to_cc()), "ACK");
    let (a, b) = last_media(&w);
    assert_eq!(a.remote, Some(addr("192.0.2.10:40000")));
    assert_eq!(b.remote, Some(addr("198.51.100.20:50000")));
    assert!(has_event(&w, &CallEvent::Answered { agent: None }));

    w.deliver(CC, &cc.request("BYE", None, ""));
    assert_eq!(w.next_to_cc().status(), Some(200));
    let bye = w.next_to_trunk();
    assert_eq!(method(&bye), "BYE");
    assert_eq!(bye.to_tag(), Some("t1"));
    w.deliver(
        TRUNK,
        &text(&ResponseBuilder::new(&bye, 200, "OK").build().unwrap()),
    );
    assert_eq!(w.ended(), vec![EndCause::ByeFromB]);
    assert!(w.pool.live.is_empty(), "ports released");
    assert_eq!(w.core.active_calls(), 0);
    let _ = trunk.request("BYE", None, "");
}

#[test]
fn header_locator_and_spoofed_agent_header_does_not_cross() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(
        TRUNK,
        &loop_invite("pay", Some(&offer), "X-Locator: 5678\r\nX-Agent: evil\r\n"),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    assert_eq!(locates(&w), vec![Some("5678".to_owned())]);
    found(&mut w, "agent-2", "5678");
    let inv = w.next_to_cc();
    assert_eq!(header(&inv, "X-Agent"), vec!["agent-2"]);
    assert_eq!(header(&inv, "X-Locator"), vec!["5678"]);

    // Return leg busy, no fallback: the failure goes back to the caller's leg as inline does.
    w.deliver(CC, &cc_answer(&inv, 486, "Busy Here", None));
    assert_eq!(method(&w.next_to_cc()), "ACK");
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(486));
    assert_eq!(w.ended(), vec![EndCause::Rejected(486)]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn dtmf_mode_answers_the_caller_then_bridges_the_return_leg() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "18 0 8 101", "sendrecv");
    let (mut trunk, ok) = dtmf_answered(&mut w, Some(&offer));
    let body = String::from_utf8_lossy(ok.body()).into_owned();
    assert!(body.contains("c=IN IP4 10.0.0.1"), "{body}");
    assert!(body.contains("m=audio 30000 RTP/AVP 0 101\r\n"), "{body}");
    assert!(text(&ok).contains("Contact: <sip:10.0.0.1:5060>"));
    let (a, b) = last_media(&w);
    assert_eq!(a.local.rtp, 30000);
    assert_eq!(a.remote, Some(addr("192.0.2.10:40000")));
    assert_eq!(
        (a.codecs.pcmu, a.codecs.telephone_event),
        (Some(0), Some(101))
    );
    assert_eq!((b.local.rtp, b.remote), (30002, None));

    // A digit INFO while locating goes to the shell (the locator collector), not anywhere else.
    let info = trunk.request("INFO", None, "").replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal=4\r\nDuration=160\r\n",
    );
    w.deliver(TRUNK, &info);
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert!(w.events.iter().any(
        |e| matches!(e, Output::Digit { digit, .. } if *digit == Digit::from_char('4').unwrap())
    ));
    assert!(w.cc.is_empty());

    found(&mut w, "agent-9", "4321");
    let inv = w.next_to_cc();
    assert_eq!(header(&inv, "X-Agent"), vec!["agent-9"]);
    assert_eq!(header(&inv, "X-Locator"), vec!["4321"]);
    let offer_b = String::from_utf8_lossy(inv.body()).into_owned();
    assert!(
        offer_b.contains("m=audio 30002 RTP/AVP 0 101\r\n"),
        "{offer_b}"
    );
    assert!(offer_b.contains("a=rtpmap:101 telephone-event/8000"));
    let mut cc = cc_peer(&inv);
    w.deliver(CC, &cc_answer(&inv, 180, "Ringing", None));
    assert!(w.trunk.is_empty(), "the caller is already answered");
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ack = w.next_to_cc();
    assert_eq!(method(&ack), "ACK");
    assert_eq!(ack.cseq().unwrap().seq, inv.cseq().unwrap().seq);
    assert_eq!(ack.to_tag(), Some("cc-dialog-tag"));
    assert!(w.trunk.is_empty());
    let (a, b) = last_media(&w);
    assert_eq!(
        (a.local.rtp, a.remote),
        (30000, Some(addr("192.0.2.10:40000")))
    );
    assert_eq!(
        (b.local.rtp, b.remote),
        (30002, Some(addr("198.51.100.20:50000")))
    );
    assert!(has_event(&w, &CallEvent::Answered { agent: None }));

    // The return leg re-INVITEs: relayed into the dialog we answered ourselves.
    let re_offer = sdp("198.51.100.20", 50004, "0 101", "sendrecv");
    w.deliver(
        CC,
        &cc.request(
            "INVITE",
            Some(&re_offer),
            "Contact: <sip:agent@198.51.100.20:5080>\r\n",
        ),
    );
    assert_eq!(w.next_to_cc().status(), Some(100));
    let re = w.next_to_trunk();
    assert_eq!(method(&re), "INVITE");
    assert_eq!(re.call_id(), Some("trunk-call-1@192.0.2.10"));
    assert_eq!(re.to_tag(), Some("t1"));
    assert_eq!(re.from_tag(), ok.to_tag());
    assert_eq!(re.request_uri_str(), Some("sip:trunk@192.0.2.10:5060"));
    assert!(text(&re).contains("Route: <sip:rr.trunk.example;lr>"));
    assert_eq!(
        re.cseq().unwrap().seq,
        1,
        "our first request in the A dialog"
    );
    assert_relay_sdp(&re, 30000);
    let re_body = String::from_utf8_lossy(re.body()).into_owned();
    let our_o = body.lines().find(|l| l.starts_with("o=")).unwrap();
    let new_o = re_body.lines().find(|l| l.starts_with("o=")).unwrap();
    let f = |l: &str| l.split(' ').map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(
        f(our_o)[1],
        f(new_o)[1],
        "one SDP session towards the caller"
    );
    assert_ne!(f(our_o)[2], f(new_o)[2], "its version steps");
    let ans = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let ok_a = ResponseBuilder::new(&re, 200, "OK")
        .header("Contact", "<sip:trunk@192.0.2.10:5060>")
        .body("application/sdp", ans)
        .build()
        .unwrap();
    w.deliver(TRUNK, &text(&ok_a));
    let ok_b = w.next_to_cc();
    assert_eq!(ok_b.status(), Some(200));
    assert_relay_sdp(&ok_b, 30002);
    w.deliver(CC, &cc.request("ACK", None, ""));
    let a_ack = w.next_to_trunk();
    assert_eq!(method(&a_ack), "ACK");
    assert_eq!(a_ack.cseq().unwrap().seq, 1);
    assert_eq!(last_media(&w).1.remote, Some(addr("198.51.100.20:50004")));

    // The caller hangs up.
    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    let r = w.next_to_trunk();
    assert_eq!((r.status(), r.cseq().unwrap().method), (Some(200), "BYE"));
    let bye = w.next_to_cc();
    assert_eq!(method(&bye), "BYE");
    assert_eq!(bye.call_id(), inv.call_id());
    assert!(text(&bye).contains("Route: <sip:rr.cc.example;lr>"));
    assert_eq!(w.ended(), vec![EndCause::ByeFromA]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn dtmf_mode_late_offer_takes_the_answer_from_the_ack() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let (_trunk, ok) = dtmf_answered(&mut w, None);
    let body = String::from_utf8_lossy(ok.body()).into_owned();
    assert!(body.contains("m=audio 30000 RTP/AVP 0 8 101\r\n"), "{body}");
    let (a, _) = last_media(&w);
    assert_eq!(a.remote, Some(addr("192.0.2.10:40000")));
    assert_eq!(a.codecs.pcma, Some(8));
    found(&mut w, "agent-1", "77");
    let inv = w.next_to_cc();
    // The law the caller chose in its ACK is the one offered to the return leg.
    assert!(String::from_utf8_lossy(inv.body()).contains("m=audio 30002 RTP/AVP 8 101\r\n"));
}

#[test]
fn reinvite_from_caller_while_locating_is_answered_locally() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let (mut trunk, _ok) = dtmf_answered(&mut w, Some(&offer));
    let moved = sdp("192.0.2.10", 40008, "0 101", "sendrecv");
    w.deliver(
        TRUNK,
        &trunk.request(
            "INVITE",
            Some(&moved),
            "Contact: <sip:trunk@192.0.2.10:5060>\r\n",
        ),
    );
    let r = w.trunk_final_or_prov();
    assert_eq!(r.status(), Some(200));
    assert_eq!(r.cseq().unwrap().seq, 2);
    assert_relay_sdp(&r, 30000);
    assert!(w.cc.is_empty());
    assert_eq!(last_media(&w).0.remote, Some(addr("192.0.2.10:40008")));
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    assert!(w.trunk.is_empty() && w.cc.is_empty());
    // Retransmission stopped with the ACK.
    w.advance(5_000);
    assert!(w.trunk.is_empty());
}

#[test]
fn not_found_in_dtmf_mode_announces_then_byes_with_reason() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    dtmf_answered(&mut w, Some(&offer));
    not_found(&mut w);
    assert!(has_event(&w, &CallEvent::LocateFailed));
    assert!(
        w.events
            .iter()
            .any(|e| matches!(e, Output::Announce { .. }))
    );
    w.advance(2_999);
    assert!(w.trunk.is_empty(), "the tone plays for announce_ms");
    w.advance(1);
    let bye = w.next_to_trunk();
    assert_eq!(method(&bye), "BYE");
    assert!(
        header(&bye, "Reason")[0].starts_with("SIP;cause=404"),
        "{}",
        text(&bye)
    );
    assert!(w.cc.is_empty(), "never a half-bridged call");
    assert_eq!(w.ended(), vec![EndCause::NotLocated]);
    assert!(w.pool.live.is_empty());
}

/// A source locked out for guessing locators gets 403 and never the fallback: guessing must
/// lead nowhere, not to a queue that then sees the guesser as a caller.
#[test]
fn a_source_locked_out_for_guessing_gets_403_and_no_fallback() {
    let mut w = loop_wire(OnFailure::Fallback, true);
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(TRUNK, &loop_invite("pay*1234", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let source = w.events.iter().find_map(|e| match e {
        Output::Locate { source, .. } => Some(*source),
        _ => None,
    });
    assert_eq!(source, Some(addr(TRUNK).ip()), "the shell is told who asks");
    let call = call_of(&w);
    w.input(Input::Located {
        call,
        outcome: LocateOutcome::Refused,
    });
    assert_eq!(w.next_to_trunk().status(), Some(403));
    assert!(w.cc.is_empty(), "no fallback call");
    assert!(!has_event(&w, &CallEvent::Fallback));
    assert!(w.pool.live.is_empty());
}

#[test]
fn not_found_with_fallback_calls_the_fallback() {
    let mut w = loop_wire(OnFailure::Fallback, true);
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(TRUNK, &loop_invite("pay*1234", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    not_found(&mut w);
    assert!(has_event(&w, &CallEvent::LocateFailed));
    assert!(has_event(&w, &CallEvent::Fallback));
    let inv = w.next_to_cc();
    assert!(text(&inv).starts_with(&format!("INVITE {FALLBACK_URI} SIP/2.0\r\n")));
    assert!(header(&inv, "X-Agent").is_empty(), "no agent was found");
    assert_relay_sdp(&inv, 30002);
    let answer = sdp("198.51.100.20", 50000, "0", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.next_to_trunk();
    assert_eq!(ok.status(), Some(200));
    assert_relay_sdp(&ok, 30000);
}

#[test]
fn busy_return_leg_goes_to_the_fallback_and_keeps_the_caller() {
    let mut w = loop_wire(OnFailure::Announce, true);
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(TRUNK, &loop_invite("pay*1234", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    found(&mut w, "agent-7", "1234");
    let inv = w.next_to_cc();
    w.deliver(CC, &cc_answer(&inv, 180, "Ringing", None));
    assert_eq!(w.next_to_trunk().status(), Some(180));
    w.deliver(CC, &cc_answer(&inv, 486, "Busy Here", None));
    assert_eq!(method(&w.next_to_cc()), "ACK");
    let fb = w.next_to_cc();
    assert!(text(&fb).starts_with(&format!("INVITE {FALLBACK_URI} SIP/2.0\r\n")));
    assert_ne!(fb.call_id(), inv.call_id(), "a new dialog");
    assert_eq!(fb.to_tag(), None);
    assert_eq!(header(&fb, "X-Agent"), vec!["agent-7"]);
    assert_relay_sdp(&fb, 30002);
    assert!(
        w.trunk.is_empty(),
        "the caller is not told about the busy return leg"
    );
    assert!(has_event(&w, &CallEvent::Fallback));
    assert!(w.ended().is_empty());
    // The fallback answers: the caller's INVITE gets its 200.
    let answer = sdp("198.51.100.20", 50010, "0", "sendrecv");
    w.deliver(CC, &cc_answer(&fb, 200, "OK", Some(&answer)));
    let ok = w.next_to_trunk();
    assert_eq!(ok.status(), Some(200));
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    let ack = w.next_to_cc();
    assert_eq!(
        (method(&ack), ack.call_id()),
        ("ACK".to_owned(), fb.call_id())
    );
    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    let bye = w.next_to_cc();
    assert_eq!(
        (method(&bye), bye.call_id()),
        ("BYE".to_owned(), fb.call_id())
    );
    assert!(w.pool.live.is_empty());
}

#[test]
fn busy_return_leg_in_dtmf_mode_with_fallback_reoffers_to_the_fallback() {
    let mut w = loop_wire(OnFailure::Announce, true);
    let offer = sdp("192.0.2.10", 40000, "8 101", "sendrecv");
    dtmf_answered(&mut w, Some(&offer));
    found(&mut w, "agent-7", "1234");
    let inv = w.next_to_cc();
    w.deliver(CC, &cc_answer(&inv, 486, "Busy Here", None));
    assert_eq!(method(&w.next_to_cc()), "ACK");
    let fb = w.next_to_cc();
    assert!(text(&fb).starts_with(&format!("INVITE {FALLBACK_URI} SIP/2.0\r\n")));
    assert!(String::from_utf8_lossy(fb.body()).contains("m=audio 30002 RTP/AVP 8 101\r\n"));
    assert!(w.trunk.is_empty());
    // The fallback fails too: only one fallback, then the caller is released with a reason.
    w.deliver(CC, &cc_answer(&fb, 480, "Temporarily Unavailable", None));
    assert_eq!(method(&w.next_to_cc()), "ACK");
    assert!(w.cc.is_empty());
    let bye = w.next_to_trunk();
    assert_eq!(method(&bye), "BYE");
    assert!(header(&bye, "Reason")[0].starts_with("SIP;cause=480"));
    assert!(w.pool.live.is_empty());
}

#[test]
fn busy_return_leg_in_dtmf_mode_without_fallback_byes_the_caller_with_reason() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    dtmf_answered(&mut w, Some(&offer));
    found(&mut w, "agent-7", "1234");
    let inv = w.next_to_cc();
    w.deliver(CC, &cc_answer(&inv, 486, "Busy Here", None));
    assert_eq!(method(&w.next_to_cc()), "ACK");
    assert!(w.cc.is_empty());
    let bye = w.next_to_trunk();
    assert_eq!(method(&bye), "BYE");
    assert_eq!(
        header(&bye, "Reason"),
        vec!["SIP;cause=486;text=\"return leg failed\""]
    );
    assert_eq!(w.ended(), vec![EndCause::Rejected(486)]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn silent_return_leg_times_out_into_the_fallback() {
    let mut w = loop_wire(OnFailure::Announce, true);
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    dtmf_answered(&mut w, Some(&offer));
    found(&mut w, "agent-7", "1234");
    let inv = w.next_to_cc();
    w.advance(32_000);
    let sent: Vec<Message> = w.cc.drain(..).collect();
    assert!(sent.iter().filter(|m| m.call_id() == inv.call_id()).count() >= 6);
    let fb = sent
        .iter()
        .find(|m| m.call_id() != inv.call_id())
        .expect("fallback INVITE");
    assert!(text(fb).starts_with(&format!("INVITE {FALLBACK_URI} SIP/2.0\r\n")));
    assert!(w.trunk.is_empty(), "the caller stays");
}

#[test]
fn locator_timeout_takes_the_not_found_path() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(TRUNK, &loop_invite("pay-1234", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    assert_eq!(locates(&w), vec![Some("1234".to_owned())]);
    w.advance(14_999);
    assert!(w.trunk.is_empty());
    w.advance(1);
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(404));
    assert_eq!(r.reason_phrase(), Some(&b"Locator Not Found"[..]));
    assert!(has_event(&w, &CallEvent::LocateFailed));
    assert_eq!(w.ended(), vec![EndCause::NotLocated]);
    assert!(w.pool.live.is_empty());
    // A late answer from the resolver changes nothing.
    found(&mut w, "agent-7", "1234");
    assert!(w.cc.is_empty() && w.trunk.is_empty());
}

#[test]
fn bye_from_caller_while_locating_never_calls_the_return_number() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let (mut trunk, _) = dtmf_answered(&mut w, Some(&offer));
    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert_eq!(w.ended(), vec![EndCause::ByeFromA]);
    assert!(w.pool.live.is_empty(), "ports freed");
    assert!(
        w.events
            .iter()
            .any(|e| matches!(e, Output::MediaStopped { .. }))
    );
    found(&mut w, "agent-7", "1234");
    w.advance(20_000);
    assert!(w.cc.is_empty(), "no return call, ever");
}

#[test]
fn cancel_while_locating_gets_487() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let invite = loop_invite("pay*1234", None, "");
    w.deliver(TRUNK, &invite);
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let cancel = invite
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    w.deliver(TRUNK, &cancel);
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert_eq!(w.next_to_trunk().status(), Some(487));
    assert_eq!(w.ended(), vec![EndCause::Cancelled]);
    found(&mut w, "agent-7", "1234");
    assert!(w.cc.is_empty());
    assert!(w.pool.live.is_empty());
}

#[test]
fn loop_user_suffixes_match_and_other_users_fall_through() {
    // pay-42 takes the loop route with locator 42.
    let mut w = loop_wire(OnFailure::Announce, false);
    w.deliver(TRUNK, &loop_invite("pay-42", None, ""));
    assert_eq!(locates(&w), vec![Some("42".to_owned())]);
    // "payroll" is not the loop number: the inline route behind it relays at once.
    let mut w = loop_wire(OnFailure::Announce, false);
    w.deliver(TRUNK, &loop_invite("payroll", None, ""));
    assert!(locates(&w).is_empty());
    let inv = w.next_to_cc();
    assert!(text(&inv).starts_with("INVITE sip:agents@198.51.100.20:5080 SIP/2.0\r\n"));
}

#[test]
fn no_locator_and_no_dtmf_source_is_refused_at_once() {
    let cfg = loop_config(OnFailure::Announce, false, &[LocatorSource::Header]);
    let mut w = Wire::with(cfg);
    w.deliver(TRUNK, &loop_invite("pay", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    assert_eq!(w.next_to_trunk().status(), Some(404));
    assert!(locates(&w).is_empty());
    assert!(w.pool.live.is_empty());
}

#[test]
fn route_config_errors() {
    let rc = RouteConfig {
        mode: RouteMode::Loop,
        on_failure: OnFailure::Fallback,
        ..RouteConfig::default()
    };
    let e = rc.route().unwrap_err().to_string();
    assert!(e.contains("fallback"), "{e}");
    let rc = RouteConfig {
        mode: RouteMode::Loop,
        fallback: Some("sip:queue@cc.example.com".into()),
        ..RouteConfig::default()
    };
    let e = rc.route().unwrap_err().to_string();
    assert!(e.contains("sip:queue@cc.example.com"), "{e}");
    let rc = RouteConfig {
        mode: RouteMode::Loop,
        fallback: Some("sip:queue@192.0.2.50".into()),
        ..RouteConfig::default()
    };
    let r = rc.route().unwrap();
    let lr = r.loop_route.unwrap();
    assert_eq!(lr.fallback.unwrap().1, addr("192.0.2.50:5060"));
    assert_eq!(lr.locator_timeout_ms, 15_000);
    assert_eq!(r.mode, RouteMode::Loop);
}

#[test]
fn caller_leaving_while_the_return_leg_rings_cancels_it() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let (mut trunk, _) = dtmf_answered(&mut w, Some(&offer));
    found(&mut w, "agent-7", "1234");
    let inv = w.next_to_cc();
    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert!(
        w.cc.is_empty(),
        "no CANCEL before a provisional (RFC 3261 §9.1)"
    );
    assert_eq!(w.ended(), vec![EndCause::ByeFromA]);
    assert!(w.pool.live.is_empty());
    w.deliver(CC, &cc_answer(&inv, 180, "Ringing", None));
    let cancel = w.next_to_cc();
    assert_eq!(method(&cancel), "CANCEL");
    assert_eq!(
        cancel.top_via().unwrap().branch(),
        inv.top_via().unwrap().branch()
    );
    // The return leg answered anyway (200 crossing the CANCEL): ACK and BYE it.
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    assert_eq!(method(&w.next_to_cc()), "ACK");
    assert_eq!(method(&w.next_to_cc()), "BYE");
    assert!(w.trunk.is_empty());
    assert!(!has_event(&w, &CallEvent::Answered { agent: None }));
}

#[test]
fn hangup_while_locating_refuses_the_open_invite() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(TRUNK, &loop_invite("pay*1234", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let call = call_of(&w);
    w.input(Input::Hangup { call });
    assert_eq!(w.next_to_trunk().status(), Some(480));
    assert_eq!(w.ended(), vec![EndCause::Hangup]);
    assert!(w.pool.live.is_empty());
    assert!(w.cc.is_empty());
}

#[test]
fn media_timeout_while_locating_in_dtmf_mode_byes_the_caller() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    dtmf_answered(&mut w, Some(&offer));
    let call = call_of(&w);
    w.input(Input::MediaTimeout { call });
    let bye = w.next_to_trunk();
    assert_eq!(method(&bye), "BYE");
    assert!(header(&bye, "Reason")[0].starts_with("SIP;cause=408"));
    assert!(w.cc.is_empty());
    assert_eq!(w.ended(), vec![EndCause::MediaTimeout]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn our_own_200_is_resent_until_the_ack_and_a_missing_ack_ends_the_call() {
    let mut cfg = loop_config(OnFailure::Announce, false, &ALL);
    // Locating outlasts 64·T1 here, so the missing ACK is what ends the call.
    cfg.routes[0]
        .loop_route
        .as_mut()
        .unwrap()
        .locator_timeout_ms = 60_000;
    let mut w = Wire::with(cfg);
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    let invite = loop_invite("pay", Some(&offer), "");
    w.deliver(TRUNK, &invite);
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let ok = w.next_to_trunk();
    assert_eq!(ok.status(), Some(200));
    // A retransmitted INVITE gets the same 2xx (§13.3.1.4).
    w.deliver(TRUNK, &invite);
    assert_eq!(w.next_to_trunk(), ok);
    w.advance(10_000);
    assert_eq!(w.trunk.len(), 4, "0.5, 1.5, 3.5, 7.5 s");
    assert!(w.trunk.iter().all(|m| m == &ok));
    w.trunk.clear();
    w.advance(23_000);
    assert!(
        w.trunk.iter().any(|m| method(m) == "BYE"),
        "no ACK within 64·T1: the dialog is over"
    );
    assert!(w.cc.is_empty());
    assert_eq!(w.ended(), vec![EndCause::Timeout(Side::Trunk)]);
    assert!(w.pool.live.is_empty());
}

fn o_fields(m: &Message) -> Vec<String> {
    let body = String::from_utf8_lossy(m.body()).into_owned();
    let line = body
        .lines()
        .find(|l| l.starts_with("o="))
        .unwrap()
        .to_owned();
    line.split(' ').map(str::to_owned).collect()
}

#[test]
fn bridged_dtmf_call_relays_caller_reinvite_and_return_leg_bye() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let (mut trunk, _ok) = dtmf_answered(&mut w, Some(&offer));
    found(&mut w, "agent-3", "555");
    let inv = w.next_to_cc();
    let mut cc = cc_peer(&inv);
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    assert_eq!(method(&w.next_to_cc()), "ACK");

    // The caller holds: relayed into the return dialog, as one SDP session towards it.
    let hold = sdp("192.0.2.10", 40000, "0 101", "sendonly");
    w.deliver(
        TRUNK,
        &trunk.request(
            "INVITE",
            Some(&hold),
            "Contact: <sip:trunk@192.0.2.10:5060>\r\n",
        ),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let re = w.next_to_cc();
    assert_eq!(method(&re), "INVITE");
    assert_eq!(re.call_id(), inv.call_id());
    assert_eq!(re.to_tag(), Some("cc-dialog-tag"));
    assert_eq!(re.request_uri_str(), Some("sip:agent@198.51.100.20:5080"));
    assert!(text(&re).contains("Route: <sip:rr.cc.example;lr>"));
    assert_eq!(re.cseq().unwrap().seq, inv.cseq().unwrap().seq + 1);
    assert_relay_sdp(&re, 30002);
    assert!(String::from_utf8_lossy(re.body()).contains("a=sendonly"));
    let (o_inv, o_re) = (o_fields(&inv), o_fields(&re));
    assert_eq!(o_inv[1], o_re[1], "same session as our offer");
    assert_eq!(
        o_re[2].parse::<u64>().unwrap(),
        o_inv[2].parse::<u64>().unwrap() + 1
    );
    let held = sdp("198.51.100.20", 50000, "0 101", "recvonly");
    w.deliver(CC, &cc_answer(&re, 200, "OK", Some(&held)));
    let ok = w.trunk_final_or_prov();
    assert_eq!((ok.status(), ok.cseq().unwrap().seq), (Some(200), 2));
    assert_relay_sdp(&ok, 30000);
    assert!(String::from_utf8_lossy(ok.body()).contains("a=recvonly"));
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    let ack = w.next_to_cc();
    assert_eq!(
        (method(&ack), ack.cseq().unwrap().seq),
        ("ACK".to_owned(), re.cseq().unwrap().seq)
    );

    // A non-digit INFO from the caller now crosses.
    let note = trunk.request("INFO", None, "").replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Type: application/x-note\r\nContent-Length: 2\r\n\r\nhi",
    );
    w.deliver(TRUNK, &note);
    let info = w.next_to_cc();
    assert_eq!(
        (method(&info), info.body()),
        ("INFO".to_owned(), &b"hi"[..])
    );
    w.deliver(CC, &cc_answer(&info, 200, "OK", None));
    assert_eq!(w.next_to_trunk().status(), Some(200));

    // The agent hangs up.
    w.deliver(CC, &cc.request("BYE", None, ""));
    assert_eq!(w.next_to_cc().status(), Some(200));
    let bye = w.next_to_trunk();
    assert_eq!(method(&bye), "BYE");
    assert_eq!(bye.call_id(), Some("trunk-call-1@192.0.2.10"));
    assert_eq!(bye.to_tag(), Some("t1"));
    assert_eq!(
        bye.cseq().unwrap().seq,
        1,
        "our first request towards the caller"
    );
    assert_eq!(w.ended(), vec![EndCause::ByeFromB]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn return_offer_keeps_the_callers_payload_type_numbers() {
    let mut w = loop_wire(OnFailure::Announce, false);
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n";
    let (_trunk, ok) = dtmf_answered(&mut w, Some(offer));
    assert!(String::from_utf8_lossy(ok.body()).contains("m=audio 30000 RTP/AVP 8 96\r\n"));
    found(&mut w, "agent-4", "12");
    let inv = w.next_to_cc();
    let body = String::from_utf8_lossy(inv.body()).into_owned();
    assert!(body.contains("m=audio 30002 RTP/AVP 8 96\r\n"), "{body}");
    assert!(body.contains("a=rtpmap:96 telephone-event/8000"), "{body}");
}

#[test]
fn late_offer_return_call_waits_for_the_callers_answer_in_the_ack() {
    let mut w = loop_wire(OnFailure::Announce, false);
    w.deliver(TRUNK, &loop_invite("pay", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let ok = w.next_to_trunk();
    found(&mut w, "agent-5", "31");
    assert!(w.cc.is_empty(), "which law to offer is not known yet");
    let mut trunk = trunk_peer(&ok);
    let answer = sdp("192.0.2.10", 40000, "8 101", "sendrecv");
    w.deliver(TRUNK, &trunk.request("ACK", Some(&answer), ""));
    let inv = w.next_to_cc();
    assert!(String::from_utf8_lossy(inv.body()).contains("m=audio 30002 RTP/AVP 8 101\r\n"));
    assert_eq!(header(&inv, "X-Agent"), vec!["agent-5"]);
}
