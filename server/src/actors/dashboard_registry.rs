//! `DashboardRegistry`: the dashboard sockets that are open, whose they are and which token
//! opened them.
//!
//! It caps how many sockets the server, and each user, may hold (an upgrade past a cap is
//! refused), and it is how a revocation reaches the sockets it concerns: logout, disabling,
//! deleting a user and changing a password or a role call `revoke_token` or `revoke_user` once
//! their transaction has committed, and every affected socket hears it at once, without
//! polling the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server holds its most dashboard sockets.
    ServerFull,
    /// This user holds their most dashboard sockets.
    UserFull,
}

/// What a socket hears when its token is revoked: `Some(reason)`, once.
pub type Revocations = watch::Receiver<Option<&'static str>>;

pub struct DashboardRegistry {
    max_total: usize,
    max_per_user: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    total: usize,
    per_user: HashMap<String, usize>,
    bound: HashMap<u64, Binding>,
}

/// A socket whose user is known.
struct Binding {
    user_id: String,
    jti: String,
    revoke: watch::Sender<Option<&'static str>>,
}

impl DashboardRegistry {
    pub fn new(max_total: usize, max_per_user: usize) -> Arc<Self> {
        Arc::new(DashboardRegistry {
            max_total,
            max_per_user,
            inner: Mutex::default(),
        })
    }

    pub fn max_per_user(&self) -> usize {
        self.max_per_user
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent, so a panic elsewhere cannot leave them torn.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a place for a socket not yet authenticated. The place is held until the `Slot`
    /// is dropped, which the caller arranges to happen only once the connection is gone.
    pub fn open(self: &Arc<Self>) -> Result<Slot, Refusal> {
        let mut inner = self.lock();
        if inner.total >= self.max_total {
            return Err(Refusal::ServerFull);
        }
        inner.total += 1;
        inner.next_id += 1;
        Ok(Slot {
            registry: self.clone(),
            id: inner.next_id,
        })
    }

    /// How many sockets hold a place, authenticated or not.
    pub fn open_count(&self) -> usize {
        self.lock().total
    }

    /// Tells the sockets opened with the token `jti` that it was revoked; answers how many.
    pub fn revoke_token(&self, jti: &str, reason: &'static str) -> usize {
        self.revoke(|b| b.jti == jti, reason)
    }

    /// Tells every socket of the user that their tokens were revoked; answers how many.
    pub fn revoke_user(&self, user_id: &str, reason: &'static str) -> usize {
        self.revoke(|b| b.user_id == user_id, reason)
    }

    fn revoke(&self, which: impl Fn(&Binding) -> bool, reason: &'static str) -> usize {
        let inner = self.lock();
        let mut told = 0;
        for binding in inner.bound.values().filter(|b| which(b)) {
            binding.revoke.send_replace(Some(reason));
            told += 1;
        }
        told
    }
}

/// One socket's place in the registry; dropping it gives the place back.
pub struct Slot {
    registry: Arc<DashboardRegistry>,
    id: u64,
}

impl Slot {
    /// Names the socket's user and token, within the user's cap. Called with the token's
    /// claims before the database confirms them, so that a revocation committed after that
    /// check cannot miss the socket. A slot is bound once.
    pub fn bind(&self, user_id: &str, jti: &str) -> Result<Revocations, Refusal> {
        let registry = &self.registry;
        let mut inner = registry.lock();
        let held = inner.per_user.get(user_id).copied().unwrap_or(0);
        if held >= registry.max_per_user || inner.bound.contains_key(&self.id) {
            return Err(Refusal::UserFull);
        }
        let (revoke, revocations) = watch::channel(None);
        inner.per_user.insert(user_id.to_owned(), held + 1);
        inner.bound.insert(
            self.id,
            Binding {
                user_id: user_id.to_owned(),
                jti: jti.to_owned(),
                revoke,
            },
        );
        Ok(revocations)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        inner.total -= 1;
        if let Some(binding) = inner.bound.remove(&self.id) {
            if let Some(held) = inner.per_user.get_mut(&binding.user_id) {
                *held -= 1;
                if *held == 0 {
                    inner.per_user.remove(&binding.user_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_dropped_slots_give_their_place_back() {
        let registry = DashboardRegistry::new(3, 2);
        let a1 = registry.open().unwrap();
        let a2 = registry.open().unwrap();
        let a3 = registry.open().unwrap();
        assert_eq!(registry.open().err(), Some(Refusal::ServerFull));
        a1.bind("alice", "j1").unwrap();
        a2.bind("alice", "j2").unwrap();
        assert_eq!(a3.bind("alice", "j3").err(), Some(Refusal::UserFull));
        a3.bind("bob", "j4").unwrap();
        drop(a1);
        assert_eq!(registry.open_count(), 2);
        let a4 = registry.open().unwrap();
        a4.bind("alice", "j5").unwrap();
        drop((a2, a3, a4));
        assert_eq!(registry.open_count(), 0);
        assert!(registry.lock().per_user.is_empty());
        assert!(registry.lock().bound.is_empty());
    }

    #[test]
    fn revocations_reach_only_the_sockets_they_concern() {
        let registry = DashboardRegistry::new(10, 10);
        let slots: Vec<Slot> = (0..4).map(|_| registry.open().unwrap()).collect();
        let alice_t1 = slots[0].bind("alice", "t1").unwrap();
        let alice_t2 = slots[1].bind("alice", "t2").unwrap();
        let bob = slots[2].bind("bob", "t3").unwrap();
        let unbound = &slots[3];
        assert_eq!(registry.revoke_token("t1", "logged out"), 1);
        assert_eq!(*alice_t1.borrow(), Some("logged out"));
        assert_eq!(*alice_t2.borrow(), None);
        assert_eq!(registry.revoke_user("alice", "user disabled"), 2);
        assert_eq!(*alice_t2.borrow(), Some("user disabled"));
        assert_eq!(*bob.borrow(), None);
        assert_eq!(registry.revoke_user("nobody", "user deleted"), 0);
        assert_eq!(unbound.bind("carol", "t4").map(|_| ()), Ok(()));
        assert_eq!(
            unbound.bind("carol", "t5").err(),
            Some(Refusal::UserFull),
            "a slot is bound once"
        );
    }
}
