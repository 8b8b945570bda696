//! Shared by the HTTP-level integration tests.
#![allow(dead_code)]

use futures::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

/// A JSON client for one node's HTTP API.
pub struct Api {
    /// The HTTP client.
    pub http: Client,
    /// Base URL.
    pub base: String,
}

impl Api {
    /// The caller's event stream (SSE) from the start of their log.
    pub async fn events(&self, token: &str) -> Sse {
        let url = format!("{}/api/v1/events?after=0", self.base);
        let body = self.http.get(url).bearer_auth(token).send().await.unwrap().bytes_stream();
        Sse { body: Box::pin(body), buf: String::new() }
    }

    /// A client for `base`.
    pub fn new(base: &str) -> Self {
        Api { http: Client::new(), base: base.to_owned() }
    }

    /// Any request; the status and the JSON (or text) body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// POST that must succeed.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Value {
        let (s, v) = self.call(reqwest::Method::POST, path, token, Some(body)).await;
        assert!(s.is_success(), "POST {path}: {s} {v}");
        v
    }

    /// GET that must succeed.
    pub async fn get(&self, path: &str, token: &str) -> Value {
        let (s, v) = self.call(reqwest::Method::GET, path, Some(token), None).await;
        assert!(s.is_success(), "GET {path}: {s} {v}");
        v
    }

    /// Registers `name` and logs in; the token.
    pub async fn user(&self, name: &str) -> String {
        self.post("/api/v1/accounts", None, json!({"username": name, "password": "password123"})).await;
        let v = self.post("/api/v1/sessions", None, json!({"username": name, "password": "password123"})).await;
        v["token"].as_str().unwrap().to_owned()
    }
}

/// An SSE response body, read frame by frame.
pub struct Sse {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    /// The texts of the message events in the next chunk; panics at `deadline`.
    pub async fn messages(&mut self, deadline: tokio::time::Instant) -> Vec<String> {
        let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.expect("SSE delivers in time");
        self.buf.push_str(&String::from_utf8_lossy(&chunk.unwrap().unwrap()));
        let mut texts = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let frame: String = self.buf.drain(..end + 2).collect();
            for line in frame.lines().filter_map(|l| l.strip_prefix("data:")) {
                let ev: Value = serde_json::from_str(line.trim()).unwrap();
                if ev["type"] == "message" {
                    texts.push(ev["message"]["text"].as_str().unwrap().to_owned());
                }
            }
        }
        texts
    }
}
