//! Seed-driven fuzzing on a stable toolchain, shared by the fuzz suites of every crate that
//! decodes outside input.
//!
//! `cargo fuzz` needs a nightly toolchain; these suites are its stand-in on stable. A target
//! starts from a corpus of real examples (the spec's and the existing tests'), decodes every
//! seed as it is, then feeds its decoder proptest-generated variants of the seeds: byte flips,
//! cuts and insertions of NUL, huge numbers, deep nesting and long strings (`bytes`), and
//! JSON-level changes that keep a frame's shape but give a field another type or a hostile
//! value (`json`). The target's check says whether the decoder accepted or refused an input,
//! or what invariant it broke; a panic is caught by proptest and fails the target too.
//!
//! Runs are bounded and reproducible: `PROPTEST_CASES` cases per target (default 512) drawn
//! from the fixed seed `FUZZ_SEED` (default `DEFAULT_SEED`), both printed with the counts.

pub mod assignments;
pub mod bytes;
pub mod hostile;
pub mod json;

use std::cell::Cell;
use std::fmt;
use std::path::Path;

pub use proptest;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// Cases per target unless `PROPTEST_CASES` says otherwise.
pub const DEFAULT_CASES: u32 = 512;
/// The random seed unless `FUZZ_SEED` says otherwise, so that a failure in CI reproduces.
pub const DEFAULT_SEED: u64 = 0x15_f0_22;

/// One example input of a target: a file of its corpus, or an inline constant.
#[derive(Debug, Clone)]
pub struct Seed {
    /// The file name; targets with several decoders pick one by its prefix.
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Seed {
    pub fn new(name: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Seed {
            name: name.into(),
            bytes: bytes.into(),
        }
    }
}

/// Every file of a corpus directory, by name. A missing or empty corpus is a broken suite,
/// not a pass, so it panics.
pub fn corpus(dir: &Path) -> Vec<Seed> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {} cannot be read: {e}", dir.display()));
    let mut seeds: Vec<Seed> = entries
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("corpus file {} cannot be read: {e}", path.display()));
            Seed { name, bytes }
        })
        .collect();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds.sort_by(|a, b| a.name.cmp(&b.name));
    seeds
}

/// A generated input: the seed it was made from (so the check can pick the decoder the seed
/// is for) and its bytes.
#[derive(Clone)]
pub struct Input {
    pub seed: usize,
    pub bytes: Vec<u8>,
}

/// Shown as text, cut to a readable length, so a failure report names the input.
impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 600;
        let text = String::from_utf8_lossy(&self.bytes);
        let shown: String = text.chars().take(SHOWN).collect();
        write!(
            f,
            "seed #{} ({} bytes): {shown:?}",
            self.seed,
            self.bytes.len()
        )?;
        if text.chars().count() > SHOWN {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// What the decoder did with an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// A typed error: the input was refused with a reason.
    Refused,
}

/// The counts a target prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub cases: u64,
    pub accepted: u64,
    pub refused: u64,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cases, {} accepted, {} refused",
            self.cases, self.accepted, self.refused
        )
    }
}

/// `PROPTEST_CASES`, or `DEFAULT_CASES`.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// `FUZZ_SEED` (decimal or `0x` hex), or `DEFAULT_SEED`.
pub fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(DEFAULT_SEED)
}

/// Decodes every seed (each must be accepted), then `cases()` inputs drawn from `inputs`,
/// and prints `fuzz <target>: N cases, A accepted, R refused`. `check` answers the verdict,
/// or the invariant an accepted input broke. Panics, with the counts in the message, on the
/// first failing input (after proptest has shrunk it), and when the run never reached one of
/// the two paths, since a fuzzer that only ever refuses tests nothing past the parser.
pub fn run<S>(
    target: &str,
    seeds: &[Seed],
    inputs: S,
    check: impl Fn(&Seed, &[u8]) -> Result<Verdict, String>,
) -> Counts
where
    S: Strategy<Value = Input>,
{
    assert!(!seeds.is_empty(), "fuzz {target}: no seeds");
    for seed in seeds {
        match check(seed, &seed.bytes) {
            Ok(Verdict::Accepted) => {}
            Ok(Verdict::Refused) => panic!(
                "fuzz {target}: seed {} is refused; seeds are valid examples",
                seed.name
            ),
            Err(why) => panic!("fuzz {target}: seed {}: {why}", seed.name),
        }
    }

    let accepted = Cell::new(0u64);
    let refused = Cell::new(0u64);
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        // Shrinking a failure is worth a few seconds, not minutes, on a loaded CI machine.
        max_shrink_iters: 512,
        ..Config::default()
    };
    let random = seed();
    let mut key = [0u8; 32];
    for chunk in key.chunks_mut(8) {
        chunk.copy_from_slice(&random.to_le_bytes());
    }
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let result = runner.run(&inputs, |input| {
        let seed = &seeds[input.seed];
        match check(seed, &input.bytes) {
            Ok(Verdict::Accepted) => accepted.set(accepted.get() + 1),
            Ok(Verdict::Refused) => refused.set(refused.get() + 1),
            Err(why) => return Err(TestCaseError::fail(why)),
        }
        Ok(())
    });
    let counts = Counts {
        cases: accepted.get() + refused.get(),
        accepted: accepted.get(),
        refused: refused.get(),
    };
    let line = format!(
        "fuzz {target}: {counts} ({} seeds, FUZZ_SEED={random:#x})",
        seeds.len()
    );
    println!("{line}");
    eprintln!("{line}");
    if let Err(failure) = result {
        panic!("{line}; failed: {failure}");
    }
    assert!(
        counts.accepted > 0 && counts.refused > 0,
        "{line}: the mutations must reach both the accepting and the refusing path"
    );
    counts
}

/// The mix for a settings file: byte-level mutations and keys set to hostile values.
pub fn settings_inputs(seeds: &[Seed], keys: &[&str]) -> proptest::strategy::BoxedStrategy<Input> {
    use proptest::prelude::*;
    let mut vocabulary: Vec<&str> = keys.to_vec();
    vocabulary.extend([" = ", "\n", "\"", "[", "]", "#", "'''", "1e400", "nan"]);
    prop_oneof![
        1 => bytes::mutations(seeds, &vocabulary),
        2 => assignments::mutations(seeds, keys),
    ]
    .boxed()
}

/// The usual mix for a JSON decoder: a third byte-level, two thirds JSON-level mutations.
pub fn json_inputs(
    seeds: &[Seed],
    vocabulary: &[&str],
) -> proptest::strategy::BoxedStrategy<Input> {
    use proptest::prelude::*;
    prop_oneof![
        1 => bytes::mutations(seeds, vocabulary),
        2 => json::mutations(seeds, vocabulary),
    ]
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeds() -> Vec<Seed> {
        vec![
            Seed::new("a.json", r#"{"type":"a","n":1,"list":[1,2,{"k":"v"}]}"#),
            Seed::new("b.json", r#"{"type":"b","s":"text"}"#),
        ]
    }

    #[test]
    fn a_decoder_that_panics_fails_the_run_with_its_counts() {
        let seeds = seeds();
        let outcome = std::panic::catch_unwind(|| {
            run(
                "panicky",
                &seeds,
                json_inputs(&seeds, &["n"]),
                |_, bytes| {
                    let v: serde_json::Value =
                        serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
                    assert!(v.get("n").is_none_or(|n| n.is_u64()), "not a number");
                    Ok(Verdict::Accepted)
                },
            )
        });
        let message = outcome.expect_err("the run must fail");
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.starts_with("fuzz panicky: "), "{text}");
        assert!(text.contains(" cases, "), "{text}");
    }

    #[test]
    fn a_sound_decoder_passes_and_both_paths_are_reached() {
        let seeds = seeds();
        let counts = run(
            "json",
            &seeds,
            json_inputs(&seeds, &["type"]),
            |_, bytes| {
                Ok(match serde_json::from_slice::<serde_json::Value>(bytes) {
                    Ok(_) => Verdict::Accepted,
                    Err(_) => Verdict::Refused,
                })
            },
        );
        assert_eq!(counts.cases, u64::from(cases()), "{counts}");
    }

    #[test]
    fn the_same_seed_draws_the_same_inputs() {
        let seeds = seeds();
        let draw = || {
            let seen = std::cell::RefCell::new(Vec::new());
            run("repeat", &seeds, json_inputs(&seeds, &[]), |_, bytes| {
                seen.borrow_mut().push(bytes.to_vec());
                Ok(match serde_json::from_slice::<serde_json::Value>(bytes) {
                    Ok(_) => Verdict::Accepted,
                    Err(_) => Verdict::Refused,
                })
            });
            seen.into_inner()
        };
        assert_eq!(draw(), draw());
    }
}
