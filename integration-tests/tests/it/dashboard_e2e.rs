//! The web dashboard in a real headless Chromium, against the real server and a real agent:
//! logging in, live device status, dispatching commands and reading their results, live logs, the
//! confirmation dialog of a dangerous command (cancelled, so nothing is sent), a firmware
//! upload and its deployment followed to ACTIVE, pause/resume/abort, a VIEWER who finds no
//! button to press, an OPERATOR and a MANAGER who find only their roles' buttons, an OPERATOR
//! whose rights the server's settings widened, and the first page of 10,000 devices.
//! Screenshots of the main pages land in `target/screenshots/`.
//!
//! SQLite only: the browser sees the same API on both backends, and the API's behaviour on
//! PostgreSQL is covered by the other tests. The browser sessions take turns (one at a time)
//! because CI has two cores.

use std::time::{Duration, Instant};

use integration_tests::browser::{take_turn, Browser};
use integration_tests::*;
use serde_json::json;

const DEVICE: &str = "edge-dash-1";
const VIEWER_PASSWORD: &str = "viewer-password-1";
const OTHER_PASSWORD: &str = "line-password-1";

fn log_in(browser: &Browser, server: &ServerProcess, username: &str, password: &str) {
    browser.goto(&format!("{}/#/devices", server.base_url));
    browser.wait_for("#login-form");
    browser.type_into("#login-form input[name=username]", username);
    browser.type_into("#login-form input[name=password]", password);
    browser.click("#login-form button[type=submit]");
    browser.wait_for("#device-list table");
    browser.wait_until("the dashboard socket to be live", || {
        browser.count("#conn[data-state=live]") == 1
    });
}

/// Commands of `type_` in the device's history.
fn commands_of_type(api: &Api, device: &str, type_: &str) -> i64 {
    api.get(&format!("/api/v1/devices/{device}/commands?type={type_}"))
        .data()["total"]
        .as_i64()
        .expect("total")
}

#[test]
fn operator_runs_a_device_from_the_browser() {
    let _turn = take_turn();
    let server = ServerProcess::start(Backend::Sqlite);
    let mut agent = AgentProcess::start(&server, DEVICE);
    let api = Api::admin(&server);
    let browser = Browser::start();

    // The login page, then the device list with the agent's device going ONLINE live.
    browser.goto(&format!("{}/", server.base_url));
    browser.wait_for("#login-form");
    browser.screenshot("login");
    log_in(&browser, &server, "admin", ADMIN_PASSWORD);
    let row = format!("#device-list tr[data-device-id='{DEVICE}']");
    browser.wait_until("the agent's device ONLINE in the list", || {
        browser.count(&format!("{row} [data-status=ONLINE]")) == 1
    });
    browser.wait_until("the online count", || {
        browser.text("[data-count=online] strong") == "1"
    });
    browser.screenshot("devices");

    // The device page: details and metrics from the agent's status.
    browser.click(&format!("{row} a"));
    browser.wait_for("#device-status [data-status=ONLINE]");
    browser.wait_until("the agent's metrics", || {
        browser.count("#device-metrics dt") > 0
    });

    // force_sync from its button; the agent's answer is shown and lands in the history.
    browser.click("button[data-command=force_sync]");
    browser.wait_for("#command-result [data-status=SUCCESS]");
    let result = browser.text("#command-result");
    assert!(result.contains("Force-sync completed"), "{result}");
    browser.wait_for("#command-history tr[data-type=force_sync][data-status=SUCCESS]");
    assert_eq!(commands_of_type(&api, DEVICE, "force_sync"), 1);
    browser.screenshot("device");

    // pull_logs through its form: the agent's log lines arrive live, and the level filter
    // narrows them.
    browser.click("button[data-command=pull_logs]");
    browser.type_into("form input[name=lines]", "30");
    browser.click("button[data-send=pull_logs]");
    browser.wait_until("the pull_logs answer", || {
        browser.text("#command-result").contains("Sent ")
    });
    // The harness runs the agent at debug level, so DEBUG lines come beside INFO ones.
    browser.wait_until("live log lines of more than one level", || {
        browser.count("#device-logs div.lvl-INFO") > 0
            && browser.count("#device-logs div[class^=lvl-]:not(.lvl-INFO)") > 0
    });
    // The filter asks the server, which stores log lines in batches a moment after they were
    // shown live.
    wait_until(Duration::from_secs(10), "the log lines stored", || {
        api.get(&format!("/api/v1/devices/{DEVICE}/logs?level=INFO&limit=1"))
            .data()["total"]
            .as_i64()
            > Some(0)
    });
    browser.select("select[name=level]", "INFO");
    browser.wait_until("only INFO lines", || {
        let all = browser.count("#device-logs div[class^=lvl-]");
        all > 0 && all == browser.count("#device-logs div.lvl-INFO")
    });

    // exec_shell through the template form, and push_config through the merge-patch form.
    browser.click("button[data-command=exec_shell]");
    browser.select("form select[name=template]", "disk_usage");
    browser.type_into("form input[name=path]", "/");
    browser.click("button[data-send=exec_shell]");
    browser.wait_until("the disk_usage answer", || {
        let text = browser.text("#command-result");
        text.contains("Run template:") && text.contains("Filesystem")
    });
    assert_eq!(browser.count("#command-result > [data-status=SUCCESS]"), 1);
    browser.click("button[data-command=push_config]");
    browser.click("button[data-send=push_config]");
    browser.wait_until("the push_config answer", || {
        browser.text("#command-result").contains("Push config:")
            && browser.count("#command-result > [data-status=SUCCESS]") == 1
    });
    assert_eq!(commands_of_type(&api, DEVICE, "exec_shell"), 1);
    assert_eq!(commands_of_type(&api, DEVICE, "push_config"), 1);

    // reboot_os asks first, naming the device; cancelling sends nothing.
    browser.click("button[data-command=reboot_os]");
    browser.wait_for("dialog#confirm[open]");
    let question = browser.text("#confirm-text");
    assert!(
        question.contains(DEVICE),
        "the dialog must name the device: {question}"
    );
    assert!(browser.text("#confirm-ok").contains(DEVICE));
    browser.screenshot("confirm-reboot");
    browser.click("#confirm-cancel");
    browser.wait_until("the dialog to close", || {
        browser.count("dialog#confirm[open]") == 0
    });
    // Give a wrongly sent command time to reach the server before looking.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(commands_of_type(&api, DEVICE, "reboot_os"), 0);
    let audit = api.get("/api/v1/audit?action=command.&target=edge-dash-1");
    let rows = audit.data()["items"].as_array().unwrap().clone();
    assert!(
        rows.iter().any(|r| r["params"]["type"] == "force_sync"),
        "{rows:?}"
    );
    assert!(
        rows.iter().all(|r| r["params"]["type"] != "reboot_os"),
        "{rows:?}"
    );

    // A firmware upload through the file input, with its progress, into the releases list.
    let dir = TempDir::new("dash-fw");
    let artifact = dir.path().join("edge-agent-0.2.0.bin");
    std::fs::write(
        &artifact,
        (0..256 * 1024u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    browser.goto(&format!("{}/#/firmware", server.base_url));
    browser.wait_for("#firmware-upload");
    browser.type_into(
        "#firmware-upload input[name=file]",
        artifact.to_str().unwrap(),
    );
    browser.type_into("#firmware-upload input[name=version]", "0.2.0");
    browser.click("#firmware-upload button[type=submit]");
    browser.wait_for("#upload-status [data-release-id]");
    browser.wait_for("#release-list tr[data-version='0.2.0']");
    assert_eq!(
        browser.execute(
            "return document.getElementById('upload-progress').value;",
            vec![]
        ),
        json!(100)
    );
    let releases = api.get("/api/v1/firmware/releases");
    assert_eq!(
        releases.data()["items"][0]["filename"],
        "edge-agent-0.2.0.bin"
    );
    assert_eq!(releases.data()["items"][0]["size"], 256 * 1024);
    browser.screenshot("firmware");
    deploy_release_from_the_dashboard(&browser, &server, &mut agent);
    pause_resume_and_abort_a_deployment(&browser, &server, &api);
    browser.goto(&format!("{}/#/firmware", server.base_url));
    browser.wait_for("#deployment-list tr[data-deployment-id]");
    assert_eq!(browser.count("#deployment-list tr[data-deployment-id]"), 2);
    browser.screenshot("firmware");

    // A group with the device, and a dispatch to every member with its per-device results.
    browser.goto(&format!("{}/#/groups", server.base_url));
    browser.type_into("#group-create input[name=name]", "Line 1");
    browser.click("#group-create button[type=submit]");
    browser.wait_for("#group-add");
    browser.type_into("#group-add input[name=deviceIds]", DEVICE);
    browser.click("#group-add button[type=submit]");
    browser.wait_for(&format!("#group-members tr[data-device-id='{DEVICE}']"));
    browser.click("button[data-command=force_sync]");
    browser.wait_for(&format!(
        "#command-result tr[data-device-id='{DEVICE}'] [data-status=SUCCESS]"
    ));
    assert!(browser
        .text("#command-result")
        .contains("1 of 1 devices succeeded"));
    assert_eq!(commands_of_type(&api, DEVICE, "force_sync"), 2);
    browser.screenshot("group");

    // The other pages render without an error.
    for (page, ready) in [
        ("groups", "#group-list tr a"),
        ("sync", "#sync-status .counts"),
        ("audit", "#audit-list table"),
        ("users", "#user-list table"),
    ] {
        browser.goto(&format!("{}/#/{page}", server.base_url));
        browser.wait_for(ready);
        assert_eq!(
            browser.count("main .error"),
            0,
            "{page}: {}",
            browser.text("main")
        );
        browser.screenshot(page);
    }
    browser.goto(&format!("{}/#/audit", server.base_url));
    browser.wait_for("#audit-list table");
    assert!(browser.text("#audit-list").contains("command.dispatch"));

    // A session saved by an older dashboard has no `rights`: a reload asks the server again,
    // so the buttons come back without a new login.
    browser.execute(
        "const s = JSON.parse(sessionStorage.getItem('factory.session')); delete s.rights; \
         sessionStorage.setItem('factory.session', JSON.stringify(s));",
        vec![],
    );
    // A new address (the query), so the page really loads again.
    browser.goto(&format!("{}/?again#/devices/{DEVICE}", server.base_url));
    browser.wait_for("button[data-command=force_sync]");
    assert!(
        browser
            .execute(
                "return JSON.parse(sessionStorage.getItem('factory.session')).rights.commands.length;",
                vec![]
            )
            .as_u64()
            .unwrap_or(0)
            > 0
    );

    // Log out: the logout route revokes the token, which the server then refuses.
    let token = browser.execute(
        "return JSON.parse(sessionStorage.getItem('factory.session')).token;",
        vec![],
    );
    let token = token.as_str().expect("token in sessionStorage").to_owned();
    browser.click("#logout");
    browser.wait_for("#login-form");
    assert_eq!(
        browser.execute("return sessionStorage.getItem('factory.session');", vec![]),
        json!(null)
    );
    assert_eq!(
        Api::new(&server)
            .with_token(&token)
            .get("/api/v1/auth/me")
            .status,
        401
    );

    // A VIEWER sees the device but no button to send anything, and no admin pages.
    api.create_user("line-viewer", VIEWER_PASSWORD, "VIEWER");
    log_in(&browser, &server, "line-viewer", VIEWER_PASSWORD);
    browser.goto(&format!("{}/#/devices/{DEVICE}", server.base_url));
    browser.wait_for("#device-status [data-status=ONLINE]");
    browser.wait_for("#command-history table");
    assert_eq!(browser.count("button[data-command]"), 0);
    // Only buttons that read: paging, and the charts' ranges, tables and CSV downloads.
    assert_eq!(
        browser.count(
            "main button:not(.pager button):not(.range-picker button):not(.chart-head button)"
        ),
        0
    );
    assert_eq!(browser.count("#nav a[data-nav=users]"), 0);
    assert_eq!(browser.count("#nav a[data-nav=devices]"), 1);
    browser.screenshot("device-viewer");
    browser.goto(&format!("{}/#/firmware", server.base_url));
    browser.wait_for("#release-list table");
    assert_eq!(browser.count("#firmware-upload"), 0);
    assert_eq!(browser.count("button[data-deploy]"), 0);
    browser.click("#deployment-list tr[data-deployment-id] a");
    browser.wait_for("#deployment-devices table");
    assert_eq!(browser.count("button[data-action]"), 0);
    browser.goto(&format!("{}/#/groups", server.base_url));
    browser.wait_for("#group-list tr a");
    assert_eq!(browser.count("#group-create"), 0);
    browser.click("#group-list tr a");
    browser.wait_for(&format!("#group-members tr[data-device-id='{DEVICE}']"));
    assert_eq!(browser.count("main button:not(.pager button)"), 0);
    browser.goto(&format!("{}/#/sync", server.base_url));
    browser.wait_for("#sync-status .counts");
    assert_eq!(browser.count("#dead-letters"), 0);
    assert_eq!(browser.count("main button"), 0);

    // An OPERATOR and a MANAGER get the buttons of the commands the seed's RBAC gives their
    // role, and no others (written out here, not read from the server that draws the page):
    // no exec_shell, which the seed leaves to admins.
    let roles = [
        (
            "OPERATOR",
            json!(["enable_device", "force_sync", "pull_logs"]),
        ),
        (
            "MANAGER",
            json!([
                "clear_queue",
                "enable_device",
                "force_sync",
                "pull_logs",
                "push_config"
            ]),
        ),
    ];
    for (role, expected) in roles {
        let username = format!("line-{}", role.to_lowercase());
        api.create_user(&username, OTHER_PASSWORD, role);
        browser.click("#logout");
        browser.wait_for("#login-form");
        log_in(&browser, &server, &username, OTHER_PASSWORD);
        browser.goto(&format!("{}/#/devices/{DEVICE}", server.base_url));
        browser.wait_for("#device-status [data-status=ONLINE]");
        browser.wait_for("button[data-command]");
        let shown = browser.execute(
            "return [...document.querySelectorAll('button[data-command]')].map(b => b.dataset.command).sort();",
            vec![],
        );
        assert_eq!(shown, expected, "{role}'s command buttons");
        assert_eq!(browser.count("#nav a[data-nav=users]"), 0, "{role}");
        browser.screenshot(&format!("device-{}", role.to_lowercase()));
    }
    drop(agent);
}

/// A site's grant in the settings file: the OPERATOR's page gets the exec_shell button, its
/// template list offers `disk_usage` alone, and the template runs on the real agent.
#[test]
fn the_dashboard_follows_the_configured_rights() {
    let _turn = take_turn();
    let config_dir = TempDir::new("dashboard-rights");
    let config = config_dir.path().join("factory-server.toml");
    std::fs::write(
        &config,
        "[rights.commands]\nexec_shell = \"OPERATOR\"\n[rights.templates]\ndisk_usage = \"OPERATOR\"\n",
    )
    .expect("write settings");
    let server = ServerProcess::start_with(
        TestDb::new(Backend::Sqlite),
        TempDir::new("factory-data"),
        &["--config", config.to_str().unwrap()],
    );
    let agent = AgentProcess::start(&server, DEVICE);
    let api = Api::admin(&server);
    api.create_user("line-operator", OTHER_PASSWORD, "OPERATOR");
    let browser = Browser::start();
    log_in(&browser, &server, "line-operator", OTHER_PASSWORD);
    browser.goto(&format!("{}/#/devices/{DEVICE}", server.base_url));
    browser.wait_for("#device-status [data-status=ONLINE]");
    browser.wait_for("button[data-command]");
    let shown = browser.execute(
        "return [...document.querySelectorAll('button[data-command]')].map(b => b.dataset.command).sort();",
        vec![],
    );
    assert_eq!(
        shown,
        json!(["enable_device", "exec_shell", "force_sync", "pull_logs"])
    );
    browser.click("button[data-command=exec_shell]");
    browser.wait_for("form select[name=template]");
    let offered = browser.execute(
        "return [...document.querySelectorAll('form select[name=template] option')].map(o => o.value);",
        vec![],
    );
    assert_eq!(offered, json!(["disk_usage"]));
    browser.type_into("form input[name=path]", "/");
    browser.click("button[data-send=exec_shell]");
    browser.wait_until("the disk_usage answer", || {
        let text = browser.text("#command-result");
        text.contains("Run template:") && text.contains("Filesystem")
    });
    assert_eq!(commands_of_type(&api, DEVICE, "exec_shell"), 1);
    browser.screenshot("device-operator-granted");
    drop(agent);
}

/// Deploys the uploaded 0.2.0 to the device from the firmware page and follows it on the
/// deployment's page, live, until the device is ACTIVE on it and the deployment COMPLETED. The
/// agent stages, installs and exits 75 for its supervisor to start it on the new version; the
/// loop plays the supervisor.
fn deploy_release_from_the_dashboard(
    browser: &Browser,
    server: &ServerProcess,
    agent: &mut AgentProcess,
) {
    browser.goto(&format!("{}/#/firmware", server.base_url));
    browser.click("button[data-deploy='0.2.0']");
    browser.type_into("#deploy-form input[name=deviceIds]", DEVICE);
    browser.type_into("#deploy-form input[name=soakSecs]", "1");
    browser.click("#deploy-form button[type=submit]");
    browser.wait_for("dialog#confirm[open]");
    assert!(browser.text("#confirm-text").contains(DEVICE));
    browser.click("#confirm-ok");
    let row = format!("#deployment-devices tr[data-device-id='{DEVICE}']");
    browser.wait_for(&row);
    let mut seen = Vec::new();
    browser.wait_within(
        Duration::from_secs(120),
        "the device ACTIVE and the deployment COMPLETED",
        || {
            agent.respawn_if_asked();
            let status = browser.execute(
                "const r = document.querySelector(arguments[0]); return r ? r.dataset.status : '';",
                vec![json!(row)],
            );
            let status = status.as_str().unwrap_or_default().to_owned();
            if seen.last() != Some(&status) {
                seen.push(status.clone());
            }
            status == "ACTIVE" && browser.count("main h1 [data-status=COMPLETED]") == 1
        },
    );
    println!("the device's row showed {seen:?}");
    assert!(
        browser.text("#deployment-summary").contains("ACTIVE 1"),
        "{}",
        browser.text("#deployment-summary")
    );
    // A finished deployment offers nothing to pause, resume or abort.
    assert_eq!(browser.count("button[data-action]"), 0);
    browser.screenshot("deployment");
}

/// Pause, resume and abort from a deployment's page, on a deployment that cannot finish: its
/// only device is enrolled but never connects, so its update stays queued.
fn pause_resume_and_abort_a_deployment(browser: &Browser, server: &ServerProcess, api: &Api) {
    api.enroll("edge-dash-offline");
    browser.goto(&format!("{}/#/firmware", server.base_url));
    browser.click("button[data-deploy='0.2.0']");
    browser.type_into("#deploy-form input[name=deviceIds]", "edge-dash-offline");
    browser.click("#deploy-form button[type=submit]");
    browser.wait_for("dialog#confirm[open]");
    browser.click("#confirm-ok");
    browser.wait_for("main h1 [data-status=RUNNING]");
    browser.click("button[data-action=pause]");
    browser.wait_for("main h1 [data-status=PAUSED]");
    browser.click("button[data-action=resume]");
    browser.wait_for("main h1 [data-status=RUNNING]");
    browser.click("button[data-action=cancel]");
    browser.wait_for("dialog#confirm[open]");
    browser.click("#confirm-ok");
    browser.wait_for("main h1 [data-status=CANCELLED]");
    assert_eq!(browser.count("button[data-action]"), 0);
    let list = api.get("/api/v1/firmware/deployments?status=CANCELLED");
    assert_eq!(list.data()["total"], 1, "{}", list.body);
}

/// Adds `n` devices straight into the server's SQLite file (the server stopped): enrolling
/// 10,000 through the API would spend minutes on argon2-free but audited round trips.
fn insert_devices(server: ServerProcess, n: usize) -> ServerProcess {
    let (db, dir) = server.stop();
    {
        let mut conn =
            rusqlite::Connection::open(dir.path().join("factory.db")).expect("open factory.db");
        let tx = conn.transaction().expect("transaction");
        {
            let mut insert = tx
                .prepare(
                    "INSERT INTO devices (id, name, company_id, production_line_id, status, \
                     version, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, 'OFFLINE', '0.1.0', ?5, ?5)",
                )
                .expect("prepare");
            for i in 0..n {
                insert
                    .execute(rusqlite::params![
                        format!("sim-{i:05}"),
                        format!("Line {} station {}", i % 40, i),
                        format!("company-{}", i % 3),
                        format!("line-{}", i % 40),
                        "2026-01-01 08:00:00.000000",
                    ])
                    .expect("insert device");
            }
        }
        tx.commit().expect("commit");
    }
    ServerProcess::start_with(db, dir, &[])
}

#[test]
fn ten_thousand_devices_first_page() {
    let _turn = take_turn();
    let server = insert_devices(ServerProcess::start(Backend::Sqlite), 10_000);
    let browser = Browser::start();
    log_in(&browser, &server, "admin", ADMIN_PASSWORD);

    // A fresh load of the list page (another query string, so the document is loaded again):
    // the document, its modules, the session check and the first page of the list.
    let start = Instant::now();
    browser.goto(&format!("{}/?fresh=1#/devices", server.base_url));
    browser.wait_until("the first page of 10,000 devices", || {
        browser.text("#device-list .page-info") == "1–50 of 10,000"
    });
    let took = start.elapsed();
    let timing = browser.execute(
        "const d = document.getElementById('device-list').dataset; \
         return [d.shownAtMs, d.renderMs];",
        vec![],
    );
    // Straight to stdout, not `println!`: the test harness captures the macro's output of a
    // passing test, and this figure is meant to be seen in every run's log.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout(),
        "10,000 devices: first page rendered {} ms after the navigation started (the page's \
         clock; its fetch + render took {} ms); {took:?} as the test saw it, WebDriver included",
        timing[0].as_str().unwrap_or("?"),
        timing[1].as_str().unwrap_or("?"),
    );
    assert_eq!(browser.count("#device-list tr[data-device-id]"), 50);
    browser.wait_until("the counts", || {
        browser.text("[data-count=total] strong") == "10,000"
    });
    assert_eq!(browser.text("[data-count=offline] strong"), "10,000");
    browser.screenshot("devices-10k");

    // Search and a filter narrow the list on the server.
    browser.type_into("#device-filters input[name=q]", "sim-0999");
    browser.wait_until("the search to narrow the list", || {
        browser.text("#device-list .page-info") == "1–10 of 10"
    });
    browser.type_into("#device-filters input[name=q]", "");
    browser.type_into("#device-filters input[name=productionLineId]", "line-7");
    browser.wait_until("the line filter", || {
        browser.text("#device-list .page-info") == "1–50 of 250"
    });
    // The next page is the next 50 of the same filter.
    browser.click("#device-list .pager button:last-child");
    browser.wait_until("the second page", || {
        browser.text("#device-list .page-info") == "51–100 of 250"
    });

    // A device whose name is HTML is shown as text: no element is made of it, nothing runs.
    let hostile = "<img src=x onerror=\"window.pwned=1\"><b>bold</b>";
    let api = Api::admin(&server);
    let enrolled = api.post_with_header(
        &format!(
            "/api/v1/devices/evil-1/token?name={}",
            percent_encode(hostile)
        ),
        ("X-Enrollment-Key", ENROLLMENT_KEY),
    );
    assert_eq!(enrolled.status, 200, "{}", enrolled.body);
    browser.type_into("#device-filters input[name=productionLineId]", "");
    browser.type_into("#device-filters input[name=q]", "evil");
    browser.wait_until("the hostile device", || {
        browser.text("#device-list .page-info") == "1–1 of 1"
    });
    assert!(browser.text("#device-list").contains(hostile));
    assert_eq!(browser.count("#device-list img, #device-list b"), 0);
    assert_eq!(
        browser.execute("return window.pwned === undefined;", vec![]),
        json!(true)
    );

    // The server goes away: the header says so, and the socket comes back by itself when the
    // server is up again on the same address.
    let addr = server.base_url.trim_start_matches("http://").to_owned();
    let (db, dir) = server.stop();
    browser.wait_until("the connection state to show the loss", || {
        browser.count("#conn[data-state=connecting]") == 1
    });
    assert!(
        browser.text("#conn").contains("reconnecting"),
        "{}",
        browser.text("#conn")
    );
    let _server = ServerProcess::start_on(&addr, db, dir, &[]);
    browser.wait_until("the socket to reconnect", || {
        browser.count("#conn[data-state=live]") == 1
    });
}

/// `%XX` for every byte but letters and digits, for a query value.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
