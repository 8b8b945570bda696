//! File upload (raw body) and download (streamed, with Content-Type and Content-Length).

use super::error::ApiError;
use super::extract::{P, Q};
use super::AppState;
use crate::service::Caller;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chorus_protocol::api::{ErrorCode, FileInfo};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UploadQuery {
    name: Option<String>,
    access_token: Option<String>,
}

pub(super) async fn upload(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Q(q): Q<UploadQuery>,
    body: Body,
) -> Result<(StatusCode, axum::Json<FileInfo>), ApiError> {
    let _ = q.access_token;
    let limit = st.service.config().max_file_size;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::new(ErrorCode::PayloadTooLarge, format!("file exceeds the {limit} byte limit")));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|c| !c.starts_with("application/x-www-form-urlencoded"))
        .map(str::to_owned);
    let info = st.service.upload(&caller, q.name, content_type, body.into_data_stream()).await?;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

pub(super) async fn download(
    State(st): State<AppState>,
    caller: Caller,
    P(file_id): P<String>,
) -> Result<Response, ApiError> {
    let (rec, stream) = st.service.download(&caller, &file_id).await?;
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(rec.size));
    let ct = HeaderValue::from_str(&rec.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_TYPE, ct);
    let safe: String = rec.name.chars().filter(|c| c.is_ascii_graphic() && *c != '"' || *c == ' ').collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", rec.sha256)) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    Ok(resp)
}
