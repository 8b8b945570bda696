//! One function per subcommand: call the API, print text (or JSON with `--json`).

use crate::client::{clear_session, enc, save_session, Client, Session};
use crate::{Cli, Cmd, FriendsCmd, GroupCmd};
use anyhow::{anyhow, Context, Result};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};
use std::io::IsTerminal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Runs one command.
pub async fn run(cli: Cli) -> Result<()> {
    let c = Client::new(&cli.server)?;
    let json_out = cli.json;
    let show = |v: &Value, human: &dyn Fn(&Value) -> String| {
        if json_out {
            println!("{v}");
        } else {
            println!("{}", human(v));
        }
    };
    match cli.command {
        Cmd::Register { username, display_name, password } => {
            let password = password_or_prompt(password)?;
            let v = c
                .call(
                    Method::POST,
                    "/api/v1/accounts",
                    false,
                    Some(json!({"username": username, "password": password, "display_name": display_name})),
                )
                .await?;
            show(&v, &|v| {
                format!(
                    "registered {}; now run `chorus login {}`",
                    v["username"].as_str().unwrap_or_default(),
                    v["username"].as_str().unwrap_or_default()
                )
            });
        }
        Cmd::Login { username, password } => {
            let password = password_or_prompt(password)?;
            let v = c
                .call(
                    Method::POST,
                    "/api/v1/sessions",
                    false,
                    Some(json!({"username": username, "password": password})),
                )
                .await?;
            let token = v["token"].as_str().ok_or_else(|| anyhow!("server sent no token"))?.to_owned();
            save_session(&Session { server: c.server.clone(), username: username.clone(), token })?;
            show(&json!({"username": username, "expires_at": v["expires_at"]}), &|_| {
                format!("logged in as {username}")
            });
        }
        Cmd::Logout => {
            c.call(Method::DELETE, "/api/v1/sessions", true, None).await?;
            clear_session()?;
            show(&json!({"logged_out": true}), &|_| "logged out".into());
        }
        Cmd::Whoami => {
            let v = c.call(Method::GET, "/api/v1/me", true, None).await?;
            show(&v, &profile_text);
        }
        Cmd::Profile { username } => {
            let v = c.call(Method::GET, &format!("/api/v1/users/{}", enc(&username)), true, None).await?;
            show(&v, &profile_text);
        }
        Cmd::Friends(f) => friends(&c, f, &show).await?,
        Cmd::Dm { username, text, files } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/api/v1/dms/{}/messages", enc(&username)),
                    true,
                    Some(message_body(text, files)),
                )
                .await?;
            show(&v, &sent_text);
        }
        Cmd::Group(g) => group(&c, g, &show).await?,
        Cmd::Chats => {
            let v = c.call(Method::GET, "/api/v1/chats", true, None).await?;
            show(&v, &|v| {
                lines(v, |ch| {
                    let kind = if ch["kind"] == "group" { "#" } else { "@" };
                    format!("{kind}{:<24} {}  ({} messages)", s(&ch["name"]), s(&ch["chat_id"]), ch["last_seq"])
                })
            });
        }
        Cmd::Send { chat, text, files } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/api/v1/chats/{}/messages", enc(&chat)),
                    true,
                    Some(message_body(text, files)),
                )
                .await?;
            show(&v, &sent_text);
        }
        Cmd::History { chat, after, limit } => {
            let v = c
                .call(
                    Method::GET,
                    &format!("/api/v1/chats/{}/messages?after={after}&limit={limit}", enc(&chat)),
                    true,
                    None,
                )
                .await?;
            show(&v, &|v| lines(&v["messages"], message_text));
        }
        Cmd::Upload { path } => {
            let v = upload(&c, &path, !json_out).await?;
            show(&v, &|v| format!("uploaded {} ({} bytes): file id {}", s(&v["name"]), v["size"], s(&v["file_id"])));
        }
        Cmd::Download { file_id, output } => {
            let (path, size) = download(&c, &file_id, output, !json_out).await?;
            show(&json!({"file_id": file_id, "path": path.display().to_string(), "size": size}), &|_| {
                format!("saved {} ({size} bytes)", path.display())
            });
        }
        Cmd::Watch { after } => {
            watch(&c, after, |ev| {
                if json_out {
                    println!("{ev}");
                } else {
                    println!("{}", event_text(ev));
                }
                true
            })
            .await?;
        }
        Cmd::Cluster => {
            let v = c.call(Method::GET, "/api/v1/cluster", false, None).await?;
            show(&v, &|v| {
                let mut out = format!("coordinator {} (epoch {})\n", s(&v["coordinator"]), v["epoch"]);
                out += &lines(&v["members"], |m| {
                    let roles: Vec<&str> = m["roles"].as_array().map(|r| r.iter().map(s).collect()).unwrap_or_default();
                    format!("  {} {:<24} {}", s(&m["peer_id"]), roles.join(","), s(&m["http"]))
                });
                out + "\n" + &raft_text(&v["raft"])
            });
        }
        Cmd::Chat { chat } => interactive(&c, &chat).await?,
    }
    Ok(())
}

fn raft_text(r: &Value) -> String {
    match r["leader"].as_str() {
        Some(l) => format!("storage log: leader {l}, term {}, commit index {}", r["term"], r["commit_index"]),
        None if r["log_seen"] == true => {
            "storage log: no leader; every node holding it is down, writes answer 503 until one returns".into()
        }
        None => "storage log: no leader yet".into(),
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn lines(v: &Value, f: impl Fn(&Value) -> String) -> String {
    let items = v.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return "(none)".into();
    }
    items.iter().map(f).collect::<Vec<_>>().join("\n")
}

fn profile_text(v: &Value) -> String {
    format!("{} (@{})", s(&v["display_name"]), s(&v["username"]))
}

fn sent_text(v: &Value) -> String {
    format!("sent to {} as #{}", s(&v["chat_id"]), v["seq"])
}

fn message_text(m: &Value) -> String {
    let files: Vec<String> = m["files"]
        .as_array()
        .map(|fs| fs.iter().map(|f| format!(" [file {} {}]", s(&f["name"]), s(&f["file_id"]))).collect())
        .unwrap_or_default();
    format!("#{:<4} {}: {}{}", m["seq"], s(&m["sender"]), s(&m["text"]), files.concat())
}

fn event_text(ev: &Value) -> String {
    match s(&ev["type"]) {
        "message" => format!("[{}] {}", s(&ev["message"]["chat_id"]), message_text(&ev["message"])),
        "friend_request" => {
            format!("{} wants to be your friend (chorus friends accept {})", s(&ev["from"]), s(&ev["from"]))
        }
        "friend_added" => format!("you and {} are now friends", s(&ev["username"])),
        "friend_request_declined" => format!("{} declined your friend request", s(&ev["by"])),
        "friend_removed" => format!("you and {} are no longer friends", s(&ev["username"])),
        "group_member_added" => format!(
            "{} joined group {} ({}), added by {}",
            s(&ev["username"]),
            s(&ev["name"]),
            s(&ev["group_id"]),
            s(&ev["by"])
        ),
        "group_member_removed" => {
            format!("{} left group {} (removed by {})", s(&ev["username"]), s(&ev["group_id"]), s(&ev["by"]))
        }
        other => format!("{other}: {ev}"),
    }
}

fn message_body(text: String, files: Vec<String>) -> Value {
    // A fresh idempotency key per invocation: the CLI's own retries never duplicate.
    let client_msg_id = format!(
        "cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    json!({"text": text, "files": files, "client_msg_id": client_msg_id})
}

fn password_or_prompt(given: Option<String>) -> Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password("password: ").context("read password");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("read password from stdin")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

type Show<'a> = dyn Fn(&Value, &dyn Fn(&Value) -> String) + 'a;

async fn friends(c: &Client, cmd: FriendsCmd, show: &Show<'_>) -> Result<()> {
    match cmd {
        FriendsCmd::Request { username } => {
            let v = c.call(Method::POST, "/api/v1/friend-requests", true, Some(json!({"to": username}))).await?;
            show(&v, &|v| match s(&v["status"]) {
                "accepted" => format!("you and {} are now friends", s(&v["to"])),
                _ => format!("friend request sent to {}", s(&v["to"])),
            });
        }
        FriendsCmd::Accept { username } => {
            c.call(Method::POST, &format!("/api/v1/friend-requests/{}/accept", enc(&username)), true, None).await?;
            show(&json!({"accepted": username}), &|_| format!("you and {username} are now friends"));
        }
        FriendsCmd::Decline { username } => {
            c.call(Method::POST, &format!("/api/v1/friend-requests/{}/decline", enc(&username)), true, None).await?;
            show(&json!({"declined": username}), &|_| format!("declined {username}'s request"));
        }
        FriendsCmd::List => {
            let friends = c.call(Method::GET, "/api/v1/friends", true, None).await?;
            let requests = c.call(Method::GET, "/api/v1/friend-requests", true, None).await?;
            let v = json!({"friends": friends, "requests": requests});
            show(&v, &|v| {
                let mut out = format!("friends:\n{}", lines(&v["friends"], |f| format!("  {}", s(&f["username"]))));
                out += &format!(
                    "\nincoming requests:\n{}",
                    lines(&v["requests"]["incoming"], |r| format!("  {}", s(&r["from"])))
                );
                out += &format!(
                    "\noutgoing requests:\n{}",
                    lines(&v["requests"]["outgoing"], |r| format!("  {}", s(&r["to"])))
                );
                out
            });
        }
        FriendsCmd::Remove { username } => {
            c.call(Method::DELETE, &format!("/api/v1/friends/{}", enc(&username)), true, None).await?;
            show(&json!({"removed": username}), &|_| format!("you and {username} are no longer friends"));
        }
    }
    Ok(())
}

async fn group(c: &Client, cmd: GroupCmd, show: &Show<'_>) -> Result<()> {
    match cmd {
        GroupCmd::Create { name, members } => {
            let v =
                c.call(Method::POST, "/api/v1/groups", true, Some(json!({"name": name, "members": members}))).await?;
            show(&v, &|v| format!("created group {} (chat {})", s(&v["group_id"]), s(&v["chat_id"])));
        }
        GroupCmd::Add { group, username } => {
            let v = c
                .call(
                    Method::POST,
                    &format!("/api/v1/groups/{}/members", enc(&group)),
                    true,
                    Some(json!({"username": username})),
                )
                .await?;
            show(&v, &group_text);
        }
        GroupCmd::Remove { group, username } => {
            c.call(Method::DELETE, &format!("/api/v1/groups/{}/members/{}", enc(&group), enc(&username)), true, None)
                .await?;
            show(&json!({"removed": username, "group_id": group}), &|_| format!("removed {username}"));
        }
        GroupCmd::Leave { group } => {
            let me = crate::client::load_session()?
                .map(|s| s.username)
                .ok_or_else(|| anyhow!("not logged in: run `chorus login USERNAME`"))?;
            c.call(Method::DELETE, &format!("/api/v1/groups/{}/members/{}", enc(&group), enc(&me)), true, None).await?;
            show(&json!({"left": group}), &|_| "left the group".into());
        }
        GroupCmd::List => {
            let v = c.call(Method::GET, "/api/v1/chats", true, None).await?;
            let groups: Vec<Value> =
                v.as_array().cloned().unwrap_or_default().into_iter().filter(|c| c["kind"] == "group").collect();
            show(&Value::Array(groups), &|v| {
                lines(v, |g| {
                    format!(
                        "{:<24} {}  {} members",
                        s(&g["name"]),
                        s(&g["group_id"]),
                        g["members"].as_array().map_or(0, Vec::len)
                    )
                })
            });
        }
        GroupCmd::Show { group } => {
            let v = c.call(Method::GET, &format!("/api/v1/groups/{}", enc(&group)), true, None).await?;
            show(&v, &group_text);
        }
    }
    Ok(())
}

fn group_text(v: &Value) -> String {
    let members: Vec<&str> = v["members"].as_array().map(|m| m.iter().map(s).collect()).unwrap_or_default();
    format!(
        "{} ({}), admin {}, chat {}\nmembers: {}",
        s(&v["name"]),
        s(&v["group_id"]),
        s(&v["admin"]),
        s(&v["chat_id"]),
        members.join(", ")
    )
}

fn bar(len: u64, visible: bool) -> ProgressBar {
    if !visible || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}") {
        pb.set_style(style);
    }
    pb
}

async fn upload(c: &Client, path: &std::path::Path, progress: bool) -> Result<Value> {
    let file = tokio::fs::File::open(path).await.with_context(|| format!("open {}", path.display()))?;
    let len = file.metadata().await?.len();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{} has no usable file name", path.display()))?;
    let pb = bar(len, progress);
    let pb2 = pb.clone();
    let stream = futures::stream::try_unfold(file, move |mut f| {
        let pb = pb2.clone();
        async move {
            let mut buf = vec![0u8; 256 * 1024];
            let n = f.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buf.truncate(n);
            pb.inc(n as u64);
            Ok(Some((buf, f)))
        }
    });
    let req = c
        .request(Method::POST, &format!("/api/v1/files?name={}", enc(name)), true)?
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(stream));
    let resp = c.send(req).await;
    pb.finish_and_clear();
    Ok(resp?.json().await?)
}

async fn download(
    c: &Client,
    file_id: &str,
    output: Option<std::path::PathBuf>,
    progress: bool,
) -> Result<(std::path::PathBuf, u64)> {
    let resp = c.send(c.request(Method::GET, &format!("/api/v1/files/{}", enc(file_id)), true)?).await?;
    let name = resp
        .headers()
        .get(reqwest::header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("filename=\"").nth(1))
        .and_then(|v| v.split('"').next())
        .map(|n| n.replace(['/', '\\'], "_"))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .unwrap_or_else(|| file_id.to_owned());
    let path = output.unwrap_or_else(|| name.into());
    let pb = bar(resp.content_length().unwrap_or(0), progress);
    let mut out = tokio::fs::File::create(&path).await.with_context(|| format!("create {}", path.display()))?;
    let mut body = resp.bytes_stream();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("download interrupted")?;
        out.write_all(&chunk).await?;
        size += chunk.len() as u64;
        pb.inc(chunk.len() as u64);
    }
    out.flush().await?;
    pb.finish_and_clear();
    Ok((path, size))
}

/// Follows the event stream, calling `on_event` for each event until it returns false.
/// Reconnects with `Last-Event-ID` when the connection drops, so nothing is missed.
async fn watch(c: &Client, after: Option<u64>, mut on_event: impl FnMut(&Value) -> bool) -> Result<()> {
    let mut last = after;
    loop {
        let mut req = c.request(Method::GET, "/api/v1/events", true)?;
        if let Some(n) = last {
            req = req.header("Last-Event-ID", n.to_string());
        }
        let resp = match c.send(req).await {
            Ok(r) => r,
            Err(e) if last.is_some() && e.to_string().contains("cannot reach") => {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
                let Ok(ev) = serde_json::from_str::<Value>(data) else { continue };
                if let Some(seq) = ev["seq"].as_u64() {
                    last = Some(seq);
                }
                if !on_event(&ev) {
                    return Ok(());
                }
            }
        }
        if last.is_none() {
            last = Some(0);
        }
        eprintln!("(connection lost; reconnecting)");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn interactive(c: &Client, chat: &str) -> Result<()> {
    let me = crate::client::load_session()?
        .map(|s| s.username)
        .ok_or_else(|| anyhow!("not logged in: run `chorus login USERNAME`"))?;
    let chat_id = if chat.starts_with("dm:") || chat.starts_with("g:") {
        chat.to_owned()
    } else {
        let (a, b) = if me.as_str() <= chat { (me.as_str(), chat) } else { (chat, me.as_str()) };
        format!("dm:{a}:{b}")
    };
    let page =
        c.call(Method::GET, &format!("/api/v1/chats/{}/messages?after=0&limit=500", enc(&chat_id)), true, None).await;
    match page {
        Ok(p) => {
            let msgs = p["messages"].as_array().cloned().unwrap_or_default();
            for m in msgs.iter().rev().take(20).rev() {
                println!("{}", message_text(m));
            }
        }
        Err(e) if e.to_string().contains("chat_not_found") && chat_id.starts_with("dm:") => {}
        Err(e) => return Err(e),
    }
    println!("-- {chat_id}: type a message and press Enter; Ctrl-D quits --");
    let watched = chat_id.clone();
    let client = Client::new(&c.server)?;
    let printer = tokio::spawn(async move {
        watch(&client, None, |ev| {
            if ev["type"] == "message" && ev["message"]["chat_id"] == watched.as_str() {
                println!("{}", message_text(&ev["message"]));
            }
            true
        })
        .await
    });
    let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = input.next_line().await? {
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if let Err(e) = c
            .call(
                Method::POST,
                &format!("/api/v1/chats/{}/messages", enc(&chat_id)),
                true,
                Some(message_body(text.to_owned(), vec![])),
            )
            .await
        {
            eprintln!("error: {e:#}");
        }
    }
    printer.abort();
    Ok(())
}
