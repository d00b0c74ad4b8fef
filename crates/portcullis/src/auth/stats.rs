//! Refresh counters, kept from the first day so the metrics endpoint only has to export them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::oidc::TokenError;

/// Counts of what the refresh coordinator did. Cheap atomics; read with [`RefreshStats::snapshot`].
#[derive(Debug, Default)]
pub struct RefreshStats {
    grants_started: AtomicU64,
    grants_succeeded: AtomicU64,
    failed_invalid_grant: AtomicU64,
    failed_transient: AtomicU64,
    failed_outcome_unknown: AtomicU64,
    waited_locally: AtomicU64,
    waited_remotely: AtomicU64,
    lease_renewals: AtomicU64,
    cas_conflicts: AtomicU64,
    sessions_ended: AtomicU64,
    reused_newer_version: AtomicU64,
    identity_kept: AtomicU64,
    cas_retries: AtomicU64,
}

/// A point-in-time copy of [`RefreshStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RefreshSnapshot {
    /// Refresh grants sent to the OP.
    pub grants_started: u64,
    /// Of those, answered with tokens.
    pub grants_succeeded: u64,
    /// Answered `invalid_grant`.
    pub failed_invalid_grant: u64,
    /// Failed in a way worth retrying later (unreachable, 5xx, refused, bad response).
    pub failed_transient: u64,
    /// Sent, but no answer came back.
    pub failed_outcome_unknown: u64,
    /// Requests that waited for a refresh another request of this process started.
    pub waited_locally: u64,
    /// Refreshes that waited for another instance holding the lease.
    pub waited_remotely: u64,
    /// Lease renewals by the watchdog during slow token calls.
    pub lease_renewals: u64,
    /// Compare-and-set writes that lost to a newer version.
    pub cas_conflicts: u64,
    /// Sessions deleted because their refresh token is definitively dead.
    pub sessions_ended: u64,
    /// Refreshes that found a newer session version and used it instead of calling the OP.
    pub reused_newer_version: u64,
    /// Refreshes answered 2xx whose ID token was missing or did not verify: the new tokens were
    /// kept with the previous identity.
    pub identity_kept: u64,
    /// Retries of the final compare-and-set after a store error.
    pub cas_retries: u64,
}

impl RefreshStats {
    pub(crate) fn grant_started(&self) {
        self.grants_started.fetch_add(1, Relaxed);
    }
    pub(crate) fn grant_finished(&self, outcome: Result<(), &TokenError>) {
        let counter = match outcome {
            Ok(()) => &self.grants_succeeded,
            Err(TokenError::InvalidGrant) => &self.failed_invalid_grant,
            Err(TokenError::OutcomeUnknown(_)) => &self.failed_outcome_unknown,
            Err(_) => &self.failed_transient,
        };
        counter.fetch_add(1, Relaxed);
    }
    pub(crate) fn waited_locally(&self) {
        self.waited_locally.fetch_add(1, Relaxed);
    }
    pub(crate) fn waited_remotely(&self) {
        self.waited_remotely.fetch_add(1, Relaxed);
    }
    pub(crate) fn lease_renewed(&self) {
        self.lease_renewals.fetch_add(1, Relaxed);
    }
    pub(crate) fn cas_conflict(&self) {
        self.cas_conflicts.fetch_add(1, Relaxed);
    }
    pub(crate) fn session_ended(&self) {
        self.sessions_ended.fetch_add(1, Relaxed);
    }
    pub(crate) fn identity_kept(&self) {
        self.identity_kept.fetch_add(1, Relaxed);
    }
    pub(crate) fn cas_retried(&self) {
        self.cas_retries.fetch_add(1, Relaxed);
    }
    pub(crate) fn reused_newer_version(&self) {
        self.reused_newer_version.fetch_add(1, Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> RefreshSnapshot {
        RefreshSnapshot {
            grants_started: self.grants_started.load(Relaxed),
            grants_succeeded: self.grants_succeeded.load(Relaxed),
            failed_invalid_grant: self.failed_invalid_grant.load(Relaxed),
            failed_transient: self.failed_transient.load(Relaxed),
            failed_outcome_unknown: self.failed_outcome_unknown.load(Relaxed),
            waited_locally: self.waited_locally.load(Relaxed),
            waited_remotely: self.waited_remotely.load(Relaxed),
            lease_renewals: self.lease_renewals.load(Relaxed),
            cas_conflicts: self.cas_conflicts.load(Relaxed),
            sessions_ended: self.sessions_ended.load(Relaxed),
            reused_newer_version: self.reused_newer_version.load(Relaxed),
            identity_kept: self.identity_kept.load(Relaxed),
            cas_retries: self.cas_retries.load(Relaxed),
        }
    }
}
