//! The label printer: each closed batch's and pallet's label, in order, to a raw TCP printer.
//!
//! Every label that reaches the printer is reported as a `print` event whose `code` is the
//! batch or pallet id.
//!
//! Labels are queued on disk by the offline queue in the transaction that closes their batch
//! or pallet (`store/labels.rs`); production only tells this actor that there is something
//! to print (`PrintQueued`) and never waits for it, so a printer that is off or slow cannot
//! hold up scanning. One pass runs at a time: it renders the oldest label with the template,
//! opens a connection, writes the bytes and closes it, each step under a timeout, and only
//! after the write completed reports the `print` event and removes the label. A failed pass
//! is retried with the jittered backoff, from the same label, so labels go out in order;
//! an outage is reported once as a `warning` alert (not an error: a printer that is off
//! says nothing about the agent's own health, so it must not pause a firmware rollout).
//!
//! A raw port-9100 printer acknowledges nothing, so "printed" means the printer's TCP stack
//! took every byte and the connection closed cleanly. A crash between that and the removal
//! prints the label once more after the restart; a label is never lost.

use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, SecondsFormat, Utc};
use protocol::device::{AlertEvent, DeviceEvent, PrintEvent};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::actors::queue::{GetLabelCount, NextLabels, QueueActor, RemoveLabel};
use crate::backoff::Backoff;
use crate::config::{Config, PrinterConfig};
use crate::label::{Field, Values};
use crate::messages::SendEvent;
use crate::store::labels::LabelJob;

/// How long a connection to the printer may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one label's bytes may take to be written and the connection closed.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failure; a label printer is usually on the same switch, so
/// retries start soon and stay frequent (at most `RETRY_CAP` apart).
const RETRY_BASE: Duration = Duration::from_millis(500);
const RETRY_CAP: Duration = Duration::from_secs(10);
/// Labels read from the queue at a time.
const FETCH: usize = 32;

/// Labels were queued: print them, unless a retry is already scheduled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PrintQueued;

pub struct Printer {
    queue: Addr<QueueActor>,
    events: Recipient<SendEvent>,
    config: watch::Receiver<Config>,
    printer: PrinterConfig,
    backoff: Backoff,
    running: bool,
    /// Labels were queued while a pass ran; another pass follows it.
    again: bool,
    retry: Option<SpawnHandle>,
    /// The last pass failed at the printer; set until one succeeds.
    unreachable: bool,
}

impl Printer {
    pub fn new(
        queue: Addr<QueueActor>,
        events: Recipient<SendEvent>,
        config: watch::Receiver<Config>,
        printer: PrinterConfig,
    ) -> Self {
        Printer {
            queue,
            events,
            config,
            printer,
            backoff: Backoff::new(RETRY_BASE, RETRY_CAP),
            running: false,
            again: false,
            retry: None,
            unreachable: false,
        }
    }

    fn start_pass(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.again = true;
            return;
        }
        self.running = true;
        self.again = false;
        let pass = print_all(
            self.queue.clone(),
            self.events.clone(),
            self.printer.clone(),
            self.config.borrow().clone(),
        );
        ctx.spawn(pass.into_actor(self).map(|report, act, ctx| {
            act.running = false;
            act.finish(report, ctx);
        }));
    }

    fn finish(&mut self, report: PassReport, ctx: &mut Context<Self>) {
        let addr = &self.printer.addr;
        let Some(error) = report.error else {
            self.backoff.reset();
            if self.unreachable {
                self.unreachable = false;
                tracing::info!(printer = %addr, printed = report.printed, "printer answers again");
            }
            if self.again {
                self.start_pass(ctx);
            }
            return;
        };
        let delay = self.backoff.next_delay();
        match &error {
            PassError::Printer(e) if !self.unreachable => {
                self.unreachable = true;
                let message =
                    format!("printer {addr} does not take labels ({e}); labels wait in the queue");
                tracing::warn!("{message}");
                self.events
                    .do_send(SendEvent(DeviceEvent::Alert(AlertEvent {
                        severity: "warning".into(),
                        message,
                        ts: Utc::now(),
                    })));
            }
            PassError::Printer(e) => tracing::debug!(printer = %addr, "printer still down: {e}"),
            PassError::Queue(e) => tracing::error!("label queue: {e}"),
        }
        tracing::debug!("next print attempt in {:.1} s", delay.as_secs_f64());
        self.retry = Some(ctx.run_later(delay, |act, ctx| {
            act.retry = None;
            act.start_pass(ctx);
        }));
    }
}

impl Actor for Printer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let addr = self.printer.addr.clone();
        let queue = self.queue.clone();
        ctx.spawn(
            async move {
                let waiting = queue.send(GetLabelCount).await.ok().and_then(Result::ok);
                tracing::info!(printer = %addr, waiting = ?waiting, "label printer");
            }
            .into_actor(self),
        );
        // Labels left over from before a restart go out first.
        self.start_pass(ctx);
    }
}

impl Handler<PrintQueued> for Printer {
    type Result = ();

    fn handle(&mut self, _: PrintQueued, ctx: &mut Self::Context) {
        // During a backoff the scheduled retry prints these too; trying at every closed
        // batch would only hammer a printer that is off.
        if self.retry.is_none() {
            self.start_pass(ctx);
        }
    }
}

#[derive(Debug)]
enum PassError {
    /// The printer could not be reached or did not take the bytes.
    Printer(String),
    /// The label queue could not be read or updated.
    Queue(String),
}

#[derive(Debug, Default)]
struct PassReport {
    printed: u64,
    error: Option<PassError>,
}

/// Prints queued labels until the queue is empty or a step fails.
async fn print_all(
    queue: Addr<QueueActor>,
    events: Recipient<SendEvent>,
    printer: PrinterConfig,
    config: Config,
) -> PassReport {
    let mut report = PassReport::default();
    loop {
        let labels = match queue.send(NextLabels { limit: FETCH }).await {
            Ok(Ok(labels)) => labels,
            Ok(Err(e)) => return report.failed(PassError::Queue(e.to_string())),
            Err(e) => return report.failed(PassError::Queue(e.to_string())),
        };
        if labels.is_empty() {
            return report;
        }
        for label in labels {
            let values = LabelValues {
                job: &label.job,
                line: config.production_line_id.as_deref(),
                company: config.company_id.as_deref(),
                device: &config.device_id,
            };
            let bytes = printer.template.render(&values);
            if let Err(e) = send_label(&printer.addr, &bytes).await {
                return report.failed(PassError::Printer(e));
            }
            report.printed += 1;
            tracing::debug!(kind = label.job.kind.as_str(), code = %label.job.code, "label printed");
            events.do_send(SendEvent(DeviceEvent::Print(PrintEvent {
                code: label.job.code.clone(),
                ts: Utc::now(),
            })));
            match queue.send(RemoveLabel(label.seq)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return report.failed(PassError::Queue(e.to_string())),
                Err(e) => return report.failed(PassError::Queue(e.to_string())),
            }
        }
    }
}

impl PassReport {
    fn failed(mut self, error: PassError) -> PassReport {
        self.error = Some(error);
        self
    }
}

/// Writes one label to the printer at `addr` (`host:port`, resolved now) on a connection of
/// its own, and closes it; an error says which step failed, in one line.
pub async fn send_label(addr: &str, bytes: &[u8]) -> Result<(), String> {
    let mut stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| {
            format!(
                "the label was not taken within {} s",
                WRITE_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("write failed: {e}"))
}

/// A queued label's values, with the device's own for `{line}`, `{company}`, `{device}`.
struct LabelValues<'a> {
    job: &'a LabelJob,
    line: Option<&'a str>,
    company: Option<&'a str>,
    device: &'a str,
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Values for LabelValues<'_> {
    fn value(&self, field: Field) -> Option<String> {
        let job = self.job;
        match field {
            Field::Kind => Some(job.kind.as_str().into()),
            Field::Id => Some(job.code.clone()),
            Field::Count => Some(job.count.to_string()),
            Field::OpenedAt => Some(time(job.opened_at)),
            Field::ClosedAt => Some(time(job.closed_at)),
            Field::Pallet => job.pallet_id.clone(),
            Field::Line => self.line.map(str::to_owned),
            Field::Company => self.company.map(str::to_owned),
            Field::Device => Some(self.device.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::label::LabelTemplate;
    use crate::store::labels::LabelKind;

    #[test]
    fn a_label_shows_the_batch_and_the_device() {
        let closed_at = DateTime::parse_from_rfc3339("2024-05-01T10:00:00.5Z")
            .unwrap()
            .with_timezone(&Utc);
        let job = LabelJob {
            kind: LabelKind::Batch,
            code: "B-1".into(),
            count: 42,
            opened_at: closed_at - chrono::Duration::minutes(90),
            closed_at,
            pallet_id: Some("P-9".into()),
        };
        let values = LabelValues {
            job: &job,
            line: Some("line-3"),
            company: None,
            device: "edge-1",
        };
        let template = LabelTemplate::parse(
            "{kind}|{id}|{count}|{openedAt}|{closedAt}|{pallet}|{line}|{company}|{device}",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(template.render(&values)).unwrap(),
            "batch|B-1|42|2024-05-01T08:30:00Z|2024-05-01T10:00:00Z|P-9|line-3||edge-1"
        );
    }

    #[actix::test]
    async fn a_label_is_written_whole_and_the_connection_closed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let reader = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            socket.read_to_end(&mut got).await.unwrap();
            got
        });
        let label = vec![b'z'; 200_000];
        send_label(&addr, &label).await.unwrap();
        assert_eq!(reader.await.unwrap(), label);
    }

    #[actix::test]
    async fn a_printer_that_is_off_is_an_error_at_once() {
        let addr = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().to_string()
        };
        let started = std::time::Instant::now();
        let err = send_label(&addr, b"^XA^XZ").await.unwrap_err();
        assert!(err.starts_with("cannot connect:"), "{err}");
        assert!(started.elapsed() < CONNECT_TIMEOUT);
    }
}
