//! A named network namespace (`/run/netns/NAME`) owned by the lab.
//!
//! Namespaces are created and deleted with iproute2 (`ip netns add/del`) rather
//! than raw syscalls because `ip` also takes care of the `/run/netns` shared
//! mount dance, and because the resulting namespaces are then visible to every
//! tool (`ip netns exec`, `nft`, tcpdump) an engineer may want to poke with
//! while a test is paused.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

use nix::sched::{setns, CloneFlags};

/// Directory where iproute2 pins named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace. Dropping it deletes the namespace (and thereby
/// every interface inside it, including veth ends whose peers live elsewhere).
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Cleared when someone (e.g. `Lab::drop`, which batches deletions) already
    /// removed the namespace, so `Drop` does not try a second time.
    owned: bool,
}

impl Netns {
    /// Creates a new named namespace with `ip netns add NAME`.
    ///
    /// Fails if the name already exists: the lab never adopts a namespace it
    /// did not create, so it can never delete someone else's.
    pub fn create(name: &str) -> io::Result<Netns> {
        check_name(name)?;
        with_netns_dir_ready(|| ip_ok(["netns", "add", name]))?;
        Ok(Netns { name: name.to_owned(), owned: true })
    }

    /// Creates several namespaces with a single `ip -batch` process (faster
    /// than one process each). On failure, those that were created are
    /// deleted again before the error is returned.
    pub fn create_many(names: &[String]) -> io::Result<Vec<Netns>> {
        for name in names {
            check_name(name)?;
        }
        for name in names {
            if netns_path(name).exists() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("network namespace {name} already exists"),
                ));
            }
        }
        let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
        let result = with_netns_dir_ready(|| ip_batch(None, &script));
        // Adopt exactly the ones that now exist (the names are unique to this
        // lab instance, so whatever exists under them is ours).
        let created: Vec<Netns> = names
            .iter()
            .filter(|n| netns_path(n).exists())
            .map(|n| Netns { name: n.clone(), owned: true })
            .collect();
        result?;
        if created.len() != names.len() {
            return Err(io::Error::other(format!(
                "ip netns add reported success but only {} of {} namespaces exist",
                created.len(),
                names.len()
            )));
        }
        Ok(created)
    }

    /// The namespace name as known to `ip netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns
    /// its result.
    ///
    /// A fresh thread is used because `setns` only affects the calling thread
    /// and we must never move a thread of the caller (e.g. a tokio worker) into
    /// another namespace. Sockets created by `f` stay bound to this namespace
    /// for their whole life, so `f` can create sockets and hand them back.
    ///
    /// If `f` panics, the panic is propagated to the caller (so assertions
    /// inside `f` behave as in the caller's body).
    pub fn run<T, F>(&self, f: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        run_in(&self.name, f)
    }

    /// A `Command` running `ip netns exec NAME program`; add arguments and run
    /// it yourself. Useful for long-running helpers (`nft`, servers, etc.).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(ip_bin());
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `ip netns exec NAME args...` to completion and returns its stdout.
    /// A non-zero exit status becomes an error naming the command and its
    /// stderr, so test failures explain themselves.
    pub fn sh(&self, args: &[&str]) -> io::Result<String> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "Netns::sh: empty command"))?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        let out = output_checked(&mut cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs an `ip -batch` script inside this namespace (one process for many
    /// commands). Errors include the script and iproute2's message.
    pub fn ip_batch(&self, script: &str) -> io::Result<()> {
        ip_batch(Some(&self.name), script)
    }

    /// Writes a sysctl of this namespace, e.g. `("net/ipv4/ip_forward", "1")`.
    ///
    /// Done from a thread inside the namespace: `/proc/sys/net` resolves
    /// against the opening thread's namespace, so no process is spawned.
    pub fn set_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        self.set_sysctls(&[(key, value)])
    }

    /// Writes several sysctls in order (see [`Netns::set_sysctl`]).
    pub fn set_sysctls(&self, pairs: &[(&str, &str)]) -> io::Result<()> {
        let pairs: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.replace('.', "/"), (*v).to_owned())).collect();
        let ns = self.name.clone();
        self.run(move || {
            for (key, value) in &pairs {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value).map_err(|e| {
                    io::Error::new(e.kind(), format!("netns {ns}: write {value} to {}: {e}", path.display()))
                })?;
            }
            Ok(())
        })?
    }

    /// Marks the namespace as already deleted so `Drop` leaves it alone.
    pub(crate) fn forget_deleted(&mut self) {
        self.owned = false;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        if let Err(e) = ip_ok(["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, error = %e, "failed to delete lab network namespace");
        }
    }
}

/// `/run/netns/NAME`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `f` on a new thread inside the namespace called `name`. Used by
/// [`Netns::run`] and by helpers (like the echo backend) that only keep the
/// namespace name around.
pub(crate) fn run_in<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let path = netns_path(name);
    let file =
        File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
    let handle =
        std::thread::Builder::new().name(format!("netns-{name}")).spawn(move || -> io::Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::new(io::Error::from(e).kind(), format!("setns({}): {e}", path.display()))
            })?;
            drop(file);
            Ok(f())
        })?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn check_name(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid network namespace name {name:?}")))
    }
}

/// The `ip` binary. Resolved once: test harnesses and sudo sometimes run with
/// a PATH lacking `/usr/sbin`, which would otherwise fail confusingly.
pub(crate) fn ip_bin() -> &'static OsStr {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let from_path = std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("ip")).find(|p| p.is_file()));
        from_path
            .or_else(|| {
                ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
                    .iter()
                    .map(PathBuf::from)
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| PathBuf::from("ip"))
    })
    .as_os_str()
}

/// The first `ip netns add` on a fresh machine turns `/run/netns` into a
/// shared bind mount; two processes doing that at once can stack two mounts.
/// Serialize namespace creation within this process until one succeeded.
fn with_netns_dir_ready<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    static READY: Mutex<bool> = Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if *ready {
        drop(ready);
        return f();
    }
    let result = f();
    if result.is_ok() {
        *ready = true;
    }
    result
}

fn ip_ok<const N: usize>(args: [&str; N]) -> io::Result<()> {
    let mut cmd = Command::new(ip_bin());
    cmd.args(args);
    output_checked(&mut cmd).map(drop)
}

/// Runs `ip [-n NS] -batch -` with `script` on stdin.
pub(crate) fn ip_batch(ns: Option<&str>, script: &str) -> io::Result<()> {
    finish(spawn_ip_batch(ns, script)?).map(drop)
}

/// Like [`ip_batch`] but with `-force`: keeps going after a failing line
/// (still reporting failure), for best-effort cleanup.
pub(crate) fn ip_batch_force(script: &str) -> io::Result<()> {
    let mut cmd = Command::new(ip_bin());
    cmd.args(["-force", "-batch", "-"]);
    finish(spawn(&mut cmd, Some(script))?).map(drop)
}

/// Spawns `ip [-n NS] -batch -` feeding `script`, without waiting: lets the
/// lab configure several namespaces concurrently. Complete with [`finish`].
pub(crate) fn spawn_ip_batch(ns: Option<&str>, script: &str) -> io::Result<Pending> {
    let mut cmd = Command::new(ip_bin());
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    spawn(&mut cmd, Some(script))
}

/// A spawned command whose output has not been collected yet.
pub(crate) struct Pending {
    child: std::process::Child,
    desc: String,
    stdin: Option<String>,
    write_result: io::Result<()>,
}

fn spawn(cmd: &mut Command, stdin: Option<&str>) -> io::Result<Pending> {
    let desc = describe(cmd);
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("spawn {desc}: {e}")))?;
    let mut write_result = Ok(());
    if let Some(input) = stdin {
        // Inputs are small (far below the pipe buffer), so writing everything
        // before reading the output cannot deadlock.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        write_result = pipe.write_all(input.as_bytes());
    }
    Ok(Pending { child, desc, stdin: stdin.map(str::to_owned), write_result })
}

/// Waits for a [`Pending`] command; a non-zero exit becomes an error carrying
/// the command line, stderr and (for scripts) the script.
pub(crate) fn finish(pending: Pending) -> io::Result<Output> {
    let Pending { child, desc, stdin, write_result } = pending;
    let out =
        child.wait_with_output().map_err(|e| io::Error::new(e.kind(), format!("wait for {desc}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut msg = format!("`{desc}` failed ({}): {}", out.status, stderr.trim());
        if let Some(script) = stdin {
            msg.push_str("\nscript:\n");
            msg.push_str(&script);
        }
        return Err(io::Error::other(msg));
    }
    write_result.map_err(|e| io::Error::new(e.kind(), format!("write stdin of {desc}: {e}")))?;
    Ok(out)
}

fn output_checked(cmd: &mut Command) -> io::Result<Output> {
    finish(spawn(cmd, None)?)
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}
