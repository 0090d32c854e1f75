//! The agent's logging: stderr (for journald) plus its own size-capped log file, a filter that
//! `push_config` can change at run time, and reading the file's last lines for `pull_logs`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Size at which the log file is rotated to `<file>.1` (the previous `.1` is dropped), so a
/// line PC that runs for years never fills its disk with logs.
pub const MAX_LOG_FILE: u64 = 10 * 1024 * 1024;
/// Most lines one `pull_logs` may ask for.
pub const MAX_PULL_LINES: u32 = 5000;

/// A log file that rotates itself when it grows past `limit`.
pub struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    limit: u64,
}

impl RotatingFile {
    pub fn open(path: &Path, limit: u64) -> io::Result<RotatingFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_owned(),
            file: Some(file),
            written,
            limit,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, rotated(&self.path))?;
        self.file = Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?,
        );
        self.written = 0;
        Ok(())
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit && self.written > 0 {
            // A failed rotation keeps logging to the old file rather than losing lines.
            let _ = self.rotate();
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => return Err(io::Error::other("log file is not open")),
        };
        let n = file.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

/// Changes the log filter of the running agent.
#[derive(Clone)]
pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogControl")
    }
}

impl LogControl {
    /// A control that changes nothing, for tests that install no subscriber.
    #[cfg(test)]
    pub fn detached() -> Self {
        LogControl { handle: None }
    }

    pub fn set_level(&self, filter: &str) -> Result<(), String> {
        let filter = EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
        match &self.handle {
            Some(handle) => handle.reload(filter).map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }
}

/// Installs the global subscriber: stderr (coloured only on a terminal) and, when it can be
/// opened, the log file. A file that cannot be opened is reported and logging goes on.
pub fn init(filter: &str, file: &Path, ansi: bool) -> LogControl {
    let filter = EnvFilter::try_new(filter)
        .unwrap_or_else(|_| EnvFilter::new(crate::config::DEFAULT_LOG_LEVEL));
    let (filter, handle) = reload::Layer::new(filter);
    let stderr = fmt::layer().with_writer(io::stderr).with_ansi(ansi);
    let (file_layer, file_error) = match RotatingFile::open(file, MAX_LOG_FILE) {
        Ok(rotating) => (
            Some(
                fmt::layer()
                    .with_writer(Mutex::new(rotating))
                    .with_ansi(false),
            ),
            None,
        ),
        Err(e) => (None, Some(e)),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(file_layer)
        .init();
    if let Some(e) = file_error {
        tracing::error!(file = %file.display(), "cannot open the log file: {e}; pull_logs will find nothing");
    }
    LogControl {
        handle: Some(handle),
    }
}

/// The last `n` lines of the log (the rotated file first when the current one is short).
pub fn tail(file: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut lines = tail_of(file, n)?;
    if lines.len() < n {
        if let Ok(mut older) = tail_of(&rotated(file), n - lines.len()) {
            older.append(&mut lines);
            lines = older;
        }
    }
    Ok(lines)
}

/// Reads backwards in blocks until `n` lines are found, so a big file is not read whole.
fn tail_of(path: &Path, n: usize) -> io::Result<Vec<String>> {
    const BLOCK: u64 = 64 * 1024;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut start = len;
    let mut buf: Vec<u8> = Vec::new();
    while start > 0 && buf.iter().filter(|&&b| b == b'\n').count() <= n {
        let from = start.saturating_sub(BLOCK);
        let mut block = vec![0u8; (start - from) as usize];
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&buf);
        buf = block;
        start = from;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    // Without the whole file, the first line may be cut.
    if start > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// The level word of a formatted line (`… INFO target: message`), `INFO` when none is found.
pub fn level_of(line: &str) -> &'static str {
    for word in line.split_whitespace().take(3) {
        for level in ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"] {
            if word == level {
                return level;
            }
        }
    }
    "INFO"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::temp_dir;

    #[test]
    fn rotation_keeps_two_files_and_tail_reads_across_them() {
        let dir = temp_dir();
        let path = dir.join("agent.log");
        let mut file = RotatingFile::open(&path, 100).unwrap();
        for i in 0..30 {
            writeln!(file, "2030-01-01T00:00:00Z  INFO agent: line {i}").unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
        assert!(rotated(&path).is_file());
        let last = tail(&path, 3).unwrap();
        assert_eq!(last.len(), 3);
        assert!(last[2].ends_with("line 29"), "{last:?}");
        assert!(last[0].ends_with("line 27"), "{last:?}");
        assert_eq!(level_of(&last[0]), "INFO");
        assert_eq!(level_of("2030-01-01T00:00:00Z ERROR x: boom"), "ERROR");
        assert_eq!(level_of("no level here"), "INFO");
    }

    #[test]
    fn tail_of_a_big_file_reads_only_the_end() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.log");
        let text: String = (0..50_000).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let last = tail(&path, 2).unwrap();
        assert_eq!(last, ["line 49998", "line 49999"]);
        assert_eq!(tail(&path, 60_000).unwrap().len(), 50_000);
        assert!(tail(&dir.join("missing.log"), 5).is_err());
    }
}
