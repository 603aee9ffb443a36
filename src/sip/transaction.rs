//! RFC 3261 §17 transaction state machines, sans-IO with injected time.
//!
//! Each machine is a plain value: feed it [`Event`]s with the current [`Instant`] through
//! `handle`, carry out the returned [`Action`]s, and call `handle(Event::Timer, now)` once
//! `next_deadline()` has passed. Nothing here reads a clock, opens a socket or sleeps, so tests
//! drive time by hand.
//!
//! * [`InviteClient`]: Calling → Proceeding → Completed → Terminated (timers A, B, D). It builds
//!   and sends the ACK for a non-2xx final response itself (§17.1.1.3). **The ACK for a 2xx is
//!   not the transaction's business**: the 2xx is delivered, the transaction terminates at once,
//!   and the TU (dialog layer) builds, sends and re-sends that ACK for every 2xx retransmission
//!   (§13.2.2.4; those retransmissions arrive as stray responses, see
//!   [`TransactionTable::on_received`]).
//! * [`NonInviteClient`]: Trying → Proceeding → Completed → Terminated (timers E, F, K).
//! * [`InviteServer`]: Proceeding → Completed → Confirmed → Terminated (timers G, H, I, and a
//!   100 Trying sent automatically 200 ms after the INVITE unless the TU sent a provisional or
//!   final response first). A 2xx terminates it at once: the TU retransmits the 2xx until its
//!   ACK arrives, and that ACK reaches the TU as a stray request. The ACK for a non-2xx final
//!   response is absorbed (Figure 7 passes it nowhere).
//! * [`NonInviteServer`]: Trying → Proceeding → Completed → Terminated (timer J).
//!
//! Reliability (TCP, TLS, SCTP, WS: anything but UDP in the top Via) switches off the
//! retransmission timers A, E and G and sets D, I, J and K to zero, so those states are left in
//! the same `handle` call that entered them (§17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2).
//!
//! [`client_key`] / [`server_key`] implement the matching rules of §17.1.3 and §17.2.3, and
//! [`TransactionTable`] keeps the live transactions of one endpoint keyed by them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use super::{Message, ReplyContext};

/// The magic cookie that marks an RFC 3261 branch (§8.1.1.7).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// Timer base values (RFC 3261 §17.1.1.1, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate, 500 ms by default.
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses, 4 s.
    pub t2: Duration,
    /// Maximum time a message stays in the network, 5 s.
    pub t4: Duration,
    /// Timer D for unreliable transports ("> 32 s"), 32 s.
    pub d: Duration,
    /// How long an INVITE server transaction waits for the TU's provisional before sending
    /// 100 Trying itself (§17.2.1), 200 ms.
    pub trying: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            d: Duration::from_secs(32),
            trying: Duration::from_millis(200),
        }
    }
}

impl Timers {
    /// 64*T1: timers B, F, H and J.
    pub fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }
}

/// Input to a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// From the TU: a response for a server transaction. Ignored by client transactions, which
    /// are given their request when created.
    Send(Message),
    /// From the transport: a response for a client transaction, a retransmitted request or an
    /// ACK for a server transaction (the caller has matched it with [`client_key`] /
    /// [`server_key`]).
    Received(Message),
    /// Time has passed: every timer due at the `now` given to `handle` fires.
    Timer,
    /// The transport could not send (ICMP unreachable, connection reset, ...; §17.1.4, §17.2.4).
    TransportError,
}

/// Output of a transaction, to be carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Hand to the transport. A retransmission is the same message, so the same bytes.
    Transmit(Message),
    /// Hand to the TU: a response (client transactions) or the request (server transactions).
    Deliver(Message),
    /// Timer B, F or H fired: the TU treats it as a 408 (B, F) or a failed transaction (H).
    Timeout,
    /// The transport reported an error: the TU treats it as a 503 (§8.1.3.1).
    TransportError,
    /// The transaction is over; the table may forget it. Always the last action it emits.
    Terminated,
}

/// Whether a Via transport token names a reliable transport (everything but UDP).
pub fn is_reliable(transport: &str) -> bool {
    !transport.eq_ignore_ascii_case("UDP")
}

fn reliable_for(msg: &Message) -> bool {
    msg.top_via().map(|v| is_reliable(&v.transport)).unwrap_or(false)
}

fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

fn earliest(deadlines: &[Option<Instant>]) -> Option<Instant> {
    deadlines.iter().flatten().min().copied()
}

/// The ACK for a non-2xx final response (RFC 3261 §17.1.1.3): the INVITE's Request-URI,
/// Call-ID, From and only its top Via, the response's To (with its tag), `CSeq: n ACK`, the
/// INVITE's Route set, `Max-Forwards: 70` and no body. `None` when the INVITE lacks what is
/// needed (it is ours, so that is a TU bug, but it must not panic).
pub fn ack_for(invite: &Message, response: &Message) -> Option<Message> {
    let super::StartLine::Request { uri, .. } = invite.start_line() else {
        return None;
    };
    let via = invite.values("Via").ok()?.into_iter().next()?;
    let cseq = invite.cseq().ok()?;
    let text = |m: &Message, name: &'static str| -> Option<String> {
        m.get(name).and_then(|h| h.value_text(name).ok()).map(|v| v.into_owned())
    };
    let from = text(invite, "From")?;
    let to = text(response, "To").or_else(|| text(invite, "To"))?;
    let call_id = text(invite, "Call-ID")?;
    let mut ack = Message::request("ACK", uri).ok()?;
    ack.push_header("Via", &via).ok()?;
    for route in invite.values("Route").ok()? {
        ack.push_header("Route", &route).ok()?;
    }
    ack.push_header("Max-Forwards", "70").ok()?;
    ack.push_header("From", &from).ok()?;
    ack.push_header("To", &to).ok()?;
    ack.push_header("Call-ID", &call_id).ok()?;
    ack.push_header("CSeq", &format!("{} ACK", cseq.seq)).ok()?;
    ack.push_header("Content-Length", "0").ok()?;
    Some(ack)
}

/// What every machine offers; [`Transaction`] and the four machines implement it.
pub trait Machine {
    /// Feeds one event at time `now`; returns the actions to carry out, in order.
    fn handle(&mut self, event: Event, now: Instant) -> Vec<Action>;
    /// When `handle(Event::Timer, ..)` is next needed; `None` when no timer runs.
    fn next_deadline(&self) -> Option<Instant>;
    /// Whether the machine reached Terminated (it then ignores every event).
    fn is_terminated(&self) -> bool;
}

// ---- INVITE client ---------------------------------------------------------------------------

/// States of [`InviteClient`] (RFC 3261 Figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteClientState {
    /// INVITE sent, nothing heard yet.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A non-2xx final response arrived and was ACKed; absorbing its retransmissions.
    Completed,
    /// Done.
    Terminated,
}

/// INVITE client transaction (RFC 3261 §17.1.1).
#[derive(Debug, Clone)]
pub struct InviteClient {
    state: InviteClientState,
    timers: Timers,
    reliable: bool,
    request: Message,
    ack: Option<Message>,
    a: Option<Instant>,
    a_interval: Duration,
    b: Option<Instant>,
    d: Option<Instant>,
}

impl InviteClient {
    /// Starts the transaction: the returned actions transmit the INVITE. `reliable` is whether
    /// the transport is (see [`is_reliable`]).
    pub fn new(request: Message, timers: Timers, reliable: bool, now: Instant) -> (Self, Vec<Action>) {
        let tx = InviteClient {
            state: InviteClientState::Calling,
            timers,
            reliable,
            a: if reliable { None } else { after(now, timers.t1) },
            a_interval: timers.t1,
            b: after(now, timers.t1x64()),
            d: None,
            ack: None,
            request,
        };
        let actions = vec![Action::Transmit(tx.request.clone())];
        (tx, actions)
    }

    /// Current state.
    pub fn state(&self) -> InviteClientState {
        self.state
    }

    /// The INVITE.
    pub fn request(&self) -> &Message {
        &self.request
    }

    /// The ACK sent for the non-2xx final response, once there was one.
    pub fn ack(&self) -> Option<&Message> {
        self.ack.as_ref()
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = InviteClientState::Terminated;
        self.a = None;
        self.b = None;
        self.d = None;
        out.push(Action::Terminated);
    }
}

impl Machine for InviteClient {
    fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        use InviteClientState::*;
        let mut out = Vec::new();
        match (self.state, event) {
            (Terminated, _) | (_, Event::Send(_)) => {}
            (Calling, Event::Timer) => {
                if due(self.b, now) {
                    out.push(Action::Timeout);
                    self.terminate(&mut out);
                } else if due(self.a, now) {
                    out.push(Action::Transmit(self.request.clone()));
                    self.a_interval = self.a_interval.saturating_mul(2);
                    self.a = after(now, self.a_interval);
                }
            }
            (Completed, Event::Timer) => {
                if due(self.d, now) {
                    self.terminate(&mut out);
                }
            }
            (Proceeding, Event::Timer) => {}
            (Calling | Proceeding, Event::Received(msg)) => match msg.status() {
                Some(100..=199) => {
                    self.state = Proceeding;
                    self.a = None;
                    self.b = None;
                    out.push(Action::Deliver(msg));
                }
                Some(200..=299) => {
                    out.push(Action::Deliver(msg));
                    self.terminate(&mut out);
                }
                Some(_) => {
                    self.ack = ack_for(&self.request, &msg);
                    if let Some(ack) = &self.ack {
                        out.push(Action::Transmit(ack.clone()));
                    }
                    out.push(Action::Deliver(msg));
                    self.state = Completed;
                    self.a = None;
                    self.b = None;
                    if self.reliable {
                        self.terminate(&mut out);
                    } else {
                        self.d = after(now, self.timers.d);
                    }
                }
                None => {}
            },
            (Completed, Event::Received(msg)) => {
                if msg.status().is_some_and(|c| c >= 300) {
                    if let Some(ack) = &self.ack {
                        out.push(Action::Transmit(ack.clone()));
                    }
                }
            }
            (_, Event::TransportError) => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
        }
        out
    }

    fn next_deadline(&self) -> Option<Instant> {
        earliest(&[self.a, self.b, self.d])
    }

    fn is_terminated(&self) -> bool {
        self.state == InviteClientState::Terminated
    }
}

// ---- non-INVITE client -----------------------------------------------------------------------

/// States of [`NonInviteClient`] (RFC 3261 Figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteClientState {
    /// Request sent, nothing heard yet.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; absorbing retransmissions of it.
    Completed,
    /// Done.
    Terminated,
}

/// Non-INVITE client transaction (RFC 3261 §17.1.2).
#[derive(Debug, Clone)]
pub struct NonInviteClient {
    state: NonInviteClientState,
    timers: Timers,
    reliable: bool,
    request: Message,
    e: Option<Instant>,
    e_interval: Duration,
    f: Option<Instant>,
    k: Option<Instant>,
}

impl NonInviteClient {
    /// Starts the transaction: the returned actions transmit the request.
    pub fn new(request: Message, timers: Timers, reliable: bool, now: Instant) -> (Self, Vec<Action>) {
        let tx = NonInviteClient {
            state: NonInviteClientState::Trying,
            timers,
            reliable,
            e: if reliable { None } else { after(now, timers.t1) },
            e_interval: timers.t1,
            f: after(now, timers.t1x64()),
            k: None,
            request,
        };
        let actions = vec![Action::Transmit(tx.request.clone())];
        (tx, actions)
    }

    /// Current state.
    pub fn state(&self) -> NonInviteClientState {
        self.state
    }

    /// The request.
    pub fn request(&self) -> &Message {
        &self.request
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = NonInviteClientState::Terminated;
        self.e = None;
        self.f = None;
        self.k = None;
        out.push(Action::Terminated);
    }
}

impl Machine for NonInviteClient {
    fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        use NonInviteClientState::*;
        let mut out = Vec::new();
        match (self.state, event) {
            (Terminated, _) | (_, Event::Send(_)) => {}
            (Trying | Proceeding, Event::Timer) => {
                if due(self.f, now) {
                    out.push(Action::Timeout);
                    self.terminate(&mut out);
                } else if due(self.e, now) {
                    out.push(Action::Transmit(self.request.clone()));
                    self.e_interval = if self.state == Trying {
                        self.e_interval.saturating_mul(2).min(self.timers.t2)
                    } else {
                        self.timers.t2
                    };
                    self.e = after(now, self.e_interval);
                }
            }
            (Completed, Event::Timer) => {
                if due(self.k, now) {
                    self.terminate(&mut out);
                }
            }
            (Trying | Proceeding, Event::Received(msg)) => match msg.status() {
                Some(100..=199) => {
                    self.state = Proceeding;
                    out.push(Action::Deliver(msg));
                }
                Some(_) => {
                    out.push(Action::Deliver(msg));
                    self.state = Completed;
                    self.e = None;
                    self.f = None;
                    if self.reliable {
                        self.terminate(&mut out);
                    } else {
                        self.k = after(now, self.timers.t4);
                    }
                }
                None => {}
            },
            (Completed, Event::Received(_)) => {}
            (_, Event::TransportError) => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
        }
        out
    }

    fn next_deadline(&self) -> Option<Instant> {
        earliest(&[self.e, self.f, self.k])
    }

    fn is_terminated(&self) -> bool {
        self.state == NonInviteClientState::Terminated
    }
}

// ---- INVITE server ---------------------------------------------------------------------------

/// States of [`InviteServer`] (RFC 3261 Figure 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteServerState {
    /// INVITE delivered; provisionals may be sent.
    Proceeding,
    /// A non-2xx final response was sent; retransmitting it until the ACK.
    Completed,
    /// The ACK arrived; absorbing ACK retransmissions.
    Confirmed,
    /// Done.
    Terminated,
}

/// INVITE server transaction (RFC 3261 §17.2.1).
#[derive(Debug, Clone)]
pub struct InviteServer {
    state: InviteServerState,
    timers: Timers,
    reliable: bool,
    request: Message,
    last: Option<Message>,
    trying: Option<Instant>,
    g: Option<Instant>,
    g_interval: Duration,
    h: Option<Instant>,
    i: Option<Instant>,
}

impl InviteServer {
    /// Starts the transaction for a received INVITE: the returned actions deliver it to the TU.
    pub fn new(request: Message, timers: Timers, reliable: bool, now: Instant) -> (Self, Vec<Action>) {
        let tx = InviteServer {
            state: InviteServerState::Proceeding,
            timers,
            reliable,
            last: None,
            trying: after(now, timers.trying),
            g: None,
            g_interval: timers.t1,
            h: None,
            i: None,
            request,
        };
        let actions = vec![Action::Deliver(tx.request.clone())];
        (tx, actions)
    }

    /// Current state.
    pub fn state(&self) -> InviteServerState {
        self.state
    }

    /// The INVITE.
    pub fn request(&self) -> &Message {
        &self.request
    }

    /// The most recent response sent.
    pub fn last_response(&self) -> Option<&Message> {
        self.last.as_ref()
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = InviteServerState::Terminated;
        self.trying = None;
        self.g = None;
        self.h = None;
        self.i = None;
        out.push(Action::Terminated);
    }

    fn resend_last(&self, out: &mut Vec<Action>) {
        if let Some(last) = &self.last {
            out.push(Action::Transmit(last.clone()));
        }
    }
}

impl Machine for InviteServer {
    fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        use InviteServerState::*;
        let mut out = Vec::new();
        match (self.state, event) {
            (Terminated, _) => {}
            (Proceeding, Event::Send(msg)) => match msg.status() {
                Some(100..=199) => {
                    self.trying = None;
                    out.push(Action::Transmit(msg.clone()));
                    self.last = Some(msg);
                }
                Some(200..=299) => {
                    out.push(Action::Transmit(msg.clone()));
                    self.last = Some(msg);
                    self.terminate(&mut out);
                }
                Some(_) => {
                    out.push(Action::Transmit(msg.clone()));
                    self.last = Some(msg);
                    self.state = Completed;
                    self.trying = None;
                    self.g = if self.reliable { None } else { after(now, self.timers.t1) };
                    self.h = after(now, self.timers.t1x64());
                }
                None => {}
            },
            (_, Event::Send(_)) => {}
            (state, Event::Received(msg)) => match (state, msg.method()) {
                (Completed, Some("ACK")) => {
                    self.state = Confirmed;
                    self.g = None;
                    self.h = None;
                    if self.reliable {
                        self.terminate(&mut out);
                    } else {
                        self.i = after(now, self.timers.t4);
                    }
                }
                (Proceeding | Completed, Some(m)) if m != "ACK" => self.resend_last(&mut out),
                _ => {}
            },
            (Proceeding, Event::Timer) => {
                if due(self.trying, now) {
                    self.trying = None;
                    if let Some(trying) = ReplyContext::from_message(&self.request)
                        .and_then(|c| c.response(100, "Trying", None).ok())
                    {
                        out.push(Action::Transmit(trying.clone()));
                        self.last = Some(trying);
                    }
                }
            }
            (Completed, Event::Timer) => {
                if due(self.h, now) {
                    out.push(Action::Timeout);
                    self.terminate(&mut out);
                } else if due(self.g, now) {
                    self.resend_last(&mut out);
                    self.g_interval = self.g_interval.saturating_mul(2).min(self.timers.t2);
                    self.g = after(now, self.g_interval);
                }
            }
            (Confirmed, Event::Timer) => {
                if due(self.i, now) {
                    self.terminate(&mut out);
                }
            }
            (Proceeding | Completed, Event::TransportError) => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            (Confirmed, Event::TransportError) => {}
        }
        out
    }

    fn next_deadline(&self) -> Option<Instant> {
        earliest(&[self.trying, self.g, self.h, self.i])
    }

    fn is_terminated(&self) -> bool {
        self.state == InviteServerState::Terminated
    }
}

// ---- non-INVITE server -----------------------------------------------------------------------

/// States of [`NonInviteServer`] (RFC 3261 Figure 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteServerState {
    /// Request delivered, no response yet; retransmissions are absorbed.
    Trying,
    /// A provisional was sent; retransmissions get it again.
    Proceeding,
    /// A final response was sent; retransmissions get it again until timer J.
    Completed,
    /// Done.
    Terminated,
}

/// Non-INVITE server transaction (RFC 3261 §17.2.2).
#[derive(Debug, Clone)]
pub struct NonInviteServer {
    state: NonInviteServerState,
    timers: Timers,
    reliable: bool,
    request: Message,
    last: Option<Message>,
    j: Option<Instant>,
}

impl NonInviteServer {
    /// Starts the transaction for a received request: the returned actions deliver it.
    pub fn new(request: Message, timers: Timers, reliable: bool, _now: Instant) -> (Self, Vec<Action>) {
        let tx = NonInviteServer {
            state: NonInviteServerState::Trying,
            timers,
            reliable,
            last: None,
            j: None,
            request,
        };
        let actions = vec![Action::Deliver(tx.request.clone())];
        (tx, actions)
    }

    /// Current state.
    pub fn state(&self) -> NonInviteServerState {
        self.state
    }

    /// The request.
    pub fn request(&self) -> &Message {
        &self.request
    }

    fn terminate(&mut self, out: &mut Vec<Action>) {
        self.state = NonInviteServerState::Terminated;
        self.j = None;
        out.push(Action::Terminated);
    }
}

impl Machine for NonInviteServer {
    fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        use NonInviteServerState::*;
        let mut out = Vec::new();
        match (self.state, event) {
            (Terminated, _) => {}
            (Trying | Proceeding, Event::Send(msg)) => match msg.status() {
                Some(100..=199) => {
                    self.state = Proceeding;
                    out.push(Action::Transmit(msg.clone()));
                    self.last = Some(msg);
                }
                Some(_) => {
                    out.push(Action::Transmit(msg.clone()));
                    self.last = Some(msg);
                    self.state = Completed;
                    if self.reliable {
                        self.terminate(&mut out);
                    } else {
                        self.j = after(now, self.timers.t1x64());
                    }
                }
                None => {}
            },
            (_, Event::Send(_)) => {}
            (Proceeding | Completed, Event::Received(msg)) => {
                if msg.is_request() {
                    if let Some(last) = &self.last {
                        out.push(Action::Transmit(last.clone()));
                    }
                }
            }
            (Trying, Event::Received(_)) => {}
            (Completed, Event::Timer) => {
                if due(self.j, now) {
                    self.terminate(&mut out);
                }
            }
            (_, Event::Timer) => {}
            (Proceeding | Completed, Event::TransportError) => {
                out.push(Action::TransportError);
                self.terminate(&mut out);
            }
            (Trying, Event::TransportError) => {}
        }
        out
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.j
    }

    fn is_terminated(&self) -> bool {
        self.state == NonInviteServerState::Terminated
    }
}

// ---- any of the four -------------------------------------------------------------------------

/// One of the four machines.
#[derive(Debug, Clone)]
pub enum Transaction {
    /// INVITE client.
    InviteClient(InviteClient),
    /// Non-INVITE client.
    NonInviteClient(NonInviteClient),
    /// INVITE server.
    InviteServer(InviteServer),
    /// Non-INVITE server.
    NonInviteServer(NonInviteServer),
}

impl Transaction {
    /// A client transaction for `request` (INVITE or not; ACK is no transaction and gives
    /// `None`), reliability taken from its top Via's transport.
    pub fn client(request: Message, timers: Timers, now: Instant) -> Option<(Transaction, Vec<Action>)> {
        let reliable = reliable_for(&request);
        match request.method()? {
            "ACK" => None,
            "INVITE" => {
                let (t, a) = InviteClient::new(request, timers, reliable, now);
                Some((Transaction::InviteClient(t), a))
            }
            _ => {
                let (t, a) = NonInviteClient::new(request, timers, reliable, now);
                Some((Transaction::NonInviteClient(t), a))
            }
        }
    }

    /// A server transaction for a received `request` (not ACK), reliability from its top Via.
    pub fn server(request: Message, timers: Timers, now: Instant) -> Option<(Transaction, Vec<Action>)> {
        let reliable = reliable_for(&request);
        match request.method()? {
            "ACK" => None,
            "INVITE" => {
                let (t, a) = InviteServer::new(request, timers, reliable, now);
                Some((Transaction::InviteServer(t), a))
            }
            _ => {
                let (t, a) = NonInviteServer::new(request, timers, reliable, now);
                Some((Transaction::NonInviteServer(t), a))
            }
        }
    }

    fn machine(&self) -> &dyn Machine {
        match self {
            Transaction::InviteClient(t) => t,
            Transaction::NonInviteClient(t) => t,
            Transaction::InviteServer(t) => t,
            Transaction::NonInviteServer(t) => t,
        }
    }

    fn machine_mut(&mut self) -> &mut dyn Machine {
        match self {
            Transaction::InviteClient(t) => t,
            Transaction::NonInviteClient(t) => t,
            Transaction::InviteServer(t) => t,
            Transaction::NonInviteServer(t) => t,
        }
    }
}

impl Machine for Transaction {
    fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        self.machine_mut().handle(event, now)
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.machine().next_deadline()
    }

    fn is_terminated(&self) -> bool {
        self.machine().is_terminated()
    }
}

// ---- matching --------------------------------------------------------------------------------

/// Which side of a transaction a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// We sent the request.
    Client,
    /// We received the request.
    Server,
}

/// A transaction identifier (RFC 3261 §17.1.3, §17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Client or server side.
    pub role: Role,
    /// The top Via branch, compared exactly.
    pub branch: String,
    /// The method the transaction was created for: CSeq method of a response, request method,
    /// with ACK mapped to INVITE on the server side. CANCEL is its own transaction.
    pub method: String,
    /// Server side only: the top Via sent-by (host lower-cased), empty on the client side.
    pub sent_by: String,
}

impl Key {
    /// The key of the INVITE transaction a CANCEL with this key targets (§9.2).
    pub fn cancelled_invite(&self) -> Option<Key> {
        (self.method == "CANCEL").then(|| Key { method: "INVITE".into(), ..self.clone() })
    }
}

/// Client-side key (§17.1.3): top Via branch plus CSeq method for a response, or plus the
/// method for a request we are about to send. `None` for an ACK (no transaction of its own)
/// and for messages without a branch or a usable CSeq.
pub fn client_key(msg: &Message) -> Option<Key> {
    let branch = msg.top_via().ok()?.branch()?.to_owned();
    let method = match msg.method() {
        Some("ACK") => return None,
        Some(m) => m.to_owned(),
        None => msg.cseq().ok()?.method,
    };
    Some(Key { role: Role::Client, branch, method, sent_by: String::new() })
}

/// Server-side key (§17.2.3) for a request whose top Via branch carries the magic cookie:
/// branch, sent-by and method, with ACK mapped to INVITE so an ACK for a non-2xx final
/// response finds its INVITE transaction. `None` for responses and RFC 2543 branches (the
/// §17.2.3 backwards-compatible matching is not implemented).
pub fn server_key(msg: &Message) -> Option<Key> {
    let method = msg.method()?;
    let via = msg.top_via().ok()?;
    let branch = via.branch()?;
    if !branch.starts_with(MAGIC_COOKIE) {
        return None;
    }
    let method = if method == "ACK" { "INVITE" } else { method };
    Some(Key {
        role: Role::Server,
        branch: branch.to_owned(),
        method: method.to_owned(),
        sent_by: via.sent_by().to_ascii_lowercase(),
    })
}

// ---- table -----------------------------------------------------------------------------------

/// Why [`TransactionTable::send_request`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// ACK, a response, or no top Via branch.
    #[error("message cannot start a client transaction")]
    NotARequest,
    /// A live client transaction already uses this branch and method.
    #[error("a transaction with this key already exists")]
    Duplicate,
}

/// What [`TransactionTable::on_received`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// The transaction that took it; `None` for a stray message, which is then the only
    /// [`Action::Deliver`] in `actions`: a 2xx retransmission (the dialog re-sends its ACK), an
    /// ACK for a 2xx, or a request with an RFC 2543 branch. A stray response the TU does not
    /// want is simply dropped.
    pub key: Option<Key>,
    /// Actions to carry out.
    pub actions: Vec<Action>,
}

/// The live transactions of one endpoint. Terminated ones are purged as soon as they finish.
///
/// Deadlines sit in a min-heap so a busy B2BUA (tens of thousands of transactions lingering in
/// Completed for timers D and K) finds the due ones without scanning them all. An entry may be
/// stale (the machine moved on); stale entries cost one lookup when they surface.
#[derive(Debug, Clone, Default)]
pub struct TransactionTable {
    timers: Timers,
    map: HashMap<Key, Transaction>,
    deadlines: BinaryHeap<Reverse<(Instant, Key)>>,
}

impl TransactionTable {
    /// An empty table using `timers` for every new transaction.
    pub fn new(timers: Timers) -> Self {
        TransactionTable { timers, map: HashMap::new(), deadlines: BinaryHeap::new() }
    }

    /// How many transactions are live.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A live transaction.
    pub fn get(&self, key: &Key) -> Option<&Transaction> {
        self.map.get(key)
    }

    /// Starts a client transaction for `request` (its top Via branch must be set).
    pub fn send_request(&mut self, request: Message, now: Instant) -> Result<(Key, Vec<Action>), TableError> {
        let key = client_key(&request).ok_or(TableError::NotARequest)?;
        if self.map.contains_key(&key) {
            return Err(TableError::Duplicate);
        }
        let (tx, actions) = Transaction::client(request, self.timers, now).ok_or(TableError::NotARequest)?;
        self.insert(key.clone(), tx);
        Ok((key, actions))
    }

    /// Hands a response from the TU to server transaction `key`; empty when it is unknown.
    pub fn send_response(&mut self, key: &Key, response: Message, now: Instant) -> Vec<Action> {
        self.feed(key, Event::Send(response), now)
    }

    /// Reports a transport error for transaction `key`.
    pub fn transport_error(&mut self, key: &Key, now: Instant) -> Vec<Action> {
        self.feed(key, Event::TransportError, now)
    }

    /// Routes a message from the transport: a response to its client transaction, a request
    /// to its server transaction (creating one for a new request other than ACK).
    pub fn on_received(&mut self, msg: Message, now: Instant) -> Dispatch {
        let stray = |msg| Dispatch { key: None, actions: vec![Action::Deliver(msg)] };
        let key = if msg.is_request() { server_key(&msg) } else { client_key(&msg) };
        let Some(key) = key else {
            return stray(msg);
        };
        if self.map.contains_key(&key) {
            let actions = self.feed(&key, Event::Received(msg), now);
            return Dispatch { key: Some(key), actions };
        }
        if !msg.is_request() || msg.method() == Some("ACK") {
            return stray(msg);
        }
        match Transaction::server(msg, self.timers, now) {
            Some((tx, actions)) => {
                self.insert(key.clone(), tx);
                Dispatch { key: Some(key), actions }
            }
            None => Dispatch { key: None, actions: Vec::new() },
        }
    }

    /// Fires every due timer; returns the actions per transaction and purges terminated ones.
    pub fn on_timer(&mut self, now: Instant) -> Vec<(Key, Action)> {
        let mut out = Vec::new();
        while let Some(Reverse((at, _))) = self.deadlines.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, key))) = self.deadlines.pop() else { break };
            let due = self.map.get(&key).and_then(Transaction::next_deadline).is_some_and(|d| d <= now);
            if due {
                out.extend(self.feed(&key, Event::Timer, now).into_iter().map(|a| (key.clone(), a)));
            }
        }
        out
    }

    /// The earliest deadline of any transaction (possibly earlier than the true one when a
    /// machine moved on since; waking early is harmless).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// Drops terminated transactions.
    pub fn purge(&mut self) {
        self.map.retain(|_, tx| !tx.is_terminated());
    }

    fn insert(&mut self, key: Key, tx: Transaction) {
        if !tx.is_terminated() {
            if let Some(d) = tx.next_deadline() {
                self.deadlines.push(Reverse((d, key.clone())));
            }
            self.map.insert(key, tx);
        }
    }

    fn feed(&mut self, key: &Key, event: Event, now: Instant) -> Vec<Action> {
        let Some(tx) = self.map.get_mut(key) else {
            return Vec::new();
        };
        let before = tx.next_deadline();
        let actions = tx.handle(event, now);
        if tx.is_terminated() {
            self.map.remove(key);
        } else if let Some(d) = tx.next_deadline() {
            // Unchanged deadlines already have their entry (it was not popped).
            if before != Some(d) || before.is_some_and(|b| b <= now) {
                self.deadlines.push(Reverse((d, key.clone())));
            }
        }
        actions
    }
}

#[cfg(test)]
#[path = "transaction_tests.rs"]
mod tests;
