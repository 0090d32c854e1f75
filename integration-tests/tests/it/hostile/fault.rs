//! Faults: `kill -9` of the agent, the server and (on PostgreSQL) the database itself, at
//! random times (a seeded schedule) while codes are scanned, records drain agent → server →
//! cloud, commands are dispatched and a firmware download runs. Then everything drains, and
//! every record must have reached the cloud without a loss or a double, and every command
//! must have ended.
//!
//! What counts, by record identity (the record id the agent gives a record when it commits
//! it, which every resend carries):
//! - sent: the records the agent committed (each fed code's bottle, plus the batch,
//!   fixation and pallet records its rules made of them);
//! - received: the distinct record ids the cloud accepted;
//! - lost: a committed record missing from the server's `aggregated_*` tables or from the
//!   cloud;
//! - duplicate: one code stored as two records (by the agent, the server or the cloud), or a
//!   record at the cloud the agent never committed.
//!
//! Delivery to the cloud is at-least-once by design (the contract: "anything else, or no
//! answer, is retried"): a server killed between the cloud's 2xx and marking the batch sent
//! sends it again with the same record ids, which the cloud deduplicates by id. Those
//! redeliveries are counted and printed, not counted as duplicates.
//!
//! A scanner's TCP line protocol has no acknowledgement, so a code written to an agent that
//! dies before committing it was never taken; the line scans it again, as an operator
//! rescans an item the line did not confirm. The feeder knows what was committed from the
//! agent's own queue database, and rescans only codes a dead agent did not commit.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use integration_tests::cloud_sim::CloudSim;
use integration_tests::private_pg::PrivatePg;
use integration_tests::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

on_both_backends!(
    records_and_commands_survive_kill_9_of_agent_server_and_database,
    commands_in_flight_end_after_kill_9_of_the_server_or_the_database,
);

const RUNS: u64 = 2;
const CODES_PER_RUN: usize = 500;
const FAULTS_PER_RUN: usize = 4;
/// Codes per scanner connection.
const CHUNK: usize = 10;
const DEVICE: &str = "edge-fault";
const CLOUD_TOKEN: &str = "fault-cloud-token";
const COMMAND_TIMEOUT_MS: u64 = 10_000;
const FIRMWARE_VERSION: &str = "9.0.0";
const FIRMWARE_TIMEOUT_MS: u64 = 30_000;
/// Generous bounds for a loaded 2-core machine; reaching one is a failure, not a pace.
const RECOVERY: Duration = Duration::from_secs(90);
const DRAIN: Duration = Duration::from_secs(150);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Agent,
    Server,
    Postgres,
}

/// What the runs of one backend add up to.
#[derive(Debug, Default)]
struct Totals {
    runs: u64,
    faults: BTreeMap<&'static str, u64>,
    sent: usize,
    received: usize,
    duplicates: usize,
    lost: usize,
    codes: usize,
    rescanned: usize,
    redelivered: usize,
    commands: usize,
}

fn records_and_commands_survive_kill_9_of_agent_server_and_database(backend: Backend) {
    let name = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("fault suite {name}: seed {seed} (FAULT_SEED={seed} repeats the schedule)");
    let started = Instant::now();
    let mut totals = Totals::default();
    for run in 0..RUNS {
        one_run(backend, name, run, seed.wrapping_add(run), &mut totals);
    }
    let count = |k: &str| totals.faults.get(k).copied().unwrap_or(0);
    eprintln!(
        "fault suite {name}: {} codes fed, {} rescanned after a kill, {} cloud redeliveries of \
         an accepted record id, {} commands all ended, in {:?}",
        totals.codes,
        totals.rescanned,
        totals.redelivered,
        totals.commands,
        started.elapsed()
    );
    println!(
        "fault suite {name}: runs {}, faults {} (agent {}, server {}, postgres {}), records sent {}, received {}, duplicates {}, lost {}",
        totals.runs,
        count("agent") + count("server") + count("postgres"),
        count("agent"),
        count("server"),
        count("postgres"),
        totals.sent,
        totals.received,
        totals.duplicates,
        totals.lost
    );
    assert_eq!(totals.duplicates, 0, "duplicates (seed {seed})");
    assert_eq!(totals.lost, 0, "lost records (seed {seed})");
}

/// A command the server handed to a device and then lost track of, because the server was
/// killed or the database was down when its timeout came, ends TIMEOUT instead of staying
/// SENT forever.
fn commands_in_flight_end_after_kill_9_of_the_server_or_the_database(backend: Backend) {
    let mut pg = (backend == Backend::Postgres).then(PrivatePg::start);
    let flags: Vec<String> = pg
        .iter()
        .flat_map(|pg| ["--database-url".to_owned(), pg.url()])
        .collect();
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("fault-server"),
        &flag_refs,
    );
    let api = Api::admin(&server);
    let rest = Rest::new(&server.base_url, api.token().unwrap());
    let dispatch = |rest: &Rest, id: &str| {
        let reply = rest.post(
            "/api/v1/devices/edge-silent/commands",
            &json!({"command": {"type": "force_sync", "id": id}, "wait": false, "timeoutMs": 2000}),
        );
        assert_eq!(reply.as_ref().map(|r| r.0), Some(202), "{reply:?}");
        wait_until(RECOVERY, "the command SENT", || {
            status_of(rest, id).0 == "SENT"
        });
    };
    let ended = |rest: &Rest, id: &str| {
        wait_until(RECOVERY, "the lost command ended", || {
            let (status, output) = status_of(rest, id);
            // A database coming back may fail a read or two.
            if status.starts_with("HTTP") {
                return false;
            }
            assert!(
                matches!(status.as_str(), "SENT" | "TIMEOUT"),
                "{id}: {status} {output}"
            );
            status == "TIMEOUT"
        });
        let (_, output) = status_of(rest, id);
        assert!(output.contains("in flight"), "{id}: {output}");
    };
    // A device that takes every command and never answers.
    let device = FakeDevice::connect(&server, &api, "edge-silent").respond_with(|_| Vec::new());

    if let Some(pg) = pg.as_mut() {
        // The database dies while the dispatch waits, so its final write fails.
        dispatch(&rest, "lost-to-the-database");
        pg.kill();
        // The database stays down until the dispatch gave up storing the timeout (its pool
        // waits for a connection first).
        wait_until(RECOVERY, "the dispatch to fail its final write", || {
            server
                .log()
                .lines()
                .any(|l| l.contains("lost-to-the-database") && l.contains("without storing"))
        });
        pg.restart();
        ended(&rest, "lost-to-the-database");
    }

    // The server dies while the command is SENT; the new one has no dispatch awaiting it.
    dispatch(&rest, "lost-to-a-restart");
    let bind = server.base_url.trim_start_matches("http://").to_owned();
    let (db, dir) = server.stop();
    drop(device.join());
    let server = ServerProcess::start_on(&bind, db, dir, &flag_refs);
    let rest = Rest::new(&server.base_url, rest.token());
    ended(&rest, "lost-to-a-restart");
}

/// A command's status and output through REST; `HTTP …` when there is no answer.
fn status_of(rest: &Rest, id: &str) -> (String, String) {
    let reply = rest.get(&format!("/api/v1/devices/edge-silent/commands/{id}"));
    let Some((200, body)) = reply else {
        return (format!("HTTP {reply:?}"), String::new());
    };
    let data = &body["data"];
    (
        data["status"].as_str().unwrap_or_default().to_owned(),
        data["output"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Sets its flag when dropped, so the helper threads of a run stop however the run ends: a
/// scope waits for its threads, even while a panic unwinds through it.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The agent the feeder writes to; `generation` grows with every kill, so the feeder knows
/// when codes it wrote went to a process that is gone.
struct Slot {
    agent: Option<AgentProcess>,
    generation: u64,
}

fn lock(slot: &Mutex<Slot>) -> MutexGuard<'_, Slot> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

fn agent_options() -> AgentOptions {
    AgentOptions {
        args: [
            "--batch-size",
            "40",
            "--pallet-size",
            "3",
            // Staging only: a download is what the faults should hit, not an install.
            "--firmware-activate",
            "false",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect(),
        scanner: true,
        ..AgentOptions::default()
    }
}

fn one_run(backend: Backend, name: &str, run: u64, seed: u64, totals: &mut Totals) {
    let mut rng = StdRng::seed_from_u64(seed);
    let sim = CloudSim::start();
    sim.require_token(CLOUD_TOKEN);
    let mut pg = (backend == Backend::Postgres).then(PrivatePg::start);
    let mut flags: Vec<String> = [
        "--cloud-url",
        &sim.url,
        "--cloud-token",
        CLOUD_TOKEN,
        "--cloud-retry-max-secs",
        "2",
        "--cloud-batch-size",
        "100",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(pg) = &pg {
        flags.extend(["--database-url".to_owned(), pg.url()]);
    }
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    // The database is the private instance's (given in the flags) or the data dir's file.
    let mut server = Some(ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("fault-server"),
        &flag_refs,
    ));
    let (base_url, server_db) = {
        let s = server.as_ref().unwrap();
        let db = match &pg {
            Some(pg) => ServerDb::Postgres(pg.url()),
            None => ServerDb::Sqlite(s.data_dir.path().join("factory.db")),
        };
        (s.base_url.clone(), db)
    };
    let bind = base_url.trim_start_matches("http://").to_owned();
    let token = Api::admin(server.as_ref().unwrap())
        .token()
        .unwrap()
        .to_owned();
    let rest = Rest::new(&base_url, &token);
    let firmware: Vec<u8> = (0..12 * 1024 * 1024 + 11)
        .map(|i: u32| (i.wrapping_mul(31) ^ 0x5a) as u8)
        .collect();
    let release = upload_release_with(
        server.as_ref().unwrap(),
        &token,
        &format!("version={FIRMWARE_VERSION}&project=edge&filename=edge-service"),
        &firmware,
    );

    let agent = AgentProcess::start_with(&base_url, DEVICE, agent_options());
    let agent_db = agent.data_dir.path().join("agent.db");
    let staging = agent.data_dir.path().join("staging");
    wait_until(RECOVERY, "the agent ONLINE", || online(&rest));
    let slot = Mutex::new(Slot {
        agent: Some(agent),
        generation: 0,
    });
    let codes = gs1_codes(&format!("F{run}X"), CODES_PER_RUN);
    let stop = AtomicBool::new(false);

    let mut kinds = vec![Fault::Agent, Fault::Server];
    if pg.is_some() {
        kinds.push(Fault::Postgres);
    }
    // Every kind at least once per run, then at random.
    let mut schedule = kinds.clone();
    schedule.shuffle(&mut rng);
    while schedule.len() < FAULTS_PER_RUN {
        schedule.push(*kinds.choose(&mut rng).unwrap());
    }
    // The firmware download starts in the gap before one of the faults, at random.
    let download_before = rng.gen_range(0..schedule.len());
    let t0 = Instant::now();
    let (rescanned, commands_sent) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let feeder = {
            let (slot, agent_db, codes, stop) = (&slot, agent_db.as_path(), &codes, &stop);
            let mut rng = StdRng::seed_from_u64(seed ^ 0xfeed);
            s.spawn(move || feed(slot, agent_db, codes, stop, &mut rng))
        };
        let dispatcher = {
            let (rest, stop) = (&rest, &stop);
            let mut rng = StdRng::seed_from_u64(seed ^ 0xc0de);
            s.spawn(move || dispatch_commands(rest, stop, run, &mut rng))
        };
        for (i, fault) in schedule.iter().enumerate() {
            if i == download_before {
                update_firmware(&rest, run, &release, firmware.len());
            }
            std::thread::sleep(Duration::from_millis(rng.gen_range(500..2500)));
            let down = Duration::from_millis(rng.gen_range(200..2000));
            let label = match fault {
                Fault::Agent => {
                    let dead = {
                        let mut s = lock(&slot);
                        let mut agent = s.agent.take().expect("the agent runs");
                        agent.kill();
                        s.generation += 1;
                        agent
                    };
                    std::thread::sleep(down);
                    let fresh = dead.restart();
                    lock(&slot).agent = Some(fresh);
                    "agent"
                }
                Fault::Server => {
                    let (db, dir) = server.take().unwrap().stop();
                    std::thread::sleep(down);
                    server = Some(ServerProcess::start_on(&bind, db, dir, &flag_refs));
                    "server"
                }
                Fault::Postgres => {
                    let pg = pg.as_mut().unwrap();
                    pg.kill();
                    std::thread::sleep(down);
                    pg.restart();
                    "postgres"
                }
            };
            *totals.faults.entry(label).or_default() += 1;
            eprintln!(
                "fault suite {name}: run {run}: kill -9 {label} at {:.1} s, down {down:?}",
                t0.elapsed().as_secs_f64()
            );
            // Back together before the next fault, so faults do not pile into one long
            // outage (each one is a kill at a random point of working traffic).
            wait_until(RECOVERY, "the agent ONLINE again after a fault", || {
                online(&rest)
            });
        }
        let rescanned = feeder.join().expect("feeder");
        stop.store(true, Ordering::SeqCst);
        (rescanned, dispatcher.join().expect("dispatcher"))
    });
    eprintln!(
        "fault suite {name}: run {run}: faults over and codes fed at {:.1} s; draining",
        t0.elapsed().as_secs_f64()
    );

    // Drained: nothing pending on the agent or the server, every committed record at the cloud.
    let drain_start = Instant::now();
    loop {
        let agent_rows = agent_records(&agent_db);
        let pending_agent = agent_rows.iter().filter(|r| r.state != "SENT").count();
        let queue = server_db.rows("SELECT state FROM cloud_sync_queue");
        let pending_server = queue.iter().filter(|r| r[0] != "SENT").count();
        let at_cloud: HashSet<String> = sim.accepted_counts().into_keys().collect();
        let missing = agent_rows
            .iter()
            .filter(|r| !at_cloud.contains(&r.id))
            .count();
        if pending_agent == 0 && pending_server == 0 && missing == 0 {
            break;
        }
        if drain_start.elapsed() > DRAIN {
            let s = lock(&slot);
            panic!(
                "not drained after {DRAIN:?} (seed {seed}): agent pending {pending_agent}, server \
                 queue not SENT {pending_server}, committed records not at the cloud {missing}\n\
                 agent log tail:\n{}\nserver log tail:\n{}",
                tail(&s.agent.as_ref().map(|a| a.log()).unwrap_or_default()),
                tail(&server.as_ref().unwrap().log())
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let drained = drain_start.elapsed();

    // Every command ended: none left PENDING, SENT or CONFIRMING once its timeout passed.
    let open = |db: &ServerDb| -> Vec<Vec<String>> {
        db.rows("SELECT id, status FROM commands")
            .into_iter()
            .filter(|r| matches!(r[1].as_str(), "PENDING" | "SENT" | "CONFIRMING"))
            .collect()
    };
    // The longest timeout, the server's grace for a command no dispatch awaits, and slack.
    let commands_deadline = Duration::from_millis(COMMAND_TIMEOUT_MS.max(FIRMWARE_TIMEOUT_MS))
        + Duration::from_secs(10 + 30);
    let waited = Instant::now();
    while !open(&server_db).is_empty() {
        assert!(
            waited.elapsed() < commands_deadline,
            "commands that never ended (seed {seed}): {:?}\nserver log tail:\n{}",
            open(&server_db),
            tail(&server.as_ref().unwrap().log())
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let commands = server_db.rows("SELECT id, status FROM commands");
    let fw = commands
        .iter()
        .find(|r| r[0] == format!("fault-fw-{run}"))
        .map(|r| r[1].clone());
    // A staged release is exactly the artifact, however often its download was cut.
    let staged = staging.join(format!("edge-service-{FIRMWARE_VERSION}"));
    if staged.exists() {
        assert!(
            std::fs::read(&staged).unwrap() == firmware,
            "the staged release differs from the artifact"
        );
    }

    // The reckoning.
    let agent_rows = agent_records(&agent_db);
    let server_rows: Vec<Vec<String>> = [
        "aggregated_bottles",
        "aggregated_batches",
        "aggregated_batch_fixations",
        "aggregated_pallets",
    ]
    .iter()
    .flat_map(|t| server_db.rows(&format!("SELECT id, payload FROM {t}")))
    .collect();
    let accepted = sim.accepted();
    let report = reckon(&codes, &agent_rows, &server_rows, &accepted);
    eprintln!(
        "fault suite {name}: run {run}: records sent {}, received {}, duplicates {}, lost {}; \
         {} rescanned, {} redelivered, {} commands ({} dispatched by the test), firmware {fw:?}, \
         drained in {drained:?}",
        report.sent,
        report.received,
        report.duplicates,
        report.lost,
        rescanned,
        report.redelivered,
        commands.len(),
        commands_sent,
    );
    totals.runs += 1;
    totals.sent += report.sent;
    totals.received += report.received;
    totals.duplicates += report.duplicates;
    totals.lost += report.lost;
    totals.codes += codes.len();
    totals.rescanned += rescanned;
    totals.redelivered += report.redelivered;
    totals.commands += commands.len();
}

/// Starts the run's firmware download without waiting for it.
fn update_firmware(rest: &Rest, run: u64, release: &Value, size: usize) {
    let reply = rest.post(
        &format!("/api/v1/devices/{DEVICE}/commands"),
        &json!({"command": {"type": "update_firmware", "id": format!("fault-fw-{run}"),
                "version": FIRMWARE_VERSION,
                "url": format!("/api/v1/firmware/releases/{}/artifact", release["id"].as_str().unwrap()),
                "sha256": release["sha256"], "size": size},
                "wait": false, "confirm": true, "timeoutMs": FIRMWARE_TIMEOUT_MS}),
    );
    assert_eq!(
        reply.as_ref().map(|r| r.0),
        Some(202),
        "update_firmware: {reply:?}"
    );
}

/// Whether the server says the agent is connected; any failure (a server or database coming
/// back) is a no for now.
fn online(rest: &Rest) -> bool {
    rest.get(&format!("/api/v1/devices/{DEVICE}"))
        .is_some_and(|(status, body)| status == 200 && body["data"]["status"] == "ONLINE")
}

/// REST calls on a connection of their own each: the server is killed and restarted under
/// the test, and a pooled keep-alive connection may be closed by the server just as it is
/// reused. A transport failure (a server down) is `None`.
struct Rest {
    base: String,
    token: String,
    client: reqwest::blocking::Client,
}

impl Rest {
    fn new(base: &str, token: &str) -> Rest {
        Rest {
            base: base.to_owned(),
            token: token.to_owned(),
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client"),
        }
    }

    fn token(&self) -> &str {
        &self.token
    }

    fn answer(sent: reqwest::Result<reqwest::blocking::Response>) -> Option<(u16, Value)> {
        let response = sent.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().unwrap_or(Value::Null)))
    }

    fn get(&self, path: &str) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        Self::answer(self.client.get(url).bearer_auth(&self.token).send())
    }

    fn post(&self, path: &str, body: &Value) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        Self::answer(
            self.client
                .post(url)
                .bearer_auth(&self.token)
                .json(body)
                .send(),
        )
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

/// Feeds `codes` to the agent's scanner port, `CHUNK` per connection at a line's pace, and
/// answers how many were scanned again because an agent died before committing them.
fn feed(
    slot: &Mutex<Slot>,
    agent_db: &Path,
    codes: &[String],
    stop: &AtomicBool,
    rng: &mut StdRng,
) -> usize {
    let mut rescanned = 0;
    for chunk in codes.chunks(CHUNK) {
        let mut first = true;
        loop {
            if stop.load(Ordering::SeqCst) {
                return rescanned;
            }
            let committed = committed_codes(agent_db);
            let missing: Vec<String> = chunk
                .iter()
                .filter(|c| !committed.contains(*c))
                .cloned()
                .collect();
            if missing.is_empty() {
                break;
            }
            // Written under the lock, so a kill cannot fall between choosing the agent and
            // writing to it (a restarted agent could even get the same port).
            let generation = {
                let s = lock(slot);
                s.agent.as_ref().map(|agent| {
                    write_lines(agent.scanner_addr.as_deref().unwrap(), &missing);
                    s.generation
                })
            };
            let Some(generation) = generation else {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            };
            if !first {
                rescanned += missing.len();
            }
            first = false;
            let start = Instant::now();
            loop {
                if lock(slot).generation != generation || stop.load(Ordering::SeqCst) {
                    break;
                }
                let committed = committed_codes(agent_db);
                if missing.iter().all(|c| committed.contains(c)) {
                    break;
                }
                if start.elapsed() > RECOVERY {
                    let s = lock(slot);
                    panic!(
                        "a running agent did not commit {} scanned codes within {RECOVERY:?}; \
                         log tail:\n{}",
                        missing.len(),
                        tail(&s.agent.as_ref().map(|a| a.log()).unwrap_or_default())
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..150)));
    }
    rescanned
}

/// Writes lines to a scanner port and closes; a refused or cut connection is the agent's
/// death, which the feeder sees by its generation.
fn write_lines(addr: &str, codes: &[String]) {
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let text: String = codes.iter().map(|c| format!("{c}\n")).collect();
    let _ = stream.write_all(text.as_bytes());
    let _ = stream.flush();
}

/// Dispatches force_sync and pull_logs through REST at random intervals until `stop`,
/// without waiting for their outcome; answers how many the server took.
fn dispatch_commands(rest: &Rest, stop: &AtomicBool, run: u64, rng: &mut StdRng) -> usize {
    let mut taken = 0;
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..900)));
        n += 1;
        let id = format!("fault-{run}-{n}");
        let command = if rng.gen_bool(0.6) {
            json!({"type": "force_sync", "id": id})
        } else {
            json!({"type": "pull_logs", "id": id, "lines": 20})
        };
        let sent = rest.post(
            &format!("/api/v1/devices/{DEVICE}/commands"),
            &json!({"command": command, "wait": false, "timeoutMs": COMMAND_TIMEOUT_MS}),
        );
        if sent.is_some_and(|(status, _)| status == 202) {
            taken += 1;
        }
    }
    taken
}

/// One row of the agent's queue.
struct AgentRecord {
    id: String,
    state: String,
    /// `payload.code` of a bottle.
    code: Option<String>,
}

fn open_agent_db(path: &Path) -> Option<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path).ok()?;
    conn.busy_timeout(Duration::from_secs(10)).ok()?;
    Some(conn)
}

/// The agent's queue as committed (a missing file is an empty queue: the agent has not
/// created it yet).
fn agent_records(path: &Path) -> Vec<AgentRecord> {
    let Some(conn) = open_agent_db(path) else {
        return Vec::new();
    };
    let Ok(mut stmt) = conn.prepare(
        "SELECT id, state, CASE kind WHEN 'bottle' THEN json_extract(payload, '$.code') END
         FROM queue",
    ) else {
        return Vec::new();
    };
    stmt.query_map([], |row| {
        Ok(AgentRecord {
            id: row.get(0)?,
            state: row.get(1)?,
            code: row.get(2)?,
        })
    })
    .map(|rows| rows.filter_map(Result::ok).collect())
    .unwrap_or_default()
}

fn committed_codes(path: &Path) -> HashSet<String> {
    agent_records(path)
        .into_iter()
        .filter_map(|r| r.code)
        .collect()
}

/// The server's database, read directly.
enum ServerDb {
    Sqlite(PathBuf),
    Postgres(String),
}

impl ServerDb {
    /// Every row of a query whose columns are all text.
    fn rows(&self, sql: &str) -> Vec<Vec<String>> {
        match self {
            ServerDb::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).expect("open factory.db");
                conn.busy_timeout(Duration::from_secs(10))
                    .expect("busy timeout");
                let mut stmt = conn.prepare(sql).expect("prepare");
                let n = stmt.column_count();
                stmt.query_map([], |row| (0..n).map(|i| row.get::<_, String>(i)).collect())
                    .expect("query")
                    .collect::<Result<_, _>>()
                    .expect("rows")
            }
            ServerDb::Postgres(url) => {
                let mut client =
                    ::postgres::Client::connect(url, ::postgres::NoTls).expect("connect to the db");
                client
                    .query(sql, &[])
                    .expect("query")
                    .iter()
                    .map(|row| (0..row.len()).map(|i| row.get::<_, String>(i)).collect())
                    .collect()
            }
        }
    }
}

struct Reckoning {
    sent: usize,
    received: usize,
    duplicates: usize,
    lost: usize,
    redelivered: usize,
}

/// Counts by record identity; see the module comment for the definitions.
fn reckon(
    codes: &[String],
    agent: &[AgentRecord],
    server: &[Vec<String>],
    cloud: &[cloud_sim::Accepted],
) -> Reckoning {
    let mut by_code: HashMap<&str, usize> = HashMap::new();
    for code in agent.iter().filter_map(|r| r.code.as_deref()) {
        *by_code.entry(code).or_default() += 1;
    }
    let mut duplicates = by_code.values().map(|n| n - 1).sum::<usize>();

    let server_ids: HashSet<&str> = server.iter().map(|r| r[0].as_str()).collect();
    let mut by_code: HashMap<String, usize> = HashMap::new();
    for row in server {
        if let Some(code) = serde_json::from_str::<Value>(&row[1])
            .ok()
            .and_then(|p| p["code"].as_str().map(str::to_owned))
        {
            *by_code.entry(code).or_default() += 1;
        }
    }
    duplicates += by_code.values().map(|n| n - 1).sum::<usize>();

    let mut deliveries: HashMap<&str, usize> = HashMap::new();
    let mut ids_of_code: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for batch in cloud {
        for record in &batch.records {
            let Some(id) = record["id"].as_str() else {
                continue;
            };
            *deliveries.entry(id).or_default() += 1;
            if let Some(code) = record["payload"]["code"].as_str() {
                ids_of_code.entry(code).or_default().insert(id);
            }
        }
    }
    duplicates += ids_of_code.values().map(|ids| ids.len() - 1).sum::<usize>();
    let agent_ids: HashSet<&str> = agent.iter().map(|r| r.id.as_str()).collect();
    duplicates += deliveries
        .keys()
        .filter(|id| !agent_ids.contains(*id))
        .count();

    let committed: HashSet<&str> = agent.iter().filter_map(|r| r.code.as_deref()).collect();
    let lost = agent
        .iter()
        .filter(|r| !server_ids.contains(r.id.as_str()) || !deliveries.contains_key(r.id.as_str()))
        .count()
        + codes
            .iter()
            .filter(|c| !committed.contains(c.as_str()))
            .count();
    Reckoning {
        sent: agent.len(),
        received: deliveries.len(),
        duplicates,
        lost,
        redelivered: deliveries.values().map(|n| n - 1).sum(),
    }
}

#[test]
fn the_reckoning_counts_doubles_losses_and_redeliveries_apart() {
    let agent = |id: &str, code: Option<&str>| AgentRecord {
        id: id.into(),
        state: "SENT".into(),
        code: code.map(str::to_owned),
    };
    let bottle = |id: &str, code: &str| json!({"id": id, "payload": {"code": code}});
    let accepted = |records: Vec<Value>| cloud_sim::Accepted {
        company: "company-1".into(),
        route: "bottles".into(),
        ids: Vec::new(),
        codes: Vec::new(),
        records,
    };
    let codes = vec!["c1".to_owned(), "c2".to_owned()];
    let queue = [
        agent("a", Some("c1")),
        agent("b", Some("c2")),
        agent("p", None),
    ];
    let server: Vec<Vec<String>> = [("a", "c1"), ("b", "c2"), ("p", "")]
        .iter()
        .map(|(id, code)| vec![id.to_string(), json!({"code": code}).to_string()])
        .collect();
    let pallet = json!({"id": "p", "payload": {}});

    // Everything once, one batch sent twice: no double, no loss, one redelivery.
    let once = [
        accepted(vec![bottle("a", "c1"), bottle("b", "c2"), pallet.clone()]),
        accepted(vec![bottle("b", "c2")]),
    ];
    let r = reckon(&codes, &queue, &server, &once);
    assert_eq!(
        (r.sent, r.received, r.duplicates, r.lost, r.redelivered),
        (3, 3, 0, 0, 1)
    );

    // A code under a second record id at the cloud is a double; a record missing is a loss.
    let doubled = [accepted(vec![
        bottle("a", "c1"),
        bottle("x", "c1"),
        bottle("b", "c2"),
    ])];
    let r = reckon(&codes, &queue, &server, &doubled);
    assert_eq!(
        (r.duplicates, r.lost),
        (1 + 1, 1),
        "x is a second id for c1 and unknown to the agent; p is lost"
    );

    // The server storing a code twice, and a fed code the agent never committed.
    let mut server_twice = server.clone();
    server_twice.push(vec!["y".into(), json!({"code": "c2"}).to_string()]);
    let r = reckon(
        &[codes.clone(), vec!["c3".into()]].concat(),
        &queue,
        &server_twice,
        &once,
    );
    assert_eq!((r.duplicates, r.lost), (1, 1));
}
