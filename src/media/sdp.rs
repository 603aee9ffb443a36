//! SDP (RFC 8866) as the media relay needs it: parsed into its lines, losslessly (what is not
//! touched is written back as it came, unknown attributes included), with typed views of the
//! origin and of each media section, and the edits of a relayed leg: connection address and
//! port per stream, `a=rtcp`, ICE lines removed, and an origin whose version moves only when
//! what a leg is sent changes (RFC 3264 §8).

use std::fmt;
use std::net::IpAddr;

/// An SDP body, line by line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    lines: Vec<Line>,
}

/// One `x=value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub kind: u8,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SDP line {line}: {reason}")]
pub struct SdpError {
    /// 1-based; 0 for the body as a whole.
    pub line: usize,
    pub reason: &'static str,
}

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub version: u64,
    pub address: String,
}

/// Which way a stream flows, from its `a=` direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// A media section (`m=` and the lines up to the next one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// audio, video, image, ...
    pub kind: String,
    /// 0: the stream is refused or disabled.
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    /// Its connection address: the section's `c=`, else the session's; None when neither
    /// parses (a name, or missing).
    pub address: Option<IpAddr>,
    pub direction: Direction,
    /// `a=rtcp:PORT` when given.
    pub rtcp_port: Option<u16>,
}

impl Media {
    /// On hold or otherwise silent on purpose: not sendrecv, or the old style `c=0.0.0.0`
    /// (RFC 2543), which Microsoft's and older phones still send.
    pub fn is_held(&self) -> bool {
        self.direction != Direction::SendRecv || self.address.is_some_and(|a| a.is_unspecified())
    }
}

/// Where the relay receives one stream: RTP on `port`, RTCP on `port + 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPort {
    pub address: IpAddr,
    pub port: u16,
}

/// ICE attributes (RFC 8839) make no sense through a relay that latches: they are dropped on
/// relayed legs, so each end sends to the relay's address alone.
const ICE: [&str; 9] = [
    "candidate",
    "remote-candidates",
    "end-of-candidates",
    "ice-ufrag",
    "ice-pwd",
    "ice-options",
    "ice-lite",
    "ice-mismatch",
    "ice-pacing",
];

fn bad(line: usize, reason: &'static str) -> SdpError {
    SdpError { line, reason }
}

impl Sdp {
    /// Parses a body: CRLF or LF line ends, one letter and `=` per line, `v=0` first, at most
    /// `MAX_LINES` lines; the rest is checked where it is used.
    pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
        const MAX_LINES: usize = 1000;
        let text = std::str::from_utf8(body).map_err(|_| bad(0, "not UTF-8"))?;
        let mut lines = Vec::new();
        for (i, raw) in text.split('\n').enumerate() {
            let l = raw.strip_suffix('\r').unwrap_or(raw);
            if l.is_empty() {
                continue;
            }
            let b = l.as_bytes();
            if b.len() < 2 || !b[0].is_ascii_lowercase() || b[1] != b'=' {
                return Err(bad(i + 1, "not a `x=value` line"));
            }
            if lines.len() == MAX_LINES {
                return Err(bad(i + 1, "too many lines"));
            }
            lines.push(Line { kind: b[0], value: l[2..].to_string() });
        }
        match lines.first() {
            Some(Line { kind: b'v', value }) if value == "0" => {}
            _ => return Err(bad(1, "does not start with v=0")),
        }
        let sdp = Sdp { lines };
        for (i, l) in sdp.lines.iter().enumerate() {
            if l.kind == b'm' {
                parse_m(&l.value).ok_or(bad(i + 1, "bad m= line"))?;
            }
        }
        Ok(sdp)
    }

    pub fn lines(&self) -> &[Line] {
        &self.lines
    }

    /// The body, CRLF after every line.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Index of the first `m=` line (the end of the session section).
    fn session_end(&self) -> usize {
        self.lines.iter().position(|l| l.kind == b'm').unwrap_or(self.lines.len())
    }

    /// Line ranges of the media sections.
    fn sections(&self) -> Vec<std::ops::Range<usize>> {
        let starts: Vec<usize> = (0..self.lines.len()).filter(|&i| self.lines[i].kind == b'm').collect();
        starts
            .iter()
            .enumerate()
            .map(|(k, &s)| s..starts.get(k + 1).copied().unwrap_or(self.lines.len()))
            .collect()
    }

    pub fn origin(&self) -> Option<Origin> {
        let o = self.lines[..self.session_end()].iter().find(|l| l.kind == b'o')?;
        let f: Vec<&str> = o.value.split(' ').collect();
        if f.len() != 6 {
            return None;
        }
        Some(Origin {
            username: f[0].to_string(),
            session_id: f[1].to_string(),
            version: f[2].parse().ok()?,
            address: f[5].to_string(),
        })
    }

    /// The media sections, in order.
    pub fn media(&self) -> Vec<Media> {
        let end = self.session_end();
        let session = &self.lines[..end];
        let session_c = session.iter().find(|l| l.kind == b'c').and_then(|l| connection(&l.value));
        let session_dir = direction(session).unwrap_or(Direction::SendRecv);
        self.sections()
            .into_iter()
            .filter_map(|r| {
                let sec = &self.lines[r];
                let (kind, port, proto, formats) = parse_m(&sec[0].value)?;
                let address = sec.iter().find(|l| l.kind == b'c').map_or(session_c, |l| connection(&l.value));
                let rtcp_port = sec
                    .iter()
                    .filter(|l| l.kind == b'a')
                    .find_map(|l| l.value.strip_prefix("rtcp:"))
                    .and_then(|v| v.split(' ').next()?.parse().ok());
                Some(Media {
                    kind,
                    port,
                    proto,
                    formats,
                    address,
                    direction: direction(sec).unwrap_or(session_dir),
                    rtcp_port,
                })
            })
            .collect()
    }

    /// The RTP clock rate of stream `i`'s first format: its `a=rtpmap`, else the static
    /// payload type's (RFC 3551); None when neither says.
    pub fn clock_rate(&self, i: usize) -> Option<u32> {
        let range = self.sections().into_iter().nth(i)?;
        let sec = &self.lines[range];
        let (_, _, _, formats) = parse_m(&sec[0].value)?;
        let pt = formats.first()?;
        let mapped = sec.iter().filter(|l| l.kind == b'a').find_map(|l| {
            let (p, enc) = l.value.strip_prefix("rtpmap:")?.split_once(' ')?;
            (p == pt).then(|| enc.split('/').nth(1)?.trim().parse().ok()).flatten()
        });
        mapped.or(match pt.parse::<u8>().ok()? {
            0..=9 | 12 | 13 | 15 | 18 => Some(8_000),
            10 | 11 => Some(44_100),
            14 | 25 | 26 | 28 | 31..=34 => Some(90_000),
            _ => None,
        })
    }

    /// Points stream `i` at `relay[i]` (None: left as it is; a stream with port 0 is never
    /// touched): its `c=` and `m=` port, `a=rtcp` to the next port, ICE lines removed. A held
    /// stream (`c=0.0.0.0`) keeps that address, so the hold still reads as one. A stream left
    /// alone keeps its own address when the session's `c=` changes.
    pub fn relay(&mut self, relay: &[Option<RelayPort>]) {
        let media = self.media();
        let end = self.session_end();
        let chosen: Vec<Option<RelayPort>> = media
            .iter()
            .enumerate()
            .map(|(i, m)| relay.get(i).copied().flatten().filter(|_| m.port != 0))
            .collect();
        let first = chosen.iter().flatten().next().copied();
        let session_c = self.lines[..end].iter().find(|l| l.kind == b'c').map(|l| l.value.clone());
        let held_session = session_c.as_deref().and_then(connection).is_some_and(|a| a.is_unspecified());
        // The session's c= after the edit: the first relayed stream's address.
        let new_session_c = match (&session_c, first) {
            (Some(_), Some(r)) if !held_session => Some(connection_line(r.address)),
            _ => session_c.clone(),
        };
        let mut out: Vec<Line> = Vec::with_capacity(self.lines.len() + media.len());
        for l in &self.lines[..end] {
            match l.kind {
                b'a' if first.is_some() && is_ice(&l.value) => {}
                b'c' => out.push(Line { kind: b'c', value: new_session_c.clone().unwrap_or_default() }),
                _ => out.push(l.clone()),
            }
        }
        for ((range, m), r) in self.sections().into_iter().zip(&media).zip(&chosen) {
            let sec = &self.lines[range];
            let held = m.address.is_some_and(|a| a.is_unspecified());
            // What this stream's c= must say afterwards; None: as it is.
            let wanted = match r {
                Some(r) if !held => Some(connection_line(r.address)),
                _ => None,
            };
            let own_c = sec.iter().any(|l| l.kind == b'c');
            // A stream without a c= of its own reads the session's: give it one when that
            // would now say something else than the stream needs.
            let inherited = match (&wanted, own_c) {
                (Some(w), false) if new_session_c.as_ref() != Some(w) => Some(w.clone()),
                (None, false) if new_session_c != session_c => session_c.clone(),
                _ => None,
            };
            for (k, l) in sec.iter().enumerate() {
                match (l.kind, r) {
                    (b'm', Some(r)) => {
                        let mut f = l.value.splitn(3, ' ');
                        let (kind, _, rest) =
                            (f.next().unwrap_or_default(), f.next(), f.next().unwrap_or_default());
                        out.push(Line { kind: b'm', value: format!("{kind} {} {rest}", r.port) });
                    }
                    (b'c', Some(_)) if wanted.is_some() => {
                        out.push(Line { kind: b'c', value: wanted.clone().unwrap_or_default() })
                    }
                    (b'a', Some(r)) if l.value.starts_with("rtcp:") => {
                        let p = r.port.wrapping_add(1);
                        let value = if l.value.contains(' ') && !held {
                            format!("rtcp:{p} {}", connection_line(r.address))
                        } else {
                            format!("rtcp:{p}")
                        };
                        out.push(Line { kind: b'a', value });
                    }
                    (b'a', Some(_)) if is_ice(&l.value) => {}
                    _ => out.push(l.clone()),
                }
                // c= follows m= and its optional i= title (RFC 8866 §5).
                let title_next = sec.get(k + 1).is_some_and(|n| n.kind == b'i');
                if (k == 0 && !title_next) || (k == 1 && l.kind == b'i') {
                    if let Some(c) = &inherited {
                        out.push(Line { kind: b'c', value: c.clone() });
                    }
                }
            }
        }
        self.lines = out;
    }

    /// Sets the `o=` line.
    fn set_origin(&mut self, o: &Origin) {
        let end = self.session_end();
        let family = if o.address.contains(':') { "IP6" } else { "IP4" };
        let value = format!("{} {} {} IN {family} {}", o.username, o.session_id, o.version, o.address);
        match self.lines[..end].iter_mut().find(|l| l.kind == b'o') {
            Some(l) => l.value = value,
            None => self.lines.insert(1, Line { kind: b'o', value }),
        }
    }

    /// The body without its `o=` line: what decides whether the version moves.
    fn content(&self) -> String {
        self.lines
            .iter()
            .filter(|l| l.kind != b'o')
            .map(|l| format!("{}={}\r\n", l.kind as char, l.value))
            .collect()
    }
}

impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            write!(f, "{}={}\r\n", l.kind as char, l.value)?;
        }
        Ok(())
    }
}

/// The origin one leg is shown (RFC 3264 §8): fixed username and session id from the first SDP
/// it was sent, the relay's address, and a version that moves by one only when the body sent
/// differs from the previous one, so a re-INVITE that changes nothing reads as unchanged.
#[derive(Debug, Clone, Default)]
pub struct OriginStamp {
    origin: Option<Origin>,
    last: Option<String>,
}

impl OriginStamp {
    /// Stamps `sdp` (already rewritten for the leg) with the leg's origin, at `address`.
    pub fn stamp(&mut self, sdp: &mut Sdp, address: IpAddr) {
        let content = sdp.content();
        let next = match (&self.origin, sdp.origin()) {
            (Some(o), _) => {
                let changed = self.last.as_deref() != Some(content.as_str());
                Origin { version: o.version + u64::from(changed), address: address.to_string(), ..o.clone() }
            }
            (None, Some(o)) => Origin { address: address.to_string(), ..o },
            (None, None) => Origin {
                username: "-".into(),
                session_id: "1".into(),
                version: 1,
                address: address.to_string(),
            },
        };
        sdp.set_origin(&next);
        self.origin = Some(next);
        self.last = Some(content);
    }
}

fn is_ice(attr: &str) -> bool {
    let name = attr.split(':').next().unwrap_or(attr);
    ICE.contains(&name)
}

fn connection_line(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v4) => format!("IN IP4 {v4}"),
        IpAddr::V6(v6) => format!("IN IP6 {v6}"),
    }
}

/// `IN IP4 198.18.0.11` (a multicast `/ttl` suffix ignored); None for a name or garbage.
fn connection(v: &str) -> Option<IpAddr> {
    let f: Vec<&str> = v.split(' ').collect();
    if f.len() != 3 || f[0] != "IN" {
        return None;
    }
    let addr = f[2].split('/').next()?;
    match (f[1], addr.parse::<IpAddr>().ok()?) {
        ("IP4", a @ IpAddr::V4(_)) | ("IP6", a @ IpAddr::V6(_)) => Some(a),
        _ => None,
    }
}

/// `audio 40000 RTP/AVP 8 0 101` (a `/count` after the port is accepted and ignored).
fn parse_m(v: &str) -> Option<(String, u16, String, Vec<String>)> {
    let mut f = v.split(' ');
    let kind = f.next().filter(|k| !k.is_empty())?.to_string();
    let port = f.next()?.split('/').next()?.parse().ok()?;
    let proto = f.next().filter(|p| !p.is_empty())?.to_string();
    Some((kind, port, proto, f.map(str::to_string).collect()))
}

fn direction(lines: &[Line]) -> Option<Direction> {
    lines.iter().filter(|l| l.kind == b'a').find_map(|l| match l.value.as_str() {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
