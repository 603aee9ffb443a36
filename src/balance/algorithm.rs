//! Server choice: smooth weighted round robin, weighted least connections, and weighted
//! rendezvous (highest random weight) source hashing. Pure functions over slices so they are
//! tested without sockets; the caller says which servers are usable right now.

use std::net::IpAddr;

/// The smooth weighted round-robin order (nginx's algorithm) for these weights, computed once
/// per pool. Walking it with one atomic counter spreads each server's turns evenly. Weights
/// are divided by their gcd first, which keeps the usual schedules (all weights equal) short.
pub fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|w| i64::from(*w / g)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Round robin: the `tick`-th usable entry of the schedule, counting usable entries only.
/// Falling through to "the next usable one" instead would hand a down server's turns to its
/// successor and skew the load (and a pool mixing IPv4 and IPv6 servers always has some).
pub fn round_robin(schedule: &[usize], tick: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
    let count = schedule.iter().filter(|&&i| usable(i)).count();
    if count == 0 {
        return None;
    }
    schedule.iter().copied().filter(|&i| usable(i)).nth(tick % count)
}

/// Least connections relative to weight; ties broken by rotating from `tick`.
pub fn least_conn(
    weights: &[u32],
    active: impl Fn(usize) -> u64,
    tick: usize,
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let n = weights.len();
    let mut best: Option<(usize, u64)> = None;
    for k in 0..n {
        let i = (tick + k) % n;
        if !usable(i) {
            continue;
        }
        let a = active(i);
        best = match best {
            // a/w_i < b/w_j  <=>  a*w_j < b*w_i
            Some((j, b)) if a * u64::from(weights[j]) >= b * u64::from(weights[i]) => Some((j, b)),
            _ => Some((i, a)),
        };
    }
    best.map(|(i, _)| i)
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finaliser: cheap, well spread, deterministic across runs and restarts.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A hash that is the same in every process and release (FNV-1a, then mixed): cookie values
/// must survive restarts and match between the two nodes of an HA pair.
pub fn stable_hash(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    mix(h)
}

fn ip_key(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => mix(u64::from(u32::from(v4))),
        IpAddr::V6(v6) => {
            let b = u128::from(v6);
            mix((b as u64) ^ mix((b >> 64) as u64))
        }
    }
}

/// Source hashing: weighted rendezvous hashing on (client IP, server address). A client keeps
/// its server as long as that server is usable; when one goes down only its clients move.
pub fn source_hash(
    client: IpAddr,
    servers: &[IpAddr],
    weights: &[u32],
    usable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let c = ip_key(client);
    let mut best: Option<(usize, f64)> = None;
    for (i, s) in servers.iter().enumerate() {
        if !usable(i) {
            continue;
        }
        let h = mix(c ^ ip_key(*s).rotate_left(17) ^ i as u64);
        // uniform in (0, 1); score = -w / ln(u) is the weighted HRW choice.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -f64::from(weights[i]) / u.ln();
        if best.map(|(_, b)| score > b).unwrap_or(true) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn smooth_schedule_interleaves() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_schedule(&[300, 300]), vec![0, 1]);
    }

    #[test]
    fn round_robin_skips_unusable() {
        let s = smooth_schedule(&[1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|t| round_robin(&s, t, |i| i != 1).unwrap()).collect();
        assert_eq!(picks, vec![0, 2, 0, 2, 0, 2]);
        assert_eq!(round_robin(&s, 0, |_| false), None);
    }

    #[test]
    fn least_conn_prefers_fewest_per_weight() {
        let active = [4u64, 1, 3];
        assert_eq!(least_conn(&[1, 1, 1], |i| active[i], 0, |_| true), Some(1));
        // weight 4 with 3 active (0.75) beats weight 1 with 1 active (1.0)
        assert_eq!(least_conn(&[1, 1, 4], |i| active[i], 0, |_| true), Some(2));
        assert_eq!(least_conn(&[1, 1, 1], |i| active[i], 0, |i| i != 1), Some(2));
    }

    #[test]
    fn least_conn_ties_rotate() {
        let a: Vec<_> = (0..4).map(|t| least_conn(&[1, 1], |_| 0, t, |_| true).unwrap()).collect();
        assert_eq!(a, vec![0, 1, 0, 1]);
    }

    #[test]
    fn source_hash_moves_only_clients_of_a_down_server() {
        let servers: Vec<IpAddr> = (11..14).map(|i| format!("198.18.2.{i}").parse().unwrap()).collect();
        let w = [1, 1, 1];
        let mut moved_other = 0;
        for c in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0xC612_0000 + c));
            let all = source_hash(ip, &servers, &w, |_| true).unwrap();
            let without1 = source_hash(ip, &servers, &w, |i| i != 1).unwrap();
            if all != 1 && all != without1 {
                moved_other += 1;
            }
        }
        assert_eq!(moved_other, 0);
    }

    #[test]
    fn source_hash_respects_weights() {
        let servers: Vec<IpAddr> = vec!["198.18.2.11".parse().unwrap(), "198.18.2.12".parse().unwrap()];
        let mut counts = [0; 2];
        for c in 0..20000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + c));
            counts[source_hash(ip, &servers, &[3, 1], |_| true).unwrap()] += 1;
        }
        let share = counts[0] as f64 / 20000.0;
        assert!((0.72..0.78).contains(&share), "{counts:?}");
    }

    proptest! {
        #[test]
        fn schedule_gives_each_server_its_weight(ws in proptest::collection::vec(1u32..20, 1..8)) {
            let s = smooth_schedule(&ws);
            let g = ws.iter().copied().fold(0, gcd);
            for (i, w) in ws.iter().enumerate() {
                prop_assert_eq!(s.iter().filter(|&&x| x == i).count() as u32, *w / g);
            }
        }
    }
}
