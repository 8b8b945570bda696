//! The axum HTTP facade: REST, event streams (SSE and WebSocket), the web client and the
//! profile pages. Translates HTTP to service calls and back, nothing more.

mod accounts;
mod chats;
pub mod error;
mod extract;
mod files;
pub mod limits;
pub mod metrics;
mod pages;
mod social;
mod stream;

use crate::service::Service;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;
use chorus_protocol::api::ClusterView;
use std::sync::Arc;

/// Largest JSON body accepted (a 16 KiB message plus its envelope fits easily).
pub const JSON_BODY_LIMIT: usize = 64 * 1024;

/// What the cluster looks like from this node (answers `GET /api/v1/cluster`).
pub trait ClusterInfo: Send + Sync + 'static {
    /// The current view.
    fn view(&self) -> ClusterView;
    /// Whether this node can serve writes now.
    fn ready(&self) -> bool;
}

/// Shared handler state.
#[derive(Clone)]
pub struct AppState {
    /// The chat service.
    pub service: Service,
    /// Rate limiters.
    pub limits: Arc<limits::Limits>,
    /// Metrics registry.
    pub metrics: Arc<metrics::Metrics>,
    /// Cluster view.
    pub cluster: Arc<dyn ClusterInfo>,
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let max_file = usize::try_from(state.service.config().max_file_size).unwrap_or(usize::MAX);
    let api = Router::new()
        .route("/accounts", post(accounts::register))
        .route("/sessions", post(accounts::login).delete(accounts::logout))
        .route("/me", get(accounts::me))
        .route("/users/{username}", get(accounts::profile))
        .route("/friend-requests", post(social::send_request).get(social::list_requests))
        .route("/friend-requests/{from}/accept", post(social::accept))
        .route("/friend-requests/{from}/decline", post(social::decline))
        .route("/friends", get(social::friends))
        .route("/friends/{username}", delete(social::unfriend))
        .route("/chats", get(chats::list))
        .route("/dms/{username}/messages", post(chats::send_dm))
        .route("/chats/{chat_id}/messages", post(chats::send).get(chats::history))
        .route("/groups", post(chats::create_group))
        .route("/groups/{group_id}", get(chats::group))
        .route("/groups/{group_id}/members", post(chats::add_member))
        .route("/groups/{group_id}/members/{username}", delete(chats::remove_member))
        .route("/files", post(files::upload).layer(DefaultBodyLimit::max(max_file.saturating_add(1))))
        .route("/files/{file_id}", get(files::download))
        .route("/events", get(stream::sse))
        .route("/ws", get(stream::ws))
        .route("/cluster", get(pages::cluster))
        .fallback(pages::api_not_found);
    Router::new()
        .nest("/api/v1", api)
        .route("/", get(pages::web_client))
        .route("/healthz", get(pages::healthz))
        .route("/readyz", get(pages::readyz))
        .route("/metrics", get(pages::metrics))
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .route("/{username}", get(pages::profile_page))
        .fallback(pages::not_found)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.metrics.clone(), metrics::track))
        .with_state(state)
}

#[cfg(test)]
mod tests;
