//! Whether an accepted client connection may stay: one descriptor of the data path's budget,
//! a place under `global.max_connections` and under its service's `max_connections`. A
//! connection beyond any of them is reset at once and counted; everything it held is given
//! back when its `Admitted` is dropped, whichever limit refused it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

use crate::net::{FdSlot, DATA_PATH};
use crate::state::Service;

/// Client connections of the whole process against `global.max_connections`; one per
/// process, kept by the runtime across reloads.
pub struct ConnectionLimit {
    active: AtomicUsize,
    limit: AtomicUsize,
    gauge: Gauge,
}

impl ConnectionLimit {
    pub fn new(gauge: Gauge) -> ConnectionLimit {
        ConnectionLimit { active: AtomicUsize::new(0), limit: AtomicUsize::new(usize::MAX), gauge }
    }

    pub fn set_limit(&self, n: usize) {
        self.limit.store(n, Ordering::Relaxed);
    }
}

/// What an admitted connection holds until it ends.
pub struct Admitted {
    _descriptor: FdSlot,
    _global: Place,
    _service: ServicePlace,
}

struct Place(Arc<ConnectionLimit>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

struct ServicePlace(Gauge);

impl Drop for ServicePlace {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Takes a descriptor, a global place and a place in `svc`, or names the limit that refused.
pub fn admit(global: &Arc<ConnectionLimit>, svc: &Service) -> Result<Admitted, &'static str> {
    let descriptor = DATA_PATH.take().ok_or("descriptors")?;
    // Counted first, checked after: two accepts at once cannot both pass the last place.
    let before = global.active.fetch_add(1, Ordering::Relaxed);
    global.gauge.inc();
    let place = Place(global.clone());
    if before >= global.limit.load(Ordering::Relaxed) {
        return Err("max_connections");
    }
    let active = &svc.metrics.active;
    let before = active.inc();
    let service = ServicePlace(active.clone());
    if svc.config.max_connections.is_some_and(|max| usize::try_from(before).unwrap_or(0) >= max) {
        return Err("service_max_connections");
    }
    Ok(Admitted { _descriptor: descriptor, _global: place, _service: service })
}
