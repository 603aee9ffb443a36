//! The dial plan: Asterisk-style number patterns and first-match routing.
//!
//! Pattern elements (the ones PBX administrators already know from Asterisk, without the
//! leading `_`):
//!
//! | element  | matches                                              |
//! |----------|------------------------------------------------------|
//! | `X`      | one digit 0-9                                        |
//! | `Z`      | one digit 1-9                                        |
//! | `N`      | one digit 2-9                                        |
//! | `[15-7]` | one character of the set; `a-b` is a digit range     |
//! | `.`      | one or more characters of anything; only at the end  |
//! | `0`-`9`, `*`, `#`, `+` | that character                         |
//!
//! `X`, `Z` and `N` may also be written in lower case. A pattern matches a whole number, never
//! a prefix of it (use a trailing `.` for that). Rules are tried in order and the first whose
//! pattern matches wins; its `strip` leading characters are removed and `prepend` is put in
//! front of what is left.

use std::fmt;

use crate::sip::TrunkId;

/// The characters a pattern element can name: 0-9, then `*`, `#`, `+`.
const ALPHABET: &[u8; 13] = b"0123456789*#+";
const DIGITS: u16 = 0x3ff;

fn class(c: u8) -> Option<u16> {
    match c {
        b'0'..=b'9' => Some(1 << (c - b'0')),
        b'*' => Some(1 << 10),
        b'#' => Some(1 << 11),
        b'+' => Some(1 << 12),
        _ => None,
    }
}

/// A parsed pattern: one set of accepted characters per position, maybe a trailing `.`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    /// One bit per `ALPHABET` character, one entry per position.
    positions: Vec<u16>,
    /// A trailing `.`: one or more further characters of anything.
    rest: bool,
}

impl Pattern {
    /// Parses a pattern; the error says what is wrong and where (1-based character position).
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("empty pattern".into());
        }
        let mut positions = Vec::new();
        let mut rest = false;
        let mut chars = text.char_indices().peekable();
        let mut pos = 0usize;
        while let Some((_, ch)) = chars.next() {
            pos += 1;
            if rest {
                return Err(format!("'.' only at the end (found `{ch}` after it at position {pos})"));
            }
            let set = match ch {
                'X' | 'x' => DIGITS,
                'Z' | 'z' => DIGITS & !1,
                'N' | 'n' => DIGITS & !3,
                '.' => {
                    rest = true;
                    continue;
                }
                '[' => {
                    let open = pos;
                    let mut set = 0u16;
                    let mut prev: Option<u8> = None;
                    let mut closed = false;
                    while let Some((_, c)) = chars.next() {
                        pos += 1;
                        match c {
                            ']' => {
                                closed = true;
                                break;
                            }
                            '-' => {
                                let lo = prev.filter(u8::is_ascii_digit).ok_or_else(|| {
                                    format!("'-' at position {pos} needs a digit before it (e.g. [1-5])")
                                })?;
                                let hi = match chars.next() {
                                    Some((_, h)) if h.is_ascii_digit() => h as u8,
                                    Some((_, h)) => {
                                        return Err(format!(
                                            "'-' at position {pos} needs a digit after it, not `{h}`"
                                        ))
                                    }
                                    None => return Err(format!("unclosed [ at position {open}")),
                                };
                                pos += 1;
                                if hi < lo {
                                    return Err(format!(
                                        "range {}-{} at position {} runs backwards",
                                        lo as char,
                                        hi as char,
                                        pos - 2
                                    ));
                                }
                                for d in lo..=hi {
                                    set |= 1 << (d - b'0');
                                }
                                prev = None;
                            }
                            c => {
                                let bit = u8::try_from(c).ok().and_then(class).ok_or_else(|| {
                                    format!("bad character `{c}` at position {pos} inside [ ]: use digits, '*', '#', '+' and ranges like 1-5")
                                })?;
                                set |= bit;
                                prev = Some(c as u8);
                            }
                        }
                    }
                    if !closed {
                        return Err(format!("unclosed [ at position {open}"));
                    }
                    if set == 0 {
                        return Err(format!("empty set at position {open}"));
                    }
                    set
                }
                c => u8::try_from(c).ok().and_then(class).ok_or_else(|| {
                    format!(
                        "bad character `{c}` at position {pos}: use digits, '*', '#', '+', X, Z, N, [set] or a final '.'"
                    )
                })?,
            };
            positions.push(set);
        }
        if positions.is_empty() {
            return Err(
                "'.' alone matches everything; write at least one element before it (e.g. `X.`)".into()
            );
        }
        Ok(Pattern { text: text.to_string(), positions, rest })
    }

    /// Whether the whole of `number` matches. Allocation-free.
    pub fn matches(&self, number: &str) -> bool {
        let b = number.as_bytes();
        let n = self.positions.len();
        let len_ok = if self.rest { b.len() > n } else { b.len() == n };
        len_ok && self.positions.iter().zip(b).all(|(set, &c)| class(c).is_some_and(|bit| set & bit != 0))
    }

    /// The length of the shortest number this pattern matches.
    pub fn min_len(&self) -> usize {
        self.positions.len() + usize::from(self.rest)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a matching call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One of the PBX's own extensions; the number (after strip and prepend) names it.
    Extension,
    /// A trunk, by its name in `[sip.trunks]`.
    Trunk(TrunkId),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Extension => f.write_str("extension"),
            Target::Trunk(t) => write!(f, "trunk {t}"),
        }
    }
}

/// One dial plan rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub pattern: Pattern,
    pub to: Target,
    /// Leading characters removed from the dialled number.
    pub strip: usize,
    /// Put in front of the number after stripping.
    pub prepend: String,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.pattern, self.to)?;
        if self.strip > 0 {
            write!(f, " strip {}", self.strip)?;
        }
        if !self.prepend.is_empty() {
            write!(f, " prepend {}", self.prepend)?;
        }
        Ok(())
    }
}

/// The outcome of routing a number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    /// The number to send (or the extension to ring), after strip and prepend.
    pub number: String,
}

/// Ordered rules; the first whose pattern matches wins.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DialPlan {
    pub rules: Vec<Rule>,
}

impl DialPlan {
    /// Routes a dialled number by the first rule that matches it.
    ///
    /// A rule whose `strip` is larger than the number does not match it, and neither does a rule
    /// that would leave an empty number (everything stripped, nothing prepended): routing goes
    /// on to the next rule. Validation refuses rules where this could happen for a number the
    /// pattern matches, so it only matters for hand-built plans.
    pub fn route(&self, number: &str) -> Option<Route> {
        self.rules.iter().find_map(|r| {
            if !r.pattern.matches(number) {
                return None;
            }
            // Patterns only match ASCII at fixed positions, but `.` accepts anything: count
            // characters, not bytes, so a multi-byte tail cannot split a character.
            let rest = match number.char_indices().nth(r.strip) {
                Some((i, _)) => &number[i..],
                None if number.chars().count() == r.strip => "",
                None => return None,
            };
            if rest.is_empty() && r.prepend.is_empty() {
                return None;
            }
            Some(Route { target: r.to.clone(), number: format!("{}{rest}", r.prepend) })
        })
    }
}

/// Whether `s` is a dialable number: non-empty, only digits, `*`, `#` and `+`.
pub fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| ALPHABET.contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Pattern {
        Pattern::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> String {
        Pattern::parse(s).expect_err(s)
    }

    #[test]
    fn x_is_any_digit() {
        let x = p("X");
        for d in '0'..='9' {
            assert!(x.matches(&d.to_string()));
        }
        assert!(!x.matches("*") && !x.matches("a") && !x.matches("") && !x.matches("12"));
        assert!(p("x").matches("7"));
    }

    #[test]
    fn z_is_one_to_nine_and_n_two_to_nine() {
        assert!(!p("Z").matches("0") && p("Z").matches("1") && p("Z").matches("9"));
        assert!(!p("N").matches("0") && !p("N").matches("1") && p("N").matches("2") && p("N").matches("9"));
    }

    #[test]
    fn sets_with_ranges() {
        let s = p("[15-7]");
        let hits: String = ('0'..='9').filter(|d| s.matches(&d.to_string())).collect();
        assert_eq!(hits, "1567");
        assert!(p("[*#]").matches("#") && !p("[*#]").matches("1"));
        assert!(p("9[0-2]X").matches("912") && !p("9[0-2]X").matches("932"));
    }

    #[test]
    fn dot_is_one_or_more_of_anything_at_the_end() {
        let d = p("0.");
        assert!(d.matches("00") && d.matches("00112345678") && d.matches("0abc"));
        assert!(!d.matches("0") && !d.matches("10"));
        assert_eq!(d.min_len(), 2);
    }

    #[test]
    fn literals_match_only_themselves_and_the_whole_number() {
        let l = p("*9#+1");
        assert!(l.matches("*9#+1"));
        assert!(!l.matches("*9#+") && !l.matches("*9#+12") && !l.matches("#9#+1"));
        assert!(!p("2XXX").matches("20011"), "no prefix matches without '.'");
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert!(err("2[12").contains("unclosed ["), "{}", err("2[12"));
        assert!(err("2[]").contains("empty set"));
        assert!(err("0.1").contains("'.' only at the end"));
        assert!(err("0..").contains("'.' only at the end"));
        assert!(err("2A").contains("bad character `A` at position 2"), "{}", err("2A"));
        assert!(err("[1a]").contains("bad character `a`"));
        assert!(err("[7-5]").contains("runs backwards"));
        assert!(err("[-5]").contains("needs a digit before"));
        assert!(err("[5-]").contains("needs a digit after"));
        assert!(err("").contains("empty pattern"));
        assert!(err(".").contains("at least one element"));
        assert!(err("2XXé").contains("bad character `é`"));
    }

    fn contract_plan() -> DialPlan {
        let rule = |m: &str, to: Target, strip| Rule { pattern: p(m), to, strip, prepend: String::new() };
        DialPlan {
            rules: vec![
                rule("2XXX", Target::Extension, 0),
                rule("1XXX", Target::Trunk("exchange-um".into()), 0),
                rule("0.", Target::Trunk("isp".into()), 1),
            ],
        }
    }

    #[test]
    fn the_contract_rules_route_as_documented() {
        let plan = contract_plan();
        assert_eq!(plan.route("2001"), Some(Route { target: Target::Extension, number: "2001".into() }));
        assert_eq!(
            plan.route("1900"),
            Some(Route { target: Target::Trunk("exchange-um".into()), number: "1900".into() })
        );
        assert_eq!(
            plan.route("00112345678"),
            Some(Route { target: Target::Trunk("isp".into()), number: "0112345678".into() })
        );
        assert_eq!(plan.route("3001"), None);
        assert_eq!(plan.route("200"), None);
    }

    #[test]
    fn first_match_wins_and_prepend_applies_after_strip() {
        let plan = DialPlan {
            rules: vec![
                Rule { pattern: p("9."), to: Target::Trunk("a".into()), strip: 1, prepend: "+41".into() },
                Rule { pattern: p("9X"), to: Target::Trunk("b".into()), strip: 0, prepend: String::new() },
            ],
        };
        assert_eq!(
            plan.route("912"),
            Some(Route { target: Target::Trunk("a".into()), number: "+4112".into() })
        );
        assert_eq!(plan.route("91").unwrap().number, "+411");
    }

    #[test]
    fn strip_beyond_the_number_skips_the_rule() {
        let plan = DialPlan {
            rules: vec![
                Rule { pattern: p("0."), to: Target::Trunk("a".into()), strip: 5, prepend: String::new() },
                Rule { pattern: p("0."), to: Target::Trunk("b".into()), strip: 2, prepend: String::new() },
                Rule { pattern: p("0."), to: Target::Trunk("c".into()), strip: 2, prepend: "9".into() },
            ],
        };
        assert_eq!(plan.route("0123").unwrap().target, Target::Trunk("b".into()));
        // Stripping everything without a prepend would leave nothing to dial: next rule.
        assert_eq!(plan.route("01"), Some(Route { target: Target::Trunk("c".into()), number: "9".into() }));
    }

    #[test]
    fn numbers() {
        assert!(is_number("2001") && is_number("*86#") && is_number("+41441234567"));
        assert!(!is_number("") && !is_number("20 01") && !is_number("voicemail"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = Pattern::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_pattern_like_text(s in "[0-9XZNxzn.\\[\\]\\-*#+a]{0,12}") {
            if let Ok(pat) = Pattern::parse(&s) {
                let _ = pat.matches(&s);
            }
        }

        #[test]
        fn x_patterns_match_exactly_the_digit_strings_of_their_length(
            n in 1usize..12,
            number in "[0-9*#+a]{0,14}",
        ) {
            let pat = Pattern::parse(&"X".repeat(n)).unwrap();
            let expected = number.len() == n && number.bytes().all(|c| c.is_ascii_digit());
            prop_assert_eq!(pat.matches(&number), expected);
        }

        #[test]
        fn x_patterns_match_every_digit_string_of_their_length(digits in "[0-9]{1,12}") {
            let pat = Pattern::parse(&"X".repeat(digits.len())).unwrap();
            prop_assert!(pat.matches(&digits));
        }

        #[test]
        fn route_never_panics(s in any::<String>(), strip in 0usize..6) {
            let plan = DialPlan { rules: vec![Rule {
                pattern: Pattern::parse("X.").unwrap(), to: Target::Extension, strip, prepend: String::new(),
            }] };
            let _ = plan.route(&s);
        }
    }
}
