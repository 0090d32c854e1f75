//! `POST /api/v1/sync` against the real server on SQLite and PostgreSQL: accepted and
//! duplicate counts, both tables written in one go, refusals that write nothing, the batch
//! limit, and concurrent deliveries of the same ids.

use integration_tests::*;
use serde_json::{json, Value};

on_both_backends!(
    records_are_stored_once_with_their_queue_rows,
    bad_batches_are_refused_whole,
    concurrent_deliveries_of_the_same_ids_count_once,
);

fn record(id: &str, kind: &str) -> Value {
    json!({"id": id, "kind": kind, "companyId": "company-1",
           "payload": {"code": format!("code-{id}")}, "createdAt": "2030-01-02T03:04:05Z"})
}

fn counts(server: &ServerProcess) -> Vec<i64> {
    server.query_ints(
        "SELECT (SELECT COUNT(*) FROM aggregated_bottles), \
                (SELECT COUNT(*) FROM aggregated_batches), \
                (SELECT COUNT(*) FROM aggregated_pallets), \
                (SELECT COUNT(*) FROM aggregated_batch_fixations), \
                (SELECT COUNT(*) FROM cloud_sync_queue WHERE state = 'PENDING' AND attempts = 0)",
    )
}

fn records_are_stored_once_with_their_queue_rows(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    let device = Api::new(&server).with_token(&admin.enroll("edge-sync"));

    let body = json!({"records": [
        record("r1", "bottle"), record("r2", "bottle"), record("r3", "batch"),
        record("r4", "pallet"), record("r5", "batch_fixate"), record("r1", "bottle"),
    ]});
    let first = device.post("/api/v1/sync", &body);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.data(), &json!({"accepted": 5, "duplicates": 1}));
    assert_eq!(counts(&server), [2, 1, 1, 1, 5]);

    // A resend changes nothing; a new id among old ones is accepted.
    let again = device.post(
        "/api/v1/sync",
        &json!({"records": [record("r1", "bottle"), record("r3", "batch"), record("r6", "bottle")]}),
    );
    assert_eq!(again.data(), &json!({"accepted": 1, "duplicates": 2}));
    assert_eq!(counts(&server), [3, 1, 1, 1, 6]);
    let stored = server.query_ints(
        "SELECT COUNT(*) FROM aggregated_bottles WHERE device_id = 'edge-sync' \
         AND company_id = 'company-1' AND payload = '{\"code\":\"code-r6\"}'",
    );
    assert_eq!(stored, [1]);

    // An empty batch is fine; the largest batch is accepted in one call.
    assert_eq!(
        device.post("/api/v1/sync", &json!({"records": []})).data(),
        &json!({"accepted": 0, "duplicates": 0})
    );
    let big: Vec<Value> = (0..1000)
        .map(|i| record(&format!("big-{i}"), "bottle"))
        .collect();
    let reply = device.post("/api/v1/sync", &json!({ "records": big }));
    assert_eq!(reply.data(), &json!({"accepted": 1000, "duplicates": 0}));

    // Users and strangers are refused.
    for api in [Api::new(&server), admin] {
        let r = api.post("/api/v1/sync", &json!({"records": [record("x", "bottle")]}));
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert_eq!(counts(&server)[0], 1003);
}

fn bad_batches_are_refused_whole(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    let device = Api::new(&server).with_token(&admin.enroll("edge-sync"));

    let mut bad = record("b2", "bottle");
    bad["payload"] = json!("not an object");
    let r = device.post(
        "/api/v1/sync",
        &json!({"records": [record("b1", "bottle"), bad]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.error_code(), "invalid_body");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("records[1]: payload"), "{message}");

    let mut unknown = record("b3", "bottle");
    unknown["kind"] = json!("crate");
    let r = device.post("/api/v1/sync", &json!({"records": [unknown]}));
    assert_eq!(r.status, 400);
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown kind `crate`"));

    let too_many: Vec<Value> = (0..1001)
        .map(|i| record(&format!("t{i}"), "bottle"))
        .collect();
    let r = device.post("/api/v1/sync", &json!({ "records": too_many }));
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "payload_too_large");

    let r = device.call("POST", "/api/v1/sync", Some(&json!({"records": 1})), &[]);
    assert_eq!(r.status, 400);
    assert_eq!(
        counts(&server),
        [0, 0, 0, 0, 0],
        "a refused batch wrote something"
    );
}

fn concurrent_deliveries_of_the_same_ids_count_once(backend: Backend) {
    let server = ServerProcess::start(backend);
    let admin = Api::admin(&server);
    let token = admin.enroll("edge-sync");
    let records: Vec<Value> = (0..200)
        .map(|i| record(&format!("c{i}"), "bottle"))
        .collect();
    let body = json!({ "records": records });
    let accepted: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let api = Api::new(&server).with_token(&token);
                    // A request that lost a database race answers non-2xx; an agent resends.
                    loop {
                        let r = api.post("/api/v1/sync", &body);
                        if r.status == 200 {
                            let d = r.data();
                            return (
                                d["accepted"].as_u64().unwrap(),
                                d["duplicates"].as_u64().unwrap(),
                            );
                        }
                        assert!(r.status >= 500, "{} {}", r.status, r.body);
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: u64 = accepted.iter().map(|(a, _)| a).sum();
    assert_eq!(total, 200, "{accepted:?}");
    for (a, d) in &accepted {
        assert_eq!(a + d, 200);
    }
    assert_eq!(counts(&server), [200, 0, 0, 0, 200]);
}
