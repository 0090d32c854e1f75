//! One download budget for everything that fetches artifacts: three deployments to real
//! agents (two on line A, one on line B) and a burst of slow board downloads (three on line B,
//! three on no line) against a server with 3 slots in all and 2 per line. A sampler reads the
//! server's counts all along; neither it nor the server's own peak may pass a limit, every
//! download must still complete (boards retry on 429, agents wait out 503), and the peak is
//! printed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::*;
use serde_json::{json, Value};

use crate::common::artifact;

on_both_backends!(three_deployments_and_a_board_burst_stay_within_the_budget);

const SECRET: &str = "budget-admin-secret-0123456789";
const SLOTS: u64 = 3;
const PER_LINE: u64 = 2;

/// Bytes a board's socket may buffer: small, so the server's send buffer fills and its
/// transfer lasts as long as the board reads, as over a slow radio link.
const BOARD_RCVBUF: usize = 16 * 1024;

/// One board: a token, then the file over a socket with a small receive buffer, read at a
/// modest pace (so it holds its slot), retrying after every 429 for as long as the server says.
/// Answers the bytes and the 429s it got.
fn board_download(base: &str, board: &str, url: &str) -> (Vec<u8>, u32) {
    let issued: Value = reqwest::blocking::Client::new()
        .post(format!("{base}/admin/generate_token"))
        .header("X-Admin-Secret", SECRET)
        .json(&json!({"device_id": board, "project": "fan"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let token = issued["token"].as_str().unwrap().to_owned();
    let addr: SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let mut busy = 0;
    loop {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        // Set before connecting, so the window the board offers stays this small.
        socket.set_recv_buffer_size(BOARD_RCVBUF).unwrap();
        socket.connect(&addr.into()).unwrap();
        let mut stream: TcpStream = socket.into();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let request = format!(
            "GET {url} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             X-Device-ID: {board}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        let header = |name: &str| -> Option<u64> {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().parse().unwrap())
        };
        let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        if status == 429 {
            busy += 1;
            std::thread::sleep(Duration::from_secs(header("retry-after").unwrap()));
            continue;
        }
        assert_eq!(status, 200, "{board}: {head}");
        let length = header("content-length").unwrap() as usize;
        let mut body = Vec::with_capacity(length);
        let mut chunk = vec![0u8; 64 * 1024];
        while body.len() < length {
            let n = stream.read(&mut chunk).unwrap();
            assert!(n > 0, "{board}: the body ended after {} bytes", body.len());
            body.extend_from_slice(&chunk[..n]);
            std::thread::sleep(Duration::from_millis(5));
        }
        return (body, busy);
    }
}

fn three_deployments_and_a_board_burst_stay_within_the_budget(backend: Backend) {
    let server = ServerProcess::start_with(
        TestDb::new(backend),
        TempDir::new("factory-budget"),
        &[
            "--download-slots",
            &SLOTS.to_string(),
            "--download-slots-per-line",
            &PER_LINE.to_string(),
            "--ota-admin-secret",
            SECRET,
        ],
    );
    let api = Api::admin(&server);
    let agents: Vec<AgentProcess> = [
        ("bud-a1", "line-a"),
        ("bud-a2", "line-a"),
        ("bud-b1", "line-b"),
    ]
    .iter()
    .map(|(id, line)| {
        let options = AgentOptions {
            args: vec![
                "--production-line-id".into(),
                (*line).into(),
                "--firmware-activate".into(),
                "false".into(),
            ],
            ..AgentOptions::default()
        };
        AgentProcess::start_with(&server.base_url, id, options)
    })
    .collect();
    let refs: Vec<&AgentProcess> = agents.iter().collect();
    crate::agent_firmware::online(&api, &refs);
    let releases: Vec<(Value, Vec<u8>)> = (1..=3u8)
        .map(|i| {
            let body = artifact(2 << 20, i);
            let release = upload_release(&server, &api, "edge", &format!("0.2.{i}"), body.clone());
            (release, body)
        })
        .collect();
    // Larger than the server's largest socket send buffer (4 MiB here), so a transfer cannot
    // end on the server before the board has read most of it.
    let board_body = artifact(8 << 20, 9);
    let fan = upload_release(&server, &api, "fan", "1.0.0", board_body.clone());
    let boards: Vec<(String, Option<&str>)> = (1..=6)
        .map(|i| (format!("bud-board-{i}"), (i <= 3).then_some("line-b")))
        .collect();
    for (board, line) in &boards {
        let listed = api.put(
            &format!("/api/v1/ota/projects/fan/devices/{board}"),
            &json!({"fwAccess": true, "productionLineId": line}),
        );
        assert_eq!(listed.status, 200, "{}", listed.body);
    }

    // The sampler: the server's own counts, read as fast as it answers.
    let done = Arc::new(AtomicBool::new(false));
    let sampled_peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), sampled_peak.clone());
        let api = Api::admin(&server);
        std::thread::spawn(move || {
            let mut line_peaks = std::collections::BTreeMap::<String, u64>::new();
            while !done.load(Ordering::SeqCst) {
                let view = api.get("/api/v1/firmware/transfers");
                let data = view.data();
                peak.fetch_max(data["active"].as_u64().unwrap() as usize, Ordering::SeqCst);
                for (line, counts) in data["lines"].as_object().unwrap() {
                    let entry = line_peaks.entry(line.clone()).or_default();
                    *entry = (*entry).max(counts["active"].as_u64().unwrap());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            line_peaks
        })
    };

    let url = format!("/firmware/fan/{}", fan["storedName"].as_str().unwrap());
    let burst: Vec<_> = boards
        .iter()
        .map(|(board, _)| {
            let (base, board, url) = (server.base_url.clone(), board.clone(), url.clone());
            std::thread::spawn(move || board_download(&base, &board, &url))
        })
        .collect();
    // The boards take the slots first; the deployments start while they hold them.
    std::thread::sleep(Duration::from_millis(300));
    let deployments: Vec<String> = releases
        .iter()
        .zip(&agents)
        .map(|((release, _), agent)| {
            crate::agent_firmware::deploy(
                &api,
                json!({"releaseId": release["id"], "deviceIds": [agent.device_id]}),
            )
        })
        .collect();

    let mut board_429 = 0;
    for handle in burst {
        let (bytes, busy) = handle.join().unwrap();
        assert!(bytes == board_body, "a board got other bytes");
        board_429 += busy;
    }
    for (id, agent) in deployments.iter().zip(&agents) {
        wait_until(Duration::from_secs(120), "the device STAGED", || {
            deployment_statuses(&deployment(&api, id))[&agent.device_id] == "STAGED"
        });
    }
    for ((_, body), agent) in releases.iter().zip(&agents) {
        let staged = std::fs::read_dir(agent.data_dir.path().join("staging"))
            .unwrap()
            .filter_map(|e| {
                let path = e.unwrap().path();
                std::fs::read(&path).ok().filter(|b| b == body)
            })
            .count();
        assert_eq!(staged, 1, "{} staged its release", agent.device_id);
    }
    done.store(true, Ordering::SeqCst);
    let line_peaks = sampler.join().unwrap();

    let view = api.get("/api/v1/firmware/transfers");
    let view = view.data();
    let peak = view["peak"].as_u64().unwrap();
    let refused = view["refused"].as_u64().unwrap();
    let waited = agents
        .iter()
        .filter(|a| a.log().contains("waiting for a turn"))
        .count();
    println!(
        "download budget: peak {peak} concurrent transfers (limit {SLOTS}; sampled {}), \
         per line {} (limit {PER_LINE}; sampled {line_peaks:?}); {} transfers served, \
         {refused} refused ({board_429} board 429s), {waited} of 3 agents waited their turn",
        sampled_peak.load(Ordering::SeqCst),
        view["lines"],
        view["served"],
    );
    assert!(peak <= SLOTS, "{view}");
    assert!(sampled_peak.load(Ordering::SeqCst) as u64 <= SLOTS);
    for line in ["line-a", "line-b"] {
        assert!(
            view["lines"][line]["peak"].as_u64().unwrap() <= PER_LINE,
            "{view}"
        );
    }
    assert!(
        line_peaks.values().all(|p| *p <= PER_LINE),
        "{line_peaks:?}"
    );
    assert_eq!(peak, SLOTS, "the burst filled the budget: {view}");
    assert!(
        refused > 0 && board_429 > 0,
        "the burst met a full budget: {view}"
    );
    assert!(view["served"].as_u64().unwrap() >= 9, "{view}");
}
