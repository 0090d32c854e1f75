//! The agent's label printer end to end, on both databases: a fake port-9100 printer in the
//! test records each connection's bytes; a closed batch's label arrives rendered and its
//! `print` event reaches the server, and labels of batches closed while the printer is off
//! wait without holding scanning up, then arrive once each and in order when it answers.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::*;
use serde_json::Value;

on_both_backends!(
    a_closed_batch_prints_its_label_and_reports_print,
    labels_wait_for_a_printer_that_is_off_and_print_once_in_order,
);

const WAIT: Duration = Duration::from_secs(60);

/// A raw TCP printer: takes one connection at a time and keeps what each one carried (the
/// agent sends one label per connection), in arrival order.
struct FakePrinter {
    addr: String,
    labels: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl FakePrinter {
    fn on(listener: TcpListener) -> FakePrinter {
        let addr = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let labels = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (kept, stopped) = (labels.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut socket, _)) => {
                        socket.set_nonblocking(false).unwrap();
                        socket
                            .set_read_timeout(Some(Duration::from_secs(20)))
                            .unwrap();
                        let mut bytes = Vec::new();
                        socket.read_to_end(&mut bytes).expect("read a label");
                        kept.lock()
                            .unwrap()
                            .push(String::from_utf8(bytes).expect("a UTF-8 label"));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("fake printer: {e}"),
                }
            }
        });
        FakePrinter { addr, labels, stop }
    }

    fn labels(&self) -> Vec<String> {
        self.labels.lock().unwrap().clone()
    }
}

impl Drop for FakePrinter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn printing_agent(server: &ServerProcess, device_id: &str, options: AgentOptions) -> AgentProcess {
    let agent = AgentProcess::start_with(
        &server.base_url,
        device_id,
        AgentOptions {
            scanner: true,
            ..options
        },
    );
    let api = Api::admin(server);
    wait_until(WAIT, "the agent to come online", || {
        api.device_status(device_id).as_deref() == Some("ONLINE")
    });
    agent
}

/// Labels waiting in the agent's queue, read from its database file.
fn queued_labels(agent: &AgentProcess) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        agent.data_dir.path().join("agent.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open agent.db");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.query_row("SELECT COUNT(*) FROM labels", [], |r| r.get(0))
        .expect("count labels")
}

/// The device's stored events of one type, newest first.
fn events(api: &Api, device_id: &str, kind: &str) -> Vec<Value> {
    let reply = api.get(&format!(
        "/api/v1/devices/{device_id}/events?type={kind}&limit=100"
    ));
    reply.data()["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn print_codes(api: &Api, device_id: &str) -> Vec<String> {
    let mut codes: Vec<String> = events(api, device_id, "print")
        .iter()
        .map(|e| e["payload"]["code"].as_str().unwrap().to_owned())
        .collect();
    codes.sort();
    codes
}

fn a_closed_batch_prints_its_label_and_reports_print(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    let printer = FakePrinter::on(TcpListener::bind("127.0.0.1:0").unwrap());
    let args = [
        "--batch-size",
        "2",
        "--pallet-size",
        "0",
        "--production-line-id",
        "line-7",
        "--printer-addr",
        &printer.addr,
    ];
    let agent = printing_agent(
        &server,
        "edge-printer",
        AgentOptions {
            args: args.iter().map(|a| a.to_string()).collect(),
            ..AgentOptions::default()
        },
    );

    // Two codes close a batch; the third opens the next one, which has no label yet.
    agent.scan(&gs1_codes("PRN", 3));
    wait_until(WAIT, "the batch's label at the printer", || {
        !printer.labels().is_empty()
    });
    wait_until(WAIT, "the print event at the server", || {
        print_codes(&api, "edge-printer").len() == 1
    });
    let code = print_codes(&api, "edge-printer").remove(0);
    let labels = printer.labels();
    assert_eq!(labels.len(), 1, "{labels:?}");
    let label = &labels[0];
    // The built-in template: a ZPL label with the batch's values filled in.
    assert!(
        label.starts_with("^XA\n") && label.ends_with("^XZ\n"),
        "{label}"
    );
    for expected in [
        "^FDbatch^FS".to_owned(),
        "^FDCount: 2^FS".to_owned(),
        "^FDLine: line-7^FS".to_owned(),
        format!("^FDQA,{code}^FS"),
    ] {
        assert!(label.contains(&expected), "{expected} missing from {label}");
    }
    assert!(!label.contains('{'), "unfilled placeholder in {label}");
    // The code printed is the id of the batch record the server received.
    wait_until(WAIT, "the batch record at the server", || {
        server.query_ints(&format!(
            "SELECT COUNT(*) FROM aggregated_batches WHERE payload LIKE '%{code}%'"
        ))[0]
            == 1
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(printer.labels().len(), 1, "the open batch printed nothing");
    assert_eq!(queued_labels(&agent), 0);
    wait_until(WAIT, "the label queue in the device's metrics", || {
        api.get("/api/v1/devices/edge-printer").data()["metrics"]["labelQueueDepth"] == 0
    });
}

fn labels_wait_for_a_printer_that_is_off_and_print_once_in_order(backend: Backend) {
    let server = ServerProcess::start(backend);
    let api = Api::admin(&server);
    // Nothing listens here until the printer is switched on.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let agent = printing_agent(
        &server,
        "edge-printer-off",
        AgentOptions {
            args: ["--batch-size", "0", "--pallet-size", "0"]
                .iter()
                .map(|a| a.to_string())
                .collect(),
            env: vec![
                ("EDGE_PRINTER_ADDR".into(), addr.clone()),
                (
                    "EDGE_PRINTER_TEMPLATE".into(),
                    "{kind} {count} {id}\n".into(),
                ),
            ],
            ..AgentOptions::default()
        },
    );
    let bottles = |n: i64| {
        wait_until(WAIT, &format!("{n} bottles at the server"), || {
            server.query_ints("SELECT COUNT(*) FROM aggregated_bottles")[0] == n
        });
    };

    // Batches of 1, 2 and 3 bottles, the last closed with its pallet.
    let codes = gs1_codes("OFF", 7);
    let control = |line: &str| line.to_owned();
    agent.scan(&[
        codes[0].clone(),
        control("CLOSE_BATCH"),
        codes[1].clone(),
        codes[2].clone(),
        control("CLOSE_BATCH"),
        codes[3].clone(),
        codes[4].clone(),
        codes[5].clone(),
        control("CLOSE_PALLET"),
    ]);
    bottles(6);
    wait_until(WAIT, "the printer's outage reported as an alert", || {
        events(&api, "edge-printer-off", "alert").iter().any(|e| {
            let message = e["payload"]["message"].as_str().unwrap_or("");
            e["payload"]["severity"] == "warning"
                && message.contains(&addr)
                && message.contains("labels wait")
        })
    });
    // Scanning goes on while the printer is off: another batch closes and its label waits.
    agent.scan(&[codes[6].clone(), control("CLOSE_BATCH")]);
    bottles(7);
    let counts =
        server.query_ints("SELECT (SELECT COUNT(*) FROM aggregated_batches), (SELECT COUNT(*) FROM aggregated_pallets)");
    assert_eq!(counts, [4, 1]);
    wait_until(WAIT, "five labels waiting in the agent's queue", || {
        queued_labels(&agent) == 5
    });
    assert!(print_codes(&api, "edge-printer-off").is_empty());
    // The status frames show the operator how many labels wait.
    wait_until(WAIT, "the waiting labels in the device's metrics", || {
        api.get("/api/v1/devices/edge-printer-off").data()["metrics"]["labelQueueDepth"] == 5
    });

    let printer = FakePrinter::on(TcpListener::bind(&addr).expect("the printer's port"));
    wait_until(WAIT, "the waiting labels at the printer", || {
        printer.labels().len() >= 5
    });
    wait_until(WAIT, "the label queue to empty", || {
        queued_labels(&agent) == 0
    });
    wait_until(WAIT, "five print events at the server", || {
        print_codes(&api, "edge-printer-off").len() >= 5
    });
    // Time for a duplicate to show up, if one were coming.
    std::thread::sleep(Duration::from_secs(2));
    let labels = printer.labels();
    let heads: Vec<String> = labels
        .iter()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .collect();
    assert_eq!(
        heads,
        ["batch 1", "batch 2", "batch 3", "pallet 3", "batch 1"],
        "{labels:?}"
    );
    let mut ids: Vec<String> = labels
        .iter()
        .map(|l| l.trim_end().rsplit_once(' ').unwrap().1.to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "every label printed once: {labels:?}");
    assert_eq!(print_codes(&api, "edge-printer-off"), ids);
    assert!(
        agent.log().contains("printer answers again"),
        "the recovery is logged"
    );
    wait_until(WAIT, "an empty label queue in the device's metrics", || {
        api.get("/api/v1/devices/edge-printer-off").data()["metrics"]["labelQueueDepth"] == 0
    });
}
