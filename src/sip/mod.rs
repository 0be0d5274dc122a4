//! SIP signalling, sans-IO: message layer, SDP, transactions and the B2BUA call state machine.

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
