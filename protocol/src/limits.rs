//! The limits of the device socket, shared so that the agent can keep under what the server
//! enforces: frame size, frame rate, event rate and the size of a `batch` frame.
//!
//! The server refuses what goes past them (an `error` frame, counted; too many refusals and
//! the socket is closed with 4429). The agent paces itself at a fraction of these rates, so
//! an honest backlog never comes near them.

/// Largest text frame a device may send.
pub const MAX_TEXT_FRAME: usize = 64 * 1024;

/// Frames per second a device may send on average, and the burst it may save up.
pub const FRAME_RATE_PER_SEC: f64 = 200.0;
pub const FRAME_BURST: f64 = 400.0;

/// Telemetry events per second a device may report on average, counted one per
/// single-event frame and one per event of a `batch` frame, and the burst it may save up.
/// This budget is what keeps batching from multiplying a flood: 200 frames of 200 events
/// would be 40,000 events a second. It is far above what a line produces (a fast bottling
/// line scans some 30 codes a second), so an agent pacing itself at half of it still
/// drains a backlog of thousands of codes in seconds.
pub const EVENT_RATE_PER_SEC: f64 = 2_000.0;
pub const EVENT_BURST: f64 = 4_000.0;

/// Most events in one `batch` frame.
pub const MAX_BATCH_EVENTS: usize = 200;
