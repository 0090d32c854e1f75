//! Byte-level mutations of seeds: what a flaky line, a truncating proxy or an attacker typing
//! by hand makes of a valid input.

use proptest::prelude::*;

use crate::{hostile, Input, Seed};

/// One edit of the bytes; positions are taken modulo the current length.
#[derive(Debug, Clone)]
enum Edit {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        byte: u8,
    },
    Truncate {
        at: usize,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Insert {
        at: usize,
        chunk: Vec<u8>,
    },
    /// A piece of another seed pasted in.
    Splice {
        at: usize,
        seed: usize,
        from: usize,
        len: usize,
    },
    /// A piece repeated, as a stuttering sender would.
    Repeat {
        at: usize,
        len: usize,
        times: usize,
    },
}

fn edit(seeds: usize, vocabulary: &[&str]) -> BoxedStrategy<Edit> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Edit::FlipBit { at, bit }),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::SetByte { at, byte }),
        2 => any::<usize>().prop_map(|at| Edit::Truncate { at }),
        2 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Delete { at, len }),
        5 => (any::<usize>(), hostile::chunk(vocabulary))
            .prop_map(|(at, chunk)| Edit::Insert { at, chunk }),
        1 => (any::<usize>(), 0..seeds, any::<usize>(), 1usize..64)
            .prop_map(|(at, seed, from, len)| Edit::Splice { at, seed, from, len }),
        1 => (any::<usize>(), 1usize..32, 2usize..64)
            .prop_map(|(at, len, times)| Edit::Repeat { at, len, times }),
    ]
    .boxed()
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit, seeds: &[Seed]) {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
    match edit {
        Edit::FlipBit { at, bit } => {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] ^= 1 << bit;
            }
        }
        Edit::SetByte { at, byte } => {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = *byte;
            }
        }
        Edit::Truncate { at } => {
            let i = pos(*at, bytes.len());
            bytes.truncate(i);
        }
        Edit::Delete { at, len } => {
            let i = pos(*at, bytes.len());
            let end = (i + len).min(bytes.len());
            bytes.drain(i..end);
        }
        Edit::Insert { at, chunk } => {
            let i = pos(*at, bytes.len());
            bytes.splice(i..i, chunk.iter().copied());
        }
        Edit::Splice {
            at,
            seed,
            from,
            len,
        } => {
            let other = &seeds[*seed].bytes;
            let start = pos(*from, other.len());
            let end = (start + len).min(other.len());
            let piece = other[start..end].to_vec();
            let i = pos(*at, bytes.len());
            bytes.splice(i..i, piece);
        }
        Edit::Repeat { at, len, times } => {
            let start = pos(*at, bytes.len());
            let end = (start + len).min(bytes.len());
            let piece = bytes[start..end].to_vec();
            let repeated: Vec<u8> = piece.repeat(*times);
            bytes.splice(end..end, repeated);
        }
    }
}

/// A seed with one to five byte-level edits.
pub fn mutations(seeds: &[Seed], vocabulary: &[&str]) -> BoxedStrategy<Input> {
    assert!(!seeds.is_empty(), "no seeds to mutate");
    let owned: Vec<Seed> = seeds.to_vec();
    let count = seeds.len();
    (
        0..count,
        proptest::collection::vec(edit(count, vocabulary), 1..6),
    )
        .prop_map(move |(seed, edits)| {
            let mut bytes = owned[seed].bytes.clone();
            for e in &edits {
                apply(&mut bytes, e, &owned);
            }
            Input { seed, bytes }
        })
        .boxed()
}
