//! Stickiness tables: client IP -> server address, with expiry from last use. A table is
//! named in the config and shared by every service naming it; entries hold the server's IP
//! (not a pool index) so services with different pools (135/RPC and 443) still agree.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

#[derive(Clone, Copy)]
struct Entry {
    server: IpAddr,
    last_used: Instant,
}

/// Sharded so concurrent connections rarely wait on each other; a lookup holds one shard's
/// lock for a hash-map probe only.
pub struct StickyTable {
    pub name: String,
    expire: Duration,
    shards: Vec<Mutex<HashMap<IpAddr, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl StickyTable {
    pub fn new(name: &str, expire: Duration) -> Self {
        StickyTable {
            name: name.to_string(),
            expire,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn shard(&self, client: &IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS]
    }

    /// The server this client is stuck to, if the entry has not expired; refreshes it.
    pub fn get(&self, client: IpAddr, now: Instant) -> Option<IpAddr> {
        let mut map = self.shard(&client).lock().expect("sticky shard poisoned");
        match map.get_mut(&client) {
            Some(e) if now.saturating_duration_since(e.last_used) < self.expire => {
                e.last_used = now;
                Some(e.server)
            }
            Some(_) => {
                map.remove(&client);
                None
            }
            None => None,
        }
    }

    pub fn set(&self, client: IpAddr, server: IpAddr, now: Instant) {
        let mut map = self.shard(&client).lock().expect("sticky shard poisoned");
        map.insert(client, Entry { server, last_used: now });
    }

    /// Removes expired entries; returns how many remain.
    pub fn purge(&self, now: Instant) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut map = s.lock().expect("sticky shard poisoned");
                map.retain(|_, e| now.saturating_duration_since(e.last_used) < self.expire);
                map.len()
            })
            .sum()
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("sticky shard poisoned").len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_from_last_use() {
        let t = StickyTable::new("cas", Duration::from_secs(60));
        let c: IpAddr = "198.18.1.2".parse().unwrap();
        let s: IpAddr = "198.18.2.11".parse().unwrap();
        let t0 = Instant::now();
        t.set(c, s, t0);
        assert_eq!(t.get(c, t0 + Duration::from_secs(59)), Some(s));
        // the lookup at 59 s refreshed it
        assert_eq!(t.get(c, t0 + Duration::from_secs(118)), Some(s));
        assert_eq!(t.get(c, t0 + Duration::from_secs(179)), None);
        assert!(t.is_empty());
    }

    #[test]
    fn purge_drops_only_expired() {
        let t = StickyTable::new("cas", Duration::from_secs(10));
        let t0 = Instant::now();
        t.set("198.18.1.2".parse().unwrap(), "198.18.2.11".parse().unwrap(), t0);
        t.set("198.18.1.3".parse().unwrap(), "198.18.2.12".parse().unwrap(), t0 + Duration::from_secs(8));
        assert_eq!(t.purge(t0 + Duration::from_secs(12)), 1);
    }
}
