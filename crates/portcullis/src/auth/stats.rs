//! What the refresh coordinator did, as Prometheus metrics (`portcullis_refresh_*`), readable in
//! code through [`RefreshStats::snapshot`].
//!
//! Every label set is resolved once, when the stats are made: recording is an atomic add on a
//! counter handle (or two on a histogram), never a label-hash lookup.

use std::time::Duration;

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::{Registry, Unit},
};

use crate::{metrics::DurationHistogram, oidc::TokenError};

type Labels = [(&'static str, &'static str); 1];
type Counters = Family<Labels, Counter>;
type Histograms = Family<Labels, DurationHistogram, fn() -> DurationHistogram>;

/// Why the coordinator ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The OP answered `invalid_grant` and no newer version existed.
    InvalidGrant,
    /// The OP refreshed for another `sub`.
    SubjectChanged,
    /// The cookie store could not seal the refreshed tokens into a cookie (too large).
    Unstorable,
}

/// Counts and durations of the refresh coordinator. Cheap atomics; read with
/// [`RefreshStats::snapshot`], exported with [`crate::metrics::Metrics::register`].
#[derive(Debug)]
pub struct RefreshStats {
    grants_started: Counter,
    grants: Counters,
    grant_succeeded: Counter,
    grant_invalid: Counter,
    grant_transient: Counter,
    grant_unknown: Counter,
    grant_subject_changed: Counter,
    waits: Counters,
    wait_seconds: Histograms,
    waited_locally: Counter,
    waited_remotely: Counter,
    local_wait: DurationHistogram,
    remote_wait: DurationHistogram,
    lease_contended: Counter,
    lease_renewals: Counter,
    lease_lost: Counter,
    cas_conflicts: Counter,
    ended: Counters,
    ended_invalid_grant: Counter,
    ended_subject_changed: Counter,
    ended_unstorable: Counter,
    reused_newer_version: Counter,
    identity_kept: Counter,
    cas_retries: Counter,
}

impl Default for RefreshStats {
    fn default() -> Self {
        let grants = Counters::default();
        let waits = Counters::default();
        let wait_seconds = Histograms::new_with_constructor(DurationHistogram::wait as fn() -> DurationHistogram);
        let ended = Counters::default();
        let get = |family: &Counters, name, value| family.get_or_create_owned(&[(name, value)]);
        Self {
            grants_started: Counter::default(),
            grant_succeeded: get(&grants, "outcome", "success"),
            grant_invalid: get(&grants, "outcome", "invalid_grant"),
            grant_transient: get(&grants, "outcome", "transient"),
            grant_unknown: get(&grants, "outcome", "outcome_unknown"),
            grant_subject_changed: get(&grants, "outcome", "subject_changed"),
            grants,
            waited_locally: get(&waits, "scope", "local"),
            waited_remotely: get(&waits, "scope", "remote"),
            waits,
            local_wait: wait_seconds.get_or_create_owned(&[("scope", "local")]),
            remote_wait: wait_seconds.get_or_create_owned(&[("scope", "remote")]),
            wait_seconds,
            lease_contended: Counter::default(),
            lease_renewals: Counter::default(),
            lease_lost: Counter::default(),
            cas_conflicts: Counter::default(),
            ended_invalid_grant: get(&ended, "reason", "invalid_grant"),
            ended_subject_changed: get(&ended, "reason", "subject_changed"),
            ended_unstorable: get(&ended, "reason", "unstorable"),
            ended,
            reused_newer_version: Counter::default(),
            identity_kept: Counter::default(),
            cas_retries: Counter::default(),
        }
    }
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
    /// Failed in a way worth retrying later (unreachable, 5xx, refused, bad response), or
    /// answered for another subject.
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
        self.grants_started.inc();
    }
    pub(crate) fn grant_finished(&self, outcome: Result<(), &TokenError>) {
        let counter = match outcome {
            Ok(()) => &self.grant_succeeded,
            Err(TokenError::InvalidGrant) => &self.grant_invalid,
            Err(TokenError::OutcomeUnknown(_)) => &self.grant_unknown,
            Err(TokenError::SubjectChanged) => &self.grant_subject_changed,
            Err(_) => &self.grant_transient,
        };
        counter.inc();
    }
    /// A request waited `waited` for a refresh another request of this process leads.
    pub(crate) fn waited_locally(&self, waited: Duration) {
        self.waited_locally.inc();
        self.local_wait.observe(waited);
    }
    /// A refresh waited `waited` for another instance holding the lease.
    pub(crate) fn waited_remotely(&self, waited: Duration) {
        self.waited_remotely.inc();
        self.remote_wait.observe(waited);
    }
    /// A lease attempt found the lease held by someone else.
    pub(crate) fn lease_contended(&self) {
        self.lease_contended.inc();
    }
    pub(crate) fn lease_renewed(&self) {
        self.lease_renewals.inc();
    }
    /// The watchdog found the lease gone (it lapsed and someone else may hold it).
    pub(crate) fn lease_lost(&self) {
        self.lease_lost.inc();
    }
    pub(crate) fn cas_conflict(&self) {
        self.cas_conflicts.inc();
    }
    pub(crate) fn session_ended(&self, reason: EndReason) {
        match reason {
            EndReason::InvalidGrant => &self.ended_invalid_grant,
            EndReason::SubjectChanged => &self.ended_subject_changed,
            EndReason::Unstorable => &self.ended_unstorable,
        }
        .inc();
    }
    pub(crate) fn identity_kept(&self) {
        self.identity_kept.inc();
    }
    pub(crate) fn cas_retried(&self) {
        self.cas_retries.inc();
    }
    pub(crate) fn reused_newer_version(&self) {
        self.reused_newer_version.inc();
    }

    /// Current values.
    pub fn snapshot(&self) -> RefreshSnapshot {
        RefreshSnapshot {
            grants_started: self.grants_started.get(),
            grants_succeeded: self.grant_succeeded.get(),
            failed_invalid_grant: self.grant_invalid.get(),
            failed_transient: self.grant_transient.get() + self.grant_subject_changed.get(),
            failed_outcome_unknown: self.grant_unknown.get(),
            waited_locally: self.waited_locally.get(),
            waited_remotely: self.waited_remotely.get(),
            lease_renewals: self.lease_renewals.get(),
            cas_conflicts: self.cas_conflicts.get(),
            sessions_ended: self.ended_invalid_grant.get() + self.ended_subject_changed.get() + self.ended_unstorable.get(),
            reused_newer_version: self.reused_newer_version.get(),
            identity_kept: self.identity_kept.get(),
            cas_retries: self.cas_retries.get(),
        }
    }

    /// Adds the `portcullis_refresh_*` metrics to `registry` (names as exported: counters get
    /// `_total`, durations `_seconds`).
    pub(crate) fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register("portcullis_refresh_grants_started", "refresh_token grants sent to the OP", self.grants_started.clone());
        r.register(
            "portcullis_refresh_grants",
            "refresh_token grants answered, by outcome (success, invalid_grant, outcome_unknown: sent without an answer, transient, subject_changed)",
            self.grants.clone(),
        );
        r.register(
            "portcullis_refresh_waits",
            "waits for a refresh someone else leads: local (a request of this process leads it) or remote (another instance holds the lease)",
            self.waits.clone(),
        );
        r.register_with_unit("portcullis_refresh_wait_duration", "time spent in those waits", Unit::Seconds, self.wait_seconds.clone());
        r.register(
            "portcullis_refresh_lease_contended",
            "lease attempts that found the lease held by another holder",
            self.lease_contended.clone(),
        );
        r.register(
            "portcullis_refresh_lease_renewals",
            "lease renewals by the watchdog during slow token calls",
            self.lease_renewals.clone(),
        );
        r.register("portcullis_refresh_lease_lost", "leases found gone by the watchdog while the token call ran", self.lease_lost.clone());
        r.register(
            "portcullis_refresh_cas_conflicts",
            "refreshed-token writes that lost the compare-and-set to a newer version",
            self.cas_conflicts.clone(),
        );
        r.register("portcullis_refresh_cas_retries", "retries of the refreshed-token write after a store error", self.cas_retries.clone());
        r.register(
            "portcullis_refresh_sessions_ended",
            "sessions ended by a refresh, by reason (invalid_grant, subject_changed, unstorable)",
            self.ended.clone(),
        );
        r.register(
            "portcullis_refresh_reused_newer_version",
            "refreshes that found a newer session version and used it instead of calling the OP",
            self.reused_newer_version.clone(),
        );
        r.register(
            "portcullis_refresh_identity_kept",
            "2xx refreshes whose ID token was missing or did not verify (the previous identity was kept)",
            self.identity_kept.clone(),
        );
    }
}
