//! Pure request-routing helpers: host/path routes, cookies. No I/O, unit-tested.

use std::sync::Arc;

use crate::balance::Pool;
use crate::config::RouteConfig;

/// The host without port, lowercased by the caller's comparison.
pub fn bare_host(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [2001:db8::1]:443
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

pub fn host_matches(pattern: &str, host: &str) -> bool {
    // `mail.example.test.` (fully qualified, as SNI lookups already accept) is the same host.
    let host = bare_host(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    match pattern.strip_prefix("*.") {
        Some(domain) => match host.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest.eq_ignore_ascii_case(domain),
            None => false,
        },
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// `prefix` is stored without a trailing slash; it matches whole path segments.
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let p = prefix.as_bytes();
    let b = path.as_bytes();
    b.len() >= p.len()
        && b[..p.len()].eq_ignore_ascii_case(p)
        && (b.len() == p.len() || b[p.len()] == b'/' || b[p.len()] == b'?')
}

/// Position of the first matching route, else None (the caller uses the service's pool).
pub fn route_at(routes: &[(RouteConfig, Arc<Pool>)], host: Option<&str>, path: &str) -> Option<usize> {
    routes.iter().position(|(r, _)| {
        let host_ok = match (&r.host, host) {
            (None, _) => true,
            (Some(p), Some(h)) => host_matches(p, h),
            (Some(_), None) => false,
        };
        host_ok && r.path.as_deref().map(|p| path_matches(p, path)).unwrap_or(true)
    })
}

/// First matching route's pool, else None (the caller uses the service's pool).
pub fn route<'a>(
    routes: &'a [(RouteConfig, Arc<Pool>)],
    host: Option<&str>,
    path: &str,
) -> Option<&'a Arc<Pool>> {
    route_at(routes, host, path).map(|k| &routes[k].1)
}

/// The value of cookie `name` in `Cookie:` header values ("a=1; b=2").
pub fn cookie<'a>(headers: impl Iterator<Item = &'a [u8]>, name: &str) -> Option<&'a str> {
    for h in headers {
        let Ok(text) = std::str::from_utf8(h) else { continue };
        for pair in text.split(';') {
            if let Some((k, v)) = pair.trim().split_once('=') {
                if k.trim() == name {
                    return Some(v.trim().trim_matches('"'));
                }
            }
        }
    }
    None
}

/// The value a `Set-Cookie:` header gives to cookie `name`, if it sets that cookie.
pub fn set_cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a str> {
    let text = std::str::from_utf8(header).ok()?;
    let first = text.split(';').next()?;
    let (k, v) = first.split_once('=')?;
    (k.trim() == name).then(|| v.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(host_matches("mail.example.test", "MAIL.example.test:443"));
        assert!(host_matches("*.example.test", "lync.example.test"));
        assert!(!host_matches("*.example.test", "a.b.example.test"));
        assert!(!host_matches("*.example.test", "example.test"));
        assert!(!host_matches("mail.example.test", "mail.example.test.evil"));
        assert!(host_matches("mail.example.test", "mail.example.test.:443"));
        assert!(host_matches("*.example.test", "lync.example.test."));
        assert!(!host_matches("mail.example.test", "mail.example.test.."));
        assert_eq!(bare_host("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(bare_host("2001:db8::1"), "2001:db8::1");
    }

    #[test]
    fn paths_match_whole_segments() {
        assert!(path_matches("/owa", "/owa"));
        assert!(path_matches("/owa", "/OWA/auth.owa"));
        assert!(path_matches("/owa", "/owa?x=1"));
        assert!(!path_matches("/owa", "/owax"));
        assert!(path_matches("", "/anything"));
    }

    #[test]
    fn cookies() {
        let h: Vec<&[u8]> = vec![b"a=1; PORTIER=abc", b"MS-WSMAN=\"q\""];
        assert_eq!(cookie(h.iter().copied(), "PORTIER"), Some("abc"));
        assert_eq!(cookie(h.iter().copied(), "MS-WSMAN"), Some("q"));
        assert_eq!(cookie(h.iter().copied(), "nope"), None);
        assert_eq!(set_cookie_value(b"MS-WSMAN=xyz; Path=/; Secure", "MS-WSMAN"), Some("xyz"));
        assert_eq!(set_cookie_value(b"other=1", "MS-WSMAN"), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panic(h in "\\PC{0,60}", n in "[A-Za-z-]{1,10}") {
            let _ = bare_host(&h);
            let _ = host_matches("*.x.test", &h);
            let _ = path_matches("/owa", &h);
            let _ = cookie(std::iter::once(h.as_bytes()), &n);
            let _ = set_cookie_value(h.as_bytes(), &n);
        }
    }
}
