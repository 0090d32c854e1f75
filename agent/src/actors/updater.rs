//! The updater actor: `update_firmware` downloads a release, checks it, and stages it.
//!
//! Order of work, cheapest refusal first: the version (no downgrade unless allowed), the
//! signature (it covers version, hash and size, so it is checked before a byte is fetched),
//! then the download to `<staging dir>/.edge-service-<version>.part`, streamed to disk and
//! hashed as it arrives, resumed with `Range` after a dropped connection. Only a file of the
//! announced size and SHA-256 is synced and renamed to `<staging dir>/edge-service-<version>`;
//! every failure removes the `.part` file. Earlier staged versions stay for rollback. The
//! checks and file names are `firmware.rs`; this file is the download and the actor.
//!
//! A server whose download slots are all taken answers 429 or 503 with `Retry-After`: the
//! updater waits that long (at most a minute at a time) and asks again, for up to an hour in
//! all, without counting it as a failed attempt; waiting its turn is not a fault.
//!
//! A `url` that is a path (`/api/v1/firmware/releases/<id>/artifact`, as the server's deployer
//! sends it) is fetched from the configured server. Installing the staged file (`current`,
//! the trial, the restart) is `install.rs`'s job, run by the command handler after a stage.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use futures_util::StreamExt;
use protocol::commands::CommandProgress;
use protocol::device::DeviceEvent;
use ring::digest;
use tokio::sync::watch;

use crate::actors::store::{GetToken, GetTrust, RaiseFloor, StoreActor};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::firmware::{
    check_floor, check_project, check_signature, check_version, part_path,
    remove_partial_downloads, resolve_url, stage, staged_path, verify_download, Policy, Staged,
    UpdateError, UpdateRequest,
};
use crate::messages::SendEvent;
use protocol::hex::encode as hex;

/// Download attempts after the first before giving up.
const MAX_RETRIES: u32 = 4;
/// How long the server may take to answer a request with its headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the body may stall between two chunks before the connection counts as dropped.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes gathered before one write to disk, so a write is not a blocking call per packet.
const WRITE_CHUNK: usize = 256 * 1024;
/// The longest single wait a busy server's `Retry-After` may ask for.
const MAX_BUSY_WAIT: Duration = Duration::from_secs(60);
/// How long in all a download waits for a free slot before the command fails.
const BUSY_WAIT_LIMIT: Duration = Duration::from_secs(3600);

/// The download's open `.part` file, hash so far and length so far.
struct Sink {
    file: File,
    hash: digest::Context,
    have: u64,
}

impl Sink {
    fn create(path: &Path) -> std::io::Result<Sink> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        Ok(Sink {
            file,
            hash: digest::Context::new(&digest::SHA256),
            have: 0,
        })
    }

    /// Back to zero bytes, for a server that answered a range request with the whole body.
    fn restart(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.hash = digest::Context::new(&digest::SHA256);
        self.have = 0;
        Ok(())
    }
}

/// Writes one gathered chunk off the actor's thread, handing the sink back.
async fn write(mut sink: Sink, buf: Vec<u8>) -> Result<Sink, UpdateError> {
    tokio::task::spawn_blocking(move || {
        sink.file.write_all(&buf)?;
        sink.hash.update(&buf);
        sink.have += buf.len() as u64;
        Ok::<_, std::io::Error>(sink)
    })
    .await
    .map_err(|e| UpdateError::Io(std::io::Error::other(e)))?
    .map_err(UpdateError::Io)
}

/// How one attempt ended, when it did not fail outright.
enum Attempt {
    Complete(Sink),
    /// The connection dropped; what arrived is kept and the next attempt resumes.
    Dropped(Sink, String),
    /// Every download slot is taken: ask again after this long.
    Busy(Sink, Duration),
}

/// The wait a 429 or 503 asks for in `Retry-After` (seconds), when it gives one.
fn retry_after(response: &awc::ClientResponse<impl futures_util::Stream>) -> Option<Duration> {
    let secs: u64 = response
        .headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs.max(1)).min(MAX_BUSY_WAIT))
}

/// The start offset of a `Content-Range: bytes <start>-<end>/<total>` header.
fn content_range_start(value: &str) -> Option<u64> {
    value
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One request: from byte `sink.have` on (a range request when that is not zero), streamed
/// into the sink until the body ends, the connection drops, or more than `size` arrived.
async fn attempt(
    client: &awc::Client,
    request: &UpdateRequest,
    token: &str,
    mut sink: Sink,
    progress: &mut Progress,
) -> Result<Attempt, UpdateError> {
    let mut call = client
        .get(&request.url)
        .timeout(REQUEST_TIMEOUT)
        .bearer_auth(token)
        // Offsets and the hash are of the file's own bytes, so no content coding.
        .insert_header(("Accept-Encoding", "identity"));
    if sink.have > 0 {
        call = call.insert_header(("Range", format!("bytes={}-", sink.have)));
    }
    let mut response = match call.send().await {
        Ok(response) => response,
        Err(e) => return Ok(Attempt::Dropped(sink, crate::http::reason(&e))),
    };
    let status = response.status().as_u16();
    match status {
        200 if sink.have > 0 => {
            // The server ignored the range: its body starts at byte zero.
            sink = tokio::task::spawn_blocking(move || sink.restart().map(|()| sink))
                .await
                .map_err(|e| UpdateError::Io(std::io::Error::other(e)))??;
        }
        200 => {}
        206 => {
            let start = response
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start);
            if start != Some(sink.have) {
                return Err(UpdateError::Download(format!(
                    "asked for bytes from {}, the server sent a range starting at {start:?}",
                    sink.have
                )));
            }
        }
        429 | 503 if retry_after(&response).is_some() => {
            let wait = retry_after(&response).unwrap_or(MAX_BUSY_WAIT);
            return Ok(Attempt::Busy(sink, wait));
        }
        500..=599 => {
            return Ok(Attempt::Dropped(sink, format!("server answered {status}")));
        }
        _ => {
            return Err(UpdateError::Download(format!("server answered {status}")));
        }
    }
    let mut buf = Vec::with_capacity(WRITE_CHUNK);
    loop {
        let next = match tokio::time::timeout(CHUNK_TIMEOUT, response.next()).await {
            Ok(next) => next,
            Err(_) => Some(Err(awc::error::PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no data for 30 s",
            )))),
        };
        match next {
            Some(Ok(bytes)) => {
                if sink.have + (buf.len() + bytes.len()) as u64 > request.size {
                    return Err(UpdateError::SizeMismatch {
                        expected: request.size,
                        got: sink.have + (buf.len() + bytes.len()) as u64,
                    });
                }
                buf.extend_from_slice(&bytes);
                if buf.len() >= WRITE_CHUNK {
                    sink = write(sink, std::mem::take(&mut buf)).await?;
                    progress.report(sink.have);
                }
            }
            Some(Err(e)) => {
                // Keep what did arrive: the next attempt asks for the rest.
                let sink = write(sink, buf).await?;
                // Every byte arrived before the error (a close instead of a clean end): a
                // range request for nothing more would only be refused with 416.
                if sink.have == request.size {
                    return Ok(Attempt::Complete(sink));
                }
                return Ok(Attempt::Dropped(sink, e.to_string()));
            }
            None => {
                let sink = write(sink, buf).await?;
                progress.report(sink.have);
                // A body cut short can end like a whole one (awc does not always report the
                // missing bytes of its Content-Length), so the size decides, not the stream.
                if sink.have < request.size {
                    let reason = format!("the body ended after {} bytes", sink.have);
                    return Ok(Attempt::Dropped(sink, reason));
                }
                return Ok(Attempt::Complete(sink));
            }
        }
    }
}

/// Sends `command_progress` frames, one per whole ten percent.
struct Progress {
    events: Recipient<SendEvent>,
    command_id: String,
    size: u64,
    last: Option<u8>,
}

impl Progress {
    fn report(&mut self, have: u64) {
        // An empty release is complete at once.
        let percent = (have.min(self.size) * 100)
            .checked_div(self.size)
            .map_or(100, |p| p as u8);
        let step = percent / 10 * 10;
        if self.last.is_some_and(|last| last >= step) {
            return;
        }
        self.last = Some(step);
        self.events
            .do_send(SendEvent(DeviceEvent::CommandProgress(CommandProgress {
                command_id: self.command_id.clone(),
                percent: step,
                message: format!("downloaded {have} of {} bytes", self.size),
            })));
    }
}

/// Downloads into the `.part` file with resumes; answers the finished sink.
async fn download(
    client: &awc::Client,
    request: &UpdateRequest,
    token: &str,
    part: &Path,
    progress: &mut Progress,
) -> Result<Sink, UpdateError> {
    let path = part.to_owned();
    let mut sink = tokio::task::spawn_blocking(move || Sink::create(&path))
        .await
        .map_err(|e| UpdateError::Io(std::io::Error::other(e)))??;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
    let mut retries = 0;
    let mut waited = Duration::ZERO;
    loop {
        match attempt(client, request, token, sink, progress).await? {
            Attempt::Complete(done) => return Ok(done),
            Attempt::Busy(kept, wait) => {
                if waited >= BUSY_WAIT_LIMIT {
                    return Err(UpdateError::Download(format!(
                        "the server had no free download slot for {} s",
                        waited.as_secs()
                    )));
                }
                tracing::info!(
                    wait_secs = wait.as_secs(),
                    "server's download slots are taken; waiting for a turn"
                );
                waited += wait;
                sink = kept;
                tokio::time::sleep(wait).await;
            }
            Attempt::Dropped(kept, reason) => {
                if retries == MAX_RETRIES {
                    return Err(UpdateError::Download(format!(
                        "gave up after {} attempts: {reason}",
                        retries + 1
                    )));
                }
                retries += 1;
                tracing::warn!(have = kept.have, %reason, "firmware download interrupted; resuming");
                sink = kept;
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Everything after the checks: download, verify, stage. The `.part` file is removed on
/// every failure.
async fn fetch_and_stage(
    client: awc::Client,
    policy: Policy,
    request: UpdateRequest,
    token: String,
    events: Recipient<SendEvent>,
) -> Result<(PathBuf, String), UpdateError> {
    let dir = policy.staging_dir.clone();
    tokio::task::spawn_blocking(move || std::fs::create_dir_all(dir))
        .await
        .map_err(|e| UpdateError::Io(std::io::Error::other(e)))??;
    let part = part_path(&policy.staging_dir, &request.version);
    let staged = staged_path(&policy.staging_dir, &request.version);
    let mut progress = Progress {
        events,
        command_id: request.command_id.clone(),
        size: request.size,
        last: None,
    };
    let outcome = async {
        let sink = download(&client, &request, &token, &part, &mut progress).await?;
        let got = hex(sink.hash.finish().as_ref());
        verify_download(&request, sink.have, &got)?;
        drop(sink.file);
        let (from, to) = (part.clone(), staged.clone());
        tokio::task::spawn_blocking(move || stage(&from, &to))
            .await
            .map_err(|e| UpdateError::Io(std::io::Error::other(e)))??;
        Ok::<_, UpdateError>(got)
    }
    .await;
    match outcome {
        Ok(got) => Ok((staged, got)),
        Err(e) => {
            // A file-system call, so it runs off the event loop like every other one here.
            let path = part.clone();
            let removed = tokio::task::spawn_blocking(move || std::fs::remove_file(&path))
                .await
                .unwrap_or_else(|join| Err(std::io::Error::other(join)));
            if let Err(rm) = removed {
                if rm.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %part.display(), error = %rm, "partial firmware file not removed");
                }
            }
            Err(e)
        }
    }
}

/// Stages one release; answers where.
#[derive(Message)]
#[rtype(result = "Result<Staged, UpdateError>")]
pub struct StageRelease(pub UpdateRequest);

/// Runs one update at a time, so two commands never write the same `.part` file.
pub struct Updater {
    store: Addr<StoreActor>,
    events: Recipient<SendEvent>,
    config: watch::Receiver<Config>,
    client: awc::Client,
    /// The firmware version of this process.
    running: String,
}

impl Updater {
    pub fn new(
        store: Addr<StoreActor>,
        events: Recipient<SendEvent>,
        config: watch::Receiver<Config>,
        running: String,
    ) -> Self {
        Updater {
            store,
            events,
            config,
            running,
            // No overall timeout: a large release may take long; stalls are caught per chunk.
            client: crate::http::client(None),
        }
    }
}

impl Actor for Updater {
    type Context = Context<Self>;

    /// Runs before the first message (`ctx.wait` holds the mailbox until it is done), so no
    /// download of this run can be removed; the directory walk runs on a blocking thread.
    fn started(&mut self, ctx: &mut Self::Context) {
        let dir = self.config.borrow().firmware_staging_dir.clone();
        let walk = dir.clone();
        let cleaned = tokio::task::spawn_blocking(move || remove_partial_downloads(&walk));
        ctx.wait(cleaned.into_actor(self).map(move |outcome, _, _| match outcome {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                removed = n,
                "partial firmware downloads of an earlier run removed"
            ),
            Ok(Err(e)) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot clean the staging directory")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot clean the staging directory")
            }
        }));
    }
}

impl Handler<StageRelease> for Updater {
    type Result = AtomicResponse<Self, Result<Staged, UpdateError>>;

    fn handle(
        &mut self,
        StageRelease(mut request): StageRelease,
        _ctx: &mut Self::Context,
    ) -> Self::Result {
        let config = self.config.borrow().clone();
        let running = self.running.clone();
        let store = self.store.clone();
        let events = self.events.clone();
        let client = self.client.clone();
        let work = async move {
            let trust = match store.send(GetTrust).await {
                Ok(Ok(trust)) => trust,
                Ok(Err(e)) => {
                    return Err(UpdateError::Download(format!(
                        "trust state unavailable: {e}"
                    )))
                }
                Err(e) => return Err(UpdateError::Download(format!("store unavailable: {e}"))),
            };
            let policy = Policy::from_config(&config, &running, &trust);
            check_project(&request)?;
            request.url = resolve_url(&policy.server_url, &request.url)?;
            let verified = check_signature(&policy, &request, Utc::now())?;
            check_version(&policy, &request.version, request.allow_downgrade, verified)?;
            check_floor(&policy, &request, verified)?;
            let token = match store.send(GetToken).await {
                Ok(Ok(Some(token))) => token,
                Ok(Ok(None)) => {
                    return Err(UpdateError::Download("no device token yet".into()));
                }
                Ok(Err(e)) => return Err(UpdateError::Download(format!("token unavailable: {e}"))),
                Err(e) => return Err(UpdateError::Download(format!("store unavailable: {e}"))),
            };
            let size = request.size;
            let project = request.project.clone();
            let (path, sha256) = fetch_and_stage(client, policy, request, token, events).await?;
            // Only a floor a trusted key signed is kept; it is raised once the release is
            // staged, so a refused or broken download never moves it.
            if verified.verified && verified.floor > 0 {
                let raised = store.send(RaiseFloor {
                    project,
                    floor: verified.floor,
                });
                match raised.await {
                    Ok(Ok(floor)) => tracing::info!(floor, "firmware security floor accepted"),
                    Ok(Err(e)) => tracing::error!("security floor not stored: {e}"),
                    Err(e) => tracing::error!("security floor not stored: {e}"),
                }
            }
            Ok(Staged {
                path,
                sha256,
                size,
                signature_verified: verified.verified,
            })
        };
        AtomicResponse::new(Box::pin(work.into_actor(self)))
    }
}

#[cfg(test)]
mod tests;
