//! The server's tests against its library, one binary (CI links it once), a module per area:
//! queries on real databases of both backends (`common::ServerDb`, on the workspace's shared
//! `testdb`), schema parity, and the fuzz targets (`fuzz::fuzz_*`, which `scripts/test.sh` runs
//! in a pass of its own, with their seeds in `tests/corpus/`).

#[macro_use]
mod common;

mod charts_db;
mod command_batch;
mod db_faults;
mod db_threads;
mod fuzz;
mod notify;
mod revocations;
mod schema_parity;
mod sync_store;
mod telemetry_db;
