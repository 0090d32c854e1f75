//! Telemetry on its way to the server: queued, coalesced into `batch` frames and paced under
//! the server's limits, so that no honest backlog (a scanner flushing thousands of codes at
//! once) can trip the server's flood protection.
//!
//! The agent uses half of the server's rates and a quarter of its bursts
//! (`protocol::limits`): the server's buckets start full with each session, as the agent's
//! do, so a sender that never exceeds the smaller buckets never exceeds the larger ones,
//! even when the network delivers a few frames in a clump. Command results and progress do
//! not queue here (nothing may wait behind a backlog); they are sent at once and only spend
//! from the frame bucket, which then holds telemetry back a little longer.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use protocol::device::TelemetryEvent;
use protocol::limits::{self, MAX_BATCH_EVENTS, MAX_TEXT_FRAME};

/// Frames per second the agent sends at most, on average, and the burst it may save up.
pub const FRAME_RATE: f64 = limits::FRAME_RATE_PER_SEC / 2.0;
pub const FRAME_BURST: f64 = limits::FRAME_BURST / 4.0;
/// Telemetry events per second the agent sends at most, and the burst it may save up.
pub const EVENT_RATE: f64 = limits::EVENT_RATE_PER_SEC / 2.0;
pub const EVENT_BURST: f64 = limits::EVENT_BURST / 4.0;
/// Most events waiting; past it the oldest are dropped and counted. Telemetry only shows
/// what happened (records travel through the queue and the sync route), and a producer
/// faster than `EVENT_RATE` for this long must not take the agent's memory.
pub const MAX_QUEUED: usize = 50_000;
/// How long a telemetry event may wait for others to share its frame.
pub const COALESCE_DELAY: Duration = Duration::from_millis(10);

/// `{"type":"batch","events":[` and `]}`, around the events and their commas.
const BATCH_ENVELOPE: usize = r#"{"type":"batch","events":[]}"#.len();

/// A token bucket that may go into debt for frames that cannot wait.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn full(rate: f64, burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            refilled: now,
            rate,
            burst,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
    }

    /// How long until `n` tokens are there (zero if they are).
    fn wait_for(&self, n: f64) -> Duration {
        if self.tokens >= n {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n - self.tokens) / self.rate)
        }
    }
}

/// What to do next.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Nothing is waiting.
    Empty,
    /// Send this text frame now.
    Frame(String),
    /// Pacing holds the rest back for this long.
    Wait(Duration),
}

#[derive(Debug)]
pub struct Outbox {
    queue: VecDeque<String>,
    frames: Bucket,
    events: Bucket,
    /// Events dropped since the last `take_dropped`: the queue was full, or one event alone
    /// was larger than a frame may be.
    dropped: u64,
}

impl Outbox {
    pub fn new(now: Instant) -> Self {
        Outbox {
            queue: VecDeque::new(),
            frames: Bucket::full(FRAME_RATE, FRAME_BURST, now),
            events: Bucket::full(EVENT_RATE, EVENT_BURST, now),
            dropped: 0,
        }
    }

    /// A new session: the server's buckets start full again, and so do ours. Whatever was
    /// still waiting is dropped, as telemetry is when there is no session; answers how much.
    pub fn reset(&mut self, now: Instant) -> usize {
        let waiting = self.queue.len();
        *self = Outbox {
            dropped: self.dropped,
            ..Outbox::new(now)
        };
        waiting
    }

    /// Queues a telemetry event, already encoded (each event is encoded once, and its size
    /// is what packing needs).
    pub fn push(&mut self, event: &TelemetryEvent) {
        let text = match serde_json::to_string(event) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!("cannot encode a telemetry event: {e}");
                return;
            }
        };
        if text.len() > MAX_TEXT_FRAME {
            // The server would refuse it (and count the refusal against this device).
            self.dropped += 1;
            return;
        }
        if self.queue.len() >= MAX_QUEUED {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(text);
    }

    /// A frame that was sent without waiting (a command result or progress): it still
    /// counts against the server's frame rate, so telemetry waits for it.
    pub fn spend_frame(&mut self, now: Instant) {
        self.frames.refill(now);
        self.frames.tokens = (self.frames.tokens - 1.0).max(-self.frames.burst);
    }

    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Events waiting.
    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    /// The next frame, if pacing allows one now: a single event as the contract's frame of
    /// its own, several as one `batch` of at most `MAX_BATCH_EVENTS` events and
    /// `MAX_TEXT_FRAME` bytes.
    pub fn next(&mut self, now: Instant) -> Next {
        if self.queue.is_empty() {
            return Next::Empty;
        }
        self.frames.refill(now);
        self.events.refill(now);
        // Waiting for a full batch's worth of events (rather than sending whatever trickled
        // in) keeps a backlog in few, full frames.
        let wanted = self.queue.len().min(MAX_BATCH_EVENTS) as f64;
        let wait = self.frames.wait_for(1.0).max(self.events.wait_for(wanted));
        if !wait.is_zero() {
            return Next::Wait(wait);
        }
        let allowed = (self.events.tokens.floor() as usize)
            .min(MAX_BATCH_EVENTS)
            .min(self.queue.len());
        let mut count = 0;
        let mut size = BATCH_ENVELOPE;
        for text in self.queue.iter().take(allowed) {
            let more = text.len() + usize::from(count > 0);
            if count > 0 && size + more > MAX_TEXT_FRAME {
                break;
            }
            size += more;
            count += 1;
        }
        self.frames.tokens -= 1.0;
        self.events.tokens -= count as f64;
        if count == 1 {
            // The event's own encoding is the contract's single-event frame.
            return Next::Frame(self.queue.pop_front().unwrap_or_default());
        }
        let mut frame = String::with_capacity(size);
        frame.push_str(r#"{"type":"batch","events":["#);
        for (i, text) in self.queue.drain(..count).enumerate() {
            if i > 0 {
                frame.push(',');
            }
            frame.push_str(&text);
        }
        frame.push_str("]}");
        Next::Frame(frame)
    }
}

#[cfg(test)]
mod tests {
    use protocol::device::{DeviceEvent, DeviceFrame, LogLineEvent, ScanEvent};

    use super::*;

    fn scan(i: usize) -> TelemetryEvent {
        TelemetryEvent::Scan(ScanEvent {
            code: format!("0104006381333931210{i}"),
            valid: true,
            ts: chrono::Utc::now(),
        })
    }

    /// Every frame the outbox gives until it is empty, advancing a fake clock through its
    /// waits; answers the frames with the time each was sent.
    fn drain(outbox: &mut Outbox, start: Instant) -> Vec<(Instant, String)> {
        let mut now = start;
        let mut sent = Vec::new();
        loop {
            match outbox.next(now) {
                Next::Empty => return sent,
                Next::Frame(text) => sent.push((now, text)),
                Next::Wait(d) => now += d,
            }
        }
    }

    fn events_of(text: &str) -> Vec<TelemetryEvent> {
        match serde_json::from_str::<DeviceFrame>(text).unwrap() {
            DeviceFrame::Batch { events } => events,
            DeviceFrame::Event(event) => vec![TelemetryEvent::try_from(event).unwrap()],
            other => panic!("unexpected frame {other:?}"),
        }
    }

    #[test]
    fn one_event_travels_as_its_own_frame() {
        let now = Instant::now();
        let mut outbox = Outbox::new(now);
        outbox.push(&scan(1));
        let Next::Frame(text) = outbox.next(now) else {
            panic!("a frame is due");
        };
        let frame: DeviceFrame = serde_json::from_str(&text).unwrap();
        assert!(matches!(frame, DeviceFrame::Event(DeviceEvent::Scan(_))));
        assert_eq!(outbox.next(now), Next::Empty);
    }

    #[test]
    fn a_backlog_goes_out_in_order_in_batches_under_the_servers_limits() {
        let start = Instant::now();
        let mut outbox = Outbox::new(start);
        let n = 20_000;
        for i in 0..n {
            outbox.push(&scan(i));
        }
        let sent = drain(&mut outbox, start);
        let codes: Vec<String> = sent
            .iter()
            .flat_map(|(_, text)| events_of(text))
            .map(|e| match e {
                TelemetryEvent::Scan(s) => s.code,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        let expected: Vec<String> = (0..n).map(|i| format!("0104006381333931210{i}")).collect();
        assert_eq!(codes, expected, "every event once, in order");
        assert!(
            sent.len() <= n / MAX_BATCH_EVENTS + 1,
            "{} frames",
            sent.len()
        );

        // Replayed through the server's own limits: nothing is refused.
        let mut frames = Bucket::full(limits::FRAME_RATE_PER_SEC, limits::FRAME_BURST, start);
        let mut events = Bucket::full(limits::EVENT_RATE_PER_SEC, limits::EVENT_BURST, start);
        for (at, text) in &sent {
            assert!(text.len() <= MAX_TEXT_FRAME);
            let count = events_of(text).len() as f64;
            assert!(count as usize <= MAX_BATCH_EVENTS);
            frames.refill(*at);
            events.refill(*at);
            assert!(
                frames.tokens >= 1.0 && events.tokens >= count,
                "refused at {at:?}"
            );
            frames.tokens -= 1.0;
            events.tokens -= count;
        }
        let took = sent.last().unwrap().0 - start;
        let floor = (n as f64 - EVENT_BURST) / EVENT_RATE;
        assert!(took.as_secs_f64() < floor + 1.0, "took {took:?}");
    }

    #[test]
    fn batches_stay_under_the_frame_size() {
        let start = Instant::now();
        let mut outbox = Outbox::new(start);
        for i in 0..50 {
            outbox.push(&TelemetryEvent::LogLine(LogLineEvent {
                line: format!("{i}:{}", "x".repeat(10_000)),
                level: "INFO".into(),
                ts: chrono::Utc::now(),
            }));
        }
        let sent = drain(&mut outbox, start);
        assert!(sent.iter().all(|(_, t)| t.len() <= MAX_TEXT_FRAME));
        let total: usize = sent.iter().map(|(_, t)| events_of(t).len()).sum();
        assert_eq!(total, 50);
        assert!(sent.len() >= 50 * 10_000 / MAX_TEXT_FRAME);
    }

    #[test]
    fn frames_sent_at_once_hold_telemetry_back_and_overflow_drops_the_oldest() {
        let start = Instant::now();
        let mut outbox = Outbox::new(start);
        for _ in 0..(FRAME_BURST as usize) {
            outbox.spend_frame(start);
        }
        outbox.push(&scan(0));
        assert!(matches!(outbox.next(start), Next::Wait(d) if d > Duration::ZERO));

        for i in 0..(MAX_QUEUED + 5) {
            outbox.push(&scan(i));
        }
        assert_eq!(outbox.waiting(), MAX_QUEUED);
        assert_eq!(outbox.take_dropped(), 6);
        assert_eq!(outbox.reset(start), MAX_QUEUED);
        assert_eq!(outbox.next(start), Next::Empty);
    }
}
