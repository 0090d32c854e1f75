//! Benchmark: firmware artifact download throughput (MB/s) for 1 and for 100 concurrent
//! downloads, and the server's peak resident memory while a 1 GiB release is uploaded.
//! Prints figures; asserts only that every byte arrived. Run with
//! `bash scripts/bench-firmware.sh`. SQLite: the artifact path touches the database only to
//! check the token. `--table` (for `scripts/bench.sh`) skips the 1 GiB release and prints a
//! `ROW` line of the 100 concurrent downloads (of 8 MiB each with `--quick`).

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{Api, Backend, ServerProcess, TempDir, TestDb};

const GIB: u64 = 1024 * 1024 * 1024;
const MB: f64 = 1_000_000.0;
/// The release each of the 100 concurrent clients downloads.
const SMALL: u64 = 32 * 1024 * 1024;
const CLIENTS: usize = 100;

/// `n` bytes of a cheap pattern, produced as they are read, so the client holds none of it.
struct Pattern {
    left: u64,
    state: u64,
}

impl Read for Pattern {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        for b in &mut buf[..n] {
            self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.state >> 56) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `VmRSS` or `VmHWM` of a process, in KiB.
fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn upload(server: &ServerProcess, api: &Api, version: &str, size: u64) -> serde_json::Value {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(1800))
        .build()
        .unwrap();
    let body = reqwest::blocking::Body::sized(
        Pattern {
            left: size,
            state: size,
        },
        size,
    );
    let reply: serde_json::Value = client
        .post(format!(
            "{}/api/v1/firmware/releases?version={version}&filename=bench.bin&project=bench",
            server.base_url
        ))
        .bearer_auth(api.token().unwrap())
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .expect("upload")
        .json()
        .expect("upload answer");
    assert_eq!(reply["success"], true, "{reply}");
    reply["data"].clone()
}

/// Downloads an artifact `clients` times at once; answers the seconds taken.
fn download(
    server: &ServerProcess,
    token: &str,
    release: &serde_json::Value,
    clients: usize,
) -> f64 {
    let url = format!(
        "{}/api/v1/firmware/releases/{}/artifact",
        server.base_url,
        release["id"].as_str().unwrap()
    );
    let size = release["size"].as_u64().unwrap();
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (url, token) = (url.clone(), token.to_owned());
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(1800))
                    .build()
                    .unwrap();
                let mut resp = client
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .expect("download");
                assert_eq!(resp.status().as_u16(), 200);
                std::io::copy(&mut resp, &mut std::io::sink()).expect("read body")
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), size, "a download came up short");
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let table = args.iter().any(|a| a == "--table");
    let small = if args.iter().any(|a| a == "--quick") {
        SMALL / 4
    } else {
        SMALL
    };
    let server = ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("bench-fw"),
        &[
            "--log-level",
            "warn",
            "--firmware-max-bytes",
            &(2 * GIB).to_string(),
            // Throughput of 100 transfers at once is measured, so the budget must hold them.
            "--download-slots",
            "1000",
        ],
    );
    let api = Api::admin(&server);
    let token = api.token().unwrap().to_owned();
    let pid = server.pid();
    let idle_kib = proc_kib(pid, "VmRSS");
    if table {
        let release = upload(&server, &api, "1.0.1", small);
        let secs = download(&server, &token, &release, CLIENTS);
        let total = small as f64 * CLIENTS as f64;
        println!(
            "{CLIENTS} concurrent downloads of {} MiB: {secs:.1} s, {:.0} MB/s",
            small >> 20,
            total / MB / secs
        );
        println!("ROW sqlite artifact {:.0} MB/s", total / MB / secs);
        return;
    }

    // Peak RSS while 1 GiB streams in: sampled every 10 ms, and the kernel's high-water mark.
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(proc_kib(pid, "VmRSS"), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let start = Instant::now();
    let big = upload(&server, &api, "1.0.0", GIB);
    let upload_secs = start.elapsed().as_secs_f64();
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let hwm_kib = proc_kib(pid, "VmHWM");
    println!("1 GiB upload");
    println!(
        "  time                {upload_secs:>8.1} s ({:.0} MB/s)",
        GIB as f64 / MB / upload_secs
    );
    println!(
        "  server RSS idle     {:>8.1} MiB",
        idle_kib as f64 / 1024.0
    );
    println!(
        "  server RSS peak     {:>8.1} MiB (sampled every 10 ms)",
        peak.load(Ordering::SeqCst) as f64 / 1024.0
    );
    println!(
        "  server VmHWM        {:>8.1} MiB (kernel high-water mark, whole run so far)",
        hwm_kib as f64 / 1024.0
    );

    let secs = download(&server, &token, &big, 1);
    println!("1 download of 1 GiB");
    println!("  {:>8.1} s, {:>8.0} MB/s", secs, GIB as f64 / MB / secs);

    let small = upload(&server, &api, "1.0.1", SMALL);
    let secs = download(&server, &token, &small, CLIENTS);
    let total = SMALL as f64 * CLIENTS as f64;
    println!("{CLIENTS} concurrent downloads of 32 MiB");
    println!(
        "  {:>8.1} s, {:>8.0} MB/s in all, {:>6.1} MB/s per download",
        secs,
        total / MB / secs,
        total / MB / secs / CLIENTS as f64
    );
    println!(
        "  server RSS after    {:>8.1} MiB",
        proc_kib(pid, "VmRSS") as f64 / 1024.0
    );
}
