//! The relay's Prometheus registry and the payment/API metrics in it, rendered as OpenMetrics
//! text for `GET /metrics`.
//!
//! Labels are fixed, low-cardinality words (an outcome), never ids, digits, PANs or anything a
//! caller keyed: a label value is stored forever and shown to anyone who can scrape.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// One `outcome` label with a value from a fixed list.
pub type OutcomeLabel = [(&'static str, &'static str); 1];

/// One label (`cause`, `direction`, `reason`) with a value from a fixed list.
pub type Label = [(&'static str, &'static str); 1];

/// Payment-session and unlock metrics, plus the registry other shells may add to.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Sessions created.
    pub sessions_created: Counter,
    /// Sessions that ended, by outcome (`unlocked`, `cancelled`, `tries_exhausted`,
    /// `capture_failed`, `call_ended`, `vault_error`, `expired`).
    pub sessions_ended: Family<OutcomeLabel, Counter>,
    /// Sessions holding a locator now.
    pub sessions_live: Gauge,
    /// Numeric keys counted into a capture (how many, never which).
    pub digits_captured: Counter,
    /// Unlock attempts by outcome (`ok`, `wrong_pin`, `tries_exhausted`, `bad_token`, …).
    pub unlocks: Family<OutcomeLabel, Counter>,
    /// Calls the B2BUA accepted.
    pub calls_started: Counter,
    /// Calls in progress.
    pub calls_active: Gauge,
    /// 1 while the node drains (refuses new calls), else 0.
    pub draining: Gauge,
    /// Calls that ended, by cause (`bye_caller`, `bye_agent`, `cancelled`, `rejected`, …) and
    /// by the side it came from or failed on (`trunk`, `contact_centre`, `internal`).
    pub calls_ended: Family<[(&'static str, &'static str); 2], Counter>,
    /// RTP packets relayed, by `direction` (`caller_to_agent`, `agent_to_caller`).
    pub rtp_packets: Family<Label, Counter>,
    /// RTP/RTCP packets dropped, by `reason` (`stranger`, `scrubber`, `no_peer`, `send_error`).
    pub rtp_dropped: Family<Label, Counter>,
    /// DTMF keys heard on the caller→agent direction (how many, never which).
    pub dtmf_keys_heard: Counter,
    /// Audio samples replaced by masking on the agent leg (8 000 per second).
    pub samples_masked: Counter,
    /// RFC 4733 telephone-event packets replaced by masking audio on the agent leg.
    pub events_stripped: Counter,
    /// SIP messages refused because of who sent them, by `reason` (`stranger`,
    /// `wrong_leg_trunk`, `wrong_leg_contact_centre`, `response`).
    pub sip_refused: Family<Label, Counter>,
    /// Connections refused, closed and open, of SIP over TCP and of the API.
    pub conn: crate::net::limits::ConnMetrics,
    /// Locator look-ups refused because their source is locked out after too many misses, by
    /// `surface` (`api`, `sip`).
    pub locator_lookups_refused: Family<Label, Counter>,
    /// Session creations refused, by `reason` (`quota`: the token's live sessions; `limit`:
    /// the relay's).
    pub sessions_refused: Family<Label, Counter>,
    /// 1 while the vault store answers (always, for the in-memory store), 0 while Redis is
    /// unreachable: payment operations then answer 503 `unavailable`; calls go on.
    pub store_up: Gauge,
    /// Operations on the shared store (and connection attempts) that failed.
    pub store_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tonewall");
        let m = Metrics {
            registry: Registry::default(),
            sessions_created: Counter::default(),
            sessions_ended: Family::default(),
            sessions_live: Gauge::default(),
            digits_captured: Counter::default(),
            unlocks: Family::default(),
            calls_started: Counter::default(),
            store_up: Gauge::default(),
            store_errors: Counter::default(),
            calls_active: Gauge::default(),
            draining: Gauge::default(),
            calls_ended: Family::default(),
            rtp_packets: Family::default(),
            rtp_dropped: Family::default(),
            dtmf_keys_heard: Counter::default(),
            samples_masked: Counter::default(),
            events_stripped: Counter::default(),
            sip_refused: Family::default(),
            conn: crate::net::limits::ConnMetrics::default(),
            locator_lookups_refused: Family::default(),
            sessions_refused: Family::default(),
        };
        m.conn.register(&mut registry);
        m.register_calls(&mut registry);
        m.register_media(&mut registry);
        m.register_payment(&mut registry);
        Metrics { registry, ..m }
    }

    /// SIP and call metrics.
    fn register_calls(&self, registry: &mut Registry) {
        registry.register(
            "sip_refused",
            "SIP messages refused because of who sent them, by reason",
            self.sip_refused.clone(),
        );
        registry.register(
            "calls_started",
            "Calls accepted by the B2BUA",
            self.calls_started.clone(),
        );
        registry.register(
            "calls_active",
            "Calls in progress",
            self.calls_active.clone(),
        );
        registry.register(
            "draining",
            "1 while the node drains: new calls and OPTIONS get 503",
            self.draining.clone(),
        );
        registry.register(
            "calls_ended",
            "Calls ended, by cause and by the side that ended or failed them",
            self.calls_ended.clone(),
        );
    }

    /// Media relay metrics (folded from the relays' own counters).
    fn register_media(&self, registry: &mut Registry) {
        registry.register(
            "rtp_packets",
            "RTP packets relayed, by direction",
            self.rtp_packets.clone(),
        );
        registry.register(
            "rtp_dropped",
            "RTP and RTCP packets dropped, by reason",
            self.rtp_dropped.clone(),
        );
        registry.register(
            "dtmf_keys_heard",
            "DTMF keys heard on the caller-to-agent direction (never which)",
            self.dtmf_keys_heard.clone(),
        );
        registry.register(
            "samples_masked",
            "Audio samples replaced by masking on the agent leg",
            self.samples_masked.clone(),
        );
        registry.register(
            "rtp_events_stripped",
            "RFC 4733 telephone-event packets replaced by masking audio on the agent leg",
            self.events_stripped.clone(),
        );
    }

    /// Payment session and locator metrics.
    fn register_payment(&self, registry: &mut Registry) {
        registry.register(
            "payment_sessions_created",
            "Payment sessions created",
            self.sessions_created.clone(),
        );
        registry.register(
            "payment_sessions_ended",
            "Payment sessions ended, by outcome",
            self.sessions_ended.clone(),
        );
        registry.register(
            "payment_sessions_live",
            "Payment sessions holding a locator",
            self.sessions_live.clone(),
        );
        registry.register(
            "payment_digits_captured",
            "Numeric keys counted into card captures (never which)",
            self.digits_captured.clone(),
        );
        registry.register(
            "payment_unlocks",
            "Sealed-record unlock attempts, by outcome",
            self.unlocks.clone(),
        );
        registry.register(
            "locator_lookups_refused",
            "Locator look-ups refused while their source is locked out, by surface",
            self.locator_lookups_refused.clone(),
        );
        registry.register(
            "payment_sessions_refused",
            "Payment session creations refused, by reason",
            self.sessions_refused.clone(),
        );
        registry.register(
            "store_up",
            "1 while the vault store (Redis) answers, 0 while it cannot be reached",
            self.store_up.clone(),
        );
        registry.register(
            "store_errors",
            "Operations on the vault store and connection attempts that failed",
            self.store_errors.clone(),
        );
    }

    /// For the media and SIP shells to register their own metrics before the state is shared.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn session_ended(&self, outcome: &'static str) {
        self.sessions_ended
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    pub fn unlock(&self, outcome: &'static str) {
        self.unlocks.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn call_ended(&self, cause: &'static str, side: &'static str) {
        self.calls_ended
            .get_or_create(&[("cause", cause), ("side", side)])
            .inc();
    }

    pub fn packets(&self, direction: &'static str, n: u64) {
        if n > 0 {
            self.rtp_packets
                .get_or_create(&[("direction", direction)])
                .inc_by(n);
        }
    }

    pub fn dropped(&self, reason: &'static str, n: u64) {
        if n > 0 {
            self.rtp_dropped
                .get_or_create(&[("reason", reason)])
                .inc_by(n);
        }
    }

    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would only drop the body.
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_outcome_labels() {
        let m = Metrics::new();
        m.sessions_created.inc();
        m.unlock("wrong_pin");
        m.unlock("ok");
        m.session_ended("unlocked");
        m.digits_captured.inc_by(23);
        let text = m.render();
        assert!(
            text.contains("tonewall_payment_sessions_created_total 1"),
            "{text}"
        );
        assert!(text.contains("tonewall_payment_unlocks_total{outcome=\"wrong_pin\"} 1"));
        assert!(text.contains("tonewall_payment_digits_captured_total 23"));
        assert!(text.contains("tonewall_payment_sessions_ended_total{outcome=\"unlocked\"} 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
