//! The harness of the end-to-end tests: real `factory-server` and `edge-agent` processes,
//! a fresh database per test (a SQLite file, or a new PostgreSQL database), and plain HTTP
//! and WebSocket clients.
//!
//! Servers bind `127.0.0.1:0` and print the address they got, so tests never race for ports.
//! The binaries must be built first (`cargo build --workspace --bins`, which the README's test
//! command does); a missing binary fails the test with that instruction.

/// Runs each named test function, which takes a `Backend`, once on SQLite and once on
/// PostgreSQL, as `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $name() { super::$name($crate::Backend::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $name() { super::$name($crate::Backend::Postgres) })*
        }
    };
}

pub mod browser;
pub mod cloud_sim;
pub mod cut_proxy;
pub mod fleet;
pub mod pki;
pub mod replicas;
pub mod sim;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN_PASSWORD: &str = "integration-admin-pw";
pub const ENROLLMENT_KEY: &str = "integration-enrollment-key";

/// The per-test database, shared with the server's own tests (crate `testdb`). For a server
/// process SQLite means the server's default file in its data dir, so only a PostgreSQL
/// database is handed over (`--database-url`).
pub use testdb::{postgres_admin_url, Backend, TestDb};

/// Path of a workspace binary: beside the running executable (a benchmark binary in
/// `target/<profile>/`) or one directory up (a test in `target/<profile>/deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let here = exe.parent().expect("directory of the executable");
    let candidates = [Some(here), here.parent()];
    for dir in candidates.into_iter().flatten() {
        let path = dir.join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{name} is missing next to {}; run `cargo build --workspace --bins` (with --release for benchmarks) first",
        exe.display()
    );
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads a child's stdout on a thread and hands each line over a channel.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `factory-server`.
pub struct ServerProcess {
    child: Child,
    pub base_url: String,
    pub data_dir: TempDir,
    pub db: TestDb,
    /// The CA that signed the server's certificate, when it serves TLS (`trusting`).
    pub ca_file: Option<PathBuf>,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts a server that serves HTTPS and WSS with `cert`; the harness's clients trust
    /// `pki`'s CA for it.
    pub fn start_tls(
        db: TestDb,
        data_dir: TempDir,
        pki: &pki::TestPki,
        cert: &pki::ServerCert,
        extra: &[&str],
    ) -> Self {
        let (cert_file, key_file) = (
            cert.cert.display().to_string(),
            cert.key.display().to_string(),
        );
        let mut args = vec!["--tls-cert", &cert_file, "--tls-key", &key_file];
        args.extend_from_slice(extra);
        let mut server = Self::start_with(db, data_dir, &args);
        assert!(
            server.base_url.starts_with("https://"),
            "{}",
            server.base_url
        );
        server.ca_file = Some(pki.ca_file());
        server
    }

    pub fn start(backend: Backend) -> Self {
        Self::start_with(TestDb::new(backend), TempDir::new("factory-data"), &[])
    }

    /// Starts a server on `db` and `data_dir` (a restart reuses both) with extra flags.
    pub fn start_with(db: TestDb, data_dir: TempDir, extra: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", db, data_dir, extra)
    }

    /// Like `start_with`, on a chosen address (to come back on the same port after a stop).
    pub fn start_on(bind: &str, db: TestDb, data_dir: TempDir, extra: &[&str]) -> Self {
        let log = data_dir.path().join("server.log");
        let mut cmd = Command::new(binary("factory-server"));
        cmd.arg("--bind")
            .arg(bind)
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--admin-password")
            .arg(ADMIN_PASSWORD)
            .arg("--enrollment-key")
            .arg(ENROLLMENT_KEY);
        // Tests enroll devices freely unless they set auto-enrollment themselves.
        if !extra
            .iter()
            .any(|a| a.starts_with("--allow-auto-enrollment"))
        {
            cmd.arg("--allow-auto-enrollment");
        }
        cmd.args(extra)
            .env("FACTORY_LOG_LEVEL", "info,server=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log file"));
        if let Some(url) = db.url() {
            cmd.arg("--database-url").arg(url);
        }
        let mut child = cmd.spawn().expect("spawn factory-server");
        let lines = line_reader(&mut child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let base_url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("factory-server listening on ") {
                        break url.trim().to_owned();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "factory-server did not report its address; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        ServerProcess {
            child,
            base_url,
            data_dir,
            db,
            ca_file: None,
            log,
        }
    }

    /// The server's process id, for reading its memory use from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`HUP`, `TERM`, …) to the server process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg("-s")
            .arg(name)
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -s {name} failed");
    }

    pub fn ws_url(&self, path: &str) -> String {
        let base = match self.base_url.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => self.base_url.replacen("http://", "ws://", 1),
        };
        format!("{base}{path}")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs a query that answers one row of integers, on whichever database the server uses.
    pub fn query_ints(&self, sql: &str) -> Vec<i64> {
        match self.db.url() {
            Some(url) => {
                let mut client =
                    postgres::Client::connect(&url, postgres::NoTls).expect("connect to test db");
                let row = client.query_one(sql, &[]).expect("query");
                (0..row.len()).map(|i| row.get::<_, i64>(i)).collect()
            }
            None => {
                let conn = rusqlite::Connection::open(self.data_dir.path().join("factory.db"))
                    .expect("open factory.db");
                conn.busy_timeout(Duration::from_secs(10))
                    .expect("busy timeout");
                conn.query_row(sql, [], |row| {
                    let n = row.as_ref().column_count();
                    (0..n).map(|i| row.get::<_, i64>(i)).collect()
                })
                .expect("query")
            }
        }
    }

    /// Stops the server and hands back its database and data dir for a restart.
    pub fn stop(mut self) -> (TestDb, TempDir) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Moving fields out of a type with Drop needs a swap.
        let db = std::mem::replace(&mut self.db, TestDb::sqlite());
        let dir = std::mem::replace(&mut self.data_dir, TempDir(PathBuf::new()));
        (db, dir)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extra settings of an agent process.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Flags after the harness's own.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Start the scanner listener on a free port and read its address.
    pub scanner: bool,
    /// Start `<data dir>/staging/current` when it exists, as the systemd launcher does
    /// (`deploy/systemd/edge-agent-launch`), so an installed release really runs.
    pub launch_installed: bool,
}

/// A free TCP port on 127.0.0.1 (free when asked; tests use it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A running `edge-agent`.
pub struct AgentProcess {
    child: Child,
    pub device_id: String,
    pub data_dir: TempDir,
    pub server_url: String,
    pub options: AgentOptions,
    /// `host:port` of the scanner listener, when started with one.
    pub scanner_addr: Option<String>,
    log: PathBuf,
}

impl AgentProcess {
    pub fn start(server: &ServerProcess, device_id: &str) -> Self {
        Self::start_with(&server.base_url, device_id, AgentOptions::default())
    }

    /// An agent for the server at `server_url` (which need not be up), in a fresh data dir.
    pub fn start_with(server_url: &str, device_id: &str, options: AgentOptions) -> Self {
        Self::start_in(server_url, device_id, options, TempDir::new("edge-data"))
    }

    /// An agent on an existing data dir: a restart of the same device.
    pub fn start_in(
        server_url: &str,
        device_id: &str,
        options: AgentOptions,
        data_dir: TempDir,
    ) -> Self {
        let log = data_dir.path().join("agent.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("agent log file");
        let installed = data_dir.path().join("staging").join("current");
        let program = if options.launch_installed && installed.exists() {
            installed
        } else {
            binary("edge-agent")
        };
        let mut cmd = Command::new(program);
        cmd.arg("--server-url")
            .arg(server_url)
            .arg("--device-id")
            .arg(device_id)
            .arg("--enrollment-key")
            .arg(ENROLLMENT_KEY)
            .arg("--company-id")
            .arg("company-1")
            .arg("--data-dir")
            .arg(data_dir.path())
            .env("EDGE_LOG_LEVEL", "debug,awc=info,actix_http=info")
            .stdout(Stdio::piped())
            .stderr(stderr);
        if options.scanner {
            cmd.arg("--scanner-listen").arg("127.0.0.1:0");
        }
        cmd.args(&options.args);
        for (k, v) in &options.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn edge-agent");
        let lines = line_reader(&mut child);
        let scanner_addr = if options.scanner {
            match lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => Some(
                    line.strip_prefix("edge-agent scanner listening on ")
                        .unwrap_or_else(|| panic!("unexpected agent output: {line}"))
                        .trim()
                        .to_owned(),
                ),
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "edge-agent did not report its scanner address; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                }
            }
        } else {
            None
        };
        AgentProcess {
            child,
            device_id: device_id.to_owned(),
            data_dir,
            server_url: server_url.to_owned(),
            options,
            scanner_addr,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agent's process id, e.g. to see which executable runs (`/proc/<pid>/exe`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the agent gets no chance to say goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (`kill -TERM <pid>`), then waits for the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit(Duration::from_secs(20))
    }

    /// Waits for the process to end by itself; its exit code, `None` if it did not end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts the same device again on the same data dir, after `kill`, `stop` or an exit.
    pub fn restart(mut self) -> Self {
        self.kill();
        let data_dir = std::mem::replace(&mut self.data_dir, TempDir(PathBuf::new()));
        Self::start_in(
            &self.server_url,
            &self.device_id,
            self.options.clone(),
            data_dir,
        )
    }

    /// What a supervisor does: when the agent exited with 75 (restart requested, as after
    /// installing firmware), starts it again in place on the same data dir. True if it did.
    pub fn respawn_if_asked(&mut self) -> bool {
        match self.child.try_wait().expect("try_wait") {
            Some(status) if status.code() == Some(75) => {
                let data_dir = std::mem::replace(&mut self.data_dir, TempDir(PathBuf::new()));
                let fresh = Self::start_in(
                    &self.server_url,
                    &self.device_id,
                    self.options.clone(),
                    data_dir,
                );
                let old = std::mem::replace(self, fresh);
                // The old handle's data dir was moved out; dropping it only reaps the child.
                drop(old);
                true
            }
            _ => false,
        }
    }

    /// Writes lines to the scanner port, each ended by a newline, and closes the socket.
    pub fn scan(&self, codes: &[String]) {
        use std::io::Write;
        let addr = self.scanner_addr.as_ref().expect("agent has no scanner");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to scanner port");
        let mut text = String::with_capacity(codes.len() * 40);
        for code in codes {
            text.push_str(code);
            text.push('\n');
        }
        stream.write_all(text.as_bytes()).expect("write codes");
        stream.flush().expect("flush codes");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GS1 codes with a valid GTIN check digit and unique serials: `01<gtin>21<prefix><n>`.
pub fn gs1_codes(prefix: &str, n: usize) -> Vec<String> {
    let body = "0400638133393";
    let mut sum = 0u32;
    for (i, b) in body.bytes().rev().enumerate() {
        sum += u32::from(b - b'0') * if i % 2 == 0 { 3 } else { 1 };
    }
    let gtin = format!("{body}{}", (10 - sum % 10) % 10);
    (0..n).map(|i| format!("01{gtin}21{prefix}{i}")).collect()
}

/// Sends a command through the REST API and answers the dispatch `data`.
pub fn command(api: &Api, device_id: &str, command: Value, confirm: bool) -> Value {
    let reply = api.post(
        &format!("/api/v1/devices/{device_id}/commands"),
        &serde_json::json!({"command": command, "timeoutMs": 60000, "confirm": confirm}),
    );
    assert_eq!(reply.status, 200, "dispatch: {}", reply.body);
    reply.data().clone()
}

/// A REST client that speaks the envelope.
pub struct Api {
    base: String,
    client: reqwest::blocking::Client,
    ca_pem: Option<Vec<u8>>,
    token: Option<String>,
}

/// A response: status and parsed JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    /// `data` of a success envelope; panics with the body otherwise.
    pub fn data(&self) -> &Value {
        assert_eq!(
            self.body["success"], true,
            "not a success: {} {}",
            self.status, self.body
        );
        &self.body["data"]
    }

    pub fn error_code(&self) -> &str {
        assert_eq!(self.body["success"], false, "not an error: {}", self.body);
        self.body["error"]["code"].as_str().expect("error code")
    }
}

impl Api {
    pub fn new(server: &ServerProcess) -> Self {
        let ca_pem = server
            .ca_file
            .as_ref()
            .map(|f| std::fs::read(f).expect("read the test CA"));
        Self::with_base(&server.base_url, ca_pem.as_deref())
    }

    /// A client of the server at `base`, trusting `ca_pem` (only) for https.
    pub fn with_base(base: &str, ca_pem: Option<&[u8]>) -> Self {
        let mut client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .tls_info(true);
        if let Some(pem) = ca_pem {
            client = client.add_root_certificate(
                reqwest::Certificate::from_pem(pem).expect("the test CA in PEM"),
            );
        }
        Api {
            base: base.to_owned(),
            client: client.build().expect("http client"),
            ca_pem: ca_pem.map(<[u8]>::to_vec),
            token: None,
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    pub fn login(server: &ServerProcess, username: &str, password: &str) -> Self {
        Self::login_at(Api::new(server), username, password)
    }

    /// The admin's client of the server at `base` (a replica, a balancer), over plain http.
    pub fn admin_at(base: &str) -> Self {
        Self::login_at(Api::with_base(base, None), "admin", ADMIN_PASSWORD)
    }

    fn login_at(api: Api, username: &str, password: &str) -> Self {
        let reply = api.post(
            "/api/v1/auth/login",
            &serde_json::json!({"username": username, "password": password}),
        );
        let token = reply.data()["token"].as_str().expect("token").to_owned();
        api.with_token(&token)
    }

    pub fn admin(server: &ServerProcess) -> Self {
        Self::login(server, "admin", ADMIN_PASSWORD)
    }

    /// Creates a user with `role` (as the admin `self`) and returns its id.
    pub fn create_user(&self, username: &str, password: &str, role: &str) -> String {
        let reply = self.post(
            "/api/v1/users",
            &serde_json::json!({"username": username, "password": password, "role": role}),
        );
        assert_eq!(reply.status, 201, "create user: {}", reply.body);
        reply.data()["id"].as_str().expect("user id").to_owned()
    }

    fn send(&self, req: reqwest::blocking::RequestBuilder) -> Reply {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().expect("http request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().expect("http body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("body is not JSON ({status}): {text}"));
        Reply {
            status,
            body,
            headers,
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(format!("{}{path}", self.base)))
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.post(format!("{}{path}", self.base)).json(body))
    }

    /// Any method, with an optional JSON body and extra headers.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("http method");
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        self.send_raw(req)
    }

    /// Like `call`, but the body may be anything (HTML, empty).
    fn send_raw(&self, req: reqwest::blocking::RequestBuilder) -> Reply {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().expect("http request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().expect("http body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            body,
            headers,
        }
    }

    /// The leaf certificate a new TLS connection to the server is shown (DER).
    pub fn peer_certificate(&self) -> Vec<u8> {
        // A client of its own, so the handshake is new rather than a pooled connection's.
        let client = Api::with_base(&self.base, self.ca_pem.as_deref());
        let response = client
            .client
            .get(format!("{}/healthz", self.base))
            .send()
            .expect("https request");
        response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .expect("a TLS connection with a peer certificate")
            .to_vec()
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(format!("{}{path}", self.base)))
    }

    pub fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.put(format!("{}{path}", self.base)).json(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.patch(format!("{}{path}", self.base)).json(body))
    }

    pub fn post_with_header(&self, path: &str, header: (&str, &str)) -> Reply {
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .header(header.0, header.1),
        )
    }

    pub fn device_status(&self, device_id: &str) -> Option<String> {
        let reply = self.get(&format!("/api/v1/devices/{device_id}"));
        (reply.status == 200).then(|| reply.data()["status"].as_str().unwrap_or("").to_owned())
    }

    /// Enrolls a device id and returns its token.
    pub fn enroll(&self, device_id: &str) -> String {
        let reply = self.post_with_header(
            &format!("/api/v1/devices/{device_id}/token?name={device_id}&companyId=company-1"),
            ("X-Enrollment-Key", ENROLLMENT_KEY),
        );
        reply.data()["token"]
            .as_str()
            .expect("device token")
            .to_owned()
    }
}

/// Polls `check` until it holds or `timeout` passes; returns how long it took.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub type WsClient =
    tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<std::net::TcpStream>>;

/// Opens a WebSocket, optionally with a bearer token on the upgrade. `Err(status)` when the
/// server refused the upgrade with an HTTP answer; any other failure panics.
pub fn ws_connect(url: &str, bearer: Option<&str>) -> Result<WsClient, u16> {
    use tungstenite::client::IntoClientRequest;
    let mut request = url.into_client_request().expect("websocket url");
    if let Some(token) = bearer {
        request.headers_mut().insert(
            "Authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    let mut socket = match tungstenite::connect(request) {
        Ok((socket, _)) => socket,
        Err(tungstenite::Error::Http(resp)) => return Err(resp.status().as_u16()),
        Err(e) => panic!("websocket connect to {url} failed: {e}"),
    };
    if let tungstenite::stream::MaybeTlsStream::Plain(stream) = socket.get_mut() {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
    }
    Ok(socket)
}

/// The next text frame as JSON, answering pings on the way. `None` once the socket closed.
pub fn ws_next_json(socket: &mut WsClient) -> Option<Value> {
    loop {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                return Some(serde_json::from_str(&text).expect("server frame is JSON"))
            }
            Ok(tungstenite::Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

pub fn ws_send_json(socket: &mut WsClient, value: &Value) {
    socket
        .send(tungstenite::Message::Text(value.to_string()))
        .expect("send frame");
}

/// A device simulated over a real WebSocket: enrolls, connects with its token and reads its
/// `hello`.
pub struct FakeDevice {
    pub id: String,
    pub token: String,
    pub socket: WsClient,
}

impl FakeDevice {
    pub fn connect(server: &ServerProcess, api: &Api, id: &str) -> FakeDevice {
        let token = api.enroll(id);
        let mut socket = ws_connect(&server.ws_url("/ws/device"), Some(&token))
            .unwrap_or_else(|status| panic!("device {id} refused with {status}"));
        let hello = ws_next_json(&mut socket).expect("hello");
        assert_eq!(hello["type"], "hello");
        FakeDevice {
            id: id.to_owned(),
            token,
            socket,
        }
    }

    pub fn send(&mut self, frame: &Value) {
        ws_send_json(&mut self.socket, frame);
    }

    /// Answers every command with success until the socket closes, on its own thread.
    pub fn answer_commands(mut self) -> std::thread::JoinHandle<u32> {
        std::thread::spawn(move || {
            let mut answered = 0;
            while let Some(frame) = ws_next_json(&mut self.socket) {
                if frame["type"] == "command" {
                    let id = frame["command"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    ws_send_json(
                        &mut self.socket,
                        &serde_json::json!({"type": "command_result", "commandId": id, "success": true, "output": "ok"}),
                    );
                    answered += 1;
                }
            }
            answered
        })
    }
}

/// Now, as the contract's timestamps.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl FakeDevice {
    /// Runs `respond` for every command frame on its own thread, sending the frames it
    /// returns; the thread ends with the commands it saw when the socket closes.
    pub fn respond_with<F>(mut self, mut respond: F) -> std::thread::JoinHandle<Vec<Value>>
    where
        F: FnMut(&Value) -> Vec<Value> + Send + 'static,
    {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Some(frame) = ws_next_json(&mut self.socket) {
                if frame["type"] == "command" {
                    for reply in respond(&frame["command"]) {
                        ws_send_json(&mut self.socket, &reply);
                    }
                    seen.push(frame["command"].clone());
                }
            }
            seen
        })
    }
}

impl FakeDevice {
    /// Like `respond_with`, but `respond` gets a sender that puts a frame on the wire at once,
    /// for devices that report progress before they answer.
    pub fn respond_live<F>(mut self, mut respond: F) -> std::thread::JoinHandle<Vec<Value>>
    where
        F: FnMut(&Value, &mut dyn FnMut(&Value)) + Send + 'static,
    {
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while let Some(frame) = ws_next_json(&mut self.socket) {
                if frame["type"] == "command" {
                    let socket = &mut self.socket;
                    respond(&frame["command"], &mut |reply: &Value| {
                        ws_send_json(socket, reply)
                    });
                    seen.push(frame["command"].clone());
                }
            }
            seen
        })
    }
}

/// The `command_result` frame a device sends for `command`.
pub fn result_frame(command: &Value, success: bool, output: &str) -> Value {
    serde_json::json!({"type": "command_result", "commandId": command["id"], "success": success, "output": output})
}

/// Uploads `bytes` as a firmware release through the REST API; answers the release's `data`.
pub fn upload_release(
    server: &ServerProcess,
    api: &Api,
    project: &str,
    version: &str,
    bytes: Vec<u8>,
) -> Value {
    upload_release_with(
        server,
        api.token().expect("a logged-in api"),
        &format!("version={version}&filename=edge-service.bin&project={project}"),
        &bytes,
    )
}

/// A query-string value with the characters of base64 and RFC 3339 escaped.
pub fn query_escape(value: &str) -> String {
    value
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
        .replace(':', "%3A")
}

/// Uploads `bytes` with the upload route's whole query string (signature parameters and all);
/// answers the release's `data`.
pub fn upload_release_with(
    server: &ServerProcess,
    token: &str,
    query: &str,
    bytes: &[u8],
) -> Value {
    let mut client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(300));
    if let Some(ca_file) = &server.ca_file {
        let pem = std::fs::read(ca_file).expect("read the test CA");
        client = client.add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA"));
    }
    let client = client.build().expect("http client");
    let resp = client
        .post(format!(
            "{}/api/v1/firmware/releases?{query}",
            server.base_url
        ))
        .bearer_auth(token)
        .header("Content-Type", "application/octet-stream")
        .body(bytes.to_vec())
        .send()
        .expect("upload request");
    let status = resp.status().as_u16();
    let body: Value = resp.json().expect("upload answer");
    assert_eq!(status, 201, "upload: {body}");
    body["data"].clone()
}

/// `GET /api/v1/firmware/deployments/{id}`'s `data`.
pub fn deployment(api: &Api, id: &str) -> Value {
    api.get(&format!("/api/v1/firmware/deployments/{id}"))
        .data()
        .clone()
}

/// Each device's deployment status, by device id.
pub fn deployment_statuses(deployment: &Value) -> std::collections::BTreeMap<String, String> {
    deployment["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["deviceId"].as_str().unwrap().to_owned(),
                d["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}
pub mod private_pg;

/// Starts `factory-server` on `args` and `env` (in a fresh data dir, on a free port), expecting
/// it to stop at once; returns its exit code and standard error. One that keeps running past a
/// minute is killed and fails the test.
pub fn refused_start(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let data = TempDir::new("factory-data");
    let mut child = std::process::Command::new(binary("factory-server"))
        .args(["--bind", "127.0.0.1:0", "--admin-password", ADMIN_PASSWORD])
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn factory-server");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for factory-server") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("factory-server started with {args:?} {env:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.code(), stderr)
}
