//! Who may pass: the `[authorization]` rules (global, per route, per forward-auth request),
//! evaluated on the caller's *current* identity, and `AuthorizeLayer`, the tower layer that
//! applies them inside [`super::AuthLayer`].
//!
//! The rules, as an oauth2-proxy user knows them:
//!
//! - Every non-empty rule must hold (AND); within one rule any entry suffices (OR). Rule sets
//!   (global, the route's, a forward-auth request's query) are all applied: a route can only
//!   narrow the global rules, never widen them.
//! - `allowed_emails`, `allowed_email_domains`: the identity's `email`, and only when the OP
//!   does not mark it unverified (`email_verified: false`, or the string `"false"`, or any value
//!   but `true`/`"true"`); a missing `email_verified` is accepted, as at login (many OPs only
//!   send it for self-asserted addresses). Compared ASCII case-insensitively; other characters
//!   exactly (Unicode case folding would make the Kelvin sign `K` equal `k`, letting one
//!   account's address stand for another's).
//! - The domain is the part after the *last* `@`, compared whole: `example.com` admits
//!   `a@example.com`, not `a@evil-example.com`, not `a@example.com.evil`, and not
//!   `a@sub.example.com` (no subdomains: list each one; a suffix rule is how domain checks go
//!   wrong). `*` admits any verified address.
//! - `allowed_groups`: the identity's groups (from `oidc.groups_claim`), exact and
//!   case-sensitive (group names and ids are case-sensitive at the OPs that issue them).
//! - `require_claims`: claim name → accepted values; a top-level claim that is a string, or an
//!   array holding a string, equal to one of them. Numbers and booleans are compared by their
//!   JSON text (`2`, `true`), so `tier = ["2"]` admits `"tier": 2`; objects and `null` never
//!   match. The identity's claims are those of the latest ID token (they change at refresh).
//!
//! No caller (an `unauthenticated = "allow"` route without a session): rules do not apply, the
//! route is public. A caller who fails them on an `allow` route is served as an anonymous
//! visitor (identity headers and token removed), as oauth2-proxy's `skip_auth_routes` would
//! serve them: a public page must not turn into a 403 because someone is logged in, and the
//! upstream must not be told who an unauthorized caller is. On every other route: 403.

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::{body::Body, response::Response};
use futures_util::future::BoxFuture;
use http::Request;
use serde_json::Value;
use tower::{Layer, Service};

use super::{Caller, Failure, RequestKind, identity_headers};
use crate::{
    config::{AuthorizationRules, RouteConfig, Unauthenticated},
    session::Identity,
};

/// Where a rule came from, for the log line and the refusal page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleScope {
    /// `[authorization]`.
    Global,
    /// The route's `authorization`.
    Route,
    /// A forward-auth request's query (`/oauth2/auth?allowed_groups=…`).
    Request,
}

impl RuleScope {
    fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Route => "route",
            Self::Request => "request",
        }
    }
}

/// Which rule refused a caller. Names the rule, never the values it holds (other users'
/// addresses, group names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// An email rule, and the OP marks the caller's address unverified.
    EmailUnverified,
    /// An email rule, and the identity has no email.
    NoEmail,
    /// `allowed_emails` (and no `allowed_email_domains` entry admitted it either).
    AllowedEmails,
    /// `allowed_email_domains`.
    AllowedEmailDomains,
    /// `allowed_groups`.
    AllowedGroups,
    /// `require_claims.<claim>`.
    RequireClaim(String),
}

/// A refusal: the rule and the rule set it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule that failed.
    pub rule: Rule,
    /// Global, route, or request.
    pub scope: RuleScope,
}

impl Refusal {
    /// The key of the rule, as in the config (`allowed_groups`, `require_claims.role`).
    pub fn key(&self) -> String {
        match &self.rule {
            // An email rule that could not even be checked: named for what was missing.
            Rule::EmailUnverified => "email_verified".into(),
            Rule::NoEmail => "email".into(),
            Rule::AllowedEmails => "allowed_emails".into(),
            Rule::AllowedEmailDomains => "allowed_email_domains".into(),
            Rule::AllowedGroups => "allowed_groups".into(),
            Rule::RequireClaim(claim) => format!("require_claims.{claim}"),
        }
    }

    /// The 403 for this refusal. Says who the caller is signed in as (their own data) and which
    /// rule failed; never the allowed values.
    pub fn failure(&self, identity: &Identity) -> Failure {
        let who = identity.email.as_deref().unwrap_or(&identity.user);
        let why = match &self.rule {
            Rule::EmailUnverified => "your identity provider has not verified your email address, and only verified addresses are admitted",
            Rule::NoEmail => "your account has no email address, and only some addresses are admitted",
            Rule::AllowedEmails => "your email address is not one of those admitted",
            Rule::AllowedEmailDomains => "your email address is not in a domain that is admitted",
            Rule::AllowedGroups => "you are not in a group that is admitted",
            Rule::RequireClaim(_) => "your account lacks an attribute that is required",
        };
        let scope = match self.scope {
            RuleScope::Global => "this gateway",
            RuleScope::Route => "this part of the site",
            RuleScope::Request => "this page",
        };
        Failure::forbidden(format!(
            "You are signed in as {who}, but {why} for {scope} (rule: {}). Ask the site's administrator for access, or sign in with another account.",
            self.key()
        ))
    }
}

/// Evaluates rule sets in order; the first refusal wins. Pure: the identity passed is the one
/// to judge (the session's current record, re-read per request).
pub fn evaluate(identity: &Identity, sets: &[(&AuthorizationRules, RuleScope)]) -> Result<(), Refusal> {
    for (rules, scope) in sets {
        check(identity, rules).map_err(|rule| Refusal { rule, scope: *scope })?;
    }
    Ok(())
}

fn check(identity: &Identity, rules: &AuthorizationRules) -> Result<(), Rule> {
    if !rules.allowed_emails.is_empty() || !rules.allowed_email_domains.is_empty() {
        let email = identity.email.as_deref().ok_or(Rule::NoEmail)?;
        if !email_verified(identity) {
            return Err(Rule::EmailUnverified);
        }
        // The two lists admit together (oauth2-proxy: an address in `authenticated_emails_file`
        // or in an `email_domain`): either one admitting is enough.
        let by_address = rules.allowed_emails.iter().any(|allowed| eq_ascii_case(allowed, email));
        let by_domain = rules.allowed_email_domains.iter().any(|domain| domain_admits(domain, email));
        if !(by_address || by_domain) {
            return Err(if rules.allowed_email_domains.is_empty() { Rule::AllowedEmails } else { Rule::AllowedEmailDomains });
        }
    }
    if !rules.allowed_groups.is_empty() && !identity.groups.iter().any(|g| rules.allowed_groups.contains(g)) {
        return Err(Rule::AllowedGroups);
    }
    for (claim, accepted) in &rules.require_claims {
        let holds = |v: &Value| match v {
            Value::String(s) => accepted.iter().any(|a| a == s),
            Value::Number(_) | Value::Bool(_) => accepted.contains(&v.to_string()),
            _ => false,
        };
        let ok = match identity.claims.get(claim) {
            Some(Value::Array(items)) => items.iter().any(holds),
            Some(v) => holds(v),
            None => false,
        };
        if !ok {
            return Err(Rule::RequireClaim(claim.clone()));
        }
    }
    Ok(())
}

/// `email_verified` as at login (`oidc::client::email_unverified`): absent is verified; `true`
/// or `"true"` is; anything else is not.
fn email_verified(identity: &Identity) -> bool {
    match identity.claims.get("email_verified") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        Some(_) => false,
    }
}

/// ASCII case-insensitive; every other byte exact (see the module doc: no Unicode folding).
fn eq_ascii_case(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn domain_admits(domain: &str, email: &str) -> bool {
    if domain == "*" {
        return true;
    }
    match email.rsplit_once('@') {
        Some((local, host)) => !local.is_empty() && eq_ascii_case(host, domain),
        None => false,
    }
}

/// Checks the rule values of one rule set at startup; `key` is where it sits in the config
/// (`authorization`, `routes[2].authorization`). Called from `Config::validate`.
pub fn validate_rules(rules: &AuthorizationRules, key: &str) -> Result<(), (String, String)> {
    for domain in &rules.allowed_email_domains {
        let plain = !domain.is_empty() && !domain.contains('@') && !domain.starts_with('.') && !domain.ends_with('.');
        let wildcard = domain.contains('*') && domain != "*";
        if !plain || wildcard || domain.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err((
                format!("{key}.allowed_email_domains"),
                format!(
                    "{domain:?} is not a domain: write \"example.com\" (exact, no subdomains, no '@'), or \"*\" for any verified address"
                ),
            ));
        }
    }
    for email in &rules.allowed_emails {
        if email.rsplit_once('@').is_none_or(|(l, h)| l.is_empty() || h.is_empty()) || email.chars().any(char::is_whitespace) {
            return Err((format!("{key}.allowed_emails"), format!("{email:?} is not an email address")));
        }
    }
    if rules.allowed_groups.iter().any(String::is_empty) {
        return Err((format!("{key}.allowed_groups"), "group names must not be empty".into()));
    }
    for (claim, accepted) in &rules.require_claims {
        if claim.is_empty() || accepted.is_empty() {
            return Err((format!("{key}.require_claims"), format!("claim {claim:?} needs a name and at least one accepted value")));
        }
    }
    Ok(())
}

/// The global rules in force, shared by every layer and endpoint that applies them, and
/// replaced whole by a reload (SIGHUP): a request reads them once, so it is judged by the old
/// rules or the new ones, never a mix.
#[derive(Clone, Default)]
pub struct GlobalRules(Arc<arc_swap::ArcSwap<AuthorizationRules>>);

impl GlobalRules {
    /// Rules starting at `rules`.
    pub fn new(rules: AuthorizationRules) -> Self {
        Self(Arc::new(arc_swap::ArcSwap::from_pointee(rules)))
    }

    /// The rules in force now.
    pub fn load(&self) -> Arc<AuthorizationRules> {
        self.0.load_full()
    }

    /// The rules in force now, without an `Arc` clone: for the per-request read.
    pub(crate) fn current(&self) -> arc_swap::Guard<Arc<AuthorizationRules>> {
        self.0.load()
    }

    /// Puts `rules` in force for every request judged from now on.
    pub fn store(&self, rules: AuthorizationRules) {
        self.0.store(Arc::new(rules));
    }
}

impl From<AuthorizationRules> for GlobalRules {
    fn from(rules: AuthorizationRules) -> Self {
        Self::new(rules)
    }
}

impl std::fmt::Debug for GlobalRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.load().fmt(f)
    }
}

/// Applies the global rules and the route's (an `Arc<RouteConfig>` request extension) to the
/// request's [`Caller`]. Goes inside [`super::AuthLayer`], which puts the caller there.
#[derive(Clone)]
pub struct AuthorizeLayer {
    global: GlobalRules,
}

impl AuthorizeLayer {
    /// With `global` applied to every caller (the config's `[authorization]`, or a
    /// [`GlobalRules`] handle a reload replaces).
    pub fn new(global: impl Into<GlobalRules>) -> Self {
        Self { global: global.into() }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = AuthorizeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthorizeService { inner, global: self.global.clone() }
    }
}

/// The service [`AuthorizeLayer`] produces.
#[derive(Clone)]
pub struct AuthorizeService<S> {
    inner: S,
    global: GlobalRules,
}

/// What to do with a request, decided from its extensions.
pub(crate) enum Verdict {
    /// Forward as it is.
    Pass,
    /// Forward as an anonymous visitor (an `allow` route, a caller failing its rules).
    Anonymous(Refusal),
    /// Refuse with 403.
    Refuse(Refusal),
}

/// The decision for `caller` on `route` (none: only the global rules and the layer's policy),
/// with `extra` rules (forward-auth's query) applied last.
pub(crate) fn decide(
    caller: Option<&Caller>,
    global: &AuthorizationRules,
    route: Option<&RouteConfig>,
    extra: Option<&AuthorizationRules>,
    policy: Unauthenticated,
) -> Verdict {
    let Some(caller) = caller else { return Verdict::Pass };
    // On the stack: every authenticated request comes here (a `Vec` and its growth cost ~400
    // instructions a request).
    let route = route.map(|r| &r.authorization);
    let sets = [(Some(global), RuleScope::Global), (route, RuleScope::Route), (extra, RuleScope::Request)];
    let mut present = [(global, RuleScope::Global); 3];
    let mut n = 0;
    for (rules, scope) in sets {
        if let Some(rules) = rules {
            present[n] = (rules, scope);
            n += 1;
        }
    }
    match evaluate(caller.identity(), &present[..n]) {
        Ok(()) => Verdict::Pass,
        Err(refusal) if policy == Unauthenticated::Allow => Verdict::Anonymous(refusal),
        Err(refusal) => Verdict::Refuse(refusal),
    }
}

/// The log line of a refusal: the user (who the OP says they are), the route, the rule.
pub(crate) fn log_refusal(caller: &Caller, route: Option<&RouteConfig>, refusal: &Refusal, served_anonymously: bool) {
    let user = &caller.identity().user;
    let prefix = route.map_or("-", |r| r.prefix.as_str());
    let scope = refusal.scope.as_str();
    if served_anonymously {
        tracing::info!(%user, route = %prefix, rule = %refusal.key(), scope, "authorization rules not met; served as anonymous (public route)");
    } else {
        tracing::warn!(%user, route = %prefix, rule = %refusal.key(), scope, "authorization refused (403)");
    }
}

impl<S> Service<Request<Body>> for AuthorizeService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let route = req.extensions().get::<Arc<RouteConfig>>().cloned();
        // The route's policy as the auth layer saw it (the gateway inserts it per route);
        // without one, the auth layer refused or logged in every caller-less request already.
        let policy = req
            .extensions()
            .get::<Unauthenticated>()
            .copied()
            .or(route.as_ref().map(|r| r.unauthenticated))
            .unwrap_or(Unauthenticated::Login);
        let caller = req.extensions().get::<Caller>().cloned();
        let verdict = decide(caller.as_ref(), &self.global.current(), route.as_deref(), None, policy);
        Box::pin(async move {
            match (verdict, caller) {
                (Verdict::Pass, _) | (_, None) => inner.call(req).await,
                (Verdict::Anonymous(refusal), Some(caller)) => {
                    log_refusal(&caller, route.as_deref(), &refusal, true);
                    // What the auth layer set for the caller goes: the token, the identity
                    // headers, the extensions an inner service would read.
                    identity_headers::strip_client_identity(req.headers_mut(), true);
                    req.extensions_mut().remove::<Caller>();
                    req.extensions_mut().remove::<super::Session>();
                    inner.call(req).await
                }
                (Verdict::Refuse(refusal), Some(caller)) => {
                    log_refusal(&caller, route.as_deref(), &refusal, false);
                    Ok(refusal.failure(caller.identity()).respond(RequestKind::of(req.headers())))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    fn identity(email: Option<&str>, verified: Option<Value>, groups: &[&str], claims: Value) -> Identity {
        let mut map = match claims {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        if let Some(v) = verified {
            map.insert("email_verified".into(), v);
        }
        Identity {
            subject: "s".into(),
            user: "u".into(),
            email: email.map(String::from),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            claims: map,
        }
    }

    fn rules(domains: &[&str], emails: &[&str], groups: &[&str], claims: &[(&str, &[&str])]) -> AuthorizationRules {
        let v = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        AuthorizationRules {
            allowed_email_domains: v(domains),
            allowed_emails: v(emails),
            allowed_groups: v(groups),
            require_claims: claims.iter().map(|(k, vs)| (k.to_string(), v(vs))).collect::<BTreeMap<_, _>>(),
        }
    }

    /// The one table: (case, identity, rules, expected).
    #[test]
    fn rules_table() {
        use Rule::*;
        let ok = |e: &str| identity(Some(e), None, &[], json!({}));
        let cases: Vec<(&str, Identity, AuthorizationRules, Result<(), Rule>)> = vec![
            ("no rules admit anyone", identity(None, None, &[], json!({})), rules(&[], &[], &[], &[]), Ok(())),
            ("exact domain", ok("a@example.com"), rules(&["example.com"], &[], &[], &[]), Ok(())),
            ("domain case-insensitive", ok("A@EXAMPLE.Com"), rules(&["example.com"], &[], &[], &[]), Ok(())),
            ("suffix is not the domain", ok("a@evil-example.com"), rules(&["example.com"], &[], &[], &[]), Err(AllowedEmailDomains)),
            ("domain as a prefix", ok("a@example.com.evil"), rules(&["example.com"], &[], &[], &[]), Err(AllowedEmailDomains)),
            ("no subdomains", ok("a@sub.example.com"), rules(&["example.com"], &[], &[], &[]), Err(AllowedEmailDomains)),
            ("last @ decides", ok("a@example.com@evil.test"), rules(&["example.com"], &[], &[], &[]), Err(AllowedEmailDomains)),
            ("quoted local part with @", ok("\"x@evil.test\"@example.com"), rules(&["example.com"], &[], &[], &[]), Ok(())),
            ("no local part", ok("@example.com"), rules(&["example.com"], &[], &[], &[]), Err(AllowedEmailDomains)),
            ("not an address", ok("example.com"), rules(&["example.com"], &[], &[], &[]), Err(AllowedEmailDomains)),
            ("wildcard admits verified", ok("a@any.test"), rules(&["*"], &[], &[], &[]), Ok(())),
            (
                "wildcard refuses unverified",
                identity(Some("a@any.test"), Some(json!(false)), &[], json!({})),
                rules(&["*"], &[], &[], &[]),
                Err(EmailUnverified),
            ),
            (
                "unverified bool",
                identity(Some("a@example.com"), Some(json!(false)), &[], json!({})),
                rules(&["example.com"], &[], &[], &[]),
                Err(EmailUnverified),
            ),
            (
                "unverified string",
                identity(Some("a@example.com"), Some(json!("false")), &[], json!({})),
                rules(&[], &["a@example.com"], &[], &[]),
                Err(EmailUnverified),
            ),
            (
                "verified string",
                identity(Some("a@example.com"), Some(json!("TRUE")), &[], json!({})),
                rules(&[], &["a@example.com"], &[], &[]),
                Ok(()),
            ),
            (
                "verified as a number is not verified",
                identity(Some("a@example.com"), Some(json!(1)), &[], json!({})),
                rules(&[], &["a@example.com"], &[], &[]),
                Err(EmailUnverified),
            ),
            ("no email", identity(None, None, &[], json!({})), rules(&["example.com"], &[], &[], &[]), Err(NoEmail)),
            ("email listed, any case", ok("Alice@Example.com"), rules(&[], &["alice@example.COM"], &[], &[]), Ok(())),
            ("email not listed", ok("bob@example.com"), rules(&[], &["alice@example.com"], &[], &[]), Err(AllowedEmails)),
            ("Kelvin sign is not k", ok("\u{212A}@example.com"), rules(&[], &["k@example.com"], &[], &[]), Err(AllowedEmails)),
            ("either list admits", ok("bob@partner.test"), rules(&["example.com"], &["bob@partner.test"], &[], &[]), Ok(())),
            ("group member", identity(None, None, &["dev", "ops"], json!({})), rules(&[], &[], &["ops"], &[]), Ok(())),
            ("group case-sensitive", identity(None, None, &["Ops"], json!({})), rules(&[], &[], &["ops"], &[]), Err(AllowedGroups)),
            ("no groups", identity(None, None, &[], json!({})), rules(&[], &[], &["ops"], &[]), Err(AllowedGroups)),
            ("claim string", identity(None, None, &[], json!({"role": "admin"})), rules(&[], &[], &[], &[("role", &["admin"])]), Ok(())),
            (
                "claim array",
                identity(None, None, &[], json!({"roles": ["x", "admin"]})),
                rules(&[], &[], &[], &[("roles", &["admin"])]),
                Ok(()),
            ),
            (
                "claim wrong value",
                identity(None, None, &[], json!({"role": "user"})),
                rules(&[], &[], &[], &[("role", &["admin"])]),
                Err(RequireClaim("role".into())),
            ),
            (
                "claim missing",
                identity(None, None, &[], json!({})),
                rules(&[], &[], &[], &[("role", &["admin"])]),
                Err(RequireClaim("role".into())),
            ),
            ("claim number by text", identity(None, None, &[], json!({"tier": 2})), rules(&[], &[], &[], &[("tier", &["2"])]), Ok(())),
            ("claim bool by text", identity(None, None, &[], json!({"mfa": true})), rules(&[], &[], &[], &[("mfa", &["true"])]), Ok(())),
            (
                "claim object never",
                identity(None, None, &[], json!({"role": {"admin": true}})),
                rules(&[], &[], &[], &[("role", &["admin"])]),
                Err(RequireClaim("role".into())),
            ),
            (
                "claim nested array never",
                identity(None, None, &[], json!({"roles": [["admin"]]})),
                rules(&[], &[], &[], &[("roles", &["admin"])]),
                Err(RequireClaim("roles".into())),
            ),
            (
                "claim value case-sensitive",
                identity(None, None, &[], json!({"role": "Admin"})),
                rules(&[], &[], &[], &[("role", &["admin"])]),
                Err(RequireClaim("role".into())),
            ),
            (
                "all rules must hold",
                identity(Some("a@example.com"), None, &["dev"], json!({})),
                rules(&["example.com"], &[], &["ops"], &[]),
                Err(AllowedGroups),
            ),
        ];
        for (name, identity, rules, want) in cases {
            assert_eq!(check(&identity, &rules), want, "{name}");
        }
    }

    #[test]
    fn every_rule_set_applies_and_the_scope_is_named() {
        let id = identity(Some("a@example.com"), None, &["dev"], json!({}));
        let global = rules(&["example.com"], &[], &[], &[]);
        let route = rules(&[], &[], &["ops"], &[]);
        let refusal = evaluate(&id, &[(&global, RuleScope::Global), (&route, RuleScope::Route)]).unwrap_err();
        assert_eq!(refusal, Refusal { rule: Rule::AllowedGroups, scope: RuleScope::Route });
        assert_eq!(refusal.key(), "allowed_groups");
        // A route cannot widen the global rules.
        let narrow = rules(&["other.test"], &[], &[], &[]);
        let wide = rules(&["*"], &[], &[], &[]);
        assert!(evaluate(&id, &[(&narrow, RuleScope::Global), (&wide, RuleScope::Route)]).is_err());
    }

    #[test]
    fn the_refusal_names_the_rule_not_the_allowed_values() {
        let id = identity(Some("a@example.com"), None, &[], json!({}));
        let rules = rules(&[], &["boss@example.com"], &["secret-project"], &[]);
        let refusal = evaluate(&id, &[(&rules, RuleScope::Route)]).unwrap_err();
        let failure = refusal.failure(&id);
        assert_eq!(failure.status, http::StatusCode::FORBIDDEN);
        assert_eq!(failure.code, "forbidden");
        assert!(failure.message.contains("allowed_emails") && failure.message.contains("a@example.com"), "{}", failure.message);
        assert!(!failure.message.contains("boss") && !failure.message.contains("secret-project"), "{}", failure.message);
    }

    #[test]
    fn rule_values_are_validated() {
        let bad = [
            rules(&["@example.com"], &[], &[], &[]),
            rules(&[".example.com"], &[], &[], &[]),
            rules(&["*.example.com"], &[], &[], &[]),
            rules(&[""], &[], &[], &[]),
            rules(&[], &["nobody"], &[], &[]),
            rules(&[], &[], &[""], &[]),
            rules(&[], &[], &[], &[("role", &[])]),
        ];
        for r in &bad {
            assert!(validate_rules(r, "authorization").is_err(), "{r:?}");
        }
        assert!(validate_rules(&rules(&["example.com", "*"], &["a@b.c"], &["g"], &[("acr", &["x"])]), "authorization").is_ok());
    }
}
