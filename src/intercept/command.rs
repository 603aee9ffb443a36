//! Runs the system's own tools (nft, ip) and turns failures into errors that quote them.

use std::io::Write;
use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    #[error("cannot run `{cmd}`: {source} (is the {package} package installed?)")]
    Spawn { cmd: String, package: &'static str, source: std::io::Error },
    #[error("`{cmd}` failed: {stderr}")]
    Failed { cmd: String, stderr: String },
}

fn package_of(program: &str) -> &'static str {
    match program {
        "nft" => "nftables",
        "ip" => "iproute2",
        _ => "matching",
    }
}

/// Runs `program args`, feeding `stdin` when given; returns stdout.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, InterceptError> {
    let cmd = format!("{program} {}", args.join(" "));
    let spawn_err = |source| InterceptError::Spawn { cmd: cmd.clone(), package: package_of(program), source };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(text.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(InterceptError::Failed { cmd, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() })
    }
}
