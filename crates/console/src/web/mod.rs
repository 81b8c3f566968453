//! The web console (`docs/console.md`), served by `redoubt console` on the API's port:
//! server-rendered pages and a little plain JavaScript (`crates/console/assets/`), no build
//! step.
//!
//! ```text
//! browser ──cookie session──▶ session layer ──(Authorization: Bearer <the login token>)──▶ API
//!    │                              └─ mutating request without the session's X-CSRF-Token: 403
//!    └── /ui pages ◀── pages.rs (HTML from the API's own documents) ◀── status, init, samples
//! ```
//!
//! **Invariants:** a session is only created for a token the API accepts; the session cookie
//! is `HttpOnly; SameSite=Strict`; every mutating request that rides on a session carries that
//! session's CSRF token (header `X-CSRF-Token`, or the `csrf` field of the two plain forms,
//! login and logout), else it is refused before it reaches a handler. The API's own token
//! check (and its role check) sees the session's token exactly as if the CLI had sent it.

pub mod pages;
pub mod samples;
pub mod wizard;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};

use redoubt_config::Config;
use redoubt_plan::PlanOptions;

use crate::runner::{now_unix_ms, Shared};
use crate::status;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "redoubt_session";
/// Header that carries the session's CSRF token on mutating requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session lasts this long after login.
pub const SESSION_TTL_MS: u64 = 12 * 3600 * 1000;
/// Sessions kept at most; the oldest is dropped to make room.
pub const SESSIONS_MAX: usize = 1024;
/// Random bytes of a session id and of a CSRF token.
const SESSION_SECRET_BYTES: usize = 32;

const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");

#[derive(Clone, Debug)]
struct Session {
    /// The API token the user logged in with: what the API sees on their requests.
    token: String,
    csrf: String,
    expires_unix_ms: u64,
}

/// What a handler knows of the session a request rides on.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub csrf: String,
}

/// The web console's state: sessions and the dashboard's sample history.
pub struct Web {
    shared: Arc<Shared>,
    /// The console serves HTTPS: session cookies get `Secure`, so a browser never sends
    /// them over plain HTTP.
    secure_cookies: bool,
    sessions: Mutex<HashMap<String, Session>>,
    history: Mutex<samples::History>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; SESSION_SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Web {
    pub fn new(shared: Arc<Shared>, secure_cookies: bool) -> Arc<Web> {
        Arc::new(Web {
            shared,
            secure_cookies,
            sessions: Mutex::new(HashMap::new()),
            history: Mutex::new(samples::History::default()),
        })
    }

    /// Whether the API accepts `token` (operator or read-only: `crate::auth`). A rotated
    /// token stops being valid at once, and so do the sessions opened with it.
    fn token_valid(&self, token: &str) -> bool {
        self.shared.auth.role_of(token).is_some()
    }

    fn create_session(&self, token: String, now_unix_ms: u64) -> (String, Session) {
        let id = random_hex();
        let session = Session {
            token,
            csrf: random_hex(),
            expires_unix_ms: now_unix_ms.saturating_add(SESSION_TTL_MS),
        };
        let mut sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions.retain(|_, s| s.expires_unix_ms > now_unix_ms);
        if sessions.len() >= SESSIONS_MAX {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_unix_ms)
                .map(|(id, _)| id.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), session.clone());
        assert!(sessions.len() <= SESSIONS_MAX);
        (id, session)
    }

    fn session(&self, id: &str, now_unix_ms: u64) -> Option<Session> {
        let sessions = self.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        sessions
            .get(id)
            .filter(|s| s.expires_unix_ms > now_unix_ms)
            .cloned()
    }

    fn end_session(&self, id: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Samples the status every [`samples::SAMPLE_INTERVAL_MS`] until the console closes.
    pub fn start_sampler(self: &Arc<Self>) {
        let web = Arc::clone(self);
        let mut closing = self.shared.closing();
        self.shared.spawn_task(async move {
            loop {
                if let Ok((_, status)) = status_document(&web.shared).await {
                    web.history
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .record(now_unix_ms(), &status);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(samples::SAMPLE_INTERVAL_MS)) => {}
                    _ = closing.wait_for(|closed| *closed) => return,
                }
            }
        });
    }
}

/// The current configuration (if any) and the status document of `GET /v1/status`.
pub async fn status_document(shared: &Shared) -> Result<(Option<(u64, Config)>, Value), String> {
    let current = shared.store.current().map_err(|e| e.to_string())?;
    let Some(current) = current else {
        return Ok((None, json!({"groups": [], "servers": []})));
    };
    let config = redoubt_config::parse("current.toml", &current.toml).map_err(|diagnostics| {
        format!(
            "the stored configuration version {} no longer parses ({} error(s))",
            current.version,
            diagnostics.len()
        )
    })?;
    let inits = shared.store.inits().map_err(|e| e.to_string())?;
    let agents = status::collect(&shared.agent, &config).await;
    let document = status::build(&config, current.version, &inits, &agents);
    Ok((Some((current.version, config)), document))
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// Paths whose plain HTML forms carry the CSRF token in their body (checked by the handler).
const FORM_POSTS: [&str; 2] = ["/ui/login", "/ui/logout"];

/// The session layer: a request that rides on a valid session cookie gets the session's API
/// token as its bearer token, after its CSRF token is checked if it changes anything.
async fn session_layer(State(web): State<Arc<Web>>, mut request: Request, next: Next) -> Response {
    if request.headers().contains_key(header::AUTHORIZATION) {
        return next.run(request).await;
    }
    let Some(id) = cookie(request.headers(), SESSION_COOKIE).map(str::to_string) else {
        return next.run(request).await;
    };
    let Some(session) = web.session(&id, now_unix_ms()) else {
        return next.run(request).await;
    };
    if !web.token_valid(&session.token) {
        // The token was rotated since login: the session ends with it.
        web.end_session(&id);
        return next.run(request).await;
    }
    let safe = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !safe && !FORM_POSTS.contains(&request.uri().path()) {
        let presented = request
            .headers()
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), session.csrf.as_bytes()) {
            let response = (
                StatusCode::FORBIDDEN,
                crate::audit::note("refused: the session's CSRF token was missing or wrong"),
                Json(json!({"error": "missing or wrong CSRF token (X-CSRF-Token) for this session; reload the page"})),
            )
                .into_response();
            // A forged cross-site request is an attack on a logged-in operator: on record.
            let role = web
                .shared
                .auth
                .role_of(&session.token)
                .map_or("anonymous", |role| role.name());
            crate::audit::record_response(
                &web.shared,
                role,
                request.method(),
                request.uri().path(),
                &response,
            );
            return response;
        }
    }
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", session.token)) {
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
    request.extensions_mut().insert(SessionInfo {
        csrf: session.csrf.clone(),
    });
    next.run(request).await
}

/// The web console around the API router: pages, assets, and the session layer over both.
pub fn wrap(api: Router, web: Arc<Web>) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui", get(dashboard_page))
        .route("/ui/fragment/dashboard", get(dashboard_fragment))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/groups/{group}", get(group_page))
        .route("/ui/groups/{group}/fragment", get(group_fragment))
        .route("/ui/groups/{group}/change", get(wizard_page))
        .route("/ui/groups/{group}/change/plan", post(wizard_plan))
        .route("/ui/assets/app.js", get(app_js))
        .route("/ui/assets/app.css", get(app_css))
        .with_state(Arc::clone(&web));
    api.merge(pages)
        .layer(middleware::from_fn_with_state(web, session_layer))
}

async fn app_js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_JS,
    )
        .into_response()
}

async fn app_css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        APP_CSS,
    )
        .into_response()
}

fn html(body: String) -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(body),
    )
        .into_response()
}

fn to_login() -> Response {
    Redirect::to("/ui/login").into_response()
}

async fn login_form() -> Response {
    html(pages::login_page(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(web): State<Arc<Web>>, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim().to_string();
    if !web.token_valid(&token) {
        tracing::warn!("web console: a login with a wrong token was refused");
        // Counted like any anonymous refusal: on record, and unable to flood the log.
        crate::audit::record_response(
            &web.shared,
            "anonymous",
            &Method::POST,
            "/ui/login",
            &(
                StatusCode::UNAUTHORIZED,
                crate::audit::note("web console login refused: wrong token"),
            )
                .into_response(),
        );
        // The form again with the reason, as a page (200): no session, nothing else changed.
        return html(pages::login_page(Some(
            "That token is not valid for this console.",
        )));
    }
    let (id, _) = web.create_session(token, now_unix_ms());
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL_MS / 1000,
        if web.secure_cookies { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(web): State<Arc<Web>>,
    session: Option<Extension<SessionInfo>>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    if let Some(Extension(session)) = session {
        if !constant_time_eq(form.csrf.as_bytes(), session.csrf.as_bytes()) {
            let response = (
                StatusCode::FORBIDDEN,
                crate::audit::note("refused: the session's CSRF token was missing or wrong"),
                "wrong CSRF token; reload the page",
            )
                .into_response();
            // The session layer put the session's token in front of this handler.
            let role = headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .and_then(|token| web.shared.auth.role_of(token))
                .map_or("anonymous", |role| role.name());
            crate::audit::record_response(
                &web.shared,
                role,
                &Method::POST,
                "/ui/logout",
                &response,
            );
            return response;
        }
        let id = cookie(&headers, SESSION_COOKIE).map(str::to_string);
        if let Some(id) = id {
            web.end_session(&id);
        }
    }
    let mut response = Redirect::to("/ui/login").into_response();
    let expired = if web.secure_cookies {
        "redoubt_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
    } else {
        "redoubt_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    };
    response
        .headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_static(expired));
    response
}

fn group_names(config: Option<&(u64, Config)>) -> Vec<String> {
    config
        .map(|(_, config)| config.groups.iter().map(|g| g.name.clone()).collect())
        .unwrap_or_default()
}

fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        Html(format!(
            "<!doctype html><title>Redoubt</title><p class=\"error\">{}</p><p><a href=\"/ui\">Dashboard</a></p>",
            pages::escape(message)
        )),
    )
        .into_response()
}

async fn dashboard_page(
    State(web): State<Arc<Web>>,
    session: Option<Extension<SessionInfo>>,
) -> Response {
    let Some(Extension(session)) = session else {
        return to_login();
    };
    let (config, status) = match status_document(&web.shared).await {
        Ok(found) => found,
        Err(error) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &error),
    };
    let now = now_unix_ms();
    let content = {
        let history = web.history.lock().unwrap_or_else(PoisonError::into_inner);
        pages::dashboard(&status, &history, now)
    };
    let mut body = format!("<h1>Dashboard</h1><div id=\"dashboard\" data-refresh=\"/ui/fragment/dashboard\">{content}</div>");
    if let Some((_, config)) = &config {
        for group in &config.groups {
            body.push_str(&pages::recovery_panel(&group.name, &group.recovery));
        }
    }
    html(pages::layout(
        "Dashboard",
        &session.csrf,
        &group_names(config.as_ref()),
        &body,
    ))
}

async fn dashboard_fragment(
    State(web): State<Arc<Web>>,
    session: Option<Extension<SessionInfo>>,
) -> Response {
    if session.is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match status_document(&web.shared).await {
        Ok((_, status)) => {
            let history = web.history.lock().unwrap_or_else(PoisonError::into_inner);
            html(pages::dashboard(&status, &history, now_unix_ms()))
        }
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error).into_response(),
    }
}

/// The Configuration Window's changing part for `group`, and the configured group names.
async fn window_html(web: &Web, group: &str) -> Result<(String, Vec<String>), Response> {
    let (config, status) = status_document(&web.shared)
        .await
        .map_err(|error| error_page(StatusCode::INTERNAL_SERVER_ERROR, &error))?;
    let Some((_, config)) = config else {
        return Err(error_page(
            StatusCode::NOT_FOUND,
            "no configuration has been applied yet",
        ));
    };
    let record = web
        .shared
        .store
        .init(group)
        .map_err(|error| error_page(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()))?;
    if config.group(group).is_none() && record.is_none() {
        return Err(error_page(
            StatusCode::NOT_FOUND,
            &format!("no group named {group}"),
        ));
    }
    let init = match &record {
        Some(record) => crate::api::init_json(record),
        None => json!({"group": group, "state": "idle", "steps": []}),
    };
    let status_group = status["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["name"] == group));
    let names = config.groups.iter().map(|g| g.name.clone()).collect();
    Ok((pages::window(&config, group, status_group, &init), names))
}

async fn group_page(
    State(web): State<Arc<Web>>,
    session: Option<Extension<SessionInfo>>,
    Path(group): Path<String>,
) -> Response {
    let Some(Extension(session)) = session else {
        return to_login();
    };
    match window_html(&web, &group).await {
        Ok((window, names)) => {
            let g = pages::escape(&group);
            let body = format!(
                "<h1>Configuration Window: {g}</h1>\
<p class=\"toolbar\"><a class=\"button\" href=\"/ui/groups/{g}/change\" id=\"change-group\">Change Replication Group…</a></p>\
<div id=\"window-container\" data-group=\"{g}\" data-refresh=\"/ui/groups/{g}/fragment\" data-events=\"/v1/init/{g}/events\">{window}</div>\
<section class=\"events\"><h2>Events</h2><ol id=\"event-log\" data-testid=\"event-log\"></ol></section>"
            );
            html(pages::layout(
                &format!("Group {group}"),
                &session.csrf,
                &names,
                &body,
            ))
        }
        Err(response) => response,
    }
}

async fn group_fragment(
    State(web): State<Arc<Web>>,
    session: Option<Extension<SessionInfo>>,
    Path(group): Path<String>,
) -> Response {
    if session.is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match window_html(&web, &group).await {
        Ok((window, _)) => html(window),
        Err(response) => response,
    }
}

fn current_config(web: &Web) -> Result<Option<(u64, Config)>, String> {
    let Some(current) = web.shared.store.current().map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    redoubt_config::parse("current.toml", &current.toml)
        .map(|config| Some((current.version, config)))
        .map_err(|_| {
            format!(
                "the stored configuration version {} no longer parses",
                current.version
            )
        })
}

async fn wizard_page(
    State(web): State<Arc<Web>>,
    session: Option<Extension<SessionInfo>>,
    Path(group): Path<String>,
) -> Response {
    let Some(Extension(session)) = session else {
        return to_login();
    };
    let config = match current_config(&web) {
        Ok(Some((_, config))) => config,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "no configuration has been applied yet",
            )
        }
        Err(error) => return error_page(StatusCode::INTERNAL_SERVER_ERROR, &error),
    };
    let Some(form) = wizard::form_of(&config, &group) else {
        return error_page(StatusCode::NOT_FOUND, &format!("no group named {group}"));
    };
    let names: Vec<String> = config.groups.iter().map(|g| g.name.clone()).collect();
    html(pages::layout(
        &format!("Change {group}"),
        &session.csrf,
        &names,
        &pages::wizard(&config, &group, &form),
    ))
}

fn bad_request(error: impl Into<String>, errors: Vec<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": error.into(), "errors": errors})),
    )
        .into_response()
}

/// The wizard's Summary: the new configuration's TOML and its plan, computed exactly as
/// `POST /v1/config/plan` computes it (same parser, same planner, same options).
async fn wizard_plan(
    State(web): State<Arc<Web>>,
    session: Option<Extension<SessionInfo>>,
    Path(group): Path<String>,
    Json(form): Json<wizard::ChangeForm>,
) -> Response {
    if session.is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "log in first"})),
        )
            .into_response();
    }
    let current = match current_config(&web) {
        Ok(Some((_, config))) => config,
        Ok(None) => return bad_request("no configuration has been applied yet", vec![]),
        Err(error) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": error})),
            )
                .into_response()
        }
    };
    let toml = match wizard::compose(&current, &group, &form) {
        Ok(toml) => toml,
        Err(errors) => {
            return bad_request(format!("{} problem(s) in the change", errors.len()), errors)
        }
    };
    let new = match redoubt_config::parse("change.toml", &toml) {
        Ok(new) => new,
        Err(diagnostics) => {
            return bad_request(
                format!(
                    "the changed configuration has {} error(s)",
                    diagnostics.len()
                ),
                diagnostics
                    .iter()
                    .map(|d| format!("{}: {}", d.field, d.reason))
                    .collect(),
            )
        }
    };
    let plans = match redoubt_plan::plan(Some(&current), &new, PlanOptions::default()) {
        Ok(plans) => plans,
        Err(errors) => {
            return bad_request(
                "the change cannot be planned",
                errors.iter().map(ToString::to_string).collect(),
            )
        }
    };
    let plans = serde_json::to_value(redoubt_plan::report::to_json(&plans)).unwrap_or(Value::Null);
    Json(json!({"toml": toml, "plans": plans, "html": pages::plan(&plans)})).into_response()
}
