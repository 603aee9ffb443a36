//! `[sip.extensions]`: numbers, secrets, ring times and forwarding. Checked last, because a
//! forward is checked against the other extensions and the dial plan.

use std::collections::BTreeMap;

use super::file::SipFile;
use super::DEFAULT_RING_TIME;
use crate::config::validate::{span, Checker};
use crate::sip::dialplan::{is_number, DialPlan, Route, Target};
use crate::sip::{Forward, ForwardTo, SipExtension, SipNat};

pub(super) fn extensions(
    c: &mut Checker<'_>,
    f: &SipFile,
    dialplan: &DialPlan,
) -> BTreeMap<String, SipExtension> {
    let mut extensions = BTreeMap::new();
    for (num, e) in &f.extensions {
        let n = num.get_ref();
        let field = |x: &str| format!("sip.extensions.{n}.{x}");
        if n.is_empty() || n.len() > 15 || !n.bytes().all(|b| b.is_ascii_digit()) {
            c.err(span(num), format!("sip.extensions.{n}"), format!("extension `{n}` must be 1-15 digits"));
        }
        if e.secret.get_ref().is_empty() {
            c.err(span(&e.secret), field("secret"), "must not be empty");
        }
        let voicemail = e.voicemail.as_ref().map(|v| *v.get_ref()).unwrap_or(false);
        if let (Some(v), None) = (&e.voicemail, &f.voicemail) {
            if *v.get_ref() {
                c.err(span(v), field("voicemail"), "voicemail = true needs a [sip.voicemail] section");
            }
        }
        let ring_time = c.duration(&e.ring_time, &field("ring_time"), DEFAULT_RING_TIME);
        let mut forward = Forward::default();
        if let Some(fw) = &e.forward {
            for (v, which, slot) in [
                (&fw.always, "always", &mut forward.always),
                (&fw.busy, "busy", &mut forward.busy),
                (&fw.no_answer, "no_answer", &mut forward.no_answer),
            ] {
                let Some(v) = v else { continue };
                let fname = field(&format!("forward.{which}"));
                let to = v.get_ref();
                if to == "voicemail" {
                    if !voicemail {
                        c.err(
                            span(v),
                            fname,
                            format!("extension {n} has no voicemail (set voicemail = true)"),
                        );
                    }
                    *slot = Some(ForwardTo::Voicemail);
                    continue;
                }
                if to == n {
                    c.err(span(v), fname, format!("extension {n} forwards to itself"));
                } else if !is_number(to) {
                    c.err(span(v), fname, format!("`{to}` is neither a number nor \"voicemail\""));
                } else if !f.extensions.keys().any(|k| k.get_ref() == to) {
                    match dialplan.route(to) {
                        None => c.err(
                            span(v),
                            fname,
                            format!("`{to}` is not an extension and no dial plan rule routes it"),
                        ),
                        Some(Route { target: Target::Extension, number })
                            if !f.extensions.keys().any(|k| *k.get_ref() == number) =>
                        {
                            c.err(
                                span(v),
                                fname,
                                format!("`{to}` routes to extension {number}, which does not exist"),
                            )
                        }
                        Some(_) => {}
                    }
                }
                *slot = Some(ForwardTo::Number(to.clone()));
            }
        }
        let nat = match e.nat.as_ref().map(|v| v.get_ref().as_str()) {
            None | Some("auto") => SipNat::Auto,
            Some("force") => SipNat::Force,
            Some("off") => SipNat::Off,
            Some(other) => {
                c.err(
                    span(e.nat.as_ref().expect("matched Some")),
                    field("nat"),
                    format!("`{other}` is not auto, force or off"),
                );
                SipNat::Auto
            }
        };
        let media = super::media::mode(c, &e.media, &field("media"));
        extensions.insert(
            n.clone(),
            SipExtension {
                nat,
                media,
                name: e.name.as_ref().map(|s| s.get_ref().clone()).unwrap_or_else(|| n.clone()),
                secret: e.secret.get_ref().clone(),
                voicemail,
                ring_time,
                forward,
            },
        );
    }

    extensions
}
