//! Relays bytes both ways between client and server with correct half-close and an idle
//! timeout that counts activity in either direction.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use std::pin::Pin;
use std::task::Poll;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their half.
    Closed,
    IdleTimeout,
    /// A read or write failed (reset, broken pipe).
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

/// Copies `from` to `to` until EOF, then shuts `to`'s write side (half-close).
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    last: &AtomicU64,
    epoch: Instant,
    bytes: &Counter,
    total: &AtomicU64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Allocated when the first byte arrives, so an idle connection holds no copy buffer.
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let (n, eof) = if buf.is_empty() {
            let mut first = [0u8; 1];
            if from.read(&mut first).await? == 0 {
                break;
            }
            buf = vec![0u8; BUF];
            buf[0] = first[0];
            // Take whatever else is already queued so the first write is not a lone byte.
            match read_now(&mut from, &mut buf[1..]).await? {
                Some(0) => (1, true),
                Some(k) => (1 + k, false),
                None => (1, false),
            }
        } else {
            match from.read(&mut buf).await? {
                0 => break,
                k => (k, false),
            }
        };
        to.write_all(&buf[..n]).await?;
        note(last, epoch, bytes, total, n as u64);
        if eof {
            break;
        }
    }
    to.shutdown().await
}

/// One read attempt that does not wait: Some(n) when data (or EOF, n = 0) was ready.
async fn read_now<R: AsyncRead + Unpin>(from: &mut R, buf: &mut [u8]) -> io::Result<Option<usize>> {
    std::future::poll_fn(|cx| {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *from).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(Some(rb.filled().len()))),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Ready(Ok(None)),
        }
    })
    .await
}

fn note(last: &AtomicU64, epoch: Instant, bytes: &Counter, total: &AtomicU64, n: u64) {
    last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    bytes.inc_by(n);
    total.fetch_add(n, Ordering::Relaxed);
}

/// Relays until both directions are closed, an error occurs, or nothing moved for `idle`.
pub async fn relay<C, S>(
    client: C,
    server: S,
    idle: Duration,
    to_server: &Counter,
    to_client: &Counter,
) -> (RelayEnd, RelayStats)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (cr, cw) = tokio::io::split(client);
    let (sr, sw) = tokio::io::split(server);
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));

    let both = async {
        let (a, b) = tokio::join!(
            pump(cr, sw, &last, epoch, to_server, &up),
            pump(sr, cw, &last, epoch, to_client, &down)
        );
        if a.is_ok() && b.is_ok() {
            RelayEnd::Closed
        } else {
            RelayEnd::Error
        }
    };
    let watchdog = async {
        loop {
            let deadline = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
            tokio::time::sleep_until(deadline).await;
            let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle {
                return RelayEnd::IdleTimeout;
            }
        }
    };
    let end = tokio::select! {
        e = both => e,
        e = watchdog => e,
    };
    (end, RelayStats { to_server: up.load(Ordering::Relaxed), to_client: down.load(Ordering::Relaxed) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[tokio::test]
    async fn relays_both_ways_and_half_closes() {
        let (client_app, client_side) = duplex(64);
        let (server_side, server_app) = duplex(64);
        let (c1, c2) = (Counter::default(), Counter::default());
        let h =
            tokio::spawn(
                async move { relay(client_side, server_side, Duration::from_secs(5), &c1, &c2).await },
            );
        let (mut car, mut caw) = tokio::io::split(client_app);
        let (mut sar, mut saw) = tokio::io::split(server_app);
        caw.write_all(b"hello").await.unwrap();
        caw.shutdown().await.unwrap(); // client half-closes
        let mut got = Vec::new();
        sar.read_to_end(&mut got).await.unwrap(); // server sees EOF after the data
        assert_eq!(got, b"hello");
        saw.write_all(b"still talking").await.unwrap(); // the other half still works
        saw.shutdown().await.unwrap();
        let mut back = Vec::new();
        car.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"still talking");
        let (end, stats) = h.await.unwrap();
        assert_eq!(end, RelayEnd::Closed);
        assert_eq!((stats.to_server, stats.to_client), (5, 13));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_both_directions() {
        let (client_app, client_side) = duplex(64);
        let (server_side, server_app) = duplex(64);
        let (c1, c2) = (Counter::default(), Counter::default());
        let h =
            tokio::spawn(
                async move { relay(client_side, server_side, Duration::from_secs(10), &c1, &c2).await },
            );
        let (_car, mut caw) = tokio::io::split(client_app);
        let (mut sar, _saw) = tokio::io::split(server_app);
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_secs(7)).await;
            caw.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            sar.read_exact(&mut b).await.unwrap();
        }
        assert!(!h.is_finished(), "activity every 7 s keeps a 10 s idle timeout away");
        tokio::time::sleep(Duration::from_secs(11)).await;
        let (end, _) = h.await.unwrap();
        assert_eq!(end, RelayEnd::IdleTimeout);
    }
}
