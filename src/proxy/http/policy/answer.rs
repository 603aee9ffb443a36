//! The answers portier makes itself when no server gives one, and their texts.

use crate::proxy::retry::Refusal;

/// The answers portier makes itself when no server gives one. Their texts are plain: a
/// reason and at most the pool's name; server addresses and OS errors go to the log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// No server of the pool is usable.
    NoServer,
    /// Every server tried refused the connection.
    NoneAccepted,
    /// The server's response failed or was not valid HTTP.
    ServerFailed,
    /// The server did not answer within the response timeout.
    Timeout,
}

impl From<Refusal> for Answer {
    fn from(r: Refusal) -> Answer {
        match r {
            Refusal::NoServer => Answer::NoServer,
            Refusal::NoneAccepted => Answer::NoneAccepted,
        }
    }
}

impl Answer {
    pub fn status(self) -> u16 {
        match self {
            Answer::NoServer => 503,
            Answer::NoneAccepted | Answer::ServerFailed => 502,
            Answer::Timeout => 504,
        }
    }

    /// The reason phrase of the status line.
    pub fn reason(self) -> &'static str {
        match self {
            Answer::NoServer => "Service Unavailable",
            Answer::NoneAccepted | Answer::ServerFailed => "Bad Gateway",
            Answer::Timeout => "Gateway Timeout",
        }
    }

    /// The body (text/plain) for a request to `pool`.
    pub fn text(self, pool: &str) -> String {
        match self {
            Answer::NoServer => format!("503 service unavailable: no server of pool {pool} is up\n"),
            Answer::NoneAccepted => {
                format!("502 bad gateway: no server of pool {pool} accepted the connection\n")
            }
            Answer::ServerFailed => format!("502 bad gateway: the server of pool {pool} failed to answer\n"),
            Answer::Timeout => {
                format!("504 gateway timeout: the server of pool {pool} did not answer in time\n")
            }
        }
    }

    /// What the refusal log line says happened to the request.
    pub(super) fn outcome(self) -> &'static str {
        match self {
            Answer::NoServer => "503",
            _ => "502",
        }
    }
}
