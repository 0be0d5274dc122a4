//! SIP signalling, sans-IO: message layer, SDP, transactions and the B2BUA call state machine.
//!
//! Depends on nothing outside itself but leaf crate types (ids, digits): the config file
//! builds its settings from the types here, never the other way round.

pub mod b2bua;
pub mod dialog;
pub mod error;
pub mod framer;
pub mod fuzz;
pub mod headers;
pub mod message;
pub mod sdp;
pub mod transaction;
pub mod uri;

use serde::Deserialize;

/// How SIP reaches a peer (RFC 3261 §18; TLS §26.2). Named in the config file in lower case.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP: the TCP framing, a secure channel underneath.
    Tls,
}

impl Transport {
    /// Whether the transport retransmits for us: timers A, E and G stay off and the waits
    /// of Timers D, I, J and K are zero (RFC 3261 §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
    pub fn reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The transport token of a Via (RFC 3261 §20.42, §26.3.1: "TLS").
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The value of a URI's `transport` parameter and of the config file (RFC 3261 §19.1.1).
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Which side of a call something came from or failed on, for log lines and metric labels:
/// the trunk (caller, A-leg), the contact centre (agent, B-leg), or ourselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    Trunk,
    ContactCentre,
    Internal,
}

impl Side {
    /// Fixed metric label.
    pub fn label(self) -> &'static str {
        match self {
            Side::Trunk => "trunk",
            Side::ContactCentre => "contact_centre",
            Side::Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_names() {
        let all = [Transport::Udp, Transport::Tcp, Transport::Tls];
        assert_eq!(all.map(Transport::via_name), ["UDP", "TCP", "TLS"]);
        assert_eq!(all.map(Transport::param), ["udp", "tcp", "tls"]);
        assert_eq!(all.map(Transport::reliable), [false, true, true]);
    }

    #[test]
    fn side_labels_are_fixed() {
        let labels = [Side::Trunk, Side::ContactCentre, Side::Internal].map(Side::label);
        assert_eq!(labels, ["trunk", "contact_centre", "internal"]);
    }
}
