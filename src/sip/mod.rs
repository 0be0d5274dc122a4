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

/// How SIP reaches a peer (RFC 3261 §18). Named in the config file in lower case.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
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
    fn side_labels_are_fixed() {
        let labels = [Side::Trunk, Side::ContactCentre, Side::Internal].map(Side::label);
        assert_eq!(labels, ["trunk", "contact_centre", "internal"]);
    }
}
