//! `factory-server`: reads the settings, starts logging and runs the server until a signal,
//! or runs one admin subcommand (`server::admin`).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use server::config::Config;

fn main() -> ExitCode {
    let args = server::admin::Args::parse();
    let config = match Config::load(args.settings) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("factory-server: {e}");
            return ExitCode::from(2);
        }
    };
    // A subcommand's output is for its reader: only warnings and errors are logged.
    let level = match &args.command {
        Some(_) => "warn",
        None => config.log_level.as_str(),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    if let Some(command) = args.command {
        return match server::admin::run(command, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("factory-server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let system = actix_web::rt::System::new();
    // Every fallible step of a start happens in `prepare`, before any actor exists, so a
    // refused start is one line and exit 2, like a bad setting.
    let prepared = match system.block_on(async move { server::prepare(config) }) {
        Ok(prepared) => prepared,
        Err(e) => {
            eprintln!("factory-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = system.block_on(async move {
        let running = prepared.start()?;
        for addr in &running.addrs {
            // Scripts and tests that bind port 0 read the real address from this line.
            println!("factory-server listening on {}://{addr}", running.scheme);
        }
        std::io::stdout().flush().ok();
        running.server.await?;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
