//! Console sessions: log in with an admin or auditor token; an HttpOnly,
//! SameSite=Strict (and, under TLS, Secure) cookie names a server-side session that
//! expires; every form carries the session's CSRF token. The token is authenticated
//! again on every request, so a revoked or expired token ends its sessions at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Form;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use toolplane_core::model::{Principal, Role};
use toolplane_core::token;
use toolplane_runtime::auth::{Authenticate, PrincipalExt};

use super::Console;
use super::page::{self, ConsoleError};

/// The session cookie's name (`__Host-` under TLS: no Domain, Path=/, Secure).
const COOKIE: &str = "tp_console";
const SECURE_COOKIE: &str = "__Host-tp_console";
/// The login form's double-submit cookie (the form is posted before any session exists).
const LOGIN_COOKIE: &str = "tp_login";
/// Sessions kept at most; the oldest go first past this.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    /// The token the user logged in with, kept only here (server side), so that it is
    /// authenticated again on every request.
    bearer: String,
    csrf: String,
    expires: Instant,
}

pub struct Sessions {
    ttl: Duration,
    live: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: Mutex::default(),
        }
    }

    fn open(&self, bearer: String) -> (String, String) {
        let (id, csrf) = (token::generate(), token::generate());
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        live.retain(|_, s| s.expires > now);
        if live.len() >= MAX_SESSIONS
            && let Some(oldest) = live.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            live.remove(&oldest);
        }
        live.insert(
            token::digest(&id),
            Session {
                bearer,
                csrf: csrf.clone(),
                expires: now + self.ttl,
            },
        );
        (id, csrf)
    }

    /// The bearer token and CSRF token of a live session.
    fn get(&self, id: &str) -> Option<(String, String)> {
        let key = token::digest(id);
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get(&key) {
            Some(s) if s.expires > Instant::now() => Some((s.bearer.clone(), s.csrf.clone())),
            Some(_) => {
                live.remove(&key);
                None
            }
            None => None,
        }
    }

    fn close(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token::digest(id));
    }
}

/// The logged-in user of a request.
#[derive(Clone)]
pub struct Viewer {
    pub principal: Principal,
    pub csrf: String,
    session: String,
}

impl Viewer {
    /// Read-only (an auditor): pages show no action buttons, and the service layer
    /// refuses its changes anyway.
    pub fn read_only(&self) -> bool {
        self.principal.role() != Role::Admin
    }

    /// Refuses a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, sent: &str) -> Result<(), ConsoleError> {
        if token::digests_equal(sent, &self.csrf) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(
                "the form's CSRF token is missing or wrong: reload the page and try again".to_owned(),
            ))
        }
    }

    pub fn who(&self) -> String {
        self.principal.actor_id()
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Console {
    fn cookie_name(&self) -> &'static str {
        if self.secure_cookies { SECURE_COOKIE } else { COOKIE }
    }

    fn set_cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> HeaderValue {
        let mut c = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict");
        if let Some(secs) = max_age {
            c.push_str(&format!("; Max-Age={secs}"));
        }
        if self.secure_cookies {
            c.push_str("; Secure");
        }
        HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static("tp_invalid=1"))
    }

    /// The principal of a console login token: an admin or an auditor, nobody else.
    async fn console_principal(&self, bearer: &str) -> Result<Option<Principal>, ConsoleError> {
        let p = self.authn.authenticate(bearer).await.map_err(ConsoleError::from)?;
        Ok(p.filter(|p| matches!(p.role(), Role::Admin | Role::Auditor)))
    }
}

impl FromRequestParts<Arc<Console>> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, console: &Arc<Console>) -> Result<Self, Self::Rejection> {
        let to_login = || Redirect::to("/login").into_response();
        let Some(id) = cookie(&parts.headers, console.cookie_name()) else {
            return Err(to_login());
        };
        let Some((bearer, csrf)) = console.sessions.get(id) else {
            return Err(to_login());
        };
        match console.console_principal(&bearer).await {
            Ok(Some(principal)) => Ok(Viewer {
                principal,
                csrf,
                session: id.to_owned(),
            }),
            Ok(None) => {
                console.sessions.close(id);
                Err(to_login())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    csrf: String,
    error: String,
}

pub async fn login_page(State(console): State<Arc<Console>>) -> Response {
    login_form(&console, String::new(), StatusCode::OK)
}

fn login_form(console: &Console, error: String, status: StatusCode) -> Response {
    let csrf = token::generate();
    let page = LoginPage {
        csrf: csrf.clone(),
        error,
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::SET_COOKIE, console.set_cookie(LOGIN_COOKIE, &csrf, Some(600)));
    (status, headers, page::html(&page)).into_response()
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub async fn login(State(console): State<Arc<Console>>, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !token::digests_equal(expected, &form.csrf) {
        return ConsoleError::Forbidden("the login form's CSRF token is missing or wrong: reload and try again".into())
            .into_response();
    }
    let bearer = form.token.trim().to_owned();
    let principal = match console.console_principal(&bearer).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::info!("console: login refused");
            return login_form(
                &console,
                "That token is not a valid admin or auditor token (unknown, expired or revoked).".into(),
                StatusCode::UNAUTHORIZED,
            );
        }
        Err(e) => return e.into_response(),
    };
    tracing::info!(actor = %principal.actor_id(), "console: logged in");
    let (id, _) = console.sessions.open(bearer);
    let mut out = HeaderMap::new();
    let ttl = console.sessions.ttl.as_secs();
    out.append(
        header::SET_COOKIE,
        console.set_cookie(console.cookie_name(), &id, Some(ttl)),
    );
    out.append(header::SET_COOKIE, console.set_cookie(LOGIN_COOKIE, "", Some(0)));
    (out, Redirect::to("/")).into_response()
}

#[derive(Deserialize)]
pub struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(State(console): State<Arc<Console>>, viewer: Viewer, Form(form): Form<CsrfOnly>) -> Response {
    if let Err(e) = viewer.check_csrf(&form.csrf) {
        return e.into_response();
    }
    console.sessions.close(&viewer.session);
    tracing::info!(actor = %viewer.who(), "console: logged out");
    let mut out = HeaderMap::new();
    out.insert(
        header::SET_COOKIE,
        console.set_cookie(console.cookie_name(), "", Some(0)),
    );
    (out, Redirect::to("/login")).into_response()
}
