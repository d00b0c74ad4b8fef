//! `cargo run -p portcullis-example-axum-app`, configured from the environment:
//! `PUBLIC_URL` (default `http://127.0.0.1:3000`), `ISSUER`, `CLIENT_ID`, `CLIENT_SECRET`,
//! `SESSION_SECRET` (from `portcullis generate-secret`).

use portcullis::config::Config;

#[tokio::main]
async fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("set {name}"));
    let public_url: url::Url = std::env::var("PUBLIC_URL").unwrap_or_else(|_| "http://127.0.0.1:3000".into()).parse().expect("PUBLIC_URL");
    let config = Config::builder(public_url.clone(), var("ISSUER").parse().expect("ISSUER"), var("CLIENT_ID"))
        .client_secret(var("CLIENT_SECRET"))
        .session_secret(var("SESSION_SECRET"))
        .build()
        .unwrap_or_else(|e| panic!("configuration: {e}"));
    let (app, _discovery) = portcullis_example_axum_app::app(&config);
    let port = public_url.port_or_known_default().unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    println!("listening on {public_url}");
    axum::serve(listener, app).await.expect("serve");
}
