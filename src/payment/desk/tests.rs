use super::*;
use crate::payment::session::AgentId;

/// 2026-06-01T00:00:00Z: cards expiring 12/30 are good.
const T0: u64 = 1_780_272_000_000;

fn desk() -> (Desk, Arc<MasterKey>) {
    let master = Arc::new(MasterKey::generate());
    (Desk::new(DeskConfig::default(), master.clone()), master)
}

fn new_session(ttl_ms: Option<u64>) -> NewSession {
    NewSession {
        agent: AgentId::parse("agent-1").unwrap(),
        ttl_ms,
        fields: vec![FieldName::Pan, FieldName::Expiry, FieldName::Cvv],
        amount: None,
        reference: None,
        owner: Some("desk".into()),
        hand_out: false,
    }
}

fn key(c: char) -> Digit {
    Digit::from_char(c).unwrap()
}

/// Feeds `keys` on `call` 200 ms apart on both clocks; returns the last seal job.
fn feed_all(desk: &mut Desk, call: CallId, keys: &str, now: u64) -> Option<SealJob> {
    let mut job = None;
    for (i, c) in keys.chars().enumerate() {
        let t = 200 * i as u64;
        let (_, j) = desk
            .feed(call, key(c), DigitSource::Rfc4733, 1_000 + t, now + t)
            .unwrap();
        job = job.or(j);
    }
    job
}

fn state(desk: &Desk, id: &SessionId) -> SessionState {
    desk.session(id).unwrap().state().clone()
}

#[test]
fn bind_feed_to_completion_gives_a_seal_job_that_opens_with_the_pin() {
    let (mut desk, master) = desk();
    let (created, entry) = desk.create(new_session(None), false, T0).unwrap();
    assert!(entry.is_none());
    let id = created.id;
    assert_eq!(
        desk.locate(created.locator.as_str(), T0).map(|(s, _)| s),
        Some(id)
    );
    let call = CallId(41);
    desk.bind(id, call, true, T0 + 10).unwrap();
    assert_eq!(state(&desk, &id), SessionState::Capturing { call });
    assert_eq!(desk.view(&id).unwrap().call, Some(call));
    assert_eq!(desk.session_on(call), Some(id));
    assert!(desk.take_notices().contains(&Notice::Changed(id)));

    let job = feed_all(&mut desk, call, "4111111111111111#1230123", T0 + 1_000)
        .expect("the last key completes the card");
    assert_eq!(job.id, id);
    assert_eq!(state(&desk, &id), SessionState::Completed { call });
    let card = vault::open(&job.record, &master, &created.pin, &id).unwrap();
    assert_eq!(card.pan().reveal(), "4111111111111111");
    let notices = desk.take_notices();
    let taken = notices
        .iter()
        .filter(|n| matches!(n, Notice::DigitTaken(_)))
        .count();
    assert_eq!(taken, 16 + 4 + 3, "every numeric key counted once");

    desk.stored(&id, T0 + 10_000);
    assert_eq!(desk.take_notices(), [Notice::Changed(id)]);
    desk.unlocked(&id, T0 + 11_000);
    assert_eq!(state(&desk, &id), SessionState::Unlocked);
    assert!(desk.take_notices().contains(&Notice::Ended {
        id,
        outcome: "unlocked"
    }));
}

#[test]
fn keys_need_a_bound_capturing_session() {
    let (mut desk, _) = desk();
    let (created, _) = desk.create(new_session(None), false, T0).unwrap();
    let (call, other) = (CallId(7), CallId(8));
    let feed = |d: &mut Desk, c| d.feed(c, key('4'), DigitSource::InBand, 10, T0).map(|_| ());
    assert_eq!(feed(&mut desk, call), Err(DeskError::NoSession));
    desk.bind(created.id, call, false, T0).unwrap();
    assert_eq!(feed(&mut desk, call), Err(DeskError::NotCapturing));
    let (second, _) = desk.create(new_session(None), false, T0).unwrap();
    assert_eq!(
        desk.bind(second.id, call, true, T0),
        Err(DeskError::CallTaken)
    );
    assert!(matches!(
        desk.bind(created.id, other, true, T0),
        Err(DeskError::Session(SessionError::InvalidTransition { .. }))
    ));
    desk.start(&created.id, T0).unwrap();
    assert_eq!(feed(&mut desk, call), Ok(()));
}

#[test]
fn the_end_of_the_call_fails_its_session_and_frees_the_call() {
    let (mut desk, _) = desk();
    let (created, _) = desk.create(new_session(None), false, T0).unwrap();
    let call = CallId(9);
    desk.bind(created.id, call, true, T0).unwrap();
    feed_all(&mut desk, call, "4111", T0);
    desk.take_notices();
    desk.call_ended(call, T0 + 2_000);
    assert_eq!(
        state(&desk, &created.id),
        SessionState::Failed {
            reason: FailReason::CallEnded
        }
    );
    assert_eq!(desk.session_on(call), None);
    assert_eq!(
        desk.take_notices(),
        [
            Notice::Ended {
                id: created.id,
                outcome: "call_ended"
            },
            Notice::Changed(created.id)
        ]
    );
    // A later call with the same id is not bound to anything.
    assert_eq!(
        desk.feed(call, key('1'), DigitSource::InBand, 0, T0 + 3_000)
            .map(|_| ()),
        Err(DeskError::NoSession)
    );
}

#[test]
fn sessions_expire_on_their_ttl_and_are_forgotten_after_the_linger() {
    let (mut desk, _) = desk();
    let (created, _) = desk.create(new_session(Some(60_000)), false, T0).unwrap();
    let id = created.id;
    assert_eq!(desk.live(), 1);
    desk.advance(T0 + 59_999);
    assert_eq!(state(&desk, &id), SessionState::Created);
    desk.take_notices();
    let tick = desk.tick(T0 + 60_000);
    assert!(tick.seals.is_empty() && tick.withdraw.is_empty());
    assert_eq!(state(&desk, &id), SessionState::Expired);
    assert_eq!(desk.live(), 0);
    assert!(desk.locate(created.locator.as_str(), T0 + 60_000).is_none());
    assert!(desk.take_notices().contains(&Notice::Ended {
        id,
        outcome: "expired"
    }));
    desk.tick(T0 + 60_000 + DEFAULT_LINGER_MS);
    assert!(desk.session(&id).is_none());
    assert_eq!(desk.take_notices(), [Notice::Forgotten(id)]);
}

#[test]
fn a_filed_session_is_claimed_back_before_binding_and_withdrawn_when_it_ends() {
    let (mut desk, master) = desk();
    let (created, entry) = desk.create(new_session(None), true, T0).unwrap();
    let id = created.id;
    let shared = directory::decode(&entry.unwrap(), &master).unwrap();
    assert_eq!(shared.id, id);
    assert_eq!(desk.filed_locator(&id), Some(created.locator.clone()));
    assert_eq!(
        desk.claimed(&id, Some(SessionId::generate())),
        Err(DeskError::TakenElsewhere)
    );
    assert_eq!(desk.claimed(&id, None), Err(DeskError::TakenElsewhere));
    // Still filed: ending it now leaves it to withdraw.
    desk.cancel(&id, T0).unwrap();
    let tick = desk.tick(T0 + 1);
    assert_eq!(tick.withdraw, [(created.locator, id)]);

    let (second, _) = desk.create(new_session(None), true, T0).unwrap();
    desk.claimed(&second.id, Some(second.id)).unwrap();
    assert_eq!(desk.filed_locator(&second.id), None);
    desk.cancel(&second.id, T0).unwrap();
    assert!(desk.tick(T0 + 1).withdraw.is_empty());
}

#[test]
fn another_relays_session_is_adopted_and_captured_here() {
    let (mut elsewhere, master) = desk();
    let (created, entry) = elsewhere.create(new_session(None), true, T0).unwrap();
    let shared = directory::decode(&entry.unwrap(), &master).unwrap();
    let mut desk = Desk::new(DeskConfig::default(), master.clone());
    let (id, agent) = desk.adopt(shared, T0 + 5).unwrap();
    assert_eq!((id, agent.as_str()), (created.id, "agent-1"));
    assert_eq!(desk.filed_locator(&id), None, "this relay filed nothing");
    desk.bind(id, CallId(3), true, T0 + 10).unwrap();
    let job = feed_all(&mut desk, CallId(3), "4111111111111111#1230123", T0 + 20).unwrap();
    let card = vault::open(&job.record, &master, &created.pin, &id).unwrap();
    assert_eq!(card.cvv().unwrap().reveal(), "123");
}

#[test]
fn media_time_maps_onto_the_desk_clock_with_one_offset_per_session() {
    let (mut desk, _) = desk();
    let (created, _) = desk.create(new_session(None), false, T0).unwrap();
    let id = created.id;
    let call = CallId(5);
    desk.bind(id, call, true, T0).unwrap();
    let timeout = DeskConfig::default().capture.inter_digit_timeout_ms;
    let deadline = |d: &Desk| d.view(&id).unwrap().capture.next_deadline();
    // The first key anchors the media clock (any base) at the desk's now.
    desk.feed(call, key('4'), DigitSource::Rfc4733, 1_000, T0 + 100)
        .unwrap();
    assert_eq!(deadline(&desk), Some(T0 + 100 + timeout));
    // A key delivered late keeps its media spacing: 200 ms after the first, not 5 s.
    desk.feed(call, key('1'), DigitSource::Rfc4733, 1_200, T0 + 5_100)
        .unwrap();
    assert_eq!(deadline(&desk), Some(T0 + 300 + timeout));
    // A media clock that jumped (a new leg) is anchored again.
    desk.feed(call, key('1'), DigitSource::Rfc4733, 900_000, T0 + 5_200)
        .unwrap();
    assert_eq!(deadline(&desk), Some(T0 + 5_200 + timeout));
    // The inter-digit timeout ends the field on the desk's clock.
    assert!(desk.tick(T0 + 5_200 + timeout - 1).seals.is_empty());
    desk.take_notices();
    desk.tick(T0 + 5_200 + timeout);
    assert!(desk.take_notices().contains(&Notice::Changed(id)));
    assert_eq!(deadline(&desk), None);
}

#[test]
fn a_capture_over_refuses_commands() {
    let (mut desk, _) = desk();
    let (created, _) = desk.create(new_session(None), false, T0).unwrap();
    let id = created.id;
    desk.bind(id, CallId(1), true, T0).unwrap();
    desk.reset(&id, T0).unwrap();
    assert_eq!(
        desk.request_field(&id, FieldName::Other("x".into()), T0),
        Err(DeskError::Capture(CaptureError::UnknownField))
    );
    feed_all(&mut desk, CallId(1), "4111111111111111#1230123", T0).unwrap();
    assert_eq!(desk.reset(&id, T0 + 10_000), Err(DeskError::CaptureOver));
    assert_eq!(
        desk.reset(&SessionId::generate(), T0),
        Err(DeskError::NotFound)
    );
}

#[test]
fn a_confirming_session_seals_only_after_the_cvv_is_keyed_twice_alike() {
    let (mut desk, master) = desk();
    let (created, _) = desk
        .create_confirming(new_session(None), &[FieldName::Cvv], false, T0)
        .unwrap();
    let id = created.id;
    let call = CallId(5);
    desk.bind(id, call, true, T0).unwrap();
    assert!(feed_all(&mut desk, call, "4111111111111111#1230123", T0 + 1_000).is_none());
    let cvv = desk
        .view(&id)
        .unwrap()
        .capture
        .progress()
        .into_iter()
        .find(|p| p.field == FieldName::Cvv)
        .unwrap();
    assert!(cvv.confirming, "the first CVV entry waits for its twin");
    let job = feed_all(&mut desk, call, "123", T0 + 10_000).expect("the twin seals it");
    let card = vault::open(&job.record, &master, &created.pin, &id).unwrap();
    assert_eq!(card.cvv().unwrap().reveal(), "123");
    // A confirm list naming a field the session does not capture is refused.
    let mut pan_only = new_session(None);
    pan_only.fields = vec![FieldName::Pan];
    assert_eq!(
        desk.create_confirming(pan_only, &[FieldName::Cvv], false, T0)
            .err(),
        Some(DeskError::Capture(CaptureError::UnknownField))
    );
}

#[test]
fn owned_by_lists_only_the_owners_sessions_newest_first() {
    let (mut desk, _) = desk();
    let (a, _) = desk.create(new_session(None), false, T0).unwrap();
    let mut other = new_session(None);
    other.owner = Some("someone-else".into());
    desk.create(other, false, T0 + 1).unwrap();
    let (b, _) = desk.create(new_session(None), false, T0 + 2).unwrap();
    assert_eq!(desk.owned_by("desk"), vec![b.id, a.id]);
    assert!(desk.owned_by("nobody").is_empty());
}
