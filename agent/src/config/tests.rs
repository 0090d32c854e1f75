//! Tests of the settings: layering, validation and the messages of bad settings.

use std::sync::Mutex;

use clap::Parser;

use super::*;
use protocol::device::MAX_DEVICE_ID_LEN;

/// Tests that set `EDGE_…` variables take this lock, since the environment is shared by
/// every test thread.
static ENV_LOCK: Mutex<()> = Mutex::new(());

const ALL_VARS: [&str; 26] = [
    "EDGE_CONFIG",
    "EDGE_DATA_DIR",
    "EDGE_SERVER_URL",
    "EDGE_DEVICE_ID",
    "EDGE_ENROLLMENT_KEY",
    "EDGE_NAME",
    "EDGE_COMPANY_ID",
    "EDGE_PRODUCTION_LINE_ID",
    "EDGE_CONNECTION_MODE",
    "EDGE_CLOUD_URL",
    "EDGE_CLOUD_TOKEN",
    "EDGE_STATUS_INTERVAL_MS",
    "EDGE_LOG_LEVEL",
    "EDGE_LOG_FILE",
    "EDGE_SCANNER_LISTEN",
    "EDGE_PRINTER_ADDR",
    "EDGE_PRINTER_TEMPLATE",
    "EDGE_BATCH_SIZE",
    "EDGE_PALLET_SIZE",
    "EDGE_REBOOT_COMMAND",
    "EDGE_SHUTDOWN_COMMAND",
    "EDGE_FIRMWARE_STAGING_DIR",
    "EDGE_FIRMWARE_TRUSTED_KEYS",
    "EDGE_FIRMWARE_REQUIRE_SIGNATURE",
    "EDGE_ALLOW_FIRMWARE_DOWNGRADE",
    "EDGE_FIRMWARE_ACTIVATE",
];

/// Sets variables for one test and removes every `EDGE_…` variable afterwards.
struct Env<'a> {
    _guard: std::sync::MutexGuard<'a, ()>,
}

impl Env<'_> {
    fn with(vars: &[(&str, &str)]) -> Self {
        let guard = ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        for var in ALL_VARS {
            std::env::remove_var(var);
        }
        for (k, v) in vars {
            std::env::set_var(k, v);
        }
        Env { _guard: guard }
    }
}

impl Drop for Env<'_> {
    fn drop(&mut self) {
        for var in ALL_VARS {
            std::env::remove_var(var);
        }
    }
}

fn toml_file(contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edge-agent-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agent.toml");
    std::fs::write(&path, contents).unwrap();
    path
}

fn load(args: &[&str]) -> Result<Config, ConfigError> {
    let mut argv = vec!["edge-agent"];
    argv.extend_from_slice(args);
    Config::from_cli(Cli::try_parse_from(argv).unwrap())
}

const TOML: &str = r#"
        server_url = "http://toml.example:8080/"
        device_id = "edge-toml"
        data_dir = "/tmp/from-toml"
        name = "Line PC (toml)"
        status_interval_ms = 1111
    "#;

#[test]
fn defaults_apply_when_nothing_else_is_given() {
    let _env = Env::with(&[]);
    let c = load(&["--server-url", "http://s:1", "--device-id", "edge-1"]).unwrap();
    assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    assert_eq!(c.status_interval, Duration::from_millis(5000));
    assert_eq!(c.connection_mode, ConnectionMode::ViaLocalServer);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.name, "edge-1");
    assert_eq!(c.enrollment_key, None);
}

#[test]
fn toml_beats_defaults() {
    let _env = Env::with(&[]);
    let path = toml_file(TOML);
    let c = load(&["--config", path.to_str().unwrap()]).unwrap();
    assert_eq!(c.server_url, "http://toml.example:8080");
    assert_eq!(c.device_id, "edge-toml");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/from-toml"));
    assert_eq!(c.name, "Line PC (toml)");
    assert_eq!(c.status_interval, Duration::from_millis(1111));
    // Not in the file: the default shows through.
    assert_eq!(c.log_level, "info");
}

#[test]
fn env_beats_toml() {
    let path = toml_file(TOML);
    let _env = Env::with(&[
        ("EDGE_CONFIG", path.to_str().unwrap()),
        ("EDGE_STATUS_INTERVAL_MS", "2222"),
        ("EDGE_NAME", "from env"),
    ]);
    let c = load(&[]).unwrap();
    assert_eq!(c.status_interval, Duration::from_millis(2222));
    assert_eq!(c.name, "from env");
    // Not in the environment: the TOML value shows through.
    assert_eq!(c.device_id, "edge-toml");
}

#[test]
fn flag_beats_env_beats_toml() {
    let path = toml_file(TOML);
    let _env = Env::with(&[
        ("EDGE_STATUS_INTERVAL_MS", "2222"),
        ("EDGE_DATA_DIR", "/tmp/from-env"),
        ("EDGE_DEVICE_ID", "edge-env"),
    ]);
    let c = load(&[
        "--config",
        path.to_str().unwrap(),
        "--status-interval-ms",
        "3333",
        "--device-id",
        "edge-flag",
    ])
    .unwrap();
    assert_eq!(c.status_interval, Duration::from_millis(3333));
    assert_eq!(c.device_id, "edge-flag");
    assert_eq!(c.name, "Line PC (toml)");
    assert_eq!(c.data_dir, PathBuf::from("/tmp/from-env"));
}

#[test]
fn missing_required_settings_are_named() {
    let _env = Env::with(&[]);
    let err = load(&["--device-id", "edge-1"]).unwrap_err();
    assert!(err.to_string().contains("server_url is required"), "{err}");
    let err = load(&["--server-url", "http://s"]).unwrap_err();
    assert!(err.to_string().contains("device_id is required"), "{err}");
}

#[test]
fn bad_values_give_one_line_reasons() {
    let _env = Env::with(&[]);
    let cases: [&[&str]; 6] = [
        &["--server-url", "ftp://s", "--device-id", "e"],
        &["--server-url", "s:80", "--device-id", "e"],
        &["--server-url", "http://s", "--device-id", "bad id"],
        &[
            "--server-url",
            "http://s",
            "--device-id",
            "e",
            "--status-interval-ms",
            "99",
        ],
        &[
            "--server-url",
            "http://s",
            "--device-id",
            "e",
            "--log-level",
            "info,=[x",
        ],
        &[
            "--server-url",
            "http://s",
            "--device-id",
            "e",
            "--connection-mode",
            "DIRECT_CLOUD",
        ],
    ];
    for args in cases {
        let err = load(args).unwrap_err().to_string();
        assert!(!err.contains('\n'), "{err}");
    }
    let long_id = "a".repeat(MAX_DEVICE_ID_LEN + 1);
    assert!(load(&["--server-url", "http://s", "--device-id", &long_id]).is_err());
    let max_id = "a".repeat(MAX_DEVICE_ID_LEN);
    assert!(load(&["--server-url", "http://s", "--device-id", &max_id]).is_ok());
}

#[test]
fn toml_typos_and_wrong_types_are_refused_on_one_line() {
    let _env = Env::with(&[]);
    for contents in [
        "server_url = \"http://s\"\ndevice_id = \"e\"\nstatus_intervall_ms = 5",
        "server_url = \"http://s\"\ndevice_id = \"e\"\nstatus_interval_ms = \"soon\"",
    ] {
        let path = toml_file(contents);
        let err = load(&["--config", path.to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(!err.contains('\n'), "{err}");
    }
    let err = load(&["--config", "/nonexistent/agent.toml"]).unwrap_err();
    assert!(matches!(err, ConfigError::NoConfigFile(_)));
}

#[test]
fn ws_url_follows_the_server_scheme() {
    let _env = Env::with(&[]);
    let c = load(&["--server-url", "http://s:8080/", "--device-id", "e"]).unwrap();
    assert_eq!(c.ws_url(), "ws://s:8080/ws/device");
    let c = load(&["--server-url", "https://s/base", "--device-id", "e"]).unwrap();
    assert_eq!(c.ws_url(), "wss://s/base/ws/device");
}

#[test]
fn secrets_are_never_printed() {
    let _env = Env::with(&[]);
    let c = load(&[
        "--server-url",
        "http://s",
        "--device-id",
        "e",
        "--enrollment-key",
        "hunter2",
    ])
    .unwrap();
    assert_eq!(
        c.enrollment_key.as_ref().map(Secret::expose),
        Some("hunter2")
    );
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn firmware_settings_have_defaults_and_are_checked() {
    // 32 bytes of 0x01, base64.
    let key = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
    let _env = Env::with(&[("EDGE_FIRMWARE_TRUSTED_KEYS", key)]);
    let base = [
        "--server-url",
        "http://s",
        "--device-id",
        "e",
        "--data-dir",
        "/d",
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        load(&args)
    };
    let c = with(&[]).unwrap();
    assert_eq!(c.firmware_staging_dir, PathBuf::from("/d/staging"));
    assert_eq!(c.firmware_trusted_keys, vec![[1u8; 32]]);
    assert!(!c.firmware_require_signature);
    assert!(!c.allow_firmware_downgrade);
    assert!(c.firmware_activate);

    let c = with(&[
        "--firmware-staging-dir",
        "/s",
        "--firmware-require-signature",
        "--allow-firmware-downgrade",
        "--firmware-trusted-keys",
        &format!("{key}, {key}"),
    ])
    .unwrap();
    assert_eq!(c.firmware_staging_dir, PathBuf::from("/s"));
    assert_eq!(c.firmware_trusted_keys.len(), 2);
    assert!(c.firmware_require_signature && c.allow_firmware_downgrade);

    let err = with(&["--firmware-trusted-keys", "c2hvcnQ="]).unwrap_err();
    assert!(
        err.to_string().starts_with("firmware_trusted_keys:"),
        "{err}"
    );
    let err = with(&[
        "--firmware-trusted-keys",
        "",
        "--firmware-require-signature",
    ])
    .unwrap_err();
    assert!(err.to_string().contains("at least one key"), "{err}");
    assert!(!with(&[]).unwrap().firmware_allow_unsigned);
    assert!(
        with(&["--firmware-allow-unsigned"])
            .unwrap()
            .firmware_allow_unsigned
    );
    let err = with(&["--firmware-allow-unsigned", "--firmware-require-signature"]).unwrap_err();
    assert!(err.to_string().contains("contradicts"), "{err}");
}

#[test]
fn firmware_activation_is_on_unless_a_layer_turns_it_off() {
    let base = ["--server-url", "http://s", "--device-id", "e"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        load(&args).unwrap().firmware_activate
    };
    let path = toml_file("firmware_activate = false");
    let config = path.to_str().unwrap();
    {
        let _env = Env::with(&[]);
        assert!(with(&[]));
        assert!(!with(&["--firmware-activate", "false"]));
        assert!(!with(&["--config", config]));
    }
    let _env = Env::with(&[("EDGE_FIRMWARE_ACTIVATE", "false")]);
    assert!(!with(&[]));
    // A bare flag beats the variable.
    assert!(with(&["--firmware-activate"]));
}

#[test]
fn production_settings_have_defaults_and_are_checked() {
    let _env = Env::with(&[("EDGE_REBOOT_COMMAND", "/bin/echo rebooting now")]);
    let c = load(&[
        "--server-url",
        "http://s",
        "--device-id",
        "e",
        "--data-dir",
        "/d",
    ])
    .unwrap();
    assert_eq!(c.scanner_listen, None);
    assert_eq!(c.printer, None);
    assert_eq!(c.batch_size, DEFAULT_BATCH_SIZE);
    assert_eq!(c.pallet_size, DEFAULT_PALLET_SIZE);
    assert_eq!(c.log_file, PathBuf::from("/d").join(DEFAULT_LOG_FILE));
    assert_eq!(c.reboot_command, ["/bin/echo", "rebooting", "now"]);
    assert_eq!(c.shutdown_command, DEFAULT_SHUTDOWN_COMMAND);

    let base = ["--server-url", "http://s", "--device-id", "e"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        load(&args)
    };
    let err = with(&["--scanner-listen", "127.0.0.1:0"]).unwrap_err();
    assert!(
        err.to_string().starts_with("company_id: is required"),
        "{err}"
    );
    let c = with(&["--scanner-listen", "127.0.0.1:0", "--company-id", "acme"]).unwrap();
    assert_eq!(c.scanner_listen, Some("127.0.0.1:0".parse().unwrap()));
    let err = with(&["--scanner-listen", "localhost", "--company-id", "a"]).unwrap_err();
    assert!(err.to_string().starts_with("scanner_listen:"), "{err}");
    let bad = Cli::try_parse_from(["edge-agent", "--batch-size=-3"]);
    assert!(bad.is_err(), "a negative batch size is refused by clap");
}

#[test]
fn an_overlay_beats_every_other_layer_and_is_validated() {
    let _env = Env::with(&[("EDGE_STATUS_INTERVAL_MS", "2222")]);
    let cli = Cli::try_parse_from(["edge-agent", "--server-url", "http://s", "--device-id", "e"])
        .unwrap();
    let source = ConfigSource::from_cli(cli).unwrap();
    let overlay = serde_json::json!({"status_interval_ms": 700, "log_level": "debug"});
    let c = source.resolve(Some(&overlay)).unwrap();
    assert_eq!(c.status_interval, Duration::from_millis(700));
    assert_eq!(c.log_level, "debug");
    let bad = serde_json::json!({"status_interval_ms": 5});
    assert!(source.resolve(Some(&bad)).is_err());
    assert!(!format!("{source:?}").contains("http://s"));
}

#[test]
fn the_printer_is_configured_in_every_layer_and_checked_at_start() {
    let path = toml_file(
        r#"
        server_url = "http://s"
        device_id = "e"
        printer_addr = "printer.line-1.lan:9100"
        printer_template = '''
^XA^FD{kind} {id}^FS^XZ
'''
    "#,
    );
    let env = Env::with(&[("EDGE_CONFIG", path.to_str().unwrap())]);
    let printer = load(&[]).unwrap().printer.expect("a printer from the file");
    assert_eq!(printer.addr, "printer.line-1.lan:9100");
    assert_eq!(
        printer.template,
        crate::label::LabelTemplate::parse("^XA^FD{kind} {id}^FS^XZ\n").unwrap()
    );
    drop(env);

    // The environment beats the file, a flag beats the environment; no template: the default.
    let env = Env::with(&[("EDGE_PRINTER_ADDR", "10.0.0.5:9100")]);
    let base = ["--server-url", "http://s", "--device-id", "e"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        load(&args)
    };
    let printer = with(&[]).unwrap().printer.unwrap();
    assert_eq!(printer.addr, "10.0.0.5:9100");
    assert_eq!(printer.template, crate::label::LabelTemplate::default());
    let c = with(&["--printer-addr", "[fd00::5]:9101"]).unwrap();
    assert_eq!(c.printer.unwrap().addr, "[fd00::5]:9101");
    drop(env);

    let _env = Env::with(&[]);
    for bad in [
        "printer.lan",
        "printer.lan:",
        "printer.lan:0",
        "printer.lan:70000",
        ":9100",
        "fd00::5:9100",
        "[fd00::zz]:9100",
        "bad_host:9100",
        "-x.lan:9100",
        "a..b:9100",
    ] {
        let err = with(&[&format!("--printer-addr={bad}")])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("printer_addr: `") && err.contains(bad) && !err.contains('\n'),
            "{bad}: {err}"
        );
    }
    let err = with(&[
        "--printer-addr",
        "p:9100",
        "--printer-template",
        "{closedat}",
    ])
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("printer_template: unknown placeholder {closedat}"),
        "{err}"
    );
    // A template without an address changes nothing: no printer, no labels.
    let c = with(&["--printer-template", "{id}"]).unwrap();
    assert_eq!(c.printer, None);
}
