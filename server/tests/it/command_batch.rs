//! `command_batch::apply`, the command writer's commit, against both databases. A group is
//! first written without savepoints; when one of its rows is refused (a duplicate id) or no
//! longer open (a cancel came first), it is written again with savepoints. Either way each
//! change is answered as if it had been written alone, and nothing of a refused row stays.

use protocol::commands::{Command, CommandKind, CommandResult};
use protocol::rest::CommandStatus;
use server::error::ApiError;
use server::store::audit::AuditEntry;
use server::store::command_batch::{apply, Done, NewCommand, Write};
use server::store::commands::{self, Watch};
use server::store::StoreResult;

use crate::common::{add_device, ServerDb};

fn new(device_id: &str, id: &str) -> Write {
    Write::New(Box::new(NewCommand {
        device_id: device_id.to_owned(),
        command: Command::new(id, CommandKind::ForceSync),
        timeout_ms: 30_000,
        issued_by: Some("admin".into()),
        audit: AuditEntry::new("command.dispatch", "ok").target(Some(id.to_owned())),
        online: true,
        watch: Watch::Nothing,
    }))
}

fn complete(id: &str, output: &str) -> Write {
    Write::Complete {
        result: CommandResult::ok(id, output),
        status: CommandStatus::Success,
    }
}

fn run(db: &ServerDb, writes: Vec<Write>) -> Vec<StoreResult<Done>> {
    db.db
        .run_blocking(move |conn| apply(conn, &writes).map_err(ApiError::from))
        .unwrap()
}

fn stored(db: &ServerDb, id: &'static str) -> Option<(CommandStatus, Option<String>)> {
    db.db
        .run_blocking(move |conn| {
            Ok(commands::find_by_id(conn, id)?
                .map(|row| (row.status().unwrap(), Some(row.result().output))))
        })
        .unwrap()
}

fn audit_rows(db: &ServerDb, target: &'static str) -> i64 {
    use diesel::prelude::*;
    use schema::schema::audit_log;
    db.db
        .run_blocking(move |conn| {
            Ok(audit_log::table
                .filter(audit_log::target.eq(target))
                .count()
                .get_result::<i64>(conn)?)
        })
        .unwrap()
}

fn a_group_that_goes_through_is_one_write(db: ServerDb) {
    add_device(&db, "edge-1", "edge-1", None, None, "ONLINE");
    let done = run(&db, vec![new("edge-1", "c1"), new("edge-1", "c2")]);
    assert!(
        done.iter().all(|d| matches!(d, Ok(Done::Stored(None)))),
        "{done:?}"
    );
    let done = run(&db, vec![complete("c1", "one"), complete("c2", "two")]);
    assert!(
        done.iter()
            .all(|d| *d.as_ref().unwrap() == Done::Changed(true)),
        "{done:?}"
    );
    assert_eq!(
        stored(&db, "c1"),
        Some((CommandStatus::Success, Some("one".into())))
    );
    assert_eq!(
        stored(&db, "c2"),
        Some((CommandStatus::Success, Some("two".into())))
    );
}

fn a_duplicate_id_fails_alone(db: ServerDb) {
    add_device(&db, "edge-1", "edge-1", None, None, "ONLINE");
    assert!(matches!(
        run(&db, vec![new("edge-1", "dup")])[0],
        Ok(Done::Stored(None))
    ));
    let done = run(
        &db,
        vec![new("edge-1", "a"), new("edge-1", "dup"), new("edge-1", "b")],
    );
    assert!(matches!(done[0], Ok(Done::Stored(None))), "{done:?}");
    assert!(done[1].is_err(), "the duplicate was stored: {done:?}");
    assert!(matches!(done[2], Ok(Done::Stored(None))), "{done:?}");
    assert_eq!(stored(&db, "a").map(|s| s.0), Some(CommandStatus::Sent));
    assert_eq!(stored(&db, "b").map(|s| s.0), Some(CommandStatus::Sent));
    // The refused row's audit row went with it; the first one stays.
    assert_eq!(audit_rows(&db, "dup"), 1);
    assert_eq!(audit_rows(&db, "a"), 1);
}

fn an_outcome_over_a_final_state_changes_nothing(db: ServerDb) {
    add_device(&db, "edge-1", "edge-1", None, None, "ONLINE");
    run(
        &db,
        vec![new("edge-1", "x"), new("edge-1", "y"), new("edge-1", "z")],
    );
    // `y` ends first (a cancel, say); then a group of three outcomes arrives.
    assert_eq!(
        *run(&db, vec![complete("y", "first")])[0].as_ref().unwrap(),
        Done::Changed(true)
    );
    let done = run(
        &db,
        vec![
            complete("x", "late"),
            complete("y", "late"),
            complete("z", "late"),
        ],
    );
    let changed: Vec<_> = done.into_iter().map(|d| d.unwrap()).collect();
    assert_eq!(
        changed,
        vec![
            Done::Changed(true),
            Done::Changed(false),
            Done::Changed(true)
        ]
    );
    assert_eq!(
        stored(&db, "x"),
        Some((CommandStatus::Success, Some("late".into())))
    );
    assert_eq!(
        stored(&db, "y"),
        Some((CommandStatus::Success, Some("first".into())))
    );
    assert_eq!(
        stored(&db, "z"),
        Some((CommandStatus::Success, Some("late".into())))
    );
}

on_both_backends!(
    a_group_that_goes_through_is_one_write,
    a_duplicate_id_fails_alone,
    an_outcome_over_a_final_state_changes_nothing,
);
