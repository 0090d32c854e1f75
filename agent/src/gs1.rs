//! GS1 element strings as bottle scanners read them: application identifiers (AIs), the GTIN
//! check digit, and the serial number.
//!
//! A code is accepted in the forms scanners send: raw (`01…21…`, with the GS character, ASCII
//! 29, ending a variable-length field), with a symbology identifier in front (`]d2`, `]C1`,
//! `]Q3`), or human-readable with parentheses (`(01)…(21)…`). It must hold AI 01, a GTIN-14
//! whose check digit is right.

/// How an AI's value is delimited.
#[derive(Debug, Clone, Copy)]
enum Length {
    Fixed(usize),
    /// Up to this many characters, ended by GS or the end of the code.
    Variable(usize),
}

/// What the agent knows of one AI.
#[derive(Debug, Clone, Copy)]
struct Ai {
    code: &'static str,
    length: Length,
    numeric: bool,
    check_digit: bool,
}

const fn fixed(code: &'static str, n: usize, check_digit: bool) -> Ai {
    Ai {
        code,
        length: Length::Fixed(n),
        numeric: true,
        check_digit,
    }
}

const fn var(code: &'static str, max: usize) -> Ai {
    Ai {
        code,
        length: Length::Variable(max),
        numeric: false,
        check_digit: false,
    }
}

/// The AIs found on bottle, case and pallet labels. Anything else is refused by name rather
/// than guessed at, because a mis-split code would yield a wrong serial.
const AIS: &[Ai] = &[
    fixed("00", 18, true),
    fixed("01", 14, true),
    fixed("02", 14, true),
    var("10", 20),
    fixed("11", 6, false),
    fixed("13", 6, false),
    fixed("15", 6, false),
    fixed("17", 6, false),
    var("21", 20),
    var("240", 30),
    var("241", 30),
    var("30", 8),
    var("37", 8),
    var("91", 90),
    var("92", 90),
    var("93", 90),
    var("94", 90),
    var("95", 90),
    var("96", 90),
    var("97", 90),
    var("98", 90),
    var("99", 90),
];

/// Group separator (FNC1 as transmitted).
const GS: char = '\u{1d}';
/// Longest code line accepted.
pub const MAX_CODE_LEN: usize = 512;

/// A valid code and the parts a bottle record carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gs1Code {
    /// The code as scanned (trimmed).
    pub code: String,
    pub gtin: String,
    pub serial: Option<String>,
    /// Every (AI, value) in order.
    pub elements: Vec<(String, String)>,
}

/// Why a code is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Gs1Error {
    #[error("empty code")]
    Empty,
    #[error("code is longer than {MAX_CODE_LEN} characters")]
    TooLong,
    #[error("unknown application identifier at `{0}`")]
    UnknownAi(String),
    #[error("AI {ai}: {reason}")]
    BadValue { ai: &'static str, reason: String },
    #[error("AI {0} appears twice")]
    Repeated(&'static str),
    #[error("no GTIN (AI 01)")]
    NoGtin,
}

/// Parses and checks one scanned code.
pub fn parse(line: &str) -> Result<Gs1Code, Gs1Error> {
    let code = line.trim_matches(|c: char| c.is_whitespace() && c != GS);
    if code.is_empty() {
        return Err(Gs1Error::Empty);
    }
    if code.chars().count() > MAX_CODE_LEN {
        return Err(Gs1Error::TooLong);
    }
    let body = strip_symbology(code);
    let elements = if body.starts_with('(') {
        split_parenthesized(body)?
    } else {
        split_raw(body)?
    };
    let mut seen: Vec<&'static str> = Vec::new();
    for (ai, value) in &elements {
        if seen.contains(&ai.code) {
            return Err(Gs1Error::Repeated(ai.code));
        }
        seen.push(ai.code);
        check_value(ai, value)?;
    }
    let find = |code: &str| {
        elements
            .iter()
            .find(|(ai, _)| ai.code == code)
            .map(|(_, v)| v.clone())
    };
    let gtin = find("01").ok_or(Gs1Error::NoGtin)?;
    Ok(Gs1Code {
        code: code.to_owned(),
        gtin,
        serial: find("21"),
        elements: elements
            .iter()
            .map(|(ai, v)| (ai.code.to_owned(), v.clone()))
            .collect(),
    })
}

/// Drops a leading symbology identifier (`]` and two characters) and a leading GS.
fn strip_symbology(code: &str) -> &str {
    let code = match code.strip_prefix(']') {
        Some(rest) if rest.len() >= 2 && rest.is_char_boundary(2) => &rest[2..],
        _ => code,
    };
    code.strip_prefix(GS).unwrap_or(code)
}

fn lookup(rest: &str) -> Option<Ai> {
    AIS.iter().copied().find(|ai| rest.starts_with(ai.code))
}

fn split_raw(mut rest: &str) -> Result<Vec<(Ai, String)>, Gs1Error> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let ai = lookup(rest).ok_or_else(|| Gs1Error::UnknownAi(prefix(rest)))?;
        rest = &rest[ai.code.len()..];
        let value: String = match ai.length {
            Length::Fixed(n) => {
                let value: String = rest.chars().take(n).collect();
                rest = &rest[value.len()..];
                value
            }
            Length::Variable(_) => {
                let end = rest.find(GS).unwrap_or(rest.len());
                let value = rest[..end].to_owned();
                rest = &rest[end..];
                value
            }
        };
        rest = rest.strip_prefix(GS).unwrap_or(rest);
        out.push((ai, value));
    }
    Ok(out)
}

fn split_parenthesized(mut rest: &str) -> Result<Vec<(Ai, String)>, Gs1Error> {
    let mut out = Vec::new();
    while let Some(after) = rest.strip_prefix('(') {
        let close = after
            .find(')')
            .ok_or_else(|| Gs1Error::UnknownAi(prefix(rest)))?;
        let name = &after[..close];
        let ai = AIS
            .iter()
            .copied()
            .find(|ai| ai.code == name)
            .ok_or_else(|| Gs1Error::UnknownAi(name.to_owned()))?;
        let tail = &after[close + 1..];
        let end = tail.find('(').unwrap_or(tail.len());
        out.push((ai, tail[..end].to_owned()));
        rest = &tail[end..];
    }
    if !rest.is_empty() {
        return Err(Gs1Error::UnknownAi(prefix(rest)));
    }
    Ok(out)
}

fn prefix(s: &str) -> String {
    s.chars().take(4).collect()
}

fn check_value(ai: &Ai, value: &str) -> Result<(), Gs1Error> {
    let bad = |reason: String| Gs1Error::BadValue {
        ai: ai.code,
        reason,
    };
    let len = value.chars().count();
    match ai.length {
        Length::Fixed(n) if len != n => {
            return Err(bad(format!("needs {n} characters, has {len}")));
        }
        Length::Variable(max) if len == 0 || len > max => {
            return Err(bad(format!("needs 1 to {max} characters, has {len}")));
        }
        _ => {}
    }
    if ai.numeric && !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("must be digits only".into()));
    }
    if let Some(c) = value.chars().find(|&c| !is_cset82(c)) {
        return Err(bad(format!("character {c:?} is not allowed")));
    }
    if ai.check_digit && !check_digit_ok(value) {
        return Err(bad("wrong check digit".into()));
    }
    Ok(())
}

/// GS1 AI encodable character set 82.
fn is_cset82(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!\"%&'()*+,-./:;<=>?_".contains(c)
}

/// The GS1 mod-10 check: from the right, the digits before the check digit are weighted
/// 3, 1, 3, …; the check digit brings the sum to a multiple of ten.
pub fn check_digit_ok(digits: &str) -> bool {
    let bytes = digits.as_bytes();
    match bytes.split_last() {
        Some((&last, body)) if last.is_ascii_digit() => {
            compute_check_digit(body) == Some(last - b'0')
        }
        _ => false,
    }
}

/// The check digit for `body` (the digits without it), or `None` if it holds a non-digit.
pub fn compute_check_digit(body: &[u8]) -> Option<u8> {
    let mut sum = 0u32;
    for (i, &b) in body.iter().rev().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        let weight = if i % 2 == 0 { 3 } else { 1 };
        sum += u32::from(b - b'0') * weight;
    }
    Some(((10 - sum % 10) % 10) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real-world GTIN-13 (4006381333931) as GTIN-14.
    const GTIN: &str = "04006381333931";

    #[test]
    fn check_digits_of_known_numbers() {
        assert!(check_digit_ok(GTIN));
        assert!(!check_digit_ok("04006381333932"));
        assert!(check_digit_ok("00614141999996"));
        assert_eq!(compute_check_digit(b"0400638133393"), Some(1));
        assert!(!check_digit_ok(""));
        assert!(!check_digit_ok("0400638133393x"));
    }

    #[test]
    fn raw_code_with_serial_and_group_separator() {
        let code = format!("01{GTIN}21ABC123\u{1d}10LOT7");
        let parsed = parse(&format!("  {code}\r")).unwrap();
        assert_eq!(parsed.code, code);
        assert_eq!(parsed.gtin, GTIN);
        assert_eq!(parsed.serial.as_deref(), Some("ABC123"));
        assert_eq!(parsed.elements.len(), 3);
        assert_eq!(parsed.elements[2], ("10".into(), "LOT7".into()));
    }

    #[test]
    fn symbology_prefix_and_parentheses_forms() {
        let a = parse(&format!("]d201{GTIN}21X1")).unwrap();
        assert_eq!(a.serial.as_deref(), Some("X1"));
        let b = parse(&format!("(01){GTIN}(21)X1(17)301231")).unwrap();
        assert_eq!(b.gtin, GTIN);
        assert_eq!(b.serial.as_deref(), Some("X1"));
        // Honest Sign style: crypto tail in AI 91/92.
        let c = parse(&format!("01{GTIN}21sn5\u{1d}91EE06\u{1d}92abc+/=")).unwrap();
        assert_eq!(c.elements.len(), 4);
    }

    #[test]
    fn bad_codes_say_why() {
        let cases = [
            ("", Gs1Error::Empty),
            ("   ", Gs1Error::Empty),
            ("hello", Gs1Error::UnknownAi("hell".into())),
            (
                "0104006381333932",
                Gs1Error::BadValue {
                    ai: "01",
                    reason: "wrong check digit".into(),
                },
            ),
            (
                "01040063813339",
                Gs1Error::BadValue {
                    ai: "01",
                    reason: "needs 14 characters, has 12".into(),
                },
            ),
            ("10LOT", Gs1Error::NoGtin),
        ];
        for (code, want) in cases {
            assert_eq!(parse(code), Err(want), "{code:?}");
        }
        assert_eq!(
            parse(&format!("01{GTIN}01{GTIN}")),
            Err(Gs1Error::Repeated("01"))
        );
        assert!(matches!(
            parse(&format!("01{GTIN}21bad serial")),
            Err(Gs1Error::BadValue { ai: "21", .. })
        ));
        assert!(matches!(
            parse(&format!("01{GTIN}21{}", "x".repeat(21))),
            Err(Gs1Error::BadValue { ai: "21", .. })
        ));
        assert_eq!(parse(&"1".repeat(600)), Err(Gs1Error::TooLong));
        assert!(parse(&format!("01{GTIN}21é")).is_err());
    }
}
