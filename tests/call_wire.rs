//! Whole calls through the call core on the in-memory wire and a virtual clock, no sockets: the
//! trunk and the contact centre exchange SIP with `CallCore`, the test plays the relay (the keys
//! it hears) and carries the core's look-ups and captures to a real payment desk. The loop
//! route's locator (keyed after answer, found / not found / fallback), the return call, binding
//! and capture; the inline route's agent-keyed locator; SIP INFO keys before and after the bridge.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

mod sipwire;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use sipwire::*;
use tonewall::call::{
    Action, CallCore, CallCoreConfig, Event, KeyFrom, LocateFor, RelayPlan, RoutePolicy,
};
use tonewall::config::{LocatorSource, OnFailure, RouteMode};
use tonewall::digit::{Digit, DigitSource};
use tonewall::ids::CallId;
use tonewall::payment::card::FieldName;
use tonewall::payment::desk::{Desk, DeskConfig, Notice, SealJob};
use tonewall::payment::session::{AgentId, Created, NewSession, SessionState};
use tonewall::payment::vault::{self, MasterKey};
use tonewall::sip::b2bua::{EndCause, Input, LocateOutcome, LoopRoute, Route};
use tonewall::sip::message::Message;

const RETURN_URI: &str = "sip:return@198.51.100.20:5080";
const FALLBACK_URI: &str = "sip:queue@198.51.100.20:5080";
const ANNOUNCE_MS: u64 = 2_500;

/// What the test's payment desk must do for the call core's actions.
trait DeskPort {
    /// The agent of the live session holding `locator`, the call bound to it, capture started.
    fn locate_and_bind(&mut self, locator: &str, call: CallId, now: u64) -> Option<String>;
    fn capture(&mut self, call: CallId, digit: Digit, source: DigitSource, at_ms: u64, now: u64);
}

struct CallWire<D: DeskPort> {
    core: CallCore,
    desk: D,
    pool: Pool,
    now: u64,
    trunk: VecDeque<Message>,
    cc: VecDeque<Message>,
    /// Every action but sends, in order.
    actions: Vec<Action>,
    /// Relays the shell would be running: call → agent keys heard.
    relays: HashMap<CallId, bool>,
}

impl<D: DeskPort> CallWire<D> {
    fn new(cfg: CallCoreConfig, desk: D) -> Self {
        CallWire {
            core: CallCore::new(cfg),
            desk,
            pool: Pool::default(),
            now: 0,
            trunk: VecDeque::new(),
            cc: VecDeque::new(),
            actions: Vec::new(),
            relays: HashMap::new(),
        }
    }

    fn event(&mut self, event: Event) {
        let mut out = Vec::new();
        self.core.handle(event, self.now, &mut self.pool, &mut out);
        let mut answers = Vec::new();
        for a in out {
            match a {
                Action::Send { to, bytes, .. } => {
                    let m = parse(&bytes);
                    if to == addr(CC) {
                        self.cc.push_back(m);
                    } else {
                        self.trunk.push_back(m);
                    }
                    continue;
                }
                Action::StartRelay { call, plan, .. } => {
                    self.relays.insert(call, plan.agent_keys);
                }
                Action::StopRelay { call } => {
                    self.relays.remove(&call);
                }
                Action::StopAgentKeys { call } => {
                    self.relays.insert(call, false);
                }
                // The shell does these off the core task and answers with an event.
                Action::Locate {
                    call, ref locator, ..
                } => {
                    let outcome = match self.desk.locate_and_bind(locator, call, self.now) {
                        Some(agent) => LocateOutcome::Found {
                            agent,
                            locator: locator.clone(),
                        },
                        None => LocateOutcome::NotFound,
                    };
                    answers.push(Event::Located { call, outcome });
                }
                Action::Capture {
                    call,
                    digit,
                    source,
                    at_ms,
                } => self.desk.capture(call, digit, source, at_ms, self.now),
                _ => {}
            }
            self.actions.push(a);
        }
        for e in answers {
            self.event(e);
        }
    }

    fn deliver(&mut self, from: &str, msg: &str) {
        let input = Input::Received {
            transport: tonewall::config::Transport::Udp,
            from: addr(from),
            msg: parse(msg.as_bytes()),
        };
        self.event(Event::Sip(input));
    }

    fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while let Some(d) = self.core.next_deadline().filter(|d| *d <= end) {
            self.now = d.max(self.now);
            self.event(Event::Sip(Input::Tick));
        }
        self.now = end;
    }

    /// The relay heard `keys` from one side, 200 ms apart on both clocks.
    fn keys(&mut self, call: CallId, from: KeyFrom, keys: &str) {
        for c in keys.chars() {
            if from == KeyFrom::Agent && self.relays.get(&call) != Some(&true) {
                // The relay no longer listens to the agent.
                continue;
            }
            let key = Event::Key {
                call,
                from,
                digit: Digit::from_char(c).unwrap(),
                source: DigitSource::InBand,
                media_ms: 10_000 + self.now,
            };
            self.event(key);
            self.advance(200);
        }
    }

    fn next_to_trunk(&mut self) -> Message {
        self.trunk.pop_front().expect("a message to the trunk")
    }

    fn next_to_cc(&mut self) -> Message {
        self.cc
            .pop_front()
            .expect("a message to the contact centre")
    }

    fn call(&self) -> CallId {
        self.actions
            .iter()
            .find_map(|a| match a {
                Action::Started { call, .. } => Some(*call),
                _ => None,
            })
            .expect("a call started")
    }

    /// How the call's first relay was set up.
    fn relay_plan(&self) -> Option<RelayPlan> {
        self.actions.iter().find_map(|a| match a {
            Action::StartRelay { plan, .. } => Some(*plan),
            _ => None,
        })
    }

    fn captures(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::Capture { .. }))
            .count()
    }

    fn locates(&self) -> Vec<(String, LocateFor)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Locate { locator, by, .. } => Some((locator.clone(), *by)),
                _ => None,
            })
            .collect()
    }

    fn ended(&self) -> Vec<EndCause> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Ended { cause, .. } => Some(*cause),
                _ => None,
            })
            .collect()
    }
}

fn policies(agent_locator: bool) -> HashMap<String, RoutePolicy> {
    let mut m = HashMap::new();
    m.insert(
        "loop".to_string(),
        RoutePolicy {
            scrub_always: true,
            agent_locator: false,
        },
    );
    m.insert(
        "inline".to_string(),
        RoutePolicy {
            scrub_always: false,
            agent_locator,
        },
    );
    m
}

/// A loop route on the number `pay` (locator from keys only) and the inline route.
fn call_config(on_failure: OnFailure, fallback: bool, agent_locator: bool) -> CallCoreConfig {
    let mut sip = config(10);
    let inline = sip.routes.remove(0);
    sip.routes = vec![
        Route {
            name: "loop".into(),
            user: Some("pay".into()),
            target_uri: RETURN_URI.into(),
            mode: RouteMode::Loop,
            loop_route: Some(LoopRoute {
                locator_from: vec![LocatorSource::Dtmf],
                locator_header: "X-Locator".into(),
                agent_header: "X-Agent".into(),
                locator_timeout_ms: 30_000,
                on_failure,
                fallback: fallback.then(|| (FALLBACK_URI.to_owned(), addr(CC))),
                announce_ms: ANNOUNCE_MS,
            }),
            ..inline.clone()
        },
        inline,
    ];
    CallCoreConfig {
        sip,
        routes: policies(agent_locator),
        locator_len: 6,
        locator_inter_key_ms: 3_000,
    }
}

fn loop_invite(body: &str) -> String {
    trunk_invite("1", Some(body), "")
        .replacen("INVITE sip:5551234@", "INVITE sip:pay@", 1)
        .replacen("To: <sip:5551234@", "To: <sip:pay@", 1)
}

fn info_key(peer: &mut Peer, key: char) -> String {
    let body = format!("Signal={key}\r\nDuration=160\r\n");
    peer.request("INFO", None, "").replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: application/dtmf-relay\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// A loop call answered by tonewall and ACKed: returns the trunk's side of the dialog.
fn loop_answered<D: DeskPort>(w: &mut CallWire<D>) -> Peer {
    let offer = sdp("192.0.2.10", 40000, "0 101", "sendrecv");
    w.deliver(TRUNK, &loop_invite(&offer));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let ok = w.next_to_trunk();
    assert_eq!(
        ok.status(),
        Some(200),
        "tonewall answers to read the locator"
    );
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    assert!(w.cc.is_empty(), "nobody is called before the locator");
    trunk
}

/// The contact centre answers the return call; the caller is bridged to the agent.
fn return_call_answered<D: DeskPort>(w: &mut CallWire<D>, uri: &str) -> Message {
    let inv = w.next_to_cc();
    assert_eq!(inv.request_uri_str(), Some(uri));
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "ACK");
    assert!(
        w.actions
            .iter()
            .any(|a| matches!(a, Action::Answered { .. })),
        "bridged"
    );
    inv
}

/// The payment desk the shell would reach, sans-IO, on a clock `T0` + the wire's.
struct TestDesk {
    desk: Desk,
    master: Arc<MasterKey>,
    created: Created,
    sealed: Option<SealJob>,
    taken: usize,
}

/// 2026-06-01T00:00:00Z: a card expiring 12/30 is good.
const T0: u64 = 1_780_272_000_000;

impl DeskPort for TestDesk {
    fn locate_and_bind(&mut self, locator: &str, call: CallId, now: u64) -> Option<String> {
        let (id, agent) = self.desk.locate(locator, T0 + now)?;
        self.desk.bind(id, call, true, T0 + now).ok()?;
        Some(agent.as_str().to_string())
    }
    fn capture(&mut self, call: CallId, d: Digit, s: DigitSource, at_ms: u64, now: u64) {
        // No session capturing on the call is the normal case: the key is dropped.
        if let Ok((_, job)) = self.desk.feed(call, d, s, at_ms, T0 + now) {
            self.sealed = self.sealed.take().or(job);
        }
        let notices = self.desk.take_notices();
        self.taken += notices
            .iter()
            .filter(|n| matches!(n, Notice::DigitTaken(_)))
            .count();
    }
}

impl TestDesk {
    /// A desk with one live session for `agent-9`; returns it and the session's locator.
    fn new() -> (TestDesk, String) {
        let master = Arc::new(MasterKey::generate());
        let mut desk = Desk::new(DeskConfig::default(), master.clone());
        let new = NewSession {
            agent: AgentId::parse("agent-9").unwrap(),
            ttl_ms: None,
            fields: vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv],
            amount: None,
            reference: None,
            owner: Some("desk".into()),
            hand_out: false,
        };
        let (created, _) = desk.create(new, false, T0).unwrap();
        let locator = created.locator.as_str().to_string();
        let desk = TestDesk {
            desk,
            master,
            created,
            sealed: None,
            taken: 0,
        };
        (desk, locator)
    }

    /// Numeric keys the session's capture took.
    fn captured(&self) -> usize {
        self.taken
    }

    fn state(&self) -> SessionState {
        self.desk.session(&self.created.id).unwrap().state().clone()
    }

    /// The sealed record opens with the session's PIN and holds `pan`.
    fn assert_sealed(&self, pan: &str) {
        let job = self.sealed.as_ref().expect("the card was sealed");
        let card = vault::open(
            &job.record,
            &self.master,
            &self.created.pin,
            &self.created.id,
        )
        .unwrap();
        assert_eq!(card.pan().reveal(), pan);
    }
}

const PAN: &str = "4111111111111111";
/// PAN, `#`, expiry 12/30, CVV.
const CARD: &str = "4111111111111111#1230123";
/// Numeric keys in `CARD`.
const CARD_DIGITS: usize = 16 + 4 + 3;

fn trunk_ip() -> IpAddr {
    addr(TRUNK).ip()
}

#[test]
fn loop_call_keyed_locator_binds_the_return_call_and_only_later_keys_are_captured() {
    let (desk, locator) = TestDesk::new();
    let mut w = CallWire::new(call_config(OnFailure::Announce, false, false), desk);
    let _trunk = loop_answered(&mut w);
    let call = w.call();
    let plan = w
        .relay_plan()
        .expect("the relay starts when tonewall answers");
    assert!(plan.scrub && plan.always, "a loop route scrubs always");

    w.keys(call, KeyFrom::Caller, &locator);
    assert_eq!(
        w.locates(),
        vec![(locator.clone(), LocateFor::Loop { source: trunk_ip() })]
    );
    assert_eq!(w.captures(), 0, "locator keys are never card digits");
    let inv = return_call_answered(&mut w, RETURN_URI);
    assert_eq!(
        inv.get("X-Agent")
            .map(|v| String::from_utf8_lossy(v).into_owned()),
        Some("agent-9".to_string())
    );

    assert_eq!(w.desk.state(), SessionState::Capturing { call });
    w.keys(call, KeyFrom::Caller, CARD);
    assert_eq!(w.captures(), CARD.len());
    assert_eq!(w.desk.captured(), CARD_DIGITS);
    assert_eq!(w.desk.state(), SessionState::Completed { call });
    w.desk.assert_sealed(PAN);
    assert!(w.ended().is_empty());
}

#[test]
fn loop_call_locator_not_found_plays_the_routes_tone_then_hangs_up() {
    let (desk, _) = TestDesk::new();
    let mut w = CallWire::new(call_config(OnFailure::Announce, false, false), desk);
    let _trunk = loop_answered(&mut w);
    let call = w.call();
    w.keys(call, KeyFrom::Caller, "000000");
    assert!(w.actions.iter().any(|a| *a
        == Action::Announce {
            call,
            for_ms: ANNOUNCE_MS
        }));
    assert!(w.trunk.is_empty(), "the tone plays before the BYE");
    w.advance(ANNOUNCE_MS);
    let bye = w.next_to_trunk();
    assert_eq!(bye.method().unwrap().as_str(), "BYE");
    assert!(w.cc.is_empty(), "no agent was called");
    assert_eq!(w.ended(), vec![EndCause::NotLocated]);
    assert_eq!(w.captures(), 0);
}

#[test]
fn loop_call_locator_not_found_goes_to_the_fallback_without_binding() {
    let (desk, _) = TestDesk::new();
    let mut w = CallWire::new(call_config(OnFailure::Fallback, true, false), desk);
    let _trunk = loop_answered(&mut w);
    let call = w.call();
    w.keys(call, KeyFrom::Caller, "000000");
    return_call_answered(&mut w, FALLBACK_URI);
    w.keys(call, KeyFrom::Caller, "1234");
    assert_eq!(w.captures(), 4, "after the bridge keys go to capture");
    assert_eq!(
        w.desk.captured(),
        0,
        "no session is bound to a fallback call"
    );
}

#[test]
fn sip_info_keys_are_locator_before_the_bridge_and_card_digits_after() {
    let (desk, locator) = TestDesk::new();
    let mut w = CallWire::new(call_config(OnFailure::Announce, false, false), desk);
    let mut trunk = loop_answered(&mut w);
    for k in locator.chars() {
        w.deliver(TRUNK, &info_key(&mut trunk, k));
        assert_eq!(w.next_to_trunk().status(), Some(200));
        w.advance(200);
    }
    assert_eq!(w.locates().len(), 1);
    assert_eq!(w.captures(), 0);
    return_call_answered(&mut w, RETURN_URI);
    for k in "4111".chars() {
        w.deliver(TRUNK, &info_key(&mut trunk, k));
        assert_eq!(w.next_to_trunk().status(), Some(200));
        w.advance(200);
    }
    let sources: Vec<DigitSource> = w
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Capture { source, .. } => Some(*source),
            _ => None,
        })
        .collect();
    assert_eq!(sources, vec![DigitSource::SipInfo; 4]);
    assert_eq!(w.desk.captured(), 4);
    assert!(
        w.cc.is_empty(),
        "a key INFO never reaches the contact centre"
    );
}

/// An inline call set up and answered by the contact centre.
fn inline_answered<D: DeskPort>(w: &mut CallWire<D>) -> (Peer, Peer) {
    let offer = sdp("192.0.2.10", 40000, "0 8 101", "sendrecv");
    w.deliver(TRUNK, &trunk_invite("1", Some(&offer), ""));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    let cc = cc_peer(&inv);
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    let ok = w.next_to_trunk();
    assert_eq!(ok.status(), Some(200));
    let mut trunk = trunk_peer(&ok);
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    assert_eq!(w.next_to_cc().method().unwrap().as_str(), "ACK");
    (trunk, cc)
}

#[test]
fn inline_call_bound_by_the_agents_keyed_locator_captures_the_callers_keys() {
    let (desk, locator) = TestDesk::new();
    let mut w = CallWire::new(call_config(OnFailure::Announce, false, true), desk);
    let _peers = inline_answered(&mut w);
    let call = w.call();
    let plan = w.relay_plan().expect("the relay starts with the call");
    assert!(
        plan.agent_keys && !plan.scrub,
        "scrubbing waits for a session"
    );

    // Keys before the call is bound go to the desk, which has no session for them.
    w.keys(call, KeyFrom::Caller, "12");
    assert_eq!(w.desk.captured(), 0);

    w.keys(call, KeyFrom::Agent, &locator);
    assert_eq!(w.locates(), vec![(locator.clone(), LocateFor::Agent)]);
    assert!(w.actions.contains(&Action::StopAgentKeys { call }));
    assert_eq!(
        w.relays.get(&call),
        Some(&false),
        "the agent is no longer heard"
    );

    w.keys(call, KeyFrom::Caller, CARD);
    assert_eq!(w.desk.captured(), CARD_DIGITS);
    assert_eq!(w.desk.state(), SessionState::Completed { call });
    w.desk.assert_sealed(PAN);
}

#[test]
fn an_agent_locator_that_finds_nothing_can_be_keyed_again() {
    let (desk, locator) = TestDesk::new();
    let mut w = CallWire::new(call_config(OnFailure::Announce, false, true), desk);
    let _peers = inline_answered(&mut w);
    let call = w.call();
    w.keys(call, KeyFrom::Agent, "999999");
    assert!(!w.actions.contains(&Action::StopAgentKeys { call }));
    w.keys(call, KeyFrom::Agent, &locator);
    assert_eq!(w.locates().len(), 2);
    assert!(w.actions.contains(&Action::StopAgentKeys { call }));
}

#[test]
fn a_reinvite_updates_the_running_relay() {
    let (desk, _) = TestDesk::new();
    let mut w = CallWire::new(call_config(OnFailure::Announce, false, false), desk);
    let (mut trunk, _cc) = inline_answered(&mut w);
    let call = w.call();
    let re = sdp("192.0.2.10", 40010, "0 96", "sendrecv").replace(
        "a=sendrecv",
        "a=rtpmap:96 telephone-event/8000\r\na=sendrecv",
    );
    let contact = "Contact: <sip:trunk@192.0.2.10>\r\n";
    w.deliver(TRUNK, &trunk.request("INVITE", Some(&re), contact));
    assert_eq!(w.next_to_trunk().status(), Some(100));
    let inv = w.next_to_cc();
    let answer = sdp("198.51.100.20", 50000, "0 101", "sendrecv");
    w.deliver(CC, &cc_answer(&inv, 200, "OK", Some(&answer)));
    assert_eq!(w.next_to_trunk().status(), Some(200));
    w.deliver(TRUNK, &trunk.request("ACK", None, ""));
    let starts = w
        .actions
        .iter()
        .filter(|a| matches!(a, Action::StartRelay { .. }))
        .count();
    assert_eq!(starts, 1, "one relay for the call");
    let update = w.actions.iter().find_map(|a| match a {
        Action::UpdateRelay {
            call: c,
            a,
            event_pt,
            ..
        } if *c == call => Some((*a, *event_pt)),
        _ => None,
    });
    assert_eq!(
        update,
        Some((Some(addr("192.0.2.10:40010")), Some(Some(96))))
    );
}
