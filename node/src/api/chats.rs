//! Chats, messages and groups.

use super::error::ApiError;
use super::extract::{Json, P, Q};
use super::AppState;
use crate::service::Caller;
use axum::extract::State;
use axum::http::StatusCode;
use chorus_protocol::api::*;
use serde::Deserialize;

type Created<T> = Result<(StatusCode, axum::Json<T>), ApiError>;

pub(super) async fn list(State(st): State<AppState>, caller: Caller) -> Result<axum::Json<Vec<ChatSummary>>, ApiError> {
    Ok(axum::Json(st.service.chats(&caller).await?))
}

pub(super) async fn send_dm(
    State(st): State<AppState>,
    caller: Caller,
    P(to): P<String>,
    Json(req): Json<SendMessageRequest>,
) -> Created<SendMessageResponse> {
    Ok((StatusCode::CREATED, axum::Json(st.service.send_dm(&caller, &to, req).await?)))
}

pub(super) async fn send(
    State(st): State<AppState>,
    caller: Caller,
    P(chat_id): P<String>,
    Json(req): Json<SendMessageRequest>,
) -> Created<SendMessageResponse> {
    Ok((StatusCode::CREATED, axum::Json(st.service.send_to_chat(&caller, &chat_id, req).await?)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

pub(super) async fn history(
    State(st): State<AppState>,
    caller: Caller,
    P(chat_id): P<String>,
    Q(q): Q<HistoryQuery>,
) -> Result<axum::Json<MessagesPage>, ApiError> {
    Ok(axum::Json(st.service.messages(&caller, &chat_id, q.after, q.limit).await?))
}

pub(super) async fn create_group(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<CreateGroupRequest>,
) -> Created<GroupCreated> {
    Ok((StatusCode::CREATED, axum::Json(st.service.create_group(&caller, req).await?)))
}

pub(super) async fn group(
    State(st): State<AppState>,
    caller: Caller,
    P(group_id): P<String>,
) -> Result<axum::Json<Group>, ApiError> {
    Ok(axum::Json(st.service.group(&caller, &group_id).await?))
}

pub(super) async fn add_member(
    State(st): State<AppState>,
    caller: Caller,
    P(group_id): P<String>,
    Json(req): Json<AddMemberRequest>,
) -> Created<Group> {
    st.service.add_member(&caller, &group_id, &req.username).await?;
    Ok((StatusCode::CREATED, axum::Json(st.service.group(&caller, &group_id).await?)))
}

pub(super) async fn remove_member(
    State(st): State<AppState>,
    caller: Caller,
    P((group_id, username)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    st.service.remove_member(&caller, &group_id, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}
