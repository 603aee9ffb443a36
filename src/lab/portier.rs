//! Runs a real `portier run` process inside a lab's balancer namespace, the way an
//! administrator would, for the tests, the benchmarks and the `portier lab` demo.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::Netns;

pub struct PortierProcess {
    child: Option<Child>,
    ns: String,
    admin: String,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    /// This process's own control socket (`admin.control`), so labs running side by side
    /// never share one.
    pub control_path: PathBuf,
}

/// `config` with `admin.control` set to `path` (added to its `[admin]` table, or as one).
pub fn with_control(config: &str, path: &Path) -> String {
    let line = format!("control = \"{}\"\n", path.display());
    match config.find("[admin]\n") {
        Some(i) => {
            let at = i + "[admin]\n".len();
            format!("{}{line}{}", &config[..at], &config[at..])
        }
        None => format!("[admin]\n{line}\n{config}"),
    }
}

impl PortierProcess {
    /// Writes `config` to a file, starts `exe run --config FILE` in `ns` and waits until
    /// /metrics answers on `admin` (the runtime serves it only after installing its rules).
    pub fn start(ns: &Netns, exe: &Path, config: &str, admin: &str) -> io::Result<PortierProcess> {
        let base = std::env::temp_dir().join(format!("{}-portier", ns.name()));
        let config_path = base.with_extension("toml");
        let log_path = base.with_extension("log");
        let control_path = base.with_extension("sock");
        std::fs::write(&config_path, with_control(config, &control_path))?;
        let log = File::create(&log_path)?;
        let child = ns
            .command(&exe.to_string_lossy())
            .args(["run", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", std::env::var("PORTIER_LAB_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut p = PortierProcess {
            child: Some(child),
            ns: ns.name().to_string(),
            admin: admin.to_string(),
            config_path,
            log_path,
            control_path,
        };
        p.wait_ready(Duration::from_secs(15))?;
        Ok(p)
    }

    fn wait_ready(&mut self, limit: Duration) -> io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().transpose()) {
                let status = status?;
                return Err(io::Error::other(format!(
                    "portier exited during start ({status}):\n{}",
                    self.log_tail()
                )));
            }
            if self.get("/metrics").is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "portier not ready after {limit:?}:\n{}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Replaces the configuration file (keeping this process's control socket); a reload
    /// (`reload`, SIGHUP or the API) then applies it.
    pub fn write_config(&self, config: &str) -> io::Result<()> {
        std::fs::write(&self.config_path, with_control(config, &self.control_path))
    }

    /// `portier reload --config FILE` against this process: (exit code, stdout + stderr).
    pub fn reload(&self, exe: &Path) -> io::Result<(i32, String)> {
        let out =
            std::process::Command::new(exe).args(["reload", "--config"]).arg(&self.config_path).output()?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// SIGHUP: reload the running file.
    pub fn hangup(&self) -> io::Result<()> {
        self.signal(Signal::SIGHUP)
    }

    /// Sends `sig` without waiting for anything.
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        let Some(child) = self.child.as_ref() else { return Err(io::Error::other("portier is not running")) };
        kill(Pid::from_raw(child.id() as i32), sig).map_err(io::Error::other)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// POST a path on the admin listener: (HTTP status, body).
    pub fn post(&self, path: &str, token: Option<&str>) -> io::Result<(u16, String)> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.ns,
            "curl",
            "-sS",
            "--max-time",
            "30",
            "-X",
            "POST",
            "-w",
            "\n%{http_code}",
        ]);
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        let out = cmd.arg(format!("http://{}{path}", self.admin)).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        let code = code.trim().parse().map_err(|_| io::Error::other(format!("POST {path}: {text}")))?;
        Ok((code, body.to_string()))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// GET a path on the admin listener (through curl, inside the balancer namespace).
    pub fn get(&self, path: &str) -> io::Result<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-sfS", "--max-time", "5"])
            .arg(format!("http://{}{path}", self.admin))
            .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!("GET {path}: {}", String::from_utf8_lossy(&out.stderr).trim())))
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The end of the log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn signal_and_wait(&mut self, sig: Signal, limit: Duration) -> io::Result<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return Err(io::Error::other("portier already stopped"));
        };
        let _ = kill(Pid::from_raw(child.id() as i32), sig);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                return Err(io::Error::other(format!("portier did not exit within {limit:?} of {sig}")));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait for a graceful exit (drain included) up to `limit`.
    pub fn stop(&mut self, limit: Duration) -> io::Result<ExitStatus> {
        self.signal_and_wait(Signal::SIGTERM, limit)
    }

    /// SIGKILL: simulates a crash, leaving rules and routes behind.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5))
    }
}

impl Drop for PortierProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.log_path);
        let _ = std::fs::remove_file(&self.control_path);
    }
}
