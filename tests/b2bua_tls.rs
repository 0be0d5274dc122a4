//! The B2BUA core with SIP over TLS on a virtual wire: what goes on a TLS leg (Via, Contact,
//! SIPS), which transport each message leaves on, a SIPS Request-URI that arrived in the clear,
//! and a contact centre that cannot be reached (the shell's `TransportFailed`).
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod sipwire;

use sipwire::*;
use tonewall::config::Transport;
use tonewall::sip::Side;
use tonewall::sip::b2bua::{EndCause, Input};

/// A wire whose route reaches the contact centre over TLS at `target`, and whose trunk
/// speaks TLS too.
fn tls_wire(target: &str) -> Wire {
    let mut cfg = config(10);
    cfg.routes[0].transport = Transport::Tls;
    cfg.routes[0].target_uri = target.into();
    let mut w = Wire::with(cfg);
    w.transport = Transport::Tls;
    w
}

fn header(m: &tonewall::sip::message::Message, name: &str) -> String {
    String::from_utf8_lossy(m.get(name).unwrap_or_else(|| panic!("no {name}"))).into_owned()
}

#[test]
fn tls_legs_carry_tls_vias_and_contacts_and_stay_on_tls() {
    let mut w = tls_wire("sip:agents@198.51.100.20:5080");
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("1", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    // RFC 3261 §26.3.1 / §18.2.1: our Via names TLS and the TLS listener; the Contact says
    // how to reach us for requests in the dialog.
    assert!(
        header(&inv, "Via").starts_with("SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK"),
        "{}",
        text(&inv)
    );
    assert_eq!(header(&inv, "Contact"), "<sip:10.0.0.1:5061;transport=tls>");
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(header(&ok, "Contact"), "<sip:10.0.0.1:5061;transport=tls>");
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "ACK");
    w.deliver(TRUNK, &trunk.request("BYE", None, ""));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    let bye = w.next_to_cc();
    assert!(header(&bye, "Via").starts_with("SIP/2.0/TLS 10.0.0.1:5061;"));
    w.deliver(CC, &cc_answer(&bye, 200, "OK", None));
    assert_eq!(w.ended(), vec![EndCause::ByeFromA]);
    // Every message, to either side, went over TLS: responses on the trunk's connection,
    // requests to the contact centre on ours.
    assert!(!w.sent.is_empty());
    for (t, to) in &w.sent {
        assert_eq!(*t, Transport::Tls, "to {to}");
    }
}

#[test]
fn sips_request_uri_and_target_get_sips_contacts() {
    let mut w = tls_wire("sips:agents@198.51.100.20:5081");
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let invite = trunk_invite("1", Some(&offer), "").replace(
        "INVITE sip:5551234@10.0.0.1:5060",
        "INVITE sips:5551234@10.0.0.1:5061",
    );
    w.deliver(TRUNK, &invite);
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    assert!(text(&inv).starts_with("INVITE sips:agents@198.51.100.20:5081 SIP/2.0\r\n"));
    // RFC 3261 §8.1.1.8: a SIPS Request-URI asks a SIPS Contact (RFC 5630: no transport=tls).
    assert_eq!(header(&inv, "Contact"), "<sips:10.0.0.1:5061>");
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.trunk_final_or_prov();
    assert_eq!(ok.status(), Some(200));
    assert_eq!(header(&ok, "Contact"), "<sips:10.0.0.1:5061>");
}

#[test]
fn sips_request_uri_in_the_clear_is_refused() {
    let mut w = Wire::new();
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    let invite = trunk_invite("1", Some(&offer), "").replace(
        "INVITE sip:5551234@10.0.0.1:5060",
        "INVITE sips:5551234@10.0.0.1:5061",
    );
    w.deliver(TRUNK, &invite);
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let no = w.next_to_trunk();
    assert_eq!(no.status(), Some(403));
    assert!(header(&no, "Warning").contains("SIPS Request-URI over UDP"));
    assert!(w.cc.is_empty(), "nothing reaches the contact centre");
    assert_eq!(w.core.active_calls(), 0);
}

#[test]
fn unreachable_contact_centre_fails_the_call_at_once_with_a_warning() {
    let mut w = tls_wire("sip:agents@198.51.100.20:5080");
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("1", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let _ = w.next_to_cc();
    w.advance(50);
    // A failure towards another peer, or over another transport, is not this call's.
    w.input(Input::TransportFailed {
        transport: Transport::Tcp,
        peer: addr(CC),
    });
    w.input(Input::TransportFailed {
        transport: Transport::Tls,
        peer: addr(STRANGER),
    });
    assert!(w.trunk.is_empty());
    w.input(Input::TransportFailed {
        transport: Transport::Tls,
        peer: addr(CC),
    });
    let no = w.next_to_trunk();
    assert_eq!(no.status(), Some(503));
    assert!(
        header(&no, "Warning").contains("\"contact centre unreachable over TLS\""),
        "{}",
        text(&no)
    );
    assert_eq!(w.ended(), vec![EndCause::Unreachable(Side::ContactCentre)]);
    assert!(w.pool.live.is_empty(), "ports released");
    // Timer B has nothing left to fire.
    w.advance(40_000);
    assert!(w.trunk.iter().all(|m| m.status() != Some(408)));
}
