//! `factory-server`: reads the settings, starts logging and runs the server until a signal.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use server::config::{Cli, Config};

fn main() -> ExitCode {
    let config = match Config::load(Cli::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("factory-server: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&config.log_level))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let result = actix_web::rt::System::new().block_on(async move {
        let running = server::start(config)?;
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
