//! The configuration pushed by the server (`push_config`): a JSON document with the
//! contract's camelCase keys, stored in SQLite and layered over every other setting.
//!
//! A patch (RFC 7386 JSON merge patch) is merged into the stored document with the
//! `json-patch` crate; the result must match `RemoteConfig` (known keys, right types) and,
//! layered over the other settings, must pass the same validation as a start-up setting.
//! Only then is it stored. A `null` removes a key, so the layers below show through again.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{Config, ConfigSource, ConnectionMode, Secret};
use crate::store::{Store, StoreActor, StoreError};

/// The `kv` key of the stored document.
const REMOTE_CONFIG_KEY: &str = "remote_config";

/// The keys a pushed configuration may set. It deserializes from camelCase and serializes
/// to the snake_case names of the other layers.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all(deserialize = "camelCase"), deny_unknown_fields)]
pub struct RemoteConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    server_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    company_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    production_line_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_mode: Option<ConnectionMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cloud_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scanner_listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pallet_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reboot_command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shutdown_command: Option<Vec<String>>,
}

/// Why a pushed configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RemoteConfigError {
    #[error("patch must be a JSON object")]
    NotAnObject,
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// The settings that the running agent picks up at once; every other change waits for a
/// restart (see `restart_needed`).
pub const LIVE_SETTINGS: [&str; 11] = [
    "serverUrl",
    "connectionMode",
    "cloudUrl",
    "cloudToken",
    "statusIntervalMs",
    "logLevel",
    "companyId",
    "batchSize",
    "palletSize",
    "rebootCommand",
    "shutdownCommand",
];

/// Checks a document against the schema and layers it over `source`.
pub fn resolve(source: &ConfigSource, document: &Value) -> Result<Config, RemoteConfigError> {
    let remote: RemoteConfig = serde_json::from_value(document.clone())
        .map_err(|e| RemoteConfigError::Schema(e.to_string()))?;
    source
        .resolve(Some(&remote))
        .map_err(|e| RemoteConfigError::Invalid(e.to_string()))
}

/// The stored document, `{}` when nothing was ever pushed.
pub fn load(store: &Store) -> Result<Value, StoreError> {
    match store.kv(REMOTE_CONFIG_KEY)? {
        None => Ok(Value::Object(Default::default())),
        Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::BadState {
            what: "pushed configuration",
            reason: e.to_string(),
        }),
    }
}

/// Merges `patch` into the stored document, checks the result, stores it, and answers the
/// new document with the settings it gives. A refused patch changes nothing.
pub fn apply(
    store: &Store,
    source: &ConfigSource,
    patch: &Value,
) -> Result<(Value, Config), RemoteConfigError> {
    if !patch.is_object() {
        return Err(RemoteConfigError::NotAnObject);
    }
    let mut document = load(store)?;
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
                .filter(|k| !LIVE_SETTINGS.contains(&k.as_str()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The document as it may be shown: secrets replaced by a placeholder.
pub fn redacted(document: &Value) -> Value {
    let mut shown = document.clone();
    if let Some(token) = shown.get_mut("cloudToken") {
        *token = Value::String("<redacted>".into());
    }
    shown
}

/// Applies a patch on the store's thread (see `apply`).
#[derive(actix::Message)]
#[rtype(result = "Result<(Value, Config), RemoteConfigError>")]
pub struct ApplyConfig {
    pub source: ConfigSource,
    pub patch: Value,
}

impl actix::Handler<ApplyConfig> for StoreActor {
    type Result = Result<(Value, Config), RemoteConfigError>;

    fn handle(&mut self, msg: ApplyConfig, _: &mut Self::Context) -> Self::Result {
        apply(self.store()?, &msg.source, &msg.patch)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::*;
    use crate::config::Cli;
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
            (json!({"deviceId": "other"}), "unknown field `deviceId`"),
            (
                json!({"connectionMode": "CARRIER_PIGEON"}),
                "unknown variant",
            ),
            (json!({"connectionMode": "DIRECT_CLOUD"}), "cloud_url"),
            (json!({"serverUrl": "ftp://x"}), "server_url"),
            (json!({"rebootCommand": []}), "reboot_command"),
        ];
        for (patch, reason) in cases {
            let err = apply(&store, &source, &patch).unwrap_err().to_string();
            assert!(err.contains(reason), "{patch}: {err}");
        }
        assert!(matches!(
            apply(&store, &source, &json!([1])),
            Err(RemoteConfigError::NotAnObject)
        ));
        assert_eq!(load(&store).unwrap(), json!({"logLevel": "debug"}));
    }

    #[test]
    fn restart_keys_and_redaction() {
        let patch = json!({"statusIntervalMs": 1000, "scannerListen": "0.0.0.0:9", "name": "x"});
        let mut keys = restart_needed(&patch);
        keys.sort();
        assert_eq!(keys, ["name", "scannerListen"]);
        let shown = redacted(&json!({"cloudToken": "s3cret", "a": 1}));
        assert_eq!(shown, json!({"cloudToken": "<redacted>", "a": 1}));
    }
}
