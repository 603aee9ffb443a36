//! Zero-copy TCP relay over splice(2): socket -> pipe -> socket, driven by tokio readiness.
//!
//! Same contract as [`super::relay::relay`]: half-close (the side that reaches EOF has the
//! other side's write half shut, the opposite direction keeps going), an error on either side
//! or the idle timeout ends the relay and resets both sides, activity in either direction keeps
//! the idle timeout away, and byte counters are bumped as bytes are delivered.
//!
//! Each direction owns at most one pipe. It is created when the first byte is readable (an
//! idle connection holds no pipe fds) and closed again once the direction has been quiet for
//! [`SpliceConfig::pipe_linger`], so parked connections cost two socket fds, not six.
//!
//! By default the relay is a hybrid ([`SpliceConfig::copy_below`]): reads smaller than 16 KiB
//! go through a short-lived userspace buffer exactly as in the copy loop, and only a read that
//! fills it (a bulk burst) moves the direction onto a pipe. Interactive traffic never holds a
//! pipe; bulk transfers get splice's lower CPU cost per byte (see `benches/relay.rs`). When no
//! pipe can be had (fd limit, memory), the burst is copied instead of failing the connection.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::relay::{drive, RelayEnd, RelayStats};
use crate::net::{FdSlot, DATA_PATH};

/// Tuning for [`relay_splice_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceConfig {
    /// Requested pipe capacity in bytes (F_SETPIPE_SZ); `None` keeps the kernel default
    /// (64 KiB). Best effort: an unprivileged process over `fs.pipe-user-pages-soft` gets less.
    pub pipe_size: Option<usize>,
    /// How long a drained pipe is kept while its source is quiet before its fds are closed.
    /// `Duration::ZERO` closes it as soon as the source is drained; `Duration::MAX` keeps it
    /// for the life of the connection (no timer per wait).
    pub pipe_linger: Duration,
    /// Hybrid mode when non-zero: while a direction has no pipe, data is copied through a
    /// userspace buffer of this many bytes (taken per read, freed when the socket is drained,
    /// like [`super::relay::relay`]); the first read that fills the buffer marks a bulk burst
    /// and moves the direction to splice until its pipe lingers out. Small, interactive
    /// messages then never touch a pipe. `0` splices from the first byte.
    pub copy_below: usize,
}

impl Default for SpliceConfig {
    /// Hybrid: reads under 16 KiB are copied, bulk bursts are spliced through a default-sized
    /// pipe that is closed after 1 s of quiet. A larger pipe is left off on purpose: an
    /// unprivileged portier (the systemd unit's DynamicUser) shares `fs.pipe-user-pages-soft`
    /// (16384 pages) across all its pipes, and over it every new pipe shrinks to 2 pages.
    fn default() -> Self {
        SpliceConfig { pipe_size: None, pipe_linger: Duration::from_secs(1), copy_below: 16 * 1024 }
    }
}

/// Relays until both directions are closed, an error occurs, or nothing moved for `idle`.
/// Drop-in for [`super::relay::relay`] on plain TCP streams, with the default [`SpliceConfig`].
pub async fn relay_splice(
    client: TcpStream,
    server: TcpStream,
    idle: Duration,
    to_server: &Counter,
    to_client: &Counter,
) -> (RelayEnd, RelayStats) {
    relay_splice_with(client, server, idle, to_server, to_client, SpliceConfig::default()).await
}

/// [`relay_splice`] with explicit tuning.
pub async fn relay_splice_with(
    client: TcpStream,
    server: TcpStream,
    idle: Duration,
    to_server: &Counter,
    to_client: &Counter,
    cfg: SpliceConfig,
) -> (RelayEnd, RelayStats) {
    run(client, server, idle, to_server, to_client, cfg, Pipe::new).await
}

/// Makes a pipe of the requested size; a parameter so tests can simulate fd exhaustion.
type PipeFactory = fn(Option<usize>) -> io::Result<Pipe>;

async fn run(
    client: TcpStream,
    server: TcpStream,
    idle: Duration,
    to_server: &Counter,
    to_client: &Counter,
    cfg: SpliceConfig,
    new_pipe: PipeFactory,
) -> (RelayEnd, RelayStats) {
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));

    let end = {
        let a = pump(
            &client,
            &server,
            cfg,
            new_pipe,
            Activity { last: &last, epoch, bytes: to_server, total: &up },
        );
        let b = pump(
            &server,
            &client,
            cfg,
            new_pipe,
            Activity { last: &last, epoch, bytes: to_client, total: &down },
        );
        drive(a, b, &last, epoch, idle).await
        // The pumps (and their pipes) are dropped here.
    };
    if end != RelayEnd::Closed {
        // Pass the failure on: a reset, not a polite FIN, so neither side waits for more.
        for stream in [&client, &server] {
            let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
        }
    }
    (end, RelayStats { to_server: up.load(Ordering::Relaxed), to_client: down.load(Ordering::Relaxed) })
}

/// Where one direction records the bytes it delivered.
struct Activity<'a> {
    last: &'a AtomicU64,
    epoch: Instant,
    bytes: &'a Counter,
    total: &'a AtomicU64,
}

impl Activity<'_> {
    fn note(&self, n: usize) {
        self.last.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.bytes.inc_by(n as u64);
        self.total.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A non-blocking, close-on-exec pipe; both ends close on drop.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes one splice into the (empty) pipe may ask for.
    cap: usize,
    /// Its two descriptors in the data path's budget.
    _slots: (FdSlot, FdSlot),
}

/// The kernel's default pipe capacity, used when F_GETPIPE_SZ cannot say.
const DEFAULT_PIPE: usize = 64 * 1024;

impl Pipe {
    fn new(size: Option<usize>) -> io::Result<Pipe> {
        // Out of the data path's descriptors the burst is copied instead (as at EMFILE), so
        // pipes never eat into what admin and the health checks keep.
        let budget = || io::Error::other("the data path's descriptor budget is used up");
        let slots = (DATA_PATH.take().ok_or_else(budget)?, DATA_PATH.take().ok_or_else(budget)?);
        let mut fds: [libc::c_int; 2] = [-1, -1];
        // SAFETY: `fds` is a writable array of two c_ints, exactly what pipe2 fills in.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and nothing else owns them.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if let Some(size) = size {
            let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
            // SAFETY: plain fcntl on a pipe fd we own; failure (EPERM/EBUSY over the per-user
            // pipe quota) only leaves the current size, which F_GETPIPE_SZ reports below.
            unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        }
        // SAFETY: plain fcntl query on a pipe fd we own.
        let cap = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        let cap = usize::try_from(cap).ok().filter(|&c| c > 0).unwrap_or(DEFAULT_PIPE);
        Ok(Pipe { read, write, cap, _slots: slots })
    }
}

/// One non-blocking splice(2) of up to `len` bytes; retries EINTR, reports EAGAIN as WouldBlock.
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are borrowed from live owners for the duration of the call;
        // null offsets are required for pipes and sockets (no file position is involved).
        let n = unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Moves `from` to `to` until EOF, then shuts `to`'s write side (half-close).
///
/// The pipe is only filled when it is empty, so EAGAIN from the socket-to-pipe splice always
/// means "socket drained" and EAGAIN from the pipe-to-socket splice always means "socket full";
/// `try_io` then clears exactly the readiness that is really gone.
///
/// If no pipe can be had (EMFILE/ENFILE under the process fd cap, ENOMEM), the burst is copied
/// through a temporary userspace buffer instead: a live connection never fails for want of a pipe.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    cfg: SpliceConfig,
    new_pipe: PipeFactory,
    act: Activity<'_>,
) -> io::Result<()> {
    let mut pipe: Option<Pipe> = None;
    loop {
        let p = match &pipe {
            Some(p) => p,
            None => {
                if cfg.copy_below == 0 {
                    // Wait for the first byte (or EOF) without holding a pipe.
                    if from.peek(&mut [0u8; 1]).await? == 0 {
                        break;
                    }
                } else {
                    // Hybrid: copy until one read fills the buffer, then splice the rest.
                    match copy_burst(from, to, &act, cfg.copy_below).await? {
                        0 => break,
                        n if n < cfg.copy_below => continue,
                        _ => {}
                    }
                }
                match new_pipe(cfg.pipe_size) {
                    Ok(p) => &*pipe.insert(p),
                    Err(e) => {
                        tracing::debug!("no pipe for splice ({e}), copying through userspace");
                        if copy_burst(from, to, &act, FALLBACK_BUF).await? == 0 {
                            break;
                        }
                        continue;
                    }
                }
            }
        };
        let n = match from.try_io(Interest::READABLE, || splice(from.as_fd(), p.write.as_fd(), p.cap)) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Source drained: wait for more, but give the pipe back if it stays quiet.
                if cfg.pipe_linger.is_zero() {
                    pipe = None; // the peek above waits for the next byte
                } else if cfg.pipe_linger == Duration::MAX {
                    from.readable().await?;
                } else {
                    tokio::select! {
                        biased;
                        r = from.readable() => r?,
                        _ = tokio::time::sleep(cfg.pipe_linger) => pipe = None,
                    }
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        // Flush everything that entered the pipe before reading more.
        let mut left = n;
        while left > 0 {
            match to.try_io(Interest::WRITABLE, || splice(p.read.as_fd(), to.as_fd(), left)) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    left -= k;
                    act.note(k);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
    drop(pipe);
    socket2::SockRef::from(to).shutdown(Shutdown::Write)
}

/// One read of up to `size` bytes through a userspace buffer, written out in full; returns
/// the byte count (0 at EOF). The buffer is taken only once the socket is readable and is
/// freed on return, so a direction waiting here holds no memory. Used by the hybrid mode and
/// as the fallback when no pipe is available.
async fn copy_burst(from: &TcpStream, to: &TcpStream, act: &Activity<'_>, size: usize) -> io::Result<usize> {
    let (buf, n) = loop {
        from.readable().await?;
        let mut buf = Vec::with_capacity(size);
        match from.try_read_buf(&mut buf) {
            Ok(n) => break (buf, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    let mut sent = 0;
    while sent < n {
        match to.try_write(&buf[sent..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => {
                sent += k;
                act.note(k);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Buffer size for [`copy_burst`] when it stands in for a missing pipe.
const FALLBACK_BUF: usize = 16 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    /// Splice from the first byte: exercises the pipe path on every burst.
    const PURE: SpliceConfig =
        SpliceConfig { pipe_size: None, pipe_linger: Duration::from_secs(1), copy_below: 0 };

    struct Rig {
        client_app: TcpStream,
        server_app: TcpStream,
        relay: JoinHandle<(RelayEnd, RelayStats)>,
        to_server: Counter,
        to_client: Counter,
    }

    /// client_app <-> [client_side | relay_splice | server_side] <-> server_app, on loopback.
    async fn rig(idle: Duration, cfg: SpliceConfig) -> Rig {
        rig_with(idle, cfg, None).await
    }

    /// `upstream_sndbuf` shrinks the relay's send buffer towards the server.
    async fn rig_with(idle: Duration, cfg: SpliceConfig, upstream_sndbuf: Option<usize>) -> Rig {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_app = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
        let (client_side, _) = front.accept().await.unwrap();
        let server_side = TcpStream::connect(back.local_addr().unwrap()).await.unwrap();
        let (server_app, _) = back.accept().await.unwrap();
        if let Some(size) = upstream_sndbuf {
            socket2::SockRef::from(&server_side).set_send_buffer_size(size).unwrap();
        }
        let (to_server, to_client) = (Counter::default(), Counter::default());
        let (up, down) = (to_server.clone(), to_client.clone());
        let relay =
            tokio::spawn(
                async move { relay_splice_with(client_side, server_side, idle, &up, &down, cfg).await },
            );
        Rig { client_app, server_app, relay, to_server, to_client }
    }

    fn pattern(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn fnv(data: &[u8]) -> u64 {
        data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
    }

    /// Sends `data` in odd-sized chunks, then half-closes.
    async fn send_all(mut w: tokio::net::tcp::OwnedWriteHalf, data: Vec<u8>) {
        for chunk in data.chunks(12_345) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    }

    async fn read_all(mut r: tokio::net::tcp::OwnedReadHalf) -> Vec<u8> {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    }

    async fn bulk_both_ways(cfg: SpliceConfig) {
        const UP: usize = 5 * 1024 * 1024 + 17;
        const DOWN: usize = 3 * 1024 * 1024 + 4099;
        let r = rig(Duration::from_secs(10), cfg).await;
        let (up, down) = (pattern(UP, 1), pattern(DOWN, 2));
        let (up_sum, down_sum) = (fnv(&up), fnv(&down));
        let (car, caw) = r.client_app.into_split();
        let (sar, saw) = r.server_app.into_split();
        let (_, _, at_server, at_client) = tokio::join!(
            tokio::spawn(send_all(caw, up)),
            tokio::spawn(send_all(saw, down)),
            tokio::spawn(read_all(sar)),
            tokio::spawn(read_all(car)),
        );
        let (at_server, at_client) = (at_server.unwrap(), at_client.unwrap());
        assert_eq!((at_server.len(), fnv(&at_server)), (UP, up_sum));
        assert_eq!((at_client.len(), fnv(&at_client)), (DOWN, down_sum));
        let (end, stats) = r.relay.await.unwrap();
        assert_eq!(end, RelayEnd::Closed);
        assert_eq!((stats.to_server, stats.to_client), (UP as u64, DOWN as u64));
        assert_eq!((r.to_server.get(), r.to_client.get()), (UP as u64, DOWN as u64));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_both_ways_default_pipe() {
        bulk_both_ways(PURE).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_both_ways_large_pipe() {
        bulk_both_ways(SpliceConfig { pipe_size: Some(1 << 20), ..PURE }).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_both_ways_small_pipe_no_linger() {
        // 8 KiB is what an unprivileged user gets over fs.pipe-user-pages-soft.
        bulk_both_ways(SpliceConfig { pipe_size: Some(8192), pipe_linger: Duration::ZERO, copy_below: 0 })
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_both_ways_pipe_kept() {
        bulk_both_ways(SpliceConfig { pipe_linger: Duration::MAX, ..PURE }).await;
    }

    const HYBRID: SpliceConfig =
        SpliceConfig { pipe_size: None, pipe_linger: Duration::from_secs(1), copy_below: 16 * 1024 };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bulk_both_ways_hybrid() {
        bulk_both_ways(HYBRID).await;
    }

    #[test]
    fn default_is_the_hybrid() {
        assert_eq!(SpliceConfig::default(), HYBRID);
    }

    /// A relay whose pipe factory counts its calls in `made` and hands out real pipes.
    async fn counting_rig(
        cfg: SpliceConfig,
        new_pipe: PipeFactory,
    ) -> (TcpStream, TcpStream, JoinHandle<()>) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_app = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
        let (client_side, _) = front.accept().await.unwrap();
        let server_side = TcpStream::connect(back.local_addr().unwrap()).await.unwrap();
        let (server_app, _) = back.accept().await.unwrap();
        let relay = tokio::spawn(async move {
            let (c1, c2) = (Counter::default(), Counter::default());
            let (end, _) =
                run(client_side, server_side, Duration::from_secs(10), &c1, &c2, cfg, new_pipe).await;
            assert_eq!(end, RelayEnd::Closed);
        });
        (client_app, server_app, relay)
    }

    #[tokio::test]
    async fn hybrid_small_messages_never_take_a_pipe() {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        fn counted(size: Option<usize>) -> io::Result<Pipe> {
            MADE.fetch_add(1, Ordering::SeqCst);
            Pipe::new(size)
        }
        let (mut client, mut server, relay) = counting_rig(HYBRID, counted).await;
        let msg = pattern(1500, 5);
        let mut back = vec![0u8; msg.len()];
        for _ in 0..50 {
            client.write_all(&msg).await.unwrap();
            server.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
            server.write_all(&back).await.unwrap();
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }
        drop((client, server));
        relay.await.unwrap();
        assert_eq!(MADE.load(Ordering::SeqCst), 0, "interactive traffic must stay on the copy path");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hybrid_bulk_moves_to_splice() {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        fn counted(size: Option<usize>) -> io::Result<Pipe> {
            MADE.fetch_add(1, Ordering::SeqCst);
            Pipe::new(size)
        }
        let (client, server, relay) = counting_rig(HYBRID, counted).await;
        let data = pattern(4 * 1024 * 1024, 6);
        let (_car, caw) = client.into_split();
        let (sar, _saw) = server.into_split();
        let (_, got) = tokio::join!(tokio::spawn(send_all(caw, data.clone())), tokio::spawn(read_all(sar)));
        assert_eq!(fnv(&got.unwrap()), fnv(&data));
        drop((_car, _saw));
        relay.await.unwrap();
        assert!(MADE.load(Ordering::SeqCst) >= 1, "a bulk burst must switch to splice");
    }

    #[tokio::test]
    async fn hybrid_half_close_and_idle_timeout() {
        let r = rig(Duration::from_millis(300), HYBRID).await;
        let (mut car, mut caw) = r.client_app.into_split();
        let (mut sar, mut saw) = r.server_app.into_split();
        caw.write_all(b"hello").await.unwrap();
        caw.shutdown().await.unwrap();
        let mut got = Vec::new();
        sar.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        saw.write_all(b"still talking").await.unwrap();
        let mut back = [0u8; 13];
        car.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"still talking");
        // The server never closes its half: the idle timeout ends the relay.
        let (end, stats) = r.relay.await.unwrap();
        assert_eq!(end, RelayEnd::IdleTimeout);
        assert_eq!((stats.to_server, stats.to_client), (5, 13));
        assert_eq!((r.to_server.get(), r.to_client.get()), (5, 13));
    }

    #[tokio::test]
    async fn bulk_both_ways_single_thread() {
        bulk_both_ways(PURE).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_pipes_falls_back_to_copying() {
        without_pipes(PURE).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_pipes_hybrid_keeps_copying() {
        without_pipes(HYBRID).await;
    }

    async fn without_pipes(cfg: SpliceConfig) {
        fn no_pipe(_: Option<usize>) -> io::Result<Pipe> {
            Err(io::Error::from_raw_os_error(libc::EMFILE))
        }
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let back = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_app = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
        let (client_side, _) = front.accept().await.unwrap();
        let server_side = TcpStream::connect(back.local_addr().unwrap()).await.unwrap();
        let (server_app, _) = back.accept().await.unwrap();
        let (up, down) = (Counter::default(), Counter::default());
        let (c1, c2) = (up.clone(), down.clone());
        let relay = tokio::spawn(async move {
            run(client_side, server_side, Duration::from_secs(10), &c1, &c2, cfg, no_pipe).await
        });
        const N: usize = 2 * 1024 * 1024 + 3;
        let (data, back_data) = (pattern(N, 3), pattern(N / 3, 4));
        let (car, caw) = client_app.into_split();
        let (sar, saw) = server_app.into_split();
        let (_, _, at_server, at_client) = tokio::join!(
            tokio::spawn(send_all(caw, data.clone())),
            tokio::spawn(send_all(saw, back_data.clone())),
            tokio::spawn(read_all(sar)),
            tokio::spawn(read_all(car)),
        );
        assert_eq!(fnv(&at_server.unwrap()), fnv(&data));
        assert_eq!(fnv(&at_client.unwrap()), fnv(&back_data));
        let (end, stats) = relay.await.unwrap();
        assert_eq!(end, RelayEnd::Closed);
        assert_eq!((stats.to_server, stats.to_client), (N as u64, (N / 3) as u64));
        assert_eq!((up.get(), down.get()), (N as u64, (N / 3) as u64));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_reader_backpressure_keeps_data_intact() {
        let cfg = SpliceConfig { pipe_size: Some(256 * 1024), ..PURE };
        // Small send buffer towards a slow server: a 256 KiB pipe drains only partly and the
        // pipe-to-socket splice keeps hitting EAGAIN.
        let r = rig_with(Duration::from_secs(10), cfg, Some(16 * 1024)).await;
        const N: usize = 1024 * 1024 + 5;
        let data = pattern(N, 9);
        let (_car, caw) = r.client_app.into_split();
        let (mut sar, _saw) = r.server_app.into_split();
        let sender = tokio::spawn(send_all(caw, data.clone()));
        let mut got = Vec::with_capacity(N);
        let mut buf = vec![0u8; 7000];
        let mut reads = 0u32;
        loop {
            let n = sar.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            reads += 1;
            if reads % 16 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await; // let the pipe back up
            }
        }
        sender.await.unwrap();
        assert_eq!((got.len(), fnv(&got)), (N, fnv(&data)));
        assert_eq!(r.to_server.get(), N as u64);
    }

    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        let r = rig(Duration::from_secs(5), PURE).await;
        let (mut car, mut caw) = r.client_app.into_split();
        let (mut sar, mut saw) = r.server_app.into_split();
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
        let (end, stats) = r.relay.await.unwrap();
        assert_eq!(end, RelayEnd::Closed);
        assert_eq!((stats.to_server, stats.to_client), (5, 13));
        assert_eq!((r.to_server.get(), r.to_client.get()), (5, 13));
    }

    #[tokio::test]
    async fn immediate_eof_closes_without_data() {
        let r = rig(Duration::from_secs(5), PURE).await;
        drop(r.client_app);
        drop(r.server_app);
        let (end, stats) = r.relay.await.unwrap();
        assert_eq!(end, RelayEnd::Closed);
        assert_eq!((stats.to_server, stats.to_client), (0, 0));
    }

    #[tokio::test]
    async fn idle_timeout_fires_and_resets_both_sides() {
        let r = rig(Duration::from_millis(300), PURE).await;
        let t0 = std::time::Instant::now();
        let (end, stats) = r.relay.await.unwrap();
        let took = t0.elapsed();
        assert_eq!(end, RelayEnd::IdleTimeout);
        assert_eq!((stats.to_server, stats.to_client), (0, 0));
        assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(2), "took {took:?}");
        // Both sides are reset, not closed politely.
        let (mut c, mut sv) = (r.client_app, r.server_app);
        expect_reset(&mut c).await;
        expect_reset(&mut sv).await;
    }

    #[tokio::test]
    async fn activity_either_way_prevents_idle_timeout() {
        let cfg = SpliceConfig { pipe_linger: Duration::from_millis(50), ..PURE };
        let mut r = rig(Duration::from_millis(300), cfg).await;
        let mut b = [0u8; 1];
        // 12 x 120 ms = 1.44 s of traffic, alternating directions, each gap < 300 ms and
        // longer than the pipe linger, so pipes are dropped and re-created along the way.
        for i in 0..12u8 {
            tokio::time::sleep(Duration::from_millis(120)).await;
            if i % 2 == 0 {
                r.client_app.write_all(&[i]).await.unwrap();
                r.server_app.read_exact(&mut b).await.unwrap();
            } else {
                r.server_app.write_all(&[i]).await.unwrap();
                r.client_app.read_exact(&mut b).await.unwrap();
            }
            assert_eq!(b[0], i);
            assert!(!r.relay.is_finished(), "relay ended during activity at step {i}");
        }
        let t0 = std::time::Instant::now();
        let (end, stats) = r.relay.await.unwrap();
        assert_eq!(end, RelayEnd::IdleTimeout);
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert_eq!((stats.to_server, stats.to_client), (6, 6));
        assert_eq!((r.to_server.get(), r.to_client.get()), (6, 6));
    }

    #[tokio::test]
    async fn bursts_across_pipe_linger_arrive_intact() {
        let cfg = SpliceConfig { pipe_linger: Duration::from_millis(20), ..PURE };
        let r = rig(Duration::from_secs(5), cfg).await;
        let (car, mut caw) = r.client_app.into_split();
        let (sar, saw) = r.server_app.into_split();
        let data = pattern(600 * 1024, 7);
        let sender = {
            let data = data.clone();
            tokio::spawn(async move {
                for chunk in data.chunks(100 * 1024) {
                    caw.write_all(chunk).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(60)).await; // > linger: pipe recycled
                }
                caw.shutdown().await.unwrap();
            })
        };
        let got = read_all(sar).await;
        sender.await.unwrap();
        assert_eq!(fnv(&got), fnv(&data));
        drop(car); // server side never writes; closing the client ends the other direction
        drop(saw);
        let (end, stats) = r.relay.await.unwrap();
        assert_eq!(end, RelayEnd::Closed);
        assert_eq!(stats.to_server, data.len() as u64);
    }

    async fn expect_reset(s: &mut TcpStream) {
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap();
        assert!(matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset), "{r:?}");
    }

    #[tokio::test]
    async fn a_server_reset_resets_the_client_side_at_once() {
        let mut r = rig(Duration::from_secs(3600), PURE).await;
        r.client_app.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        r.server_app.read_exact(&mut b).await.unwrap();
        // The server aborts: RST instead of FIN. The client never closes its side.
        socket2::SockRef::from(&r.server_app).set_linger(Some(Duration::ZERO)).unwrap();
        drop(r.server_app);
        let (end, stats) = tokio::time::timeout(Duration::from_secs(5), r.relay).await.unwrap().unwrap();
        assert_eq!(end, RelayEnd::Error);
        assert_eq!(stats.to_server, 4);
        expect_reset(&mut r.client_app).await;
    }

    #[tokio::test]
    async fn a_client_reset_resets_the_server_side_at_once() {
        let mut r = rig(Duration::from_secs(3600), PURE).await;
        socket2::SockRef::from(&r.client_app).set_linger(Some(Duration::ZERO)).unwrap();
        drop(r.client_app);
        let (end, _) = tokio::time::timeout(Duration::from_secs(5), r.relay).await.unwrap().unwrap();
        assert_eq!(end, RelayEnd::Error);
        expect_reset(&mut r.server_app).await;
    }
}

#[cfg(test)]
mod size_budget {
    /// An idle connection costs its task, and the relay's state machine is most of it: a
    /// buffer or a duplicated future laid out inline multiplies across thousands of idle MAPI
    /// connections (5,000 of them held measure about 4.6 KB each, docs/PERFORMANCE.md).
    #[tokio::test]
    async fn relay_futures_stay_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut pairs = Vec::new();
        for _ in 0..2 {
            let a = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (b, _) = l.accept().await.unwrap();
            pairs.push((a, b));
        }
        let c = prometheus_client::metrics::counter::Counter::default();
        let (a, b) = pairs.pop().unwrap();
        let splice = super::relay_splice(a, b, std::time::Duration::from_secs(1), &c, &c);
        let (a, b) = pairs.pop().unwrap();
        let copy = crate::proxy::relay::relay(a, b, std::time::Duration::from_secs(1), &c, &c);
        assert!(
            std::mem::size_of_val(&splice) <= 4096,
            "splice relay future: {} bytes",
            std::mem::size_of_val(&splice)
        );
        assert!(
            std::mem::size_of_val(&copy) <= 2560,
            "copy relay future: {} bytes",
            std::mem::size_of_val(&copy)
        );
    }
}
