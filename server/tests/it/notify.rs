//! `leases::notify_all` against a real PostgreSQL: a batch of dashboard events sent in one
//! statement reaches a LISTEN connection whole and in the order it was published.

use std::time::{Duration, Instant};

use server::error::ApiError;
use server::store::leases;

#[test]
fn a_batch_of_payloads_arrives_in_order_and_whole() {
    let test = crate::common::ServerDb::postgres();
    let url = test.db.postgres_url().expect("a PostgreSQL database");
    let channel = "notify_all_test".to_owned();
    let mut listener = leases::connect(&url, "listener", std::slice::from_ref(&channel)).unwrap();
    // Distinct payloads, long and short, some alike but for their number: PostgreSQL folds
    // identical notifications of one transaction into one, and none of these is identical.
    let payloads: Vec<String> = (0..500)
        .map(|i| format!("{i}\t{}", "x".repeat(i % 7 * 100)))
        .collect();
    let sent = payloads.clone();
    test.db
        .run_blocking(move |conn| {
            leases::notify_all(conn, "notify_all_test", &sent).map_err(ApiError::from)
        })
        .unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.len() < payloads.len() && Instant::now() < deadline {
        received.extend(leases::notifications(&mut listener).unwrap());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(received.iter().all(|(c, _)| *c == channel), "{received:?}");
    let got: Vec<String> = received.into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        got.len(),
        payloads.len(),
        "some notifications did not arrive"
    );
    assert!(got == payloads, "the order changed on the way");
}
