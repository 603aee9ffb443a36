//! The calls' side of the media relay: which calls are relayed, the SDP carried between
//! their legs through the call's [`Session`], and the orders the service turns into relay
//! tasks. A call is relayed when its caller or any callee it rings has `media = "relay"`;
//! once relayed it stays so (every later fork, re-INVITE, UPDATE and ACK goes through it).
//! An offer the relay cannot take refuses the call (or the re-INVITE): 488 for an SDP that
//! does not parse, 503 when the port range is used up.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::media::ports::PortPool;
use crate::media::relay::Stats;
use crate::media::session::{MediaError, Order, Reported, Session, Side as MediaSide};
use crate::sip::{MediaMode, Message, SipAddr, SipMedia, TrunkId};

use super::{build, Engine, Now};

/// What the relays must do for call `call`.
#[derive(Debug)]
pub enum MediaEvent {
    Order {
        call: u64,
        order: Order,
    },
    /// The call is over: stop its relays.
    Close {
        call: u64,
    },
}

pub(super) struct MediaState {
    pool: PortPool,
    sessions: HashMap<u64, Session>,
    out: Vec<MediaEvent>,
}

impl MediaState {
    pub(super) fn new(cfg: &SipMedia) -> MediaState {
        MediaState { pool: PortPool::new(cfg.ports), sessions: HashMap::new(), out: Vec::new() }
    }

    /// A new range applies to streams opened from now on; running ones keep their ports.
    pub(super) fn reconfigure(&mut self, cfg: &SipMedia) {
        if self.pool.range() != cfg.ports {
            self.pool = PortPool::new(cfg.ports);
        }
    }
}

/// Whether `body` of `msg` is an SDP the relay must carry (a multipart body passes as it is).
fn is_sdp(msg: &Message) -> bool {
    !msg.body().is_empty()
        && build::header(msg, "Content-Type").is_some_and(|t| {
            t.split(';').next().unwrap_or_default().trim().eq_ignore_ascii_case("application/sdp")
        })
}

impl Engine {
    /// The relay's address for a leg signalled from `local`.
    fn media_address(&self, local: SipAddr) -> IpAddr {
        match self.cfg.media.address {
            Some(a) if a.is_ipv4() == local.addr.is_ipv4() => a,
            _ => local.addr.ip(),
        }
    }

    /// The media mode of a trunk or extension party.
    pub(super) fn party_media(&self, trunk: Option<&TrunkId>, ext: Option<&str>) -> MediaMode {
        match (trunk, ext) {
            (Some(t), _) => self.trunks.get(t).map(|t| t.cfg.media).unwrap_or_default(),
            (None, Some(e)) => self.cfg.extensions.get(e).map(|e| e.media).unwrap_or_default(),
            (None, None) => MediaMode::default(),
        }
    }

    /// Before a fork is invited: relays the call if the caller or this callee wants it, and
    /// takes the relay's ports for the caller's offer. Err: the offer cannot be relayed (the
    /// call is refused: 488 for an SDP that does not parse, 503 when no ports are left).
    pub(super) fn media_for_fork(
        &mut self,
        id: u64,
        callee: MediaMode,
        callee_local: SipAddr,
    ) -> Result<(), MediaError> {
        let Some(call) = self.calls.get(&id) else { return Ok(()) };
        if !self.media.sessions.contains_key(&id) {
            if call.caller_media == MediaMode::Direct && callee == MediaMode::Direct {
                return Ok(());
            }
            let session =
                Session::new(self.media_address(call.a.via_local), self.media_address(callee_local));
            self.media.sessions.insert(id, session);
            self.metrics.media.sessions.inc();
        }
        let Some(call) = self.calls.get(&id) else { return Ok(()) };
        if call.transfer.is_some() {
            return Ok(());
        }
        // The same offer again for a later fork allocates nothing and changes nothing.
        let offer = call.a_invite.clone();
        let mut scratch = offer.clone();
        self.carry_body(id, MediaSide::Caller, &offer, &mut scratch)
    }

    /// Copies `src`'s body to `dst` (see `build::copy_body`); on a relayed call an SDP is
    /// carried from side `from` through the relay. An SDP the relay cannot take (unparsable,
    /// no ports left) is copied unchanged and the error returned (and logged): a request can
    /// then be refused, a response still goes on (the parties may reach each other).
    pub(super) fn carry_body(
        &mut self,
        id: u64,
        from: MediaSide,
        src: &Message,
        dst: &mut Message,
    ) -> Result<(), MediaError> {
        build::copy_body(src, dst);
        if !is_sdp(src) {
            return Ok(());
        }
        let Some(session) = self.media.sessions.get_mut(&id) else { return Ok(()) };
        let before = session.ports_open();
        let carried = session.carry(from, src.body(), &mut self.media.pool);
        let opened = session.ports_open() - before;
        self.metrics.media.ports.inc_by(opened as i64);
        let orders = session.take_orders();
        self.media.out.extend(orders.into_iter().map(|order| MediaEvent::Order { call: id, order }));
        match carried {
            Ok(body) => {
                dst.set_body(body);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(call_id = %src.call_id().unwrap_or_default(), "SIP media: SDP not relayed: {e}");
                Err(e)
            }
        }
    }

    /// The status and reason a request whose SDP the relay refused is answered with.
    pub(super) fn media_refusal(e: &MediaError) -> (u16, &'static str) {
        match e {
            MediaError::Sdp(_) => (488, "Not Acceptable Here"),
            MediaError::Ports(_) => (503, "Media Relay Unavailable"),
        }
    }

    /// The call was answered: its streams' silence counts from now.
    pub(super) fn media_answered(&mut self, id: u64) {
        if let Some(s) = self.media.sessions.get_mut(&id) {
            s.arm();
            let orders = s.take_orders();
            self.media.out.extend(orders.into_iter().map(|order| MediaEvent::Order { call: id, order }));
        }
    }

    /// The call is over: its relays stop; its figures for the call log.
    pub(super) fn media_end(&mut self, id: u64) -> Option<(Stats, [Option<Reported>; 2])> {
        let s = self.media.sessions.remove(&id)?;
        self.metrics.media.sessions.dec();
        self.metrics.media.ports.dec_by(s.ports_open() as i64);
        self.media.out.push(MediaEvent::Close { call: id });
        Some((s.stats(), s.reported()))
    }

    /// For /status: relayed calls, ports open, the range.
    pub(super) fn media_status(&self) -> String {
        let ports: usize = self.media.sessions.values().map(Session::ports_open).sum();
        format!(
            "relayed calls {}, ports open {} of sip.media.ports {}",
            self.media.sessions.len(),
            ports,
            self.media.pool.range()
        )
    }

    /// What the relays must do, in order.
    pub fn take_media(&mut self) -> Vec<MediaEvent> {
        std::mem::take(&mut self.media.out)
    }

    /// Stream `stream` of call `call` was silent for `sip.media.timeout` (its hold timeout if
    /// held): when all its streams are, the call ends with BYE on both legs.
    pub fn on_media_silent(&mut self, call: u64, stream: usize, now: Now) {
        let Some(s) = self.media.sessions.get_mut(&call) else { return };
        if !s.on_silent(stream) {
            return;
        }
        let Some(c) = self.calls.get_mut(&call) else { return };
        let Some(w) = c.winner else { return };
        c.end_reason = "media_timeout";
        tracing::warn!(
            caller = %c.caller,
            callee = %c.callee,
            timeout_s = self.cfg.media.timeout.as_secs(),
            "SIP: no media for the call's timeout: hanging up both legs"
        );
        self.metrics.media.timeouts.inc();
        self.bye(call, super::call::Side::A, now);
        self.bye(call, super::call::Side::Fork(w), now);
        self.end_call(call, "answered", now);
        self.after_event();
    }
}
