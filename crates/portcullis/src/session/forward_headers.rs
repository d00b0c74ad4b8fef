//! The header values a session's requests are forwarded with, built once per record.
//!
//! Every forwarded request carries `Authorization: Bearer <access token>` and the identity
//! headers. Formatting and validating them per request cost ~1,000 instructions; a stored
//! record is shared (`Arc`) by all the requests that read it until the next write replaces it,
//! so its values are built by the first of them and cloned (a reference count) by the others.

use std::{fmt, sync::OnceLock};

use bytes::{Bytes, BytesMut};
use http::HeaderValue;

use super::SessionRecord;

/// The values of one record, built on first use ([`SessionRecord::forward_values`]). Not part
/// of the record's data: never serialized, and a clone of the record starts without them (a
/// clone is how a record is edited; the values would describe the original).
#[derive(Default)]
pub struct ForwardHeaders(OnceLock<ForwardValues>);

impl Clone for ForwardHeaders {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl fmt::Debug for ForwardHeaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bearer value is the access token: never printed.
        f.write_str(if self.0.get().is_some() { "ForwardHeaders(built)" } else { "ForwardHeaders(-)" })
    }
}

/// Header values for the upstream. `None` where the field cannot be a header value (a control
/// character in a claim, or in a token): that header is not sent, better absent than mangled.
#[derive(Clone)]
pub struct ForwardValues {
    /// `Bearer <access token>`, marked sensitive (never indexed by HPACK, hidden by `Debug`).
    pub bearer: Option<HeaderValue>,
    /// The user claim's value.
    pub user: Option<HeaderValue>,
    /// The email, when the record has one.
    pub email: Option<HeaderValue>,
    /// The groups, comma-separated, when the record has any.
    pub groups: Option<HeaderValue>,
}

impl ForwardValues {
    fn build(record: &SessionRecord) -> Self {
        let token = record.tokens.access_token.as_bytes();
        // One buffer the header value then owns.
        let mut value = BytesMut::with_capacity(BEARER.len() + token.len());
        value.extend_from_slice(BEARER);
        value.extend_from_slice(token);
        let bearer = HeaderValue::from_maybe_shared(value.freeze()).ok().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        if bearer.is_none() {
            tracing::warn!("the access token is not a valid header value; not forwarded");
        }
        let identity = &record.identity;
        Self {
            bearer,
            user: text("user", &identity.user),
            email: identity.email.as_deref().and_then(|email| text("email", email)),
            groups: (!identity.groups.is_empty()).then(|| text("groups", &identity.groups.join(","))).flatten(),
        }
    }

    /// Whether these values still say what `record` says. A stored record is never edited,
    /// but an owned one can be after its values were built; then they are not used.
    fn describe(&self, record: &SessionRecord) -> bool {
        let identity = &record.identity;
        let same = |value: &Option<HeaderValue>, text: Option<&str>| match (value, text) {
            (Some(value), Some(text)) => value.as_bytes() == text.as_bytes(),
            (None, Some(text)) => HeaderValue::from_str(text).is_err(),
            (_, None) => value.is_none(),
        };
        let bearer = match &self.bearer {
            Some(v) => v.as_bytes().strip_prefix(BEARER) == Some(record.tokens.access_token.as_bytes()),
            None => HeaderValue::from_bytes(record.tokens.access_token.as_bytes()).is_err(),
        };
        let groups = match &self.groups {
            Some(v) => joined_by_comma(v.as_bytes(), &identity.groups),
            None => identity.groups.is_empty() || HeaderValue::from_str(&identity.groups.join(",")).is_err(),
        };
        bearer && groups && same(&self.user, Some(&identity.user)) && same(&self.email, identity.email.as_deref())
    }
}

const BEARER: &[u8] = b"Bearer ";

fn text(what: &str, value: &str) -> Option<HeaderValue> {
    let value = HeaderValue::from_maybe_shared(Bytes::copy_from_slice(value.as_bytes())).ok();
    if value.is_none() {
        // A claim with control characters could split headers.
        tracing::warn!(header = what, "claim value is not a valid header value; header omitted");
    }
    value
}

/// Whether `joined` is `parts` joined by `,`.
fn joined_by_comma(joined: &[u8], parts: &[String]) -> bool {
    let mut rest = joined;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            let Some(after) = rest.strip_prefix(b",") else { return false };
            rest = after;
        }
        let Some(after) = rest.strip_prefix(part.as_bytes()) else { return false };
        rest = after;
    }
    !parts.is_empty() && rest.is_empty()
}

impl SessionRecord {
    /// The header values this record's requests are forwarded with: built by the first call,
    /// shared by the next ones (cloning a value is a reference count). A record edited after
    /// its values were built gets fresh ones, built for the call.
    pub fn forward_values(&self) -> std::borrow::Cow<'_, ForwardValues> {
        let built = self.forward.0.get_or_init(|| ForwardValues::build(self));
        if built.describe(self) { std::borrow::Cow::Borrowed(built) } else { std::borrow::Cow::Owned(ForwardValues::build(self)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Identity, TokenSet};

    fn record() -> SessionRecord {
        SessionRecord {
            version: 1,
            created_at: 0,
            identity: Identity {
                subject: "sub-1".into(),
                user: "alice".into(),
                email: Some("alice@example.test".into()),
                groups: vec!["admins".into(), "dev".into()],
                claims: serde_json::Map::new(),
            },
            tokens: TokenSet { access_token: "at-1".into(), issued_at: 0, expires_at: None, refresh_token: None, id_token: None },
            unsettled_refresh: None,
            forward: ForwardHeaders::default(),
        }
    }

    fn shown(values: &ForwardValues) -> [Option<&[u8]>; 4] {
        [&values.bearer, &values.user, &values.email, &values.groups].map(|v| v.as_ref().map(HeaderValue::as_bytes))
    }

    /// Built once and shared; what they say follows every field, even when an owned record is
    /// edited after its values were built; a clone starts without them.
    #[test]
    fn built_once_and_never_stale() {
        let mut record = record();
        let first = record.forward_values();
        assert!(matches!(first, std::borrow::Cow::Borrowed(_)));
        assert_eq!(shown(&first), [Some(&b"Bearer at-1"[..]), Some(b"alice"), Some(b"alice@example.test"), Some(b"admins,dev")]);
        assert!(first.bearer.as_ref().unwrap().is_sensitive());
        drop(first);
        let again = record.forward_values();
        assert!(matches!(again, std::borrow::Cow::Borrowed(_)), "the second call shares the first one's values");
        drop(again);

        type Edit = (&'static str, fn(&mut SessionRecord));
        let edits: [Edit; 6] = [
            ("groups longer", |r| r.identity.groups.push("ops".into())),
            ("token", |r| r.tokens.access_token = "at-2".into()),
            ("user", |r| r.identity.user = "mallory".into()),
            ("email", |r| r.identity.email = None),
            ("groups", |r| r.identity.groups = vec!["admins".into()]),
            ("groups gone", |r| r.identity.groups.clear()),
        ];
        for (what, edit) in edits {
            let mut edited = record.clone();
            assert!(edited.forward.0.get().is_none(), "a clone starts without values");
            let _ = edited.forward.0.set(record.forward.0.get().unwrap().clone());
            edit(&mut edited);
            let values = edited.forward_values();
            assert!(matches!(values, std::borrow::Cow::Owned(_)), "{what}: stale values used");
            assert_eq!(shown(&values), shown(&ForwardValues::build(&edited)), "{what}");
        }
        record.identity.user = "bob".into();
        assert_eq!(record.forward_values().user.as_ref().unwrap().as_bytes(), b"bob");
    }

    /// A field that cannot be a header value gives no header (and the others still do).
    #[test]
    fn invalid_values_are_left_out() {
        let mut record = record();
        record.tokens.access_token = "at\r\nX-Injected: 1".into();
        record.identity.user = "eve\nx".into();
        let values = record.forward_values();
        assert!(matches!(values, std::borrow::Cow::Borrowed(_)), "invalid values are shared too");
        assert_eq!(shown(&values), [None, None, Some(&b"alice@example.test"[..]), Some(b"admins,dev")]);
    }
}
