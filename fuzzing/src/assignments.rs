//! Mutations of `key = value` files (TOML settings): a known key set to a value of another
//! type, past the edge of its number type, empty, odd or long. Byte flips alone seldom keep a
//! file parseable long enough to reach the checks of the values.

use proptest::prelude::*;

use crate::{Input, Seed};

/// TOML values that tend to slip through: type confusion, number edges, empty and odd text.
pub const VALUES: [&str; 26] = [
    "0",
    "-1",
    "1",
    "255",
    "65536",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "-9223372036854775808",
    "1e308",
    "nan",
    "inf",
    "0.5",
    "true",
    "\"\"",
    "\" \"",
    "\"\\u0000\"",
    "\"a\\u0000b\"",
    "\"\\u202e\"",
    "\"0.0.0.0:0\"",
    "\"http://\"",
    "\"postgres://\"",
    "\"/\"",
    "[]",
    "[\"\"]",
    "{}",
];

#[derive(Debug, Clone)]
struct Edit {
    key: usize,
    value: Value,
}

#[derive(Debug, Clone)]
enum Value {
    Listed(usize),
    Long(usize),
    Text(String),
}

/// A seed with one to four keys of `keys` set (an existing line replaced, or a line added)
/// to a hostile value. Keys must be top-level; the value goes on a line of its own.
pub fn mutations(seeds: &[Seed], keys: &[&str]) -> BoxedStrategy<Input> {
    assert!(
        !seeds.is_empty() && !keys.is_empty(),
        "seeds and keys needed"
    );
    let owned: Vec<Vec<u8>> = seeds.iter().map(|s| s.bytes.clone()).collect();
    let names: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    let value = prop_oneof![
        6 => (0..VALUES.len()).prop_map(Value::Listed),
        1 => proptest::sample::select(vec![129usize, 4097, 1 << 20]).prop_map(Value::Long),
        2 => "[ -~]{0,16}".prop_map(Value::Text),
    ];
    let edit = (0..names.len(), value).prop_map(|(key, value)| Edit { key, value });
    (0..seeds.len(), proptest::collection::vec(edit, 1..5))
        .prop_map(move |(seed, edits)| {
            let mut text = String::from_utf8_lossy(&owned[seed]).into_owned();
            for e in &edits {
                let key = &names[e.key];
                let value = match &e.value {
                    Value::Listed(i) => VALUES[*i].to_owned(),
                    Value::Long(n) => format!("\"{}\"", "x".repeat(*n)),
                    Value::Text(t) => format!("{t:?}"),
                };
                text = set(&text, key, &value);
            }
            Input {
                seed,
                bytes: text.into_bytes(),
            }
        })
        .boxed()
}

/// `text` with `key = value`: the key's line replaced, or the line put first (before any
/// table header, so the key stays top-level).
fn set(text: &str, key: &str, value: &str) -> String {
    let line = format!("{key} = {value}");
    let mut found = false;
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            let name = l.split('=').next().unwrap_or("").trim();
            if !found && name == key {
                found = true;
                line.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !found {
        lines.insert(0, line);
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_replaced_or_put_first() {
        assert_eq!(set("a = 1\nb = 2\n", "b", "x"), "a = 1\nb = x\n");
        assert_eq!(set("[t]\nb = 2\n", "a", "0"), "a = 0\n[t]\nb = 2\n");
    }
}
