//! The engine's media orders carried out: a task per relayed stream (`media::relay`), fed
//! signalling news over its control channel, stopped by dropping that channel when the call
//! ends; a stream that went silent is reported back to the engine, which hangs up.

use std::collections::HashMap;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::media::latch::{Latch, Liveness};
use crate::media::ports::PortPair;
use crate::media::relay::{self, Control, End, Leg, Path, Totals};
use crate::media::session::Order;
use crate::metrics::{MediaMetrics, ReasonLabels};
use crate::sip::engine::MediaEvent;
use crate::sip::SipMedia;

use super::service::Inbound;

pub(super) struct MediaTasks {
    /// Per call, its streams' control channels.
    calls: HashMap<u64, Vec<(usize, mpsc::UnboundedSender<Control>)>>,
    cfg: SipMedia,
    totals: Totals,
    inbound: mpsc::Sender<Inbound>,
}

impl MediaTasks {
    pub(super) fn new(cfg: SipMedia, metrics: &MediaMetrics, inbound: mpsc::Sender<Inbound>) -> MediaTasks {
        let dropped = |reason| metrics.dropped.get_or_create(&ReasonLabels { reason }).clone();
        let totals = Totals {
            packets: metrics.packets.clone(),
            bytes: metrics.bytes.clone(),
            foreign: dropped("foreign"),
            unroutable: dropped("unroutable"),
        };
        MediaTasks { calls: HashMap::new(), cfg, totals, inbound }
    }

    /// New timeouts apply to streams started from now on.
    pub(super) fn set_config(&mut self, cfg: SipMedia) {
        self.cfg = cfg;
    }

    pub(super) fn apply(&mut self, event: MediaEvent) {
        match event {
            MediaEvent::Close { call } => {
                // Dropping the senders stops the tasks.
                self.calls.remove(&call);
            }
            MediaEvent::Order { call, order } => match order {
                Order::Start { stream, legs, signalled, held, counters } => {
                    let [a, b] = legs;
                    let legs = match (leg(a, signalled[0]), leg(b, signalled[1])) {
                        (Ok(a), Ok(b)) => [a, b],
                        (Err(e), _) | (_, Err(e)) => {
                            tracing::error!(call, "SIP media: relay sockets unusable: {e}");
                            return;
                        }
                    };
                    let (tx, rx) = mpsc::unbounded_channel();
                    if held {
                        let _ = tx.send(Control::Held(true));
                    }
                    let live = Liveness::new(Instant::now(), self.cfg.timeout, self.cfg.hold_timeout);
                    let (totals, inbound) = (self.totals.clone(), self.inbound.clone());
                    tokio::spawn(async move {
                        if relay::relay(legs, live, rx, counters, totals).await == End::Silent {
                            let _ = inbound.send(Inbound::MediaSilent { call, stream }).await;
                        }
                    });
                    self.calls.entry(call).or_default().push((stream, tx));
                }
                Order::Signal { stream, side, endpoint } => {
                    let c = Control::Signal { leg: side as usize, rtp: endpoint.rtp, rtcp: endpoint.rtcp };
                    self.send(call, Some(stream), c);
                }
                Order::Held { stream, held } => self.send(call, Some(stream), Control::Held(held)),
                Order::Arm => self.send(call, None, Control::Arm),
            },
        }
    }

    /// To one stream of `call`, or all of them.
    fn send(&self, call: u64, stream: Option<usize>, c: Control) {
        for (s, tx) in self.calls.get(&call).into_iter().flatten() {
            if stream.is_none_or(|want| want == *s) {
                let _ = tx.send(c);
            }
        }
    }
}

fn leg(p: PortPair, signalled: crate::media::session::Endpoint) -> std::io::Result<Leg> {
    Ok(Leg {
        rtp: Path { socket: UdpSocket::from_std(p.rtp)?, latch: Latch::new(signalled.rtp) },
        rtcp: Path { socket: UdpSocket::from_std(p.rtcp)?, latch: Latch::new(signalled.rtcp) },
    })
}
