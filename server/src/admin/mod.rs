//! `factory-server`'s admin subcommands (`migrate`, `user`, `device`, `firmware`, `backup`):
//! the operations a plant's IT runs on the server's host, with the server's own settings
//! (flags, `FACTORY_*` environment, TOML file) and through the same store functions and
//! checks as the REST API. Without a subcommand the binary runs the server.

pub mod backup;
pub mod devices;
pub mod firmware;
pub mod users;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Cli, Config};
use crate::store::db::Db;

/// The whole command line: the server's settings, and an optional subcommand. The settings
/// are global, so they may come before or after the subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "factory-server",
    version,
    about = "The factory server: device registry, command dispatch and REST API.\n\nWithout a subcommand it runs the server; the subcommands are admin tasks that use the same settings.",
    subcommand_precedence_over_arg = true
)]
pub struct Args {
    #[command(flatten)]
    pub settings: Cli,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates the database or brings its schema up to date, then exits (the server also
    /// does this at every start).
    Migrate,
    /// Users of the REST API and the dashboard.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Devices: register one before it is switched on, issue its token.
    #[command(subcommand)]
    Device(devices::DeviceCommand),
    /// Release signing keys, signatures and uploads.
    #[command(subcommand)]
    Firmware(firmware::FirmwareCommand),
    /// A consistent copy of the SQLite database while the server runs (on PostgreSQL it
    /// prints the `pg_dump` command to use instead).
    Backup {
        /// The file to write; it must not exist.
        out: PathBuf,
    },
}

/// Runs one subcommand to its end. The errors are the one line the binary prints.
pub fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            let db = open(&config)?;
            println!(
                "database ready ({}), schema up to date",
                db.backend().name()
            );
            Ok(())
        }
        Command::User(command) => users::run(command, &open(&config)?),
        Command::Device(command) => devices::run(command, &open(&config)?, &config),
        Command::Firmware(command) => firmware::run(command, &config),
        Command::Backup { out } => backup::run(&config, &out),
    }
}

/// The server's database, migrated: a subcommand on a fresh data dir works like a first start.
pub fn open(config: &Config) -> anyhow::Result<Db> {
    crate::private_files::create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    Ok(Db::open(config.database())?)
}

/// Who the audit log names for a change made here: the command line and the operating
/// system's user, since no user of the API is signed in.
pub fn actor() -> String {
    let who = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{who}")
}

/// A new password: the first line of standard input with `--password-stdin`, else a
/// generated one that the caller prints once.
pub fn read_or_generate_password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if !from_stdin {
        return Ok((crate::auth::random_password(), true));
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    crate::api::users::validate_password(&password).map_err(|e| anyhow::anyhow!(e.message))?;
    Ok((password, false))
}
