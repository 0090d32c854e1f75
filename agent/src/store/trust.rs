//! Firmware trust in the agent's database: the keyring changes of signed rotations and the
//! highest security floor accepted per project, in the `kv` table. Written with
//! `synchronous=FULL` like everything else here, so an accepted floor survives a power cut and
//! a retired key stays retired.

use rusqlite::params;

use crate::store::{Store, StoreError};
use crate::trust::{Keyring, TrustState};

/// The `kv` key of the keyring (JSON).
const KEYRING_KEY: &str = "firmware_keyring";
/// The `kv` key prefix of a project's floor (decimal).
const FLOOR_PREFIX: &str = "firmware_floor:";

impl Store {
    /// The keyring and every project's floor.
    pub fn trust(&self) -> Result<TrustState, StoreError> {
        let keyring = match self.kv(KEYRING_KEY)? {
            Some(text) => serde_json::from_str(&text).map_err(|e| StoreError::BadState {
                what: "firmware keyring",
                reason: e.to_string(),
            })?,
            None => Keyring::default(),
        };
        let mut statement = self
            .conn
            .prepare("SELECT key, value FROM kv WHERE key LIKE 'firmware_floor:%'")?;
        let rows = statement.query_map(params![], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut state = TrustState {
            keyring,
            ..TrustState::default()
        };
        for row in rows {
            let (key, value) = row?;
            let floor = value.parse::<u64>().map_err(|e| StoreError::BadState {
                what: "firmware floor",
                reason: e.to_string(),
            })?;
            state
                .floors
                .insert(key.trim_start_matches(FLOOR_PREFIX).to_owned(), floor);
        }
        Ok(state)
    }

    pub fn set_keyring(&self, keyring: &Keyring) -> Result<(), StoreError> {
        let text = serde_json::to_string(keyring).map_err(StoreError::Encode)?;
        self.set_kv(KEYRING_KEY, &text)
    }

    /// Raises a project's floor to `floor`; a lower one changes nothing, so the floor only
    /// ever grows. Answers the floor now stored.
    pub fn raise_floor(&self, project: &str, floor: u64) -> Result<u64, StoreError> {
        let key = format!("{FLOOR_PREFIX}{project}");
        let current = self
            .kv(&key)?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if floor > current {
            self.set_kv(&key, &floor.to_string())?;
            return Ok(floor);
        }
        Ok(current)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::tests::temp_dir;
    use crate::store::Store;
    use crate::trust::Keyring;

    #[test]
    fn floors_only_grow_and_the_keyring_survives_a_reopen() {
        let dir = temp_dir();
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.trust().unwrap().floor("edge"), 0);
        assert_eq!(store.raise_floor("edge", 3).unwrap(), 3);
        assert_eq!(store.raise_floor("edge", 2).unwrap(), 3);
        let keyring = Keyring {
            added: vec!["k".into()],
            retired: vec![],
            sequence: 4,
        };
        store.set_keyring(&keyring).unwrap();
        drop(store);
        let again = Store::open(&dir).unwrap().trust().unwrap();
        assert_eq!(again.floor("edge"), 3);
        assert_eq!(again.floor("fan"), 0);
        assert_eq!(again.keyring, keyring);
    }
}
