//! Change notifications: "session X has a new version (or is gone)", so a request waiting for
//! another instance's refresh wakes when it lands instead of polling blindly.

use std::time::Duration;

use tokio::sync::broadcast;

use super::SessionKey;

/// Capacity of the in-process fan-out. A receiver that falls further behind than this gets
/// `Lagged` and treats it as "something changed": it re-reads, so nothing is lost but a wake-up.
const CAPACITY: usize = 1024;

/// One notification of the feed.
#[derive(Clone, Debug)]
enum Change {
    /// This session has a new version or is gone.
    Session(SessionKey),
    /// Any session may have changed: notifications may have been lost (the Redis listener was
    /// reconnected). Every waiter re-reads.
    Any,
}

/// The in-process fan-out of change notifications. Stores feed it: the memory store on every
/// write, the Redis store from one pub/sub connection per process.
#[derive(Clone)]
pub struct ChangeFeed(broadcast::Sender<Change>);

impl Default for ChangeFeed {
    fn default() -> Self {
        Self(broadcast::channel(CAPACITY).0)
    }
}

impl ChangeFeed {
    /// Announces that `key` changed.
    pub fn publish(&self, key: SessionKey) {
        // No receivers is fine: nobody is waiting.
        let _ = self.0.send(Change::Session(key));
    }

    /// Announces that any session may have changed (notifications were possibly lost while
    /// the source was disconnected): every waiter re-reads now rather than at its next poll.
    pub fn publish_any(&self) {
        let _ = self.0.send(Change::Any);
    }

    /// A watch on `key`. Take it *before* reading the session, so a change landing between the
    /// read and the wait is not missed.
    pub fn watch(&self, key: &SessionKey) -> ChangeWatch {
        ChangeWatch { key: key.clone(), rx: self.0.subscribe() }
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
