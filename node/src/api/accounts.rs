//! Accounts, sessions and profiles.

use super::error::ApiError;
use super::extract::{Json, P};
use super::AppState;
use crate::service::Caller;
use axum::extract::{ConnectInfo, State};
use axum::http::{Extensions, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use chorus_protocol::api::{LoginRequest, Profile, RegisterRequest, SessionResponse};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The connection's peer (unspecified when served without connection info, as in router tests).
fn peer_ip(ext: &Extensions) -> IpAddr {
    ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

pub(super) async fn register(
    State(st): State<AppState>,
    ext: Extensions,
    headers: HeaderMap,
    Json(req): Json<RegisterRequest>,
) -> Result<(StatusCode, axum::Json<Profile>), ApiError> {
    st.limits.check_register(st.limits.client_ip(peer_ip(&ext), &headers))?;
    Ok((StatusCode::CREATED, axum::Json(st.service.register(req).await?)))
}

pub(super) async fn login(
    State(st): State<AppState>,
    Json(req): Json<LoginRequest>,
) -> Result<(StatusCode, axum::Json<SessionResponse>), ApiError> {
    st.limits.check_login(&req.username)?;
    Ok((StatusCode::CREATED, axum::Json(st.service.login(req).await?)))
}

pub(super) async fn logout(State(st): State<AppState>, caller: Caller) -> Result<impl IntoResponse, ApiError> {
    st.service.logout(&caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn me(State(st): State<AppState>, caller: Caller) -> Result<axum::Json<Profile>, ApiError> {
    Ok(axum::Json(st.service.profile(&caller.username).await?))
}

pub(super) async fn profile(
    State(st): State<AppState>,
    _caller: Caller,
    P(username): P<String>,
) -> Result<axum::Json<Profile>, ApiError> {
    Ok(axum::Json(st.service.profile(&username).await?))
}
