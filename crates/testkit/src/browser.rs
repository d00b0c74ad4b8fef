//! A scripted browser: a cookie jar, no automatic redirects, and the clicks a user makes.

use std::sync::Arc;

use reqwest::{Url, cookie::CookieStore, header};

/// One response in a redirect chain.
#[derive(Debug, Clone)]
pub struct Hop {
    /// The URL requested.
    pub url: Url,
    /// Status answered.
    pub status: u16,
    /// `Location`, resolved against `url`.
    pub location: Option<Url>,
    /// Every `Set-Cookie` of the response.
    pub set_cookies: Vec<String>,
    /// The body, for the last hop (200s).
    pub body: String,
}

/// A browser: keeps cookies, follows redirects by hand so each hop can be inspected.
#[derive(Clone)]
pub struct Browser {
    jar: Arc<reqwest::cookie::Jar>,
    http: reqwest::Client,
}

impl Default for Browser {
    fn default() -> Self {
        Self::new()
    }
}

impl Browser {
    /// A browser with an empty cookie jar.
    pub fn new() -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let http = reqwest::Client::builder().cookie_provider(jar.clone()).redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Self { jar, http }
    }

    /// The underlying client (shares the cookie jar; does not follow redirects).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A page load (`Sec-Fetch-Mode: navigate`), one hop.
    pub async fn navigate(&self, url: &str) -> Hop {
        let url: Url = url.parse().unwrap();
        let response = self
            .http
            .get(url.clone())
            .header("sec-fetch-mode", "navigate")
            .header(header::ACCEPT, "text/html,application/xhtml+xml")
            .send()
            .await
            .unwrap();
        hop(url, response).await
    }

    /// Navigates and follows redirects until a non-redirect answer.
    pub async fn follow(&self, url: &str) -> Vec<Hop> {
        self.follow_until(url, &|_| false).await
    }

    /// Follows redirects until a non-redirect answer, or until the next location satisfies
    /// `stop` (that location is then not visited).
    pub async fn follow_until(&self, url: &str, stop: &dyn Fn(&Url) -> bool) -> Vec<Hop> {
        let mut hops = vec![self.navigate(url).await];
        while let Some(next) = hops.last().unwrap().location.clone().filter(|l| !stop(l)) {
            assert!(hops.len() < 20, "redirect loop: {hops:#?}");
            hops.push(self.navigate(next.as_str()).await);
        }
        hops
    }

    /// Opens `url` and logs in as `user` on the OP's form. Returns every hop, the form
    /// submission included, ending at the gateway's final answer.
    pub async fn login(&self, url: &str, user: &str) -> Vec<Hop> {
        self.login_until(url, user, &|_| false).await
    }

    /// Like [`Browser::login`], but stops before visiting a location that satisfies `stop`.
    pub async fn login_until(&self, url: &str, user: &str, stop: &dyn Fn(&Url) -> bool) -> Vec<Hop> {
        let mut hops = self.follow_until(url, stop).await;
        let page = hops.last().unwrap().clone();
        let action = form_action(&page.body).unwrap_or_else(|| panic!("no login form at {}: {}", page.url, page.body));
        let action = page.url.join(&action).unwrap();
        let response = self
            .http
            .post(action.clone())
            .header("sec-fetch-mode", "navigate")
            .form(&[("prompt", "login"), ("login", user), ("password", "any")])
            .send()
            .await
            .unwrap();
        let submitted = hop(action, response).await;
        let next = submitted.location.clone().expect("the login form redirects");
        hops.push(submitted);
        hops.extend(self.follow_until(next.as_str(), stop).await);
        hops
    }

    /// Signs out as a user does: opens `<gateway>/oauth2/sign_out` (a confirmation page) and
    /// clicks its button, a form POST marked same-origin as a current browser marks it
    /// (`Origin`, `Sec-Fetch-Site: same-origin`). Returns the POST's answer.
    pub async fn sign_out(&self, gateway: &str) -> Hop {
        let page = self.navigate(&format!("{}/oauth2/sign_out", gateway.trim_end_matches('/'))).await;
        assert_eq!(page.status, 200, "the sign-out confirmation page: {page:#?}");
        let action = form_action(&page.body).unwrap_or_else(|| panic!("no sign-out form: {}", page.body));
        let action = page.url.join(&action).unwrap();
        let response = self
            .http
            .post(action.clone())
            .header("sec-fetch-mode", "navigate")
            .header("sec-fetch-site", "same-origin")
            .header(header::ORIGIN, page.url.origin().ascii_serialization())
            .header(header::ACCEPT, "text/html,application/xhtml+xml")
            .send()
            .await
            .unwrap();
        hop(action, response).await
    }

    /// The value of cookie `name` that the browser would send to `url`.
    pub fn cookie(&self, url: &str, name: &str) -> Option<String> {
        let header = self.jar.cookies(&url.parse().unwrap())?;
        header.to_str().ok()?.split("; ").filter_map(|p| p.split_once('=')).find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
    }

    /// Sets a cookie as if the server had (for tampering tests).
    pub fn set_cookie(&self, url: &str, cookie: &str) {
        self.jar.add_cookie_str(cookie, &url.parse().unwrap());
    }
}

async fn hop(url: Url, response: reqwest::Response) -> Hop {
    let status = response.status().as_u16();
    let location = response.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).map(|l| url.join(l).unwrap());
    let set_cookies = response.headers().get_all(header::SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).map(String::from).collect();
    let body = response.text().await.unwrap_or_default();
    Hop { url, status, location, set_cookies, body }
}

fn form_action(html: &str) -> Option<String> {
    let form = &html[html.find("<form")?..];
    let start = form.find("action=\"")? + "action=\"".len();
    let end = form[start..].find('"')?;
    Some(form[start..start + end].replace("&amp;", "&"))
}
