//! The authorization code flow over real HTTP: discovery, login page, PKCE, code redemption, the
//! ID token checked against `/jwks`, userinfo, and every way the front half can be refused.

mod common;

use common::*;
use jsonwebtoken::{DecodingKey, Validation, jwk::JwkSet};
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn discovery_names_every_endpoint_under_the_issuer() {
    let op = start(config()).await;
    let issuer = op.issuer().as_str().trim_end_matches('/').to_string();
    assert_eq!(issuer, format!("http://{}", op.addr()), "issuer defaults to the bound address");
    let doc: Value = reqwest::get(url(&op, "/.well-known/openid-configuration")).await.unwrap().json().await.unwrap();
    assert_eq!(doc["issuer"], issuer);
    for (key, path) in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("jwks_uri", "/jwks"),
        ("userinfo_endpoint", "/userinfo"),
        ("introspection_endpoint", "/introspect"),
        ("revocation_endpoint", "/revoke"),
        ("end_session_endpoint", "/end_session"),
    ] {
        assert_eq!(doc[key], format!("{issuer}{path}"), "{key}");
    }
    assert_eq!(doc["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    assert_eq!(doc["response_types_supported"], serde_json::json!(["code"]));
    assert_eq!(doc["id_token_signing_alg_values_supported"], serde_json::json!(["RS256", "ES256"]));
    assert_eq!(doc["backchannel_logout_supported"], true);

    let jwks: JwkSet = reqwest::get(url(&op, "/jwks")).await.unwrap().json().await.unwrap();
    let kids: Vec<_> = jwks.keys.iter().map(|k| k.common.key_id.clone().unwrap()).collect();
    assert_eq!(kids.len(), 2);
    assert_ne!(kids[0], kids[1]);
    op.shutdown().await;
}

#[tokio::test]
async fn full_code_flow_with_pkce_and_a_verifiable_id_token() {
    let op = start(config()).await;
    let browser = browser();
    let (verifier, challenge) = pkce();

    let page = browser.get(authorize_url(&op, &challenge, &[])).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<input id="username" name="username""#), "username field");
    assert!(html.contains(r#"name="password" type="password""#), "password field");
    assert!(html.contains(r#"<button type="submit">Sign in</button>"#));
    assert!(html.contains("<code>demo</code> / <code>demo</code>"), "the demo hint");
    assert!(html.contains(CLIENT_ID), "the app name");

    let redirect = submit_login(&op, &browser, &html, "demo", "demo").await;
    assert!(redirect.headers().get_all("set-cookie").iter().any(|c| c.to_str().unwrap().contains("HttpOnly")));
    let (base, params) = location_params(&redirect);
    assert_eq!(base, REDIRECT_URI);
    assert_eq!(param(&params, "state"), Some("st-123"));
    assert_eq!(param(&params, "iss"), Some(url(&op, "").as_str()));
    let code = param(&params, "code").unwrap();

    let (status, body) = client_post(
        &op,
        "/token",
        &[("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT_URI), ("code_verifier", &verifier)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 300);
    assert!(str_of(&body, "access_token").len() >= 22, "≥ 128 bits of base64url");
    assert!(body["refresh_token"].is_string(), "offline_access yields a refresh token");

    let claims = verify_id_token(&op, str_of(&body, "id_token")).await;
    assert_eq!(claims["sub"], "demo");
    assert_eq!(claims["aud"], CLIENT_ID);
    assert_eq!(claims["nonce"], "n-456");
    assert_eq!(claims["name"], "Demo User");
    assert_eq!(claims["email"], "demo@example.test");
    assert_eq!(claims["groups"], serde_json::json!(["demo"]));
    assert!(claims["sid"].is_string() && claims["auth_time"].is_u64() && claims["iat"].is_u64());

    // Userinfo with the access token; 401 with a challenge without one.
    let info: Value = reqwest::Client::new()
        .get(url(&op, "/userinfo"))
        .bearer_auth(str_of(&body, "access_token"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], "demo");
    assert_eq!(info["email"], "demo@example.test");
    for bearer in [None, Some("not-a-token")] {
        let mut request = reqwest::Client::new().post(url(&op, "/userinfo"));
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    }

    let stats = op.stats();
    assert_eq!(stats.logins, 1);
    assert_eq!(stats.outcomes["authorization_code:ok"], 1);
    op.shutdown().await;
}

/// Verifies an ID token against the OP's published JWKS, as a relying party would.
async fn verify_id_token(op: &portcullis_dev_op::DevOp, id_token: &str) -> Value {
    let jwks: JwkSet = reqwest::get(url(op, "/jwks")).await.unwrap().json().await.unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256, "RS256 by default");
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the kid is in the JWKS");
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[url(op, "")]);
    validation.set_audience(&[CLIENT_ID]);
    jsonwebtoken::decode::<Value>(id_token, &DecodingKey::from_jwk(jwk).unwrap(), &validation).expect("a valid ID token").claims
}

#[tokio::test]
async fn wrong_password_shows_the_page_again_with_401() {
    let op = start(config()).await;
    let browser = browser();
    let (_, challenge) = pkce();
    let html = browser.get(authorize_url(&op, &challenge, &[])).send().await.unwrap().text().await.unwrap();
    for (user, pass) in [("demo", "wrong"), ("nobody", "demo")] {
        let response = submit_login(&op, &browser, &html, user, pass).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let again = response.text().await.unwrap();
        assert!(again.contains("Wrong username or password"));
        assert!(again.contains(r#"name="password" type="password""#));
        assert_eq!(hidden_fields(&again), hidden_fields(&html), "the request is carried on");
    }
    assert_eq!(op.stats().logins, 0);
    op.shutdown().await;
}

#[tokio::test]
async fn pkce_missing_or_plain_is_an_error_redirect() {
    let op = start(config()).await;
    let (_, challenge) = pkce();
    let cases: [&[(&str, Option<&str>)]; 4] = [
        &[("code_challenge", None), ("code_challenge_method", None)],
        &[("code_challenge_method", Some("plain"))],
        &[("code_challenge_method", None)],
        &[("code_challenge", Some("too-short"))],
    ];
    for overrides in cases {
        let response = browser().get(authorize_url(&op, &challenge, overrides)).send().await.unwrap();
        let (base, params) = location_params(&response);
        assert_eq!(base, REDIRECT_URI);
        assert_eq!(param(&params, "error"), Some("invalid_request"), "{overrides:?}");
        assert_eq!(param(&params, "state"), Some("st-123"));
    }
    let response = browser().get(authorize_url(&op, &challenge, &[("response_type", Some("token"))])).send().await.unwrap();
    assert_eq!(param(&location_params(&response).1, "error"), Some("unsupported_response_type"));
    let response = browser().get(authorize_url(&op, &challenge, &[("scope", Some("profile"))])).send().await.unwrap();
    assert_eq!(param(&location_params(&response).1, "error"), Some("invalid_scope"));
    op.shutdown().await;
}

#[tokio::test]
async fn unknown_client_or_redirect_uri_gets_a_page_never_a_redirect() {
    let op = start(config()).await;
    let (_, challenge) = pkce();
    for overrides in [
        [("client_id", Some("nope"))],
        [("redirect_uri", Some("http://evil.example/cb"))],
        [("redirect_uri", Some("http://127.0.0.1:1/callback/"))],
        [("redirect_uri", None)],
    ] {
        let response = browser().get(authorize_url(&op, &challenge, &overrides)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{overrides:?}");
        assert!(response.headers().get("location").is_none());
    }
    let repeated = format!("{}&state=again", authorize_url(&op, &challenge, &[]));
    assert_eq!(browser().get(repeated).send().await.unwrap().status(), StatusCode::BAD_REQUEST, "repeated parameter");
    op.shutdown().await;
}

#[tokio::test]
async fn echoed_values_are_html_escaped() {
    let op = start(config()).await;
    let (_, challenge) = pkce();
    let evil = r#""><script>alert(1)</script>"#;
    let html = browser().get(authorize_url(&op, &challenge, &[("state", Some(evil))])).send().await.unwrap().text().await.unwrap();
    assert!(!html.contains("<script>"));
    assert!(html.contains("&quot;&gt;&lt;script&gt;"));
    assert!(hidden_fields(&html).contains(&("state".to_string(), evil.to_string())), "and round-trip intact");
    op.shutdown().await;
}

#[tokio::test]
async fn the_browser_session_skips_the_form_and_prompt_controls_it() {
    let op = start(config()).await;
    let browser = browser();
    sign_in(&op, &browser).await;
    let (_, challenge) = pkce();

    let again = browser.get(authorize_url(&op, &challenge, &[])).send().await.unwrap();
    assert!(param(&location_params(&again).1, "code").is_some(), "signed in already: straight back with a code");
    let none = browser.get(authorize_url(&op, &challenge, &[("prompt", Some("none"))])).send().await.unwrap();
    assert!(param(&location_params(&none).1, "code").is_some());
    let login = browser.get(authorize_url(&op, &challenge, &[("prompt", Some("login"))])).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::OK, "prompt=login shows the form");

    let stranger = common::browser().get(authorize_url(&op, &challenge, &[("prompt", Some("none"))])).send().await.unwrap();
    assert_eq!(param(&location_params(&stranger).1, "error"), Some("login_required"));
    assert_eq!(op.stats().logins, 1);
    op.shutdown().await;
}

#[tokio::test]
async fn code_is_one_time_bound_to_client_redirect_and_verifier() {
    let op = start(config()).await;

    // Wrong verifier: refused, and the code is spent. (A new browser for each login: a second
    // login in the same one would skip the form.)
    let (code, verifier) = sign_in(&op, &browser()).await;
    let (other_verifier, _) = pkce();
    let redeem = |code: String, redirect: &'static str, verifier: String| {
        let op = &op;
        async move {
            client_post(
                op,
                "/token",
                &[("grant_type", "authorization_code"), ("code", &code), ("redirect_uri", redirect), ("code_verifier", &verifier)],
            )
            .await
        }
    };
    let (status, body) = redeem(code.clone(), REDIRECT_URI, other_verifier).await;
    assert_eq!((status, str_of(&body, "error")), (StatusCode::BAD_REQUEST, "invalid_grant"));
    assert_eq!(redeem(code, REDIRECT_URI, verifier).await.1["error"], "invalid_grant", "spent by the failed attempt");

    // Wrong redirect_uri.
    let (code, verifier) = sign_in(&op, &browser()).await;
    assert_eq!(redeem(code, "http://127.0.0.1:1/other", verifier).await.1["error"], "invalid_grant");

    // Replay: refused, and the tokens of the first redemption are revoked.
    let (code, verifier) = sign_in(&op, &browser()).await;
    let (status, first) = redeem(code.clone(), REDIRECT_URI, verifier.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(introspect(&op, str_of(&first, "access_token")).await["active"], true);
    assert_eq!(redeem(code, REDIRECT_URI, verifier).await.1["error"], "invalid_grant");
    assert_eq!(introspect(&op, str_of(&first, "access_token")).await["active"], false);
    assert_eq!(introspect(&op, str_of(&first, "refresh_token")).await["active"], false);
    op.shutdown().await;
}

#[tokio::test]
async fn client_authentication_basic_post_and_failures() {
    let op = start(config()).await;
    let tokens = tokens(&op).await;
    let rt = str_of(&tokens, "refresh_token").to_string();
    let http = reqwest::Client::new();
    let form = |extra: &[(&'static str, &'static str)]| {
        let mut form = vec![("grant_type", "refresh_token".to_string()), ("refresh_token", rt.clone())];
        form.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        form
    };

    // Wrong secret (Basic) and unknown client: 401 invalid_client with a challenge.
    for (id, secret) in [(CLIENT_ID, "wrong"), ("nobody", CLIENT_SECRET)] {
        let response = http.post(url(&op, "/token")).basic_auth(id, Some(secret)).form(&form(&[])).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers().contains_key("www-authenticate"));
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_client");
    }
    // No authentication at all.
    let response = http.post(url(&op, "/token")).form(&form(&[])).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // Both methods at once.
    let response = http
        .post(url(&op, "/token"))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .form(&form(&[("client_secret", CLIENT_SECRET)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_request");
    // client_secret_post works.
    let response =
        http.post(url(&op, "/token")).form(&form(&[("client_id", CLIENT_ID), ("client_secret", CLIENT_SECRET)])).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    // Unsupported grant types are named as such.
    let (status, body) = client_post(&op, "/token", &[("grant_type", "password"), ("username", "demo"), ("password", "demo")]).await;
    assert_eq!((status, str_of(&body, "error")), (StatusCode::BAD_REQUEST, "unsupported_grant_type"));

    let stats = op.stats();
    assert_eq!(stats.outcomes["refresh_token:invalid_client"], 3);
    assert_eq!(stats.outcomes["other:unsupported_grant_type"], 1);
    op.shutdown().await;
}

#[tokio::test]
async fn a_non_loopback_listen_address_is_refused_with_the_reason() {
    let config = portcullis_dev_op::DevOpConfig { listen: "0.0.0.0:0".parse().unwrap(), ..common::config() };
    let error = portcullis_dev_op::start(config).await.unwrap_err();
    assert!(matches!(error, portcullis_dev_op::DevOpError::NonLoopback(_)), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("not secure") && message.contains("--allow-non-loopback"), "{message}");
}
