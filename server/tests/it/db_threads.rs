//! `Db::run` under a burst: the work runs on the fixed database threads only (never more
//! threads than pooled connections, whatever the load), and past the bounded queue callers are
//! refused at once with 503 `server_busy` and `Retry-After` instead of waiting.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::ResponseError;

use crate::common::ServerDb;
use server::store::executor::QUEUE_PER_THREAD;

fn a_burst_runs_on_the_fixed_threads_and_overflow_is_refused(db: ServerDb) {
    let db = db.db;
    let threads = db.threads();
    let burst = threads * QUEUE_PER_THREAD + 1_000;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let outcomes = actix_rt::System::new().block_on({
        let seen = seen.clone();
        async move {
            let calls = (0..burst).map(|_| {
                let seen = seen.clone();
                db.run(move |conn| {
                    server::store::db::ping(conn)?;
                    let me = std::thread::current();
                    seen.lock()
                        .unwrap()
                        .insert(me.name().unwrap_or("unnamed").to_owned());
                    std::thread::sleep(Duration::from_millis(1));
                    Ok(())
                })
            });
            futures_util::future::join_all(calls).await
        }
    });
    let done = outcomes.iter().filter(|r| r.is_ok()).count();
    let refused: Vec<_> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(done + refused.len(), burst);
    assert!(
        done >= threads * QUEUE_PER_THREAD,
        "everything the queue holds runs: {done}"
    );
    assert!(!refused.is_empty(), "a burst past the queue is refused");
    for error in &refused {
        let response = error.error_response();
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.len() <= threads,
        "{} threads ran database work, more than the {threads} database threads: {seen:?}",
        seen.len()
    );
    assert!(seen.iter().all(|name| name.starts_with("db-")), "{seen:?}");
    eprintln!(
        "db burst: {burst} calls, {done} run on {} threads, {} refused with 503",
        seen.len(),
        refused.len()
    );
}

on_both_backends!(a_burst_runs_on_the_fixed_threads_and_overflow_is_refused);
