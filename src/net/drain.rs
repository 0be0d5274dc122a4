//! Leaving service gracefully. A drain is ordered from outside the SIP shell, by a signal
//! (SIGTERM: drain, then exit) or by the control API (`POST /v1/admin/drain`: drain and stay
//! up; `DELETE` resumes), and carried out by the SIP shell: the call core refuses new calls
//! and OPTIONS with 503 and hangs up what is left after `sip.drain_s`. This switch is where
//! the order waits for the shell; the shell is the only reader.

use serde::Serialize;
use tokio::sync::watch;

/// What the node has been told to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DrainOrder {
    /// New calls are refused; calls in progress go on until `sip.drain_s` passes.
    pub draining: bool,
    /// The process exits once no call is left (SIGTERM). Never taken back.
    pub exit: bool,
    /// UNIX milliseconds when the drain was ordered (0 while serving).
    pub since_ms: u64,
}

/// Why a resume was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error("the node is shutting down; a drain ordered by a signal cannot be taken back")]
    Exiting,
}

/// The order's one writer side, shared by whoever may give it; the SIP shell subscribes.
#[derive(Debug)]
pub struct DrainSwitch {
    tx: watch::Sender<DrainOrder>,
}

impl Default for DrainSwitch {
    fn default() -> Self {
        DrainSwitch::new()
    }
}

impl DrainSwitch {
    pub fn new() -> DrainSwitch {
        DrainSwitch {
            tx: watch::Sender::new(DrainOrder::default()),
        }
    }

    /// The order now.
    pub fn order(&self) -> DrainOrder {
        *self.tx.borrow()
    }

    /// Orders a drain at `now_ms` (and the exit after it when `exit`). Draining again keeps
    /// the first drain's start, so its deadline does not move; an exit, once asked, stays.
    /// Returns the order in force.
    pub fn drain(&self, exit: bool, now_ms: u64) -> DrainOrder {
        self.tx.send_if_modified(|o| {
            let before = *o;
            if !o.draining {
                o.draining = true;
                o.since_ms = now_ms;
            }
            o.exit |= exit;
            *o != before
        });
        self.order()
    }

    /// Takes calls again, unless the node is on its way out.
    pub fn resume(&self) -> Result<DrainOrder, DrainError> {
        let mut refused = false;
        self.tx.send_if_modified(|o| {
            if o.exit {
                refused = true;
                return false;
            }
            let was = o.draining;
            *o = DrainOrder::default();
            was
        });
        if refused {
            return Err(DrainError::Exiting);
        }
        Ok(self.order())
    }

    /// For the SIP shell: woken on every change of the order.
    pub fn subscribe(&self) -> watch::Receiver<DrainOrder> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_drain_keeps_the_first_start_and_an_exit_stays() {
        let s = DrainSwitch::new();
        assert!(!s.order().draining);
        let first = s.drain(false, 1_000);
        assert_eq!(
            (first.draining, first.exit, first.since_ms),
            (true, false, 1_000)
        );
        let again = s.drain(true, 5_000);
        assert_eq!(
            (again.draining, again.exit, again.since_ms),
            (true, true, 1_000)
        );
        assert_eq!(s.resume(), Err(DrainError::Exiting));
        assert!(s.order().draining, "a refused resume changes nothing");
    }

    #[test]
    fn resume_takes_calls_again_and_wakes_the_shell() {
        let s = DrainSwitch::new();
        let mut rx = s.subscribe();
        s.drain(false, 7);
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        assert_eq!(s.resume().unwrap(), DrainOrder::default());
        assert!(rx.has_changed().unwrap());
        rx.borrow_and_update();
        // Resuming a node that serves is no change: nobody is woken.
        s.resume().unwrap();
        assert!(!rx.has_changed().unwrap());
    }
}
