//! Live calls as the control API sees them: what the SIP shell registered (route, parties,
//! start), whether caller→agent scrubbing is on, and the running relay's control channel so
//! the API can switch scrubbing on an on-demand route.
//!
//! The SIP shell owns the calls; this is a view it keeps up to date. Nothing here is on the
//! packet path: it changes when a call starts, its relay starts, or an agent acts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use crate::ids::CallId;
use crate::net::clock::rfc3339;
use crate::net::media::{ControlSender, MediaControl};

/// What the SIP shell tells the registry about a new call.
#[derive(Clone, Debug, Serialize)]
pub struct CallInfo {
    pub route: String,
    /// `inline` or `loop`.
    pub mode: &'static str,
    /// User parts of From and To on the trunk side (the caller's and the dialled number).
    pub from: String,
    pub to: String,
    /// Unix milliseconds.
    #[serde(skip)]
    pub started_ms: u64,
}

#[derive(Debug)]
struct Entry {
    info: CallInfo,
    scrubbing: bool,
    /// The route scrubs always: no switch turns it off.
    always: bool,
    control: Option<ControlSender>,
    /// The agent the call is with, once known: a call bound to a payment session takes the
    /// session's agent; the contact centre's CTI may name it (`PUT /v1/calls/{id}/agent`).
    agent: Option<String>,
}

/// A call as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct CallView {
    pub call_id: CallId,
    #[serde(flatten)]
    pub info: CallInfo,
    pub started_at: String,
    pub scrubbing: bool,
    /// `always` (the route's `scrub = "always"`: cannot be switched off) or `on-demand`.
    pub scrub_mode: &'static str,
    /// The agent the call is with, once known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// Why a scrubbing change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no live call has this id")]
    NotFound,
    #[error("the call's route scrubs always; scrubbing cannot be switched off")]
    AlwaysOn,
}

/// The live calls. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct CallRegistry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    calls: Mutex<HashMap<CallId, Entry>>,
    /// Set when a SIP shell feeds the registry: binding a session then needs a live call.
    attached: AtomicBool,
}

impl CallRegistry {
    fn lock(&self) -> MutexGuard<'_, HashMap<CallId, Entry>> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A SIP shell will register its calls: from now on only registered calls can be bound.
    pub fn attach(&self) {
        self.inner.attached.store(true, Ordering::Relaxed);
    }

    pub fn attached(&self) -> bool {
        self.inner.attached.load(Ordering::Relaxed)
    }

    /// A new call; `always` when its route scrubs always (scrubbing starts on and stays on).
    pub fn started(&self, id: CallId, info: CallInfo, always: bool) {
        self.lock().insert(
            id,
            Entry {
                info,
                scrubbing: always,
                always,
                control: None,
                agent: None,
            },
        );
    }

    /// The call's relay is running: later scrubbing changes go to it. A change made before the
    /// relay started is applied now.
    pub fn media(&self, id: CallId, control: ControlSender, relay_scrubbing: bool) {
        let mut calls = self.lock();
        if let Some(e) = calls.get_mut(&id) {
            if e.scrubbing != relay_scrubbing {
                let _ = control.try_send(MediaControl::Scrub(e.scrubbing));
            }
            e.control = Some(control);
        }
    }

    pub fn ended(&self, id: CallId) {
        self.lock().remove(&id);
    }

    pub fn exists(&self, id: CallId) -> bool {
        self.lock().contains_key(&id)
    }

    /// Switches caller→agent scrubbing. The relay applies it between packets.
    pub fn set_scrubbing(&self, id: CallId, on: bool) -> Result<(), CallError> {
        let mut calls = self.lock();
        let e = calls.get_mut(&id).ok_or(CallError::NotFound)?;
        if e.always && !on {
            return Err(CallError::AlwaysOn);
        }
        e.scrubbing = on;
        if let Some(c) = &e.control
            && c.try_send(MediaControl::Scrub(on)).is_err()
        {
            // The relay's queue is full or it stopped; a stopped relay needs nothing, a full
            // queue gets the command from a task so it is not lost.
            let c = c.clone();
            tokio::spawn(async move {
                let _ = c.send(MediaControl::Scrub(on)).await;
            });
        }
        Ok(())
    }

    /// Tags the call with the agent it is with; `false` when no live call has this id.
    pub fn assign(&self, id: CallId, agent: &str) -> bool {
        match self.lock().get_mut(&id) {
            Some(e) => {
                e.agent = Some(agent.to_string());
                true
            }
            None => false,
        }
    }

    /// The live calls tagged with `agent`, oldest first.
    pub fn list_for(&self, agent: &str) -> Vec<CallView> {
        let mut v = self.list();
        v.retain(|c| c.agent.as_deref() == Some(agent));
        v
    }

    pub fn view(&self, id: CallId) -> Option<CallView> {
        self.lock().get(&id).map(|e| view(id, e))
    }

    /// All live calls, oldest first.
    pub fn list(&self) -> Vec<CallView> {
        let calls = self.lock();
        let mut v: Vec<CallView> = calls.iter().map(|(id, e)| view(*id, e)).collect();
        v.sort_by(|a, b| (a.info.started_ms, &a.call_id).cmp(&(b.info.started_ms, &b.call_id)));
        v
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn view(id: CallId, e: &Entry) -> CallView {
    CallView {
        call_id: id,
        started_at: rfc3339(e.info.started_ms),
        info: e.info.clone(),
        scrubbing: e.scrubbing,
        scrub_mode: if e.always { "always" } else { "on-demand" },
        agent: e.agent.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn info() -> CallInfo {
        CallInfo {
            route: "inline".into(),
            mode: "inline",
            from: "alice".into(),
            to: "agents".into(),
            started_ms: 1_700_000_000_000,
        }
    }

    #[tokio::test]
    async fn scrubbing_set_before_media_reaches_the_relay_when_it_starts() {
        let r = CallRegistry::default();
        r.started(CallId(7), info(), false);
        r.set_scrubbing(CallId(7), true).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        r.media(CallId(7), ControlSender::unattached(tx), false);
        assert_eq!(rx.try_recv(), Ok(MediaControl::Scrub(true)));
        r.set_scrubbing(CallId(7), false).unwrap();
        assert_eq!(rx.try_recv(), Ok(MediaControl::Scrub(false)));
        assert!(!r.view(CallId(7)).unwrap().scrubbing);
        r.ended(CallId(7));
        assert_eq!(r.set_scrubbing(CallId(7), true), Err(CallError::NotFound));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn relay_started_in_the_desired_state_gets_no_command() {
        let r = CallRegistry::default();
        r.started(CallId(1), info(), true);
        let (tx, mut rx) = mpsc::channel(4);
        r.media(CallId(1), ControlSender::unattached(tx), true);
        assert!(rx.try_recv().is_err());
        let json = serde_json::to_string(&r.list()).unwrap();
        assert!(json.contains("\"call_id\":\"1\""), "{json}");
        assert!(json.contains("\"scrubbing\":true"), "{json}");
        assert!(
            json.contains("\"started_at\":\"2023-11-14T22:13:20"),
            "{json}"
        );
        assert!(json.contains("\"scrub_mode\":\"always\""), "{json}");
    }

    #[test]
    fn an_agent_sees_only_the_calls_tagged_with_it() {
        let r = CallRegistry::default();
        r.started(CallId(1), info(), false);
        r.started(CallId(2), info(), false);
        r.started(CallId(3), info(), false);
        assert!(r.assign(CallId(1), "7001"));
        assert!(r.assign(CallId(2), "7002"));
        assert!(!r.assign(CallId(4), "7001"), "no such call");
        let mine: Vec<CallId> = r.list_for("7001").iter().map(|c| c.call_id).collect();
        assert_eq!(mine, vec![CallId(1)]);
        assert!(r.list_for("7003").is_empty());
        assert_eq!(r.list().len(), 3, "admin still sees every call");
        let json = serde_json::to_string(&r.view(CallId(2)).unwrap()).unwrap();
        assert!(json.contains("\"agent\":\"7002\""), "{json}");
    }

    #[tokio::test]
    async fn an_always_call_refuses_to_be_switched_off_and_sends_nothing() {
        let r = CallRegistry::default();
        r.started(CallId(9), info(), true);
        let (tx, mut rx) = mpsc::channel(4);
        r.media(CallId(9), ControlSender::unattached(tx), true);
        assert_eq!(r.set_scrubbing(CallId(9), false), Err(CallError::AlwaysOn));
        assert!(rx.try_recv().is_err(), "no command reaches the relay");
        assert!(r.view(CallId(9)).unwrap().scrubbing);
        assert_eq!(r.set_scrubbing(CallId(9), true), Ok(()));
    }
}
