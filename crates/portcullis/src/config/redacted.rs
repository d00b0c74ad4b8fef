//! How secrets serialize: as `"<redacted>"` when set, so a serialized config
//! (`portcullis print-config`, a support bundle) shows that a secret is there but never what it
//! is. Serializing a config is for showing it; it does not round-trip secrets.

use serde::Serializer;

use super::{REDACTED, redact_url};

pub(super) fn secret<S: Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => serializer.serialize_some(REDACTED),
        None => serializer.serialize_none(),
    }
}

pub(super) fn secrets<S: Serializer>(values: &[String], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(values.iter().map(|_| REDACTED))
}

/// A Redis URL may carry a password.
pub(super) fn url<S: Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(url) => serializer.serialize_some(&redact_url(url)),
        None => serializer.serialize_none(),
    }
}
