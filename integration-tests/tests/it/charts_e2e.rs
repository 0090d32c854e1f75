//! Charts end to end: a real agent's statuses and scans, through the real server, drawn by the
//! dashboard in headless Chromium: the device page's metric charts extending live, in their
//! units, with their table; the production page's throughput per line; the devices page's
//! fleet charts. The chart routes' answers are checked against what the agent was given (the
//! scans counted once each, valid and invalid apart), with their CSV and their refusals.
//! Screenshots land in `target/screenshots/` (`charts-*.png`; the copies in `docs/` are these).

use std::time::Duration;

use integration_tests::browser::{take_turn, Browser};
use integration_tests::*;
use serde_json::{json, Value};

const DEVICE: &str = "edge-charts-1";
const LINE: &str = "line-7";

fn log_in(browser: &Browser, server: &ServerProcess) {
    browser.goto(&format!("{}/#/devices", server.base_url));
    browser.wait_for("#login-form");
    browser.type_into("#login-form input[name=username]", "admin");
    browser.type_into("#login-form input[name=password]", ADMIN_PASSWORD);
    browser.click("#login-form button[type=submit]");
    browser.wait_for("#device-list table");
}

/// The `data-points` of a chart: how many points it draws.
fn points(browser: &Browser, chart: &str) -> usize {
    let value = browser.execute(
        "const el = document.querySelector(arguments[0]); return el ? Number(el.dataset.points || 0) : 0;",
        vec![json!(chart)],
    );
    value.as_u64().unwrap_or(0) as usize
}

fn scroll_to(browser: &Browser, css: &str) {
    browser.execute(
        "document.querySelector(arguments[0]).scrollIntoView({block: 'start'});",
        vec![json!(css)],
    );
}

/// The sums of a throughput answer over every step and series.
fn totals(answer: &Value) -> [i64; 5] {
    let mut sums = [0; 5];
    for series in answer["series"].as_array().unwrap() {
        for p in series["points"].as_array().unwrap() {
            for (i, key) in ["scansValid", "scansInvalid", "prints", "batches", "pallets"]
                .iter()
                .enumerate()
            {
                sums[i] += p[key].as_i64().unwrap();
            }
        }
    }
    sums
}

#[test]
fn an_agents_statuses_and_scans_draw_the_charts() {
    let _turn = take_turn();
    let server = ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-data"),
        &["--metrics-rollup-secs", "1"],
    );
    let agent = AgentProcess::start_with(
        &server.base_url,
        DEVICE,
        AgentOptions {
            args: [
                "--production-line-id",
                LINE,
                "--status-interval-ms",
                "500",
                "--batch-size",
                "5",
                "--pallet-size",
                "2",
            ]
            .map(String::from)
            .to_vec(),
            scanner: true,
            ..AgentOptions::default()
        },
    );
    let api = Api::admin(&server);
    wait_until(Duration::from_secs(20), "the agent online", || {
        api.device_status(DEVICE).as_deref() == Some("ONLINE")
    });

    // Twelve valid codes (two batches of five and one pallet of two batches) and three that
    // are not codes, plus a command, so every chart has something to draw.
    let mut codes = gs1_codes("CH", 12);
    codes.extend(["not-a-code", "12345", "garbage-line"].map(String::from));
    agent.scan(&codes);
    command(&api, DEVICE, json!({"type": "force_sync"}), false);
    let throughput = || {
        api.get(&format!(
            "/api/v1/production/throughput?productionLineId={LINE}&from={}",
            urlencode(&(chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339())
        ))
    };
    // The first statuses reach the database in the telemetry batches a moment after they come.
    wait_until(Duration::from_secs(10), "statuses stored", || {
        server.query_ints("SELECT COUNT(*) FROM metric_samples")[0] > 0
    });
    wait_until(
        Duration::from_secs(30),
        "scans, batches and the pallet counted",
        || totals(throughput().data()) == [12, 3, 0, 2, 1],
    );
    let answer = throughput();
    let series = answer.data()["series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{}", answer.body);
    assert_eq!(series[0]["productionLineId"], LINE);
    assert_eq!(series[0]["companyId"], "company-1");

    // The device's metrics: raw samples for the last hour, the numeric metrics only.
    let an_hour_ago = urlencode(&(chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339());
    let metrics = api.get(&format!(
        "/api/v1/devices/{DEVICE}/metrics?from={an_hour_ago}"
    ));
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert_eq!(metrics.data()["resolution"], "raw", "{}", metrics.body);
    let names: Vec<&str> = metrics.data()["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"diskFreeBytes") && names.contains(&"uptimeSecs"),
        "{names:?}"
    );
    assert!(!names.contains(&"version") && !names.contains(&"productionEnabled"));

    // The fleet: the rollup (every second here) counts the device online.
    wait_until(Duration::from_secs(20), "the device counted online", || {
        let fleet = api.get("/api/v1/fleet/summary?step=60");
        fleet.data()["points"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["online"] == 1 && p["commands"]["SUCCESS"] == 1)
    });

    // CSV of each, and the refusals.
    let csv = api.call(
        "GET",
        &format!("/api/v1/devices/{DEVICE}/metrics?metric=uptimeSecs"),
        None,
        &[("Accept", "text/csv")],
    );
    assert_eq!(csv.status, 200);
    assert!(csv.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = csv.body.as_str().unwrap();
    assert!(
        text.starts_with("metric,ts,min,avg,max,count\nuptimeSecs,"),
        "{text}"
    );
    for path in ["/api/v1/production/throughput", "/api/v1/fleet/summary"] {
        let csv = api.call("GET", path, None, &[("Accept", "text/csv")]);
        assert_eq!(csv.status, 200, "{path}");
        let rows = csv.body.as_str().unwrap().lines().count();
        assert!(rows > 1, "{path}: {}", csv.body);
    }
    let unknown = api.get("/api/v1/devices/edge-nobody/metrics");
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, "device_not_found")
    );
    let backwards = api.get(&format!(
        "/api/v1/devices/{DEVICE}/metrics?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"
    ));
    assert_eq!(
        (backwards.status, backwards.error_code()),
        (400, "invalid_parameter")
    );
    let week_ago = urlencode(&(chrono::Utc::now() - chrono::Duration::days(7)).to_rfc3339());
    let dense = api.get(&format!("/api/v1/fleet/summary?step=60&from={week_ago}"));
    assert_eq!((dense.status, dense.error_code()), (400, "range_too_large"));

    // The browser: the device page draws a chart per metric and extends it live.
    let browser = Browser::start();
    log_in(&browser, &server);
    browser.goto(&format!("{}/#/devices/{DEVICE}", server.base_url));
    let uptime = "#chart-uptimeSecs";
    browser.wait_until("the uptime chart drawn", || points(&browser, uptime) > 0);
    browser.wait_for("#chart-diskFreeBytes canvas");
    let before = points(&browser, uptime);
    browser.wait_until("the uptime chart extended by live statuses", || {
        points(&browser, uptime) >= before + 3
    });
    // Units: bytes in binary multiples, seconds as a duration, on the charts and in the list.
    let disk = browser.text("#chart-diskFreeBytes .chart-latest");
    assert!(disk.contains("iB"), "{disk}");
    let metrics_text = browser.text("#device-metrics");
    assert!(metrics_text.contains("iB"), "{metrics_text}");
    // The numbers one click away.
    browser.click("#chart-uptimeSecs button[data-chart-action=table]");
    browser.wait_until("the uptime table", || {
        browser.count("#chart-uptimeSecs .chart-table tbody tr") > 0
    });
    assert_eq!(
        browser.count("#chart-uptimeSecs button[data-chart-action=csv]"),
        1
    );
    scroll_to(&browser, "#device-charts");
    browser.screenshot("charts-device");

    // The 24-hour view reads minutes, which the rollup has written.
    browser.click("#device-charts button[data-range='24 h']");
    browser.wait_until("the 24 h resolution", || {
        browser.text("#metric-resolution").starts_with("minute")
    });
    browser.wait_until("the 24 h chart drawn", || points(&browser, uptime) > 0);

    // The production page: the line's throughput.
    browser.goto(&format!("{}/#/production", server.base_url));
    let line_chart = format!("#throughput-charts [data-line='{LINE}']");
    browser.wait_until("the line's throughput chart", || {
        points(&browser, &line_chart) > 0
    });
    let latest = browser.text(&format!("{line_chart} .chart-latest"));
    assert!(latest.contains("valid scans"), "{latest}");
    browser.click(&format!("{line_chart} button[data-chart-action=table]"));
    browser.wait_until("the throughput table", || {
        browser.count(&format!("{line_chart} .chart-table tbody tr")) > 0
    });
    browser.screenshot("charts-production");

    // The devices page: the fleet online and the commands by outcome.
    browser.goto(&format!("{}/#/devices", server.base_url));
    browser.wait_until("the fleet charts", || {
        points(&browser, "#chart-online") > 0 && points(&browser, "#chart-commands") > 0
    });
    browser.wait_until("the command outcome series", || {
        browser
            .text("#chart-commands .chart-latest")
            .contains("SUCCESS")
    });
    browser.screenshot("charts-fleet");
}

/// Percent-encodes what a query value may not hold as it is (`+` and `:` of a time).
fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}
