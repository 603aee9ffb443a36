//! Relays bytes both ways between client and server: half-close passes through, an error on
//! either side resets both, activity in either direction keeps the idle timeout away, and an
//! idle connection holds no copy buffer.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their half.
    Closed,
    IdleTimeout,
    /// A read or write failed (reset, broken pipe); both sides were reset.
    Error,
}

impl RelayEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::IdleTimeout => "idle-timeout",
            RelayEnd::Error => "error",
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RelayStats {
    pub to_server: u64,
    pub to_client: u64,
}

const BUF: usize = 16 * 1024;

struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Runs the two directions of a relay to their end: both closed (half-close passes through
/// while the other direction goes on), either failed, or no byte moved for `idle` (activity
/// is `last_ms` since `epoch`). Shared by this copy loop and the splice relay.
pub(super) async fn drive<A, B>(a: A, b: B, last_ms: &AtomicU64, epoch: Instant, idle: Duration) -> RelayEnd
where
    A: std::future::Future<Output = io::Result<()>>,
    B: std::future::Future<Output = io::Result<()>>,
{
    let last = || epoch + Duration::from_millis(last_ms.load(Ordering::Relaxed));
    let watchdog = async {
        loop {
            tokio::time::sleep_until(last() + idle).await;
            if last().elapsed() >= idle {
                return;
            }
        }
    };
    tokio::pin!(a, b, watchdog);
    let (mut a_done, mut b_done) = (false, false);
    loop {
        tokio::select! {
            r = &mut a, if !a_done => match r {
                Ok(()) if b_done => return RelayEnd::Closed,
                Ok(()) => a_done = true,
                Err(_) => return RelayEnd::Error,
            },
            r = &mut b, if !b_done => match r {
                Ok(()) if a_done => return RelayEnd::Closed,
                Ok(()) => b_done = true,
                Err(_) => return RelayEnd::Error,
            },
            _ = &mut watchdog => return RelayEnd::IdleTimeout,
        }
    }
}

/// Copies `from` to `to` until EOF, then shuts `to`'s write side (half-close). The buffer is
/// taken when data is readable and given back as soon as the socket is drained, so thousands
/// of idle connections (MAPI sits idle for hours) cost no buffer memory.
async fn pump(
    from: &OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    activity: &Activity,
    bytes: &Counter,
    total: &AtomicU64,
) -> io::Result<()> {
    let mut buf: Option<Vec<u8>> = None;
    loop {
        from.readable().await?;
        // Capacity only: try_read_buf fills it without zeroing 16 KiB on every burst.
        let b = buf.get_or_insert_with(|| Vec::with_capacity(BUF));
        b.clear();
        match from.try_read_buf(b) {
            Ok(0) => break,
            Ok(n) => {
                to.write_all(&b[..n]).await?;
                activity.touch();
                bytes.inc_by(n as u64);
                total.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = None,
            Err(e) => return Err(e),
        }
    }
    to.shutdown().await
}

/// Relays until both directions are closed, either fails, or nothing moved for `idle`.
pub async fn relay(
    client: TcpStream,
    server: TcpStream,
    idle: Duration,
    to_server: &Counter,
    to_client: &Counter,
) -> (RelayEnd, RelayStats) {
    let (cr, mut cw) = client.into_split();
    let (sr, mut sw) = server.into_split();
    let activity = Activity { epoch: Instant::now(), last_ms: AtomicU64::new(0) };
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));

    let end = {
        let a = pump(&cr, &mut sw, &activity, to_server, &up);
        let b = pump(&sr, &mut cw, &activity, to_client, &down);
        drive(a, b, &activity.last_ms, activity.epoch, idle).await
    };
    if end != RelayEnd::Closed {
        // Pass the failure on: a reset, not a polite FIN, so neither side waits for more.
        // Reunited first: dropping a lone write half would send a FIN before the reset.
        for stream in [cr.reunite(cw), sr.reunite(sw)].into_iter().flatten() {
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    }
    (end, RelayStats { to_server: up.load(Ordering::Relaxed), to_client: down.load(Ordering::Relaxed) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// (application end, relay end) of a loopback TCP connection.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    async fn start(
        idle: Duration,
    ) -> (TcpStream, TcpStream, tokio::task::JoinHandle<(RelayEnd, RelayStats)>) {
        let (client_app, client_side) = pair().await;
        let (server_side, server_app) = pair().await;
        let h = tokio::spawn(async move {
            let (c1, c2) = (Counter::default(), Counter::default());
            relay(client_side, server_side, idle, &c1, &c2).await
        });
        (client_app, server_app, h)
    }

    #[tokio::test]
    async fn relays_both_ways_and_half_closes() {
        let (mut client, mut server, h) = start(Duration::from_secs(5)).await;
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap(); // client half-closes
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap(); // server sees EOF after the data
        assert_eq!(got, b"hello");
        server.write_all(b"still talking").await.unwrap(); // the other half still works
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"still talking");
        let (end, stats) = h.await.unwrap();
        assert_eq!(end, RelayEnd::Closed);
        assert_eq!((stats.to_server, stats.to_client), (5, 13));
    }

    #[tokio::test]
    async fn a_client_reset_resets_the_server_side_at_once() {
        let (client, mut server, h) = start(Duration::from_secs(3600)).await;
        socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
        drop(client); // RST
        let (end, _) =
            tokio::time::timeout(Duration::from_secs(5), h).await.expect("relay must end").unwrap();
        assert_eq!(end, RelayEnd::Error);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf)).await.unwrap();
        assert!(matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset), "{r:?}");
    }

    #[tokio::test]
    async fn idle_timeout_counts_both_directions() {
        let (mut client, mut server, h) = start(Duration::from_millis(400)).await;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            server.read_exact(&mut b).await.unwrap();
        }
        assert!(!h.is_finished(), "activity every 250 ms keeps a 400 ms idle timeout away");
        let (end, _) = tokio::time::timeout(Duration::from_secs(5), h).await.unwrap().unwrap();
        assert_eq!(end, RelayEnd::IdleTimeout);
    }

    #[tokio::test]
    async fn large_transfers_arrive_intact() {
        let (client, mut server, h) = start(Duration::from_secs(5)).await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let d2 = data.clone();
        let (mut cr, mut cw) = client.into_split();
        let w = tokio::spawn(async move {
            cw.write_all(&d2).await.unwrap();
            cw.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        let (mut sr, mut sw) = server.split();
        sr.read_to_end(&mut got).await.unwrap();
        sw.shutdown().await.unwrap();
        w.await.unwrap();
        let mut rest = Vec::new();
        cr.read_to_end(&mut rest).await.unwrap();
        assert!(got == data);
        assert_eq!(h.await.unwrap().1.to_server, 3_000_000);
    }
}
