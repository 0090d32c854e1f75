//! Hostile dashboards (`/ws/dashboard`): sockets that stop reading, too many sockets, and
//! sockets whose token is revoked while they stream.
//!
//! A dashboard that never reads is a raw TCP socket with a small receive buffer that does the
//! upgrade handshake and then reads nothing, so the server's buffers for it fill. The server
//! lets go of such a connection by resetting it (a FIN would wait behind the data the client
//! never reads), which the client's socket reports as its pending error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::*;
use serde_json::{json, Value};
use server::actors::session::CLIENT_TIMEOUT;

on_both_backends!(
    dashboards_that_stop_reading_are_cut_at_the_send_deadline,
    a_blocked_dashboard_is_cut_when_its_heartbeat_times_out,
    dashboard_sockets_are_capped_per_user_and_per_server,
    revoked_tokens_close_their_dashboards_at_once,
);

const PASSWORD: &str = "dashboard-user-password";

/// Receive buffer of a stalled client: small, so the server's side fills fast.
const STALLED_RCVBUF: usize = 4096;

/// A dashboard socket that never reads.
struct Stalled {
    stream: TcpStream,
    opened: Instant,
    closed_after: Option<Duration>,
}

/// What an upgrade the server refused answered: status, JSON body, `Retry-After`.
#[derive(Debug)]
struct Refused {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

fn server_addr(server: &ServerProcess) -> SocketAddr {
    server
        .base_url
        .trim_start_matches("http://")
        .parse()
        .expect("server address")
}

/// Opens `/ws/dashboard` on a raw socket with a small receive buffer and reads the answer's
/// head, and nothing after it.
fn raw_upgrade(server: &ServerProcess, token: Option<&str>) -> Result<Stalled, Refused> {
    let addr = server_addr(server);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .expect("socket");
    // Set before connecting, so the window the client offers stays this small.
    socket
        .set_recv_buffer_size(STALLED_RCVBUF)
        .expect("receive buffer");
    socket.connect(&addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "GET /ws/dashboard HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send upgrade");
    // Byte by byte, so that not one byte past the head is taken from the socket.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("answer head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("answer head is text");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    if status == 101 {
        return Ok(Stalled {
            stream,
            opened: Instant::now(),
            closed_after: None,
        });
    }
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("answer body");
    Err(Refused {
        status,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        retry_after: header("retry-after"),
    })
}

impl Stalled {
    /// Whether the server has reset the connection (the socket holds the error); remembers
    /// when it was first seen.
    fn reset_by_server(&mut self) -> bool {
        if self.closed_after.is_none() && matches!(self.stream.take_error(), Ok(Some(_))) {
            self.closed_after = Some(self.opened.elapsed());
        }
        self.closed_after.is_some()
    }

    /// A masked, empty ping: the client is heard from, though it reads nothing. A ping that
    /// fails found the connection reset (and took the socket's error with it).
    fn ping(&mut self) {
        if self.closed_after.is_none() && self.stream.write_all(&[0x89, 0x80, 0, 0, 0, 0]).is_err()
        {
            self.closed_after = Some(self.opened.elapsed());
        }
    }
}

/// Whether every socket was reset; looks at each, so each one's time is taken.
fn all_reset(stalled: &mut [Stalled]) -> bool {
    let mut all = true;
    for socket in stalled {
        all &= socket.reset_by_server();
    }
    all
}

/// Devices that send large log lines until stopped: enough to fill every stalled socket's
/// buffers on the server many times over.
struct Noise {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u32, FakeDevice)>>,
}

impl Noise {
    fn start(server: &ServerProcess, api: &Api, devices: usize) -> Noise {
        let stop = Arc::new(AtomicBool::new(false));
        let line = "x".repeat(16_000);
        let threads = (0..devices)
            .map(|i| {
                let mut device = FakeDevice::connect(server, api, &format!("noisy-{i}"));
                let (stop, line) = (stop.clone(), line.clone());
                std::thread::spawn(move || {
                    let mut sent = 0;
                    while !stop.load(Ordering::Relaxed) {
                        device.send(&json!({"type": "log_line", "line": line, "level": "INFO", "ts": now_rfc3339()}));
                        sent += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    (sent, device)
                })
            })
            .collect();
        Noise { stop, threads }
    }

    /// Stops the devices; answers how many frames they sent.
    fn stop(self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().expect("noise thread").0)
            .sum()
    }
}

/// A dashboard that reads everything, on its own thread: how many events it got, the longest
/// wait between two frames, and whether the server closed it.
struct Watcher {
    stop: Arc<AtomicBool>,
    events: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<(Duration, bool, WsClient)>,
}

impl Watcher {
    fn start(server: &ServerProcess, api: &Api) -> Watcher {
        let mut socket =
            ws_connect(&server.ws_url("/ws/dashboard"), api.token()).expect("dashboard");
        assert_eq!(ws_next_json(&mut socket).expect("hello")["type"], "hello");
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_mut() {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("read timeout");
        }
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(AtomicU64::new(0));
        let (stop2, events2) = (stop.clone(), events.clone());
        let thread = std::thread::spawn(move || {
            let mut last = Instant::now();
            let mut longest = Duration::ZERO;
            let mut closed = false;
            while !stop2.load(Ordering::Relaxed) {
                match socket.read() {
                    Ok(tungstenite::Message::Text(_)) => {
                        events2.fetch_add(1, Ordering::Relaxed);
                        longest = longest.max(last.elapsed());
                        last = Instant::now();
                    }
                    Ok(tungstenite::Message::Close(_)) => closed = true,
                    Ok(_) => {}
                    Err(tungstenite::Error::Io(e))
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => closed = true,
                }
                if closed {
                    break;
                }
            }
            (longest, closed, socket)
        });
        Watcher {
            stop,
            events,
            thread,
        }
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Stops reading; answers the longest gap between frames and whether it was closed.
    fn stop(self) -> (Duration, bool, WsClient) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("watcher thread")
    }
}

/// Open descriptors of the server process.
fn open_fds(server: &ServerProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("server fds")
        .count()
}

fn login_viewer(admin: &Api, server: &ServerProcess, name: &str) -> Api {
    admin.create_user(name, PASSWORD, "VIEWER");
    Api::login(server, name, PASSWORD)
}

/// Stalled dashboards that keep sending pings, so the heartbeat never gives up on them: only
/// the send deadline can end them. The deadline is set to 2 s for speed; the logic is the
/// default one (10 s).
fn dashboards_that_stop_reading_are_cut_at_the_send_deadline(backend: Backend) {
    const DEADLINE_SECS: u64 = 2;
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--dashboard-send-timeout-secs", &DEADLINE_SECS.to_string()],
    );
    let admin = Api::admin(&server);
    let viewers = [
        login_viewer(&admin, &server, "wall-1"),
        login_viewer(&admin, &server, "wall-2"),
    ];
    let watcher = Watcher::start(&server, &admin);
    let baseline_fds = open_fds(&server);
    let mut stalled: Vec<Stalled> = (0..20)
        .map(|i| raw_upgrade(&server, viewers[i % 2].token()).expect("stalled dashboard opens"))
        .collect();
    let with_stalled_fds = open_fds(&server);

    let noise = Noise::start(&server, &admin, 2);
    let mut last_ping = Instant::now();
    // They ping, so only the deadline can end them; the bound leaves room for filling the
    // buffers on a loaded machine.
    let bound = Duration::from_secs(DEADLINE_SECS) + CLIENT_TIMEOUT + Duration::from_secs(10);
    let all_cut = wait_until(bound, "every stalled dashboard cut", || {
        if last_ping.elapsed() > Duration::from_secs(1) {
            stalled.iter_mut().for_each(Stalled::ping);
            last_ping = Instant::now();
        }
        all_reset(&mut stalled)
    });
    let released = wait_until(
        Duration::from_secs(10),
        "the server's descriptors back",
        || open_fds(&server) <= baseline_fds + 2,
    );
    let events_before = watcher.events();
    wait_until(
        Duration::from_secs(10),
        "the watcher still gets events",
        || watcher.events() > events_before,
    );
    let sent = noise.stop();
    let (longest_gap, watcher_closed, _socket) = watcher.stop();

    let mut times: Vec<Duration> = stalled.iter().filter_map(|s| s.closed_after).collect();
    times.sort();
    let cuts = server.log().matches("connection cut").count();
    eprintln!(
        "[{backend:?}] 20 stalled dashboards (pinging, never reading), deadline {DEADLINE_SECS} s: all cut {all_cut:?} after the noise started \
         ({sent} log lines of 16 KB); first cut {:?}, last {:?} after opening; server log has {cuts} cuts; \
         fds {baseline_fds} -> {with_stalled_fds} with them -> back to baseline in {released:?}; \
         the reading dashboard's longest wait between frames {longest_gap:?}",
        times[0],
        times[times.len() - 1],
    );
    assert!(!watcher_closed, "the reading dashboard must stay open");
    assert!(
        longest_gap < Duration::from_secs(10),
        "the reading dashboard waited {longest_gap:?} for a frame"
    );
}

/// Stalled dashboards that say nothing, with a send deadline far away: the heartbeat's
/// `CLIENT_TIMEOUT` must still end them although every send to them is blocked.
fn a_blocked_dashboard_is_cut_when_its_heartbeat_times_out(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--dashboard-send-timeout-secs", "120"],
    );
    let admin = Api::admin(&server);
    let viewer = login_viewer(&admin, &server, "silent");
    let mut stalled: Vec<Stalled> = (0..8)
        .map(|_| raw_upgrade(&server, viewer.token()).expect("stalled dashboard opens"))
        .collect();
    let noise = Noise::start(&server, &admin, 2);
    let all_cut = wait_until(
        CLIENT_TIMEOUT + Duration::from_secs(30),
        "every silent, blocked dashboard cut",
        || all_reset(&mut stalled),
    );
    noise.stop();
    let latest = stalled
        .iter()
        .filter_map(|s| s.closed_after)
        .max()
        .expect("close times");
    eprintln!(
        "[{backend:?}] 8 silent stalled dashboards, send deadline 120 s: all cut {all_cut:?} after the noise started, the last {latest:?} after opening"
    );
    assert!(
        latest >= CLIENT_TIMEOUT - Duration::from_secs(1),
        "cut after {latest:?}, before the heartbeat could have timed out"
    );
}

/// The default per-user cap, by header and by `auth` frame, and a small per-server cap.
fn dashboard_sockets_are_capped_per_user_and_per_server(backend: Backend) {
    let cap = server::config::Config::default().dashboard_max_per_user;
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    let viewer = login_viewer(&admin, &server, "greedy");
    let mut open: Vec<WsClient> = (0..cap)
        .map(|i| {
            ws_connect(&server.ws_url("/ws/dashboard"), viewer.token())
                .unwrap_or_else(|status| panic!("socket {i} of {cap} refused with {status}"))
        })
        .collect();
    let refused = raw_upgrade(&server, viewer.token())
        .err()
        .expect("one socket past the cap is refused");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.body["success"], false);
    assert_eq!(refused.body["error"]["code"], "too_many_connections");
    assert!(refused.retry_after.is_some(), "429 without Retry-After");

    // By first frame the refusal comes after the upgrade, as an error frame and a close code.
    let mut by_frame =
        ws_connect(&server.ws_url("/ws/dashboard"), None).expect("unauthenticated upgrade");
    ws_send_json(
        &mut by_frame,
        &json!({"type": "auth", "token": viewer.token().unwrap()}),
    );
    let error = ws_next_json(&mut by_frame).expect("error frame");
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "too_many_connections");
    assert_eq!(close_code(&mut by_frame), Some(4429));

    // Another user is not affected; a closed socket gives its place back.
    let other = login_viewer(&admin, &server, "modest");
    let _theirs = ws_connect(&server.ws_url("/ws/dashboard"), other.token()).expect("other user");
    let mut first = open.remove(0);
    first.close(None).expect("close");
    let _ = first.flush();
    wait_until(
        Duration::from_secs(10),
        "a place to free up",
        || match ws_connect(&server.ws_url("/ws/dashboard"), viewer.token()) {
            Ok(socket) => {
                open.push(socket);
                true
            }
            Err(status) => {
                assert_eq!(status, 429);
                false
            }
        },
    );
    drop(open);

    // The per-server cap counts sockets that have not authenticated yet.
    let small = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-data"),
        &["--dashboard-max-total", "3"],
    );
    let admin = Api::admin(&small);
    let _pending: Vec<Stalled> = (0..3)
        .map(|_| raw_upgrade(&small, None).expect("unauthenticated socket"))
        .collect();
    let full = raw_upgrade(&small, admin.token())
        .err()
        .expect("a fourth socket is refused");
    assert_eq!(full.status, 429, "{full:?}");
    assert_eq!(full.body["error"]["code"], "too_many_connections");
}

/// Reads until the server's close frame, for up to 10 s; answers its code (`None`: closed
/// without one, or not closed at all).
fn close_code(socket: &mut WsClient) -> Option<u16> {
    let give_up = Instant::now() + Duration::from_secs(10);
    while Instant::now() < give_up {
        match socket.read() {
            Ok(tungstenite::Message::Close(frame)) => return frame.map(|f| f.code.into()),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return None,
        }
    }
    None
}

/// A dashboard that has received at least one event (the device scans every 100 ms).
fn live_dashboard(server: &ServerProcess, token: &str) -> WsClient {
    let mut socket = ws_connect(&server.ws_url("/ws/dashboard"), Some(token)).expect("dashboard");
    assert_eq!(ws_next_json(&mut socket).expect("hello")["type"], "hello");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let frame = ws_next_json(&mut socket).expect("an event before the revocation");
        if frame["type"] == "scan" {
            break;
        }
        assert!(Instant::now() < deadline, "no event reached the dashboard");
    }
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = socket.get_mut() {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("read timeout");
    }
    socket
}

/// Logout, password change, role change, disabling and deleting each close the user's open
/// dashboard within 2 s with 4001; the token then opens none; another user's stays.
fn revoked_tokens_close_their_dashboards_at_once(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    let mut device = FakeDevice::connect(&server, &admin, "scanner");
    let stop = Arc::new(AtomicBool::new(false));
    let scans = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                device.send(&json!({"type": "scan", "code": format!("c{i}"), "valid": true, "ts": now_rfc3339()}));
                i += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let bystander = login_viewer(&admin, &server, "bystander");
    let bystander_dash = Watcher::start(&server, &bystander);
    let id = admin.create_user("watcher", PASSWORD, "VIEWER");
    let password = Arc::new(Mutex::new(PASSWORD.to_owned()));
    let login =
        |server: &ServerProcess| Api::login(server, "watcher", &password.lock().unwrap().clone());

    let mut timings = Vec::new();
    let mut check = |what: &str, revoke: &dyn Fn(&Api)| {
        let watcher = login(&server);
        let token = watcher.token().unwrap().to_owned();
        let mut dash = live_dashboard(&server, &token);
        revoke(&watcher);
        let revoked_at = Instant::now();
        let code = close_code(&mut dash);
        let took = revoked_at.elapsed();
        assert_eq!(code, Some(4001), "{what}: close code");
        assert!(
            took <= Duration::from_secs(2),
            "{what}: closed after {took:?}"
        );
        assert_eq!(
            ws_connect(&server.ws_url("/ws/dashboard"), Some(&token)).err(),
            Some(401),
            "{what}: the revoked token opened a dashboard"
        );
        timings.push(format!("{what} {took:?}"));
    };

    check("logout", &|watcher| {
        assert_eq!(watcher.post("/api/v1/auth/logout", &json!({})).status, 200);
    });
    check("password change", &|watcher| {
        let reply = watcher.post(
            "/api/v1/auth/password",
            &json!({"currentPassword": PASSWORD, "newPassword": "another-password-1"}),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        *password.lock().unwrap() = "another-password-1".to_owned();
    });
    check("role change", &|_| {
        let reply = admin.patch(&format!("/api/v1/users/{id}"), &json!({"role": "OPERATOR"}));
        assert_eq!(reply.status, 200, "{}", reply.body);
    });
    check("disable", &|_| {
        let reply = admin.patch(&format!("/api/v1/users/{id}"), &json!({"disabled": true}));
        assert_eq!(reply.status, 200, "{}", reply.body);
    });
    let reply = admin.patch(&format!("/api/v1/users/{id}"), &json!({"disabled": false}));
    assert_eq!(reply.status, 200, "{}", reply.body);
    check("delete", &|_| {
        assert_eq!(admin.delete(&format!("/api/v1/users/{id}")).status, 200);
    });

    let before = bystander_dash.events();
    wait_until(
        Duration::from_secs(10),
        "the bystander's next event",
        || bystander_dash.events() > before,
    );
    let (_, bystander_closed, _socket) = bystander_dash.stop();
    stop.store(true, Ordering::Relaxed);
    scans.join().expect("scan thread");
    eprintln!(
        "[{backend:?}] revoked dashboards closed with 4001 after: {}",
        timings.join(", ")
    );
    assert!(!bystander_closed, "another user's dashboard must stay open");
}
