//! The `chorus` binary against a real `chorus-node` process: every subcommand family, in both
//! human and `--json` output, and the helpful errors.

use chorus_node::testkit::NodeProc;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

struct User {
    config: tempfile::TempDir,
    server: String,
}

impl User {
    fn new(server: &str) -> Self {
        User { config: tempfile::tempdir().unwrap(), server: server.to_owned() }
    }

    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(args)
            .env("CHORUS_SERVER", &self.server)
            .env("CHORUS_CONFIG_DIR", self.config.path())
            .env("CHORUS_PASSWORD", "password123")
            .output()
            .expect("run chorus");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "chorus {args:?} failed: {err}");
        out
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }
}

#[test]
fn cli_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start(dir.path(), &[]);
    let (alice, bob) = (User::new(&node.url), User::new(&node.url));

    let (ok, _, err) = alice.run(&["whoami"]);
    assert!(!ok && err.contains("not logged in: run `chorus login"), "{err}");
    assert!(alice.ok(&["register", "alice", "--display-name", "Alice"]).contains("registered alice"));
    bob.ok(&["register", "bob"]);
    let (ok, _, err) = bob.run(&["register", "bob"]);
    assert!(!ok && err.contains("already taken"), "{err}");
    assert!(alice.ok(&["login", "alice"]).contains("logged in as alice"));
    bob.ok(&["login", "bob"]);
    assert_eq!(alice.json(&["whoami"])["display_name"], "Alice");

    assert!(alice.ok(&["friends", "request", "bob"]).contains("friend request sent"));
    let list = bob.json(&["friends", "list"]);
    assert_eq!(list["requests"]["incoming"][0]["from"], "alice");
    bob.ok(&["friends", "accept", "alice"]);
    let sent = alice.json(&["dm", "bob", "hello from the cli"]);
    assert_eq!(sent["seq"], 1);
    let history = bob.json(&["history", "dm:alice:bob"]);
    assert_eq!(history["messages"][0]["text"], "hello from the cli");
    assert!(bob.ok(&["history", "dm:alice:bob"]).contains("alice: hello from the cli"));

    let g = alice.json(&["group", "create", "Book club", "--member", "bob"]);
    let (gid, chat) = (g["group_id"].as_str().unwrap().to_owned(), g["chat_id"].as_str().unwrap().to_owned());
    bob.ok(&["send", &chat, "first!"]);
    assert!(alice.ok(&["group", "list"]).contains("Book club"));
    assert!(alice.ok(&["group", "show", &gid]).contains("members: alice, bob"));
    bob.ok(&["group", "leave", &gid]);
    let (ok, _, err) = bob.run(&["send", &chat, "after leaving"]);
    assert!(!ok && err.contains("chat not found"), "{err}");

    let src = dir.path().join("notes.txt");
    std::fs::write(&src, b"some notes\n".repeat(5000)).unwrap();
    let up = alice.json(&["upload", src.to_str().unwrap()]);
    let file_id = up["file_id"].as_str().unwrap().to_owned();
    alice.ok(&["dm", "bob", "notes attached", "--file", &file_id]);
    let dst = dir.path().join("copy.txt");
    bob.ok(&["download", &file_id, "-o", dst.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dst).unwrap(), std::fs::read(&src).unwrap());
    assert!(Path::new(&dst).exists());

    assert!(alice.ok(&["chats"]).contains("dm:alice:bob"));
    let cluster = alice.ok(&["cluster"]);
    assert!(cluster.contains("coordinator ") && cluster.contains("storage log: leader "), "{cluster}");
    alice.ok(&["logout"]);
    let (ok, _, err) = alice.run(&["chats"]);
    assert!(!ok && err.contains("not logged in"), "{err}");
    let (ok, _, err) = User::new("http://127.0.0.1:9").run(&["register", "zed"]);
    assert!(!ok && err.contains("cannot reach"), "{err}");
}
