use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::config::{Config, RouteMode, ScrubMode, Transport};
use crate::digit::{Digit, DigitSource};
use crate::dsp::g711::Codec;
use crate::ids::CallId;
use crate::payment::locator::LocatorCollector;
use crate::sip::b2bua::{
    B2bua, B2buaConfig, B2buaError, CallEvent, EndCause, Input, LegMedia, LocateOutcome, Output,
    PortAllocator, Refusal, RelaySrtp,
};

/// What a route decides for its calls that the B2BUA's `Route` does not say. A route with no
/// policy scrubs on demand and does not listen to the agent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Caller→agent scrubbing from the start, and it cannot be switched off.
    pub scrub_always: bool,
    /// The agent keying a payment session's locator binds the call (inline routes only).
    pub agent_locator: bool,
}

/// A route as the call core applies it: its policy, and what the B2BUA's route says of it.
#[derive(Clone, Copy, Debug)]
struct RouteRule {
    policy: RoutePolicy,
    /// PCI Pal loop model: keys before the return call is bridged are locator material.
    looped: bool,
    /// Loop route: how long the failure tone plays before the B2BUA's BYE.
    announce_ms: u64,
}

/// Settings of the call core: the B2BUA's, and each route's policy by route name.
#[derive(Clone, Debug)]
pub struct CallCoreConfig {
    pub sip: B2buaConfig,
    pub routes: HashMap<String, RoutePolicy>,
    /// Keys in a locator, and the longest gap between two of them (ms).
    pub locator_len: usize,
    pub locator_inter_key_ms: u64,
}

impl CallCoreConfig {
    /// `id_seed` seeds the B2BUA's identifiers (32 bytes from the OS in the shell).
    pub fn from_config(cfg: &Config, id_seed: [u8; 32]) -> Result<CallCoreConfig, B2buaError> {
        let routes = cfg
            .routes
            .iter()
            .map(|r| {
                let policy = RoutePolicy {
                    scrub_always: r.scrub == ScrubMode::Always,
                    agent_locator: r.agent_locator,
                };
                (r.name.clone(), policy)
            })
            .collect();
        Ok(CallCoreConfig {
            sip: cfg.b2bua(id_seed)?,
            routes,
            locator_len: cfg.payment.locator_len,
            locator_inter_key_ms: cfg.payment.locator_inter_key_ms,
        })
    }
}

/// Which direction of the call a key was heard on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFrom {
    /// The caller (trunk side): locator material or card digits.
    Caller,
    /// The agent (contact-centre side), heard only while the call listens for the agent
    /// keying a locator.
    Agent,
}

/// What the shell hands the call core.
#[derive(Debug)]
pub enum Event {
    /// SIP and time for the B2BUA: a received message, a tick, a media timeout, a hang-up.
    Sip(Input),
    /// A key the relay heard. `media_ms` is its onset on the relay's clock: capture uses it to
    /// tell one key's in-band and RFC 4733 copies apart; the core itself uses `now`.
    Key {
        call: CallId,
        from: KeyFrom,
        digit: Digit,
        source: DigitSource,
        media_ms: u64,
    },
    /// The payment desk's answer to [`Action::Locate`] (found means the call is now bound to the
    /// session, capture started).
    Located {
        call: CallId,
        outcome: LocateOutcome,
    },
}

/// Who asked for a locator to be looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocateFor {
    /// A loop call; `source` transferred it (failed look-ups are limited per source).
    Loop { source: IpAddr },
    /// The agent keyed a locator on an inline call.
    Agent,
}

/// How a new relay is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPlan {
    /// The caller's codec when the offer carries no audio the scrubber can tell.
    pub codec: Codec,
    /// The caller's telephone-event payload type.
    pub event_pt: Option<u8>,
    /// Scrub the caller→agent direction from the start.
    pub scrub: bool,
    /// The scrubber refuses to be switched off (the route scrubs always).
    pub always: bool,
    /// Listen for the agent keying a locator.
    pub agent_keys: bool,
}

/// Log-only milestones of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// Loop call answered by tonewall: the caller's keys are read as a locator.
    ReadingLocator,
    LocatorKeyed,
    /// The locator resolved to this agent; the return call is being placed.
    Located {
        agent: String,
    },
    LocateFailed,
    Fallback,
}

/// What the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Send {
        transport: Transport,
        to: SocketAddr,
        bytes: Bytes,
    },
    /// Start the call's relay on the ports the core allocated.
    StartRelay {
        call: CallId,
        a: LegMedia,
        b: LegMedia,
        plan: RelayPlan,
        /// SRTP transforms for either leg or both.
        srtp: Option<Box<RelaySrtp>>,
    },
    /// A re-INVITE on the running relay's ports: new peers, and a new telephone-event payload
    /// type when `event_pt` is set.
    UpdateRelay {
        call: CallId,
        a: Option<SocketAddr>,
        b: Option<SocketAddr>,
        event_pt: Option<Option<u8>>,
        /// New SRTP transforms, when a re-INVITE keyed the legs anew.
        srtp: Option<Box<RelaySrtp>>,
    },
    StopRelay {
        call: CallId,
    },
    /// Play the failure tone towards the caller for `for_ms`, then the core hangs up.
    Announce {
        call: CallId,
        for_ms: u64,
    },
    /// The agent's locator bound the call: stop listening to the agent's keys.
    StopAgentKeys {
        call: CallId,
    },
    /// Find the live session holding `locator` and bind the call to it (capture started); answer
    /// with [`Event::Located`].
    Locate {
        call: CallId,
        locator: String,
        by: LocateFor,
    },
    /// A caller's key on a bridged call: for the payment session bound to the call, if any.
    /// `Digit` redacts itself.
    Capture {
        call: CallId,
        digit: Digit,
        source: DigitSource,
        at_ms: u64,
    },
    Started {
        call: CallId,
        route: String,
        looped: bool,
        from: String,
        to: String,
        scrub: bool,
    },
    Answered {
        call: CallId,
        /// The agent the contact centre named in its answer, for the agent's desk.
        agent: Option<String>,
    },
    /// `known`: the call had started (its start was counted).
    Ended {
        call: CallId,
        cause: EndCause,
        known: bool,
    },
    Note {
        call: CallId,
        note: Note,
    },
    /// A message from an address that may not send it was refused.
    Refused {
        from: SocketAddr,
        refusal: Refusal,
    },
}

/// Where the caller's keys go.
#[derive(Debug)]
enum CallerKeys {
    /// A loop call before it is bridged: locator material while one is read (`collector`),
    /// dropped otherwise (no agent is there to have asked for a card digit).
    PreBridge {
        collector: Option<LocatorCollector>,
        source: IpAddr,
    },
    /// The call is bridged to an agent: card digits for the bound session, if any.
    Capture,
}

/// What the core keeps per live call besides the B2BUA's state.
#[derive(Debug)]
struct CallState {
    rule: RouteRule,
    caller: CallerKeys,
    /// Collecting a locator from the agent's keys (inline route, until bound).
    agent: Option<LocatorCollector>,
    /// A look-up of the agent's locator is outstanding.
    agent_locating: bool,
}

/// The running relay's ports, to tell a re-INVITE from new media.
#[derive(Clone, Copy, Debug)]
struct RelayState {
    a_local: u16,
    b_local: u16,
    event_pt: Option<u8>,
}

/// The call core. See the module docs.
#[derive(Debug)]
pub struct CallCore {
    sip: B2bua,
    routes: HashMap<String, RouteRule>,
    calls: HashMap<CallId, CallState>,
    relays: HashMap<CallId, RelayState>,
    locator_len: usize,
    locator_inter_key_ms: u64,
    /// The B2BUA's outputs of one event, kept to reuse its allocation.
    scratch: Vec<Output>,
}

impl CallCore {
    pub fn new(cfg: CallCoreConfig) -> CallCore {
        // Whether a route loops and how long its tone plays are the B2BUA route's own settings.
        let routes = cfg
            .sip
            .routes
            .iter()
            .map(|r| {
                let policy = cfg.routes.get(&r.name).copied().unwrap_or_default();
                let looped = r.mode == RouteMode::Loop;
                let rule = RouteRule {
                    policy: RoutePolicy {
                        agent_locator: policy.agent_locator && !looped,
                        ..policy
                    },
                    looped,
                    announce_ms: r.loop_route.as_ref().map_or(0, |l| l.announce_ms),
                };
                (r.name.clone(), rule)
            })
            .collect();
        CallCore {
            sip: B2bua::new(cfg.sip),
            routes,
            calls: HashMap::new(),
            relays: HashMap::new(),
            locator_len: cfg.locator_len,
            locator_inter_key_ms: cfg.locator_inter_key_ms,
            scratch: Vec::new(),
        }
    }

    /// When the core next needs an event (ms on the shell's clock), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        self.sip.next_deadline()
    }

    /// Calls the B2BUA still holds (ended ones linger for their transactions).
    pub fn active_calls(&self) -> usize {
        self.sip.active_calls()
    }

    /// Calls that have started and not ended.
    pub fn live_calls(&self) -> Vec<CallId> {
        self.calls.keys().copied().collect()
    }

    /// The SIP core, for reading its routes and state.
    pub fn sip(&self) -> &B2bua {
        &self.sip
    }

    pub fn handle(
        &mut self,
        event: Event,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Action>,
    ) {
        match event {
            Event::Sip(input) => self.sip_input(input, now, ports, out),
            Event::Key {
                call,
                from: KeyFrom::Caller,
                digit,
                source,
                media_ms,
            } => self.caller_key(call, digit, source, media_ms, now, out),
            Event::Key {
                call,
                from: KeyFrom::Agent,
                digit,
                ..
            } => self.agent_key(call, digit, now, out),
            Event::Located { call, outcome } => {
                let agent_lookup = self
                    .calls
                    .get_mut(&call)
                    .is_some_and(|c| std::mem::take(&mut c.agent_locating));
                if agent_lookup {
                    self.agent_located(call, &outcome, out);
                } else {
                    self.sip_input(Input::Located { call, outcome }, now, ports, out);
                }
            }
        }
    }

    fn sip_input(
        &mut self,
        input: Input,
        now: u64,
        ports: &mut dyn PortAllocator,
        out: &mut Vec<Action>,
    ) {
        let mut sip_out = std::mem::take(&mut self.scratch);
        self.sip.handle(input, now, ports, &mut sip_out);
        for o in sip_out.drain(..) {
            self.sip_output(o, now, out);
        }
        self.scratch = sip_out;
    }

    fn sip_output(&mut self, o: Output, now: u64, out: &mut Vec<Action>) {
        match o {
            Output::Send {
                transport,
                to,
                bytes,
            } => out.push(Action::Send {
                transport,
                to,
                bytes,
            }),
            Output::Media { call, a, b, srtp } => self.media(call, (a, b), srtp, out),
            Output::MediaStopped { call } => {
                self.relays.remove(&call);
                out.push(Action::StopRelay { call });
            }
            // The trunk's SIP INFO keys have no media clock: the core's stands in for it.
            Output::Digit { call, digit } => {
                self.caller_key(call, digit, DigitSource::SipInfo, now, now, out)
            }
            Output::Event { call, event } => self.call_event(call, event, out),
            Output::Locate {
                call,
                locator: Some(locator),
                source,
            } => out.push(Action::Locate {
                call,
                locator,
                by: LocateFor::Loop { source },
            }),
            Output::Locate {
                call,
                locator: None,
                source,
            } => {
                let (len, gap) = (self.locator_len, self.locator_inter_key_ms);
                if let Some(c) = self.calls.get_mut(&call) {
                    c.caller = CallerKeys::PreBridge {
                        collector: Some(LocatorCollector::new(len, gap)),
                        source,
                    };
                    out.push(Action::Note {
                        call,
                        note: Note::ReadingLocator,
                    });
                }
            }
            Output::Announce { call } => {
                let for_ms = self.calls.get(&call).map_or(0, |c| c.rule.announce_ms);
                out.push(Action::Announce { call, for_ms });
            }
            Output::Refused { from, refusal } => out.push(Action::Refused { from, refusal }),
        }
    }

    fn call_event(&mut self, call: CallId, event: CallEvent, out: &mut Vec<Action>) {
        match event {
            CallEvent::Started { route, from, to } => {
                let rule = self.routes.get(&route).copied().unwrap_or(RouteRule {
                    policy: RoutePolicy::default(),
                    looped: false,
                    announce_ms: 0,
                });
                let (len, gap) = (self.locator_len, self.locator_inter_key_ms);
                let caller = if rule.looped {
                    CallerKeys::PreBridge {
                        collector: None,
                        source: IpAddr::from([0, 0, 0, 0]),
                    }
                } else {
                    CallerKeys::Capture
                };
                self.calls.insert(
                    call,
                    CallState {
                        rule,
                        caller,
                        agent: rule
                            .policy
                            .agent_locator
                            .then(|| LocatorCollector::new(len, gap)),
                        agent_locating: false,
                    },
                );
                out.push(Action::Started {
                    call,
                    route,
                    looped: rule.looped,
                    from,
                    to,
                    scrub: rule.policy.scrub_always,
                });
            }
            CallEvent::Answered { agent } => {
                // Bridged: from now on the caller's keys are card digits.
                if let Some(c) = self.calls.get_mut(&call) {
                    c.caller = CallerKeys::Capture;
                }
                out.push(Action::Answered { call, agent });
            }
            CallEvent::Ended(cause) => {
                let known = self.calls.remove(&call).is_some();
                out.push(Action::Ended { call, cause, known });
            }
            CallEvent::Located { agent } => out.push(Action::Note {
                call,
                note: Note::Located { agent },
            }),
            CallEvent::LocateFailed => out.push(Action::Note {
                call,
                note: Note::LocateFailed,
            }),
            CallEvent::Fallback => out.push(Action::Note {
                call,
                note: Note::Fallback,
            }),
        }
    }

    /// A key from the caller: locator material before a loop call is bridged, a card digit
    /// after (the desk drops it when no session captures on the call).
    fn caller_key(
        &mut self,
        call: CallId,
        digit: Digit,
        source: DigitSource,
        at_ms: u64,
        now: u64,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = self.calls.get_mut(&call) else {
            return out.push(Action::Capture {
                call,
                digit,
                source,
                at_ms,
            });
        };
        match &mut c.caller {
            CallerKeys::Capture => out.push(Action::Capture {
                call,
                digit,
                source,
                at_ms,
            }),
            CallerKeys::PreBridge { collector, source } => {
                let Some(locator) = collector.as_mut().and_then(|k| k.push(digit, now)) else {
                    return;
                };
                let source = *source;
                *collector = None;
                out.push(Action::Note {
                    call,
                    note: Note::LocatorKeyed,
                });
                out.push(Action::Locate {
                    call,
                    locator: locator.as_str().to_string(),
                    by: LocateFor::Loop { source },
                });
            }
        }
    }

    /// A key the agent pressed on an inline call not yet bound: a completed locator is looked
    /// up (one look-up at a time).
    fn agent_key(&mut self, call: CallId, digit: Digit, now: u64, out: &mut Vec<Action>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if c.agent_locating {
            return;
        }
        let Some(locator) = c.agent.as_mut().and_then(|a| a.push(digit, now)) else {
            return;
        };
        c.agent_locating = true;
        out.push(Action::Locate {
            call,
            locator: locator.as_str().to_string(),
            by: LocateFor::Agent,
        });
    }

    fn agent_located(&mut self, call: CallId, outcome: &LocateOutcome, out: &mut Vec<Action>) {
        if !matches!(outcome, LocateOutcome::Found { .. }) {
            // Not a live session's locator: the agent may key it again.
            return;
        }
        if let Some(c) = self.calls.get_mut(&call) {
            c.agent = None;
        }
        out.push(Action::StopAgentKeys { call });
    }

    /// The B2BUA's media after an offer/answer: a new relay, or the running one updated when
    /// the ports are its own (a re-INVITE).
    fn media(
        &mut self,
        call: CallId,
        (a, b): (LegMedia, LegMedia),
        srtp: Option<Box<RelaySrtp>>,
        out: &mut Vec<Action>,
    ) {
        let event_pt = a.codecs.telephone_event;
        if let Some(r) = self.relays.get_mut(&call) {
            if r.a_local == a.local.rtp && r.b_local == b.local.rtp {
                let changed = (r.event_pt != event_pt).then_some(event_pt);
                r.event_pt = event_pt;
                out.push(Action::UpdateRelay {
                    call,
                    a: a.remote,
                    b: b.remote,
                    event_pt: changed,
                    srtp,
                });
                return;
            }
            self.relays.remove(&call);
            out.push(Action::StopRelay { call });
        }
        let state = self.calls.get(&call);
        // Scrubbing is on unless the route leaves it to the API; a call the core knows
        // nothing of is scrubbed.
        let scrub = state.is_none_or(|c| c.rule.policy.scrub_always);
        let plan = RelayPlan {
            codec: if a.codecs.pcmu.is_some() || a.codecs.pcma.is_none() {
                Codec::Pcmu
            } else {
                Codec::Pcma
            },
            event_pt,
            scrub,
            always: scrub,
            agent_keys: state.is_some_and(|c| c.agent.is_some()),
        };
        self.relays.insert(
            call,
            RelayState {
                a_local: a.local.rtp,
                b_local: b.local.rtp,
                event_pt,
            },
        );
        out.push(Action::StartRelay {
            call,
            a,
            b,
            plan,
            srtp,
        });
    }
}
