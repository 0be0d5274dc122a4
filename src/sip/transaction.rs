//! RFC 3261 §17 transactions as sans-IO state machines.
//!
//! A transaction owns the bytes it may have to send again and the timers that say when; it
//! never parses, never touches a socket and never reads a clock. The caller feeds it what
//! arrived and the current time in milliseconds, and performs the returned [`TxAction`]s. Matching
//! messages to transactions (branch, sent-by, method: §17.1.3, §17.2.3) is the caller's job.
//!
//! Over reliable transports (TCP) nothing is retransmitted and the wait states last zero time
//! (§17.1.1.2 Timer D, §17.1.2.2 Timer K, §17.2.1 Timer I, §17.2.2 Timer J).

use bytes::Bytes;

/// RFC 3261 §17.1.1.1 timer base values, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (default 500 ms).
    pub t1: u64,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: u64,
    /// Maximum time a message stays in the network (5 s).
    pub t4: u64,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: 500,
            t2: 4000,
            t4: 5000,
        }
    }
}

/// INVITE transactions differ from all others (§17).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxKind {
    Invite,
    NonInvite,
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxAction {
    /// Send these bytes to the transaction's peer.
    Send(Bytes),
    /// Timer B or F fired (or a transport error): the TU treats it as a 408 (§8.1.3.1).
    Timeout,
    /// The transaction is over; remove it from the table.
    Terminated,
}

/// What to do with a response that reached a client transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseFate {
    /// Hand it to the transaction user.
    PassUp,
    /// A retransmission the TU has already seen.
    Absorb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, nothing back yet (§17.1.1.2).
    Calling,
    /// Non-INVITE sent, nothing back yet (§17.1.2.2).
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// A client transaction (§17.1).
#[derive(Debug)]
pub struct ClientTx {
    kind: TxKind,
    state: ClientState,
    timers: TimerConfig,
    reliable: bool,
    request: Bytes,
    /// ACK for a non-2xx final response, resent for every retransmitted final (§17.1.1.3).
    ack: Option<Bytes>,
    /// Timer A / E: next retransmission and the current interval.
    retransmit_at: Option<u64>,
    interval: u64,
    /// Timer B / F.
    timeout_at: Option<u64>,
    /// Timer D / K.
    linger_until: Option<u64>,
}

impl ClientTx {
    /// Starts a transaction by sending `request` (§17.1.1.2, §17.1.2.2).
    pub fn start(
        kind: TxKind,
        request: Bytes,
        reliable: bool,
        timers: TimerConfig,
        now: u64,
    ) -> (ClientTx, Vec<TxAction>) {
        let tx = ClientTx {
            kind,
            state: match kind {
                TxKind::Invite => ClientState::Calling,
                TxKind::NonInvite => ClientState::Trying,
            },
            timers,
            reliable,
            request: request.clone(),
            ack: None,
            retransmit_at: (!reliable).then_some(now + timers.t1),
            interval: timers.t1,
            timeout_at: Some(now + 64 * timers.t1),
            linger_until: None,
        };
        (tx, vec![TxAction::Send(request)])
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    pub fn kind(&self) -> TxKind {
        self.kind
    }

    /// The request this transaction sent (e.g. to build a CANCEL from it).
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// A response with `status` arrived. For a non-2xx final response to an INVITE, `ack`
    /// must be the ACK the caller built for it (§17.1.1.3); it is sent now and for every
    /// retransmission of that response.
    pub fn on_response(
        &mut self,
        status: u16,
        ack: Option<Bytes>,
        now: u64,
    ) -> (ResponseFate, Vec<TxAction>) {
        let mut actions = Vec::new();
        let provisional = status < 200;
        let fate = match (self.kind, self.state) {
            (_, ClientState::Terminated) => ResponseFate::Absorb,
            (TxKind::Invite, ClientState::Calling | ClientState::Proceeding) => {
                if provisional {
                    // §17.1.1.2: a provisional response stops Timer A, not Timer B... B keeps
                    // running only in Calling; in Proceeding the TU decides (it may CANCEL).
                    self.state = ClientState::Proceeding;
                    self.retransmit_at = None;
                    self.timeout_at = None;
                } else if status < 300 {
                    // 2xx: the TU (dialog layer) sends the ACK; the transaction is done.
                    self.state = ClientState::Terminated;
                    actions.push(TxAction::Terminated);
                } else {
                    self.state = ClientState::Completed;
                    self.retransmit_at = None;
                    self.timeout_at = None;
                    self.ack = ack;
                    if let Some(a) = &self.ack {
                        actions.push(TxAction::Send(a.clone()));
                    }
                    let d = if self.reliable { 0 } else { 32_000 };
                    self.linger_until = Some(now + d);
                    if self.reliable {
                        self.state = ClientState::Terminated;
                        actions.push(TxAction::Terminated);
                    }
                }
                ResponseFate::PassUp
            }
            (TxKind::Invite, ClientState::Completed) => {
                // §17.1.1.2: retransmitted final response: ACK again, tell nobody.
                if !provisional && let Some(a) = &self.ack {
                    actions.push(TxAction::Send(a.clone()));
                }
                ResponseFate::Absorb
            }
            (TxKind::NonInvite, ClientState::Trying | ClientState::Proceeding) => {
                if provisional {
                    self.state = ClientState::Proceeding;
                    // §17.1.2.2: in Proceeding, retransmit every T2.
                    if !self.reliable {
                        self.interval = self.timers.t2;
                        self.retransmit_at = Some(now + self.timers.t2);
                    }
                } else {
                    self.state = ClientState::Completed;
                    self.retransmit_at = None;
                    self.timeout_at = None;
                    if self.reliable {
                        self.state = ClientState::Terminated;
                        actions.push(TxAction::Terminated);
                    } else {
                        self.linger_until = Some(now + self.timers.t4);
                    }
                }
                ResponseFate::PassUp
            }
            (TxKind::NonInvite, ClientState::Completed) => ResponseFate::Absorb,
            (_, ClientState::Calling | ClientState::Trying) => ResponseFate::PassUp,
        };
        (fate, actions)
    }

    /// The transport reported the request undeliverable (§17.1.4).
    pub fn on_transport_error(&mut self) -> Vec<TxAction> {
        if self.state == ClientState::Terminated {
            return Vec::new();
        }
        self.state = ClientState::Terminated;
        vec![TxAction::Timeout, TxAction::Terminated]
    }

    /// When [`ClientTx::poll`] next has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        [self.retransmit_at, self.timeout_at, self.linger_until]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires every timer due at `now`.
    pub fn poll(&mut self, now: u64) -> Vec<TxAction> {
        let mut actions = Vec::new();
        if self.state == ClientState::Terminated {
            return actions;
        }
        if let Some(t) = self.timeout_at
            && now >= t
        {
            // Timer B (§17.1.1.2) / Timer F (§17.1.2.2).
            self.state = ClientState::Terminated;
            self.retransmit_at = None;
            self.timeout_at = None;
            actions.push(TxAction::Timeout);
            actions.push(TxAction::Terminated);
            return actions;
        }
        if let Some(t) = self.retransmit_at
            && now >= t
        {
            actions.push(TxAction::Send(self.request.clone()));
            // Timer A doubles without bound (B ends it); Timer E is capped at T2.
            self.interval = match self.kind {
                TxKind::Invite => self.interval * 2,
                TxKind::NonInvite if self.state == ClientState::Proceeding => self.timers.t2,
                TxKind::NonInvite => (self.interval * 2).min(self.timers.t2),
            };
            self.retransmit_at = Some(now + self.interval);
        }
        if let Some(t) = self.linger_until
            && now >= t
        {
            self.state = ClientState::Terminated;
            self.linger_until = None;
            actions.push(TxAction::Terminated);
        }
        actions
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE request received, no response yet (§17.2.2).
    Trying,
    Proceeding,
    Completed,
    /// INVITE only: ACK received for a non-2xx final (§17.2.1).
    Confirmed,
    Terminated,
}

/// A server transaction (§17.2).
#[derive(Debug)]
pub struct ServerTx {
    kind: TxKind,
    state: ServerState,
    timers: TimerConfig,
    reliable: bool,
    last_response: Option<Bytes>,
    /// Timer G (INVITE non-2xx retransmission).
    retransmit_at: Option<u64>,
    interval: u64,
    /// Timer H: give up waiting for the ACK.
    ack_deadline: Option<u64>,
    /// Timers I / J.
    linger_until: Option<u64>,
}

impl ServerTx {
    /// A new request arrived. For INVITE the caller sends 100 Trying at once through
    /// [`ServerTx::respond`] (§17.2.1: the TU may not answer within 200 ms).
    pub fn new(kind: TxKind, reliable: bool, timers: TimerConfig) -> ServerTx {
        ServerTx {
            kind,
            state: match kind {
                TxKind::Invite => ServerState::Proceeding,
                TxKind::NonInvite => ServerState::Trying,
            },
            timers,
            reliable,
            last_response: None,
            retransmit_at: None,
            interval: timers.t1,
            ack_deadline: None,
            linger_until: None,
        }
    }

    pub fn state(&self) -> ServerState {
        self.state
    }

    pub fn kind(&self) -> TxKind {
        self.kind
    }

    /// The TU answers with `status`; `bytes` is the response to send.
    pub fn respond(&mut self, status: u16, bytes: Bytes, now: u64) -> Vec<TxAction> {
        let mut actions = Vec::new();
        match self.state {
            ServerState::Trying | ServerState::Proceeding => {}
            // §17.2.1/§17.2.2: once final, later responses from the TU are not sent.
            _ => return actions,
        }
        actions.push(TxAction::Send(bytes.clone()));
        self.last_response = Some(bytes);
        if status < 200 {
            self.state = ServerState::Proceeding;
            return actions;
        }
        match self.kind {
            TxKind::Invite if status < 300 => {
                // §17.2.1: 2xx ends the transaction; the TU retransmits 2xx until the ACK (§13.3.1.4).
                self.state = ServerState::Terminated;
                actions.push(TxAction::Terminated);
            }
            TxKind::Invite => {
                self.state = ServerState::Completed;
                if !self.reliable {
                    self.retransmit_at = Some(now + self.timers.t1);
                }
                self.ack_deadline = Some(now + 64 * self.timers.t1);
            }
            TxKind::NonInvite => {
                self.state = ServerState::Completed;
                if self.reliable {
                    self.state = ServerState::Terminated;
                    actions.push(TxAction::Terminated);
                } else {
                    self.linger_until = Some(now + 64 * self.timers.t1);
                }
            }
        }
        actions
    }

    /// The same request arrived again: resend the last response, if any (§17.2.1, §17.2.2).
    pub fn on_retransmission(&mut self) -> Vec<TxAction> {
        match (self.state, &self.last_response) {
            (ServerState::Proceeding | ServerState::Completed, Some(r)) => {
                vec![TxAction::Send(r.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// An ACK matched this INVITE transaction (only for non-2xx finals, §17.2.3).
    pub fn on_ack(&mut self, now: u64) -> Vec<TxAction> {
        if self.kind != TxKind::Invite || self.state != ServerState::Completed {
            return Vec::new();
        }
        self.state = ServerState::Confirmed;
        self.retransmit_at = None;
        self.ack_deadline = None;
        if self.reliable {
            self.state = ServerState::Terminated;
            return vec![TxAction::Terminated];
        }
        self.linger_until = Some(now + self.timers.t4);
        Vec::new()
    }

    pub fn next_deadline(&self) -> Option<u64> {
        [self.retransmit_at, self.ack_deadline, self.linger_until]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn poll(&mut self, now: u64) -> Vec<TxAction> {
        let mut actions = Vec::new();
        if self.state == ServerState::Terminated {
            return actions;
        }
        if let Some(t) = self.ack_deadline
            && now >= t
        {
            // Timer H: the ACK never came (§17.2.1).
            self.state = ServerState::Terminated;
            self.retransmit_at = None;
            self.ack_deadline = None;
            actions.push(TxAction::Timeout);
            actions.push(TxAction::Terminated);
            return actions;
        }
        if let Some(t) = self.retransmit_at
            && now >= t
            && let Some(r) = &self.last_response
        {
            // Timer G: min(2^n·T1, T2).
            actions.push(TxAction::Send(r.clone()));
            self.interval = (self.interval * 2).min(self.timers.t2);
            self.retransmit_at = Some(now + self.interval);
        }
        if let Some(t) = self.linger_until
            && now >= t
        {
            self.state = ServerState::Terminated;
            self.linger_until = None;
            actions.push(TxAction::Terminated);
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    /// Runs a client transaction on a virtual clock until `until`, returning (time, action) pairs.
    fn drive_client(tx: &mut ClientTx, until: u64) -> Vec<(u64, TxAction)> {
        let mut out = Vec::new();
        while let Some(t) = tx.next_deadline() {
            if t > until {
                break;
            }
            for a in tx.poll(t) {
                out.push((t, a));
            }
        }
        out
    }

    #[test]
    fn invite_over_udp_retransmits_on_timer_a_and_times_out_on_timer_b() {
        let (mut tx, first) = ClientTx::start(
            TxKind::Invite,
            b("INVITE"),
            false,
            TimerConfig::default(),
            0,
        );
        assert_eq!(first, vec![TxAction::Send(b("INVITE"))]);
        let events = drive_client(&mut tx, 40_000);
        let sends: Vec<u64> = events
            .iter()
            .filter(|(_, a)| matches!(a, TxAction::Send(_)))
            .map(|(t, _)| *t)
            .collect();
        // Timer A: 500, 1000, 2000, 4000, 8000, 16000 ms apart, until Timer B at 64·T1 = 32 s.
        assert_eq!(sends, vec![500, 1500, 3500, 7500, 15500, 31500]);
        let timeout = events
            .iter()
            .find(|(_, a)| *a == TxAction::Timeout)
            .unwrap();
        assert_eq!(timeout.0, 32_000);
        assert_eq!(tx.state(), ClientState::Terminated);
    }

    #[test]
    fn provisional_response_stops_invite_retransmission() {
        let (mut tx, _) = ClientTx::start(
            TxKind::Invite,
            b("INVITE"),
            false,
            TimerConfig::default(),
            0,
        );
        let (fate, _) = tx.on_response(100, None, 200);
        assert_eq!(fate, ResponseFate::PassUp);
        assert_eq!(tx.state(), ClientState::Proceeding);
        assert!(
            drive_client(&mut tx, 100_000).is_empty(),
            "no retransmission, no Timer B"
        );
    }

    #[test]
    fn non_2xx_final_to_invite_is_acked_and_retransmissions_absorbed() {
        let (mut tx, _) = ClientTx::start(
            TxKind::Invite,
            b("INVITE"),
            false,
            TimerConfig::default(),
            0,
        );
        let (fate, acts) = tx.on_response(486, Some(b("ACK")), 100);
        assert_eq!(fate, ResponseFate::PassUp);
        assert_eq!(acts, vec![TxAction::Send(b("ACK"))]);
        let (fate, acts) = tx.on_response(486, None, 600);
        assert_eq!(fate, ResponseFate::Absorb);
        assert_eq!(
            acts,
            vec![TxAction::Send(b("ACK"))],
            "ACK resent for each retransmission"
        );
        // Timer D: 32 s over UDP.
        let ev = drive_client(&mut tx, 40_000);
        assert_eq!(ev, vec![(32_100, TxAction::Terminated)]);
    }

    #[test]
    fn invite_2xx_terminates_the_client_transaction_at_once() {
        let (mut tx, _) = ClientTx::start(
            TxKind::Invite,
            b("INVITE"),
            false,
            TimerConfig::default(),
            0,
        );
        let (fate, acts) = tx.on_response(200, None, 50);
        assert_eq!(fate, ResponseFate::PassUp);
        assert_eq!(acts, vec![TxAction::Terminated]);
        let (fate, _) = tx.on_response(200, None, 60);
        assert_eq!(fate, ResponseFate::Absorb);
    }

    #[test]
    fn non_invite_over_udp_follows_timer_e_capped_at_t2_and_timer_f() {
        let (mut tx, _) = ClientTx::start(
            TxKind::NonInvite,
            b("BYE"),
            false,
            TimerConfig::default(),
            0,
        );
        let events = drive_client(&mut tx, 40_000);
        let sends: Vec<u64> = events
            .iter()
            .filter(|(_, a)| matches!(a, TxAction::Send(_)))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            sends,
            vec![
                500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
            ]
        );
        assert!(events.contains(&(32_000, TxAction::Timeout)));
    }

    #[test]
    fn non_invite_proceeding_retransmits_every_t2_and_completes_for_t4() {
        let (mut tx, _) = ClientTx::start(
            TxKind::NonInvite,
            b("INFO"),
            false,
            TimerConfig::default(),
            0,
        );
        tx.on_response(100, None, 100);
        let ev = drive_client(&mut tx, 9000);
        let sends: Vec<u64> = ev.iter().map(|(t, _)| *t).collect();
        assert_eq!(sends, vec![4100, 8100]);
        let (fate, _) = tx.on_response(200, None, 9000);
        assert_eq!(fate, ResponseFate::PassUp);
        assert_eq!(tx.on_response(200, None, 9100).0, ResponseFate::Absorb);
        assert_eq!(
            drive_client(&mut tx, 20_000),
            vec![(14_000, TxAction::Terminated)]
        );
    }

    #[test]
    fn reliable_transport_never_retransmits_and_does_not_linger() {
        let (mut tx, _) =
            ClientTx::start(TxKind::NonInvite, b("BYE"), true, TimerConfig::default(), 0);
        let (_, acts) = tx.on_response(200, None, 10);
        assert_eq!(acts, vec![TxAction::Terminated]);
        let (mut inv, _) =
            ClientTx::start(TxKind::Invite, b("INVITE"), true, TimerConfig::default(), 0);
        let ev = drive_client(&mut inv, 40_000);
        assert_eq!(
            ev,
            vec![(32_000, TxAction::Timeout), (32_000, TxAction::Terminated)]
        );
    }

    #[test]
    fn server_invite_absorbs_retransmissions_with_the_last_response() {
        let mut tx = ServerTx::new(TxKind::Invite, false, TimerConfig::default());
        assert!(tx.on_retransmission().is_empty(), "nothing sent yet");
        let acts = tx.respond(100, b("100"), 0);
        assert_eq!(acts, vec![TxAction::Send(b("100"))]);
        assert_eq!(tx.on_retransmission(), vec![TxAction::Send(b("100"))]);
        tx.respond(180, b("180"), 10);
        assert_eq!(tx.on_retransmission(), vec![TxAction::Send(b("180"))]);
    }

    #[test]
    fn server_invite_non_2xx_retransmits_on_timer_g_until_ack_or_timer_h() {
        let mut tx = ServerTx::new(TxKind::Invite, false, TimerConfig::default());
        tx.respond(486, b("486"), 0);
        let mut sends = Vec::new();
        let mut timeout = None;
        while let Some(t) = tx.next_deadline() {
            for a in tx.poll(t) {
                match a {
                    TxAction::Send(_) => sends.push(t),
                    TxAction::Timeout => timeout = Some(t),
                    TxAction::Terminated => {}
                }
            }
        }
        // Timer G: 500, 1000, 2000, 4000, 4000, ... until Timer H at 32 s.
        assert_eq!(&sends[..5], &[500, 1500, 3500, 7500, 11500]);
        assert_eq!(timeout, Some(32_000));
    }

    #[test]
    fn server_invite_ack_stops_retransmission_and_lingers_t4() {
        let mut tx = ServerTx::new(TxKind::Invite, false, TimerConfig::default());
        tx.respond(603, b("603"), 0);
        tx.on_ack(700);
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.next_deadline(), Some(5700));
        assert_eq!(tx.poll(5700), vec![TxAction::Terminated]);
    }

    #[test]
    fn server_invite_2xx_leaves_retransmission_to_the_tu() {
        let mut tx = ServerTx::new(TxKind::Invite, false, TimerConfig::default());
        let acts = tx.respond(200, b("200"), 0);
        assert_eq!(acts, vec![TxAction::Send(b("200")), TxAction::Terminated]);
        assert!(tx.respond(486, b("486"), 1).is_empty(), "no second final");
    }

    #[test]
    fn server_non_invite_keeps_final_for_timer_j() {
        let mut tx = ServerTx::new(TxKind::NonInvite, false, TimerConfig::default());
        tx.respond(200, b("200"), 1000);
        assert_eq!(tx.on_retransmission(), vec![TxAction::Send(b("200"))]);
        assert_eq!(tx.next_deadline(), Some(33_000));
        assert_eq!(tx.poll(33_000), vec![TxAction::Terminated]);
    }
}
