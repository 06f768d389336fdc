//! `/api/live`: one server-sent event stream per open page. It carries the fleet's summary
//! once a second (the same bytes for every page: made once, by the summariser) and a nudge when
//! the models or the predictors change, so pages refresh without a reload. Streams are bounded
//! in number, and each holds no queue: a page that reads slowly skips summaries, never piles
//! them up.

use std::{convert::Infallible, sync::Arc};

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use kappa_runtime::auth::Role;
use tokio::sync::OwnedSemaphorePermit;

use super::ApiError;
use crate::App;

struct Live {
    app: Arc<App>,
    /// The session the stream was opened in; `None` for a caller without one (possible only
    /// on a console without tokens, where everyone reads).
    session: Option<String>,
    fleet: tokio::sync::watch::Receiver<Bytes>,
    models: tokio::sync::watch::Receiver<u64>,
    serving: tokio::sync::watch::Receiver<u64>,
    _permit: OwnedSemaphorePermit,
}

fn event(name: &str, data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + name.len() + 16);
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

impl Live {
    /// The next event, or `None` when the stream ends (shutdown, or the caller lost the role).
    async fn next(&mut self) -> Option<Bytes> {
        let app = Arc::clone(&self.app);
        tokio::select! {
            () = app.stop.cancelled() => None,
            changed = self.fleet.changed() => {
                changed.ok()?;
                // The token may have been revoked, or the session ended, since the stream opened.
                let principal = match &self.session {
                    Some(id) => app.sessions.principal_of(id, &app.web.auth)?,
                    None => app.sessions.caller(None, &app.web.auth).principal?,
                };
                if !principal.roles.grants(Role::Read) {
                    return None;
                }
                let summary = self.fleet.borrow_and_update().clone();
                Some(event("fleet", &summary))
            }
            changed = self.models.changed() => {
                changed.ok()?;
                let n = *self.models.borrow_and_update();
                Some(event("models", n.to_string().as_bytes()))
            }
            changed = self.serving.changed() => {
                changed.ok()?;
                let n = *self.serving.borrow_and_update();
                Some(event("serving", n.to_string().as_bytes()))
            }
        }
    }
}

pub async fn stream(State(app): State<Arc<App>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = app.needs(&headers, Role::Read)?;
    let permit = Arc::clone(&app.live_streams).try_acquire_owned().map_err(|_| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many pages are open on this console; close some and retry".into(),
        )
    })?;
    let mut live = Live {
        session: caller.id,
        fleet: app.fleet_summary.clone(),
        models: app.models.changes(),
        serving: app.serving.changes(),
        app,
        _permit: permit,
    };
    // The page draws the current summary at once instead of waiting for the next second.
    live.fleet.mark_changed();
    let events = futures::stream::unfold(live, |mut live| async move {
        live.next().await.map(|event| (Ok::<_, Infallible>(event), live))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Body::from_stream(events),
    )
        .into_response())
}
