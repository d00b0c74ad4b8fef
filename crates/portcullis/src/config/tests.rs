use super::*;

const MINIMAL: &str = r#"
listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"

[oidc]
issuer = "http://127.0.0.1:9000"
client_id = "gw"
client_secret = "gw-secret"

[session]
secret = "0123456789abcdef0123456789abcdef"

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
        (MINIMAL.replace("0123456789abcdef0123456789abcdef", "short"), "session.secret"),
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
