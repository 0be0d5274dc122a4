//! RFC 4028 session timers on the trunk's leg (the A-leg, where tonewall is the UAS): the
//! trunk and tonewall each learn that the other has gone, without media or a BYE, and end the
//! call cleanly.
//!
//! Policy. tonewall never asks for a timer; it takes one when the trunk's INVITE carries
//! `Session-Expires`. An interval below our `Min-SE` (90 s, RFC 4028 §4's floor) is answered
//! 422 when the trunk supports timers, and raised to 90 s when it does not (§9, errata 1687).
//! The refresher is the one the trunk named; when it named none, the trunk refreshes if it
//! supports timers (`Supported: timer`), tonewall otherwise (§9).
//! - **Trunk refreshes** (the usual case, and what the cluster design relies on): every
//!   re-INVITE or UPDATE from the trunk restarts the timer. A bodiless UPDATE carries no
//!   offer, so tonewall answers it itself instead of bothering the contact centre; a re-INVITE
//!   is relayed as before and its 2xx carries `Session-Expires`. No refresh within the
//!   interval less min(32 s, interval/3) (§10): both legs get a BYE with a `Reason` (the
//!   trunk has gone) and the call ends as a trunk timeout.
//! - **tonewall refreshes**: a bodiless UPDATE to the trunk at half the interval (§7.4 prefers
//!   UPDATE); a 408, a 481 or no answer at all ends the call (§10), any other answer proves the
//!   trunk is there.
//!
//! Every 2xx to a trunk's INVITE or UPDATE in a call with a timer carries `Session-Expires`
//! (and `Require: timer` when the trunk supports it). The contact centre's leg has no timer:
//! it learns of a dead node from its own media timeout.
//!
//! Must never read a clock (times are passed in) nor panic on what the trunk sent.

#![warn(clippy::unwrap_used, clippy::indexing_slicing)]

use super::B2bua;
use super::context::{Cx, Outgoing, Reply};
use super::state::{Purpose, SKey};
use super::types::{CallId, EndCause, Leg};
use crate::sip::Side;
use crate::sip::message::{Message, Method};

/// Our Min-SE, seconds: the smallest interval RFC 4028 §4 allows.
pub const MIN_SE_S: u32 = 90;

/// Longest interval taken (a day): the arithmetic below stays far from overflow.
const MAX_SE_S: u32 = 86_400;

/// Who sends the refreshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    /// The trunk (`refresher=uac`): tonewall waits for them.
    Trunk,
    /// tonewall (`refresher=uas`): it sends an UPDATE at half the interval.
    Us,
}

/// What a trunk's INVITE or UPDATE asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask {
    /// No `Session-Expires`, or one that does not parse: no timer.
    None,
    /// A timer with this interval and refresher.
    Timer {
        interval_s: u32,
        refresher: Refresher,
        trunk_supports: bool,
    },
    /// The interval is below our Min-SE and the trunk supports timers: 422 with this Min-SE.
    TooSmall { min_se_s: u32 },
}

/// `delta-seconds *( ";" param )`: the number, and the refresher parameter if any.
fn parse_se(value: &[u8]) -> Option<(u32, Option<&str>)> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.split(';');
    let n: u32 = parts.next()?.trim().parse().ok()?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("refresher").then(|| v.trim())
    });
    Some((n, refresher))
}

/// Reads a request's `Session-Expires`, `Min-SE` and `Supported: timer` (RFC 4028 §9).
pub fn ask(msg: &Message) -> Ask {
    let Some((se, refresher)) = msg.get("Session-Expires").and_then(parse_se) else {
        return Ask::None;
    };
    let supports = msg
        .supported()
        .is_ok_and(|t| t.iter().any(|t| t.eq_ignore_ascii_case("timer")));
    let their_min = msg.get("Min-SE").and_then(parse_se).map_or(0, |(n, _)| n);
    let floor = MIN_SE_S.max(their_min).min(MAX_SE_S);
    if se < MIN_SE_S && supports {
        return Ask::TooSmall { min_se_s: floor };
    }
    let interval_s = se.clamp(floor, MAX_SE_S);
    let refresher = match refresher {
        Some(r) if r.eq_ignore_ascii_case("uac") => Refresher::Trunk,
        Some(r) if r.eq_ignore_ascii_case("uas") => Refresher::Us,
        _ if supports => Refresher::Trunk,
        _ => Refresher::Us,
    };
    Ask::Timer {
        interval_s,
        refresher,
        trunk_supports: supports,
    }
}

/// A call's session timer on the trunk leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimer {
    pub interval_s: u32,
    pub refresher: Refresher,
    pub trunk_supports: bool,
    /// When the session was last refreshed (or answered), ms.
    pub refreshed_at: u64,
    /// Our refresh UPDATE is in flight.
    pub refreshing: bool,
}

/// What the timer asks for at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Send our refresh (we are the refresher).
    Refresh,
    /// The trunk did not refresh in time: hang up.
    Expired,
}

impl SessionTimer {
    pub fn new(interval_s: u32, refresher: Refresher, trunk_supports: bool, now: u64) -> Self {
        SessionTimer {
            interval_s,
            refresher,
            trunk_supports,
            refreshed_at: now,
            refreshing: false,
        }
    }

    fn interval_ms(&self) -> u64 {
        u64::from(self.interval_s) * 1000
    }

    /// When the timer next has something to do.
    pub fn deadline(&self) -> Option<u64> {
        let i = self.interval_ms();
        match self.refresher {
            // §10: the BYE goes min(32 s, interval/3) before the session would expire.
            Refresher::Trunk => Some(self.refreshed_at + i - (i / 3).min(32_000)),
            Refresher::Us if self.refreshing => None,
            Refresher::Us => Some(self.refreshed_at + i / 2),
        }
    }

    pub fn due(&self, now: u64) -> Due {
        match self.deadline() {
            Some(d) if now >= d => match self.refresher {
                Refresher::Trunk => Due::Expired,
                Refresher::Us => Due::Refresh,
            },
            _ => Due::Nothing,
        }
    }

    /// A refresh arrived (or our own was answered): the session lives another interval.
    pub fn refreshed(&mut self, now: u64) {
        self.refreshed_at = now;
        self.refreshing = false;
    }

    /// A later request asked for another interval or refresher (§9 applies to refreshes too).
    pub fn renegotiate(&mut self, interval_s: u32, refresher: Refresher, supports: bool) {
        self.interval_s = interval_s;
        self.refresher = refresher;
        self.trunk_supports = supports;
    }

    /// `Session-Expires` (and `Require: timer`) for a 2xx to the trunk (§9), and for our refresh.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let who = match self.refresher {
            Refresher::Trunk => "uac",
            Refresher::Us => "uas",
        };
        let mut h = vec![(
            "Session-Expires",
            format!("{};refresher={who}", self.interval_s),
        )];
        if self.trunk_supports {
            h.push(("Require", "timer".to_owned()));
        }
        h
    }

    /// Headers of our refresh UPDATE towards the trunk (§7.4).
    pub fn refresh_headers(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "Session-Expires",
                format!("{};refresher=uas", self.interval_s),
            ),
            ("Supported", "timer".to_owned()),
        ]
    }
}

/// Whether the answer to our refresh means the trunk's dialog is gone (§10: 408 or 481).
pub fn refresh_failed(status: u16) -> bool {
    matches!(status, 408 | 481)
}

impl B2bua {
    /// `Session-Expires` (and `Require: timer`) for a 2xx answering the request of `server`,
    /// when that is the trunk's INVITE or UPDATE in a call with a timer (RFC 4028 §9).
    pub(super) fn timer_headers(&self, server: &SKey) -> Vec<(&'static str, String)> {
        let Some(e) = self.servers.get(server) else {
            return Vec::new();
        };
        let Some(c) = e.call.and_then(|id| self.calls.get(&id)) else {
            return Vec::new();
        };
        let refresh = matches!(e.request.method(), Some(Method::Invite | Method::Update));
        let from_trunk = e.request.call_id() == Some(c.a.call_id.as_str());
        match c.timer {
            Some(t) if refresh && from_trunk => t.response_headers(),
            _ => Vec::new(),
        }
    }

    /// A re-INVITE or UPDATE from the trunk in a call with a timer: it refreshes the session
    /// (and may change the interval). Returns true when it was answered here: a 422 for an
    /// interval below our Min-SE, or a 200 to a bodiless UPDATE (a pure refresh, §7.4, with
    /// no offer for the contact centre).
    pub(super) fn trunk_refresh(
        &mut self,
        call: CallId,
        key: &SKey,
        req: &Message,
        tag: &str,
        cx: &mut Cx<'_>,
    ) -> bool {
        let Some(t) = self.calls.get_mut(&call).and_then(|c| c.timer.as_mut()) else {
            return false;
        };
        match ask(req) {
            Ask::TooSmall { min_se_s } => {
                let extra = [("Min-SE", min_se_s.to_string())];
                let r = Reply::new(422, "Session Interval Too Small").tag(tag);
                self.reply(key, r.extra(&extra), cx);
                return true;
            }
            Ask::Timer {
                interval_s,
                refresher,
                trunk_supports,
            } => t.renegotiate(interval_s, refresher, trunk_supports),
            Ask::None => {}
        }
        t.refreshed(cx.now);
        if req.method() == Some(Method::Update) && req.body().is_empty() {
            let extra = t.response_headers();
            let extra: Vec<(&str, String)> = extra.into_iter().collect();
            self.reply(key, Reply::new(200, "OK").tag(tag).extra(&extra), cx);
            return true;
        }
        false
    }

    /// One call's session timer: our refresh when we are the refresher, the end of the call
    /// when the trunk's refresh is overdue (§10).
    pub(super) fn session_tick(&mut self, call: CallId, cx: &mut Cx<'_>) {
        let Some(c) = self.calls.get_mut(&call) else {
            return;
        };
        if !c.a_up() {
            return;
        }
        let Some(t) = c.timer.as_mut() else { return };
        match t.due(cx.now) {
            Due::Nothing => {}
            Due::Expired => self.session_gone(call, cx),
            Due::Refresh => {
                t.refreshing = true;
                let extra = t.refresh_headers();
                let req = Outgoing {
                    method: "UPDATE",
                    purpose: Purpose::Refresh,
                    extra: &extra,
                    body: None,
                };
                if self.send_request(call, Leg::A, req, cx).is_none() {
                    // Not buildable (cannot happen with a confirmed dialog): try again later.
                    if let Some(t) = self.calls.get_mut(&call).and_then(|c| c.timer.as_mut()) {
                        t.refreshed(cx.now);
                    }
                }
            }
        }
    }

    /// The trunk answered our refresh: a 408 or 481 means its dialog is gone; anything else
    /// means it is there (a 405 or 501 too: it cannot take UPDATE, but it answered).
    pub(super) fn refresh_answered(&mut self, call: CallId, status: u16, cx: &mut Cx<'_>) {
        if status < 200 {
            return;
        }
        if refresh_failed(status) {
            self.session_gone(call, cx);
        } else if let Some(t) = self.calls.get_mut(&call).and_then(|c| c.timer.as_mut()) {
            t.refreshed(cx.now);
        }
    }

    /// The session expired (§10): both legs get a BYE; the trunk is the side that went.
    pub(super) fn session_gone(&mut self, call: CallId, cx: &mut Cx<'_>) {
        let reason = "SIP;cause=408;text=\"session timer expired\"";
        self.hangup(call, EndCause::Timeout(Side::Trunk), Some(reason), cx);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn invite(extra: &str) -> Message {
        let text = format!(
            "INVITE sip:a@10.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
From: <sip:x@192.0.2.1>;tag=1\r\nTo: <sip:a@10.0.0.1>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\
Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(
            bytes::Bytes::from(text),
            crate::sip::message::Framing::Datagram,
            &crate::sip::message::Limits::default(),
        )
        .unwrap()
    }

    #[test]
    fn no_session_expires_no_timer() {
        assert_eq!(ask(&invite("Supported: timer\r\n")), Ask::None);
        assert_eq!(ask(&invite("Session-Expires: soon\r\n")), Ask::None);
    }

    #[test]
    fn the_trunk_refreshes_when_it_supports_timers_and_names_nobody() {
        let a = ask(&invite("Supported: timer\r\nSession-Expires: 1800\r\n"));
        assert_eq!(
            a,
            Ask::Timer {
                interval_s: 1800,
                refresher: Refresher::Trunk,
                trunk_supports: true
            }
        );
        // Compact form `x`, parameters in any case.
        let a = ask(&invite("k: timer\r\nx: 600;Refresher=UAS\r\n"));
        assert_eq!(
            a,
            Ask::Timer {
                interval_s: 600,
                refresher: Refresher::Us,
                trunk_supports: true
            }
        );
    }

    #[test]
    fn without_support_we_refresh() {
        let a = ask(&invite("Session-Expires: 300\r\n"));
        assert_eq!(
            a,
            Ask::Timer {
                interval_s: 300,
                refresher: Refresher::Us,
                trunk_supports: false
            }
        );
    }

    #[test]
    fn too_small_is_422_with_supports_and_raised_without() {
        assert_eq!(
            ask(&invite("Supported: timer\r\nSession-Expires: 30\r\n")),
            Ask::TooSmall { min_se_s: 90 }
        );
        assert_eq!(
            ask(&invite(
                "Supported: timer\r\nSession-Expires: 30\r\nMin-SE: 120\r\n"
            )),
            Ask::TooSmall { min_se_s: 120 }
        );
        assert_eq!(
            ask(&invite("Session-Expires: 30\r\n")),
            Ask::Timer {
                interval_s: 90,
                refresher: Refresher::Us,
                trunk_supports: false
            }
        );
        // The trunk's own Min-SE raises what we take.
        assert_eq!(
            ask(&invite(
                "Supported: timer\r\nSession-Expires: 100\r\nMin-SE: 150\r\n"
            )),
            Ask::Timer {
                interval_s: 150,
                refresher: Refresher::Trunk,
                trunk_supports: true
            }
        );
        assert!(matches!(
            ask(&invite(
                "Supported: timer\r\nSession-Expires: 4294967295\r\n"
            )),
            Ask::Timer {
                interval_s: MAX_SE_S,
                ..
            }
        ));
    }

    #[test]
    fn deadlines_follow_rfc_4028_section_10() {
        let t = SessionTimer::new(90, Refresher::Trunk, true, 1_000);
        // 90 s less min(32, 30) s.
        assert_eq!(t.deadline(), Some(1_000 + 60_000));
        assert_eq!(t.due(60_999), Due::Nothing);
        assert_eq!(t.due(61_000), Due::Expired);
        let t = SessionTimer::new(1800, Refresher::Trunk, true, 0);
        assert_eq!(t.deadline(), Some(1_768_000));
        let mut t = SessionTimer::new(90, Refresher::Us, false, 0);
        assert_eq!(t.due(45_000), Due::Refresh);
        t.refreshing = true;
        assert_eq!(t.deadline(), None);
        t.refreshed(50_000);
        assert_eq!(t.deadline(), Some(95_000));
    }

    #[test]
    fn headers_name_the_refresher() {
        let t = SessionTimer::new(600, Refresher::Trunk, true, 0);
        assert_eq!(
            t.response_headers(),
            vec![
                ("Session-Expires", "600;refresher=uac".to_owned()),
                ("Require", "timer".to_owned())
            ]
        );
        let t = SessionTimer::new(600, Refresher::Us, false, 0);
        assert_eq!(
            t.response_headers(),
            vec![("Session-Expires", "600;refresher=uas".to_owned())]
        );
        assert!(refresh_failed(481) && refresh_failed(408) && !refresh_failed(501));
    }
}
