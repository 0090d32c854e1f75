//! An OKTO cloud simulator for tests and demos: an HTTP server with the cloud's four routes
//! that records what it accepts and, on command, fails a share of requests, goes down, or
//! answers slowly. The real cloud clients (the server's `CloudSync`, `DIRECT_CLOUD` agents)
//! run against it unchanged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rand::Rng;
use serde_json::Value;

/// One request the simulator accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub company: String,
    pub route: String,
    pub ids: Vec<String>,
    /// `payload.code` of each record that has one.
    pub codes: Vec<String>,
    /// The records as received.
    pub records: Vec<Value>,
}

#[derive(Debug, Default)]
struct SimState {
    fail_rate: f64,
    /// Fail this many of the next requests with a 500.
    fail_next: u32,
    down: bool,
    /// Cut the connection in the middle of the answer, having processed nothing.
    dropping: bool,
    delay: Duration,
    token: Option<String>,
    accepted: Vec<Accepted>,
    requests: u64,
    refused: u64,
}

pub struct CloudSim {
    pub url: String,
    state: Arc<Mutex<SimState>>,
    handle: actix_web::dev::ServerHandle,
}

fn lock(state: &Mutex<SimState>) -> std::sync::MutexGuard<'_, SimState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn records(
    state: web::Data<Arc<Mutex<SimState>>>,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<Value>,
) -> HttpResponse {
    let (company, route) = path.into_inner();
    let (delay, verdict) = {
        let mut s = lock(&state);
        s.requests += 1;
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let verdict = if s.dropping {
            // Headers go out, then the body fails: the client sees the connection cut.
            let cut = futures_util::stream::once(async {
                Err::<actix_web::web::Bytes, std::io::Error>(std::io::Error::other(
                    "dropped on purpose",
                ))
            });
            Some(HttpResponse::Ok().streaming(cut))
        } else if s.down {
            Some(HttpResponse::ServiceUnavailable().body("down for maintenance"))
        } else if s
            .token
            .as_ref()
            .is_some_and(|t| auth != format!("Bearer {t}"))
        {
            Some(HttpResponse::Unauthorized().body("bad token"))
        } else if s.fail_next > 0 {
            s.fail_next -= 1;
            Some(HttpResponse::InternalServerError().body("failure on command"))
        } else if rand::thread_rng().gen_bool(s.fail_rate.clamp(0.0, 1.0)) {
            Some(HttpResponse::InternalServerError().body("random failure"))
        } else {
            None
        };
        if verdict.is_some() {
            s.refused += 1;
        }
        (s.delay, verdict)
    };
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    if let Some(refusal) = verdict {
        return refusal;
    }
    if !matches!(
        route.as_str(),
        "bottles" | "batches" | "pallets" | "batches/fixate"
    ) {
        return HttpResponse::NotFound().body("no such route");
    }
    let ids: Vec<String> = body["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let codes: Vec<String> = body["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["payload"]["code"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    lock(&state).accepted.push(Accepted {
        company,
        route,
        ids,
        codes,
        records: body["records"].as_array().cloned().unwrap_or_default(),
    });
    HttpResponse::Ok().json(serde_json::json!({"ok": true}))
}

impl CloudSim {
    pub fn start() -> CloudSim {
        Self::start_on(None)
    }

    /// The simulator over https, serving `cert` (`pki::TestPki::server_cert`).
    pub fn start_tls(cert: &crate::pki::ServerCert) -> CloudSim {
        Self::start_on(Some(cert))
    }

    fn start_on(cert: Option<&crate::pki::ServerCert>) -> CloudSim {
        let tls = cert.map(|c| {
            let cert =
                tls::ReloadingCert::load(&c.cert, &c.key).expect("the simulator's certificate");
            tls::server_config(std::sync::Arc::new(cert)).expect("TLS configuration")
        });
        let state = Arc::new(Mutex::new(SimState::default()));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = state.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let data = web::Data::new(shared);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::JsonConfig::default().limit(64 * 1024 * 1024))
                        .route("/companies/{company}/{route:.*}", web::post().to(records))
                })
                .workers(1);
                let (server, scheme) = match tls {
                    Some(tls) => (server.bind_rustls_0_23("127.0.0.1:0", tls), "https"),
                    None => (server.bind("127.0.0.1:0"), "http"),
                };
                let server = server.expect("bind the cloud simulator");
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((format!("{scheme}://{addr}"), server.handle()))
                    .expect("report address");
                let _ = server.await;
            });
        });
        let (url, handle) = rx.recv().expect("cloud simulator started");
        CloudSim { url, state, handle }
    }

    /// Fail this share of requests (0.0-1.0) with a 500, at random.
    pub fn set_fail_rate(&self, rate: f64) {
        lock(&self.state).fail_rate = rate;
    }

    /// Fail the next `n` requests with a 500.
    pub fn fail_next(&self, n: u32) {
        lock(&self.state).fail_next = n;
    }

    /// Answer every request 503 while down.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// Cut connections without an answer (nothing is recorded) while dropping.
    pub fn set_dropping(&self, dropping: bool) {
        lock(&self.state).dropping = dropping;
    }

    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// Accept only this bearer token (401 otherwise).
    pub fn require_token(&self, token: &str) {
        lock(&self.state).token = Some(token.to_owned());
    }

    /// How many times each record id was accepted.
    pub fn accepted_counts(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for a in &lock(&self.state).accepted {
            for id in &a.ids {
                *counts.entry(id.clone()).or_insert(0) += 1;
            }
        }
        counts
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        lock(&self.state).accepted.clone()
    }

    /// Requests seen and requests refused (failed on purpose).
    pub fn requests(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.requests, s.refused)
    }
}

impl Drop for CloudSim {
    fn drop(&mut self) {
        // Stopping is asynchronous; the thread ends with its system.
        drop(self.handle.stop(false));
    }
}
