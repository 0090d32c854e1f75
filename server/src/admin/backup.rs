//! `factory-server backup FILE`: a consistent copy of the SQLite database, taken while the
//! server runs (`VACUUM INTO`, in `store::db`). PostgreSQL has its own tool; the command
//! prints how to use it.

use std::path::Path;

use anyhow::Context as _;

use crate::config::{redact_url, Config, DatabaseTarget};

pub fn run(config: &Config, out: &Path) -> anyhow::Result<()> {
    if let DatabaseTarget::Postgres(url) = config.database() {
        println!(
            "the database is PostgreSQL: back it up with pg_dump, e.g.\n  pg_dump --format=custom --file={} '{}'",
            out.display(),
            redact_url(&url)
        );
        return Ok(());
    }
    if out.exists() {
        anyhow::bail!("{} exists; a backup never overwrites a file", out.display());
    }
    let db = crate::admin::open(config)?;
    // The copy holds every user's password hash and the devices' token ids: it is created
    // empty and 0600 first (`VACUUM INTO` accepts an empty file and keeps its mode).
    crate::private_files::prepare_sqlite_file(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    db.run_blocking(|conn| Ok(crate::store::db::backup_sqlite(conn, out)?))
        .map_err(|e| anyhow::anyhow!("backup to {}: {}", out.display(), e.message))?;
    let size = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    println!("backup written to {} ({size} bytes)", out.display());
    Ok(())
}
