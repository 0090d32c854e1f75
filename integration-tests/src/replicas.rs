//! Several `factory-server` replicas on one PostgreSQL database, and a round-robin TCP
//! balancer in front of them, as a plant would run them behind nginx.
//!
//! The replicas share the data dir (firmware files, the JWT secret file) as they would share a
//! volume; each writes its own log file in it. The balancer hands each new connection to the
//! next replica that accepts it, so a killed replica's devices reconnect to the others.

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{binary, ADMIN_PASSWORD, ENROLLMENT_KEY};

/// The JWT secret every replica shares: a token one issues, the others accept.
pub const SHARED_JWT_SECRET: &str = "replicas-share-this-jwt-secret-0123456789";

/// One `factory-server` process of several.
pub struct Replica {
    child: Child,
    pub id: String,
    pub base_url: String,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Replica {
    /// Starts replica `id` on `database_url`, in the shared `data_dir`, with extra flags.
    pub fn start(database_url: &str, data_dir: &Path, id: &str, extra: &[&str]) -> Replica {
        let log = data_dir.join(format!("server-{id}.log"));
        let mut child = Command::new(binary("factory-server"))
            .args(["--bind", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(["--database-url", database_url, "--replica-id", id])
            .args(["--jwt-secret", SHARED_JWT_SECRET])
            .args(["--admin-password", ADMIN_PASSWORD])
            .args([
                "--enrollment-key",
                ENROLLMENT_KEY,
                "--allow-auto-enrollment",
            ])
            .args(extra)
            .env("FACTORY_LOG_LEVEL", "info,server=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("replica log file"))
            .spawn()
            .expect("spawn factory-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("factory-server listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let Ok(base_url) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            panic!(
                "replica {id} did not report its address; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let addr = base_url
            .trim_start_matches("http://")
            .parse()
            .expect("a replica's address");
        Replica {
            child,
            id: id.to_owned(),
            base_url,
            addr,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no destructor, no goodbye to the database or the devices.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A round-robin TCP balancer on 127.0.0.1: each connection goes to the next backend that
/// accepts it, bytes copied both ways until either side closes.
pub struct Balancer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// How many connections each backend was given, by index.
    given: Arc<Mutex<Vec<usize>>>,
}

impl Balancer {
    pub fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind balancer");
        let addr = listener.local_addr().expect("balancer address");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let given = Arc::new(Mutex::new(vec![0; backends.len()]));
        let next = AtomicUsize::new(0);
        let (stop_, given_) = (stop.clone(), given.clone());
        std::thread::spawn(move || {
            while !stop_.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => continue,
                };
                let _ = client.set_nonblocking(false);
                let first = next.fetch_add(1, Ordering::Relaxed);
                let upstream = (0..backends.len()).find_map(|i| {
                    let index = (first + i) % backends.len();
                    TcpStream::connect_timeout(&backends[index], Duration::from_millis(500))
                        .ok()
                        .map(|s| (index, s))
                });
                let Some((index, upstream)) = upstream else {
                    continue; // every backend refused: the client sees its connection close
                };
                if let Ok(mut given) = given_.lock() {
                    given[index] += 1;
                }
                pipe(client, upstream);
            }
        });
        Balancer { addr, stop, given }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections given to each backend so far.
    pub fn given(&self) -> Vec<usize> {
        self.given.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    std::thread::spawn(move || copy(a, b));
    std::thread::spawn(move || copy(b2, a2));
}

/// Copies until either side ends, then shuts both down so the other direction ends too.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
