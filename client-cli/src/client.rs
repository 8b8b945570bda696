//! HTTP client for the Chorus API and the saved session (`<config dir>/session.json`).

use anyhow::{anyhow, bail, Context, Result};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::PathBuf;

/// What `chorus login` remembers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// Server it was made on.
    pub server: String,
    /// Who.
    pub username: String,
    /// Bearer token.
    pub token: String,
}

/// Where the session file lives (`CHORUS_CONFIG_DIR` overrides the platform config dir).
pub fn config_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("CHORUS_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    directories::ProjectDirs::from("", "", "chorus")
        .map(|p| p.config_dir().to_path_buf())
        .ok_or_else(|| anyhow!("no home directory; set CHORUS_CONFIG_DIR"))
}

fn session_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("session.json"))
}

/// The saved session, if any.
pub fn load_session() -> Result<Option<Session>> {
    let path = session_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes).with_context(|| format!("corrupt session file {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
    }
}

/// Saves the session (mode 0600).
pub fn save_session(s: &Session) -> Result<()> {
    let path = session_path()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write;
    opts.open(&path)?.write_all(&serde_json::to_vec_pretty(s)?).with_context(|| format!("write {}", path.display()))
}

/// Forgets the session.
pub fn clear_session() -> Result<()> {
    match std::fs::remove_file(session_path()?) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// A connection to one server.
pub struct Client {
    http: reqwest::Client,
    /// Base URL without trailing slash.
    pub server: String,
    token: Option<String>,
}

impl Client {
    /// A client for `server`, using the saved token if it was made there.
    pub fn new(server: &str) -> Result<Self> {
        let server = server.trim_end_matches('/').to_owned();
        let token = load_session()?.filter(|s| s.server == server).map(|s| s.token);
        Ok(Client { http: reqwest::Client::builder().build()?, server, token })
    }

    /// The saved token, or the standard hint.
    pub fn token(&self) -> Result<&str> {
        self.token.as_deref().ok_or_else(|| anyhow!("not logged in: run `chorus login USERNAME`"))
    }

    /// A request to `path` (under the server), authenticated if `auth`.
    pub fn request(&self, method: Method, path: &str, auth: bool) -> Result<RequestBuilder> {
        let mut req = self.http.request(method, format!("{}{path}", self.server));
        if auth {
            req = req.bearer_auth(self.token()?);
        }
        Ok(req)
    }

    /// Sends and checks the status; errors carry the server's message.
    pub async fn send(&self, req: RequestBuilder) -> Result<Response> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}: is a chorus-node running there?", self.server))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("error").to_owned();
        let message = body["error"]["message"].as_str().unwrap_or("request failed").to_owned();
        if status == StatusCode::UNAUTHORIZED && code == "unauthorized" {
            bail!("not logged in or session expired ({message}): run `chorus login USERNAME`");
        }
        bail!("{message} ({code}, HTTP {})", status.as_u16())
    }

    /// JSON call; `body` is sent as JSON when given. Returns `null` for 204.
    pub async fn call(&self, method: Method, path: &str, auth: bool, body: Option<Value>) -> Result<Value> {
        let mut req = self.request(method, path, auth)?;
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = self.send(req).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        Ok(resp.json().await?)
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
