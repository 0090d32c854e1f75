//! The hostile material mutations insert: raw byte chunks for the byte-level mutations and
//! JSON values for the JSON-level ones.

use proptest::prelude::*;
use serde_json::{json, Value};

/// Lengths of generated long strings: around the usual limits (128-byte ids, 4 KiB lines,
/// 64 KiB frames) and one of 1 MiB.
const LONG_LENGTHS: [usize; 5] = [129, 513, 4097, 65_537, 1 << 20];

/// Nesting depths: below and above serde_json's recursion limit of 128.
const DEPTHS: [usize; 4] = [2, 100, 129, 5_000];

/// Numbers past the edges of the integer types the decoders use.
pub const HUGE_NUMBERS: [&str; 10] = [
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
    "4294967296",
    "256",
    "-1",
    "1e308",
    "1e999999",
    "-0.0",
    "123456789012345678901234567890",
];

/// Text that has tripped decoders elsewhere: NUL, control and format characters, astral
/// and right-to-left characters, a BOM, and look-alikes of the separators decoders split on.
pub const ODD_TEXT: [&str; 14] = [
    "\0",
    "a\0b",
    "\u{1d}",
    "\r\n",
    "\t",
    "é",
    "\u{1F600}",
    "\u{202E}evil",
    "\u{FEFF}",
    "%00",
    "../../etc/passwd",
    "a/b",
    "'; DROP TABLE users; --",
    "<script>alert(1)</script>",
];

/// Timestamps at and past the edges of what the databases and chrono store.
pub const TIMESTAMPS: [&str; 9] = [
    "2026-11-25T10:00:00Z",
    "2026-11-25T10:00:00.123456789Z",
    "2026-11-25T10:00:00+14:00",
    "2026-06-30T23:59:60Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59Z",
    "2026-02-30T00:00:00Z",
    "+275760-09-13T00:00:00Z",
    "1970-01-01",
];

/// Raw bytes for the byte-level mutations; `vocabulary` words (field names, tags, AIs) are
/// inserted as they are.
pub fn chunk(vocabulary: &[&str]) -> BoxedStrategy<Vec<u8>> {
    let words: Vec<Vec<u8>> = vocabulary.iter().map(|w| w.as_bytes().to_vec()).collect();
    let mut options: Vec<(u32, BoxedStrategy<Vec<u8>>)> = vec![
        (3, Just(vec![0u8]).boxed()),
        (3, Just(br"\u0000".to_vec()).boxed()),
        (
            3,
            proptest::sample::select(HUGE_NUMBERS.to_vec())
                .prop_map(|n| n.as_bytes().to_vec())
                .boxed(),
        ),
        (
            2,
            proptest::sample::select(ODD_TEXT.to_vec())
                .prop_map(|t| t.as_bytes().to_vec())
                .boxed(),
        ),
        (
            1,
            // Bytes that are not UTF-8: a lone continuation byte, a cut sequence, an encoded
            // surrogate, an overlong NUL.
            proptest::sample::select(vec![
                vec![0x80u8],
                vec![0xc3],
                vec![0xed, 0xa0, 0x80],
                vec![0xc0, 0x80],
                vec![0xff, 0xfe],
            ])
            .boxed(),
        ),
        (1, Just(br"\ud800".to_vec()).boxed()),
        (
            2,
            (proptest::sample::select(DEPTHS.to_vec()), any::<bool>())
                .prop_map(|(depth, arrays)| {
                    if arrays {
                        "[".repeat(depth).into_bytes()
                    } else {
                        r#"{"a":"#.repeat(depth).into_bytes()
                    }
                })
                .boxed(),
        ),
        (
            1,
            proptest::sample::select(LONG_LENGTHS.to_vec())
                .prop_map(|n| format!("\"{}\"", "a".repeat(n)).into_bytes())
                .boxed(),
        ),
        (
            2,
            proptest::sample::select(vec![
                &b"null"[..],
                b"true",
                b"{}",
                b"[]",
                b"\"\"",
                b",",
                b":",
                b"\"",
                b"}",
                b"]",
                b"\\",
            ])
            .prop_map(|b| b.to_vec())
            .boxed(),
        ),
    ];
    if !words.is_empty() {
        options.push((3, proptest::sample::select(words).boxed()));
    }
    proptest::strategy::Union::new_weighted(options).boxed()
}

/// A JSON value to put in place of a field: another type, an edge of a number type, odd or
/// long text, a timestamp, a vocabulary word, deep nesting, or a small mix of these.
pub fn value(vocabulary: &[&str]) -> BoxedStrategy<Value> {
    let words: Vec<String> = vocabulary.iter().map(|w| (*w).to_owned()).collect();
    let mut leaves: Vec<(u32, BoxedStrategy<Value>)> = vec![
        (2, Just(Value::Null).boxed()),
        (2, any::<bool>().prop_map(Value::Bool).boxed()),
        (3, (-2i64..=300).prop_map(|n| json!(n)).boxed()),
        (
            3,
            proptest::sample::select(vec![
                json!(u64::MAX),
                json!(i64::MIN),
                json!(i64::MAX),
                json!(u64::from(u32::MAX) + 1),
                json!(f64::MAX),
                json!(-0.0),
                json!(0.5),
                json!(1e-300),
            ])
            .boxed(),
        ),
        (
            3,
            proptest::sample::select(ODD_TEXT.to_vec())
                .prop_map(|t| json!(t))
                .boxed(),
        ),
        (
            2,
            proptest::sample::select(TIMESTAMPS.to_vec())
                .prop_map(|t| json!(t))
                .boxed(),
        ),
        (
            1,
            proptest::sample::select(LONG_LENGTHS.to_vec())
                .prop_map(|n| json!("x".repeat(n)))
                .boxed(),
        ),
        (2, "[ -~]{0,12}".prop_map(Value::String).boxed()),
        (
            1,
            proptest::sample::select(vec![100usize, 127, 200])
                .prop_map(nested)
                .boxed(),
        ),
    ];
    if !words.is_empty() {
        leaves.push((
            4,
            proptest::sample::select(words.clone())
                .prop_map(Value::String)
                .boxed(),
        ));
    }
    let leaf = proptest::strategy::Union::new_weighted(leaves).boxed();
    let keys: BoxedStrategy<String> = if words.is_empty() {
        "[a-zA-Z]{1,8}".boxed()
    } else {
        prop_oneof![3 => proptest::sample::select(words), 1 => "[a-zA-Z]{1,8}"].boxed()
    };
    leaf.prop_recursive(2, 12, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(keys.clone(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Text for a string field: odd, long, a timestamp, a vocabulary word or plain.
pub fn text(vocabulary: &[&str]) -> BoxedStrategy<String> {
    let words: Vec<String> = vocabulary.iter().map(|w| (*w).to_owned()).collect();
    let mut options: Vec<(u32, BoxedStrategy<String>)> = vec![
        (
            3,
            proptest::sample::select(ODD_TEXT.to_vec())
                .prop_map(str::to_owned)
                .boxed(),
        ),
        (
            2,
            proptest::sample::select(TIMESTAMPS.to_vec())
                .prop_map(str::to_owned)
                .boxed(),
        ),
        (
            1,
            proptest::sample::select(LONG_LENGTHS.to_vec())
                .prop_map(|n| "x".repeat(n))
                .boxed(),
        ),
        (3, "[ -~]{0,12}".boxed()),
        (1, "\\PC{0,6}".boxed()),
    ];
    if !words.is_empty() {
        options.push((3, proptest::sample::select(words).boxed()));
    }
    proptest::strategy::Union::new_weighted(options).boxed()
}

/// A number at or past the edge of the integer and float types decoders use.
pub fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        2 => (-2i64..=300).prop_map(|n| json!(n)),
        2 => proptest::sample::select(vec![
            json!(0),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(i64::MAX),
            json!(u64::from(u32::MAX) + 1),
            json!(u64::from(u32::MAX)),
            json!(f64::MAX),
            json!(-0.0),
            json!(0.5),
            json!(1e-300),
        ]),
        1 => any::<u64>().prop_map(|n| json!(n)),
    ]
    .boxed()
}

/// `depth` nested arrays around a number; past 128 no serde_json decoder takes it back.
pub fn nested(depth: usize) -> Value {
    let mut value = json!(1);
    for _ in 0..depth {
        value = Value::Array(vec![value]);
    }
    value
}
