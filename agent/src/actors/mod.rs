//! The agent's actors, one per file; `runtime.rs` starts them and hands each the addresses
//! and recipients it talks to.

pub mod commands;
pub mod connection;
pub mod drain;
pub mod printer;
pub mod production;
pub mod queue;
pub mod shell;
pub mod status;
pub mod store;
pub mod updater;
