//! The fleet simulator's devices and dashboards: what `fleet-sim` and the fleet benchmark run.
//!
//! Each device is one tokio task holding one real WebSocket to `/ws/device`, opened from a
//! source address of its own in 127.0.0.0/8 (bound before connecting), so that a fleet larger
//! than one address's ephemeral port range still connects. A device enrolls over REST with
//! the enrollment key, authenticates with its token on the upgrade, sends its first `status`
//! after `hello` and one every `status_interval` after it, pings the server, answers every
//! command after `command_latency` (failing a `failure_rate` share of them) and reports
//! `scan` events at its share of the fleet's scan rate. Every count lands in `Counters`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::fleet::Socket;

/// What every simulated device does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's HTTP base URL, `http://host:port`.
    pub base: String,
    /// The path of the socket: `/ws/device`, or anything a bare server answers.
    pub ws_path: String,
    /// `None`: connect without enrolling or authenticating (for the bare baseline server).
    pub enrollment_key: Option<String>,
    /// Device ids are `<prefix>-<index>`, index from `first`.
    pub id_prefix: String,
    pub first: usize,
    pub devices: usize,
    /// `None`: no `status` frames (an idle session).
    pub status_interval: Option<Duration>,
    /// Client pings; `None` leaves the server's pings (answered) as the only heartbeat.
    pub ping_interval: Option<Duration>,
    pub command_latency: Duration,
    /// Share of commands answered with `success: false`, 0 to 1.
    pub failure_rate: f64,
    /// Scans per second over the whole fleet; 0 for none.
    pub scans_per_sec: f64,
    /// Scans per frame: 1 sends `scan` frames, more sends `batch` frames of that many.
    pub scan_batch: usize,
    /// Source addresses to spread the sockets over, from 127.0.1.1 on.
    pub source_addrs: u32,
    /// Devices enrolling and connecting at once.
    pub connect_concurrency: usize,
    /// Stop connecting more devices after a round of connects of which a tenth or more
    /// failed: the way to find how many sessions a server holds.
    pub stop_on_failure: bool,
}

impl Options {
    /// An idle fleet of `devices` with the default enrollment key of the test harness.
    pub fn idle(base: &str, devices: usize) -> Self {
        Options {
            base: base.to_owned(),
            ws_path: "/ws/device".into(),
            enrollment_key: Some(crate::ENROLLMENT_KEY.into()),
            id_prefix: "sim".into(),
            first: 0,
            devices,
            status_interval: None,
            ping_interval: None,
            command_latency: Duration::ZERO,
            failure_rate: 0.0,
            scans_per_sec: 0.0,
            scan_batch: 1,
            source_addrs: 64,
            connect_concurrency: 200,
            stop_on_failure: false,
        }
    }

    /// The id of the device with index `i`.
    pub fn device_id(&self, i: usize) -> String {
        format!("{}-{:05}", self.id_prefix, i)
    }
}

/// What the fleet did, counted as it happened.
#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub enroll_failures: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Sockets the server closed or that failed after `hello`.
    pub dropped: AtomicU64,
    pub statuses: AtomicU64,
    pub scans: AtomicU64,
    pub commands: AtomicU64,
    pub failed_commands: AtomicU64,
    /// `error` frames the server sent.
    pub errors: AtomicU64,
}

impl Counters {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// A running fleet: its devices' tasks, counters and the stop signal.
pub struct Fleet {
    pub counters: Arc<Counters>,
    /// The devices that connected, in the order they did.
    pub ids: Vec<String>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Fleet {
    /// Enrolls and connects every device of `options`, `connect_concurrency` at a time, and
    /// answers once each one is connected or has failed to.
    pub async fn start(options: Options) -> Fleet {
        Self::start_until(options, watch::channel(false).1).await
    }

    /// Like `start`, giving up on devices not yet connected once `abort` turns true.
    pub async fn start_until(options: Options, abort: watch::Receiver<bool>) -> Fleet {
        let options = Arc::new(options);
        let counters = Arc::new(Counters::default());
        let (stop, stopped) = watch::channel(false);
        let server = server_addr(&options.base);
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(options.connect_concurrency)
            .build()
            .expect("http client");
        let mut tasks = Vec::with_capacity(options.devices);
        let mut ids = Vec::with_capacity(options.devices);
        let indexes: Vec<usize> = (options.first..options.first + options.devices).collect();
        let mut failed_before = 0;
        for chunk in indexes.chunks(options.connect_concurrency.max(1)) {
            // A server at its limit refuses nearly a whole round; a slow enrollment or two
            // under load is no limit.
            let failed = Counters::get(&counters.enroll_failures)
                + Counters::get(&counters.connect_failures);
            let round = options.connect_concurrency.max(1) as u64;
            if *abort.borrow()
                || (options.stop_on_failure && (failed - failed_before) * 10 >= round)
            {
                break;
            }
            failed_before = failed;
            let mut connecting = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let (options, client, counters) =
                    (options.clone(), client.clone(), counters.clone());
                connecting.push(tokio::spawn(async move {
                    open(&options, &client, server, i, &counters).await
                }));
            }
            for c in connecting {
                if let Ok(Some((id, socket))) = c.await {
                    ids.push(id.clone());
                    let (options, counters, stopped) =
                        (options.clone(), counters.clone(), stopped.clone());
                    tasks.push(tokio::spawn(async move {
                        device(&options, id, socket, &counters, stopped).await
                    }));
                }
            }
        }
        Fleet {
            counters,
            ids,
            stop,
            tasks,
        }
    }

    /// Closes every socket and waits (up to 10 s) for the devices to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let all = futures_util::future::join_all(self.tasks);
        let _ = tokio::time::timeout(Duration::from_secs(10), all).await;
    }
}

/// The server's socket address from its base URL.
fn server_addr(base: &str) -> SocketAddr {
    let url = reqwest::Url::parse(base).expect("server base URL");
    let host = url.host_str().expect("host in the base URL");
    let port = url.port_or_known_default().expect("port");
    let ip: IpAddr = host.parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    SocketAddr::new(ip, port)
}

/// The source address of device `i`: 127.0.x.y with y in 1..=250, the first `count` of them.
pub fn source_addr(i: usize, count: u32) -> Ipv4Addr {
    let k = (i as u32) % count.max(1);
    Ipv4Addr::new(127, 0, (1 + k / 250) as u8, (1 + k % 250) as u8)
}

/// Enrolls device `i` (unless the fleet is bare) and opens its socket; `None` on a failure,
/// counted.
async fn open(
    options: &Options,
    client: &reqwest::Client,
    server: SocketAddr,
    i: usize,
    counters: &Counters,
) -> Option<(String, Socket)> {
    let id = options.device_id(i);
    let token = match &options.enrollment_key {
        Some(key) => match enroll(client, &options.base, &id, key).await {
            Some(token) => Some(token),
            None => {
                Counters::add(&counters.enroll_failures, 1);
                return None;
            }
        },
        None => None,
    };
    match connect(options, server, i, token.as_deref()).await {
        Ok(socket) => {
            Counters::add(&counters.connected, 1);
            Some((id, socket))
        }
        Err(e) => {
            if Counters::get(&counters.connect_failures) == 0 {
                eprintln!("fleet-sim: {id} cannot connect: {e}");
            }
            Counters::add(&counters.connect_failures, 1);
            None
        }
    }
}

/// A device token from the enrollment route.
async fn enroll(client: &reqwest::Client, base: &str, id: &str, key: &str) -> Option<String> {
    let reply: Value = client
        .post(format!("{base}/api/v1/devices/{id}/token"))
        .header("X-Enrollment-Key", key)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    reply["data"]["token"].as_str().map(str::to_owned)
}

/// Opens device `i`'s socket from its own source address, with its token on the upgrade.
async fn connect(
    options: &Options,
    server: SocketAddr,
    i: usize,
    token: Option<&str>,
) -> Result<Socket, String> {
    let url = format!("ws://{server}{}", options.ws_path);
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(token) = token {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}")
                .parse()
                .map_err(|_| "token header")?,
        );
    }
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    let source = SocketAddr::new(IpAddr::V4(source_addr(i, options.source_addrs)), 0);
    socket
        .bind(source)
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    // Small buffers: thousands of simulated devices share this process's memory.
    let config = WebSocketConfig {
        write_buffer_size: 0,
        ..WebSocketConfig::default()
    };
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)),
    )
    .await
    .map_err(|_| "upgrade timed out".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(socket)
}

/// The `ts` of a frame sent now.
fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A `status` frame as the agent sends it.
fn status_frame(run_id: &str) -> String {
    json!({"type": "status", "status": "ONLINE", "version": "1.0.0", "bootId": "sim-boot",
           "runId": run_id, "ts": now(),
           "metrics": {"diskFreeBytes": 1_000_000_000u64, "uptimeSecs": 60, "queueDepth": 0,
                       "labelQueueDepth": 0, "connectionMode": "VIA_LOCAL_SERVER"}})
    .to_string()
}

/// `n` scans, in one `scan` frame or a `batch` frame.
fn scan_frame(id: &str, seq: &mut u64, n: usize) -> String {
    let ts = now();
    let scan = |seq: &mut u64| {
        *seq += 1;
        json!({"type": "scan", "code": format!("0104006381333931{id}{seq:08}"), "valid": true, "ts": ts})
    };
    if n <= 1 {
        return scan(seq).to_string();
    }
    let events: Vec<Value> = (0..n).map(|_| scan(seq)).collect();
    json!({"type": "batch", "events": events}).to_string()
}

/// A periodic timer, or one that never fires.
fn ticker(period: Option<Duration>, phase: Duration) -> Option<tokio::time::Interval> {
    period.map(|p| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + phase, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    })
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// One simulated device on its open socket, until the fleet stops or the socket ends.
async fn device(
    options: &Options,
    id: String,
    socket: Socket,
    counters: &Counters,
    mut stop: watch::Receiver<bool>,
) {
    let (mut tx, mut rx) = socket.split();
    let run_id = uuid::Uuid::new_v4().to_string();
    // Each device's timers start at a random phase, so the fleet's frames spread evenly.
    let mut rng = rand::rngs::StdRng::from_entropy();
    let jitter = |rng: &mut rand::rngs::StdRng, p: Option<Duration>| {
        p.map(|p| p.mul_f64(rng.gen::<f64>()))
            .unwrap_or(Duration::ZERO)
    };
    let scan_period = (options.scans_per_sec > 0.0).then(|| {
        Duration::from_secs_f64(
            options.scan_batch.max(1) as f64 * options.devices as f64 / options.scans_per_sec,
        )
    });
    let status_phase = jitter(&mut rng, options.status_interval);
    let ping_phase = jitter(&mut rng, options.ping_interval);
    let scan_phase = jitter(&mut rng, scan_period);
    let mut status = ticker(options.status_interval, status_phase);
    let mut ping = ticker(options.ping_interval, ping_phase);
    let mut scan = ticker(scan_period, scan_phase);
    // Results answered after a latency come back through this channel.
    let (late_tx, mut late) = mpsc::unbounded_channel::<String>();
    let mut seq = 0u64;
    let mut greeted = options.enrollment_key.is_none();
    loop {
        let out = tokio::select! {
            _ = stop.changed() => {
                // A clean close: the server's close frame is awaited, briefly.
                let _ = tx.send(Message::Close(None)).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(_)) = rx.next().await {}
                })
                .await;
                return;
            }
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    match frame["type"].as_str() {
                        Some("hello") => {
                            greeted = true;
                            if options.status_interval.is_some() {
                                Counters::add(&counters.statuses, 1);
                                Some(status_frame(&run_id))
                            } else {
                                None
                            }
                        }
                        Some("command") => answer(options, &frame, &late_tx, &mut rng, counters),
                        Some("error") => {
                            Counters::add(&counters.errors, 1);
                            None
                        }
                        _ => None,
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    Counters::add(&counters.dropped, 1);
                    return;
                }
                Some(Ok(_)) => None,
            },
            Some(result) = late.recv() => Some(result),
            _ = tick(&mut status), if greeted => {
                Counters::add(&counters.statuses, 1);
                Some(status_frame(&run_id))
            }
            _ = tick(&mut scan), if greeted => {
                Counters::add(&counters.scans, options.scan_batch.max(1) as u64);
                Some(scan_frame(&id, &mut seq, options.scan_batch))
            }
            _ = tick(&mut ping) => {
                if tx.send(Message::Ping(Vec::new())).await.is_err() {
                    Counters::add(&counters.dropped, 1);
                    return;
                }
                None
            }
        };
        if let Some(text) = out {
            if tx.send(Message::Text(text)).await.is_err() {
                Counters::add(&counters.dropped, 1);
                return;
            }
        }
    }
}

/// The result of a `command` frame: now, or through `late` after the configured latency.
fn answer(
    options: &Options,
    frame: &Value,
    late: &mpsc::UnboundedSender<String>,
    rng: &mut rand::rngs::StdRng,
    counters: &Counters,
) -> Option<String> {
    let success = rng.gen::<f64>() >= options.failure_rate;
    Counters::add(&counters.commands, 1);
    if !success {
        Counters::add(&counters.failed_commands, 1);
    }
    let output = if success { "ok" } else { "simulated failure" };
    let result = json!({"type": "command_result", "commandId": frame["command"]["id"],
                        "success": success, "output": output})
    .to_string();
    if options.command_latency.is_zero() {
        return Some(result);
    }
    let (late, latency) = (late.clone(), options.command_latency);
    tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        let _ = late.send(result);
    });
    None
}

/// Dashboards on `/ws/dashboard` counting the device events they receive.
pub struct Dashboards {
    pub received: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dashboards {
    /// Opens `n` dashboards with a user token, each subscribed to `event_types`.
    pub async fn open(base: &str, token: &str, n: usize, event_types: &[&str]) -> Dashboards {
        let received = Arc::new(AtomicU64::new(0));
        let dropped = Arc::new(AtomicU64::new(0));
        let url = format!("{}/ws/dashboard", base.replacen("http", "ws", 1));
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut request = url.as_str().into_client_request().expect("url");
            request.headers_mut().insert(
                "Authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
            let (mut socket, _) = tokio_tungstenite::connect_async(request)
                .await
                .expect("dashboard connects");
            let subscribe = json!({"type": "subscribe", "eventTypes": event_types});
            socket
                .send(Message::Text(subscribe.to_string()))
                .await
                .expect("subscribe");
            let (received, dropped) = (received.clone(), dropped.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(msg)) = socket.next().await {
                    let Message::Text(text) = msg else { continue };
                    if text.starts_with("{\"type\":\"dropped\"") || text.contains("\"dropped\"") {
                        if let Ok(v) = serde_json::from_str::<Value>(&text) {
                            if v["type"] == "dropped" {
                                dropped
                                    .fetch_add(v["count"].as_u64().unwrap_or(0), Ordering::Relaxed);
                                continue;
                            }
                        }
                    }
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        Dashboards {
            received,
            dropped,
            tasks,
        }
    }

    pub fn close(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Percentiles of sorted durations, in milliseconds.
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Resident memory of a process, in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How long since `start`, in seconds.
pub fn secs(start: Instant) -> f64 {
    start.elapsed().as_secs_f64()
}
