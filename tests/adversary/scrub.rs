//! `scrub = "always"` cannot be switched off: not by an admin token through the API, not by
//! anyone. The attack: switch it off on a live call, then key a card as RFC 4733 events.

use std::time::Duration;

use tonewall::digit::Digit;
use tonewall::net::ua::SipUa;
use tonewall::rtp::packet::RtpView;

use crate::sip::{ADMIN_TOKEN, Relay, end, live_call, ua};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_always_route_cannot_be_switched_off_and_keys_stay_masked() {
    let mut cc = SipUa::bind(ua("agents")).await.unwrap();
    let trunk = SipUa::bind(ua("caller")).await.unwrap();
    let relay = Relay::start(cc.local_addr(), 45_800).await;
    let (a, b) = live_call(&relay, &trunk, &mut cc).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", relay.api);
    let calls = relay.get_json("/v1/calls", ADMIN_TOKEN).await;
    let id = calls["calls"][0]["call_id"].as_str().unwrap().to_string();
    let resp = http
        .put(format!("{base}/v1/calls/{id}/scrub"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "on": false }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 409, "switching off an always route");
    let view = relay
        .get_json(&format!("/v1/calls/{id}"), ADMIN_TOKEN)
        .await;
    assert_eq!(view["scrubbing"], true, "{view}");

    let keys: Vec<Digit> = "4111111111111111"
        .chars()
        .filter_map(Digit::from_char)
        .collect();
    a.send_keys(&keys, 80, 80).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pt = b.event_pt();
    let events = b
        .received_packets()
        .iter()
        .filter(|p| RtpView::parse(p).is_ok_and(|v| Some(v.payload_type()) == pt))
        .count();
    assert!(!b.received_packets().is_empty(), "the agent hears the call");
    assert_eq!(events, 0, "telephone-events reached the agent");
    end(a, b, relay).await;
}
