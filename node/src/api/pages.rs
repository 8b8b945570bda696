//! Operational endpoints, the profile page and the web client.

use super::error::ApiError;
use super::extract::P;
use super::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use chorus_protocol::api::{ClusterView, ErrorCode};

pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

pub(super) async fn readyz(State(st): State<AppState>) -> Response {
    let storage_ok = st.service.applied_index().await.is_ok();
    if storage_ok && st.cluster.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

pub(super) async fn metrics(State(st): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], st.metrics.render())
        .into_response()
}

pub(super) async fn cluster(State(st): State<AppState>) -> axum::Json<ClusterView> {
    axum::Json(st.cluster.view())
}

pub(super) async fn api_not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such API route")
}

pub(super) async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Html(page("Not found", "<p>Nothing here.</p>"))).into_response()
}

pub(super) async fn web_client() -> Html<&'static str> {
    Html(include_str!("web/index.html"))
}

/// `GET /{username}`: the user's public profile, whichever node answers.
pub(super) async fn profile_page(State(st): State<AppState>, P(username): P<String>) -> Response {
    match st.service.profile(&username).await {
        Ok(p) => {
            let body = format!(
                "<h1>{}</h1><p class=\"handle\">@{}</p><p>Member since <time data-ms=\"{}\"></time></p>\
                 <p><a href=\"/\">Open Chorus</a> to chat with {}.</p>",
                escape(&p.display_name),
                escape(&p.username),
                p.created_at,
                escape(&p.display_name)
            );
            Html(page(&p.display_name, &body)).into_response()
        }
        Err(e) => {
            let status = ApiError::from(e).status();
            let body = format!("<h1>No such user</h1><p>There is no user called @{}.</p>", escape(&username));
            (status, Html(page("No such user", &body))).into_response()
        }
    }
}

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{} · Chorus</title>\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}}\
         .handle{{color:#666}}</style></head><body>{}\
         <script>for(const t of document.querySelectorAll('time[data-ms]'))\
         t.textContent=new Date(+t.dataset.ms).toLocaleDateString()</script></body></html>",
        escape(title),
        body
    )
}

/// Minimal HTML escaping for text nodes and attribute values.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
