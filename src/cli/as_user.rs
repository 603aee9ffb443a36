//! `portier check --as-user NAME`: the same check run again by that user, so a key or a
//! certificate the service cannot read (a 0600 file of root's, a directory it may not enter)
//! is found before `run` fails on it. Needs root; the child takes the user's uid, primary
//! group and supplementary groups, as a service started under that user would.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// A user's identity as the system knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

#[derive(Debug, thiserror::Error)]
pub enum AsUserError {
    #[error("--as-user needs root (it runs the check again as that user)")]
    NotRoot,
    #[error("no user named `{0}` (a DynamicUser= unit's user exists only while it runs: name a real account, e.g. the one in User=)")]
    NoSuchUser(String),
    #[error("running the check as {0}: {1}")]
    Spawn(String, std::io::Error),
}

/// Looks `name` up in the user database.
pub fn lookup(name: &str) -> Result<User, AsUserError> {
    let c = CString::new(name).map_err(|_| AsUserError::NoSuchUser(name.to_string()))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r fills `pwd` and `buf` (of the length given) and sets `result`.
    let rc = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return Err(AsUserError::NoSuchUser(name.to_string()));
    }
    Ok(User { name: name.to_string(), uid: pwd.pw_uid, gid: pwd.pw_gid })
}

/// The user's groups: the primary one and every group that lists the user.
fn groups_of(user: &User) -> Vec<libc::gid_t> {
    let Ok(name) = CString::new(user.name.clone()) else { return vec![user.gid] };
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let before = n;
        // SAFETY: getgrouplist writes at most `n` entries and sets `n` to the count needed.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), user.gid, groups.as_mut_ptr(), &mut n) };
        if rc >= 0 {
            groups.truncate(n as usize);
            return groups;
        }
        if n <= before {
            return vec![user.gid];
        }
    }
}

/// Runs `portier check --config CONFIG` as `user`; its exit status.
pub fn check_as(user: &User, config: &Path) -> Result<std::process::ExitStatus, AsUserError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(AsUserError::NotRoot);
    }
    let exe = std::env::current_exe().map_err(|e| AsUserError::Spawn(user.name.clone(), e))?;
    let groups = groups_of(user);
    let (uid, gid) = (user.uid, user.gid);
    let mut cmd = Command::new(exe);
    cmd.arg("check").arg("--config").arg(config);
    // SAFETY: setgroups, setgid and setuid are async-signal-safe, so fine between fork and
    // exec; the group list was read before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.status().map_err(|e| AsUserError::Spawn(user.name.clone(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_looked_up() {
        let root = lookup("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(matches!(lookup("no-such-user-here"), Err(AsUserError::NoSuchUser(_))));
        assert!(matches!(lookup("a\0b"), Err(AsUserError::NoSuchUser(_))));
    }
}
