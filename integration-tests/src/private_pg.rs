//! A private PostgreSQL instance for tests that kill the database: its own data directory,
//! port and socket directory, started from the installed binaries, so a `kill -9` of it
//! never touches the shared server other tests use at the same time.
//!
//! PostgreSQL refuses to run as root; a test running as root starts it as the `postgres`
//! user (by `setuid` in the child, so the process the test holds is the postmaster itself).
//! The postmaster is the leader of its own process group, so a kill takes its backends too,
//! as a crash of the machine's database would.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, TempDir};

/// How long a start (and the crash recovery after a kill) may take on a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A running (or killed) private PostgreSQL instance.
pub struct PrivatePg {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    /// The user and group to run as, when the test runs as root.
    owner: Option<(u32, u32)>,
    child: Option<Child>,
}

/// The directory holding `initdb` and `postgres`: `TEST_PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else what `pg_config --bindir` says.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TEST_PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("postgres").is_file() {
            return dir;
        }
    }
    panic!(
        "this test starts a private PostgreSQL instance and needs its server binaries \
         (initdb, postgres): none in TEST_PG_BIN_DIR, /usr/lib/postgresql/*/bin or \
         `pg_config --bindir`; install the PostgreSQL server package (e.g. postgresql-15)"
    );
}

/// The uid and gid of `name` from `/etc/passwd`.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == name {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Changes the owner of `path` and everything under it.
fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir").flatten() {
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// Processes of process group `pgid` that are still running (zombies, which hold nothing,
/// do not count).
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces, so split after its `)`.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
    })
}

impl PrivatePg {
    /// Initialises a fresh cluster in a temporary directory and starts it on a free port.
    pub fn start() -> PrivatePg {
        let bin = bin_dir();
        for tool in ["initdb", "postgres"] {
            assert!(
                bin.join(tool).is_file(),
                "{} is missing: this test starts a private PostgreSQL instance and needs the \
                 server binaries",
                bin.join(tool).display()
            );
        }
        let owner = if running_as_root() {
            Some(user_ids("postgres").expect(
                "running as root, and PostgreSQL refuses root: a `postgres` user is needed to \
                 run the private instance as",
            ))
        } else {
            None
        };
        let dir = TempDir::new("private-pg");
        if let Some((uid, gid)) = owner {
            chown_tree(dir.path(), uid, gid);
        }
        let mut pg = PrivatePg {
            bin,
            dir,
            port: free_port(),
            owner,
            child: None,
        };
        let mut initdb = pg.command("initdb");
        initdb
            .arg("-D")
            .arg(pg.data())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = initdb.output().expect("run initdb");
        assert!(
            out.status.success(),
            "initdb of the private PostgreSQL instance failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.restart();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The instance's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// The URL of the `postgres` database, the one the test gives the server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// True while the postmaster runs (it may still be recovering).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the instance on its data directory and port (after `kill`, with crash
    /// recovery), and waits until it answers queries.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the private PostgreSQL already runs");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("postgres log file");
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data())
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A killed process loses nothing the kernel already holds, so syncing to disk
            // would only slow a shared machine down without making the test stricter.
            .args(["-c", "fsync=off", "-c", "max_connections=60"])
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .process_group(0);
        self.child = Some(cmd.spawn().expect("spawn postgres"));
        let url = self.url();
        let start = Instant::now();
        loop {
            if let Ok(mut client) = postgres::Client::connect(&url, postgres::NoTls) {
                if client.simple_query("SELECT 1").is_ok() {
                    return;
                }
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "the private PostgreSQL exited with {status} while starting; log:\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "the private PostgreSQL did not answer within {READY_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL to the postmaster and every backend of it at once, then waits until they are
    /// gone, so a restart finds no process still holding the cluster.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id();
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .status();
        let _ = child.wait();
        let start = Instant::now();
        while group_alive(pgid) {
            assert!(
                start.elapsed() < READY_TIMEOUT,
                "processes of the killed PostgreSQL (group {pgid}) did not end"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        self.kill();
    }
}
