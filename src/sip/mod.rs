//! SIP signalling, sans-IO: message layer, SDP, transactions and the B2BUA call state machine.

pub mod transaction;
