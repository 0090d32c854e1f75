//! Fuzz targets for the agent's decoders of outside input: scanner lines (bytes from the TCP
//! listener through `LineSplitter` into `gs1::parse`), `push_config` merge patches applied to
//! a real store, and the TOML configuration file. Seeds are in `tests/corpus/<target>/`; see
//! the `fuzzing` crate for the mutations and the counts each target prints.

use std::path::{Path, PathBuf};

use fuzzing::{corpus, run, Seed, Verdict};
use serde_json::Value;

use crate::actors::production::LineSplitter;
use crate::config::{Cli, Config, ConfigSource, ConnectionMode, MIN_STATUS_INTERVAL_MS};
use crate::gs1;
use crate::remote_config;
use crate::store::Store;

fn seeds(target: &str) -> Vec<Seed> {
    corpus(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus")
            .join(target),
    )
}

/// What every accepted code must be: a GTIN-14 of digits with a right check digit, every
/// check-digit field right, a serial within its limits, and the same code when parsed again.
fn check_code(code: &gs1::Gs1Code) -> Result<(), String> {
    let gtin = &code.gtin;
    if gtin.len() != 14 || !gtin.bytes().all(|b| b.is_ascii_digit()) || !gs1::check_digit_ok(gtin) {
        return Err(format!("accepted GTIN {gtin:?}"));
    }
    for (ai, value) in &code.elements {
        if matches!(ai.as_str(), "00" | "01" | "02") && !gs1::check_digit_ok(value) {
            return Err(format!(
                "accepted AI {ai} with a wrong check digit: {value:?}"
            ));
        }
    }
    if let Some(serial) = &code.serial {
        if serial.is_empty() || serial.chars().count() > 20 || serial.contains('\u{1d}') {
            return Err(format!("accepted serial {serial:?}"));
        }
    }
    let untrimmed = code
        .code
        .trim_matches(|c: char| c.is_whitespace() && c != '\u{1d}');
    if code.code.chars().count() > gs1::MAX_CODE_LEN || untrimmed != code.code {
        return Err(format!("accepted code text {:?}", code.code));
    }
    match gs1::parse(&code.code) {
        Ok(again) if &again == code => Ok(()),
        other => Err(format!("{:?} parses again as {other:?}", code.code)),
    }
}

#[test]
fn fuzz_gs1_lines() {
    let seeds = seeds("gs1");
    let vocabulary = [
        "01",
        "21",
        "10",
        "17",
        "00",
        "91",
        "(01)",
        "(21)",
        "(",
        ")",
        "]d2",
        "]C1",
        "]Q3",
        "\u{1d}",
        "04006381333931",
        "00614141999996",
        "\n",
        "\r\n",
        "CLOSE_BATCH",
    ];
    run(
        "gs1",
        &seeds,
        fuzzing::bytes::mutations(&seeds, &vocabulary),
        |_, bytes| {
            let mut splitter = LineSplitter::default();
            let mut lines = splitter.push(bytes);
            lines.extend(splitter.finish());
            let mut accepted = false;
            for line in &lines {
                // A line is at most MAX_LINE bytes as read; each byte that is not UTF-8
                // becomes a 3-byte replacement character.
                if line.len() > 3 * crate::actors::production::MAX_LINE {
                    return Err(format!("a line of {} bytes", line.len()));
                }
                if let Ok(code) = gs1::parse(line) {
                    check_code(&code)?;
                    accepted = true;
                }
            }
            Ok(if accepted {
                Verdict::Accepted
            } else {
                Verdict::Refused
            })
        },
    );
}

/// The settings an accepted configuration promises, whatever layer they came from.
fn check_config(config: &Config) -> Result<(), String> {
    if config.status_interval.as_millis() < u128::from(MIN_STATUS_INTERVAL_MS) {
        return Err(format!("status interval {:?}", config.status_interval));
    }
    if config.device_id.is_empty()
        || config.device_id.len() > protocol::device::MAX_DEVICE_ID_LEN
        || !config
            .device_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!("device id {:?}", config.device_id));
    }
    if !(config.server_url.starts_with("http://") || config.server_url.starts_with("https://"))
        || !config.ws_url().starts_with("ws")
    {
        return Err(format!("server url {:?}", config.server_url));
    }
    for argv in [&config.reboot_command, &config.shutdown_command] {
        if argv.is_empty() || argv.iter().any(|a| a.is_empty() || a.contains('\0')) {
            return Err(format!("command {argv:?}"));
        }
    }
    if config.connection_mode == ConnectionMode::DirectCloud
        && (config.cloud_url.is_none() || config.cloud_token.is_none())
    {
        return Err("DIRECT_CLOUD without a cloud URL and token".into());
    }
    if config.scanner_listen.is_some() && config.company_id.is_none() {
        return Err("a scanner without a company".into());
    }
    if config.data_dir.as_os_str().is_empty() {
        return Err("an empty data dir".into());
    }
    if let Some(printer) = &config.printer {
        if printer.addr.is_empty() || !printer.addr.contains(':') {
            return Err(format!("printer address {:?}", printer.addr));
        }
    }
    Ok(())
}

/// The layers under a pushed configuration: flags only, built rather than parsed so that no
/// `EDGE_…` variable another test sets leaks in.
fn flags_source() -> ConfigSource {
    ConfigSource::from_cli(Cli {
        server_url: Some("http://factory.example:8080".into()),
        device_id: Some("edge-fuzz".into()),
        ..Cli::default()
    })
    .unwrap()
}

#[test]
fn fuzz_push_config_patches() {
    let seeds = seeds("push_config");
    let vocabulary = [
        "statusIntervalMs",
        "batchSize",
        "palletSize",
        "logLevel",
        "name",
        "companyId",
        "productionLineId",
        "connectionMode",
        "scannerListen",
        "printerAddr",
        "printerTemplate",
        "serverUrl",
        "cloudUrl",
        "cloudToken",
        "rebootCommand",
        "shutdownCommand",
        "deviceId",
        "DIRECT_CLOUD",
        "VIA_LOCAL_SERVER",
        "debug",
    ];
    let dir = std::env::temp_dir().join(format!("edge-agent-fuzz-{}", uuid::Uuid::new_v4()));
    let store = Store::open(&dir).unwrap();
    let source = flags_source();
    run(
        "push_config",
        &seeds,
        fuzzing::json_inputs(&seeds, &vocabulary),
        |_, bytes| {
            let Ok(patch) = serde_json::from_slice::<Value>(bytes) else {
                return Ok(Verdict::Refused);
            };
            let before = remote_config::load(&store)
                .map_err(|e| e.to_string())?
                .document;
            match remote_config::apply(&store, &source, &patch) {
                Ok((document, config)) => {
                    let stored = remote_config::load(&store)
                        .map_err(|e| e.to_string())?
                        .document;
                    if stored != document || !document.is_object() {
                        return Err(format!("answered {document}, stored {stored}"));
                    }
                    // Nothing outside the allow-list is ever stored, whatever the patch held.
                    if let Some(key) = stored
                        .as_object()
                        .and_then(|o| o.keys().find(|k| !remote_config::is_allowed(k)))
                    {
                        return Err(format!("a forbidden key `{key}` was stored: {stored}"));
                    }
                    // What is stored must resolve again, as it will at the next start.
                    let again = remote_config::resolve(&source, &stored).map_err(|e| {
                        format!("the stored document {stored} no longer resolves: {e}")
                    })?;
                    check_config(&config)?;
                    check_config(&again)?;
                    Ok(Verdict::Accepted)
                }
                Err(_) => {
                    let after = remote_config::load(&store)
                        .map_err(|e| e.to_string())?
                        .document;
                    if after != before {
                        return Err(format!("a refused patch changed {before} into {after}"));
                    }
                    Ok(Verdict::Refused)
                }
            }
        },
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

const SETTINGS: [&str; 25] = [
    "data_dir",
    "server_url",
    "device_id",
    "enrollment_key",
    "name",
    "company_id",
    "production_line_id",
    "connection_mode",
    "cloud_url",
    "cloud_token",
    "status_interval_ms",
    "log_level",
    "log_file",
    "scanner_listen",
    "printer_addr",
    "printer_template",
    "batch_size",
    "pallet_size",
    "reboot_command",
    "shutdown_command",
    "firmware_staging_dir",
    "firmware_trusted_keys",
    "firmware_require_signature",
    "allow_firmware_downgrade",
    "firmware_activate",
];

#[test]
fn fuzz_config_files() {
    let seeds = seeds("config");
    let dir = std::env::temp_dir().join(format!("edge-agent-fuzz-config-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("edge-agent.toml");
    run(
        "agent_config",
        &seeds,
        fuzzing::settings_inputs(&seeds, &SETTINGS),
        |_, bytes| {
            std::fs::write(&file, bytes).map_err(|e| e.to_string())?;
            let cli = Cli {
                config: Some(file.clone()),
                ..Cli::default()
            };
            let resolved = ConfigSource::from_cli(cli).and_then(|s| s.resolve::<()>(None));
            match resolved {
                Ok(config) => {
                    check_config(&config)?;
                    Ok(Verdict::Accepted)
                }
                Err(e) => {
                    let text = e.to_string();
                    if text.contains('\n') || text.is_empty() {
                        return Err(format!("not a one-line reason: {text:?}"));
                    }
                    Ok(Verdict::Refused)
                }
            }
        },
    );
    let _ = std::fs::remove_dir_all(&dir);
}
