//! A tiny TCP echo server run inside a backend namespace.
//!
//! Each connection first gets a greeting line naming the backend and the peer
//! address it sees (see [`Greeting`]); that is how tests observe which backend
//! was chosen and that the client's address was preserved. Everything after
//! the greeting is echoed, which lets tests and benchmarks push data through
//! the proxy.
//!
//! Plain std threads (one per listener and per connection): the lab must not
//! depend on the async runtime it is used to test.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::client::Greeting;
use super::netns::{self, Netns};

/// How long `stop` waits for connection threads to notice the shutdown
/// before giving up on them (they only hold already shut-down sockets).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Greeting + echo server on a set of ports, IPv4 and IPv6, in one namespace.
#[derive(Debug)]
pub struct EchoBackend {
    ns: String,
    name: String,
    ports: Vec<u16>,
    shared: Arc<Shared>,
    listeners: Vec<(Arc<TcpListener>, JoinHandle<()>)>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<ConnState>,
    /// Signalled when the last open connection finished.
    idle: Condvar,
    served: AtomicU64,
}

#[derive(Debug, Default)]
struct ConnState {
    stopping: bool,
    next_id: u64,
    /// Clones of every open connection, so `stop` can shut them down.
    conns: HashMap<u64, TcpStream>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EchoBackend {
    /// Listens on `0.0.0.0:port` and `[::]:port` (IPv6-only) for each port,
    /// inside `ns`. Port 0 picks a free port (the same for v4 and v6); see
    /// [`EchoBackend::ports`]. `name` appears in greetings and must not
    /// contain whitespace.
    pub fn start(ns: &Netns, name: &str, ports: &[u16]) -> io::Result<EchoBackend> {
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("echo backend name {name:?} must be non-empty without whitespace"),
            ));
        }
        let mut backend = EchoBackend {
            ns: ns.name().to_owned(),
            name: name.to_owned(),
            ports: ports.to_vec(),
            shared: Arc::default(),
            listeners: Vec::new(),
        };
        backend.listen()?;
        Ok(backend)
    }

    /// The backend's name, as sent in greetings.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ports listened on (with any port 0 resolved after the first start).
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Whether the listeners are currently open.
    pub fn is_running(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// Connections accepted since `start`, across restarts.
    pub fn connections_served(&self) -> u64 {
        self.shared.served.load(Ordering::Relaxed)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().conns.len()
    }

    /// Simulates a backend crash: closes the listeners (new connections get
    /// a RST) and shuts down every open connection (peers see EOF). Returns
    /// once the listening sockets are closed. Idempotent.
    pub fn stop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            for conn in state.conns.values() {
                let _ = conn.shutdown(Shutdown::Both);
            }
        }
        for (listener, thread) in self.listeners.drain(..) {
            // shutdown(2) on a listening socket makes a blocked accept return
            // (EINVAL) and resets queued connections; closing the fd alone
            // would not wake the accepting thread.
            let _ = SockRef::from(&*listener).shutdown(Shutdown::Both);
            let _ = thread.join();
            // The accept thread has dropped its reference; this closes the fd.
            drop(listener);
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut state = self.shared.lock();
        while !state.conns.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    backend = %self.name,
                    open = state.conns.len(),
                    "echo backend connections did not finish after stop"
                );
                break;
            }
            state = self.shared.idle.wait_timeout(state, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Listens again on the same ports after [`EchoBackend::stop`] (a
    /// backend "coming back"). No-op if already running.
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        self.shared.lock().stopping = false;
        self.listen()
    }

    fn listen(&mut self) -> io::Result<()> {
        let ports = self.ports.clone();
        let sockets = netns::run_in(&self.ns, move || bind_all(&ports))?;
        let sockets =
            sockets.map_err(|e| io::Error::new(e.kind(), format!("echo backend {}: {e}", self.name)))?;
        self.ports = sockets.iter().step_by(2).map(|(port, _)| *port).collect();
        for (_, listener) in sockets {
            let listener = Arc::new(listener);
            let thread = spawn_acceptor(listener.clone(), self.shared.clone(), self.name.clone());
            match thread {
                Ok(thread) => self.listeners.push((listener, thread)),
                Err(e) => {
                    self.stop();
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds v4 and v6 listeners for every port: `[(port, v4), (port, v6), ...]`.
fn bind_all(ports: &[u16]) -> io::Result<Vec<(u16, TcpListener)>> {
    let mut out = Vec::with_capacity(ports.len() * 2);
    for &port in ports {
        let v4 = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
        let port = v4.local_addr()?.port();
        let v6 = bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))?;
        out.push((port, v4));
        out.push((port, v6));
    }
    Ok(out)
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Rebinding right after stop() must work despite TIME_WAIT connections.
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Separate v4 and v6 listeners so v4 peers are never v4-mapped.
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into()).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    sock.listen(1024)?;
    Ok(sock.into())
}

fn spawn_acceptor(
    listener: Arc<TcpListener>,
    shared: Arc<Shared>,
    name: String,
) -> io::Result<JoinHandle<()>> {
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name(format!("echo-{name}-{}", local.port()))
        .spawn(move || accept_loop(&listener, &shared, &name))
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, name: &str) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                if shared.lock().stopping {
                    return;
                }
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => {}
                    // e.g. EMFILE under a benchmark: back off instead of spinning.
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
                continue;
            }
        };
        let mut state = shared.lock();
        if state.stopping {
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let id = state.next_id;
        state.next_id += 1;
        state.conns.insert(id, clone);
        drop(state);
        shared.served.fetch_add(1, Ordering::Relaxed);

        let shared2 = shared.clone();
        let name2 = name.to_owned();
        let spawned = std::thread::Builder::new().name(format!("echo-{name}-conn")).spawn(move || {
            serve(stream, &name2);
            finish_conn(&shared2, id);
        });
        if spawned.is_err() {
            // The stream moved into the failed closure and is closed already.
            finish_conn(shared, id);
        }
    }
}

fn finish_conn(shared: &Shared, id: u64) {
    let mut state = shared.lock();
    state.conns.remove(&id);
    if state.conns.is_empty() {
        shared.idle.notify_all();
    }
}

fn serve(mut stream: TcpStream, name: &str) {
    let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let greeting = Greeting { backend: name.to_owned(), peer, local };
    if stream.write_all(format!("{greeting}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}
