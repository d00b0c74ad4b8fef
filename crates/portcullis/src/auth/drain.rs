//! Graceful shutdown of the refresh coordinator: the refresh tasks of this process are let
//! finish up to a deadline; those still running then are abandoned and their leases released.
//!
//! Why wait at all: a refresh task that has sent its `refresh_token` grant holds the only copy
//! of the rotated refresh token until it writes the answer. Killing it there costs the session
//! (the OP consumed the old token, the new one dies with the process). Why not wait forever: an
//! orchestrator kills the process after its own grace period anyway (Kubernetes:
//! `terminationGracePeriodSeconds`, 30 s by default), and then the lease would stay held for up
//! to `refresh.lease_ttl` after the process is gone; released at once, another instance takes
//! over the session's refresh without that wait.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{task::AbortHandle, time::Instant};

use super::Authenticator;
use crate::session::SessionKey;

/// The refresh tasks running in this process and the leases they hold.
#[derive(Default)]
pub(crate) struct RefreshTasks {
    // A std Mutex: held only to insert, update or take entries, never across an await.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next: u64,
    running: HashMap<u64, Running>,
}

struct Running {
    key: SessionKey,
    /// The lease owner token while the task holds the session's lease.
    lease: Option<String>,
    abort: Option<AbortHandle>,
}

/// One running task's entry; removed when the task ends (dropped with it, a panic included).
pub(crate) struct Ticket {
    tasks: Arc<RefreshTasks>,
    id: u64,
}

impl RefreshTasks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a task about to be spawned for `key`.
    pub(crate) fn start(self: &Arc<Self>, key: &SessionKey) -> Ticket {
        let mut state = self.state();
        let id = state.next;
        state.next += 1;
        state.running.insert(id, Running { key: key.clone(), lease: None, abort: None });
        Ticket { tasks: self.clone(), id }
    }

    /// How to abort the task of `id` (it may have ended already: then nothing to keep).
    pub(crate) fn set_abort(&self, id: u64, abort: AbortHandle) {
        if let Some(running) = self.state().running.get_mut(&id) {
            running.abort = Some(abort);
        }
    }

    fn len(&self) -> usize {
        self.state().running.len()
    }

    /// Aborts every task still running; returns the leases they held.
    fn abandon_all(&self) -> (usize, Vec<(SessionKey, String)>) {
        let running: Vec<Running> = self.state().running.drain().map(|(_, r)| r).collect();
        let count = running.len();
        let leases = running
            .into_iter()
            .filter_map(|r| {
                if let Some(abort) = r.abort {
                    abort.abort();
                }
                r.lease.map(|owner| (r.key, owner))
            })
            .collect();
        (count, leases)
    }
}

impl Ticket {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The task took the session's lease as `owner`.
    pub(crate) fn holding(&self, owner: &str) {
        if let Some(running) = self.tasks.state().running.get_mut(&self.id) {
            running.lease = Some(owner.to_string());
        }
    }

    /// The task released its lease itself.
    pub(crate) fn released(&self) {
        if let Some(running) = self.tasks.state().running.get_mut(&self.id) {
            running.lease = None;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.tasks.state().running.remove(&self.id);
    }
}

/// What [`Authenticator::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Refresh tasks running when the drain began.
    pub running_at_start: usize,
    /// Tasks still running at the deadline, aborted.
    pub abandoned: usize,
    /// Leases those tasks held, released (owner-checked) so another instance can take over.
    pub leases_released: usize,
}

/// How often the drain looks whether the last task has ended: shutdown is not a hot path.
const POLL: Duration = Duration::from_millis(20);

impl Authenticator {
    /// Lets the refresh tasks of this process finish until `deadline`; aborts the rest and
    /// releases the leases they held. For a graceful shutdown, once the listener is closed:
    /// requests still in flight may start refreshes meanwhile, and those are waited for too.
    pub async fn drain(&self, deadline: Instant) -> DrainReport {
        let tasks = self.0.refresher.tasks();
        let running_at_start = tasks.len();
        while tasks.len() > 0 {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline.min(now + POLL)).await;
        }
        let (abandoned, leases) = tasks.abandon_all();
        let mut leases_released = 0;
        for (key, owner) in leases {
            match self.0.store.release_lease(&key, &owner).await {
                Ok(()) => leases_released += 1,
                // It lapses by itself within `refresh.lease_ttl`.
                Err(e) => tracing::warn!(session = %key, error = %e, "shutdown: cannot release a refresh lease"),
            }
        }
        if abandoned > 0 {
            tracing::warn!(abandoned, leases_released, "shutdown: refresh tasks still running at the drain deadline were abandoned");
        }
        DrainReport { running_at_start, abandoned, leases_released }
    }
}
