//! The store actor: the device token, the stored results of answered commands and the
//! pushed configuration, read and written on a `SyncArbiter` thread.
//!
//! rusqlite blocks, so the store lives on its own thread and every other actor talks to it
//! with messages. The offline queue (`actors/queue.rs`) is a second actor over the same
//! connection (`store::Shared`).

use actix::{Actor, Handler, Message, SyncContext};
use protocol::commands::CommandResult;
use serde_json::Value;

use crate::config::{Config, ConfigSource};
use crate::remote_config::{self, RemoteConfigError};
use crate::store::{Shared, StoreError};
use crate::trust::{self, RotationError, TrustState};

/// The store as an actor on its own thread.
pub struct StoreActor {
    store: Shared,
}

impl StoreActor {
    /// Hands the shared store to a `SyncArbiter` factory, which runs once per thread.
    pub fn factory(store: Shared) -> impl Fn() -> StoreActor + Send + Sync + 'static {
        move || StoreActor {
            store: store.clone(),
        }
    }
}

impl Actor for StoreActor {
    type Context = SyncContext<Self>;

    fn started(&mut self, _ctx: &mut Self::Context) {
        tracing::debug!("store open at {}", self.store.lock().path().display());
    }
}

/// The stored device JWT, if any.
#[derive(Message)]
#[rtype(result = "Result<Option<String>, StoreError>")]
pub struct GetToken;

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct SetToken(pub String);

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ClearToken;

/// The stored result of an answered command.
#[derive(Message)]
#[rtype(result = "Result<Option<CommandResult>, StoreError>")]
pub struct GetResult {
    pub id: String,
}

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct PutResult {
    pub result: CommandResult,
}

impl Handler<GetToken> for StoreActor {
    type Result = Result<Option<String>, StoreError>;

    fn handle(&mut self, _msg: GetToken, _ctx: &mut Self::Context) -> Self::Result {
        self.store.lock().token()
    }
}

impl Handler<SetToken> for StoreActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: SetToken, _ctx: &mut Self::Context) -> Self::Result {
        self.store.lock().set_token(&msg.0)
    }
}

impl Handler<ClearToken> for StoreActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, _msg: ClearToken, _ctx: &mut Self::Context) -> Self::Result {
        self.store.lock().clear_token()
    }
}

impl Handler<GetResult> for StoreActor {
    type Result = Result<Option<CommandResult>, StoreError>;

    fn handle(&mut self, msg: GetResult, _ctx: &mut Self::Context) -> Self::Result {
        self.store.lock().result(&msg.id)
    }
}

impl Handler<PutResult> for StoreActor {
    type Result = Result<(), StoreError>;

    fn handle(&mut self, msg: PutResult, _ctx: &mut Self::Context) -> Self::Result {
        self.store.lock().put_result(&msg.result)
    }
}

/// Applies a patch on the store's thread (see `remote_config::apply`).
#[derive(Message)]
#[rtype(result = "Result<(Value, Config), RemoteConfigError>")]
pub struct ApplyConfig {
    pub source: ConfigSource,
    pub patch: Value,
}

impl Handler<ApplyConfig> for StoreActor {
    type Result = Result<(Value, Config), RemoteConfigError>;

    fn handle(&mut self, msg: ApplyConfig, _: &mut Self::Context) -> Self::Result {
        remote_config::apply(&self.store.lock(), &msg.source, &msg.patch)
    }
}

/// The firmware keyring and floors (`store/trust.rs`), for the updater's checks.
#[derive(Message)]
#[rtype(result = "Result<TrustState, StoreError>")]
pub struct GetTrust;

impl Handler<GetTrust> for StoreActor {
    type Result = Result<TrustState, StoreError>;

    fn handle(&mut self, _msg: GetTrust, _ctx: &mut Self::Context) -> Self::Result {
        self.store.lock().trust()
    }
}

/// Raises a project's security floor after a verified release was staged.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct RaiseFloor {
    pub project: String,
    pub floor: u64,
}

impl Handler<RaiseFloor> for StoreActor {
    type Result = Result<u64, StoreError>;

    fn handle(&mut self, msg: RaiseFloor, _ctx: &mut Self::Context) -> Self::Result {
        self.store.lock().raise_floor(&msg.project, msg.floor)
    }
}

/// Applies a signed key rotation: read, check and write under one lock of the store, so two
/// rotations can never both pass the sequence check.
#[derive(Message)]
#[rtype(result = "Result<Vec<[u8; 32]>, RotateError>")]
pub struct Rotate {
    pub configured: Vec<[u8; 32]>,
    pub rotation: protocol::firmware::KeyRotation,
    pub signature_base64: String,
}

/// A rotation refused, or the store failing under it.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Refused(#[from] RotationError),
    #[error("keyring not stored: {0}")]
    Store(#[from] StoreError),
}

impl Handler<Rotate> for StoreActor {
    type Result = Result<Vec<[u8; 32]>, RotateError>;

    /// Answers the keys in force after the rotation.
    fn handle(&mut self, msg: Rotate, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.lock();
        let state = store.trust()?;
        let next = trust::rotate(
            &msg.configured,
            &state.keyring,
            &msg.rotation,
            &msg.signature_base64,
            chrono::Utc::now(),
        )?;
        store.set_keyring(&next)?;
        Ok(trust::keys_in_force(&msg.configured, &next))
    }
}

#[cfg(test)]
mod tests {
    use actix::SyncArbiter;

    use super::*;
    use crate::store::tests::temp_dir;
    use crate::store::Store;

    #[actix::test]
    async fn the_actor_answers_messages() {
        let store = Store::open(&temp_dir()).unwrap();
        let addr = SyncArbiter::start(1, StoreActor::factory(Shared::new(store)));
        assert_eq!(addr.send(GetToken).await.unwrap().unwrap(), None);
        addr.send(SetToken("jwt".into())).await.unwrap().unwrap();
        assert_eq!(
            addr.send(GetToken).await.unwrap().unwrap().as_deref(),
            Some("jwt")
        );
        addr.send(ClearToken).await.unwrap().unwrap();
        assert_eq!(addr.send(GetToken).await.unwrap().unwrap(), None);

        let result = CommandResult::ok("c9", "fine");
        addr.send(PutResult {
            result: result.clone(),
        })
        .await
        .unwrap()
        .unwrap();
        let got = addr
            .send(GetResult { id: "c9".into() })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Some(result));
    }
}
