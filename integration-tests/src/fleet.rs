//! Many simulated devices for the benchmarks: enrolled over REST and connected over real
//! WebSockets from tokio tasks, and the admin calls the benchmarks make around them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::{ADMIN_PASSWORD, ENROLLMENT_KEY};

/// Devices connecting at once; more overflows the listen backlog for no gain.
const CONNECT_CONCURRENCY: usize = 200;

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Enrolls each of `ids` and opens its device socket, `CONNECT_CONCURRENCY` at a time, handing
/// each socket to `run` on its own task as soon as it is open; answers the tasks.
pub async fn connect<F, Fut>(
    base: &str,
    ws_url: &str,
    ids: &[String],
    run: F,
) -> Vec<tokio::task::JoinHandle<()>>
where
    F: Fn(String, Socket) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let client = reqwest::Client::new();
    let mut tasks = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CONNECT_CONCURRENCY) {
        let mut connecting = Vec::new();
        for id in chunk {
            let (client, base, ws_url, id) = (
                client.clone(),
                base.to_owned(),
                ws_url.to_owned(),
                id.clone(),
            );
            connecting.push(tokio::spawn(async move {
                let reply: Value = client
                    .post(format!("{base}/api/v1/devices/{id}/token"))
                    .header("X-Enrollment-Key", ENROLLMENT_KEY)
                    .send()
                    .await
                    .expect("enroll")
                    .json()
                    .await
                    .expect("enroll body");
                let token = reply["data"]["token"]
                    .as_str()
                    .unwrap_or_else(|| panic!("enrollment of {id} failed: {reply}"))
                    .to_owned();
                let mut request = ws_url.into_client_request().expect("url");
                request.headers_mut().insert(
                    "Authorization",
                    format!("Bearer {token}").parse().expect("header"),
                );
                let (socket, _) = tokio_tungstenite::connect_async(request)
                    .await
                    .expect("connect");
                (id, socket)
            }));
        }
        for c in connecting {
            let (id, socket) = c.await.expect("device connects");
            tasks.push(tokio::spawn(run(id, socket)));
        }
    }
    tasks
}

/// Logs the bootstrap admin in; answers the token.
/// Posts `body` to a device's commands route and tells whether the answer was a SUCCESS
/// result (any transport error, refusal or other status is not).
pub async fn command_succeeded(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
    timeout: Duration,
) -> bool {
    match client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .timeout(timeout)
        .send()
        .await
    {
        Ok(reply) => reply
            .json::<Value>()
            .await
            .is_ok_and(|v| v["data"]["status"] == "SUCCESS"),
        Err(_) => false,
    }
}

pub async fn admin_token(client: &reqwest::Client, base: &str) -> String {
    let login: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login body");
    login["data"]["token"]
        .as_str()
        .expect("admin token")
        .to_owned()
}

/// Waits until the registry knows `n` sessions.
pub async fn wait_connected(client: &reqwest::Client, base: &str, token: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let connected: Value = client
            .get(format!("{base}/api/v1/devices/connected"))
            .bearer_auth(token)
            .send()
            .await
            .expect("connected")
            .json()
            .await
            .expect("connected body");
        let total = connected["data"]["total"].as_u64().unwrap_or(0) as usize;
        if total == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{total} of {n} devices registered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One simulated device: answers every command at once with success, counting its answers in
/// `answered` when given, until the socket closes.
pub async fn answer_every_command(socket: Socket, answered: Option<Arc<AtomicU64>>) {
    let (mut tx, mut rx) = socket.split();
    while let Some(Ok(msg)) = rx.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if frame["type"] == "command" {
            let reply = json!({"type": "command_result", "commandId": frame["command"]["id"], "success": true, "output": "ok"});
            if tx.send(Message::Text(reply.to_string())).await.is_err() {
                break;
            }
            if let Some(answered) = &answered {
                answered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
