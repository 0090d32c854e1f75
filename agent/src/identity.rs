//! Facts about this process (run id, boot id, start time, firmware version) that enrollment
//! and every status frame repeat.

use std::time::Instant;

/// Where Linux publishes the id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// Facts about this process that every status frame repeats.
#[derive(Debug, Clone)]
pub struct Identity {
    pub run_id: String,
    pub boot_id: Option<String>,
    pub started: Instant,
    /// The firmware version this process runs: the installed one (`install::begin_run`),
    /// which is the build's own version unless a staged release was activated.
    pub version: String,
}

impl Identity {
    /// Reads the boot id and makes the run id; call once per process.
    pub fn for_this_process() -> Self {
        Identity {
            run_id: uuid::Uuid::new_v4().to_string(),
            boot_id: read_boot_id(),
            started: Instant::now(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }

    /// The same identity running the given firmware version.
    pub fn running(self, version: String) -> Self {
        Identity { version, ..self }
    }
}

fn read_boot_id() -> Option<String> {
    std::fs::read_to_string(BOOT_ID_PATH)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_id_is_trimmed_when_present() {
        if let Some(id) = read_boot_id() {
            assert_eq!(id, id.trim());
            assert!(!id.is_empty());
        }
    }
}
