//! B2BUA over an in-memory wire on a virtual clock: a scripted trunk UAC and contact-centre UAS
//! exchange bytes with the core. Every message crossing the wire is checked for header leaks
//! (nothing of the trunk's routing reaches the contact centre and vice versa).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod sipwire;

use sipwire::*;
use tonewall::digit::Digit;
use tonewall::rtp::srtp::SrtpPolicy;
use tonewall::sip::b2bua::{CallEvent, EndCause, Input, Leg, Output, Refusal, Side};
use tonewall::sip::message::ResponseBuilder;

#[test]
fn basic_call_bye_from_trunk() {
    let mut w = Wire::new();
    let offer = sdp("192.0.2.10", 40000, "0 8 18 101", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("1", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    let t = text(&inv);
    // Identities and configured headers cross; routing, Supported: 100rel and G.729 do not.
    assert!(t.starts_with("INVITE sip:agents@198.51.100.20:5080 SIP/2.0\r\n"));
    assert!(t.contains("sip:4155550100@10.0.0.1:5060"), "{t}");
    assert!(t.contains("To: <sip:5551234@198.51.100.20:5080>"), "{t}");
    assert!(t.contains("P-Asserted-Identity: <sip:+14155550100@pai.example>"));
    assert!(t.contains("X-Call-Ref: ref-77"));
    assert!(t.contains("Max-Forwards: 69"), "{t}");
    assert!(!t.contains("100rel"));
    assert!(!t.contains("G729"));
    assert_eq!(inv.vias().unwrap().len(), 1);
    assert_relay_sdp(&inv, 30002);

    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.call_id(), Some("trunk-call-1@192.0.2.10"));
    assert_eq!(ok.from_tag(), Some("t1"));
    assert!(ok.to_tag().is_some());
    assert_relay_sdp(&ok, 30000);
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "ACK");

    let media = w
        .events
        .iter()
        .find_map(|e| match e {
            Output::Media { a, b, .. } => Some((*a, *b)),
            _ => None,
        })
        .expect("media configured");
    assert_eq!(media.0.remote, Some(addr("192.0.2.10:40000")));
    assert_eq!(media.1.remote, Some(addr("198.51.100.20:50000")));
    assert_eq!(media.0.local.rtp, 30000);
    assert_eq!(media.1.local.rtp, 30002);
    assert!(w.events.iter().any(|e| matches!(
        e,
        Output::Event {
            event: CallEvent::Answered { agent: None },
            ..
        }
    )));

    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    let bye = w.next_to_cc();
    assert_eq!(bye.method().unwrap().as_str(), "BYE");
    assert_eq!(bye.call_id(), inv.call_id());
    assert_eq!(bye.to_tag(), Some("cc-dialog-tag"));
    // The CC's Record-Route became the B-leg route set.
    assert!(text(&bye).contains("Route: <sip:rr.cc.example;lr>"));
    assert!(bye.request_uri_str().unwrap().contains("agent@"));
    w.deliver(CC, &cc_answer(&bye, 200, "OK", None));
    assert_eq!(w.ended(), vec![EndCause::ByeFromA]);
    assert!(w.pool.live.is_empty(), "ports released");
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn bye_from_contact_centre() {
    let mut w = Wire::new();
    let (_trunk, mut cc) = answered_call(&mut w);
    w.deliver(CC, &cc.request("BYE", None, "Reason: Q.850;cause=16\r\n"));
    assert_eq!(w.next_to_cc().status(), Some(200));
    let bye = w.next_to_trunk();
    assert_eq!(bye.method().unwrap().as_str(), "BYE");
    assert_eq!(bye.call_id(), Some("trunk-call-1@192.0.2.10"));
    assert_eq!(bye.to_tag(), Some("t1"));
    assert_eq!(bye.request_uri_str(), Some("sip:trunk@192.0.2.10:5060"));
    assert!(text(&bye).contains("Route: <sip:rr.trunk.example;lr>"));
    assert!(text(&bye).contains("Reason: Q.850;cause=16"));
    assert_eq!(w.ended(), vec![EndCause::ByeFromB]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn late_offer_answer_in_ack() {
    let mut w = Wire::new();
    w.deliver(TRUNK, &trunk_invite("1", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    assert!(inv.body().is_empty(), "late offer stays late");
    let offer = sdp("198.51.100.20", 50000, "0 8 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&offer)));
    let ok = w.trunk_final_or_prov();
    assert_relay_sdp(&ok, 30000);
    let mut trunk = trunk_peer(&ok);
    let answer = sdp("192.0.2.10", 40000, "8", "sendrecv");
    let ack = trunk.request("ACK", Some(&answer), "");
    w.deliver(TRUNK, &ack);
    let b_ack = w.next_to_cc();
    assert_eq!(b_ack.method().unwrap().as_str(), "ACK");
    assert_relay_sdp(&b_ack, 30002);
    assert!(w.events.iter().any(|e| matches!(e, Output::Media { .. })));
}

#[test]
fn cancel_before_answer() {
    let mut w = Wire::new();
    let offer = sdp("192.0.2.10", 40000, "0", "sendrecv");
    let invite = trunk_invite("1", Some(&offer), "");
    w.deliver(TRUNK, &invite);
    w.next_to_trunk();
    let inv = w.next_to_cc();
    w.deliver(CC, &cc_answer(&inv, 180, "Ringing", None));
    assert_eq!(w.next_to_trunk().status(), Some(180));
    let cancel = invite
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let cancel =
        cancel.split("Content-Type").next().unwrap().to_owned() + "Content-Length: 0\r\n\r\n";
    w.deliver(TRUNK, &cancel);
    let r1 = w.next_to_trunk();
    let r2 = w.next_to_trunk();
    assert_eq!(
        (r1.status(), r1.cseq().unwrap().method),
        (Some(200), "CANCEL")
    );
    assert_eq!(
        (r2.status(), r2.cseq().unwrap().method),
        (Some(487), "INVITE")
    );
    let b_cancel = w.next_to_cc();
    assert_eq!(b_cancel.method().unwrap().as_str(), "CANCEL");
    assert_eq!(
        b_cancel.top_via().unwrap().branch(),
        inv.top_via().unwrap().branch()
    );
    assert_eq!(b_cancel.to_tag(), None);
    w.deliver(CC, &cc_answer(&b_cancel, 200, "OK", None));
    w.deliver(CC, &cc_answer(&inv, 487, "Request Terminated", None));
    let ack = w.next_to_cc();
    assert_eq!(ack.method().unwrap().as_str(), "ACK");
    assert_eq!(
        ack.top_via().unwrap().branch(),
        inv.top_via().unwrap().branch()
    );
    assert_eq!(w.ended(), vec![EndCause::Cancelled]);
    assert!(w.pool.live.is_empty());
    assert!(w.trunk.is_empty(), "the CC's 487 is not relayed twice");
}

#[test]
fn cancel_crossing_200_ok_hangs_up_b_leg() {
    let mut w = Wire::new();
    let invite = trunk_invite("1", Some(&sdp("192.0.2.10", 40000, "0", "sendrecv")), "");
    w.deliver(TRUNK, &invite);
    w.next_to_trunk();
    let inv = w.next_to_cc();
    w.deliver(CC, &cc_answer(&inv, 180, "Ringing", None));
    w.next_to_trunk();
    let cancel = invite
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    w.deliver(TRUNK, &cancel);
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert_eq!(w.next_to_trunk().status(), Some(487));
    let b_cancel = w.next_to_cc();
    // The CC had already answered: its 200 crosses our CANCEL.
    let answer = sdp("198.51.100.20", 50000, "0", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    w.deliver(CC, &cc_answer(&b_cancel, 200, "OK", None));
    let ack = w.next_to_cc();
    let bye = w.next_to_cc();
    assert_eq!(ack.method().unwrap().as_str(), "ACK");
    assert_eq!(bye.method().unwrap().as_str(), "BYE");
    assert_eq!(bye.to_tag(), Some("cc-dialog-tag"));
    assert!(w.trunk.is_empty(), "the 200 must not reach the trunk");
    assert!(w.pool.live.is_empty());
}

#[test]
fn reinvite_from_trunk_hold_and_resume() {
    let mut w = Wire::new();
    let (mut trunk, _cc) = answered_call(&mut w);
    let hold = sdp("192.0.2.10", 40000, "0", "sendonly");
    w.deliver(
        TRUNK,
        &trunk.request("INVITE", Some(&hold), "Contact: <sip:trunk@192.0.2.10>\r\n"),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let re = w.next_to_cc();
    assert_eq!(re.method().unwrap().as_str(), "INVITE");
    assert_eq!(re.to_tag(), Some("cc-dialog-tag"));
    assert_relay_sdp(&re, 30002);
    assert!(String::from_utf8_lossy(re.body()).contains("a=sendonly"));
    let ans = sdp("198.51.100.20", 50004, "0", "recvonly");
    w.deliver(CC, &cc_answer(&re, 200, "OK", Some(&ans)));
    let ok = w.trunk_final_or_prov();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.cseq().unwrap().seq, 2);
    assert_relay_sdp(&ok, 30000);
    assert!(String::from_utf8_lossy(ok.body()).contains("a=recvonly"));
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    let b_ack = w.next_to_cc();
    assert_eq!(b_ack.method().unwrap().as_str(), "ACK");
    assert_eq!(b_ack.cseq().unwrap().seq, re.cseq().unwrap().seq);
    // The relay learnt the CC's new port.
    let last = w
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Output::Media { b, .. } => Some(*b),
            _ => None,
        })
        .unwrap();
    assert_eq!(last.remote, Some(addr("198.51.100.20:50004")));
}

#[test]
fn reinvite_from_contact_centre() {
    let mut w = Wire::new();
    let (_trunk, mut cc) = answered_call(&mut w);
    let offer = sdp("198.51.100.20", 50000, "8", "sendrecv");
    w.deliver(
        CC,
        &cc.request(
            "INVITE",
            Some(&offer),
            "Contact: <sip:agent@198.51.100.20:5080>\r\n",
        ),
    );
    assert_eq!(w.next_to_cc().status(), Some(100));
    let re = w.next_to_trunk();
    assert_eq!(re.method().unwrap().as_str(), "INVITE");
    assert_eq!(re.call_id(), Some("trunk-call-1@192.0.2.10"));
    assert_eq!(re.to_tag(), Some("t1"));
    assert_relay_sdp(&re, 30000);
    let ans = sdp("192.0.2.10", 40000, "8", "sendrecv");
    let ok = ResponseBuilder::new(&re, 200, "OK")
        .header("Contact", "<sip:trunk@192.0.2.10:5060>")
        .body("application/sdp", ans)
        .build()
        .unwrap();
    w.deliver(TRUNK, &text(&ok));
    let ok_b = w.next_to_cc();
    assert_eq!(ok_b.status(), Some(200));
    assert_relay_sdp(&ok_b, 30002);
    let ack = cc.request("ACK", None, "");
    w.deliver(CC, &ack);
    let a_ack = w.next_to_trunk();
    assert_eq!(a_ack.method().unwrap().as_str(), "ACK");
    assert_eq!(a_ack.cseq().unwrap().seq, re.cseq().unwrap().seq);
}

#[test]
fn options_answered_locally() {
    let mut w = Wire::new();
    let (mut trunk, _cc) = answered_call(&mut w);
    w.deliver(TRUNK, &trunk.request("OPTIONS", None, ""));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(200));
    assert!(w.cc.is_empty(), "OPTIONS is not relayed");
    // Out of dialog, from the trunk: also 200.
    w.deliver(TRUNK, &probe(0));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(200));
    assert!(text(&r).contains("Allow: INVITE"));
}

#[test]
fn dtmf_info_is_captured_not_forwarded() {
    let mut w = Wire::new();
    let (mut trunk, _cc) = answered_call(&mut w);
    let info = trunk
        .request("INFO", None, "")
        .replace(
            "Content-Length: 0\r\n\r\n",
            "Content-Type: application/dtmf-relay\r\nContent-Length: 24\r\n\r\nSignal=7\r\nDuration=160\r\n",
        );
    w.deliver(TRUNK, &info);
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert!(
        w.cc.is_empty(),
        "a digit INFO must never reach the contact centre"
    );
    let digits: Vec<Digit> = w
        .events
        .iter()
        .filter_map(|e| match e {
            Output::Digit { digit, .. } => Some(*digit),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec![Digit::from_char('7').unwrap()]);
    // The digit is redacted wherever the output is printed.
    let shown = format!("{:?}", Digit::from_char('7').unwrap());
    assert!(!shown.contains('7'));

    // Any other INFO is relayed, and its answer comes back.
    let other = trunk.request("INFO", None, "").replace(
        "Content-Length: 0\r\n\r\n",
        "Content-Type: application/x-note\r\nContent-Length: 2\r\n\r\nhi",
    );
    w.deliver(TRUNK, &other);
    let relayed = w.next_to_cc();
    assert_eq!(relayed.method().unwrap().as_str(), "INFO");
    assert_eq!(relayed.body(), b"hi");
    w.deliver(CC, &cc_answer(&relayed, 200, "OK", None));
    assert_eq!(w.next_to_trunk().status(), Some(200));
}

#[test]
fn unknown_method_mid_call_gets_501_and_call_goes_on() {
    let mut w = Wire::new();
    let (mut trunk, _cc) = answered_call(&mut w);
    w.deliver(TRUNK, &trunk.request("FOO", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(501));
    w.deliver(
        TRUNK,
        &trunk.request("REFER", None, "Refer-To: <sip:x@192.0.2.10>\r\n"),
    );
    assert_eq!(w.next_to_trunk().status(), Some(501));
    assert!(w.cc.is_empty());
    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "BYE");
}

#[test]
fn retransmitted_invite_is_absorbed() {
    let mut w = Wire::new();
    let invite = trunk_invite("1", Some(&sdp("192.0.2.10", 40000, "0", "sendrecv")), "");
    w.deliver(TRUNK, &invite);
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    w.deliver(CC, &cc_answer(&inv, 180, "Ringing", None));
    assert_eq!(w.next_to_trunk().status(), Some(180));
    w.deliver(TRUNK, &invite);
    // The server transaction resends its last response; nothing new reaches the CC.
    assert_eq!(w.next_to_trunk().status(), Some(180));
    assert!(w.cc.is_empty());
    assert_eq!(w.core.active_calls(), 1);
    assert_eq!(w.pool.live.len(), 2);
}

#[test]
fn timer_b_towards_silent_contact_centre_gives_408() {
    let mut w = Wire::new();
    w.deliver(
        TRUNK,
        &trunk_invite("1", Some(&sdp("192.0.2.10", 40000, "0", "sendrecv")), ""),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    w.advance(31_000);
    // Timer A retransmitted the INVITE (0.5, 1.5, 3.5, 7.5, 15.5 s).
    assert_eq!(w.cc.len(), 6);
    assert!(w.trunk.is_empty());
    w.advance(1_500);
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(408));
    assert_eq!(w.ended(), vec![EndCause::Timeout(Side::ContactCentre)]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn bye_glare() {
    let mut w = Wire::new();
    let (mut trunk, mut cc) = answered_call(&mut w);
    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    let our_bye = w.next_to_cc();
    // The CC hung up at the same moment: its BYE crosses ours.
    w.deliver(CC, &cc.request("BYE", None, ""));
    assert_eq!(w.next_to_cc().status(), Some(200));
    w.deliver(
        CC,
        &cc_answer(&our_bye, 481, "Call/Transaction Does Not Exist", None),
    );
    assert!(w.trunk.is_empty(), "nothing more to the trunk");
    assert_eq!(w.ended(), vec![EndCause::ByeFromA]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn offer_without_g711_gets_488() {
    let mut w = Wire::new();
    w.deliver(
        TRUNK,
        &trunk_invite("1", Some(&sdp("192.0.2.10", 40000, "18", "sendrecv")), ""),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(488));
    assert!(w.cc.is_empty());
    assert!(w.pool.live.is_empty());
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn unknown_source_gets_403() {
    let mut w = Wire::new();
    let inv = trunk_invite("1", Some(&sdp("192.0.2.10", 40000, "0", "sendrecv")), "");
    w.deliver(STRANGER, &inv);
    assert_eq!(w.stranger.pop_front().unwrap().status(), Some(403));
    assert!(w.cc.is_empty());
    assert!(w.pool.live.is_empty());
}

#[test]
fn over_call_limit_gets_503_with_retry_after() {
    let mut w = Wire::with(config(1));
    w.deliver(
        TRUNK,
        &trunk_invite("1", Some(&sdp("192.0.2.10", 40000, "0", "sendrecv")), ""),
    );
    w.next_to_trunk();
    w.next_to_cc();
    w.deliver(
        TRUNK,
        &trunk_invite("2", Some(&sdp("192.0.2.10", 40002, "0", "sendrecv")), ""),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(503));
    assert_eq!(r.retry_after().unwrap().unwrap().seconds, 7);
    assert!(w.cc.is_empty());
}

#[test]
fn max_forwards_zero_and_unknown_require() {
    let mut w = Wire::new();
    let inv = trunk_invite("1", None, "").replace("Max-Forwards: 70", "Max-Forwards: 0");
    w.deliver(TRUNK, &inv);
    w.next_to_trunk();
    assert_eq!(w.next_to_trunk().status(), Some(483));
    w.deliver(TRUNK, &trunk_invite("2", None, "Require: 100rel\r\n"));
    w.next_to_trunk();
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(420));
    assert!(text(&r).contains("Unsupported: 100rel"));
    assert!(w.cc.is_empty());
}

#[test]
fn media_timeout_hangs_up_both_legs_with_reason() {
    let mut w = Wire::new();
    answered_call(&mut w);
    let call = w
        .events
        .iter()
        .find_map(|e| match e {
            Output::Event { call, .. } => Some(*call),
            _ => None,
        })
        .unwrap();
    w.input(Input::MediaTimeout { call });
    let a = w.next_to_trunk();
    let b = w.next_to_cc();
    for m in [&a, &b] {
        assert_eq!(m.method().unwrap().as_str(), "BYE");
        assert!(text(m).contains("Reason: SIP;cause=408"));
    }
    assert_eq!(w.ended(), vec![EndCause::MediaTimeout]);
    assert!(w.pool.live.is_empty());
    assert!(
        w.events
            .iter()
            .any(|e| matches!(e, Output::MediaStopped { .. }))
    );
}

#[test]
fn contact_centre_failure_maps_to_same_class() {
    let mut w = Wire::new();
    w.deliver(TRUNK, &trunk_invite("1", None, ""));
    w.next_to_trunk();
    let inv = w.next_to_cc();
    w.deliver(CC, &cc_answer(&inv, 486, "Busy Here", None));
    let ack = w.next_to_cc();
    assert_eq!(ack.method().unwrap().as_str(), "ACK");
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(486));
    assert!(r.get("Contact").is_none());
    assert_eq!(w.ended(), vec![EndCause::Rejected(486)]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn missing_trunk_ack_retransmits_2xx_then_hangs_up() {
    let mut w = Wire::new();
    w.deliver(
        TRUNK,
        &trunk_invite("1", Some(&sdp("192.0.2.10", 40000, "0", "sendrecv")), ""),
    );
    w.next_to_trunk();
    let inv = w.next_to_cc();
    let answer = sdp("198.51.100.20", 50000, "0", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    // A retransmitted INVITE crossing our 2xx gets the 2xx again, and nothing reaches the CC.
    w.deliver(
        TRUNK,
        &trunk_invite("1", Some(&sdp("192.0.2.10", 40000, "0", "sendrecv")), ""),
    );
    assert_eq!(w.next_to_trunk(), ok);
    assert!(w.cc.is_empty());
    w.advance(10_000);
    // §13.3.1.4: 0.5, 1.5, 3.5, 7.5 s, each byte-identical to the first 2xx.
    assert_eq!(w.trunk.len(), 4);
    assert!(w.trunk.iter().all(|m| m == &ok));
    w.trunk.clear();
    w.advance(23_000);
    let ends: Vec<String> =
        w.cc.iter()
            .map(|m| m.method().unwrap().as_str().to_owned())
            .collect();
    // The CC's 2xx is ACKed before its BYE; the unanswered BYE is retransmitted (Timer E).
    assert_eq!(ends[0], "ACK");
    assert!(
        ends.len() >= 2 && ends[1..].iter().all(|m| m == "BYE"),
        "{ends:?}"
    );
    assert!(w.cc.iter().skip(1).all(|m| m == &w.cc[1]));
    assert!(
        w.trunk
            .iter()
            .any(|m| m.method().map(|m| m.as_str()) == Some("BYE"))
    );
    assert_eq!(w.ended(), vec![EndCause::Timeout(Side::Trunk)]);
    assert!(w.pool.live.is_empty());
}

#[test]
fn retransmitted_2xx_from_contact_centre_gets_the_same_ack() {
    let mut w = Wire::new();
    w.deliver(TRUNK, &trunk_invite("1", None, ""));
    w.next_to_trunk();
    let inv = w.next_to_cc();
    let offer = sdp("198.51.100.20", 50000, "0", "sendrecv");
    let ok = cc_answer(&inv, 200, "OK", Some(&offer));
    w.deliver(CC, &ok);
    let ok_a = w.trunk_final_or_prov();
    let mut trunk = trunk_peer(&ok_a);
    let ans = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(TRUNK, &trunk.request("ACK", Some(&ans), ""));
    let ack = w.next_to_cc();
    // The CC missed our ACK and resends its 200: the same ACK goes again, nothing to the trunk.
    w.deliver(CC, &ok);
    assert_eq!(w.next_to_cc(), ack);
    assert!(w.trunk.is_empty());
}

#[test]
fn cancel_waits_for_a_provisional_from_the_contact_centre() {
    let mut w = Wire::new();
    let invite = trunk_invite("1", None, "");
    w.deliver(TRUNK, &invite);
    w.next_to_trunk();
    let inv = w.next_to_cc();
    let cancel = invite
        .replacen("INVITE sip", "CANCEL sip", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    w.deliver(TRUNK, &cancel);
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert_eq!(w.next_to_trunk().status(), Some(487));
    assert!(
        w.cc.is_empty(),
        "no CANCEL before a provisional (RFC 3261 §9.1)"
    );
    let trying = text(&ResponseBuilder::new(&inv, 100, "Trying").build().unwrap());
    w.deliver(CC, &trying);
    let c = w.next_to_cc();
    assert_eq!(c.method().unwrap().as_str(), "CANCEL");
    assert!(w.trunk.is_empty());
    w.deliver(CC, &cc_answer(&c, 200, "OK", None));
    w.deliver(CC, &cc_answer(&inv, 487, "Request Terminated", None));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "ACK");
    assert!(w.trunk.is_empty());
    assert_eq!(w.core.active_calls(), 0);
    // Once the dialogs' linger time has passed, nothing of the call is left to fire.
    w.advance(40_000);
    assert_eq!(w.core.next_deadline(), None);
}

#[test]
fn early_media_183_and_update_are_anchored() {
    let mut w = Wire::new();
    w.deliver(
        TRUNK,
        &trunk_invite(
            "1",
            Some(&sdp("192.0.2.10", 40000, "0 101", "sendrecv")),
            "",
        ),
    );
    w.next_to_trunk();
    let inv = w.next_to_cc();
    let early = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    let p183 = ResponseBuilder::new(&inv, 183, "Session Progress")
        .to_tag("cc-dialog-tag")
        .header("Contact", "<sip:agent@198.51.100.20:5080>")
        .header("Require", "100rel")
        .header("RSeq", "1")
        .body("application/sdp", early)
        .build()
        .unwrap();
    w.deliver(CC, &text(&p183));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(183));
    assert_relay_sdp(&r, 30000);
    // No reliable provisionals: the contact centre's Require: 100rel does not cross.
    assert!(r.get("Require").is_none() && r.get("RSeq").is_none());
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    w.next_to_cc();

    let upd = sdp("192.0.2.10", 40010, "0 101", "sendrecv");
    w.deliver(
        TRUNK,
        &trunk.request("UPDATE", Some(&upd), "Contact: <sip:trunk@192.0.2.10>\r\n"),
    );
    let u = w.next_to_cc();
    assert_eq!(u.method().unwrap().as_str(), "UPDATE");
    assert_relay_sdp(&u, 30002);
    let ans = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&u, 200, "OK", Some(&ans)));
    let ok = w.next_to_trunk();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.cseq().unwrap().method, "UPDATE");
    assert_relay_sdp(&ok, 30000);
    let last_a = w
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Output::Media { a, .. } => Some(*a),
            _ => None,
        })
        .unwrap();
    assert_eq!(last_a.remote, Some(addr("192.0.2.10:40010")));
}

fn refusals(w: &Wire) -> Vec<Refusal> {
    w.events
        .iter()
        .filter_map(|e| match e {
            Output::Refused { refusal, .. } => Some(*refusal),
            _ => None,
        })
        .collect()
}

fn media_updates(w: &Wire) -> usize {
    w.events
        .iter()
        .filter(|e| matches!(e, Output::Media { .. }))
        .count()
}

/// ARCHITECTURE.md, invariant 6: a stranger holding the right Call-ID, tags and CSeq (sniffed, or guessed)
/// can neither hang up nor re-route a call on either leg.
#[test]
fn a_stranger_with_the_dialog_identifiers_cannot_touch_the_call() {
    let mut w = Wire::new();
    let (mut trunk, mut cc) = answered_call(&mut w);
    let before = media_updates(&w);

    w.deliver(STRANGER, &trunk.request("BYE", None, ""));
    assert_eq!(w.stranger.pop_front().unwrap().status(), Some(403));
    w.deliver(STRANGER, &cc.request("BYE", None, ""));
    assert_eq!(w.stranger.pop_front().unwrap().status(), Some(403));
    let hijack = sdp("203.0.113.66", 41000, "0 101", "sendrecv");
    w.deliver(STRANGER, &cc.request("INVITE", Some(&hijack), ""));
    assert_eq!(w.stranger.pop_front().unwrap().status(), Some(403));
    w.deliver(STRANGER, &trunk.request("INVITE", Some(&hijack), ""));
    assert_eq!(w.stranger.pop_front().unwrap().status(), Some(403));
    w.deliver(STRANGER, &cc.request("ACK", None, ""));

    assert!(w.cc.is_empty() && w.trunk.is_empty(), "nothing relayed");
    assert!(w.stranger.is_empty(), "an ACK gets no answer");
    assert!(w.ended().is_empty(), "the call goes on");
    assert_eq!(media_updates(&w), before, "media untouched");
    assert_eq!(refusals(&w), vec![Refusal::Stranger; 5]);
    assert_eq!(w.core.active_calls(), 1);

    // The real peers still can.
    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "BYE");
}

#[test]
fn each_leg_hears_only_its_own_peer() {
    let mut w = Wire::new();
    let (mut trunk, mut cc) = answered_call(&mut w);
    // The trunk (allowed, but not the contact centre) acts in the contact centre's dialog.
    let sent = w.deliver_unchecked(TRUNK, &cc.request("BYE", None, ""));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status(), Some(403));
    // The contact centre acts in the trunk's dialog.
    let sent = w.deliver_unchecked(CC, &trunk.request("BYE", None, ""));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].status(), Some(403));
    assert!(w.ended().is_empty());
    assert_eq!(
        refusals(&w),
        vec![Refusal::WrongLeg(Leg::B), Refusal::WrongLeg(Leg::A)]
    );
}

#[test]
fn a_response_counts_only_from_where_its_request_went() {
    let mut w = Wire::new();
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("1", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    // A stranger answers the B-leg INVITE first, with the right branch and its own media.
    let fake = sdp("203.0.113.66", 41000, "0 101", "sendrecv");
    w.deliver(STRANGER, &cc_answer(&inv, 200, "OK", Some(&fake)));
    assert!(w.trunk.is_empty(), "nothing reaches the trunk");
    assert_eq!(media_updates(&w), 0);
    assert_eq!(refusals(&w), vec![Refusal::Stranger]);
    // The trunk's own address, allowed but not the contact centre: refused as a response.
    w.deliver(TRUNK, &cc_answer(&inv, 200, "OK", Some(&fake)));
    assert!(w.trunk.is_empty());
    assert_eq!(refusals(&w).last(), Some(&Refusal::Response));
    // The contact centre's answer still sets the call up, with its media.
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    assert_eq!(ok.status(), Some(200));
    w.deliver(TRUNK, &trunk_peer(&ok).request("ACK", None, ""));
    let media = w
        .events
        .iter()
        .find_map(|e| match e {
            Output::Media { b, .. } => Some(*b),
            _ => None,
        })
        .unwrap();
    assert_eq!(media.remote, Some(addr("198.51.100.20:50000")));
}

#[test]
fn a_stranger_cannot_cancel_a_call_being_set_up() {
    let mut w = Wire::new();
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let invite = trunk_invite("1", Some(&offer), "");
    w.deliver(TRUNK, &invite);
    assert_eq!(w.next_to_trunk().status(), Some(100));
    w.next_to_cc();
    let cancel = invite
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let cancel = format!(
        "{}Content-Length: 0\r\n\r\n",
        cancel.split("Content-Type").next().unwrap()
    );
    w.deliver(STRANGER, &cancel);
    assert_eq!(w.stranger.pop_front().unwrap().status(), Some(403));
    assert!(w.cc.is_empty(), "no CANCEL to the contact centre");
    assert!(w.ended().is_empty());
}

/// The trunk's SDP as an SRTP offer: RTP/SAVP (or best-effort RTP/AVP) with one a=crypto.
fn srtp_offer(savp: bool) -> String {
    let plain = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let proto = if savp { "RTP/SAVP" } else { "RTP/AVP" };
    plain.replace("RTP/AVP", proto)
        + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n"
}

fn with_srtp(trunk: SrtpPolicy, target: SrtpPolicy) -> Wire {
    let mut cfg = config(10);
    cfg.routes[0].srtp_trunk = trunk;
    cfg.routes[0].srtp_target = target;
    Wire::with(cfg)
}

#[test]
fn srtp_offer_to_a_route_with_srtp_off_gets_488_with_a_warning() {
    let mut w = with_srtp(SrtpPolicy::Off, SrtpPolicy::Off);
    w.deliver(TRUNK, &trunk_invite("1", Some(&srtp_offer(true)), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(488));
    let warning = r
        .get("Warning")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert!(warning.is_some_and(|v| v.starts_with("399 ") && v.contains("srtp")));
    assert!(w.cc.is_empty());
    assert!(w.pool.live.is_empty());
    // A plain offer to a route that requires SRTP: the same.
    let mut w = with_srtp(SrtpPolicy::Required, SrtpPolicy::Off);
    let plain = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("2", Some(&plain), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    assert_eq!(w.next_to_trunk().status(), Some(488));
    assert!(w.cc.is_empty());
}

#[test]
fn srtp_trunk_is_answered_with_our_own_key_and_the_contact_centre_gets_plain_rtp() {
    let mut w = with_srtp(SrtpPolicy::Optional, SrtpPolicy::Off);
    w.deliver(TRUNK, &trunk_invite("1", Some(&srtp_offer(true)), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    let offer = String::from_utf8_lossy(inv.body()).into_owned();
    assert!(offer.contains(" RTP/AVP 0 101"), "{offer}");
    assert!(
        !offer.contains("crypto"),
        "a key crossed to the contact centre:\n{offer}"
    );
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.next_to_trunk();
    assert_eq!(ok.status(), Some(200));
    let body = String::from_utf8_lossy(ok.body()).into_owned();
    assert!(body.contains(" RTP/SAVP 0 101"), "{body}");
    let lines: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("a=crypto:"))
        .collect();
    assert_eq!(lines.len(), 1, "{body}");
    assert!(lines[0].starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
    assert!(
        !lines[0].contains("PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"),
        "our key is ours"
    );
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    // The relay is handed the trunk leg's transforms only.
    let srtp = w.events.iter().find_map(|e| match e {
        Output::Media { srtp, .. } => Some(srtp),
        _ => None,
    });
    let srtp = srtp
        .expect("media set up")
        .as_deref()
        .expect("SRTP on a leg");
    assert!(srtp.a.is_some() && srtp.b.is_none());
}

#[test]
fn a_required_contact_centre_that_answers_plain_fails_the_call() {
    let mut w = with_srtp(SrtpPolicy::Optional, SrtpPolicy::Required);
    let plain = sdp("192.0.2.10", 40000, "0", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("1", Some(&plain), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    let offer = String::from_utf8_lossy(inv.body()).into_owned();
    assert!(offer.contains(" RTP/SAVP 0"), "{offer}");
    assert_eq!(offer.matches("a=crypto:").count(), 3, "{offer}");
    let answer = sdp("198.51.100.20", 50000, "0", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    assert_eq!(w.next_to_trunk().status(), Some(488));
}

#[test]
fn a_reinvite_with_new_keys_rekeys_the_relay() {
    let mut w = with_srtp(SrtpPolicy::Optional, SrtpPolicy::Off);
    w.deliver(TRUNK, &trunk_invite("1", Some(&srtp_offer(true)), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.next_to_trunk();
    let first_line = String::from_utf8_lossy(ok.body())
        .lines()
        .find(|l| l.starts_with("a=crypto:"))
        .map(str::to_owned)
        .unwrap();
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    let epochs = |w: &Wire| -> Vec<u32> {
        w.events
            .iter()
            .filter_map(|e| match e {
                Output::Media { srtp: Some(s), .. } => Some(s.epoch),
                _ => None,
            })
            .collect()
    };
    assert_eq!(epochs(&w).len(), 1);
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "ACK");
    // The trunk offers a new key in a re-INVITE.
    let rekey = srtp_offer(true).replace(
        "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        "d0RmdmcmVCspeEc3QGZiNWpVLFJhQX1cfHAwJSoj",
    );
    let contact = "Contact: <sip:trunk@192.0.2.10>\r\n";
    w.deliver(TRUNK, &trunk.request("INVITE", Some(&rekey), contact));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let re = w.next_to_cc();
    assert!(!String::from_utf8_lossy(re.body()).contains("crypto"));
    w.deliver(CC, &cc_answer(&re, 200, "OK", Some(&answer)));
    let ok2 = w.trunk_final_or_prov();
    assert_eq!(ok2.status(), Some(200));
    let second_line = String::from_utf8_lossy(ok2.body())
        .lines()
        .find(|l| l.starts_with("a=crypto:"))
        .map(str::to_owned)
        .unwrap();
    assert_ne!(
        first_line, second_line,
        "a new offer gets a new key of ours"
    );
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    let e = epochs(&w);
    assert_eq!(e.len(), 2, "the relay is handed the new keys");
    assert!(e[1] != e[0]);
}

/// An out-of-dialog OPTIONS from the trunk, as a load balancer's probe looks.
fn probe(n: u32) -> String {
    format!(
        "OPTIONS sip:10.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKprobe{n}\r\n\
Max-Forwards: 70\r\nFrom: <sip:ping@192.0.2.10>;tag=p{n}\r\nTo: <sip:10.0.0.1>\r\nCall-ID: probe-{n}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn options_probe_answers_503_at_the_call_limit() {
    let mut w = Wire::with(config(1));
    w.deliver(TRUNK, &probe(1));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    answered_call(&mut w);
    w.deliver(TRUNK, &probe(2));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(503), "full: the probe must say so");
    assert_eq!(r.retry_after().unwrap().unwrap().seconds, 7);
    assert!(!w.core.accepting() && !w.core.draining());
}

#[test]
fn drain_refuses_new_calls_lets_calls_go_on_then_hangs_up_with_reason() {
    let mut w = Wire::new();
    let (mut trunk, _cc) = answered_call(&mut w);
    w.input(Input::Drain {
        limit_ms: Some(60_000),
    });
    assert!(w.core.draining());
    // New calls and probes: 503 with Retry-After; nothing reaches the contact centre.
    w.deliver(TRUNK, &probe(1));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(503));
    assert!(r.retry_after().unwrap().is_some());
    w.deliver(
        TRUNK,
        &trunk_invite("2", Some(&sdp("192.0.2.10", 40002, "0", "sendrecv")), ""),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(503));
    assert!(r.retry_after().unwrap().is_some());
    assert!(w.cc.is_empty());
    // The call in progress goes on: in-dialog requests are still served.
    w.advance(30_000);
    drop_503_retransmissions(&mut w);
    w.deliver(TRUNK, &trunk.request("OPTIONS", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200), "in-dialog OPTIONS");
    assert!(w.ended().is_empty(), "nothing ends before the limit");
    assert_eq!(w.core.active_calls(), 1);
    // A second drain order does not move the deadline.
    w.input(Input::Drain {
        limit_ms: Some(600_000),
    });
    // The limit passes: both legs get a BYE that says why.
    w.advance(30_001);
    drop_503_retransmissions(&mut w);
    let a = w.next_to_trunk();
    let b = w.next_to_cc();
    for m in [&a, &b] {
        assert_eq!(m.method().unwrap().as_str(), "BYE");
        assert!(
            text(m).contains("Reason: SIP;cause=503;text=\"node draining\""),
            "{}",
            text(m)
        );
    }
    assert_eq!(w.ended(), vec![EndCause::Drained]);
    assert_eq!(w.core.active_calls(), 0);
    assert!(w.pool.live.is_empty());
    assert_eq!(
        w.core.open_requests(),
        2,
        "the two BYEs await their answers"
    );
}

#[test]
fn resume_takes_calls_again() {
    let mut w = Wire::new();
    w.input(Input::Drain { limit_ms: None });
    w.deliver(TRUNK, &probe(1));
    assert_eq!(w.next_to_trunk().status(), Some(503));
    // Without a limit nothing is ever hung up.
    answered_call_refused(&mut w);
    w.input(Input::Resume);
    assert!(w.core.accepting());
    w.deliver(TRUNK, &probe(2));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    answered_call(&mut w);
    assert_eq!(w.core.active_calls(), 1);
}

fn answered_call_refused(w: &mut Wire) {
    w.deliver(TRUNK, &trunk_invite("9", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    assert_eq!(w.next_to_trunk().status(), Some(503));
    w.advance(3_600_000);
    drop_503_retransmissions(w);
    assert!(w.cc.is_empty());
}

/// This script never ACKs a refusal, so the core resent it (§17.2.1) meanwhile.
fn drop_503_retransmissions(w: &mut Wire) {
    w.trunk.retain(|m| m.status() != Some(503));
}

/// The contact centre's 2xx names the agent (`X-Agent`); the answered event carries it for the
/// agent's desk, and it never reaches the trunk. A value no desk name could be is ignored.
#[test]
fn the_contact_centres_answer_names_the_agent_for_the_desk() {
    for (header, expect) in [
        ("7001", Some("7001")),
        ("agent.7001@cc-1", Some("agent.7001@cc-1")),
        ("70 01<script>", None),
        ("", None),
    ] {
        let mut w = Wire::new();
        let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
        w.deliver(TRUNK, &trunk_invite("1", Some(&offer), ""));
        w.next_to_trunk();
        let inv = w.next_to_cc();
        let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
        let ok = cc_answer(&inv, 200, "OK", Some(&answer)).replacen(
            "Content-Length",
            &format!("X-Agent: {header}\r\nContent-Length"),
            1,
        );
        w.deliver(CC, &ok);
        let ok = w.trunk_final_or_prov();
        assert_eq!(ok.status(), Some(200));
        assert!(
            !text(&ok).contains("X-Agent"),
            "the agent stays on our side"
        );
        let mut trunk = trunk_peer(&ok);
        w.deliver(TRUNK, &trunk.request("ACK", None, ""));
        let agent = w.events.iter().find_map(|e| match e {
            Output::Event {
                event: CallEvent::Answered { agent },
                ..
            } => Some(agent.clone()),
            _ => None,
        });
        assert_eq!(
            agent,
            Some(expect.map(str::to_owned)),
            "X-Agent: {header:?}"
        );
    }
}
