//! Change notifications: "session X has a new version (or is gone)", so a request waiting for
//! another instance's refresh wakes when it lands instead of polling blindly.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::broadcast;

use super::SessionKey;

/// Capacity of the in-process fan-out. A receiver that falls further behind than this gets
/// `Lagged` and treats it as "something changed": it re-reads, so nothing is lost but a wake-up.
const CAPACITY: usize = 1024;

/// One notification of the feed.
#[derive(Clone, Debug)]
pub(crate) enum Change {
    /// This session has a new version or is gone.
    Session(SessionKey),
    /// Any session may have changed: notifications may have been lost (the Redis listener was
    /// reconnected). Every waiter re-reads.
    Any,
}

/// The in-process fan-out of change notifications. Stores feed it: the memory store on every
/// write, the Redis store from one pub/sub connection per process.
#[derive(Clone)]
pub struct ChangeFeed {
    tx: broadcast::Sender<Change>,
    /// Odd while the source is known to deliver every change (the Redis listener subscribed),
    /// even while it is not; bumped at each transition, so a reader that saw one odd value and
    /// sees it again knows no notification was lost in between (short of a connection that died
    /// without its listener noticing yet: see `read_cache`). Starts even: not live.
    epoch: Arc<AtomicU64>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self { tx: broadcast::channel(CAPACITY).0, epoch: Arc::default() }
    }
}

impl ChangeFeed {
    /// Announces that `key` changed.
    pub fn publish(&self, key: SessionKey) {
        // No receivers is fine: nobody is waiting.
        let _ = self.tx.send(Change::Session(key));
    }

    /// Announces that any session may have changed (notifications were possibly lost while
    /// the source was disconnected): every waiter re-reads now rather than at its next poll.
    pub fn publish_any(&self) {
        let _ = self.tx.send(Change::Any);
    }

    /// The source (re)subscribed: from now on every change is delivered. Opens a new live
    /// epoch, then tells every waiter to re-read (what was sent while down is lost).
    pub fn connected(&self) {
        let _ = self.epoch.fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| (e % 2 == 0).then_some(e + 1));
        self.publish_any();
    }

    /// The source lost its subscription: changes may go unannounced until [`Self::connected`].
    pub fn disconnected(&self) {
        let _ = self.epoch.fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| (e % 2 == 1).then_some(e + 1));
    }

    /// The current epoch: `Some` while live (equal values mean the same unbroken subscription),
    /// `None` while changes may be lost.
    pub fn live_epoch(&self) -> Option<u64> {
        let e = self.epoch.load(Ordering::Acquire);
        (e % 2 == 1).then_some(e)
    }

    /// A watch on `key`. Take it *before* reading the session, so a change landing between the
    /// read and the wait is not missed.
    pub fn watch(&self, key: &SessionKey) -> ChangeWatch {
        ChangeWatch { key: key.clone(), rx: self.tx.subscribe() }
    }

    /// Every change, for the read cache's invalidation.
    pub(crate) fn subscribe_all(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

/// Waits for changes of one session.
pub struct ChangeWatch {
    key: SessionKey,
    rx: broadcast::Receiver<Change>,
}

impl ChangeWatch {
    /// Returns when the session changed or `within` passed, whichever is first. The caller
    /// re-reads either way: the timeout is the bounded poll behind a lost notification.
    pub async fn changed(&mut self, within: Duration) {
        let wait = async {
            loop {
                match self.rx.recv().await {
                    Ok(Change::Session(key)) if key == self.key => return,
                    Ok(Change::Any) => return,
                    Ok(Change::Session(_)) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(within, wait).await;
    }
}
