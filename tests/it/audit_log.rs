//! The audit log for auditors: tampering through RocksDB's own API is found at its seq, a
//! truncated or rewritten tail is found against an earlier signed head, queries by subject work
//! until a shred and never after, and the offline tools work beside a running vault.

use std::path::Path;
use std::process::{Command, Output};

use privault::api::pb;
use privault::store::keys::audit_key;
use privault::store::{Batch, Cf, Store};
use tonic::Code;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_privault");

fn audit_cli(args: &[&str], data_dir: &Path) -> Output {
    Command::new(BIN)
        .arg("audit")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

/// A vault with a dozen records: two subjects written and read.
async fn busy_vault() -> TestVault {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    put_profile(&server, "cust-2").await;
    let mut checkout = server.client(CHECKOUT).await;
    for subject in ["cust-1", "cust-2", "cust-1", "cust-2"] {
        get(&mut checkout, subject, "fulfillment", &["email"]).await;
    }
    let mut recommender = server.client(RECOMMENDER).await;
    get(
        &mut recommender,
        "cust-1",
        "personalization",
        &["email", "favorite_categories"],
    )
    .await;
    server.stop().await;
    vault
}

fn raw(store: &Store, seq: u64) -> Vec<u8> {
    store.get(Cf::Audit, &audit_key(seq)).unwrap().unwrap()
}

fn put_raw(store: &Store, seq: u64, bytes: &[u8]) {
    let mut batch = Batch::new();
    batch.put(Cf::Audit, audit_key(seq).to_vec(), bytes.to_vec());
    store.write(&batch).unwrap();
}

/// Where the outcome byte of a format-2 record is: after the format byte, seq, time, segment,
/// the dictionary definitions, the principal's id and the action (docs/design.md, "The audit
/// record").
fn outcome_at(bytes: &[u8]) -> usize {
    use prost::encoding::decode_varint;
    assert_eq!(bytes[0], 2, "a format-2 record");
    let mut rest = &bytes[1..];
    for _ in 0..3 {
        decode_varint(&mut rest).unwrap();
    }
    let defs = decode_varint(&mut rest).unwrap();
    if defs > 0 {
        decode_varint(&mut rest).unwrap();
        for _ in 0..defs {
            let len = decode_varint(&mut rest).unwrap() as usize;
            rest = &rest[len..];
        }
    }
    decode_varint(&mut rest).unwrap();
    bytes.len() - rest.len() + 1
}

/// Record `seq` with its outcome changed to `code` (1 ok, 2 denied), its stored hash untouched.
fn with_outcome(store: &Store, seq: u64, code: u8) -> Vec<u8> {
    let mut bytes = raw(store, seq);
    let at = outcome_at(&bytes);
    bytes[at] = code;
    bytes
}

fn verify_output(vault: &TestVault) -> (bool, String) {
    let out = audit_cli(&["verify"], vault.data_dir());
    // A broken chain is a failed check: exit 3, not 1 (could not run).
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "audit verify exited {:?}",
        out.status.code()
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_removed_or_reordered_records_are_reported_at_their_seq() {
    if skip_on_postgres("the offline audit tools read a RocksDB data directory") {
        return;
    }
    let vault = busy_vault().await;
    let (ok, out) = verify_output(&vault);
    assert!(ok, "{out}");
    let head_line = out.lines().last().unwrap().to_owned();
    assert!(head_line.starts_with("8 "), "{out}");

    let db = vault.data_dir().join("db");
    // Changed: a denied read turned into an allowed one.
    {
        let store = Store::open(&db).unwrap();
        put_raw(&store, 5, &with_outcome(&store, 5, 2));
    }
    let (ok, out) = verify_output(&vault);
    assert!(!ok);
    assert!(out.contains("audit record 5: hash does not match"), "{out}");
    assert!(out.contains("bad seq 5"), "{out}");

    // Removed.
    {
        let store = Store::open(&db).unwrap();
        put_raw(&store, 5, &with_outcome(&store, 5, 1));
        assert!(verify_output(&vault).0, "restored");
        let mut batch = Batch::new();
        batch.delete(Cf::Audit, audit_key(6).to_vec());
        store.write(&batch).unwrap();
    }
    let (ok, out) = verify_output(&vault);
    assert!(!ok);
    assert!(out.contains("audit record 6: missing"), "{out}");

    // Reordered: records 3 and 4 swapped.
    let vault = busy_vault().await;
    {
        let store = vault.store();
        let (three, four) = (raw(&store, 3), raw(&store, 4));
        put_raw(&store, 3, &four);
        put_raw(&store, 4, &three);
    }
    let (ok, out) = verify_output(&vault);
    assert!(!ok);
    assert!(
        out.contains("audit record 3: stored under another seq"),
        "{out}"
    );
}

/// Rebuilds the chain from `from` on with fresh hashes, as an attacker with write access would:
/// each record's canonical bytes are kept, its hash recomputed over the new chain.
fn rechain(store: &Store, from: u64) {
    use sha2::{Digest, Sha256};
    let before = raw(store, from - 1);
    let mut prev: [u8; 32] = before[before.len() - 32..].try_into().unwrap();
    let mut seq = from;
    while let Some(bytes) = store.get(Cf::Audit, &audit_key(seq)).unwrap() {
        let canonical = &bytes[..bytes.len() - 32];
        prev = Sha256::new()
            .chain_update(prev)
            .chain_update(canonical)
            .finalize()
            .into();
        put_raw(store, seq, &[canonical, &prev].concat());
        seq += 1;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn truncation_and_rewrites_are_found_against_an_earlier_signed_head() {
    if skip_on_postgres("the offline audit tools read a RocksDB data directory") {
        return;
    }
    let vault = busy_vault().await;
    let head = audit_cli(&["head"], vault.data_dir());
    assert!(
        head.status.success(),
        "{}",
        String::from_utf8_lossy(&head.stderr)
    );
    let head_file = vault.dir.path().join("head.json");
    std::fs::write(&head_file, &head.stdout).unwrap();
    let with_head = || {
        audit_cli(
            &["verify", "--head", head_file.to_str().unwrap()],
            vault.data_dir(),
        )
    };
    assert!(with_head().status.success());

    // Truncated: the last two records removed; the remaining chain is internally consistent.
    let db = vault.data_dir().join("db");
    let saved: Vec<(u64, Vec<u8>)> = {
        let store = Store::open(&db).unwrap();
        let saved = vec![(7, raw(&store, 7)), (8, raw(&store, 8))];
        let mut batch = Batch::new();
        batch.delete(Cf::Audit, audit_key(7).to_vec());
        batch.delete(Cf::Audit, audit_key(8).to_vec());
        store.write(&batch).unwrap();
        saved
    };
    assert!(
        verify_output(&vault).0,
        "the chain alone cannot see a cut tail"
    );
    let out = with_head();
    assert_eq!(out.status.code(), Some(3), "a failed check exits 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("truncated: a head signed at seq 8"),
        "{stderr}"
    );

    // Rewritten: the tail restored, record 4 changed and every later hash recomputed.
    {
        let store = Store::open(&db).unwrap();
        for (seq, bytes) in &saved {
            put_raw(&store, *seq, bytes);
        }
        put_raw(&store, 4, &with_outcome(&store, 4, 2));
        rechain(&store, 4);
    }
    assert!(
        verify_output(&vault).0,
        "a rechained log verifies on its own"
    );
    let out = with_head();
    assert_eq!(out.status.code(), Some(3), "a failed check exits 3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("rewritten: record 8"));
}

#[tokio::test(flavor = "multi_thread")]
async fn auditors_query_by_subject_until_the_subject_is_shredded() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    put_profile(&server, "cust-2").await;
    let mut checkout = server.client(CHECKOUT).await;
    get(&mut checkout, "cust-1", "fulfillment", &["email"]).await;
    get(&mut checkout, "cust-2", "fulfillment", &["email"]).await;

    let mut auditor = server.auditor(AUDITOR).await;
    let by_subject = pb::AuditQueryRequest {
        subject_id: "cust-1".into(),
        ..Default::default()
    };
    let (records, next) = audit_query(&mut auditor, by_subject.clone()).await;
    let seen: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r.principal.as_str(), r.action.as_str()))
        .collect();
    assert_eq!(seen, vec![(ACCOUNT, "write"), (CHECKOUT, "read")]);
    assert_eq!(next, 0);
    assert!(
        records
            .iter()
            .all(|r| r.subject == records[0].subject && !r.subject.is_empty())
    );
    assert!(
        records[1].peer.starts_with("127.0.0.1:"),
        "{}",
        records[1].peer
    );

    let (page, next) = audit_query(
        &mut auditor,
        pb::AuditQueryRequest {
            principal: CHECKOUT.into(),
            page_size: 1,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page.len(), 1);
    assert!(next > page[0].seq);

    let head = auditor
        .head(pb::AuditHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    let key: [u8; 32] = hex::decode(&head.public_key).unwrap().try_into().unwrap();
    let id: [u8; 16] = hex::decode(&head.keyring_id).unwrap().try_into().unwrap();
    let hash: [u8; 32] = hex::decode(&head.hash).unwrap().try_into().unwrap();
    let sig: [u8; 64] = hex::decode(&head.signature).unwrap().try_into().unwrap();
    assert!(privault::crypto::verify_head(&key, &id, head.seq, &hash, &sig).is_ok());

    let mut dpo = server.client(DPO).await;
    dpo.shred_subject(pb::ShredSubjectRequest {
        subject_id: "cust-1".into(),
        reason: "erasure #1".into(),
    })
    .await
    .unwrap();
    let (after, _) = audit_query(&mut auditor, by_subject).await;
    assert!(
        after.is_empty(),
        "nothing joins the log to a shredded subject"
    );
    let verified = auditor
        .verify(pb::AuditVerifyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");

    let cli = Command::new(BIN)
        .args([
            "audit", "query", "--as", AUDITOR, "--action", "read", "--server",
        ])
        .arg(format!("http://{}", server.addr))
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&cli.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "the two checkout reads");
    assert!(lines.iter().all(|l| l["principal"] == CHECKOUT));

    let mut checkout_as_auditor = server.auditor(CHECKOUT).await;
    let err = checkout_as_auditor
        .head(pb::AuditHeadRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn export_and_verify_work_beside_a_running_vault() {
    if skip_on_postgres("the offline audit tools read a RocksDB data directory") {
        return;
    }
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut anonymous = server.anonymous().await;
    let _ = anonymous
        .get_fields(get_request("cust-1", "fulfillment", &["email"]))
        .await
        .unwrap_err();

    let out = audit_cli(&["export"], vault.data_dir());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        3,
        "policy load, the write, the refused anonymous read"
    );
    for key in [
        "seq",
        "time",
        "principal",
        "action",
        "subject",
        "purpose",
        "fields",
        "outcome",
        "policy_version",
        "prev_hash",
        "hash",
    ] {
        assert!(lines[1].get(key).is_some(), "missing `{key}`");
    }
    assert_eq!(lines[1]["fields"][0]["field"], "email");
    assert!(lines[1]["fields"][0].get("policy_ids").is_some());
    assert_eq!(lines[2]["principal"], "unauthenticated");
    assert_eq!(lines[2]["action"], "read");

    let verify = audit_cli(&["verify"], vault.data_dir());
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).starts_with("3 "));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_tools_read_a_consistent_view_beside_a_busy_vault() {
    if skip_on_postgres("the offline audit tools read a RocksDB data directory") {
        return;
    }
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-0").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Puts and shreds: every shred flushes and compacts, so table files come and go all along.
    let load = {
        let (stop, mut account, mut dpo) = (
            std::sync::Arc::clone(&stop),
            server.client(ACCOUNT).await,
            server.client(DPO).await,
        );
        tokio::spawn(async move {
            let mut i = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let subject = format!("cust-{i}");
                account
                    .put_fields(put_request(&subject, "account", &[("email", "a@b.c")]))
                    .await
                    .unwrap();
                dpo.shred_subject(privault::api::pb::ShredSubjectRequest {
                    subject_id: format!("cust-{}", i - 1),
                    reason: "ticket".into(),
                })
                .await
                .unwrap();
                i += 1;
            }
            i
        })
    };
    let dir = vault.data_dir().to_owned();
    let failures = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        for _ in 0..8 {
            for args in [&["verify"][..], &["head"], &["export"]] {
                let out = audit_cli(args, &dir);
                if !out.status.success() {
                    failures.push(format!(
                        "{args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
            }
        }
        failures
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = load.await.unwrap();
    assert!(rounds > 1, "the load ran");
    assert!(failures.is_empty(), "{failures:#?}");
    server.stop().await;
}

/// Reads `n` records from a tail opened at `from`.
async fn tail_n(auditor: &mut AuditorClient, from: u64, n: usize) -> Vec<u64> {
    let mut stream = auditor
        .tail(pb::AuditTailRequest { from_seq: from })
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    while seqs.len() < n {
        let r = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("the tail delivers new records")
            .unwrap()
            .unwrap();
        seqs.push(r.seq);
    }
    seqs
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tail_delivers_every_record_once_across_a_reconnect_and_follows_new_ones() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut checkout = server.client(CHECKOUT).await;
    for _ in 0..5 {
        get(&mut checkout, "cust-1", "fulfillment", &["email"]).await;
    }
    let mut auditor = server.auditor(AUDITOR).await;
    // A first connection reads four records and goes away.
    let mut seen = tail_n(&mut auditor, 1, 4).await;
    // Meanwhile the log moves on (and each tail is itself audited).
    for _ in 0..3 {
        get(&mut checkout, "cust-1", "fulfillment", &["email"]).await;
    }
    // The reader resumes after the last seq it got, and follows records written while it waits.
    let resume = *seen.last().unwrap() + 1;
    let (later, ()) = tokio::join!(tail_n(&mut auditor, resume, 12), async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        for _ in 0..4 {
            get(&mut checkout, "cust-1", "fulfillment", &["email"]).await;
        }
    });
    seen.extend(later);
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(seen, expected, "in order, no gap, no repeat");

    // Tailing is audit_read: a service may not.
    let mut intruder = server.auditor(CHECKOUT).await;
    let err = intruder
        .tail(pb::AuditTailRequest { from_seq: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // Shutting down ends an open tail with UNAVAILABLE, naming where to resume.
    let mut stream = auditor
        .tail(pb::AuditTailRequest { from_seq: 0 })
        .await
        .unwrap()
        .into_inner();
    server.stop().await;
    // Its own record (the tail is audited as it starts) comes first.
    let status = loop {
        match stream.message().await {
            Ok(Some(r)) => assert_eq!(r.action, "audit_tail"),
            Ok(None) => panic!("the tail ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("resume from seq"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_into_a_pipe_closed_early_ends_quietly() {
    if skip_on_postgres("the offline audit tools read a RocksDB data directory") {
        return;
    }
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    // Enough records that the export outgrows the pipe's buffer after `head` has gone.
    for i in 0..600 {
        account
            .put_fields(put_request(
                &format!("cust-{i}"),
                "account",
                &[("email", "x@example.com")],
            ))
            .await
            .unwrap();
    }
    server.stop().await;
    let script = format!(
        "set -o pipefail; '{BIN}' audit export --data-dir '{}' | head -n 1 >/dev/null",
        vault.data_dir().display()
    );
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
    // Killed by SIGPIPE, as `yes | head` is (128 + 13), never a panic (101).
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
