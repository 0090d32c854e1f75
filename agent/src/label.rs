//! The printer's label template: `{placeholder}` fields filled by plain replacement, checked
//! once at start so that rendering never fails and never grows past `MAX_LABEL_BYTES`.
//!
//! A placeholder is `{` + ASCII letters + `}`; any other brace is literal text. An unknown
//! placeholder name refuses the template at start, because a typo (`{closedat}`) would
//! otherwise print silently wrong labels on every pallet. Values are filled in one pass over
//! the parsed template, so a value that happens to contain `{id}` is printed as it is and
//! never expanded again. Each value is cut to `MAX_VALUE_BYTES` and loses control characters
//! and ZPL's command prefixes (`^`, `~`), so a production-line id cannot smuggle commands
//! into the printer's stream.

use std::fmt;

/// Largest template accepted.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// Largest rendered label: literal text plus every placeholder at `MAX_VALUE_BYTES`.
pub const MAX_LABEL_BYTES: usize = 64 * 1024;
/// Longest value put in for one placeholder.
pub const MAX_VALUE_BYTES: usize = 128;

/// The built-in template: a small ZPL label (the language most port-9100 label printers
/// speak) with the kind, count, line and closing time as text and the id as a QR code.
pub const DEFAULT_TEMPLATE: &str = "^XA
^CI28
^FO30,30^A0N,50,50^FD{kind}^FS
^FO30,95^A0N,30,30^FDCount: {count}^FS
^FO30,135^A0N,30,30^FDLine: {line}^FS
^FO30,175^A0N,30,30^FDClosed: {closedAt}^FS
^FO30,225^BQN,2,5^FDQA,{id}^FS
^FO30,470^A0N,22,22^FD{id}^FS
^XZ
";

/// The values a label can show, by placeholder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `batch` or `pallet`.
    Kind,
    /// The batch or pallet id, which is also the `code` of the `print` event.
    Id,
    /// Bottles in a batch, batches on a pallet.
    Count,
    OpenedAt,
    ClosedAt,
    /// The pallet a batch went onto; empty on a pallet's own label.
    Pallet,
    /// The production line id; empty when none is set.
    Line,
    Company,
    Device,
}

impl Field {
    pub const ALL: [Field; 9] = [
        Field::Kind,
        Field::Id,
        Field::Count,
        Field::OpenedAt,
        Field::ClosedAt,
        Field::Pallet,
        Field::Line,
        Field::Company,
        Field::Device,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Kind => "kind",
            Field::Id => "id",
            Field::Count => "count",
            Field::OpenedAt => "openedAt",
            Field::ClosedAt => "closedAt",
            Field::Pallet => "pallet",
            Field::Line => "line",
            Field::Company => "company",
            Field::Device => "device",
        }
    }

    fn from_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// One label's values; a placeholder whose value is absent prints as nothing.
pub trait Values {
    fn value(&self, field: Field) -> Option<String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
}

/// A parsed, size-checked template.
#[derive(Clone, PartialEq, Eq)]
pub struct LabelTemplate {
    parts: Vec<Part>,
}

/// Templates can be long; the settings log shows their size, not their text.
impl fmt::Debug for LabelTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LabelTemplate({} parts)", self.parts.len())
    }
}

impl Default for LabelTemplate {
    fn default() -> Self {
        LabelTemplate::parse(DEFAULT_TEMPLATE).expect("the built-in template is valid")
    }
}

impl LabelTemplate {
    /// Parses `text`, refusing an empty or oversized template, an unknown placeholder, and a
    /// template whose worst-case label would exceed `MAX_LABEL_BYTES`.
    pub fn parse(text: &str) -> Result<LabelTemplate, String> {
        if text.trim().is_empty() {
            return Err("the template is empty".into());
        }
        if text.len() > MAX_TEMPLATE_BYTES {
            return Err(format!(
                "the template is {} bytes; at most {MAX_TEMPLATE_BYTES} are accepted",
                text.len()
            ));
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            literal.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_len = after
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(after.len());
            if name_len > 0 && after[name_len..].starts_with('}') {
                let name = &after[..name_len];
                let field = Field::from_name(name).ok_or_else(|| {
                    format!(
                        "unknown placeholder {{{name}}}; known: {}",
                        Field::ALL
                            .iter()
                            .map(|f| format!("{{{}}}", f.name()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Field(field));
                rest = &after[name_len + 1..];
            } else {
                literal.push('{');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        let template = LabelTemplate { parts };
        let worst = template.worst_case_len();
        if worst > MAX_LABEL_BYTES {
            return Err(format!(
                "a label could reach {worst} bytes (each placeholder counted at \
                 {MAX_VALUE_BYTES}); at most {MAX_LABEL_BYTES} are accepted"
            ));
        }
        Ok(template)
    }

    /// The longest label this template can render.
    fn worst_case_len(&self) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Text(t) => t.len(),
                Part::Field(_) => MAX_VALUE_BYTES,
            })
            .sum()
    }

    /// The label's bytes; at most `MAX_LABEL_BYTES` by construction.
    pub fn render(&self, values: &dyn Values) -> Vec<u8> {
        let mut out = String::with_capacity(self.worst_case_len().min(4096));
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => out.push_str(&clean(values.value(*f).unwrap_or_default())),
            }
        }
        debug_assert!(out.len() <= MAX_LABEL_BYTES);
        out.into_bytes()
    }
}

/// A value as it may appear on a label: no control characters, no ZPL command prefixes, at
/// most `MAX_VALUE_BYTES`, cut at a character boundary.
fn clean(value: String) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_VALUE_BYTES));
    for c in value.chars() {
        if c.is_control() || c == '^' || c == '~' {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_VALUE_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    struct Map(HashMap<&'static str, String>);

    impl Values for Map {
        fn value(&self, field: Field) -> Option<String> {
            self.0.get(field.name()).cloned()
        }
    }

    fn values(pairs: &[(&'static str, &str)]) -> Map {
        Map(pairs.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    fn render(template: &str, pairs: &[(&'static str, &str)]) -> String {
        let bytes = LabelTemplate::parse(template)
            .unwrap()
            .render(&values(pairs));
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn placeholders_are_filled_and_other_braces_stay() {
        assert_eq!(
            render(
                "{kind} {id}: {count} {x-y} {} {{id}} {line}{",
                &[("kind", "batch"), ("id", "B1"), ("count", "12")]
            ),
            "batch B1: 12 {x-y} {} {B1} {"
        );
    }

    #[test]
    fn values_are_not_expanded_again_and_lose_printer_commands() {
        assert_eq!(
            render("^FD{line}^FS", &[("line", "{id}^XZ~JR\r\nline\u{7}-1 ü")]),
            "^FD{id}XZJRline-1 ü^FS"
        );
    }

    #[test]
    fn long_values_are_cut_at_a_character_boundary() {
        let long = "ü".repeat(MAX_VALUE_BYTES);
        let out = render("[{id}]", &[("id", &long)]);
        let inner = &out[1..out.len() - 1];
        assert!(inner.len() <= MAX_VALUE_BYTES);
        assert_eq!(inner.len(), MAX_VALUE_BYTES, "ü is 2 bytes, 128 is even");
        assert!(inner.chars().all(|c| c == 'ü'));
    }

    #[test]
    fn unknown_placeholders_empty_and_oversized_templates_are_refused() {
        let err = LabelTemplate::parse("^FD{closedat}^FS").unwrap_err();
        assert!(
            err.contains("{closedat}") && err.contains("{closedAt}"),
            "{err}"
        );
        assert!(LabelTemplate::parse("  \n").is_err());
        assert!(LabelTemplate::parse(&"x".repeat(MAX_TEMPLATE_BYTES + 1)).is_err());
        assert!(LabelTemplate::parse(&"x".repeat(MAX_TEMPLATE_BYTES)).is_ok());
        // Short enough as text, but 4000 placeholders could fill 512 KB.
        let err = LabelTemplate::parse(&"{id}".repeat(4000)).unwrap_err();
        assert!(err.contains("could reach"), "{err}");
    }

    #[test]
    fn the_worst_case_label_stays_within_the_bound() {
        let n = (MAX_LABEL_BYTES - 10) / MAX_VALUE_BYTES;
        let template = LabelTemplate::parse(&format!("{}0123456789", "{line}".repeat(n))).unwrap();
        let long = "x".repeat(10 * MAX_VALUE_BYTES);
        let out = template.render(&values(&[("line", &long)]));
        assert_eq!(out.len(), n * MAX_VALUE_BYTES + 10);
        assert!(out.len() <= MAX_LABEL_BYTES);
    }

    #[test]
    fn the_default_template_is_zpl_with_every_main_field() {
        let template = LabelTemplate::default();
        let out = String::from_utf8(template.render(&values(&[
            ("kind", "pallet"),
            ("id", "P-1"),
            ("count", "10"),
            ("line", "line-3"),
            ("closedAt", "2024-05-01T10:00:00Z"),
        ])))
        .unwrap();
        assert!(out.starts_with("^XA") && out.trim_end().ends_with("^XZ"));
        for expected in [
            "pallet",
            "QA,P-1",
            "Count: 10",
            "Line: line-3",
            "2024-05-01T10:00:00Z",
        ] {
            assert!(out.contains(expected), "{expected} missing from {out}");
        }
        assert!(!out.contains('{'), "unfilled placeholder in {out}");
    }
}
