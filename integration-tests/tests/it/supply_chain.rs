//! The firmware supply chain under attack (issue 20), through the real server and real
//! agents: the attacks update frameworks are built against (TUF's list), each refused with its
//! reason (`attacks`); the download budget holding under three deployments and a burst of
//! boards (`budget`); board identity and token revocation on the OTA routes (`boards`).

pub mod attacks;
pub mod boards;
pub mod budget;
