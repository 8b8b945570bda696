//! Extractors: JSON/query/path with our error shape, and the authenticated [`Caller`].

use super::error::ApiError;
use super::AppState;
use crate::service::Caller;
use axum::extract::{FromRequest, FromRequestParts, Query};
use axum::http::request::Parts;
use chorus_protocol::api::ErrorCode;

/// `axum::Json` whose rejections use the JSON error shape.
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub(super) struct Json<T>(pub T);

/// `axum::extract::Query` with the JSON error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(super) struct Q<T>(pub T);

/// `axum::extract::Path` with the JSON error shape.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(super) struct P<T>(pub T);

#[derive(serde::Deserialize)]
struct TokenQuery {
    access_token: Option<String>,
}

/// The bearer token: `Authorization: Bearer <token>`, or `?access_token=` (browsers cannot set
/// headers on EventSource/WebSocket).
fn bearer(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    Query::<TokenQuery>::try_from_uri(&parts.uri).ok()?.0.access_token
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = bearer(parts) else {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "missing bearer token: log in and send `Authorization: Bearer <token>`",
            ));
        };
        let caller = state.service.authenticate(&token).await?;
        state.limits.check_user(&caller.username)?;
        Ok(caller)
    }
}
