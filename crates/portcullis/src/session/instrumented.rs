//! A store wrapper that times every operation and counts its errors, whatever the store.
//!
//! Kept out of the stores themselves so each stays about its own backend, and so a library
//! user's own `SessionStore` gets the same metrics by wrapping it. The wrapper adds two clock
//! reads and two atomic adds per operation (`load` runs on every request).

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::time::Instant;

use super::{CasOutcome, ChangeWatch, DeleteOutcome, SessionKey, SessionRecord, SessionStore, StoreError};
use crate::metrics::{Metrics, StoreMetrics, StoreOp};

/// `inner`, with `portcullis_store_operation_duration_seconds{operation}` and
/// `portcullis_store_errors_total{operation,kind}` recorded into [`Metrics`].
pub struct InstrumentedStore {
    inner: Arc<dyn SessionStore>,
    metrics: StoreMetrics,
}

impl InstrumentedStore {
    /// Wraps `inner`, recording into `metrics`.
    pub fn new(inner: Arc<dyn SessionStore>, metrics: &Metrics) -> Self {
        Self { inner, metrics: metrics.store.clone() }
    }

    async fn timed<T>(&self, op: StoreOp, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.observe(op, started.elapsed(), result.as_ref().err());
        result
    }
}

#[async_trait]
impl SessionStore for InstrumentedStore {
    async fn load(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.timed(StoreOp::Load, self.inner.load(key)).await
    }

    /// Forwarded as itself, not as `load`: the inner store may answer it from its read cache
    /// (the trait's default would turn it into a Redis read on every request).
    async fn load_for_request(&self, key: &SessionKey) -> Result<Option<Arc<SessionRecord>>, StoreError> {
        self.timed(StoreOp::LoadForRequest, self.inner.load_for_request(key)).await
    }

    /// Observed as the `load_for_request` it stands for; a `None` is observed by the awaited
    /// call that follows, so every request's read is counted once.
    fn load_for_request_now(&self, key: &SessionKey) -> Option<Result<Option<Arc<SessionRecord>>, StoreError>> {
        let started = Instant::now();
        let result = self.inner.load_for_request_now(key)?;
        self.metrics.observe(StoreOp::LoadForRequest, started.elapsed(), result.as_ref().err());
        Some(result)
    }

    async fn create(&self, key: &SessionKey, record: &SessionRecord) -> Result<(), StoreError> {
        self.timed(StoreOp::Create, self.inner.create(key, record)).await
    }

    async fn compare_and_set(&self, key: &SessionKey, expected: u64, record: &SessionRecord) -> Result<CasOutcome, StoreError> {
        self.timed(StoreOp::CompareAndSet, self.inner.compare_and_set(key, expected, record)).await
    }

    async fn delete(&self, key: &SessionKey) -> Result<(), StoreError> {
        self.timed(StoreOp::Delete, self.inner.delete(key)).await
    }

    async fn delete_if_version(&self, key: &SessionKey, expected: u64) -> Result<DeleteOutcome, StoreError> {
        self.timed(StoreOp::DeleteIfVersion, self.inner.delete_if_version(key, expected)).await
    }

    async fn state_consumed(&self, state_hash: &str) -> Result<bool, StoreError> {
        self.timed(StoreOp::StateConsumed, self.inner.state_consumed(state_hash)).await
    }

    async fn consume_state(&self, state_hash: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.timed(StoreOp::ConsumeState, self.inner.consume_state(state_hash, ttl)).await
    }

    async fn try_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.timed(StoreOp::TryLease, self.inner.try_lease(key, owner, ttl)).await
    }

    async fn renew_lease(&self, key: &SessionKey, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.timed(StoreOp::RenewLease, self.inner.renew_lease(key, owner, ttl)).await
    }

    async fn release_lease(&self, key: &SessionKey, owner: &str) -> Result<(), StoreError> {
        self.timed(StoreOp::ReleaseLease, self.inner.release_lease(key, owner)).await
    }

    fn watch(&self, key: &SessionKey) -> ChangeWatch {
        self.inner.watch(key)
    }
}
