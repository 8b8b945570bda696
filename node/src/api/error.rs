//! One error type for every handler, rendered as
//! `{"error":{"code":"snake_case_code","message":"human text"}}`.

use crate::service::ServiceError;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chorus_protocol::api::{ErrorBody, ErrorCode, ErrorDetail};

/// An HTTP error: status, code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    /// An error of class `code` with the class's default code string.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::with_code(code, code.as_str(), message)
    }

    /// An error of class `class` with a more specific code string.
    pub fn with_code(class: ErrorCode, code: &'static str, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(class.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { status, code, message: message.into() }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match &e {
            ServiceError::Invalid(v) => {
                ApiError::with_code(ErrorCode::InvalidInput, "invalid_input", format!("{}: {}", v.field, v.message))
            }
            ServiceError::Refused(c) => {
                let (code, class) = c.code();
                ApiError::with_code(class, code, c.to_string())
            }
            ServiceError::Unauthorized(_) => ApiError::new(ErrorCode::Unauthorized, e.to_string()),
            ServiceError::InvalidCredentials => ApiError::new(ErrorCode::InvalidCredentials, e.to_string()),
            ServiceError::TooLarge(_) => ApiError::new(ErrorCode::PayloadTooLarge, e.to_string()),
            ServiceError::Unavailable(_) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
            ServiceError::Internal(_) => ApiError::new(ErrorCode::Internal, "internal error; see the node's log"),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let class = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
            _ => ErrorCode::InvalidInput,
        };
        let code = match &r {
            JsonRejection::MissingJsonContentType(_) => "unsupported_content_type",
            JsonRejection::JsonSyntaxError(_) => "malformed_json",
            JsonRejection::JsonDataError(_) => "invalid_input",
            _ => class.as_str(),
        };
        ApiError::with_code(class, code, r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(ErrorCode::InvalidInput, r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(ErrorCode::InvalidInput, r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        (self.status, axum::Json(body)).into_response()
    }
}
