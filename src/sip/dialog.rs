//! One side of a B2BUA call as an RFC 3261 §12 dialog: identifiers, CSeq space, remote target
//! and route set, and the requests built inside it (§12.2.1.1).
//!
//! A dialog belongs to one leg only: nothing here may copy a header of the other leg, which is
//! what keeps Via, Contact and Record-Route from leaking across the relay.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::sip::Transport;
use crate::sip::error::EditError;
use crate::sip::message::{Message, RequestBuilder};

/// Our side of a dialog with one peer.
#[derive(Debug)]
pub struct Dialog {
    pub call_id: String,
    /// From value of requests we send (our URI and tag).
    pub local: String,
    /// To value of requests we send (their URI, and their tag once known).
    pub remote: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// Request-URI of requests we send (the peer's Contact, §12.1.2).
    pub remote_target: String,
    /// Route set, in the order Route headers carry it (§12.1.1, §12.1.2).
    pub route_set: Vec<String>,
    pub local_cseq: u32,
    pub remote_cseq: Option<u32>,
    /// Where this leg's signalling goes (symmetric signalling: we answer where requests come from).
    pub peer: SocketAddr,
    pub transport: Transport,
    /// ACK we sent for the last 2xx, resent when that 2xx is retransmitted (§13.2.2.4).
    pub last_ack: Option<(u32, Bytes)>,
}

/// What every request we originate carries besides the dialog fields.
pub struct Local<'a> {
    pub via_host: &'a str,
    pub contact: &'a str,
    pub user_agent: &'a str,
}

fn via_value(transport: Transport, host: &str, branch: &str) -> String {
    let t = transport.via_name();
    format!("SIP/2.0/{t} {host};branch={branch};rport")
}

/// Whether a URI (bare or in angle brackets, as a route set keeps it) is a SIPS URI.
pub fn is_sips(uri: &str) -> bool {
    let u = uri.trim_start().trim_start_matches('<');
    u.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("sips:"))
}

impl Dialog {
    /// Whether the dialog is secure end to end: its remote target or first route is a SIPS
    /// URI (RFC 3261 §12.1.1, §12.2.1.1), so our Contact must be one too.
    pub fn secure(&self) -> bool {
        match self.route_set.first() {
            Some(r) => is_sips(r),
            None => is_sips(&self.remote_target),
        }
    }

    /// Builds an in-dialog request (§12.2.1.1). `cseq` overrides the next local CSeq (ACK and
    /// CANCEL reuse the INVITE's number, §13.2.2.4, §9.1).
    pub fn request(
        &mut self,
        method: &str,
        branch: &str,
        local: &Local<'_>,
        cseq: Option<u32>,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
    ) -> Result<Message, EditError> {
        let seq = match cseq {
            Some(n) => n,
            None => {
                self.local_cseq = self.local_cseq.wrapping_add(1);
                self.local_cseq
            }
        };
        let mut b = RequestBuilder::new(method, &self.remote_target)
            .header("Via", &via_value(self.transport, local.via_host, branch));
        // The initial INVITE carries the trunk's Max-Forwards less one in `extra`.
        if !extra
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("Max-Forwards"))
        {
            b = b.header("Max-Forwards", "70");
        }
        for r in &self.route_set {
            b = b.header("Route", r);
        }
        b = b
            .header("From", &self.local)
            .header("To", &self.remote)
            .header("Call-ID", &self.call_id)
            .header("CSeq", &format!("{seq} {method}"));
        if method != "ACK" && method != "CANCEL" && method != "BYE" {
            b = b.header("Contact", local.contact);
        }
        b = b.header("User-Agent", local.user_agent);
        for (n, v) in extra {
            b = b.header(n, v);
        }
        if let Some((ct, body)) = body {
            b = b.body(ct, Bytes::copy_from_slice(body));
        }
        b.build()
    }
}
