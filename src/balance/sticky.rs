//! Stickiness tables: key -> server address, with expiry from last use. Client-IP tables are
//! named in the config and shared by every service naming them; entries hold the server's IP
//! (not a pool index) so services with different pools (135/RPC and 443) still agree. The
//! same structure, keyed by cookie value, remembers which server set a server cookie.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// The servers a key is stuck to: one per pool in practice (a table shared by services
/// whose pools hold different hosts keeps one choice for each, instead of overwriting).
struct Entry {
    servers: Vec<IpAddr>,
    last_used: Instant,
}

/// Sharded so concurrent connections rarely wait on each other; a lookup holds one shard's
/// lock for a hash-map probe only.
pub struct StickyTable<K = IpAddr> {
    pub name: String,
    /// Milliseconds; a reload may change it while the entries stay.
    expire_ms: AtomicU64,
    shards: Vec<Mutex<HashMap<K, Entry>>>,
    hasher: std::collections::hash_map::RandomState,
}

impl<K: Hash + Eq> StickyTable<K> {
    pub fn new(name: &str, expire: Duration) -> Self {
        StickyTable {
            name: name.to_string(),
            expire_ms: AtomicU64::new(expire.as_millis() as u64),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
        }
    }

    fn expire(&self) -> Duration {
        Duration::from_millis(self.expire_ms.load(Ordering::Relaxed))
    }

    /// A reload changed `expire`: the entries stay, judged by the new value from now on.
    pub fn set_expire(&self, expire: Duration) {
        self.expire_ms.store(expire.as_millis() as u64, Ordering::Relaxed);
    }

    /// Forgets every choice of a server for which `keep` says no (removed by a reload).
    pub fn retain_servers(&self, keep: impl Fn(IpAddr) -> bool) {
        for s in &self.shards {
            let mut map = s.lock().expect("sticky shard poisoned");
            map.retain(|_, e| {
                e.servers.retain(|ip| keep(*ip));
                !e.servers.is_empty()
            });
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<HashMap<K, Entry>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// Runs `f` on the key's live servers under the shard lock, so that a lookup, a new
    /// choice and its recording are one step: parallel first connections of one client
    /// cannot each pick a different server. Refreshes the entry; an emptied one is removed.
    pub fn with_entry<R>(&self, key: K, now: Instant, f: impl FnOnce(&mut Vec<IpAddr>) -> R) -> R {
        let mut map = self.shard(&key).lock().expect("sticky shard poisoned");
        let entry = map.entry(key).or_insert_with(|| Entry { servers: Vec::new(), last_used: now });
        if now.saturating_duration_since(entry.last_used) >= self.expire() {
            entry.servers.clear();
        }
        entry.last_used = now;
        let r = f(&mut entry.servers);
        if entry.servers.is_empty() {
            map.retain(|_, e| !e.servers.is_empty());
        }
        r
    }

    /// Keeps a live key from expiring (long connections refresh their client's entry).
    pub fn touch<Q>(&self, key: &Q, now: Instant)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.shard(key).lock().expect("sticky shard poisoned");
        if let Some(e) = map.get_mut(key) {
            if now.saturating_duration_since(e.last_used) < self.expire() {
                e.last_used = now;
            }
        }
    }

    /// The (first) server this key is stuck to, if the entry has not expired; refreshes it.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<IpAddr>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut map = self.shard(key).lock().expect("sticky shard poisoned");
        match map.get_mut(key) {
            Some(e) if now.saturating_duration_since(e.last_used) < self.expire() => {
                e.last_used = now;
                e.servers.first().copied()
            }
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        }
    }

    /// Sticks `key` to `server` alone.
    pub fn set(&self, key: K, server: IpAddr, now: Instant) {
        let mut map = self.shard(&key).lock().expect("sticky shard poisoned");
        map.insert(key, Entry { servers: vec![server], last_used: now });
    }

    /// Removes expired entries; returns how many remain.
    pub fn purge(&self, now: Instant) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let mut map = s.lock().expect("sticky shard poisoned");
                map.retain(|_, e| now.saturating_duration_since(e.last_used) < self.expire());
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
        let t: StickyTable = StickyTable::new("cas", Duration::from_secs(60));
        let c: IpAddr = "198.18.1.2".parse().unwrap();
        let s: IpAddr = "198.18.2.11".parse().unwrap();
        let t0 = Instant::now();
        t.set(c, s, t0);
        assert_eq!(t.get(&c, t0 + Duration::from_secs(59)), Some(s));
        // the lookup at 59 s refreshed it
        assert_eq!(t.get(&c, t0 + Duration::from_secs(118)), Some(s));
        assert_eq!(t.get(&c, t0 + Duration::from_secs(179)), None);
        assert!(t.is_empty());
    }

    #[test]
    fn with_entry_is_one_step_and_keeps_one_server_per_pool() {
        let t: StickyTable = StickyTable::new("cas", Duration::from_secs(60));
        let c: IpAddr = "198.18.1.2".parse().unwrap();
        let t0 = Instant::now();
        t.with_entry(c, t0, |s| {
            assert!(s.is_empty());
            s.push("198.18.2.11".parse().unwrap());
        });
        t.with_entry(c, t0, |s| s.push("198.18.2.21".parse().unwrap()));
        assert_eq!(t.with_entry(c, t0, |s| s.len()), 2);
        // expired: the closure sees nothing
        assert_eq!(t.with_entry(c, t0 + Duration::from_secs(61), |s| s.len()), 0);
        assert!(t.is_empty());
    }

    #[test]
    fn touch_refreshes_a_live_entry_only() {
        let t: StickyTable = StickyTable::new("cas", Duration::from_secs(10));
        let c: IpAddr = "198.18.1.2".parse().unwrap();
        let t0 = Instant::now();
        t.set(c, "198.18.2.11".parse().unwrap(), t0);
        t.touch(&c, t0 + Duration::from_secs(9));
        assert!(t.get(&c, t0 + Duration::from_secs(18)).is_some());
        t.touch(&c, t0 + Duration::from_secs(40));
        assert!(t.get(&c, t0 + Duration::from_secs(40)).is_none());
    }

    #[test]
    fn retain_servers_drops_only_the_named_choices() {
        let t: StickyTable = StickyTable::new("cas", Duration::from_secs(60));
        let (c1, c2): (IpAddr, IpAddr) = ("198.18.1.2".parse().unwrap(), "198.18.1.3".parse().unwrap());
        let (a, b): (IpAddr, IpAddr) = ("198.18.2.11".parse().unwrap(), "198.18.2.12".parse().unwrap());
        let t0 = Instant::now();
        t.set(c1, a, t0);
        t.with_entry(c2, t0, |s| s.extend([a, b]));
        t.retain_servers(|ip| ip != a);
        assert_eq!(t.get(&c1, t0), None);
        assert_eq!(t.get(&c2, t0), Some(b));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn set_expire_applies_to_existing_entries() {
        let t: StickyTable = StickyTable::new("cas", Duration::from_secs(60));
        let c: IpAddr = "198.18.1.2".parse().unwrap();
        let t0 = Instant::now();
        t.set(c, "198.18.2.11".parse().unwrap(), t0);
        t.set_expire(Duration::from_secs(5));
        assert_eq!(t.get(&c, t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn purge_drops_only_expired() {
        let t: StickyTable = StickyTable::new("cas", Duration::from_secs(10));
        let t0 = Instant::now();
        t.set("198.18.1.2".parse().unwrap(), "198.18.2.11".parse().unwrap(), t0);
        t.set("198.18.1.3".parse().unwrap(), "198.18.2.12".parse().unwrap(), t0 + Duration::from_secs(8));
        assert_eq!(t.purge(t0 + Duration::from_secs(12)), 1);
    }
}
