//! Where calls go: the routes the core takes calls on, who may speak on each leg, and which
//! route takes an INVITE (with the locator its Request-URI or a header may carry).
//!
//! The config file's route keys are parsed into these types there; nothing here reads it.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Deserialize;

use super::types::Leg;
use crate::rtp::srtp::SrtpPolicy;
use crate::sip::Transport;
use crate::sip::message::Message;

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RouteMode {
    /// The trunk points at tonewall; every call passes through.
    Inline,
    /// The contact centre transfers calls to tonewall's loop number with a locator.
    Loop,
}

/// Where a loop route looks for the locator: the Request-URI and header in the order
/// configured; DTMF (which means answering the caller) only when those give none.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LocatorSource {
    /// The Request-URI user: `<user>*1234` / `<user>-1234`, or all digits when the route has no user.
    Ruri,
    /// The route's `locator_header` on the INVITE.
    Header,
    /// Digits the caller's leg sends after tonewall answers it.
    Dtmf,
}

/// What a loop route does when the locator is not found.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// A failure tone, then hang up (or 404 when the call was never answered).
    Announce,
    /// Call the route's `fallback` URI instead.
    Fallback,
}

/// Where calls from a set of trunk sources go.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    /// Allowed sources; empty = any.
    pub sources: Vec<IpNet>,
    /// Request-URI user this route matches; `None` = any.
    pub user: Option<String>,
    /// B-leg Request-URI.
    pub target_uri: String,
    /// Where B-leg signalling is sent.
    pub target: SocketAddr,
    pub transport: Transport,
    /// Other addresses the contact centre speaks from (besides the target's and fallback's).
    pub peer_sources: Vec<IpNet>,
    /// Inline: relay at once. Loop: learn a locator first (`loop_route` holds how).
    pub mode: RouteMode,
    /// Set for `RouteMode::Loop` routes.
    pub loop_route: Option<LoopRoute>,
    /// SRTP toward the trunk and toward the contact centre (inline routes; a loop route's
    /// legs stay plain RTP).
    pub srtp_trunk: SrtpPolicy,
    pub srtp_target: SrtpPolicy,
}

/// How a loop route learns its locator and what it does when that fails.
#[derive(Clone, Debug)]
pub struct LoopRoute {
    /// Request-URI and header tried in this order; DTMF (answering the caller) when listed and
    /// neither gave a locator.
    pub locator_from: Vec<LocatorSource>,
    pub locator_header: String,
    pub agent_header: String,
    /// DTMF collection and resolution must end within this (ms).
    pub locator_timeout_ms: u64,
    pub on_failure: OnFailure,
    /// Called when the locator is not found (with `OnFailure::Fallback`) or when the return
    /// call fails: Request-URI and where it is sent.
    pub fallback: Option<(String, SocketAddr)>,
    /// Failure tone length before the BYE (ms).
    pub announce_ms: u64,
}

/// Whether `ip` may send us anything at all: on some route's allow-list, or one of a contact
/// centre's addresses. The SIP TCP accept applies the same rule.
pub fn any_route_allows(routes: &[Route], ip: IpAddr) -> bool {
    routes
        .iter()
        .any(|r| r.may_speak(Leg::A, ip) || r.may_speak(Leg::B, ip))
}

impl Route {
    /// Whether `ip` may send requests and responses on `leg` of a call on this route: the
    /// trunk's allow-list on the A-leg (empty: anyone), the contact centre's addresses on the
    /// B-leg (ARCHITECTURE.md, invariant 6).
    pub fn may_speak(&self, leg: Leg, ip: IpAddr) -> bool {
        // A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        match leg {
            Leg::A => self.sources.is_empty() || self.sources.iter().any(|n| n.contains(&ip)),
            Leg::B => self.is_contact_centre(ip),
        }
    }

    /// The target's host, the fallback's, or one of `peer_sources`.
    fn is_contact_centre(&self, ip: IpAddr) -> bool {
        self.target.ip().to_canonical() == ip
            || self
                .loop_route
                .as_ref()
                .and_then(|l| l.fallback.as_ref())
                .is_some_and(|(_, f)| f.ip().to_canonical() == ip)
            || self.peer_sources.iter().any(|n| n.contains(&ip))
    }
}

/// A locator is a short run of digits.
fn is_locator(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `route` takes a call to `ruri_user`, and the locator the Request-URI carries.
/// `None`: no match. A loop route with user `pay` also takes `pay*1234` / `pay-1234`; one with
/// no user reads an all-digit user as the locator.
pub(super) fn match_user(route: &Route, ruri_user: Option<&str>) -> Option<Option<String>> {
    let Some(lr) = &route.loop_route else {
        return route
            .user
            .as_deref()
            .is_none_or(|u| Some(u) == ruri_user)
            .then_some(None);
    };
    let from_ruri = lr.locator_from.contains(&LocatorSource::Ruri);
    let Some(u) = route.user.as_deref() else {
        let loc = ruri_user.filter(|u| from_ruri && is_locator(u));
        return Some(loc.map(str::to_owned));
    };
    let ru = ruri_user?;
    if ru == u {
        return Some(None);
    }
    let rest = ru.strip_prefix(u)?;
    let loc = ["*", "%2A", "%2a", "-"]
        .iter()
        .find_map(|sep| rest.strip_prefix(sep))?;
    is_locator(loc).then(|| from_ruri.then(|| loc.to_owned()))
}

/// The locator in header `name` of the INVITE, if it holds one.
pub(super) fn header_locator(msg: &Message, name: &str) -> Option<String> {
    msg.get_all(name)
        .filter_map(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .find(|v| is_locator(v))
        .map(str::to_owned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn route(user: Option<&str>, looped: bool) -> Route {
        Route {
            name: "r".into(),
            sources: Vec::new(),
            user: user.map(str::to_owned),
            target_uri: "sip:agents@127.0.0.1:5080".into(),
            target: "127.0.0.1:5080".parse().unwrap(),
            transport: Transport::Udp,
            peer_sources: Vec::new(),
            srtp_trunk: SrtpPolicy::Optional,
            srtp_target: SrtpPolicy::Off,
            mode: if looped {
                RouteMode::Loop
            } else {
                RouteMode::Inline
            },
            loop_route: looped.then(|| LoopRoute {
                locator_from: vec![
                    LocatorSource::Ruri,
                    LocatorSource::Header,
                    LocatorSource::Dtmf,
                ],
                locator_header: "X-Locator".into(),
                agent_header: "X-Agent".into(),
                locator_timeout_ms: 15_000,
                on_failure: OnFailure::Announce,
                fallback: None,
                announce_ms: 3000,
            }),
        }
    }

    fn loop_route(user: Option<&str>) -> Route {
        route(user, true)
    }

    #[test]
    fn request_uri_locators() {
        let r = loop_route(Some("pay"));
        assert_eq!(match_user(&r, Some("pay")), Some(None));
        assert_eq!(match_user(&r, Some("pay*1234")), Some(Some("1234".into())));
        assert_eq!(match_user(&r, Some("pay-99")), Some(Some("99".into())));
        assert_eq!(match_user(&r, Some("pay%2A77")), Some(Some("77".into())));
        assert_eq!(match_user(&r, Some("pay*12a")), None);
        assert_eq!(match_user(&r, Some("payroll")), None);
        assert_eq!(match_user(&r, None), None);
        let any = loop_route(None);
        assert_eq!(
            match_user(&any, Some("5551234")),
            Some(Some("5551234".into()))
        );
        assert_eq!(match_user(&any, Some("loop")), Some(None));
        let inline = route(Some("pay"), false);
        assert_eq!(match_user(&inline, Some("pay*1234")), None);
        assert_eq!(match_user(&inline, Some("pay")), Some(None));
    }
}
