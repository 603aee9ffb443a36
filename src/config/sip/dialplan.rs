//! `[[sip.dialplan]]` rules: patterns parsed, targets checked against the trunks, strip and
//! prepend checked against the pattern, each error at its rule's line.

use super::file::SipFile;
use super::validate::names;
use crate::config::validate::{span, Checker};
use crate::sip::dialplan::{is_number, DialPlan, Pattern, Rule, Target};
use crate::sip::TrunkId;

/// The dial plan of `f`; rules with an unusable pattern are reported and left out.
pub(super) fn dialplan(c: &mut Checker<'_>, f: &SipFile) -> DialPlan {
    let mut dialplan = DialPlan::default();
    for (i, r) in f.dialplan.iter().enumerate() {
        let field = |x: &str| format!("sip.dialplan[{i}].{x}");
        let pattern = match Pattern::parse(r.pattern.get_ref()) {
            Ok(p) => Some(p),
            Err(m) => {
                c.err(span(&r.pattern), field("match"), format!("`{}`: {m}", r.pattern.get_ref()));
                None
            }
        };
        let to = match r.to.get_ref().as_str() {
            "extension" => Target::Extension,
            t => {
                if !f.trunks.keys().any(|k| k.get_ref() == t) {
                    c.err(
                        span(&r.to),
                        field("to"),
                        format!("no trunk named `{t}` (defined: {})", names(&f.trunks)),
                    );
                }
                Target::Trunk(TrunkId::new(t))
            }
        };
        let strip = r.strip.as_ref().map(|s| *s.get_ref() as usize).unwrap_or(0);
        let prepend = r.prepend.as_ref().map(|p| p.get_ref().clone()).unwrap_or_default();
        if let Some(p) = &r.prepend {
            if !is_number(p.get_ref()) {
                c.err(
                    span(p),
                    field("prepend"),
                    format!("`{}` may hold only digits, '*', '#' and '+'", p.get_ref()),
                );
            }
        }
        if let (Some(pat), Some(s)) = (&pattern, &r.strip) {
            if strip >= pat.min_len() && prepend.is_empty() {
                c.err(
                    span(s),
                    field("strip"),
                    format!(
                        "strip {strip} removes all of `{}`'s shortest match ({} characters)",
                        pat,
                        pat.min_len()
                    ),
                );
            }
        }
        if let Some(pattern) = pattern {
            dialplan.rules.push(Rule { pattern, to, strip, prepend });
        }
    }
    dialplan
}
