//! What handling one input carries through the core, and the shapes of what it sends.
//!
//! [`Cx`] bundles the time of the input, the shell's port pool and the output list, so the
//! steps of a call take one argument for them instead of three. [`Reply`] and [`Outgoing`]
//! describe a response and a request before the transaction layer sends them.

use std::net::SocketAddr;

use bytes::Bytes;

use super::state::Purpose;
use super::types::{Output, PortAllocator};
use crate::sip::Transport;

/// The time, port pool and outputs of the input being handled.
pub(super) struct Cx<'a> {
    /// Milliseconds on the shell's clock: the core never reads one.
    pub now: u64,
    pub ports: &'a mut dyn PortAllocator,
    pub out: &'a mut Vec<Output>,
}

impl Cx<'_> {
    pub fn send(&mut self, transport: Transport, to: SocketAddr, bytes: Bytes) {
        self.out.push(Output::Send {
            transport,
            to,
            bytes,
        });
    }
}

/// A response to build for a server transaction: status, reason, our To tag (a fresh one
/// when `None`), extra headers and a body.
pub(super) struct Reply<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub to_tag: Option<&'a str>,
    pub extra: &'a [(&'a str, String)],
    pub body: Option<(&'a str, Vec<u8>)>,
}

impl<'a> Reply<'a> {
    pub fn new(status: u16, reason: &'a str) -> Reply<'a> {
        Reply {
            status,
            reason,
            to_tag: None,
            extra: &[],
            body: None,
        }
    }

    pub fn tag(self, tag: &'a str) -> Reply<'a> {
        self.maybe_tag(Some(tag))
    }

    pub fn maybe_tag(mut self, tag: Option<&'a str>) -> Reply<'a> {
        self.to_tag = tag;
        self
    }

    pub fn extra(mut self, extra: &'a [(&'a str, String)]) -> Reply<'a> {
        self.extra = extra;
        self
    }

    pub fn body(mut self, body: Option<(&'a str, Vec<u8>)>) -> Reply<'a> {
        self.body = body;
        self
    }
}

/// A request we originate in a dialog, and what its responses are for.
pub(super) struct Outgoing<'a> {
    pub method: &'a str,
    pub purpose: Purpose,
    pub extra: &'a [(&'a str, String)],
    pub body: Option<(&'a str, &'a [u8])>,
}
