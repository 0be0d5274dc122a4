//! The call core: one place that owns a call's policy, sans-IO.
//!
//! The B2BUA ([`crate::sip::b2bua`]) owns the SIP side of a call: dialogs, transactions, SDP
//! anchoring. Everything else a call decides lives here, on top of it: the route's flags
//! (scrubbing always or on demand, loop or inline, whether the agent may key a locator), where a
//! key goes (locator material before a loop call is bridged, the agent's locator on an inline
//! call, card capture after), starting and updating the call's relay (codec, telephone-event
//! payload type, scrubbing), announcements and their length.
//!
//! It takes [`Event`]s (SIP messages, keys the relay heard, the payment desk's answers, time)
//! and returns [`Action`]s. The shell (`net::sip`) carries bytes, sockets and time only; the
//! payment desk (`payment::desk`) is reached through [`Action::Locate`] and [`Action::Capture`],
//! whose answers come back as events. Nothing here reads a clock or touches a socket, so a whole
//! call (the loop route's locator, return call, binding and capture included) runs on a virtual
//! clock in tests.

mod core;

pub use core::{
    Action, CallCore, CallCoreConfig, Event, KeyFrom, LocateFor, Note, RelayPlan, RoutePolicy,
};
