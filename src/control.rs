//! How a reload is asked for and answered, whatever the trigger (SIGHUP, `portier reload`
//! over the control socket, `POST /api/reload` on the admin listener). The runtime owns the
//! receiving end; admin and the socket server only forward. Nothing here imports the runtime.
//!
//! The control socket speaks one line each way, then the answer's text: the client sends
//! `reload <absolute path>\n` (or `reload\n` for the running file), the server answers
//! `applied\n` or `refused\n` followed by the report, and closes.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// A reload to perform: of `path`, or of the running file when None.
pub struct ReloadRequest {
    pub path: Option<PathBuf>,
    pub reply: oneshot::Sender<ReloadOutcome>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub applied: bool,
    /// What changed (and what needs a restart), or every error of the refused file.
    pub report: String,
}

pub type ReloadSender = mpsc::Sender<ReloadRequest>;

/// Asks the runtime for a reload and waits for its answer.
pub async fn reload(tx: &ReloadSender, path: Option<PathBuf>) -> ReloadOutcome {
    let (reply, answer) = oneshot::channel();
    if tx.send(ReloadRequest { path, reply }).await.is_err() {
        return ReloadOutcome { applied: false, report: "portier is stopping\n".into() };
    }
    answer.await.unwrap_or(ReloadOutcome { applied: false, report: "portier is stopping\n".into() })
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot reach portier at {path} ({source}); is `portier run` running with this admin.control?")]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("control socket {path}: unexpected answer {answer:?}")]
    Answer { path: PathBuf, answer: String },
}

/// Binds the control socket, readable and writable by portier's own user only: whoever can
/// connect can point portier at another file. A leftover socket from a crash is replaced.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Bind { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(err(io::Error::new(io::ErrorKind::AddrInUse, "another portier answers on it")));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Serves the control socket until `stop` turns true, then removes it.
pub async fn serve(listener: UnixListener, path: PathBuf, tx: ReloadSender, mut stop: watch::Receiver<bool>) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(120), answer(stream, &tx)).await;
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn answer(stream: UnixStream, tx: &ReloadSender) -> io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    // A request is one short line; a longer one is not ours.
    BufReader::new(r.take(4096)).read_line(&mut line).await?;
    let line = line.trim_end_matches(['\r', '\n']);
    let path = match line.strip_prefix("reload") {
        Some("") => None,
        Some(rest) if rest.starts_with(' ') && Path::new(rest.trim_start()).is_absolute() => {
            Some(PathBuf::from(rest.trim_start()))
        }
        _ => {
            w.write_all(b"refused\nunknown request: expected `reload [ABSOLUTE PATH]`\n").await?;
            return Ok(());
        }
    };
    let outcome = reload(tx, path).await;
    let head: &[u8] = if outcome.applied { b"applied\n" } else { b"refused\n" };
    w.write_all(head).await?;
    w.write_all(outcome.report.as_bytes()).await?;
    w.shutdown().await
}

/// The client side (`portier reload`): asks the portier listening on `socket` to load `path`.
pub async fn request_reload(socket: &Path, path: Option<&Path>) -> Result<ReloadOutcome, ControlError> {
    let p = || socket.to_path_buf();
    let mut s =
        UnixStream::connect(socket).await.map_err(|source| ControlError::Connect { path: p(), source })?;
    let req = match path {
        Some(f) => format!("reload {}\n", f.display()),
        None => "reload\n".to_string(),
    };
    s.write_all(req.as_bytes()).await.map_err(|source| ControlError::Io { path: p(), source })?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.map_err(|source| ControlError::Io { path: p(), source })?;
    let (head, report) = answer.split_once('\n').unwrap_or((answer.as_str(), ""));
    match head {
        "applied" => Ok(ReloadOutcome { applied: true, report: report.to_string() }),
        "refused" => Ok(ReloadOutcome { applied: false, report: report.to_string() }),
        _ => Err(ControlError::Answer { path: p(), answer }),
    }
}

/// Resolves once the flag is true (or its sender is gone); the borrow ends inside, so the
/// future stays `Send`.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_goes_through_the_socket_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/control.sock");
        let listener = bind(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (tx, mut rx) = mpsc::channel::<ReloadRequest>(1);
        let (stop_tx, stop) = watch::channel(false);
        let server = tokio::spawn(serve(listener, sock.clone(), tx, stop));
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let applied = r.path.is_none();
                let report = format!("asked for {:?}\n", r.path);
                let _ = r.reply.send(ReloadOutcome { applied, report });
            }
        });
        let a = request_reload(&sock, None).await.unwrap();
        assert_eq!(a, ReloadOutcome { applied: true, report: "asked for None\n".into() });
        let b = request_reload(&sock, Some(Path::new("/etc/x.toml"))).await.unwrap();
        assert_eq!(b, ReloadOutcome { applied: false, report: "asked for Some(\"/etc/x.toml\")\n".into() });
        let mut raw = UnixStream::connect(&sock).await.unwrap();
        raw.write_all(b"reload relative.toml\n").await.unwrap();
        let mut text = String::new();
        raw.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("refused\nunknown request"), "{text}");
        stop_tx.send(true).unwrap();
        server.await.unwrap();
        assert!(!sock.exists(), "the socket is removed at stop");
    }

    #[tokio::test]
    async fn no_portier_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = request_reload(&dir.path().join("none.sock"), None).await.unwrap_err();
        assert!(e.to_string().contains("cannot reach portier"), "{e}");
    }
}
