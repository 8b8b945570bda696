//! Friend requests and friends.

use super::error::ApiError;
use super::extract::{Json, P};
use super::AppState;
use crate::service::Caller;
use axum::extract::State;
use axum::http::StatusCode;
use chorus_protocol::api::{Friend, FriendRequestBody, FriendRequestResult, FriendRequests};

pub(super) async fn send_request(
    State(st): State<AppState>,
    caller: Caller,
    Json(req): Json<FriendRequestBody>,
) -> Result<(StatusCode, axum::Json<FriendRequestResult>), ApiError> {
    Ok((StatusCode::CREATED, axum::Json(st.service.send_friend_request(&caller, &req.to).await?)))
}

pub(super) async fn list_requests(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<axum::Json<FriendRequests>, ApiError> {
    Ok(axum::Json(st.service.friend_requests(&caller).await?))
}

pub(super) async fn accept(
    State(st): State<AppState>,
    caller: Caller,
    P(from): P<String>,
) -> Result<StatusCode, ApiError> {
    st.service.respond_friend_request(&caller, &from, true).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn decline(
    State(st): State<AppState>,
    caller: Caller,
    P(from): P<String>,
) -> Result<StatusCode, ApiError> {
    st.service.respond_friend_request(&caller, &from, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn friends(State(st): State<AppState>, caller: Caller) -> Result<axum::Json<Vec<Friend>>, ApiError> {
    Ok(axum::Json(st.service.friends(&caller).await?))
}

pub(super) async fn unfriend(
    State(st): State<AppState>,
    caller: Caller,
    P(username): P<String>,
) -> Result<StatusCode, ApiError> {
    st.service.unfriend(&caller, &username).await?;
    Ok(StatusCode::NO_CONTENT)
}
