//! SIP messages as received bytes plus an index (RFC 3261 §7).
//!
//! Owns framing of one message out of a datagram or a stream chunk, the header index (names
//! canonicalised once, compact forms expanded), validation of what a B2BUA relies on, typed
//! views parsed on demand, byte-splicing edits and the request/response builders.
//!
//! Byte transparency: a [`Message`] keeps the bytes it was parsed from; an untouched message
//! serialises to exactly those bytes, and an edit changes only the bytes it targets. It must
//! never re-serialise headers it was not asked to change, never panic on wire input, and never
//! print a body (which may carry DTMF digits in SIP INFO) through `Debug`.

mod build;
mod edit;
mod parse;
mod view;

pub use build::{RequestBuilder, ResponseBuilder};
pub use parse::Rejected;
pub use view::{Framing, HeaderField, Limits, Message, Method};

#[cfg(test)]
mod tests;
