//! Event streams: Server-Sent Events at `/api/v1/events` and WebSocket at `/api/v1/ws`.
//! Both replay the caller's event log from `Last-Event-ID` / `?after=` and then follow it.

use super::error::ApiError;
use super::extract::Q;
use super::AppState;
use crate::service::Caller;
use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chorus_protocol::api::ErrorCode;
use futures::StreamExt;
use prometheus_client::metrics::gauge::Gauge;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    after: Option<u64>,
    access_token: Option<String>,
}

/// Counts an open stream while alive.
struct Open(Gauge);

impl Open {
    fn new(g: &Gauge) -> Self {
        g.inc();
        Open(g.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where a stream starts: after `Last-Event-ID`, else after `?after=`, else at the end of the
/// log (live events only; `?after=0` replays everything).
async fn start_seq(st: &AppState, caller: &Caller, headers: &HeaderMap, q: &StreamQuery) -> Result<u64, ApiError> {
    if let Some(v) = headers.get("last-event-id") {
        let s = v.to_str().unwrap_or_default().trim();
        return s.parse().map_err(|_| ApiError::new(ErrorCode::InvalidInput, "Last-Event-ID must be an event seq"));
    }
    match q.after {
        Some(after) => Ok(after),
        None => Ok(st.service.last_event_seq(&caller.username).await?),
    }
}

pub(super) async fn sse(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Q(q): Q<StreamQuery>,
) -> Result<Response, ApiError> {
    let _ = &q.access_token;
    let after = start_seq(&st, &caller, &headers, &q).await?;
    let open = Open::new(&st.metrics.streams);
    let events = st.service.event_stream(&caller.username, after).map(move |r| {
        let _alive = &open;
        match r {
            Ok(ev) => SseEvent::default().id(ev.seq.to_string()).event(ev.kind.name()).json_data(&ev),
            Err(e) => Ok(SseEvent::default().event("error").data(e.to_string())),
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

pub(super) async fn ws(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Q(q): Q<StreamQuery>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let after = start_seq(&st, &caller, &headers, &q).await?;
    Ok(upgrade.on_upgrade(move |socket| follow(st, caller, after, socket)))
}

async fn follow(st: AppState, caller: Caller, after: u64, mut socket: WebSocket) {
    let _open = Open::new(&st.metrics.streams);
    let mut events = std::pin::pin!(st.service.event_stream(&caller.username, after));
    loop {
        tokio::select! {
            ev = events.next() => {
                let Some(Ok(ev)) = ev else { break };
                let Ok(text) = serde_json::to_string(&ev) else { break };
                if socket.send(WsMessage::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {} // pings are answered by the library; clients send nothing else
            },
        }
    }
}
