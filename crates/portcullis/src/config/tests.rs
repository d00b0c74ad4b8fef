use super::*;

const MINIMAL: &str = r#"
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"

[oidc]
issuer = "http://127.0.0.1:9000"
client_id = "gw"
client_secret = "gw-secret"

[session]
secret = "++rhtodqPBSDqt5H7bpXKugU8xsXfcw6IIGfY1gqfCwCpTYxRw4UdbEWxDjp71lA"

[[routes]]
prefix = "/"
upstream = "http://127.0.0.1:9100"
"#;

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.session.store, StoreKind::Memory);
    assert_eq!(c.oidc.scopes, default_scopes());
    assert_eq!(c.routes[0].unauthenticated, Unauthenticated::Login);
    assert_eq!(c.redirect_uri().as_str(), "http://127.0.0.1:8080/oauth2/callback");
    assert!(!c.secure_cookies());
}

/// Each broken config must name the key at fault.
#[test]
fn errors_name_the_key() {
    let cases = [
        (MINIMAL.replace("client_secret = \"gw-secret\"", ""), "oidc.client_secret"),
        (MINIMAL.replace(SECRET, "short"), "session.secret"),
        (MINIMAL.replace("prefix = \"/\"", "prefix = \"app\""), "routes[0].prefix"),
        (MINIMAL.replace("prefix = \"/\"", "prefix = \"/oauth2/x\""), "routes[0].prefix"),
        (MINIMAL.replace("[session]", "[session]\nstore = \"redis\""), "session.redis_url"),
        (MINIMAL.replace("[session]", "[session]\nstore = \"mongo\""), "session.store"),
        (MINIMAL.replace("[session]", "[session]\nidle_timeout = \"soon\""), "session.idle_timeout"),
        (MINIMAL.replace("[oidc]", "[oidc]\nid_token_algorithms = [\"HS256\"]"), "oidc.id_token_algorithms"),
        (MINIMAL.replace("[oidc]", "[oidc]\nscopes = [\"email\"]"), "oidc.scopes"),
        (MINIMAL.replace("[oidc]", "[oidc]\nclient_secrt = \"typo\""), "client_secrt"),
        (MINIMAL.replace("http://127.0.0.1:8080\"", "http://127.0.0.1:8080/app\""), "public_url"),
        (MINIMAL.replace("unauthenticated", "x").replace("[[routes]]", "[[routes]]\nunauthenticated = \"maybe\""), "unauthenticated"),
    ];
    for (text, key) in cases {
        let err = Config::from_toml_str(&text).expect_err(key).to_string();
        assert!(err.contains(key), "error for {key} does not name it: {err}");
    }
}

const SECRET: &str = "++rhtodqPBSDqt5H7bpXKugU8xsXfcw6IIGfY1gqfCwCpTYxRw4UdbEWxDjp71lA";

/// Session secrets that are not random key material, each refused naming its key.
#[test]
fn weak_session_secrets_are_refused() {
    let cases: &[(&str, &str)] = &[
        // The example values the docs, example config, benchmarks and tests have shown.
        ("at least 32 bytes of random key material", "example value"),
        ("change-me-change-me-change-me-change-me", "example value"),
        ("test-secret-test-secret-test-secret-0123", "example value"),
        ("bench-secret-bench-secret-bench-secret-0", "example value"),
        ("0123456789abcdef0123456789abcdef", "example value"),
        ("  Change-Me-Change-Me-Change-Me-Change-Me ", "example value"),
        // Too short, however random.
        ("Zr4+kQ9/xW2m", "at least 32 bytes"),
        // One character, a short pattern, few distinct characters.
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "distinct"),
        ("abababababababababababababababababababab", "distinct"),
        ("0101100101011010100101011010010110101001", "distinct"),
        // Repeated patterns with enough distinct characters.
        ("Xk3!pQ9#Lm7@Xk3!pQ9#Lm7@Xk3!pQ9#Lm7@", "pattern"),
        ("abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz", "pattern"),
        ("my-secret-my-secret-my-secret-my-secret-2024", "pattern"),
        // Dictionary-like text, a passphrase, a hex counter.
        ("the quick brown fox jumps over the lazy dog", "pattern"),
        ("CorrectHorseBatteryStapleCorrectHorse", "pattern"),
        ("CorrectHorseBatteryStapleTroubadourWindow", "pattern"),
        ("this is the session secret of portcullis", "pattern"),
        ("super_secret_session_key_for_production", "pattern"),
        ("00000000000000000000000000000000000000001", "distinct"),
    ];
    for (secret, why) in cases {
        let text = MINIMAL.replace(SECRET, secret);
        let err = Config::from_toml_str(&text).expect_err(secret).to_string();
        assert!(err.starts_with("session.secret:"), "{secret:?}: error does not name session.secret: {err}");
        assert!(err.contains(why), "{secret:?}: expected {why:?} in {err}");
        assert!(!err.contains(secret.trim()), "the error repeats the secret: {err}");
        // The same value as a previous secret is refused too, naming that key.
        let text = MINIMAL.replace(
            &format!("secret = \"{SECRET}\""),
            &format!("secret = \"{SECRET}\"\nprevious_secrets = [\"{}\", \"{secret}\"]", crate::config::generate_secret()),
        );
        let err = Config::from_toml_str(&text).expect_err(secret).to_string();
        assert!(err.starts_with("session.previous_secrets[1]:"), "{secret:?}: {err}");
    }
    // Random ones pass, as current and previous secrets.
    for secret in
        [SECRET, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "l0J4qz6cX0u0+Ry0ZK2bsbLQ5c5c3VOCgq9wT3pA0mM="]
    {
        let text = MINIMAL
            .replace(SECRET, secret)
            .replace("[session]", &format!("[session]\nprevious_secrets = [\"{}\"]", crate::config::generate_secret()));
        Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{secret}: {e}"));
    }
}

#[test]
fn generated_secrets_pass_and_differ() {
    let (a, b) = (generate_secret(), generate_secret());
    assert_ne!(a, b);
    assert_eq!(a.len(), 64, "48 bytes, base64");
    Config::from_toml_str(&MINIMAL.replace(SECRET, &a)).unwrap();
}

/// `{:?}` of a config full of secrets shows none of them.
#[test]
fn debug_redacts_every_secret() {
    let secrets = [
        "client-secret-9f2Kq",
        SECRET,
        "previous-Zr4kQ9xW2mLp0aT7vB3nYc8dE1fG6hJ5sU",
        "redis-password-p4ss",
        "query-password-q7",
        "lone-userinfo-u9",
    ];
    let previous = format!("{}{}", secrets[2], "=");
    let base = MINIMAL.replace("gw-secret", secrets[0]).replace(
        "[session]",
        &format!(
            "[session]\nprevious_secrets = [\"{previous}\"]\nstore = \"redis\"\nredis_url = \"redis://user:{}@cache.internal:6379/0\"",
            secrets[3]
        ),
    );
    let variants = [
        base.clone(),
        base.replace(
            &format!("redis://user:{}@cache.internal:6379/0", secrets[3]),
            &format!("redis+unix:///run/redis.sock?db=1&password={}", secrets[4]),
        ),
        base.replace(&format!("redis://user:{}@cache.internal:6379/0", secrets[3]), &format!("redis://{}@cache.internal", secrets[5])),
    ];
    for text in variants {
        let config = Config::from_toml_str(&text).unwrap();
        // Serialized (print-config) as well as Debug.
        for shown in [format!("{config:?}"), format!("{config:#?}"), serde_json::to_string(&config).unwrap()] {
            for secret in secrets {
                assert!(!shown.contains(secret), "Debug shows {secret}: {shown}");
            }
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }
}

#[test]
fn secrets_come_from_files() {
    let dir = std::env::temp_dir().join(format!("portcullis-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_file = dir.join("client_secret");
    std::fs::write(&secret_file, "from-a-file\n").unwrap();
    let text = MINIMAL.replace("client_secret = \"gw-secret\"", &format!("client_secret_file = {:?}", secret_file.display().to_string()));
    let c = Config::from_toml_str(&text).unwrap();
    assert_eq!(c.oidc.client_secret.as_deref(), Some("from-a-file"));
    let missing = MINIMAL.replace("client_secret = \"gw-secret\"", "client_secret_file = \"/nonexistent/secret\"");
    let err = Config::from_toml_str(&missing).unwrap_err().to_string();
    assert!(err.contains("oidc.client_secret_file"), "{err}");
}

#[test]
fn https_public_url_means_secure_cookies() {
    let c = Config::from_toml_str(&MINIMAL.replace("public_url = \"http://", "public_url = \"https://")).unwrap();
    assert!(c.secure_cookies());
}
