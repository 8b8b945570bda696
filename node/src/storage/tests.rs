//! State machine tests on a real RocksDB in temp dirs: determinism, gapless seqs,
//! idempotency, and refused commands leaving no trace.

use super::*;
use chorus_protocol::{Applied, ChatId, Command, CommandError};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn account(name: &str) -> Command {
    Command::CreateAccount { username: name.into(), display_name: None, password_hash: "phc".into(), at: 1 }
}

fn msg(chat: &ChatId, sender: &str, n: u64, cmid: Option<&str>) -> Command {
    Command::SendMessage {
        chat_id: chat.clone(),
        id: format!("{n:032x}"),
        sender: sender.into(),
        text: format!("message {n}"),
        files: vec![],
        client_msg_id: cmid.map(str::to_owned),
        sent_at: 1000 + n,
    }
}

/// A scripted history touching every command kind, including refusals.
fn script() -> Vec<Vec<Command>> {
    let dm = ChatId::dm("alice", "bob");
    let gid = "0123456789abcdef0123456789abcdef".to_string();
    let data = b"hello file".to_vec();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    let mut batches = vec![
        vec![account("alice"), account("bob"), account("carol"), account("alice")],
        vec![
            Command::CreateSession { token_hash: "t1".into(), username: "alice".into(), expires_at: 99, at: 2 },
            Command::SendFriendRequest { from: "alice".into(), to: "bob".into(), at: 3 },
            Command::RespondFriendRequest { from: "alice".into(), to: "bob".into(), accept: true, at: 4 },
            msg(&dm, "carol", 0, None), // refused: not in the chat
        ],
        vec![
            Command::PutFileChunk { hash: hash.clone(), data: data.clone() },
            Command::CreateFile {
                file_id: "f".repeat(32),
                uploader: "alice".into(),
                name: "a.txt".into(),
                content_type: "text/plain".into(),
                size: data.len() as u64,
                sha256: hash.clone(),
                chunks: vec![hash],
                at: 5,
            },
            Command::CreateGroup {
                group_id: gid.clone(),
                name: "g".into(),
                creator: "alice".into(),
                members: vec!["bob".into()],
                at: 6,
            },
            Command::AddGroupMember { group_id: gid.clone(), by: "alice".into(), username: "carol".into(), at: 7 },
            Command::RemoveGroupMember { group_id: gid.clone(), by: "bob".into(), username: "bob".into(), at: 8 },
            Command::DeleteSession { token_hash: "t1".into() },
        ],
    ];
    batches.push(
        (1..=50)
            .map(|n| msg(&dm, if n % 2 == 0 { "alice" } else { "bob" }, n, Some(&format!("c{}", n % 40))))
            .collect(),
    );
    batches.push((1..=20).map(|n| msg(&ChatId::group(&gid), "carol", 100 + n, None)).collect());
    batches
}

fn run(store: &Store, batches: &[Vec<Command>]) -> Vec<Result<Applied, CommandError>> {
    let sm = StateMachine::new(store);
    let mut results = Vec::new();
    for (i, b) in batches.iter().enumerate() {
        results.extend(sm.apply_batch(b, vec![applied_index_row(i as u64 + 1)], true).unwrap().results);
    }
    results
}

#[test]
fn replay_gives_byte_identical_contents() {
    let (_d1, a) = open();
    let (_d2, b) = open();
    let ra = run(&a, &script());
    let rb = run(&b, &script());
    assert_eq!(ra, rb);
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    // And the digest notices a difference.
    StateMachine::new(&b).apply_batch(&[account("dave")], vec![applied_index_row(99)], true).unwrap();
    assert_ne!(a.digest().unwrap(), b.digest().unwrap());
}

#[test]
fn seqs_are_gapless_and_retries_idempotent() {
    let (_d, s) = open();
    let results = run(&s, &script());
    assert_eq!(results[3], Err(CommandError::UsernameTaken("alice".into())));
    assert_eq!(results[7], Err(CommandError::ChatNotFound));
    let dm = ChatId::dm("alice", "bob");
    let msgs = s.messages(&dm, 0, 1000).unwrap();
    // 50 sends with 40 distinct client ids: 10 were retries of the first answer.
    assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=40).collect::<Vec<u64>>());
    let dm_results: Vec<_> = results
        .iter()
        .filter_map(|r| match r {
            Ok(Applied::MessageSent { chat_id, seq, .. }) if *chat_id == dm => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(dm_results[40..], dm_results[..10], "a retry returns the first seq");
    let group = ChatId::group("0123456789abcdef0123456789abcdef");
    assert_eq!(s.messages(&group, 0, 1000).unwrap().len(), 20);
    assert_eq!(s.chat(&group).unwrap().unwrap().members, ["alice", "carol"]);
    assert_eq!(s.applied_index().unwrap(), 5);
    // Every event log is gapless too.
    for user in ["alice", "bob", "carol"] {
        let evs = s.events(user, 0, 10_000).unwrap();
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=evs.len() as u64).collect::<Vec<_>>());
        assert_eq!(s.last_event_seq(user).unwrap(), evs.len() as u64);
    }
}

#[test]
fn refused_commands_leave_no_trace() {
    let (_d1, a) = open();
    let (_d2, b) = open();
    let sm_a = StateMachine::new(&a);
    let sm_b = StateMachine::new(&b);
    sm_a.apply_batch(&[account("alice"), account("bob")], vec![applied_index_row(1)], true).unwrap();
    sm_b.apply_batch(&[account("alice"), account("bob")], vec![applied_index_row(1)], true).unwrap();
    let refused = [
        msg(&ChatId::dm("alice", "bob"), "alice", 1, Some("x")),
        Command::SendFriendRequest { from: "alice".into(), to: "alice".into(), at: 1 },
        Command::CreateGroup {
            group_id: "a".repeat(32),
            name: "g".into(),
            creator: "alice".into(),
            members: vec!["zed".into()],
            at: 1,
        },
        Command::CreateFile {
            file_id: "b".repeat(32),
            uploader: "alice".into(),
            name: "n".into(),
            content_type: "t".into(),
            size: 1,
            sha256: "s".into(),
            chunks: vec!["missing".into()],
            at: 1,
        },
        Command::PutFileChunk { hash: "wrong".into(), data: vec![1, 2, 3] },
    ];
    let out = sm_a.apply_batch(&refused, vec![applied_index_row(2)], true).unwrap();
    assert!(out.results.iter().all(Result::is_err), "{:?}", out.results);
    assert!(out.notices.is_empty());
    sm_b.apply_batch(&[], vec![applied_index_row(2)], true).unwrap();
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());
}

#[test]
fn commands_in_one_batch_see_each_other() {
    let (_d, s) = open();
    let dm = ChatId::dm("alice", "bob");
    let batch = vec![
        account("alice"),
        account("bob"),
        Command::SendFriendRequest { from: "bob".into(), to: "alice".into(), at: 1 },
        Command::SendFriendRequest { from: "alice".into(), to: "bob".into(), at: 2 },
        msg(&dm, "alice", 1, None),
        msg(&dm, "bob", 2, None),
    ];
    let out = StateMachine::new(&s).apply_batch(&batch, vec![applied_index_row(1)], true).unwrap();
    assert_eq!(out.results[3], Ok(Applied::FriendRequest { accepted: true }));
    assert!(matches!(out.results[5], Ok(Applied::MessageSent { seq: 2, .. })));
    assert_eq!(out.messages, 2);
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let digest = {
        let s = Store::open(dir.path()).unwrap();
        run(&s, &script());
        s.digest().unwrap()
    };
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.digest().unwrap(), digest);
    assert!(matches!(Store::open(dir.path()), Err(StorageError::InUse(_))), "a second opener gets a clear error");
    // A reopened store (nothing cached) continues every event log where it stopped.
    let before = ["alice", "bob"].map(|u| s.last_event_seq(u).unwrap());
    let out = StateMachine::new(&s)
        .apply_batch(&[msg(&ChatId::dm("alice", "bob"), "bob", 77, None)], vec![applied_index_row(6)], true)
        .unwrap();
    let seqs: Vec<u64> = out.notices.iter().map(|n| n.seq).collect();
    assert_eq!(seqs, before.map(|seq| seq + 1));
}

#[test]
fn notices_carry_exactly_the_events_applied() {
    let (_d, s) = open();
    let dm = ChatId::dm("alice", "bob");
    let batch = vec![
        account("alice"),
        account("bob"),
        account("carol"),
        Command::SendFriendRequest { from: "bob".into(), to: "alice".into(), at: 1 },
        Command::SendFriendRequest { from: "alice".into(), to: "bob".into(), at: 2 },
        msg(&dm, "alice", 1, None),
        // Refused (not friends): its events must not be carried, nor leave a gap.
        msg(&ChatId::dm("alice", "carol"), "alice", 2, None),
        msg(&dm, "bob", 3, None),
    ];
    let out = StateMachine::new(&s).apply_batch(&batch, vec![applied_index_row(1)], true).unwrap();
    assert!(out.results[6].is_err());
    for user in ["alice", "bob"] {
        let n = out.notices.iter().find(|n| n.user == user).expect("a notice");
        assert_eq!(n.seq, s.last_event_seq(user).unwrap());
        assert_eq!(n.events, s.events(user, 0, 100).unwrap(), "carried = what the log holds");
    }
    assert!(out.notices.iter().all(|n| n.user != "carol"), "{:?}", out.notices);
}

#[test]
fn bulk_rewrites_leave_no_stale_cached_rows() {
    // `b` sends one DM (its row cache now holds the chat at seq 1), then loads `a`'s rows,
    // where the chat is at seq 40: b's next send must be seq 41, exactly as on `a`.
    let (_d1, a) = open();
    let (_d2, b) = open();
    let batches = script();
    run(&a, &batches);
    run(&b, &batches[..3]);
    let dm = ChatId::dm("alice", "bob");
    StateMachine::new(&b).apply_batch(&[msg(&dm, "alice", 1, None)], vec![applied_index_row(4)], true).unwrap();
    let (file, _) = snapshot::write_rows(&a, &a.db.snapshot()).unwrap();
    snapshot::load_rows(&b, &file, rocksdb::WriteBatch::default()).unwrap();
    let next = [msg(&dm, "bob", 999, None)];
    for s in [&a, &b] {
        let out = StateMachine::new(s).apply_batch(&next, vec![applied_index_row(6)], true).unwrap();
        assert!(matches!(out.results[0], Ok(Applied::MessageSent { seq: 41, .. })), "{:?}", out.results);
    }
    assert_eq!(a.digest().unwrap(), b.digest().unwrap());

    // `forget` empties the store: the friendship the cache saw is gone too.
    raft::forget(&b).unwrap();
    let again = [account("alice"), account("bob"), msg(&dm, "bob", 1000, None)];
    let out = StateMachine::new(&b).apply_batch(&again, vec![applied_index_row(1)], true).unwrap();
    assert_eq!(out.results[2], Err(CommandError::NotFriends("alice".into())));
}
