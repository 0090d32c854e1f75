//! Failure counts of unauthenticated attempts that every replica on one PostgreSQL shares
//! (`failure_counts`), so that a second replica does not double an attacker's budget.
//!
//! An attempt takes its slot with `reserve` before its outcome is known: one statement counts
//! it as a failure and as in flight, only while the key's count is below the limit (or its
//! window has passed, which starts a new one). A failed attempt then only leaves `in_flight`
//! (`fail`); a successful or abandoned one is given back (`give_back`). A replica that dies
//! mid-attempt leaves its slot counted as a failure until the window ends: it errs towards
//! refusing, never towards admitting more. Every time is the database's clock, so replicas
//! whose clocks differ still agree on when a window ends.
//!
//! Keys are capped per limiter (`reserve`'s `cap`): past it, expired rows of the limiter are
//! deleted, and if it is still full, new keys share the overflow key, so an attacker with many
//! names or addresses cannot grow the table without bound. Concurrent inserts may each pass
//! the count, so the cap can be passed by the attempts running at once, no more. The leader
//! deletes rows whose window has passed (`prune`); a key given back to zero is deleted at once.
//!
//! `reserve` commits as every write does: the failure it counts up front is what the limit
//! rests on. `fail` and `give_back` commit without waiting for the WAL flush
//! (`synchronous_commit = off`, this transaction only): if PostgreSQL itself crashes, the
//! last of them (well under a second's worth) may be lost, which leaves slots counted as
//! failures until their window ends: an over-count, never an attempt admitted uncounted.
//!
//! PostgreSQL only: on SQLite, one process, the counts stay in memory (`ratelimit.rs`) and
//! these functions answer an internal error.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Double, Integer, Text, Timestamp};

use crate::store::db::{as_postgres, DbConnection};
use crate::store::error::{StoreError, StoreResult};

/// The database's clock in UTC, as the `TIMESTAMP` columns hold it.
const NOW: &str = "(now() AT TIME ZONE 'UTC')";

/// What `reserve` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The attempt holds a slot of `subject` (the key, or the overflow key) in the window that
    /// ends at `window_ends`, which identifies the window for `fail` and `give_back`.
    Admitted {
        subject: String,
        window_ends: NaiveDateTime,
    },
    /// The key has `settled` failures and `in_flight` attempts in flight, which together use
    /// up its limit; its window ends in `remaining_ms`.
    Full {
        settled: i32,
        in_flight: i32,
        remaining_ms: i64,
    },
}

/// A key's count after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Failures whose outcome is known, in the key's window.
    pub settled: i32,
    pub remaining_ms: i64,
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = Bool)]
    found: bool,
}

#[derive(QueryableByName)]
struct Rows {
    #[diesel(sql_type = BigInt)]
    rows: i64,
}

#[derive(QueryableByName)]
struct Ends {
    #[diesel(sql_type = Timestamp)]
    window_ends: NaiveDateTime,
}

#[derive(QueryableByName)]
struct State {
    #[diesel(sql_type = Integer)]
    failures: i32,
    #[diesel(sql_type = Integer)]
    in_flight: i32,
    #[diesel(sql_type = BigInt)]
    remaining_ms: i64,
}

#[derive(QueryableByName)]
struct Settled {
    #[diesel(sql_type = Integer)]
    settled: i32,
    #[diesel(sql_type = BigInt)]
    remaining_ms: i64,
}

fn postgres(conn: &mut DbConnection) -> StoreResult<&mut PgConnection> {
    as_postgres(conn).ok_or_else(|| StoreError::internal("shared failure counts need PostgreSQL"))
}

fn remaining_ms() -> String {
    format!("(EXTRACT(EPOCH FROM (window_ends - {NOW})) * 1000)::BIGINT AS remaining_ms")
}

/// The key `subject` is counted under: its own while it has a row or the limiter has fewer
/// than `cap` rows (after deleting the limiter's expired ones), else `overflow`.
fn slot_key(
    pg: &mut PgConnection,
    limiter: &str,
    subject: &str,
    cap: i64,
    overflow: &str,
) -> StoreResult<String> {
    let found: Found = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM failure_counts WHERE limiter = $1 AND subject = $2) AS found",
    )
    .bind::<Text, _>(limiter)
    .bind::<Text, _>(subject)
    .get_result(pg)?;
    if found.found {
        return Ok(subject.to_owned());
    }
    let count = |pg: &mut PgConnection| -> StoreResult<i64> {
        let n: Rows =
            diesel::sql_query("SELECT count(*) AS rows FROM failure_counts WHERE limiter = $1")
                .bind::<Text, _>(limiter)
                .get_result(pg)?;
        Ok(n.rows)
    };
    if count(pg)? < cap {
        return Ok(subject.to_owned());
    }
    diesel::sql_query(format!(
        "DELETE FROM failure_counts WHERE limiter = $1 AND window_ends <= {NOW}"
    ))
    .bind::<Text, _>(limiter)
    .execute(pg)?;
    Ok(if count(pg)? < cap {
        subject.to_owned()
    } else {
        overflow.to_owned()
    })
}

/// Takes a slot of `subject` for one attempt, counted as a failure until it is given back,
/// while the key has fewer than `max` failures (in flight included) in its window. A key with
/// no failures, or whose window has passed, starts a new window of `window_secs`.
pub fn reserve(
    conn: &mut DbConnection,
    limiter: &str,
    subject: &str,
    (max, window_secs): (i32, f64),
    (cap, overflow): (i64, &str),
) -> StoreResult<Reserved> {
    let pg = postgres(conn)?;
    let subject = slot_key(pg, limiter, subject, cap, overflow)?;
    let admitted: Option<Ends> = diesel::sql_query(format!(
        "INSERT INTO failure_counts AS f (limiter, subject, failures, in_flight, window_ends) \
         VALUES ($1, $2, 1, 1, {NOW} + make_interval(secs => $4)) \
         ON CONFLICT (limiter, subject) DO UPDATE SET \
           failures = CASE WHEN f.window_ends <= {NOW} THEN 1 ELSE f.failures + 1 END, \
           in_flight = CASE WHEN f.window_ends <= {NOW} THEN 1 ELSE f.in_flight + 1 END, \
           window_ends = CASE WHEN f.window_ends <= {NOW} OR f.failures = 0 \
                              THEN EXCLUDED.window_ends ELSE f.window_ends END \
         WHERE f.window_ends <= {NOW} OR f.failures < $3 \
         RETURNING window_ends"
    ))
    .bind::<Text, _>(limiter)
    .bind::<Text, _>(&subject)
    .bind::<Integer, _>(max)
    .bind::<Double, _>(window_secs)
    .get_result(pg)
    .optional()?;
    if let Some(Ends { window_ends }) = admitted {
        return Ok(Reserved::Admitted {
            subject,
            window_ends,
        });
    }
    let state: Option<State> = diesel::sql_query(format!(
        "SELECT failures, in_flight, {} FROM failure_counts WHERE limiter = $1 AND subject = $2",
        remaining_ms()
    ))
    .bind::<Text, _>(limiter)
    .bind::<Text, _>(&subject)
    .get_result(pg)
    .optional()?;
    // A row deleted in between (pruned, or given back to zero) is free again: say busy, and
    // the caller's next try takes it.
    let state = state.unwrap_or(State {
        failures: 0,
        in_flight: 0,
        remaining_ms: 0,
    });
    Ok(Reserved::Full {
        settled: state.failures - state.in_flight,
        in_flight: state.in_flight,
        remaining_ms: state.remaining_ms,
    })
}

/// The attempt reserved in the window ending at `mine` failed: its slot stays a failure and
/// leaves `in_flight`. When that window has been replaced by a newer one (the attempt outlived
/// its window), the failure counts in the current window instead, or starts one.
pub fn fail(
    conn: &mut DbConnection,
    limiter: &str,
    subject: &str,
    mine: NaiveDateTime,
    window_secs: f64,
) -> StoreResult<Counted> {
    let pg = postgres(conn)?;
    pg.transaction(|pg| {
        unflushed(pg)?;
        let row: Settled = diesel::sql_query(format!(
            "INSERT INTO failure_counts AS f (limiter, subject, failures, in_flight, window_ends) \
         VALUES ($1, $2, 1, 0, {NOW} + make_interval(secs => $4)) \
         ON CONFLICT (limiter, subject) DO UPDATE SET \
           failures = CASE WHEN f.window_ends <= {NOW} THEN 1 \
                           WHEN f.window_ends = $3 THEN f.failures \
                           ELSE f.failures + 1 END, \
           in_flight = CASE WHEN f.window_ends <= {NOW} THEN 0 \
                            WHEN f.window_ends = $3 THEN GREATEST(f.in_flight - 1, 0) \
                            ELSE f.in_flight END, \
           window_ends = CASE WHEN f.window_ends <= {NOW} THEN EXCLUDED.window_ends \
                              ELSE f.window_ends END \
         RETURNING failures - in_flight AS settled, {}",
            remaining_ms()
        ))
        .bind::<Text, _>(limiter)
        .bind::<Text, _>(subject)
        .bind::<Timestamp, _>(mine)
        .bind::<Double, _>(window_secs)
        .get_result(pg)?;
        Ok(Counted {
            settled: row.settled,
            remaining_ms: row.remaining_ms,
        })
    })
}

/// The attempt reserved in the window ending at `mine` succeeded or was abandoned: its slot is
/// no failure. With `forget`, the key's settled failures are forgotten too (an account after
/// its owner logged in); attempts still in flight stay counted. A key left with nothing counted
/// loses its row.
pub fn give_back(
    conn: &mut DbConnection,
    limiter: &str,
    subject: &str,
    mine: NaiveDateTime,
    forget: bool,
) -> StoreResult<()> {
    let pg = postgres(conn)?;
    // The count after giving back: the attempts still in flight and, unless forgotten, the
    // settled failures (minus this slot when it is of the current window).
    let after = "CASE WHEN $4 AND window_ends = $3 THEN GREATEST(in_flight - 1, 0) \
                      WHEN $4 THEN in_flight \
                      WHEN window_ends = $3 THEN GREATEST(failures - 1, 0) \
                      ELSE failures END";
    pg.transaction(|pg| {
        unflushed(pg)?;
        // Most often nothing is left (a success, alone): one statement deletes the row.
        let deleted = diesel::sql_query(format!(
            "DELETE FROM failure_counts WHERE limiter = $1 AND subject = $2 AND {after} = 0"
        ))
        .bind::<Text, _>(limiter)
        .bind::<Text, _>(subject)
        .bind::<Timestamp, _>(mine)
        .bind::<Bool, _>(forget)
        .execute(pg)?;
        if deleted == 0 {
            diesel::sql_query(format!(
                "UPDATE failure_counts SET failures = {after}, \
                   in_flight = CASE WHEN window_ends = $3 THEN GREATEST(in_flight - 1, 0) \
                                    ELSE in_flight END \
                 WHERE limiter = $1 AND subject = $2"
            ))
            .bind::<Text, _>(limiter)
            .bind::<Text, _>(subject)
            .bind::<Timestamp, _>(mine)
            .bind::<Bool, _>(forget)
            .execute(pg)?;
        }
        Ok(())
    })
}

/// Lets the current transaction commit without waiting for its WAL to reach the disk.
fn unflushed(pg: &mut PgConnection) -> StoreResult<()> {
    diesel::sql_query("SET LOCAL synchronous_commit = off").execute(pg)?;
    Ok(())
}

/// Deletes the rows whose window has passed, on PostgreSQL; the leader's janitor runs it.
/// Answers how many went; 0 on SQLite, which has no rows here.
pub fn prune(conn: &mut DbConnection) -> StoreResult<usize> {
    let Some(pg) = as_postgres(conn) else {
        return Ok(0);
    };
    Ok(diesel::sql_query(format!(
        "DELETE FROM failure_counts WHERE window_ends <= {NOW}"
    ))
    .execute(pg)?)
}
