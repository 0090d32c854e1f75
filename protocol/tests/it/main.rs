//! The protocol crate's tests against its public API, one binary (CI links it once): `wire`
//! checks the contract's JSON forms, `fuzz` holds the decoders' fuzz targets (`fuzz_*`, which
//! `scripts/test.sh` runs in a pass of its own, with their seeds in `tests/corpus/`).

mod fuzz;
mod wire;
