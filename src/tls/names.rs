//! The names a leaf certificate is indexed under, read with a minimal DER walker.
//!
//! rustls does not expose the parsed certificate's names and no X.509 crate is a dependency;
//! the walk only has to find two things in a certificate the operator supplied (and that
//! rustls has parsed to check the key): the SubjectAltName DNS names and the subject CN.
use rustls::pki_types::{CertificateDer, DnsName};

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const VERSION: u8 = 0xa0; // [0] EXPLICIT
const EXTENSIONS: u8 = 0xa3; // [3] EXPLICIT
const DNS_NAME: u8 = 0x82; // GeneralName dNSName, [2] IMPLICIT IA5String
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11]; // 2.5.29.17
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;

type Result<T> = std::result::Result<T, &'static str>;

/// Lower-case DNS SANs; the CN only when there is no DNS SAN (as clients verify).
/// Names that are not valid host names (or `*.` wildcards of one) are skipped.
pub(super) fn dns_names(cert: &CertificateDer<'_>) -> Result<Vec<String>> {
    let (subject, extensions) = subject_and_extensions(cert.as_ref())?;
    let mut names = Vec::new();
    for raw in san_dns_names(extensions)? {
        push_name(&mut names, raw);
    }
    if names.is_empty() {
        for raw in common_names(subject)? {
            push_name(&mut names, raw);
        }
    }
    Ok(names)
}

fn push_name(names: &mut Vec<String>, raw: &[u8]) {
    let Ok(name) = std::str::from_utf8(raw) else { return };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let host = name.strip_prefix("*.").unwrap_or(&name);
    if DnsName::try_from(host).is_ok() && !host.contains('*') && !names.contains(&name) {
        names.push(name);
    }
}

/// (tag, contents, rest) of the first element of `input`.
pub(super) fn next(input: &[u8]) -> Result<(u8, &[u8], &[u8])> {
    const TRUNCATED: &str = "truncated DER";
    let (&tag, rest) = input.split_first().ok_or(TRUNCATED)?;
    if tag & 0x1f == 0x1f {
        return Err("unsupported DER tag");
    }
    let (&first, rest) = rest.split_first().ok_or(TRUNCATED)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad DER length");
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(TRUNCATED);
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], want: u8) -> Result<(&[u8], &[u8])> {
    match next(input)? {
        (tag, contents, rest) if tag == want => Ok((contents, rest)),
        _ => Err("unexpected DER structure"),
    }
}

/// The subject Name's contents and the extensions' SEQUENCE contents (empty if none).
fn subject_and_extensions(der: &[u8]) -> Result<(&[u8], &[u8])> {
    let (certificate, _) = expect(der, SEQUENCE)?;
    let (mut tbs, _) = expect(certificate, SEQUENCE)?;
    if tbs.first() == Some(&VERSION) {
        tbs = next(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity
    for _ in 0..4 {
        tbs = next(tbs)?.2;
    }
    let (subject, mut rest) = expect(tbs, SEQUENCE)?;
    rest = expect(rest, SEQUENCE)?.1; // subjectPublicKeyInfo
    while !rest.is_empty() {
        let (tag, contents, after) = next(rest)?;
        if tag == EXTENSIONS {
            return Ok((subject, expect(contents, SEQUENCE)?.0));
        }
        rest = after; // issuerUniqueID, subjectUniqueID
    }
    Ok((subject, &[]))
}

fn san_dns_names(mut extensions: &[u8]) -> Result<Vec<&[u8]>> {
    let mut names = Vec::new();
    while !extensions.is_empty() {
        let (extension, rest) = expect(extensions, SEQUENCE)?;
        extensions = rest;
        let (oid, mut fields) = expect(extension, OID)?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        if fields.first() == Some(&BOOLEAN) {
            fields = next(fields)?.2; // critical
        }
        let (value, _) = expect(fields, OCTET_STRING)?;
        let (mut general_names, _) = expect(value, SEQUENCE)?;
        while !general_names.is_empty() {
            let (tag, contents, rest) = next(general_names)?;
            if tag == DNS_NAME {
                names.push(contents);
            }
            general_names = rest;
        }
    }
    Ok(names)
}

fn common_names(mut subject: &[u8]) -> Result<Vec<&[u8]>> {
    let mut names = Vec::new();
    while !subject.is_empty() {
        let (mut rdn, rest) = expect(subject, SET)?;
        subject = rest;
        while !rdn.is_empty() {
            let (attribute, rest) = expect(rdn, SEQUENCE)?;
            rdn = rest;
            let (oid, value) = expect(attribute, OID)?;
            let (tag, contents, _) = next(value)?;
            if oid == COMMON_NAME && matches!(tag, UTF8_STRING | PRINTABLE_STRING | IA5_STRING) {
                names.push(contents);
            }
        }
    }
    Ok(names)
}
