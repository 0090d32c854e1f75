//! Installed firmware: which staged build runs, which one to roll back to, and the trial of a
//! newly activated one.
//!
//! The state lives in `<staging dir>/installed.json`, written as a temporary file that is
//! synced, renamed over the old one, and followed by a sync of the directory, so a power cut
//! leaves either the old state or the new one. The build the supervisor starts is
//! `<staging dir>/current`, a relative symlink to `edge-service-<version>`; without it the
//! supervisor runs the originally installed binary (see `deploy/systemd/edge-agent-launch`).
//!
//! Activation points `current` at the new build, records the running version as `previous`,
//! and opens a trial. Every start of a build on trial counts; a build that reaches the server
//! commits its trial, and one that was started `MAX_TRIAL_STARTS` times without reaching it is
//! rolled back at the next start.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::firmware::staged_path;

/// File name of the state, inside the staging directory.
pub const STATE_FILE: &str = "installed.json";
/// The symlink the supervisor starts, inside the staging directory.
pub const CURRENT_LINK: &str = "current";
/// Starts a build on trial gets to reach the server; the next start rolls it back.
pub const MAX_TRIAL_STARTS: u32 = 3;

/// One read-modify-write of the state at a time: activation (command handler) and the commit
/// after `hello` (connection) run on different tasks.
static STATE_LOCK: Mutex<()> = Mutex::new(());

/// The content of `installed.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    /// The version `current` points at; absent means the originally installed build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    /// The version a failed trial goes back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
    /// A rollback the server has not been told about yet; kept on disk so that a restart
    /// before the next connection does not lose the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RolledBack>,
}

/// A build activated but not yet seen to reach the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub version: String,
    pub starts: u32,
}

/// A trial that failed: `from` was replaced by `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolledBack {
    pub from: String,
    pub to: String,
}

impl RolledBack {
    /// The text of the `alert` event the server gets.
    pub fn message(&self) -> String {
        format!(
            "firmware {} was rolled back to {}: it was started {MAX_TRIAL_STARTS} times without reaching the server",
            self.from, self.to
        )
    }
}

impl Installed {
    /// The firmware version this state says runs: `active`, or the build's own version.
    pub fn running_version(&self) -> String {
        self.active
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned())
    }
}

/// Why the installed state could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid installed-firmware state: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("release {0} is not staged")]
    NotStaged(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The state in `staging_dir`; a missing file (nothing was ever activated) is the default.
pub fn load(staging_dir: &Path) -> Result<Installed, InstallError> {
    let path = staging_dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| InstallError::Corrupt {
            path,
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Installed::default()),
        Err(e) => Err(InstallError::Io { path, source: e }),
    }
}

/// Syncs a directory, so that a rename inside it survives a power cut.
fn sync_dir(dir: &Path) -> Result<(), InstallError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Writes the state atomically: temporary file, sync, rename, directory sync.
pub fn save(staging_dir: &Path, state: &Installed) -> Result<(), InstallError> {
    std::fs::create_dir_all(staging_dir).map_err(io_error(staging_dir))?;
    let path = staging_dir.join(STATE_FILE);
    let temp = staging_dir.join(format!(".{STATE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| InstallError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut file = File::create(&temp).map_err(io_error(&temp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temp))?;
    std::fs::rename(&temp, &path).map_err(io_error(&path))?;
    sync_dir(staging_dir)
}

/// Reads, changes and saves the state under the lock; answers what `change` answered.
fn update<T>(
    staging_dir: &Path,
    change: impl FnOnce(&mut Installed) -> Result<T, InstallError>,
) -> Result<T, InstallError> {
    let _guard = STATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut state = load(staging_dir)?;
    let answer = change(&mut state)?;
    save(staging_dir, &state)?;
    Ok(answer)
}

/// Points `<staging dir>/current` at `target` (a file name in the same directory), or removes
/// it for `None`. A new link is made under a temporary name and renamed over the old one, so
/// `current` is never missing while it is replaced.
pub fn point_current(staging_dir: &Path, target: Option<&Path>) -> Result<(), InstallError> {
    let link = staging_dir.join(CURRENT_LINK);
    match target {
        Some(target) => {
            let temp = staging_dir.join(format!(".{CURRENT_LINK}.tmp"));
            match std::fs::remove_file(&temp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(InstallError::Io {
                        path: temp,
                        source: e,
                    })
                }
            }
            std::os::unix::fs::symlink(target, &temp).map_err(io_error(&temp))?;
            std::fs::rename(&temp, &link).map_err(io_error(&link))?;
        }
        None => match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(InstallError::Io {
                    path: link,
                    source: e,
                })
            }
        },
    }
    sync_dir(staging_dir)
}

/// What an activation did.
#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    /// The version that ran before, now the rollback target.
    pub previous: String,
}

/// Makes the staged release of `version` the one the supervisor starts next, with `running`
/// (the version of this process) as the rollback target and a fresh trial.
pub fn activate(
    staging_dir: &Path,
    version: &str,
    running: &str,
) -> Result<Activation, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let staged = staged_path(staging_dir, version);
    if !staged.is_file() {
        return Err(InstallError::NotStaged(version.to_owned()));
    }
    // Downloads are written without the execute bit; the supervisor must be able to run it.
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
        .map_err(io_error(&staged))?;
    update(staging_dir, |state| {
        point_current(staging_dir, staged.file_name().map(Path::new))?;
        state.previous = Some(running.to_owned());
        state.active = Some(version.to_owned());
        state.trial = Some(Trial {
            version: version.to_owned(),
            starts: 0,
        });
        Ok(Activation {
            previous: running.to_owned(),
        })
    })
}

/// What the start-up check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Startup {
    /// The firmware version of this process, for status frames, enrollment and the updater.
    pub running: String,
    /// The trial this start counts towards, if any.
    pub trial: Option<Trial>,
    /// Set when this start rolled a failed trial back.
    pub rolled_back: Option<RolledBack>,
}

/// Counts this start towards the trial, or rolls the trial back once the build was started
/// `MAX_TRIAL_STARTS` times without reaching the server. Must run before anything else that
/// could crash, so that a crash-looping build is counted.
///
/// The rollback points `current` at `edge-service-<previous>` when that staged file exists,
/// and removes `current` otherwise (the previous version is the originally installed build,
/// which then reports its own version again).
pub fn begin_run(staging_dir: &Path) -> Result<Startup, InstallError> {
    let _guard = STATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut state = load(staging_dir)?;
    let Some(trial) = state.trial.clone() else {
        return Ok(Startup {
            running: state.running_version(),
            trial: None,
            rolled_back: None,
        });
    };
    if trial.starts < MAX_TRIAL_STARTS {
        let counted = Trial {
            starts: trial.starts + 1,
            ..trial
        };
        state.trial = Some(counted.clone());
        save(staging_dir, &state)?;
        return Ok(Startup {
            running: state.running_version(),
            trial: Some(counted),
            rolled_back: None,
        });
    }
    let to = state
        .previous
        .clone()
        .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
    let previous_build = staged_path(staging_dir, &to);
    if previous_build.is_file() {
        point_current(staging_dir, previous_build.file_name().map(Path::new))?;
        state.active = Some(to.clone());
    } else {
        point_current(staging_dir, None)?;
        state.active = None;
    }
    let rolled_back = RolledBack {
        from: trial.version,
        to,
    };
    state.previous = None;
    state.trial = None;
    state.rolled_back = Some(rolled_back.clone());
    save(staging_dir, &state)?;
    Ok(Startup {
        running: state.running_version(),
        trial: None,
        rolled_back: Some(rolled_back),
    })
}

/// The build reached the server: its trial (if any) is over. Answers a rollback the server
/// has not heard of yet, and forgets it.
pub fn commit(staging_dir: &Path) -> Result<Option<RolledBack>, InstallError> {
    let _guard = STATE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut state = load(staging_dir)?;
    if state.trial.is_none() && state.rolled_back.is_none() {
        return Ok(None);
    }
    if let Some(trial) = state.trial.take() {
        tracing::info!(version = %trial.version, starts = trial.starts, "firmware trial committed");
    }
    let rolled_back = state.rolled_back.take();
    save(staging_dir, &state)?;
    Ok(rolled_back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    fn staged(dir: &Path, version: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(staged_path(dir, version), version).unwrap();
    }

    fn current(dir: &Path) -> Option<PathBuf> {
        std::fs::read_link(dir.join(CURRENT_LINK)).ok()
    }

    const OWN: &str = env!("CARGO_PKG_VERSION");

    #[test]
    fn a_fresh_directory_runs_the_build_s_own_version() {
        let dir = temp_dir();
        assert_eq!(load(&dir).unwrap(), Installed::default());
        let startup = begin_run(&dir).unwrap();
        assert_eq!(startup.running, OWN);
        assert_eq!(startup.trial, None);
        // Nothing was written: a fresh agent needs no staging directory.
        assert!(!dir.exists());
        assert_eq!(commit(&dir).unwrap(), None);
    }

    #[test]
    fn a_crash_looping_build_is_rolled_back_to_the_original_one() {
        let dir = temp_dir();
        staged(&dir, "9.0.0");
        let activation = activate(&dir, "9.0.0", OWN).unwrap();
        assert_eq!(activation.previous, OWN);
        assert_eq!(current(&dir), Some(PathBuf::from("edge-service-9.0.0")));
        let state = load(&dir).unwrap();
        assert_eq!(state.active.as_deref(), Some("9.0.0"));
        assert_eq!(state.previous.as_deref(), Some(OWN));
        assert_eq!(state.trial.as_ref().map(|t| t.starts), Some(0));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(staged_path(&dir, "9.0.0"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111, "the activated build is executable");
        }

        for start in 1..=MAX_TRIAL_STARTS {
            let startup = begin_run(&dir).unwrap();
            assert_eq!(startup.running, "9.0.0");
            assert_eq!(startup.trial.map(|t| t.starts), Some(start));
            assert_eq!(startup.rolled_back, None);
        }
        let startup = begin_run(&dir).unwrap();
        let rolled_back = RolledBack {
            from: "9.0.0".into(),
            to: OWN.into(),
        };
        assert_eq!(startup.rolled_back.as_ref(), Some(&rolled_back));
        assert_eq!(startup.running, OWN);
        // No staged file of the original build: the supervisor falls back to it.
        assert_eq!(current(&dir), None);
        let state = load(&dir).unwrap();
        assert_eq!(state.active, None);
        assert_eq!(state.trial, None);

        // Later starts are ordinary; the first connection takes the alert, once.
        assert_eq!(begin_run(&dir).unwrap().rolled_back, None);
        let taken = commit(&dir).unwrap().unwrap();
        assert!(
            taken.message().contains("9.0.0 was rolled back to"),
            "{}",
            taken.message()
        );
        assert_eq!(commit(&dir).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rollback_points_current_at_the_previous_staged_build() {
        let dir = temp_dir();
        staged(&dir, "2.0.0");
        staged(&dir, "3.0.0");
        activate(&dir, "2.0.0", OWN).unwrap();
        begin_run(&dir).unwrap();
        // 2.0.0 reached the server; then 3.0.0 is activated by 2.0.0 and never does.
        commit(&dir).unwrap();
        activate(&dir, "3.0.0", "2.0.0").unwrap();
        assert_eq!(current(&dir), Some(PathBuf::from("edge-service-3.0.0")));
        for _ in 0..MAX_TRIAL_STARTS {
            begin_run(&dir).unwrap();
        }
        let startup = begin_run(&dir).unwrap();
        assert_eq!(startup.running, "2.0.0");
        assert_eq!(current(&dir), Some(PathBuf::from("edge-service-2.0.0")));
        assert_eq!(load(&dir).unwrap().active.as_deref(), Some("2.0.0"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_build_that_reaches_the_server_keeps_running() {
        let dir = temp_dir();
        staged(&dir, "2.0.0");
        activate(&dir, "2.0.0", OWN).unwrap();
        begin_run(&dir).unwrap();
        assert_eq!(commit(&dir).unwrap(), None);
        for _ in 0..MAX_TRIAL_STARTS + 2 {
            let startup = begin_run(&dir).unwrap();
            assert_eq!(startup.running, "2.0.0");
            assert_eq!(startup.rolled_back, None);
        }
        assert_eq!(current(&dir), Some(PathBuf::from("edge-service-2.0.0")));
        // No temporary file is left beside the state or the link.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["current", "edge-service-2.0.0", "installed.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn activation_needs_the_staged_file_and_a_corrupt_state_is_reported() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            activate(&dir, "4.0.0", OWN),
            Err(InstallError::NotStaged(_))
        ));
        assert_eq!(current(&dir), None);
        std::fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(begin_run(&dir), Err(InstallError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
