//! The console's HTTP routes: the page and its assets, a JSON API the page reads, one event
//! stream per open page, and the one action (moving an alias). Every response carries a strict
//! Content-Security-Policy: scripts, styles and connections only from the console itself.

mod assets;
mod live;
pub mod session;

use std::{sync::Arc, time::Duration};

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, Path, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kappa_api::{
    registry::SetAliasRequest,
    trainer::{BacktestRequest, TimeRange, trainer_client::TrainerClient},
};
use kappa_runtime::{auth::Role, web::WebSecurity};
use serde::Deserialize;
use serde_json::json;

use crate::App;
use session::{COOKIE, CSRF_HEADER, Caller, same_secret};

/// Largest request body the console reads (a sign-in, an alias move).
const MAX_BODY_BYTES: usize = 16 * 1024;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{name}", get(assets::asset))
        .route("/api/session", get(session_info))
        .route("/api/session/sign-in", post(sign_in))
        .route("/api/session/sign-out", post(sign_out))
        .route("/api/fleet", get(fleet))
        .route("/api/units", get(find_units))
        .route("/api/units/{key}", get(unit))
        .route("/api/models", get(models))
        .route("/api/models/{name}", get(model))
        .route("/api/models/{name}/aliases/{alias}", post(move_alias))
        .route("/api/models/{name}/backtest", post(backtest))
        .route("/api/serving", get(serving))
        .route("/api/monitoring", get(monitoring))
        .route("/api/status", get(status))
        .route("/api/live", get(live::stream))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

async fn security_headers(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// An API error: its status and a sentence saying what to do.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

impl App {
    /// The caller of a request (its session's, if its cookie names a live one).
    fn caller(&self, headers: &HeaderMap) -> Caller {
        self.sessions.caller(cookie_value(headers, COOKIE), &self.web.auth)
    }

    /// The caller, who must hold `role`.
    fn needs(&self, headers: &HeaderMap, role: Role) -> Result<Caller, ApiError> {
        let caller = self.caller(headers);
        if caller.may(role) {
            return Ok(caller);
        }
        Err(match &caller.principal {
            None => ApiError(
                StatusCode::UNAUTHORIZED,
                "sign in with a token that holds the read role".into(),
            ),
            Some(p) => ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "{} holds roles [{}]; this needs the {} role",
                    p.name,
                    p.roles,
                    role.name()
                ),
            ),
        })
    }
}

fn session_cookie(web: &WebSecurity, id: &str) -> HeaderValue {
    let secure = if web.tls.is_some() { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict{secure}"))
        .expect("hex ids make a valid header")
}

/// A state-changing request must come from the console's own page: the session's CSRF secret
/// in a header, and no foreign Origin.
fn check_same_origin(headers: &HeaderMap, caller: &Caller) -> Result<(), ApiError> {
    let Some(csrf) = &caller.csrf else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "no console session: actions are taken from the console's own page (reload it)".into(),
        ));
    };
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !same_secret(sent, csrf) {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("missing or wrong {CSRF_HEADER} header: actions are taken from the console's own page"),
        ));
    }
    if let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST)) {
        let origin = origin.to_str().unwrap_or("");
        let host = host.to_str().unwrap_or("");
        let origin_host = origin.split_once("://").map_or("", |(_, rest)| rest);
        if origin_host != host {
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!("requests from {origin} are refused"),
            ));
        }
    }
    Ok(())
}

/// The page's first call: the only one that makes a session (and sets its cookie).
async fn session_info(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let (caller, new) = app
        .sessions
        .open(cookie_value(&headers, COOKIE), &app.web.auth)
        .map_err(|full| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the console holds {} signed-in sessions (--max-sessions); sign out of one, wait for one \
                     to idle out (--session-idle-hours) or raise --max-sessions",
                    full.max
                ),
            )
        })?;
    let cookie = new.then(|| session_cookie(&app.web, caller.id.as_deref().unwrap_or_default()));
    let body = Json(json!({
        "authRequired": app.web.auth.authenticates(),
        "signedIn": caller.principal.is_some(),
        "name": caller.principal.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
        "roles": caller.principal.as_ref().map(|p| p.roles.to_string()).unwrap_or_default(),
        "canWrite": caller.may(Role::Write),
        "canBacktest": caller.may(Role::Train) && app.trainer.is_some(),
        "csrf": caller.csrf,
        "jaegerUi": app.jaeger_ui,
    }));
    let mut response = body.into_response();
    if let Some(cookie) = cookie {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Json(body): Json<SignIn>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = app.caller(&headers);
    check_same_origin(&headers, &caller)?;
    let id = caller.id.as_deref().unwrap_or_default();
    let principal = app
        .sessions
        .sign_in(id, &body.token, &app.web.auth)
        .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, e.into()))?;
    tracing::info!(principal = principal.name, "signed in to the console");
    Ok(Json(
        json!({ "name": principal.name, "roles": principal.roles.to_string() }),
    ))
}

async fn sign_out(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let caller = app.caller(&headers);
    check_same_origin(&headers, &caller)?;
    if let Some(id) = &caller.id {
        app.sessions.sign_out(id);
    }
    Ok(StatusCode::NO_CONTENT)
}

fn json_bytes(bytes: bytes::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], Body::from(bytes)).into_response()
}

async fn fleet(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    app.needs(&headers, Role::Read)?;
    Ok(json_bytes(app.fleet_summary.borrow().clone()))
}

#[derive(Deserialize)]
struct Find {
    #[serde(default)]
    prefix: String,
}

async fn find_units(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(find): Query<Find>,
) -> Result<Json<Vec<String>>, ApiError> {
    app.needs(&headers, Role::Read)?;
    Ok(Json(app.fleet.lock().expect("fleet lock").find(&find.prefix, 20)))
}

async fn unit(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(key): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    app.needs(&headers, Role::Read)?;
    let detail = app.fleet.lock().expect("fleet lock").unit(&key);
    let detail = detail.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("no predictions for unit {key:?} in the console's window (--lookback-seconds, --max-units)"),
        )
    })?;
    let threshold = app.models.threshold(&detail.model, detail.version);
    let mut value = serde_json::to_value(detail).expect("a unit serialises");
    value["threshold"] = json!(threshold);
    Ok(Json(value))
}

async fn models(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    app.needs(&headers, Role::Read)?;
    Ok(Json(
        json!({ "models": app.models.list(), "problem": app.models.problem() }),
    ))
}

async fn model(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    app.needs(&headers, Role::Read)?;
    app.models
        .page(&name)
        .map(json_bytes)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("the registry has no model {name:?}")))
}

#[derive(Deserialize)]
struct MoveAlias {
    version: u64,
}

/// Moves an alias with the signed-in user's token, so the registry checks their role and
/// records them as the mover (the console's own token without tokens configured).
async fn move_alias(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((name, alias)): Path<(String, String)>,
    Json(body): Json<MoveAlias>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let caller = app.needs(&headers, Role::Write)?;
    check_same_origin(&headers, &caller)?;
    let unavailable = |e: String| ApiError(StatusCode::BAD_GATEWAY, e);
    let mut registry = kappa_client::Registry::connect_with(&app.registry, &as_caller(&app, &caller))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let request = SetAliasRequest {
        name: name.clone(),
        alias: alias.clone(),
        version: body.version,
        effective_from_ms: 0,
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), registry.rpc().set_alias(request))
        .await
        .map_err(|_| unavailable("the registry did not answer within 10 s".into()))?
        .map_err(|s| refused("registry", &s))?
        .into_inner();
    let by = caller.principal.map(|p| p.name).unwrap_or_default();
    tracing::info!(
        model = name,
        alias,
        version = body.version,
        by,
        "alias moved from the console"
    );
    Ok(Json(json!({
        "previousVersion": answer.previous_version,
        "position": answer.position,
    })))
}

/// The mesh's security with the signed-in user's token, so the service called checks their role
/// and records them (the console's own token without tokens configured).
fn as_caller(app: &App, caller: &Caller) -> kappa_client::ClientSecurity {
    let mut security = app.mesh.clone();
    if let Some(token) = caller.token.clone() {
        security.token = Some(token);
    }
    security
}

/// A refusal from a service the console called, as the HTTP status that says the same.
fn refused(service: &str, status: &tonic::Status) -> ApiError {
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition | tonic::Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError(code, format!("the {service} refused: {}", status.message()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Backtest {
    /// Numbers or aliases, the first under test.
    versions: Vec<String>,
    /// The window: the last this many minutes.
    last_minutes: u32,
    #[serde(default)]
    topic: String,
}

/// Longest a backtest from a page may run.
const BACKTEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Replays a recent window through versions of a model on the trainer, as the signed-in user
/// (the train role), and answers its report.
async fn backtest(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(body): Json<Backtest>,
) -> Result<Json<kappa_api::trainer::BacktestReport>, ApiError> {
    let caller = app.needs(&headers, Role::Train)?;
    check_same_origin(&headers, &caller)?;
    let trainer = app.trainer.as_deref().ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            "this console has no trainer to run backtests on (--trainer)".into(),
        )
    })?;
    if body.versions.is_empty() || body.versions.len() > 8 || !(1..=10_080).contains(&body.last_minutes) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "name 1 to 8 versions and a window of 1 to 10,080 minutes".into(),
        ));
    }
    let channel = kappa_client::connect_with("kappa-trainer", trainer, &as_caller(&app, &caller))
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, e.to_string()))?;
    let to_ms = kappa_runtime::now_ms();
    let request = BacktestRequest {
        model: name.clone(),
        versions: body.versions,
        topic: body.topic,
        window: Some(TimeRange {
            from_ms: to_ms - i64::from(body.last_minutes) * 60_000,
            to_ms,
        }),
        ..BacktestRequest::default()
    };
    let report = tokio::time::timeout(BACKTEST_TIMEOUT, TrainerClient::new(channel).backtest(request))
        .await
        .map_err(|_| ApiError(StatusCode::GATEWAY_TIMEOUT, "the backtest took over 2 minutes".into()))?
        .map_err(|s| refused("trainer", &s))?
        .into_inner();
    Ok(Json(report))
}

async fn serving(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    app.needs(&headers, Role::Read)?;
    Ok(Json(json!({ "replicas": app.serving.replicas() })))
}

#[derive(Deserialize)]
struct OfModel {
    #[serde(default)]
    model: String,
}

async fn monitoring(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Query(of): Query<OfModel>,
) -> Result<Response, ApiError> {
    app.needs(&headers, Role::Read)?;
    // Megabytes of windows at most, but not on an async worker.
    let monitoring = Arc::clone(&app.monitoring);
    let json = tokio::task::spawn_blocking(move || monitoring.lock().expect("monitoring lock").view_json(&of.model))
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the monitoring view failed: {e}"),
            )
        })?;
    Ok(json_bytes(json.into()))
}

async fn status(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Json<serde_json::Value>, ApiError> {
    app.needs(&headers, Role::Read)?;
    let topics: Vec<_> = app.topics.iter().map(|t| t.get()).collect();
    Ok(Json(json!({ "topics": topics, "registry": app.models.problem() })))
}
