//! Production input: the scanner's TCP line listener and the actor that turns lines into
//! queued records and `scan` events.
//!
//! A scanner connection is read in chunks; the complete lines of a chunk go to the actor as
//! one `ScanLines`, which commits them in one transaction before any `scan` event leaves, and
//! the connection reads on only after that commit. Under load this groups many codes per
//! fsync; the socket's own flow control holds a fast scanner back while the disk catches up.
//!
//! Control lines: `CLOSE_BATCH` closes the open batch, `CLOSE_PALLET` the open batch and
//! pallet (the command barcodes of a packing station).
//!
//! With a printer configured, the same transaction queues a label for each batch and pallet
//! that closes; the printer is only told that labels are waiting (`PrintQueued`), so
//! scanning never waits on it.

use std::net::SocketAddr;

use actix::prelude::*;
use protocol::device::{AlertEvent, DeviceEvent, ScanEvent};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::actors::drain::{Drain, Kick};
use crate::actors::printer::{PrintQueued, Printer};
use crate::actors::queue::{Enqueue, QueueActor};
use crate::config::Config;
use crate::gs1;
use crate::messages::SendEvent;
use crate::store::labels::MAX_QUEUED_LABELS;
use crate::store::queue::{Rules, ScanItem, ScanOutcome};

/// Longest line kept; the rest of a longer line is dropped and the line counts as invalid.
pub const MAX_LINE: usize = 4096;
/// Bytes read from a scanner socket at a time.
const READ_CHUNK: usize = 64 * 1024;

/// Lines read from a scanner, in order.
#[derive(Message)]
#[rtype(result = "Result<ScanOutcome, String>")]
pub struct ScanLines(pub Vec<String>);

pub struct Production {
    queue: Addr<QueueActor>,
    events: Recipient<SendEvent>,
    drain: Addr<Drain>,
    /// Present exactly when a printer is configured.
    printer: Option<Addr<Printer>>,
    config: watch::Receiver<Config>,
}

impl Production {
    pub fn new(
        queue: Addr<QueueActor>,
        events: Recipient<SendEvent>,
        drain: Addr<Drain>,
        printer: Option<Addr<Printer>>,
        config: watch::Receiver<Config>,
    ) -> Self {
        Production {
            queue,
            events,
            drain,
            printer,
            config,
        }
    }
}

impl Actor for Production {
    type Context = Context<Self>;
}

/// What a line is.
enum Line {
    Item(ScanItem),
    Invalid(String, String),
}

fn classify(line: &str) -> Option<Line> {
    let trimmed = line.trim();
    match trimmed {
        "" => None,
        "CLOSE_BATCH" => Some(Line::Item(ScanItem::CloseBatch)),
        "CLOSE_PALLET" => Some(Line::Item(ScanItem::ClosePallet)),
        _ => Some(match gs1::parse(line) {
            Ok(code) => Line::Item(ScanItem::Code(code)),
            Err(e) => Line::Invalid(trimmed.to_owned(), e.to_string()),
        }),
    }
}

impl Handler<ScanLines> for Production {
    type Result = ResponseFuture<Result<ScanOutcome, String>>;

    fn handle(&mut self, ScanLines(lines): ScanLines, _: &mut Self::Context) -> Self::Result {
        let config = self.config.borrow().clone();
        let queue = self.queue.clone();
        let events = self.events.clone();
        let drain = self.drain.clone();
        let printer = self.printer.clone();
        Box::pin(async move {
            let classified: Vec<Line> = lines.iter().filter_map(|l| classify(l)).collect();
            let items: Vec<ScanItem> = classified
                .iter()
                .filter_map(|l| match l {
                    Line::Item(item) => Some(item.clone()),
                    Line::Invalid(..) => None,
                })
                .collect();
            let Some(company_id) = config.company_id.clone() else {
                return Err("no company_id is set; codes cannot be queued".into());
            };
            let rules = Rules {
                company_id,
                batch_size: config.batch_size,
                pallet_size: config.pallet_size,
                print_labels: printer.is_some(),
            };
            let outcome = if items.is_empty() {
                ScanOutcome::default()
            } else {
                let answer = queue.send(Enqueue { items, rules }).await;
                match answer {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(e)) => {
                        let message = format!("scans could not be stored: {e}");
                        tracing::error!("{message}");
                        alert(&events, "critical", message.clone());
                        return Err(message);
                    }
                    Err(e) => return Err(format!("store unavailable: {e}")),
                }
            };
            // Only now, with the records on disk, do the scans become visible anywhere.
            let now = chrono::Utc::now();
            let accepted = outcome.refused == 0;
            for line in &classified {
                let (code, valid) = match line {
                    Line::Item(ScanItem::Code(code)) => (code.code.clone(), accepted),
                    Line::Item(_) => continue,
                    Line::Invalid(code, reason) => {
                        tracing::debug!(%code, %reason, "invalid code scanned");
                        (code.clone(), false)
                    }
                };
                events.do_send(SendEvent(DeviceEvent::Scan(ScanEvent {
                    code,
                    valid,
                    ts: now,
                })));
            }
            if outcome.refused > 0 {
                let reason = outcome
                    .disabled_reason
                    .as_deref()
                    .unwrap_or("no reason given");
                let message = format!(
                    "{} scan(s) refused: production is disabled ({reason})",
                    outcome.refused
                );
                tracing::warn!("{message}");
                alert(&events, "warning", message);
            }
            if outcome.records > 0 {
                drain.do_send(Kick);
            }
            if let Some(printer) = printer.as_ref().filter(|_| outcome.labels > 0) {
                printer.do_send(PrintQueued);
            }
            if outcome.labels_refused > 0 {
                // Refused rather than dropping the oldest: the labels that wait keep their
                // order, and the operator learns at once which closings got no label.
                let message = format!(
                    "{} label(s) not queued: the printer's queue already holds \
                     {MAX_QUEUED_LABELS} labels",
                    outcome.labels_refused
                );
                tracing::warn!("{message}");
                alert(&events, "warning", message);
            }
            Ok(outcome)
        })
    }
}

fn alert(events: &Recipient<SendEvent>, severity: &str, message: String) {
    events.do_send(SendEvent(DeviceEvent::Alert(AlertEvent {
        severity: severity.into(),
        message,
        ts: chrono::Utc::now(),
    })));
}

/// Binds the scanner listener; the caller reports the address it got.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Accepts scanner connections for the life of the process.
pub async fn serve(listener: TcpListener, production: Addr<Production>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tracing::info!(%peer, "scanner connected");
                actix::spawn(read_scanner(stream, peer, production.clone()));
            }
            Err(e) => {
                // Out of file descriptors, for one; waiting beats spinning.
                tracing::warn!("scanner accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
    }
}

/// Splits a scanner's byte stream into lines; see the module comment.
async fn read_scanner(mut stream: TcpStream, peer: SocketAddr, production: Addr<Production>) {
    let mut splitter = LineSplitter::default();
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%peer, "scanner read failed: {e}");
                0
            }
        };
        let lines = if n == 0 {
            splitter.finish()
        } else {
            splitter.push(&buf[..n])
        };
        if !lines.is_empty() {
            match production.send(ScanLines(lines)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(%peer, "{e}"),
                Err(e) => {
                    tracing::error!(%peer, "production actor unavailable: {e}");
                    return;
                }
            }
        }
        if n == 0 {
            tracing::info!(%peer, "scanner disconnected");
            return;
        }
    }
}

/// Cuts bytes into lines at `\n` (dropping `\r`), bounding each line at `MAX_LINE`.
#[derive(Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
    overlong: bool,
}

impl LineSplitter {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(self.take());
            } else if self.partial.len() < MAX_LINE {
                self.partial.push(b);
            } else {
                self.overlong = true;
            }
        }
        lines
    }

    /// The last line of a stream that ended without a newline.
    pub fn finish(&mut self) -> Vec<String> {
        if self.partial.is_empty() && !self.overlong {
            Vec::new()
        } else {
            vec![self.take()]
        }
    }

    fn take(&mut self) -> String {
        let mut line = String::from_utf8_lossy(&self.partial).into_owned();
        if line.ends_with('\r') {
            line.pop();
        }
        if std::mem::take(&mut self.overlong) {
            // Kept short and marked, so it is reported invalid rather than cut into a code.
            line = format!("<line longer than {MAX_LINE} bytes>");
        }
        self.partial.clear();
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_across_chunks_and_bounded() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"0104").is_empty());
        assert_eq!(s.push(b"00\r\nab\ncd"), ["010400", "ab"]);
        assert_eq!(s.finish(), ["cd"]);
        assert!(s.finish().is_empty());
        let long = vec![b'1'; MAX_LINE + 10];
        let lines = s.push(&[&long[..], b"\nok\n"].concat());
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("<line longer"));
        assert_eq!(lines[1], "ok");
        assert!(matches!(classify(&lines[0]), Some(Line::Invalid(..))));
    }

    #[test]
    fn control_lines_and_codes_are_told_apart() {
        assert!(classify("  ").is_none());
        assert!(matches!(
            classify("CLOSE_BATCH"),
            Some(Line::Item(ScanItem::CloseBatch))
        ));
        assert!(matches!(
            classify("CLOSE_PALLET\r"),
            Some(Line::Item(ScanItem::ClosePallet))
        ));
        assert!(matches!(
            classify("010400638133393121X"),
            Some(Line::Item(ScanItem::Code(_)))
        ));
        assert!(matches!(classify("garbage"), Some(Line::Invalid(..))));
    }
}
