//! `fleet-sim`: N simulated devices on a running `factory-server`, over real WebSockets and
//! the real protocol, for a bounded time; stops cleanly on SIGINT or at the end and prints
//! a summary. The devices themselves are `integration_tests::sim`.
//!
//! ```text
//! fleet-sim --server http://127.0.0.1:8080 --enrollment-key KEY --devices 10000 --duration 60
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use integration_tests::sim::{self, Counters, Fleet, Options};

#[derive(Debug, Parser)]
#[command(
    name = "fleet-sim",
    about = "Simulated edge devices against a factory-server"
)]
struct Args {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The server's enrollment key (`--enrollment-key` of factory-server).
    #[arg(long, env = "FACTORY_ENROLLMENT_KEY")]
    enrollment_key: Option<String>,
    /// Connect without enrolling or authenticating (a bare WebSocket server's baseline).
    #[arg(long)]
    bare: bool,
    /// The socket's path.
    #[arg(long, default_value = "/ws/device")]
    path: String,
    /// Devices to simulate.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Device ids are `<prefix>-<index>`.
    #[arg(long, default_value = "sim")]
    id_prefix: String,
    /// The index of the first device.
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Seconds to run once connected (at most 24 h).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: u64,
    /// Seconds between a device's `status` frames; 0 for none (idle sessions).
    #[arg(long, default_value_t = 5.0)]
    status_secs: f64,
    /// Seconds between a device's pings; 0 answers the server's pings only.
    #[arg(long, default_value_t = 0.0)]
    ping_secs: f64,
    /// Milliseconds a device takes to answer a command.
    #[arg(long, default_value_t = 0)]
    command_latency_ms: u64,
    /// Share of commands answered as failed, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    failure_rate: f64,
    /// Scans per second over the whole fleet.
    #[arg(long, default_value_t = 0.0)]
    scans_per_sec: f64,
    /// Scans per frame (more than 1 sends `batch` frames; at most 200).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=200))]
    scan_batch: u64,
    /// Source addresses in 127.0.0.0/8 to spread the sockets over (from 127.0.1.1).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=62_500))]
    source_addrs: u32,
    /// Devices enrolling and connecting at once.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
}

fn secs(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| Duration::from_secs_f64(s))
}

fn main() {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.failure_rate) {
        eprintln!("fleet-sim: --failure-rate must be between 0 and 1");
        std::process::exit(2);
    }
    if !args.bare && args.enrollment_key.is_none() {
        eprintln!(
            "fleet-sim: --enrollment-key (or FACTORY_ENROLLMENT_KEY) is required unless --bare"
        );
        std::process::exit(2);
    }
    let options = Options {
        base: args.server.trim_end_matches('/').to_owned(),
        ws_path: args.path.clone(),
        enrollment_key: if args.bare {
            None
        } else {
            args.enrollment_key.clone()
        },
        id_prefix: args.id_prefix.clone(),
        first: args.first,
        devices: args.devices,
        status_interval: secs(args.status_secs),
        ping_interval: secs(args.ping_secs),
        command_latency: Duration::from_millis(args.command_latency_ms),
        failure_rate: args.failure_rate,
        scans_per_sec: args.scans_per_sec,
        scan_batch: args.scan_batch as usize,
        source_addrs: args.source_addrs,
        connect_concurrency: args.connect_concurrency.max(1),
        stop_on_failure: false,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(run(options, Duration::from_secs(args.duration)));
    // Tasks still winding down (late command answers) are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(code);
}

async fn run(options: Options, duration: Duration) -> i32 {
    let (abort_tx, abort) = tokio::sync::watch::channel(false);
    // SIGINT during the connects stops them; after, it ends the run early.
    let interrupted = tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = abort_tx.send(true);
    });
    let mut abort_wait = abort.clone();
    let devices = options.devices;
    let start = Instant::now();
    let fleet = Fleet::start_until(options, abort.clone()).await;
    let c = fleet.counters.clone();
    let connect_secs = sim::secs(start);
    println!(
        "fleet-sim: {} of {devices} devices connected in {connect_secs:.1} s ({} enrollment and {} connect failures)",
        Counters::get(&c.connected),
        Counters::get(&c.enroll_failures),
        Counters::get(&c.connect_failures),
    );
    let running = Instant::now();
    if !*abort.borrow() {
        let _ = tokio::time::timeout(duration, abort_wait.wait_for(|stop| *stop)).await;
    }
    let ran = sim::secs(running);
    let why = if *abort.borrow() {
        "SIGINT"
    } else {
        "end of run"
    };
    fleet.stop().await;
    interrupted.abort();
    println!("fleet-sim: stopped ({why}) after {ran:.1} s");
    println!("  connected        {}", Counters::get(&c.connected));
    println!("  dropped          {}", Counters::get(&c.dropped));
    println!(
        "  statuses         {} ({:.0}/s)",
        Counters::get(&c.statuses),
        Counters::get(&c.statuses) as f64 / ran
    );
    println!(
        "  scans            {} ({:.0}/s)",
        Counters::get(&c.scans),
        Counters::get(&c.scans) as f64 / ran
    );
    println!(
        "  commands         {} answered, {} of them as failed",
        Counters::get(&c.commands),
        Counters::get(&c.failed_commands)
    );
    println!("  error frames     {}", Counters::get(&c.errors));
    if Counters::get(&c.connected) < devices as u64 && why != "SIGINT" {
        1
    } else {
        0
    }
}
