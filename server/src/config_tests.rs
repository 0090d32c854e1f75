//! The settings' unit tests: the layers, the one-line refusals, the `[rights]` section and
//! the example shipped in `deploy/`.

use super::*;
use clap::Parser as _;

fn cli(args: &[&str]) -> Cli {
    let mut argv = vec!["factory-server"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).unwrap()
}

#[test]
fn defaults_apply_without_any_input() {
    let config = Config::load(Cli::default()).unwrap();
    assert_eq!(config, Config::default());
    assert_eq!(
        config.database(),
        DatabaseTarget::Sqlite(PathBuf::from("./data/factory.db"))
    );
}

#[test]
fn file_beats_defaults_and_flags_beat_file() {
    let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("server.toml");
    std::fs::write(
        &file,
        "bind = \"0.0.0.0:9000\"\nallow_auto_enrollment = true\nlog_level = \"debug\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let from_file = Config::load(cli(&["--config", path])).unwrap();
    assert_eq!(from_file.bind, "0.0.0.0:9000");
    assert!(from_file.allow_auto_enrollment);
    assert_eq!(from_file.log_level, "debug");

    let flagged = Config::load(cli(&[
        "--config",
        path,
        "--bind",
        "127.0.0.1:7000",
        "--allow-auto-enrollment=false",
    ]))
    .unwrap();
    assert_eq!(flagged.bind, "127.0.0.1:7000");
    assert!(!flagged.allow_auto_enrollment);
    assert_eq!(flagged.log_level, "debug", "untouched file values survive");
}

#[test]
fn bare_bool_flag_means_true() {
    let config = Config::load(cli(&["--allow-auto-enrollment"])).unwrap();
    assert!(config.allow_auto_enrollment);
}

#[test]
fn bad_settings_are_one_line_errors() {
    let err = Config::load(cli(&["--bind", "nowhere"])).unwrap_err();
    assert!(err.to_string().contains("bind"));
    assert!(!err.to_string().contains('\n'));
    let err = Config::load(cli(&["--jwt-secret", "short"])).unwrap_err();
    assert!(err.to_string().contains("jwt_secret"));
    let err = Config::load(cli(&["--database-url", "mysql://x"])).unwrap_err();
    assert!(err.to_string().contains("unsupported scheme"));
    let err = Config::load(cli(&["--config", "/nonexistent/factory.toml"])).unwrap_err();
    assert!(err.to_string().contains("does not exist"));
}

#[test]
fn periods_past_any_clock_are_refused() {
    for (flag, value) in [
        ("--user-token-ttl-secs", "9223372036854775807"),
        ("--device-token-ttl-secs", "18446744073709551615"),
        ("--lockout-secs", "18446744073709551615"),
        ("--reboot-confirm-secs", "18446744073709551615"),
        ("--log-retention-days", "4294967295"),
    ] {
        let err = Config::load(cli(&[flag, value])).unwrap_err().to_string();
        let name = flag.trim_start_matches("--").replace('-', "_");
        assert!(err.starts_with(&name), "{flag} {value}: {err}");
    }
    let longest = MAX_PERIOD_SECS.to_string();
    let config = Config::load(cli(&["--user-token-ttl-secs", &longest])).unwrap();
    let now = chrono::Utc::now();
    assert!(now
        .checked_add_signed(chrono::TimeDelta::seconds(
            config.user_token_ttl_secs as i64
        ))
        .is_some());
}

#[test]
fn unknown_file_keys_are_refused() {
    let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("server.toml");
    std::fs::write(&file, "bnid = \"0.0.0.0:9000\"\n").unwrap();
    let err = Config::load(cli(&["--config", file.to_str().unwrap()])).unwrap_err();
    assert!(err.to_string().contains("bnid"), "{err}");
}

#[test]
fn firmware_and_ota_settings_are_checked() {
    let config = Config::load(cli(&[])).unwrap();
    assert_eq!(config.firmware_max_bytes, 512 * 1024 * 1024);
    assert_eq!(config.ota_jwt_expiry_minutes, 30);
    let key = "A".repeat(43) + "=";
    let config = Config::load(cli(&[
        "--firmware-trusted-keys",
        &format!("{key}, {key}"),
        "--firmware-require-signature",
        "--ota-no-jwt",
    ]))
    .unwrap();
    assert_eq!(config.firmware_keys().unwrap().len(), 2);
    assert!(config.firmware_require_signature && config.ota_no_jwt);
    let err = Config::load(cli(&["--firmware-require-signature"])).unwrap_err();
    assert!(err.to_string().contains("firmware_trusted_keys"), "{err}");
    let err = Config::load(cli(&["--firmware-trusted-keys", "c2hvcnQ="])).unwrap_err();
    assert!(err.to_string().contains("32-byte"), "{err}");
    let err = Config::load(cli(&["--ota-admin-secret", "short"])).unwrap_err();
    assert!(err.to_string().contains("ota_admin_secret"), "{err}");
    let err = Config::load(cli(&["--metrics-token", "short"])).unwrap_err();
    assert!(err.to_string().contains("metrics_token"), "{err}");
    let config = Config::load(cli(&["--metrics-token", "a-scraper-token-0123"])).unwrap();
    assert_eq!(
        config.metrics_token.as_deref(),
        Some("a-scraper-token-0123")
    );
    let err = Config::load(cli(&["--firmware-max-bytes", "0"])).unwrap_err();
    assert!(err.to_string().contains("firmware_max_bytes"), "{err}");
}

#[test]
fn signatures_are_required_once_a_key_is_trusted_unless_unsigned_is_allowed() {
    let key = "A".repeat(43) + "=";
    assert!(!Config::load(cli(&[])).unwrap().signatures_required());
    let trusted = Config::load(cli(&["--firmware-trusted-keys", &key])).unwrap();
    assert!(trusted.signatures_required());
    let allowed = Config::load(cli(&[
        "--firmware-trusted-keys",
        &key,
        "--firmware-allow-unsigned",
    ]))
    .unwrap();
    assert!(!allowed.signatures_required());
    let err = Config::load(cli(&[
        "--firmware-trusted-keys",
        &key,
        "--firmware-require-signature",
        "--firmware-allow-unsigned",
    ]))
    .unwrap_err();
    assert!(err.to_string().contains("contradicts"), "{err}");
}

#[test]
fn download_slots_and_ota_algorithm_are_checked() {
    let config = Config::load(cli(&[])).unwrap();
    assert_eq!(
        (config.download_slots, config.download_slots_per_line),
        (64, 16)
    );
    assert_eq!(config.ota_algorithm(), jsonwebtoken::Algorithm::HS256);
    let config = Config::load(cli(&[
        "--download-slots",
        "3",
        "--download-slots-per-line",
        "2",
        "--ota-jwt-algorithm",
        "HS512",
        "--ota-legacy-boards",
    ]))
    .unwrap();
    assert_eq!(config.download_slots, 3);
    assert_eq!(config.ota_algorithm(), jsonwebtoken::Algorithm::HS512);
    assert!(config.ota_legacy_boards);
    let err = Config::load(cli(&["--download-slots", "0"])).unwrap_err();
    assert!(err.to_string().contains("download_slots"), "{err}");
    let err = Config::load(cli(&["--ota-jwt-algorithm", "none"])).unwrap_err();
    assert!(err.to_string().contains("HS256 nor HS512"), "{err}");
}

#[test]
fn postgres_url_selects_postgres() {
    let config = Config::load(cli(&["--database-url", "postgres://u:pw@localhost/db"])).unwrap();
    assert!(matches!(config.database(), DatabaseTarget::Postgres(_)));
    assert_eq!(
        redact_url("postgres://u:pw@localhost/db"),
        "postgres://u:***@localhost/db"
    );
}

/// The example shipped in `deploy/` must load as it is.
#[test]
fn the_deploy_example_loads() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/config/factory-server.toml"
    );
    let cli = Cli {
        config: Some(PathBuf::from(path)),
        ..Cli::default()
    };
    let config = Config::load(cli).unwrap();
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/factory"));
    assert_eq!(config.cloud_batch_size, 500);
    // Its `[rights]` tables are there, commented out: the seed's table stands.
    assert_eq!(config.policy(), crate::policy::Policy::default());
}

#[test]
fn rights_come_from_the_file_and_the_flags() {
    let dir = std::env::temp_dir().join(format!("cfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("server.toml");
    std::fs::write(
        &file,
        "[rights.commands]\nexec_shell = \"OPERATOR\"\npush_config = \"ADMIN\"\n\
         [rights.templates]\ndisk_usage = \"OPERATOR\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let config = Config::load(cli(&["--config", path])).unwrap();
    let policy = config.policy();
    assert_eq!(
        policy.min_role(protocol::commands::CommandType::ExecShell),
        protocol::rest::Role::Operator
    );
    assert_eq!(
        policy.template_min_role("disk_usage"),
        protocol::rest::Role::Operator
    );
    let flagged = Config::load(cli(&[
        "--config",
        path,
        "--rights-commands",
        "exec_shell=MANAGER",
    ]))
    .unwrap()
    .policy();
    assert_eq!(
        flagged.min_role(protocol::commands::CommandType::ExecShell),
        protocol::rest::Role::Manager
    );
    assert_eq!(
        flagged.min_role(protocol::commands::CommandType::PushConfig),
        protocol::rest::Role::Admin,
        "the file's other entries stay"
    );
    assert_eq!(
        Config::load(cli(&[])).unwrap().policy(),
        crate::policy::Policy::default()
    );

    std::fs::write(&file, "[rights.commands]\nexec_sh = \"OPERATOR\"\n").unwrap();
    let err = Config::load(cli(&["--config", path]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("rights.commands.exec_sh: not a command type"),
        "{err}"
    );
    std::fs::write(&file, "[rights.templates]\nping = \"SUPERVISOR\"\n").unwrap();
    let err = Config::load(cli(&["--config", path]))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("rights.templates.ping: `SUPERVISOR` is not a role"),
        "{err}"
    );
    std::fs::write(&file, "[rights.tempaltes]\nping = \"ADMIN\"\n").unwrap();
    let err = Config::load(cli(&["--config", path]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("tempaltes"), "{err}");
    let err = Config::load(cli(&["--rights-templates", "ping"]))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("rights_templates:"), "{err}");
}

#[test]
fn metrics_retentions_have_flags_and_must_not_shrink() {
    let config = Config::load(cli(&[])).unwrap();
    assert_eq!(
        (
            config.metrics_raw_retention_hours,
            config.metrics_minute_retention_days,
            config.metrics_hour_retention_days,
            config.metrics_rollup_secs
        ),
        (24, 30, 365, 60)
    );
    let config = Config::load(cli(&[
        "--metrics-raw-retention-hours",
        "48",
        "--metrics-minute-retention-days",
        "7",
        "--metrics-hour-retention-days",
        "730",
        "--metrics-rollup-secs",
        "5",
    ]))
    .unwrap();
    assert_eq!(config.metrics_raw_retention_hours, 48);
    assert_eq!(config.metrics_minute_retention_days, 7);
    assert_eq!(config.metrics_hour_retention_days, 730);
    assert_eq!(config.metrics_rollup_secs, 5);
    for args in [
        &["--metrics-raw-retention-hours", "0"][..],
        &[
            "--metrics-raw-retention-hours",
            "100",
            "--metrics-minute-retention-days",
            "4",
        ],
        &["--metrics-minute-retention-days", "400"],
        &["--metrics-hour-retention-days", "4294967295"],
        &["--metrics-rollup-secs", "0"],
    ] {
        let err = Config::load(cli(args)).unwrap_err().to_string();
        assert!(err.contains("metrics"), "{args:?}: {err}");
        assert!(!err.contains('\n'));
    }
}
