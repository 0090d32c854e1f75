//! `edge-agent status|queue stats|enroll`: what a supervisor or a technician at the line PC
//! asks of an agent without the server, read from (or written to) the agent's database.
//! Reading is safe while the agent runs (WAL; one statement each).

use anyhow::Context as _;
use serde_json::json;

use crate::config::{AdminCommand, ConfigSource, QueueCommand};
use crate::enroll::{request_token, Enrollment};
use crate::store::Store;

pub fn run(command: AdminCommand, source: &ConfigSource) -> anyhow::Result<()> {
    match command {
        AdminCommand::Status => {
            let data_dir = source.data_dir();
            let store = open(&data_dir)?;
            let queue = store.queue_stats(chrono::Utc::now())?;
            let status = json!({
                "dataDir": data_dir,
                "tokenStored": store.token()?.is_some(),
                "queue": queue,
                "labelsWaiting": store.label_count()?,
                "production": store.production()?,
            });
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        AdminCommand::Queue(QueueCommand::Stats) => {
            let store = open(&source.data_dir())?;
            let queue = store.queue_stats(chrono::Utc::now())?;
            println!("{}", serde_json::to_string_pretty(&queue)?);
        }
        AdminCommand::Enroll => {
            let config = source.resolve::<()>(None)?;
            if config.enrollment_key.is_none() {
                anyhow::bail!(
                    "no enrollment key (flag --enrollment-key or env EDGE_ENROLLMENT_KEY)"
                );
            }
            crate::http::init(config.ca_file.as_deref())
                .map_err(|e| anyhow::anyhow!("ca_file: {e}"))?;
            // Enrolling sets a line PC up: the data dir and its database may be new.
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
            let store = Store::open(&config.data_dir)
                .with_context(|| format!("cannot open {}", config.data_dir.display()))?;
            let enrollment = Enrollment::from_config(&config, env!("CARGO_PKG_VERSION"));
            let answer = actix::System::new().block_on(async move {
                let client = crate::http::client(None);
                request_token(&client, &enrollment).await
            })?;
            store.set_token(&answer.token)?;
            println!(
                "enrolled {} at {}; token stored, valid until {}",
                answer.device_id,
                config.server_url,
                answer.expires_at.to_rfc3339()
            );
        }
    }
    Ok(())
}

fn open(data_dir: &std::path::Path) -> anyhow::Result<Store> {
    // Never creates a data dir: a mistyped path must not answer an empty, healthy queue.
    if !data_dir.join("agent.db").is_file() {
        anyhow::bail!("{}: no agent database here", data_dir.display());
    }
    Store::open(data_dir).with_context(|| format!("cannot open {}", data_dir.display()))
}
