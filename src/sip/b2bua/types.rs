//! What goes into the core and what comes out: inputs, outputs, call events and end causes,
//! and the two legs and the relay ports a call holds.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::digit::Digit;
pub use crate::ids::CallId;
use crate::sip::message::Message;
use crate::sip::sdp::Codecs;
use crate::sip::{Side, Transport};

/// A-leg: towards the trunk (caller). B-leg: towards the contact centre (agent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    A,
    B,
}

impl Leg {
    pub(super) fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }
}

impl From<Leg> for Side {
    fn from(leg: Leg) -> Side {
        match leg {
            Leg::A => Side::Trunk,
            Leg::B => Side::ContactCentre,
        }
    }
}

/// One RTP/RTCP port pair on the relay's media address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RelayPorts {
    pub rtp: u16,
    pub rtcp: u16,
}

/// The shell's port pool. Allocation is synchronous so the core stays a plain state machine;
/// the core releases everything it allocated when a call ends.
pub trait PortAllocator {
    fn allocate(&mut self) -> Option<RelayPorts>;
    fn release(&mut self, ports: RelayPorts);
}

/// What the shell hands the core.
#[derive(Debug)]
pub enum Input {
    Received {
        transport: Transport,
        from: SocketAddr,
        msg: Message,
    },
    /// Time passed; fire due timers. Call at [`super::B2bua::next_deadline`].
    Tick,
    /// The shell could not carry a message to `peer` over `transport` (connection refused, TLS
    /// handshake failed): the requests waiting on that peer fail now, as if it had answered
    /// 503 (RFC 3261 §8.1.3.1, §17.1.4), instead of when Timer B or F fires.
    TransportFailed {
        transport: Transport,
        peer: SocketAddr,
    },
    /// No media from either side for the configured time: hang up both legs.
    MediaTimeout { call: CallId },
    /// Hang up a call (control API, shutdown).
    Hangup { call: CallId },
    /// Leave service gracefully: refuse new calls (503 with Retry-After, OPTIONS too) and,
    /// `limit_ms` after this input (none: never), hang up the calls still up with a Reason.
    /// A second `Drain` while draining keeps the first deadline.
    Drain { limit_ms: Option<u64> },
    /// Take calls again after a [`Input::Drain`].
    Resume,
    /// Loop route: the answer to [`Output::Locate`].
    Located {
        call: CallId,
        outcome: LocateOutcome,
    },
}

/// What resolving a loop call's locator gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocateOutcome {
    /// The payment session `locator` belongs to `agent`.
    Found {
        agent: String,
        locator: String,
    },
    NotFound,
    /// The source is locked out after too many failed look-ups: refused, no fallback.
    Refused,
}

/// Media of one leg: the relay's ports on that side and what the peer said in SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LegMedia {
    pub local: RelayPorts,
    pub remote: Option<SocketAddr>,
    pub codecs: Codecs,
}

/// Why a call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    ByeFromA,
    ByeFromB,
    Cancelled,
    /// The contact centre refused the call with this status.
    Rejected(u16),
    /// Timer B/F, or no ACK for our 2xx: the side that did not answer.
    Timeout(Side),
    /// The side could not be reached at all (connection refused, TLS handshake failed).
    Unreachable(Side),
    MediaTimeout,
    Hangup,
    /// Still up when the drain limit passed.
    Drained,
    /// Loop route: the locator was not found (or not given in time) and no fallback took the call.
    NotLocated,
    /// Something we could not relay: an SDP answer from that side we cannot use, or
    /// (`Internal`) a message we failed to build.
    Failed(Side),
}

impl EndCause {
    /// Which side ended the call or made it fail, for the log line and a metric label.
    /// Our own decisions (media inactivity, a hang-up from the control API) are `Internal`;
    /// a locator that did not resolve came from the caller's side.
    pub fn side(self) -> Side {
        match self {
            EndCause::ByeFromA | EndCause::Cancelled | EndCause::NotLocated => Side::Trunk,
            EndCause::ByeFromB | EndCause::Rejected(_) => Side::ContactCentre,
            EndCause::MediaTimeout | EndCause::Hangup | EndCause::Drained => Side::Internal,
            EndCause::Timeout(side) | EndCause::Unreachable(side) | EndCause::Failed(side) => side,
        }
    }

    /// Fixed metric label: words of our own, never a status text from the wire.
    pub fn label(self) -> &'static str {
        match self {
            EndCause::ByeFromA => "bye_caller",
            EndCause::ByeFromB => "bye_agent",
            EndCause::Cancelled => "cancelled",
            EndCause::Rejected(_) => "rejected",
            EndCause::Timeout(_) => "timeout",
            EndCause::Unreachable(_) => "unreachable",
            EndCause::MediaTimeout => "media_timeout",
            EndCause::Hangup => "hangup",
            EndCause::Drained => "drained",
            EndCause::NotLocated => "not_located",
            EndCause::Failed(_) => "failed",
        }
    }
}

/// Call life-cycle events for logs and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Started {
        route: String,
        /// User parts of the A-leg's From and Request-URI (the caller's and the dialled
        /// number), for the control API's call list.
        from: String,
        to: String,
    },
    /// Both legs answered; `agent` is who the contact centre's 2xx named (`X-Agent`), if any.
    Answered {
        agent: Option<String>,
    },
    Ended(EndCause),
    /// Loop route: the locator resolved to this agent; the return call is being placed.
    Located {
        agent: String,
    },
    /// Loop route: the locator was not found (or not given in time).
    LocateFailed,
    /// Loop route: the call goes to the route's fallback URI.
    Fallback,
}

/// What the shell must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        transport: Transport,
        to: SocketAddr,
        bytes: Bytes,
    },
    /// (Re)configure the relay after an offer/answer: A-side and B-side ports and peers.
    Media {
        call: CallId,
        a: LegMedia,
        b: LegMedia,
        /// The legs' SRTP transforms when either leg is keyed; new whenever the keys change.
        srtp: Option<Box<super::srtp::RelaySrtp>>,
    },
    /// The call's media ports were released: stop its relay tasks.
    MediaStopped {
        call: CallId,
    },
    /// A DTMF digit the trunk sent in SIP INFO (not forwarded). `Digit` redacts itself.
    Digit {
        call: CallId,
        digit: Digit,
    },
    Event {
        call: CallId,
        event: CallEvent,
    },
    /// Loop route: resolve `locator`, or (None) collect one from the A-leg's DTMF; answer with
    /// [`Input::Located`]. `source` sent the transfer (failed look-ups are limited per source).
    Locate {
        call: CallId,
        locator: Option<String>,
        source: IpAddr,
    },
    /// Loop route failed with on_failure = announce: play the failure tone towards the A-leg.
    /// The core sends BYE after announce_ms.
    Announce {
        call: CallId,
    },
    /// A message from an address that may not send it was refused (answered 403 or dropped);
    /// the shell counts it and logs the source now and then, never the message.
    Refused {
        from: SocketAddr,
        refusal: Refusal,
    },
}

/// What was refused, for the metric label and the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A request from an address on no allow-list (any method, in a dialog or not).
    Stranger,
    /// An in-dialog request from an allowed address that is not this leg's peer (the trunk's
    /// on the contact-centre leg, or the other way round).
    WrongLeg(Leg),
    /// A response from an address other than the one its request went to.
    Response,
}

impl Refusal {
    /// Fixed metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Stranger => "stranger",
            Refusal::WrongLeg(Leg::A) => "wrong_leg_trunk",
            Refusal::WrongLeg(Leg::B) => "wrong_leg_contact_centre",
            Refusal::Response => "response",
        }
    }
}
