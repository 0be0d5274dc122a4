//! RFC 4028 session timers on the trunk's leg, over the B2BUA's in-memory wire on a virtual
//! clock: the interval and refresher tonewall answers, 422 below Min-SE, refreshes by UPDATE
//! (answered here) and re-INVITE (relayed), both legs hung up when the trunk's refresh does
//! not come, and tonewall's own refresh when the trunk asks it to refresh.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod sipwire;

use sipwire::*;
use tonewall::sip::b2bua::{EndCause, Side};
use tonewall::sip::message::Message;

/// A call with `se` (Session-Expires and friends) on the trunk's INVITE, answered and ACKed;
/// the 2xx the trunk got and both peers.
fn timed_call(w: &mut Wire, se: &str) -> (Message, Peer, Peer) {
    let offer = sdp("192.0.2.10", 40000, "0 8 101", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("1", Some(&offer), se));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    assert!(
        !text(&inv).contains("Session-Expires"),
        "the contact centre's leg has no timer: {}",
        text(&inv)
    );
    let mut cc = cc_peer(&inv);
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    assert_eq!(ok.status(), Some(200));
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "ACK");
    cc.cseq = 100;
    (ok, trunk, cc)
}

fn header(m: &Message, name: &str) -> Option<String> {
    m.get(name).map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn the_trunk_refreshes_and_the_2xx_says_so() {
    let mut w = Wire::new();
    // trunk_invite already says `Supported: 100rel, timer`.
    let (ok, _, _) = timed_call(&mut w, "Session-Expires: 120\r\nMin-SE: 90\r\n");
    assert_eq!(
        header(&ok, "Session-Expires").as_deref(),
        Some("120;refresher=uac")
    );
    assert_eq!(header(&ok, "Require").as_deref(), Some("timer"));
    // The trunk's proxy stays in the dialog (RFC 3261 §12.1.1), or its refreshes cannot
    // reach the node that holds the call.
    assert_eq!(
        header(&ok, "Record-Route").as_deref(),
        Some("<sip:rr.trunk.example;lr>")
    );
}

#[test]
fn without_a_session_expires_there_is_no_timer() {
    let mut w = Wire::new();
    let (ok, _, _) = timed_call(&mut w, "");
    assert_eq!(header(&ok, "Session-Expires"), None);
    // An hour without refresh changes nothing.
    w.advance(3_600_000);
    assert!(w.trunk.is_empty() && w.cc.is_empty());
    assert!(w.ended().is_empty());
}

#[test]
fn an_interval_below_min_se_gets_422_and_no_call() {
    let mut w = Wire::new();
    let offer = sdp("192.0.2.10", 40000, "0 8 101", "sendrecv");
    w.deliver(
        TRUNK,
        &trunk_invite("1", Some(&offer), "Session-Expires: 30\r\n"),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let r = w.next_to_trunk();
    assert_eq!(r.status(), Some(422));
    assert_eq!(header(&r, "Min-SE").as_deref(), Some("90"));
    assert!(w.cc.is_empty(), "the contact centre was not called");
    assert!(w.pool.live.is_empty(), "no ports held");
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn bodiless_updates_are_answered_here_and_keep_the_call_up() {
    let mut w = Wire::new();
    let (_, mut trunk, _) = timed_call(&mut w, "Session-Expires: 90\r\n");
    // Refreshes every 40 s for ten minutes: the call stays; nothing reaches the agent.
    for _ in 0..15 {
        w.advance(40_000);
        w.deliver(
            TRUNK,
            &trunk.request("UPDATE", None, "Session-Expires: 90;refresher=uac\r\n"),
        );
        let r = w.next_to_trunk();
        assert_eq!(r.status(), Some(200), "{}", text(&r));
        assert_eq!(
            header(&r, "Session-Expires").as_deref(),
            Some("90;refresher=uac")
        );
    }
    assert!(
        w.cc.is_empty(),
        "a pure refresh is not the contact centre's business"
    );
    assert!(w.ended().is_empty());
    assert_eq!(w.core.active_calls(), 1);
}

#[test]
fn a_reinvite_refreshes_through_the_contact_centre() {
    let mut w = Wire::new();
    let (_, mut trunk, mut cc) = timed_call(&mut w, "Session-Expires: 90\r\n");
    w.advance(50_000);
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    w.deliver(
        TRUNK,
        &trunk.request(
            "INVITE",
            Some(&offer),
            "Session-Expires: 90\r\nSupported: timer\r\n",
        ),
    );
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let reinv = w.next_to_cc();
    assert_eq!(reinv.method().unwrap().as_str(), "INVITE");
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&reinv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(
        header(&ok, "Session-Expires").as_deref(),
        Some("90;refresher=uac")
    );
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "ACK");
    // 50 s after that refresh the first interval is long gone, the second not yet.
    w.advance(50_000);
    assert!(w.ended().is_empty(), "the re-INVITE refreshed the session");
    let _ = cc.request("OPTIONS", None, "");
}

#[test]
fn no_refresh_from_the_trunk_hangs_up_both_legs_before_expiry() {
    let mut w = Wire::new();
    let (_, _, _) = timed_call(&mut w, "Session-Expires: 90\r\n");
    // RFC 4028 §10: BYE at 90 s less min(32 s, 30 s) = 60 s after the answer.
    w.advance(59_999);
    assert!(w.trunk.is_empty() && w.cc.is_empty());
    assert!(w.ended().is_empty());
    w.advance(1);
    let a = w.next_to_trunk();
    let b = w.next_to_cc();
    for m in [&a, &b] {
        assert_eq!(m.method().unwrap().as_str(), "BYE");
        assert!(
            text(m).contains("Reason: SIP;cause=408;text=\"session timer expired\""),
            "{}",
            text(m)
        );
    }
    assert_eq!(w.ended(), vec![EndCause::Timeout(Side::Trunk)]);
    assert!(w.pool.live.is_empty(), "ports released");
}

#[test]
fn when_asked_to_refresh_tonewall_sends_updates_and_a_481_ends_the_call() {
    let mut w = Wire::new();
    let (ok, _, _) = timed_call(&mut w, "Session-Expires: 100;refresher=uas\r\n");
    assert_eq!(
        header(&ok, "Session-Expires").as_deref(),
        Some("100;refresher=uas")
    );
    // Half the interval: our UPDATE, bodiless, naming us as the refresher.
    w.advance(49_999);
    assert!(w.trunk.is_empty());
    w.advance(1);
    let up = w.next_to_trunk();
    assert_eq!(up.method().unwrap().as_str(), "UPDATE");
    assert!(up.body().is_empty());
    assert_eq!(
        header(&up, "Session-Expires").as_deref(),
        Some("100;refresher=uas")
    );
    assert!(w.cc.is_empty());
    w.deliver(TRUNK, &cc_answer_as_trunk(&up, 200));
    // Answered: the next one 50 s later.
    w.advance(49_999);
    assert!(w.trunk.is_empty());
    w.advance(1);
    let up = w.next_to_trunk();
    assert_eq!(up.method().unwrap().as_str(), "UPDATE");
    // The trunk forgot the dialog: both legs are hung up.
    w.deliver(TRUNK, &cc_answer_as_trunk(&up, 481));
    let a = w.next_to_trunk();
    let b = w.next_to_cc();
    assert_eq!(a.method().unwrap().as_str(), "BYE");
    assert_eq!(b.method().unwrap().as_str(), "BYE");
    assert_eq!(w.ended(), vec![EndCause::Timeout(Side::Trunk)]);
}

#[test]
fn an_unanswered_refresh_of_ours_ends_the_call() {
    let mut w = Wire::new();
    // No `Supported: timer` would make us the refresher too; here the trunk asks outright.
    timed_call(&mut w, "Session-Expires: 90;refresher=uas\r\n");
    w.advance(45_000);
    let up = w.next_to_trunk();
    assert_eq!(up.method().unwrap().as_str(), "UPDATE");
    // Timer F (64·T1 = 32 s) without any answer.
    w.advance(40_000);
    while let Some(m) = w.trunk.pop_front() {
        assert!(
            matches!(
                m.method().map(|m| m.as_str().to_owned()).as_deref(),
                Some("UPDATE" | "BYE")
            ),
            "{}",
            text(&m)
        );
    }
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "BYE");
    assert_eq!(w.ended(), vec![EndCause::Timeout(Side::Trunk)]);
}

/// The trunk's response to a request tonewall sent it.
fn cc_answer_as_trunk(req: &Message, status: u16) -> String {
    let reason = if status == 200 {
        "OK"
    } else {
        "Call Does Not Exist"
    };
    text(
        &tonewall::sip::message::ResponseBuilder::new(req, status, reason)
            .build()
            .unwrap(),
    )
}
