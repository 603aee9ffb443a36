//! The access log: one line per request, as key=value text or JSON.

use std::fmt::Write;
use std::time::Duration;

use crate::config::AccessLog;

pub struct AccessRecord<'a> {
    pub service: &'a str,
    pub client: std::net::SocketAddr,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub server: &'a str,
    pub duration: Duration,
    pub complete: bool,
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Text values are quoted only when they need it, with quotes and controls escaped, so one
/// request is always one line whatever a client puts in its path.
fn text_val(out: &mut String, s: &str) {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '\\') {
        out.push_str(s);
    } else {
        json_str(out, s);
    }
}

pub fn format(r: &AccessRecord<'_>, style: AccessLog) -> Option<String> {
    let mut o = String::with_capacity(200);
    let ms = r.duration.as_millis() as u64;
    match style {
        AccessLog::Off => return None,
        AccessLog::Text => {
            let _ = write!(o, "service={} client={} host=", r.service, r.client);
            text_val(&mut o, r.host);
            o.push_str(" method=");
            text_val(&mut o, r.method);
            o.push_str(" path=");
            text_val(&mut o, r.path);
            let _ = write!(
                o,
                " status={} bytes_in={} bytes_out={} server={} duration_ms={ms}{}",
                r.status,
                r.bytes_in,
                r.bytes_out,
                r.server,
                if r.complete { "" } else { " aborted=true" }
            );
        }
        AccessLog::Json => {
            o.push_str("{\"service\":");
            json_str(&mut o, r.service);
            let _ = write!(o, ",\"client\":\"{}\",\"host\":", r.client);
            json_str(&mut o, r.host);
            o.push_str(",\"method\":");
            json_str(&mut o, r.method);
            o.push_str(",\"path\":");
            json_str(&mut o, r.path);
            let _ = write!(
                o,
                ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"server\":",
                r.status, r.bytes_in, r.bytes_out
            );
            json_str(&mut o, r.server);
            let _ = write!(o, ",\"duration_ms\":{ms},\"complete\":{}}}", r.complete);
        }
    }
    Some(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str) -> AccessRecord<'_> {
        AccessRecord {
            service: "web",
            client: "198.18.1.2:5000".parse().unwrap(),
            host: "mail.example.test",
            method: "GET",
            path,
            status: 200,
            bytes_in: 0,
            bytes_out: 12,
            server: "198.18.2.11:443",
            duration: Duration::from_millis(3),
            complete: true,
        }
    }

    #[test]
    fn text_line() {
        let l = format(&rec("/owa/"), AccessLog::Text).unwrap();
        assert_eq!(l, "service=web client=198.18.1.2:5000 host=mail.example.test method=GET path=/owa/ status=200 bytes_in=0 bytes_out=12 server=198.18.2.11:443 duration_ms=3");
    }

    #[test]
    fn hostile_paths_stay_on_one_line() {
        let l = format(&rec("/a b\n\"x"), AccessLog::Text).unwrap();
        assert!(!l.contains('\n') && l.contains("path=\"/a b\\u000a\\\"x\""), "{l}");
        let j = format(&rec("/a\"\n"), AccessLog::Json).unwrap();
        assert!(
            j.starts_with("{\"service\":\"web\"")
                && j.contains("\"path\":\"/a\\\"\\u000a\"")
                && j.ends_with("\"complete\":true}"),
            "{j}"
        );
        assert!(format(&rec("/"), AccessLog::Off).is_none());
    }
}
