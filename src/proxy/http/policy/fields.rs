//! Header values portier adds to what passes through: its stickiness cookie, and who the
//! client is for a server behind SNAT. Display, so the fast path writes them in place.

use std::fmt;
use std::net::IpAddr;

/// The value of portier's stickiness cookie for one server, written where each path needs
/// it (Display: into the fast path's buffer without a string, or a header value).
pub struct StickyCookie<'a> {
    pub(super) name: &'a str,
    pub(super) value: &'a str,
    pub(super) max_age: u64,
    pub(super) secure: bool,
}

impl fmt::Display for StickyCookie<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}; Path=/; Max-Age={}; HttpOnly", self.name, self.value, self.max_age)?;
        if self.secure {
            f.write_str("; Secure")?;
        }
        Ok(())
    }
}

/// Who the client is, for a server behind SNAT that cannot see it: the values of
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` (RFC 7239).
#[derive(Debug, Clone, Copy)]
pub struct ClientFields {
    pub ip: IpAddr,
    /// "http" or "https": the scheme the client used.
    pub proto: &'static str,
}

impl ClientFields {
    /// The `Forwarded` value; Display, so the fast path writes it without a string.
    pub fn forwarded(self) -> impl fmt::Display {
        struct Forwarded(ClientFields);
        impl fmt::Display for Forwarded {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let ClientFields { ip, proto } = self.0;
                // An IPv6 node is quoted and bracketed (RFC 7239 6).
                if ip.is_ipv6() {
                    write!(f, "for=\"[{ip}]\";proto={proto}")
                } else {
                    write!(f, "for={ip};proto={proto}")
                }
            }
        }
        Forwarded(self)
    }
}
