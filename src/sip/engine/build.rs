//! Building the requests and responses the engine sends: fresh identifiers, request skeletons,
//! responses to a received request, and the small text helpers they share.

use std::fmt::Write as _;
use std::net::SocketAddr;

use ring::rand::{SecureRandom, SystemRandom};

use crate::sip::transaction::MAGIC_COOKIE;
use crate::sip::SipAddr;
use crate::sip::SipTransport;
use crate::sip::{EditError, Message, NameAddr, ReplyContext, Uri};

/// The branch prefix of every request portier originates: `z9hG4bK` + `-pt-`. A request that
/// comes back to us with one of these in a Via whose sent-by is ours is a loop (482).
pub const BRANCH_PREFIX: &str = "z9hG4bK-pt-";

/// Random identifiers: tags, branches and Call-IDs. Unpredictable, so a far end cannot guess
/// the identifiers of another leg (topology hiding is also about not being guessable).
pub struct Ids {
    rng: SystemRandom,
    fallback: u64,
    /// Keys the To tags of stateless answers, so they cannot be predicted either.
    salt: [u8; 16],
}

impl Default for Ids {
    fn default() -> Self {
        let rng = SystemRandom::new();
        let mut salt = [0u8; 16];
        // A zero salt still gives stable tags; never expected.
        let _ = rng.fill(&mut salt);
        Ids { rng, fallback: 0, salt }
    }
}

impl Ids {
    fn hex(&mut self, bytes: usize) -> String {
        let mut raw = [0u8; 16];
        let raw = &mut raw[..bytes.min(16)];
        if self.rng.fill(raw).is_err() {
            // Never expected; uniqueness is what matters then.
            self.fallback += 1;
            raw.iter_mut().zip(self.fallback.to_be_bytes().iter().cycle()).for_each(|(r, f)| *r ^= f);
        }
        let mut s = String::with_capacity(raw.len() * 2);
        for b in raw.iter() {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    pub fn tag(&mut self) -> String {
        self.hex(8)
    }

    /// The To tag of a response sent without a transaction: derived from `parts` (Call-ID,
    /// From tag, branch), so a retransmitted request gets the same tag (RFC 3261 8.2.7).
    pub fn stateless_tag(&self, parts: &[&str]) -> String {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(&self.salt);
        for p in parts {
            ctx.update(p.as_bytes());
            ctx.update(&[0]);
        }
        let mut s = String::with_capacity(16);
        for b in &ctx.finish().as_ref()[..8] {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    pub fn branch(&mut self) -> String {
        format!("{BRANCH_PREFIX}{}", self.hex(10))
    }

    pub fn call_id(&mut self, domain: &str) -> String {
        format!("{}@{domain}", self.hex(12))
    }

    pub fn cnonce(&mut self) -> String {
        self.hex(8)
    }
}

/// `UDP`, `TCP`, `TLS`: the Via transport token.
pub fn via_transport(t: SipTransport) -> &'static str {
    match t {
        SipTransport::Udp => "UDP",
        SipTransport::Tcp => "TCP",
        SipTransport::Tls => "TLS",
    }
}

/// The URI parameter naming a transport (nothing for UDP, the default).
pub fn uri_transport(t: SipTransport) -> &'static str {
    match t {
        SipTransport::Udp => "",
        SipTransport::Tcp => ";transport=tcp",
        SipTransport::Tls => ";transport=tls",
    }
}

/// `ip:port`, IPv6 in brackets.
pub fn host_port(addr: SocketAddr) -> String {
    addr.to_string()
}

/// A Via value for a request we send from `local`.
pub fn via(local: SipAddr, branch: &str) -> String {
    format!("SIP/2.0/{} {};branch={branch};rport", via_transport(local.transport), host_port(local.addr))
}

/// Our Contact for a leg leaving from `local`, with `user` in it so a UA shows something sane.
pub fn contact(user: &str, local: SipAddr) -> String {
    let user = if user.is_empty() { "portier" } else { user };
    format!("<sip:{user}@{}{}>", host_port(local.addr), uri_transport(local.transport))
}

/// A header's value as text, if present and UTF-8.
pub fn header(msg: &Message, name: &'static str) -> Option<String> {
    msg.get(name).and_then(|h| h.value_text(name).ok()).map(|v| v.into_owned())
}

/// The user part of a URI (`sip:2001@...` -> 2001, `tel:+331...` -> +331...), unescaped.
pub fn uri_user(uri: &Uri) -> Option<String> {
    match uri {
        Uri::Sip(s) => s.user_decoded().map(|u| String::from_utf8_lossy(&u).into_owned()),
        Uri::Tel(t) => Some(t.digits()),
        Uri::Other { .. } => None,
    }
    .map(|u| u.split(';').next().unwrap_or_default().to_owned())
}

/// A name-addr with `;tag=` replaced by `tag` (or removed when `None`), other params kept.
pub fn with_tag(value: &str, header: &'static str, tag: Option<&str>) -> Option<String> {
    let na = NameAddr::parse(value, header).ok()?;
    let mut out = String::new();
    if let Some(d) = &na.display_name {
        let _ = write!(out, "{} ", quote_display(d));
    }
    let _ = write!(out, "<{}>", na.uri);
    for p in na.params.0.iter().filter(|p| !p.name.eq_ignore_ascii_case("tag")) {
        match &p.value {
            Some(v) => {
                let _ = write!(out, ";{}={v}", p.name);
            }
            None => {
                let _ = write!(out, ";{}", p.name);
            }
        }
    }
    if let Some(t) = tag {
        let _ = write!(out, ";tag={t}");
    }
    Some(out)
}

/// A display name as a quoted string.
pub fn quote_display(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// A response to `req` with `status`, our `to_tag` added to To when it has none.
pub fn response(req: &Message, status: u16, reason: &str, to_tag: Option<&str>) -> Option<Message> {
    let mut r = ReplyContext::from_message(req)?.response(status, reason, to_tag).ok()?;
    let _ = r.insert_header(r.headers().len().saturating_sub(1), "Server", "portier");
    Some(r)
}

/// What every request we originate starts with.
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub ruri: &'a str,
    pub via: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub max_forwards: u8,
    pub routes: &'a [String],
    pub contact: Option<&'a str>,
}

/// Builds a request without a body (Content-Length: 0); `set_body` replaces both.
pub fn request(p: &RequestParts<'_>) -> Result<Message, EditError> {
    let mut m = Message::request(p.method, p.ruri)?;
    m.push_header("Via", p.via)?;
    m.push_header("Max-Forwards", &p.max_forwards.to_string())?;
    for r in p.routes {
        m.push_header("Route", r)?;
    }
    m.push_header("From", p.from)?;
    m.push_header("To", p.to)?;
    m.push_header("Call-ID", p.call_id)?;
    m.push_header("CSeq", &format!("{} {}", p.cseq, p.method))?;
    if let Some(c) = p.contact {
        m.push_header("Contact", c)?;
    }
    m.push_header("User-Agent", "portier")?;
    m.push_header("Content-Length", "0")?;
    Ok(m)
}

/// Copies the body and the headers describing it from `from` to `to`.
pub fn copy_body(from: &Message, to: &mut Message) {
    for name in ["Content-Type", "Content-Disposition", "Content-Encoding", "Content-Language"] {
        if let Some(v) = header(from, name) {
            let _ = to.set_header(name, &v);
        }
    }
    if !from.body().is_empty() {
        to.set_body(from.body().to_vec());
    }
}

/// Whether `branch` is one of ours.
pub fn is_our_branch(branch: &str) -> bool {
    branch.starts_with(BRANCH_PREFIX) && branch.starts_with(MAGIC_COOKIE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_replaced_and_params_kept() {
        let v = with_tag("\"Al \\\"x\\\"\" <sip:2001@pbx>;tag=abc;foo=1", "From", Some("new")).unwrap();
        assert_eq!(v, "\"Al \\\"x\\\"\" <sip:2001@pbx>;foo=1;tag=new");
        assert_eq!(with_tag("sip:2001@pbx;tag=1", "To", None).unwrap(), "<sip:2001@pbx>");
    }

    #[test]
    fn users_of_sip_and_tel_uris() {
        assert_eq!(uri_user(&Uri::parse("sip:20%301@pbx").unwrap()).as_deref(), Some("2001"));
        assert_eq!(uri_user(&Uri::parse("sip:0112;phone-context=x@isp").unwrap()).as_deref(), Some("0112"));
        assert_eq!(uri_user(&Uri::parse("tel:+33-1-23").unwrap()).as_deref(), Some("+33123"));
        assert_eq!(uri_user(&Uri::parse("sip:pbx").unwrap()), None);
    }

    #[test]
    fn identifiers_are_unique_and_ours() {
        let mut ids = Ids::default();
        let a = ids.branch();
        assert!(is_our_branch(&a));
        assert_ne!(a, ids.branch());
        assert_ne!(ids.tag(), ids.tag());
    }
}
