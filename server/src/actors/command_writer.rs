//! `CommandWriter`: the one writer of command state changes per database, on its own thread.
//!
//! Each command used to cost its own transactions (stored, sent, answered), each its own
//! commit and fsync. The writer takes the changes of every command in flight from a bounded
//! queue, gathers what queued up while its previous commit ran, and writes them together
//! (`store::command_batch::apply`): one
//! commit for the group, multi-row statements inside it. A caller is answered only after the
//! commit that holds its change, so nothing is acknowledged (a REST answer, a frame sent to a
//! device, a result taken) before it is durable; when the commit fails, every change in it is
//! answered with the error and none was stored.
//!
//! The thread holds one pooled connection while there is work and gives it back after
//! `IDLE` without any, or after an error (the connection may be the broken part). A full
//! queue is refused at once with 503 `server_busy`, as `Db::run` does.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

use chrono::{DateTime, Utc};
use protocol::commands::CommandResult;
use protocol::rest::CommandStatus;
use tokio::sync::oneshot;

use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::store::command_batch::{self, Done, NewCommand, Write};
use crate::store::commands::Watch;

/// Most changes in one commit.
pub const MAX_GROUP: usize = 2_000;
/// Changes that may wait for the writer before new ones are refused.
pub const QUEUE: usize = 8_192;
/// The connection is given back to the pool after this long without work.
const IDLE: Duration = Duration::from_secs(5);

struct Job {
    write: Write,
    reply: oneshot::Sender<ApiResult<Done>>,
}

/// The sending side; the thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct CommandWriter {
    jobs: Option<SyncSender<Job>>,
}

impl CommandWriter {
    /// Starts the writer's thread on `db`. A thread that cannot start is logged, and every
    /// change is then refused as an internal error rather than written some other way.
    pub fn start(db: Db) -> CommandWriter {
        let (jobs, queue) = sync_channel::<Job>(QUEUE);
        let started = std::thread::Builder::new()
            .name("command-writer".into())
            .spawn(move || run(&db, &queue));
        match started {
            Ok(_) => CommandWriter { jobs: Some(jobs) },
            Err(e) => {
                tracing::error!("the command writer's thread did not start: {e}");
                CommandWriter { jobs: None }
            }
        }
    }

    async fn write(&self, write: Write) -> ApiResult<Done> {
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| ApiError::internal("the command writer is not running"))?;
        let (reply, answer) = oneshot::channel();
        jobs.try_send(Job { write, reply }).map_err(|_| {
            crate::metrics::db_job_refused();
            ApiError::busy(1, "the database is busy; try again shortly")
        })?;
        answer
            .await
            .map_err(|_| ApiError::internal("the command writer ended without an answer"))?
    }

    /// `commands::store_new`: the watched id, read before the command could act.
    pub async fn store_new(&self, new: NewCommand) -> ApiResult<Option<String>> {
        match self.write(Write::New(Box::new(new))).await? {
            Done::Stored(previous) => Ok(previous),
            other => Err(unexpected(other)),
        }
    }

    /// `commands::send_stored`.
    pub async fn send_stored(
        &self,
        id: String,
        device_id: String,
        watch: Watch,
    ) -> ApiResult<Option<Option<String>>> {
        match self
            .write(Write::Send {
                id,
                device_id,
                watch,
            })
            .await?
        {
            Done::Sent(previous) => Ok(previous),
            other => Err(unexpected(other)),
        }
    }

    /// `commands::mark_queued`.
    pub async fn mark_queued(&self, id: String, expires_at: DateTime<Utc>) -> ApiResult<bool> {
        self.changed(Write::Queue { id, expires_at }).await
    }

    /// `commands::complete`.
    pub async fn complete(&self, result: CommandResult, status: CommandStatus) -> ApiResult<bool> {
        self.changed(Write::Complete { result, status }).await
    }

    /// `commands::start_confirming`.
    pub async fn start_confirming(
        &self,
        result: CommandResult,
        previous: Option<String>,
        deadline: DateTime<Utc>,
    ) -> ApiResult<bool> {
        self.changed(Write::Confirm {
            result,
            previous,
            deadline,
        })
        .await
    }

    /// `leases::notify`, delivered when the group's commit is: after every change queued
    /// before it.
    pub async fn notify(&self, channel: String, payload: String) -> ApiResult<bool> {
        self.changed(Write::Notify { channel, payload }).await
    }

    async fn changed(&self, write: Write) -> ApiResult<bool> {
        match self.write(write).await? {
            Done::Changed(changed) => Ok(changed),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(done: Done) -> ApiError {
    ApiError::internal(format!("the command writer answered {done:?}"))
}

type Connection = r2d2::PooledConnection<crate::store::db::DbManager>;

fn run(db: &Db, queue: &Receiver<Job>) {
    let mut conn: Option<Connection> = None;
    loop {
        let first = match queue.recv_timeout(IDLE) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                conn = None;
                match queue.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let group = gather(first, queue);
        let (writes, replies): (Vec<Write>, Vec<_>) =
            group.into_iter().map(|j| (j.write, j.reply)).unzip();
        let outcome = catch_unwind(AssertUnwindSafe(|| commit(db, &mut conn, &writes)))
            .unwrap_or_else(|_| {
                tracing::error!("the command writer's commit panicked");
                Err(ApiError::internal("the command writer's commit panicked"))
            });
        match outcome {
            Ok(done) => {
                for (reply, done) in replies.into_iter().zip(done) {
                    // A caller that went away (a dropped request) needs no answer.
                    let _ = reply.send(done.map_err(ApiError::from));
                }
            }
            Err(e) => {
                // The connection may be what failed: it is checked (and dropped by the pool
                // if it no longer answers), and the next group takes one from the pool.
                if let Some(c) = conn.as_mut() {
                    crate::store::db::check_after_error(c);
                }
                conn = None;
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// The first job plus what queued up behind it while the previous commit ran. The writer
/// does not wait for more: a commit costs a disk flush (0.6–1.5 ms here), so under load each
/// commit's duration gathers the next group by itself, and when nothing queued up the writer
/// has time to spare, where waiting would only add the window to every command's latency (it
/// waits twice per command: stored, then answered).
fn gather(first: Job, queue: &Receiver<Job>) -> Vec<Job> {
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match queue.try_recv() {
            Ok(job) => group.push(job),
            Err(_) => break,
        }
    }
    group
}

fn commit(
    db: &Db,
    conn: &mut Option<Connection>,
    writes: &[Write],
) -> ApiResult<Vec<crate::store::StoreResult<Done>>> {
    let conn = match conn {
        Some(c) => c,
        None => conn.insert(db.pool.get()?),
    };
    Ok(command_batch::apply(conn, writes)?)
}
