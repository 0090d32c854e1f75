//! JSON-level mutations of seeds: the frame keeps its shape, one of its parts changes type,
//! takes a hostile value, disappears, gains an unknown neighbour or sinks into deep nesting.
//! These reach the checks behind the parser, which byte flips rarely do.

use proptest::prelude::*;
use serde_json::Value;

use crate::{hostile, Input, Seed};

#[derive(Debug, Clone)]
enum Change {
    /// A value of the node's own type: other text for a string, another number for a number,
    /// an unknown member for an object, a repeated element for an array.
    Like {
        text: String,
        number: Value,
    },
    Replace(Value),
    Remove,
    /// Adds a member to an object (an element to an array); a scalar becomes an object.
    Add(String, Value),
    /// Wraps the node in this many arrays.
    Nest(usize),
}

#[derive(Debug, Clone)]
struct Edit {
    /// Which node, in document order, modulo the node count.
    node: usize,
    change: Change,
}

fn edit(vocabulary: &[&str]) -> BoxedStrategy<Edit> {
    let words: Vec<String> = vocabulary.iter().map(|w| (*w).to_owned()).collect();
    let key: BoxedStrategy<String> = if words.is_empty() {
        "[a-zA-Z]{1,10}".boxed()
    } else {
        prop_oneof![2 => proptest::sample::select(words), 1 => "[a-zA-Z]{1,10}"].boxed()
    };
    let change = prop_oneof![
        6 => (hostile::text(vocabulary), hostile::number())
            .prop_map(|(text, number)| Change::Like { text, number }),
        3 => hostile::value(vocabulary).prop_map(Change::Replace),
        2 => Just(Change::Remove),
        2 => (key, hostile::value(vocabulary)).prop_map(|(k, v)| Change::Add(k, v)),
        1 => proptest::sample::select(vec![1usize, 8, 120, 130]).prop_map(Change::Nest),
    ];
    (any::<usize>(), change)
        .prop_map(|(node, change)| Edit { node, change })
        .boxed()
}

/// JSON pointers of every node, in document order.
fn pointers(value: &Value, here: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            out.push(here.clone());
            for (k, v) in map {
                let token = k.replace('~', "~0").replace('/', "~1");
                pointers(v, format!("{here}/{token}"), out);
            }
        }
        Value::Array(items) => {
            out.push(here.clone());
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{here}/{i}"), out);
            }
        }
        _ => out.push(here),
    }
}

fn apply(doc: &mut Value, edit: &Edit) {
    let mut all = Vec::new();
    pointers(doc, String::new(), &mut all);
    let pointer = all[edit.node % all.len()].clone();
    match &edit.change {
        Change::Like { text, number } => {
            if let Some(node) = doc.pointer_mut(&pointer) {
                match node {
                    Value::String(s) => *s = text.clone(),
                    Value::Number(_) => *node = number.clone(),
                    Value::Bool(b) => *b = !*b,
                    Value::Null => *node = Value::String(text.clone()),
                    Value::Object(map) => {
                        map.insert(format!("unknown{}", text.len()), number.clone());
                    }
                    Value::Array(items) => {
                        if let Some(first) = items.first().cloned() {
                            items.push(first);
                        }
                    }
                }
            }
        }
        Change::Replace(v) => {
            if let Some(node) = doc.pointer_mut(&pointer) {
                *node = v.clone();
            }
        }
        Change::Remove => match pointer.rsplit_once('/') {
            None => *doc = Value::Null,
            Some((parent, token)) => {
                let key = token.replace("~1", "/").replace("~0", "~");
                match doc.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&key);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = key.parse::<usize>() {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
            }
        },
        Change::Add(k, v) => {
            if let Some(node) = doc.pointer_mut(&pointer) {
                match node {
                    Value::Object(map) => {
                        map.insert(k.clone(), v.clone());
                    }
                    Value::Array(items) => items.push(v.clone()),
                    other => {
                        let mut map = serde_json::Map::new();
                        map.insert(k.clone(), v.clone());
                        *other = Value::Object(map);
                    }
                }
            }
        }
        Change::Nest(depth) => {
            if let Some(node) = doc.pointer_mut(&pointer) {
                let mut wrapped = node.take();
                for _ in 0..*depth {
                    wrapped = Value::Array(vec![wrapped]);
                }
                *node = wrapped;
            }
        }
    }
}

/// A JSON seed with one to three JSON-level edits, written back as JSON text. Seeds that are
/// not JSON pass through unchanged.
pub fn mutations(seeds: &[Seed], vocabulary: &[&str]) -> BoxedStrategy<Input> {
    assert!(!seeds.is_empty(), "no seeds to mutate");
    let parsed: Vec<Option<Value>> = seeds
        .iter()
        .map(|s| serde_json::from_slice(&s.bytes).ok())
        .collect();
    let originals: Vec<Vec<u8>> = seeds.iter().map(|s| s.bytes.clone()).collect();
    (
        0..seeds.len(),
        proptest::collection::vec(edit(vocabulary), 1..3),
    )
        .prop_map(move |(seed, edits)| {
            let bytes = match &parsed[seed] {
                None => originals[seed].clone(),
                Some(doc) => {
                    let mut doc = doc.clone();
                    for e in &edits {
                        apply(&mut doc, e);
                    }
                    serde_json::to_vec(&doc).expect("a Value always serializes")
                }
            };
            Input { seed, bytes }
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn edits_reach_nested_nodes_and_escaped_keys() {
        let mut doc = json!({"a/b": {"c": [1, 2]}});
        let mut all = Vec::new();
        pointers(&doc, String::new(), &mut all);
        assert_eq!(all, ["", "/a~1b", "/a~1b/c", "/a~1b/c/0", "/a~1b/c/1"]);
        apply(
            &mut doc,
            &Edit {
                node: 3,
                change: Change::Remove,
            },
        );
        assert_eq!(doc, json!({"a/b": {"c": [2]}}));
        apply(
            &mut doc,
            &Edit {
                node: 1,
                change: Change::Add("x".into(), json!(null)),
            },
        );
        assert_eq!(doc, json!({"a/b": {"c": [2], "x": null}}));
        apply(
            &mut doc,
            &Edit {
                node: 3,
                change: Change::Nest(2),
            },
        );
        assert_eq!(doc, json!({"a/b": {"c": [[[2]]], "x": null}}));
    }
}
