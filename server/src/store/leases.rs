//! What replicas on one PostgreSQL tell each other, and which of them leads.
//!
//! One connection per replica, outside the pool, LISTENs on the replica's own channel (commands
//! another replica hands it), on the channel of ended commands and on the dashboard events'
//! channel; the same connection takes the leader's advisory lock, a session lock that
//! PostgreSQL lets go of when the connection dies, so a killed leader's successor takes over
//! at its next try. Payloads are short: a command's row id, or a batch of serialized events.
//! On SQLite there is nothing to tell: `notify` does nothing there.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};

use crate::store::db::{as_postgres, DbConnection};
use crate::store::error::StoreResult;

/// The advisory lock whose holder runs the work that must run once (the deployer's passes,
/// the cloud drain, the janitor's retention and rollups, presence expiry): "factory" in ASCII.
pub const LEADER_LOCK: i64 = 0x0066_6163_746f_7279;

/// Commands whose dispatch ended on the replica that ran them: payload the command id.
pub const ENDED_CHANNEL: &str = "factory_command_ended";
/// Dashboard events of every replica, in batches (`actors::cluster`).
pub const EVENTS_CHANNEL: &str = "factory_events";
/// The longest payload PostgreSQL accepts is 8000 bytes; this leaves room for the framing.
pub const MAX_PAYLOAD: usize = 7900;

/// The channel of commands handed to `replica`. Replica ids are letters, digits, `_` and `-`
/// (checked by the settings), so the name needs no escaping inside double quotes.
pub fn commands_channel(replica: &str) -> String {
    format!("factory_commands_{replica}")
}

/// What goes on a replica's commands channel: the command's id, after how long it may stay
/// QUEUED should its device be gone from the holder too (`queueIfOffline`), in milliseconds,
/// or nothing when it may not: `<ttl ms or empty> TAB <id>`. The id goes last because it may
/// hold any character.
pub fn handover_payload(command_id: &str, queue_ttl: Option<std::time::Duration>) -> String {
    let ttl = queue_ttl
        .map(|t| t.as_millis().to_string())
        .unwrap_or_default();
    format!("{ttl}\t{command_id}")
}

/// Reads `handover_payload`; a bare id (a replica of an older version) has no queue time.
pub fn parse_handover(payload: &str) -> (String, Option<std::time::Duration>) {
    match payload.split_once('\t') {
        Some(("", id)) => (id.to_owned(), None),
        Some((ttl, id)) => match ttl.parse::<u64>() {
            Ok(ms) => (id.to_owned(), Some(std::time::Duration::from_millis(ms))),
            Err(_) => (payload.to_owned(), None),
        },
        None => (payload.to_owned(), None),
    }
}

/// The `application_name` of a replica's LISTEN connection: while PostgreSQL lists it in
/// `pg_stat_activity`, the replica is alive (a killed process's connection goes at once).
pub fn session_name(replica: &str) -> String {
    format!("factory-replica-{replica}")
}

/// A connection of its own, outside the pool: its session holds the LISTENs on `channels` and
/// the lock, and carries the replica's name. The name is set after the LISTENs, so a replica
/// counts as alive (`alive`) only once it hears its channel: a command handed to it in between
/// would be lost, and its sender would wait its whole timeout. Then it says hello (`hello`),
/// so the replicas already listening relay their dashboard events to it from then on.
pub fn connect(url: &str, replica: &str, channels: &[String]) -> StoreResult<PgConnection> {
    let mut conn = PgConnection::establish(url).map_err(|e| {
        crate::store::StoreError::unavailable(format!("cannot connect for LISTEN: {e}"))
    })?;
    for channel in channels {
        // Channel names are the constants above and `commands_channel`, never a request's value.
        diesel::sql_query(format!("LISTEN \"{channel}\"")).execute(&mut conn)?;
    }
    diesel::sql_query("SELECT set_config('application_name', $1, false)")
        .bind::<Text, _>(session_name(replica))
        .execute(&mut conn)?;
    hello(&mut conn, replica)?;
    Ok(conn)
}

/// Whether `replica`'s LISTEN connection is open, so that a command handed to it would be
/// heard. On this database only: replicas of another cluster on the same server may have the
/// same ids. Always true on SQLite, where there is one process.
pub fn alive(conn: &mut DbConnection, replica: &str) -> StoreResult<bool> {
    let Some(pg) = as_postgres(conn) else {
        return Ok(true);
    };
    let row: Taken = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
         WHERE application_name = $1 AND datname = current_database()) AS taken",
    )
    .bind::<Text, _>(session_name(replica))
    .get_result(pg)?;
    Ok(row.taken)
}

/// Whether another replica's LISTEN connection is open on this database: while none is,
/// this replica's dashboard events have nobody to go to.
pub fn others_listening(conn: &mut DbConnection, me: &str) -> StoreResult<bool> {
    let Some(pg) = as_postgres(conn) else {
        return Ok(false);
    };
    let row: Taken = diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity \
         WHERE left(application_name, length($1)) = $1 AND application_name <> $2 \
         AND datname = current_database()) AS taken",
    )
    .bind::<Text, _>(session_name(""))
    .bind::<Text, _>(session_name(me))
    .get_result(pg)?;
    Ok(row.taken)
}

/// Tells the replicas listening that `replica` listens too, so they send it their dashboard
/// events from now on: an events batch with no event in it.
fn hello(conn: &mut PgConnection, replica: &str) -> StoreResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(EVENTS_CHANNEL)
        .bind::<Text, _>(replica)
        .execute(conn)?;
    Ok(())
}

#[derive(QueryableByName)]
struct Taken {
    #[diesel(sql_type = Bool)]
    taken: bool,
}

/// Tries the leader's lock without waiting; true when this connection holds it now.
pub fn try_lead(conn: &mut PgConnection) -> StoreResult<bool> {
    let row: Taken = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS taken")
        .bind::<BigInt, _>(LEADER_LOCK)
        .get_result(conn)?;
    Ok(row.taken)
}

/// A round trip, to learn that the connection (and with it the lock) is still there.
pub fn ping(conn: &mut PgConnection) -> StoreResult<()> {
    diesel::sql_query("SELECT 1").execute(conn)?;
    Ok(())
}

/// The notifications that arrived since the last call, as (channel, payload), without
/// waiting for any; an error means the connection is gone.
pub fn notifications(conn: &mut PgConnection) -> StoreResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    for n in conn.notifications_iter() {
        let n = n?;
        out.push((n.channel, n.payload));
    }
    Ok(out)
}

/// Sends `payload` to whoever LISTENs on `channel`, when the transaction commits (at once
/// outside one). Nothing on SQLite.
pub fn notify(conn: &mut DbConnection, channel: &str, payload: &str) -> StoreResult<()> {
    let Some(pg) = as_postgres(conn) else {
        return Ok(());
    };
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(channel)
        .bind::<Text, _>(payload)
        .execute(pg)?;
    Ok(())
}

/// Sends several payloads on `channel`, in their order, with one statement: one round trip
/// and one implicit transaction for a batch of dashboard events (a `BEGIN`, a statement per
/// payload and a `COMMIT` were three round trips for the single event a quiet moment sends).
pub fn notify_all(conn: &mut DbConnection, channel: &str, payloads: &[String]) -> StoreResult<()> {
    use diesel::sql_types::Array;
    let Some(pg) = as_postgres(conn) else {
        return Ok(());
    };
    if payloads.is_empty() {
        return Ok(());
    }
    diesel::sql_query(
        "SELECT pg_notify($1, p) FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n",
    )
    .bind::<Text, _>(channel)
    .bind::<Array<Text>, _>(payloads)
    .execute(pg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_handover_payload_reads_back_whatever_the_id_holds() {
        for id in ["plain", "with\ttab", "1234\tx", ""] {
            for ttl in [None, Some(Duration::from_millis(90_000))] {
                assert_eq!(
                    parse_handover(&handover_payload(id, ttl)),
                    (id.to_owned(), ttl)
                );
            }
        }
        // An older replica sends the bare id.
        assert_eq!(parse_handover("abc"), ("abc".to_owned(), None));
        assert_eq!(parse_handover("x\ty"), ("x\ty".to_owned(), None));
    }
}
