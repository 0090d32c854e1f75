//! Hostile input and faults (issue 15): each module reproduces one class of attack or fault
//! against the real binaries and checks that it is refused, bounded or survived. Their test
//! paths start with `hostile::`, which `scripts/test.sh` runs in a pass of its own.

pub mod dashboard;
pub mod fault;
pub mod flood;
pub mod generated;
pub mod input;
pub mod logins;
pub mod push_config;
