//! The Prometheus metrics served at `/metrics`: one registry, the named metrics, and small
//! functions the actors and handlers call where something happens.
//!
//! The metrics live in one process-wide registry because every actor and handler of a server
//! shares them, and passing a handle through each actor's constructor would buy nothing: a
//! process runs one server. Labels take only values from closed sets (command types and
//! statuses, refusal reasons, deployment states), never a device id or a user name, so the
//! number of series stays bounded whatever the fleet does. Gauges that mirror the database
//! (cloud queue, deployments) are set by the scrape itself (`api::metrics`), so they cost
//! nothing between scrapes.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets of the command round trip, in seconds: commands answer in milliseconds on a
/// healthy line and time out after tens of seconds on a sick one.
const ROUND_TRIP_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Buckets of the database waits, in seconds: a healthy queue is well under a millisecond,
/// so the low end is fine-grained; the pool's own timeout is the far end.
const DB_WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Every metric of the server, registered once in `registry`.
struct Metrics {
    registry: Registry,
    connected_devices: IntGauge,
    sessions_opened: IntCounter,
    sessions_closed: IntCounter,
    commands: IntCounterVec,
    command_round_trip: HistogramVec,
    cloud_records: IntGaugeVec,
    sync_records: IntCounterVec,
    deployments: IntGaugeVec,
    dashboard_sockets: IntGauge,
    dashboard_events_dropped: IntCounter,
    telemetry_dropped: IntCounter,
    frames_refused: IntCounterVec,
    db_pool_connections: IntGaugeVec,
    db_jobs_refused: IntCounter,
    db_queue_wait: Histogram,
    db_connection_wait: Histogram,
    login_failures: IntCounterVec,
    enrollment_failures: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Registers `metric` and hands it back; a name registered twice is a bug in this file.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("valid metric"),
            )
        };
        let metrics = Metrics {
            connected_devices: register(
                &r,
                IntGauge::new(
                    "factory_connected_devices",
                    "Devices with an authenticated WebSocket session now.",
                )
                .expect("valid metric"),
            ),
            sessions_opened: counter(
                "factory_device_sessions_opened_total",
                "Device sessions authenticated since the server started.",
            ),
            sessions_closed: counter(
                "factory_device_sessions_closed_total",
                "Authenticated device sessions ended since the server started.",
            ),
            commands: counter_vec(
                "factory_commands_total",
                "Dispatched commands by type and by the status the dispatch ended with.",
                &["type", "status"],
            ),
            command_round_trip: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "factory_command_round_trip_seconds",
                        "Time from a command's dispatch to its outcome (answer, timeout or offline failure).",
                    )
                    .buckets(ROUND_TRIP_BUCKETS.to_vec()),
                    &["type"],
                )
                .expect("valid metric"),
            ),
            cloud_records: gauge_vec(
                "factory_cloud_records",
                "Records in the cloud queue by state (pending: waiting to be sent; dead: given up).",
                &["state"],
            ),
            sync_records: counter_vec(
                "factory_sync_records_total",
                "Records received on POST /api/v1/sync, by outcome (accepted or duplicate).",
                &["outcome"],
            ),
            deployments: gauge_vec(
                "factory_deployments",
                "Firmware deployments by state.",
                &["state"],
            ),
            dashboard_sockets: register(
                &r,
                IntGauge::new(
                    "factory_dashboard_sockets",
                    "Open dashboard WebSockets, authenticated or not.",
                )
                .expect("valid metric"),
            ),
            dashboard_events_dropped: counter(
                "factory_dashboard_events_dropped_total",
                "Events not delivered to a dashboard whose buffer was full.",
            ),
            telemetry_dropped: counter(
                "factory_telemetry_dropped_total",
                "Device log lines, events and metric samples not stored: the telemetry \
                 writer was a full buffer behind.",
            ),
            frames_refused: counter_vec(
                "factory_ws_frames_refused_total",
                "Device WebSocket frames refused by the session's limits, by reason.",
                &["reason"],
            ),
            db_pool_connections: gauge_vec(
                "factory_db_pool_connections",
                "Database pool connections by state (idle or in_use).",
                &["state"],
            ),
            db_jobs_refused: counter(
                "factory_db_jobs_refused_total",
                "Database jobs refused because the database queue was full (answered 503).",
            ),
            db_queue_wait: histogram(
                "factory_db_queue_wait_seconds",
                "Time a database job waited in the queue for a database thread.",
                DB_WAIT_BUCKETS,
            ),
            db_connection_wait: histogram(
                "factory_db_connection_wait_seconds",
                "Time a database thread waited for a pooled connection.",
                DB_WAIT_BUCKETS,
            ),
            login_failures: counter_vec(
                "factory_login_failures_total",
                "Refused logins by reason (credentials: wrong name or password; locked: refused by the rate limit).",
                &["reason"],
            ),
            enrollment_failures: counter_vec(
                "factory_enrollment_failures_total",
                "Refused enrollments by reason (key: missing or wrong key; locked: refused by the rate limit).",
                &["reason"],
            ),
            registry: r.clone(),
        };
        // Label sets known in advance are created at zero, so a scrape shows them before the
        // first event and a rate over them starts from a real zero.
        for reason in ["credentials", "locked"] {
            metrics.login_failures.with_label_values(&[reason]);
            metrics.enrollment_failures.with_label_values(&[reason]);
        }
        for outcome in ["accepted", "duplicate"] {
            metrics.sync_records.with_label_values(&[outcome]);
        }
        metrics
    }
}

/// The metrics in the Prometheus text exposition format.
pub fn render() -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on a metric the registry itself refused to gather.
    if let Err(e) = TextEncoder::new().encode(&METRICS.registry.gather(), &mut out) {
        tracing::error!(error = %e, "metrics could not be encoded");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// The content type of `render`'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry now holds `n` sessions.
pub fn set_connected_devices(n: usize) {
    METRICS.connected_devices.set(n as i64);
}

pub fn session_opened() {
    METRICS.sessions_opened.inc();
}

pub fn session_closed() {
    METRICS.sessions_closed.inc();
}

/// A dispatch of a command of `kind` ended with `status` after `elapsed`.
pub fn command_finished(kind: &str, status: &str, elapsed: Duration) {
    METRICS.commands.with_label_values(&[kind, status]).inc();
    METRICS
        .command_round_trip
        .with_label_values(&[kind])
        .observe(elapsed.as_secs_f64());
}

/// The cloud queue holds `pending` records to send and `dead` ones given up.
pub fn set_cloud_records(pending: i64, dead: i64) {
    METRICS
        .cloud_records
        .with_label_values(&["pending"])
        .set(pending);
    METRICS.cloud_records.with_label_values(&["dead"]).set(dead);
}

/// A sync batch was stored: `accepted` new records, `duplicates` already known.
pub fn sync_ingested(accepted: u64, duplicates: u64) {
    METRICS
        .sync_records
        .with_label_values(&["accepted"])
        .inc_by(accepted);
    METRICS
        .sync_records
        .with_label_values(&["duplicate"])
        .inc_by(duplicates);
}

/// `n` deployments are in `state` now.
pub fn set_deployments(state: &str, n: i64) {
    METRICS.deployments.with_label_values(&[state]).set(n);
}

pub fn set_dashboard_sockets(n: usize) {
    METRICS.dashboard_sockets.set(n as i64);
}

pub fn dashboard_event_dropped() {
    METRICS.dashboard_events_dropped.inc();
}

/// `n` telemetry records were dropped: the writer's buffer was full.
pub fn telemetry_dropped(n: u64) {
    METRICS.telemetry_dropped.inc_by(n);
}

/// A device frame was refused for `reason` (one of the session's refusal names).
pub fn frame_refused(reason: &str) {
    METRICS.frames_refused.with_label_values(&[reason]).inc();
}

/// The pool holds `connections` connections, `idle` of them unused.
pub fn set_db_pool(connections: u32, idle: u32) {
    let in_use = connections.saturating_sub(idle);
    METRICS
        .db_pool_connections
        .with_label_values(&["idle"])
        .set(i64::from(idle));
    METRICS
        .db_pool_connections
        .with_label_values(&["in_use"])
        .set(i64::from(in_use));
}

pub fn db_job_refused() {
    METRICS.db_jobs_refused.inc();
}

pub fn db_queue_waited(wait: Duration) {
    METRICS.db_queue_wait.observe(wait.as_secs_f64());
}

pub fn db_connection_waited(wait: Duration) {
    METRICS.db_connection_wait.observe(wait.as_secs_f64());
}

/// A login was refused for `reason`: `credentials` or `locked`.
pub fn login_failed(reason: &'static str) {
    METRICS.login_failures.with_label_values(&[reason]).inc();
}

/// An enrollment was refused for `reason`: `key` or `locked`.
pub fn enrollment_failed(reason: &'static str) {
    METRICS
        .enrollment_failures
        .with_label_values(&[reason])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series`, e.g. `name{label="v"}`.
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn counters_move_and_render_in_the_text_format() {
        let before = sample(&render(), "factory_login_failures_total{reason=\"locked\"}")
            .expect("the locked series exists from the start");
        login_failed("locked");
        frame_refused("too_large");
        command_finished("force_sync", "SUCCESS", Duration::from_millis(3));
        let text = render();
        assert_eq!(
            sample(&text, "factory_login_failures_total{reason=\"locked\"}"),
            Some(before + 1.0)
        );
        assert!(sample(
            &text,
            "factory_ws_frames_refused_total{reason=\"too_large\"}"
        )
        .is_some_and(|v| v >= 1.0));
        assert!(sample(
            &text,
            "factory_command_round_trip_seconds_bucket{type=\"force_sync\",le=\"0.005\"}"
        )
        .is_some_and(|v| v >= 1.0));
        assert!(text.contains("# TYPE factory_commands_total counter"));
    }

    #[test]
    fn the_pool_gauge_splits_idle_from_in_use() {
        set_db_pool(4, 1);
        let text = render();
        assert_eq!(
            sample(&text, "factory_db_pool_connections{state=\"in_use\"}"),
            Some(3.0)
        );
        assert_eq!(
            sample(&text, "factory_db_pool_connections{state=\"idle\"}"),
            Some(1.0)
        );
    }
}
