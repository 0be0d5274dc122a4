//! What the core keeps: per call (both dialogs, phase, ports, media, the 2xx awaiting its
//! ACK, loop state) and per transaction (what a response or retransmission belongs to).

use std::net::SocketAddr;

use bytes::Bytes;

use super::media::Origin;
use super::types::{CallId, Leg, LegMedia, RelayPorts};
use crate::sip::Transport;
use crate::sip::dialog::Dialog;
use crate::sip::message::Message;
use crate::sip::sdp::Codecs;
use crate::sip::transaction::{ClientTx, ServerTx};

pub(super) type SKey = (SocketAddr, String, String);

#[derive(Debug)]
pub(super) struct ServerEntry {
    pub tx: ServerTx,
    pub call: Option<CallId>,
    pub peer: SocketAddr,
    pub transport: Transport,
    pub request: Message,
}

/// An INVITE relayed from leg `from`, answered through server transaction `server`;
/// `initial` while the call is being set up.
#[derive(Debug, Clone)]
pub(super) struct InviteRelay {
    pub server: SKey,
    pub from: Leg,
    pub initial: bool,
}

#[derive(Debug, Clone)]
pub(super) enum Purpose {
    /// INVITE relayed from another leg.
    Invite(InviteRelay),
    /// Non-INVITE relayed from `from`.
    Relay { server: SKey, from: Leg },
    /// Loop route, A-leg answered by us: our own INVITE to the return number (or fallback).
    Return,
    /// Our own request (BYE, CANCEL): responses need no mapping.
    Own,
    /// Our session refresh (RFC 4028) to the trunk: a 408, a 481 or no answer ends the call.
    Refresh,
}

#[derive(Debug)]
pub(super) struct ClientEntry {
    pub tx: ClientTx,
    pub call: CallId,
    pub leg: Leg,
    /// Where the transaction's retransmissions and ACK go: fixed at send time, since a loop
    /// call's B dialog may move to the fallback while this transaction still lingers.
    pub transport: Transport,
    pub peer: SocketAddr,
    pub purpose: Purpose,
    pub request: Message,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Loop route: waiting for the locator (the A-leg may be answered by us: DTMF mode).
    Locating,
    /// Loop route failed: the failure tone plays to the A-leg until `until`, then BYE.
    Announcing {
        until: u64,
    },
    /// B-leg INVITE outstanding.
    Calling,
    /// A CANCEL (or hang-up) stopped the set-up; the B-leg INVITE may still be answered.
    Cancelling,
    Confirmed,
    Ended {
        at: u64,
    },
}

/// 2xx to an INVITE we answered, resent until its ACK (§13.3.1.4).
#[derive(Debug)]
pub(super) struct Retrans {
    pub leg: Leg,
    pub bytes: Bytes,
    pub next: u64,
    pub interval: u64,
    pub deadline: u64,
}

/// An INVITE relayed from `from` got its 2xx; its ACK must be relayed to the other leg.
#[derive(Debug, Clone, Copy)]
pub(super) struct AckWait {
    pub from: Leg,
    pub from_cseq: u32,
    pub to_cseq: u32,
    /// The 2xx was our own answer (loop call, DTMF mode): the ACK ends here.
    pub own: bool,
}

/// The SIP side of one call: its two dialogs and what is in flight between them (the call's
/// policy is the call core's, `crate::call`).
#[derive(Debug)]
pub(super) struct CallLegs {
    pub route: usize,
    pub phase: Phase,
    pub a: Dialog,
    pub b: Dialog,
    /// Branch of the B-leg INVITE while it is outstanding (for CANCEL).
    pub b_invite: Option<String>,
    pub cancel_pending: bool,
    /// An INVITE transaction in progress in either direction (for 491, §14.1/§14.2).
    pub invite_busy: bool,
    pub ports_a: RelayPorts,
    pub ports_b: RelayPorts,
    pub a_remote: Option<(SocketAddr, Codecs)>,
    pub b_remote: Option<(SocketAddr, Codecs)>,
    pub last_media: Option<(LegMedia, LegMedia)>,
    pub retrans: Option<Retrans>,
    pub ack_wait: Option<AckWait>,
    /// Loop route state (None for inline calls).
    pub lp: Option<LoopCall>,
    /// Each leg's SRTP keys, and the keying epoch last handed to the relay.
    pub srtp: super::srtp::CallSrtp,
    pub last_srtp: u32,
    /// The trunk leg's session timer (RFC 4028), when the trunk asked for one.
    pub timer: Option<super::session_timer::SessionTimer>,
    /// The agent the contact centre's 2xx named (`X-Agent`), for the agent's desk.
    pub agent: Option<String>,
}

impl CallLegs {
    pub(super) fn dialog(&mut self, leg: Leg) -> &mut Dialog {
        match leg {
            Leg::A => &mut self.a,
            Leg::B => &mut self.b,
        }
    }
    pub(super) fn ports(&self, leg: Leg) -> RelayPorts {
        match leg {
            Leg::A => self.ports_a,
            Leg::B => self.ports_b,
        }
    }
    /// Our tag in `leg`'s dialog.
    pub(super) fn local_tag(&self, leg: Leg) -> &str {
        match leg {
            Leg::A => &self.a.local_tag,
            Leg::B => &self.b.local_tag,
        }
    }
    pub(super) fn ended(&self) -> bool {
        matches!(self.phase, Phase::Ended { .. })
    }
    /// Loop call whose A-leg we answered ourselves (DTMF mode).
    pub(super) fn a_answered(&self) -> bool {
        self.lp.as_ref().is_some_and(|l| l.answered)
    }
    /// The trunk's dialog is confirmed: bridged, or a loop call we answered ourselves.
    pub(super) fn a_up(&self) -> bool {
        self.bridged() || (self.a_answered() && !self.ended())
    }
    /// Both legs are up and requests relay between them.
    pub(super) fn bridged(&self) -> bool {
        self.phase == Phase::Confirmed
    }
}

/// A loop call's state beside the common [`CallLegs`] fields.
#[derive(Debug)]
pub(super) struct LoopCall {
    /// The A-leg's initial INVITE server transaction.
    pub server: SKey,
    /// We answered the A-leg ourselves (DTMF mode); otherwise its INVITE is still open.
    pub answered: bool,
    /// End of locating (Phase::Locating).
    pub deadline: u64,
    /// A's offer anchored on the B ports (Request-URI/header mode): the return leg's offer.
    pub offer: Option<Vec<u8>>,
    /// Headers for the return INVITE besides agent and locator (Max-Forwards, identities,
    /// carried headers).
    pub extra: Vec<(String, String)>,
    /// Agent and locator once found.
    pub found: Option<(String, String)>,
    pub fallback_used: bool,
    /// What the A-leg and we agreed on (DTMF mode).
    pub a_codecs: Option<Codecs>,
    pub origin_a: Origin,
    pub origin_b: Origin,
}

/// A request as received: how and from where, its method, and the key of the server
/// transaction it belongs to.
pub(super) struct Incoming {
    pub transport: Transport,
    pub from: SocketAddr,
    pub msg: Message,
    pub method: String,
    pub key: SKey,
}
