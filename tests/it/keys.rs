//! The key lifecycle: an epoch roll under concurrent reads and writes, a roll cut short that
//! resumes, stale backups that the roll makes unreadable, the deletion ledger re-shredding a
//! restored backup, and DEK rotation on demand.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use privault::api::pb::key_admin_client::KeyAdminClient;
use privault::api::pb::{self, Outcome};
use privault::clock::SystemClock;
use privault::domain::{FieldName, Principal, Purpose, SubjectId};
use privault::store::Cf;
use privault::store::records::KeyRecord;
use privault::vault::{CallContext, ReadOutcome, Vault, VaultError};
use secrecy::SecretString;
use tonic::Code;

use crate::support::*;

const SEC_LEAD: &str = "Operator::\"sec-lead\"";

fn ctx(principal: &str) -> CallContext {
    CallContext {
        principal: Principal::parse_uid(principal).unwrap(),
        request_id: "t".into(),
        peer: None,
    }
}

fn put(v: &Vault, subject: &str, email: &str) {
    v.put(
        &ctx(ACCOUNT),
        &SubjectId::new(subject.into()).unwrap(),
        &Purpose::new("account").unwrap(),
        vec![(FieldName::new("email").unwrap(), SecretString::from(email))],
    )
    .unwrap();
}

fn read_email(v: &Vault, subject: &str) -> Result<ReadOutcome, VaultError> {
    v.get(
        &ctx(ACCOUNT),
        &SubjectId::new(subject.into()).unwrap(),
        &Purpose::new("account").unwrap(),
        &[FieldName::new("email").unwrap()],
    )
    .map(|mut r| r.remove(0).outcome)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    use std::os::unix::fs::DirBuilderExt;
    // Private like a data directory must be.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(to)
        .unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_epoch_roll_under_concurrent_reads_and_writes_fails_no_call() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    for i in 0..600 {
        let email = format!("c{i}@example.com");
        account
            .put_fields(put_request(
                &format!("cust-{i}"),
                "account",
                &[("email", email.as_str())],
            ))
            .await
            .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let mut client = server.client(ACCOUNT).await;
        let stop = Arc::clone(&stop);
        workers.push(tokio::spawn(async move {
            let mut calls = 0;
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let subject = format!("cust-{}", i % 600);
                if w == 0 {
                    // One writer: overwrites (which rotate DEKs) and brand-new subjects.
                    let email = format!("new{i}@example.com");
                    for s in [subject.clone(), format!("late-{i}")] {
                        client
                            .put_fields(put_request(&s, "account", &[("email", email.as_str())]))
                            .await
                            .unwrap();
                    }
                } else {
                    let results = get(&mut client, &subject, "account", &["email"]).await;
                    assert_eq!(results[0].outcome(), Outcome::Value);
                }
                calls += 1;
                i += 7;
            }
            calls
        }));
    }
    let mut keys =
        KeyAdminClient::with_interceptor(server.channel().await, As::header(Some(SEC_LEAD)));
    let mut stream = keys
        .roll_epoch(pb::RollEpochRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    let mut examined = 0;
    while let Some(p) = stream.message().await.unwrap() {
        if !p.done {
            // Progress has a total to show against: never behind what was examined.
            assert!(p.total >= p.examined && p.total > 0, "{p:?}");
            examined = examined.max(p.examined);
        }
        last = Some(p);
    }
    let last = last.unwrap();
    assert!(last.done);
    assert_eq!(last.epoch, 2);
    assert_eq!(last.destroyed_epochs, vec![1]);
    assert!(last.rewrapped >= 600, "{last:?}");
    // A DEK and a pseudonym per subject, at least.
    assert!(examined >= 1200, "{examined} examined");
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        assert!(w.await.unwrap() > 0);
    }
    let status = keys
        .key_status(pb::KeyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((status.current_epoch, status.epochs), (2, vec![2]));
    for i in (0..600).step_by(37) {
        let results = get(&mut account, &format!("cust-{i}"), "account", &["email"]).await;
        assert_eq!(results[0].outcome(), Outcome::Value);
    }
    // Only the security lead manages keys.
    let mut alice =
        KeyAdminClient::with_interceptor(server.channel().await, As::header(Some(ALICE)));
    let err = alice
        .roll_epoch(pb::RollEpochRequest {})
        .await
        .unwrap()
        .into_inner()
        .message()
        .await;
    assert_eq!(err.unwrap_err().code(), Code::PermissionDenied);
    server.stop().await;

    let store = vault.store();
    assert!(
        store
            .scan_prefix(Cf::Keys, &[])
            .unwrap()
            .iter()
            .filter_map(|(_, v)| KeyRecord::decode(v).ok())
            .all(|r| r.epoch == 2)
    );
}

#[test]
fn a_roll_cut_short_resumes_and_finishes() {
    let vault = TestVault::new();
    {
        let v = vault.open().unwrap();
        for i in 0..700 {
            put(&v, &format!("cust-{i}"), "a@example.com");
        }
        // Crash right after the first slice: the keyring holds epochs 1 and 2.
        let crashed = std::panic::catch_unwind(AssertUnwindSafe(|| {
            v.roll_epoch(&ctx(SEC_LEAD), |p| {
                assert!(p.rewrapped == 0, "crash after the first slice");
            })
        }));
        assert!(crashed.is_err());
        assert!(v.epoch_roll_pending());
    }
    let v = vault.open().unwrap();
    assert!(v.epoch_roll_pending());
    assert!(matches!(
        read_email(&v, "cust-699"),
        Ok(ReadOutcome::Value(_))
    ));
    let done = v.resume_epoch_roll().unwrap().unwrap();
    assert!(done.done);
    assert_eq!(done.destroyed, vec![1]);
    assert!(!v.epoch_roll_pending());
    for i in (0..700).step_by(50) {
        assert!(matches!(
            read_email(&v, &format!("cust-{i}")),
            Ok(ReadOutcome::Value(_))
        ));
    }
}

/// Two subjects; a copy of `db/` taken; then cust-1 shredded. Returns the vault and the copy.
fn backup_then_shred_cust_1() -> (TestVault, std::path::PathBuf) {
    let vault = TestVault::new();
    let backup = vault.dir.path().join("backup-db");
    {
        let v = vault.open().unwrap();
        put(&v, "cust-1", "gone@example.com");
        put(&v, "cust-2", "kept@example.com");
    }
    copy_dir(&vault.data_dir().join("db"), &backup);
    let v = vault.open().unwrap();
    v.shred(
        &ctx(DPO),
        &SubjectId::new("cust-1".into()).unwrap(),
        "ticket-1",
    )
    .unwrap();
    drop(v);
    (vault, backup)
}

/// The stale copy `backup` of `db/` opened in a directory of its own with today's keyring and root
/// key (but not the ledger), as a thief who took both would.
fn open_stale_copy(vault: &TestVault, backup: &std::path::Path) -> (tempfile::TempDir, Vault) {
    let thief = tempfile::tempdir().unwrap();
    let dir = thief.path().join("data");
    copy_dir(backup, &dir.join("db"));
    std::fs::copy(vault.config.keyring_path(), dir.join("keyring")).unwrap();
    std::fs::copy(vault.config.dev_key_path(), dir.join("dev.key")).unwrap();
    let mut config = vault.config.clone();
    config.data_dir = dir;
    let stale = Vault::open(&config, Arc::new(SystemClock)).unwrap();
    (thief, stale)
}

#[test]
fn after_a_roll_a_stale_copy_of_the_data_yields_nothing_of_a_shredded_subject() {
    if skip_on_postgres("restores or scans a copy of db/") {
        return;
    }
    let (vault, backup) = backup_then_shred_cust_1();
    {
        let v = vault.open().unwrap();
        let done = v.roll_epoch(&ctx(SEC_LEAD), |_| {}).unwrap();
        assert_eq!(done.destroyed, vec![1]);
    }
    // Someone opens the stale copy with today's keyring and root key (but not the ledger).
    let (_thief, stale) = open_stale_copy(&vault, &backup);
    let err = read_email(&stale, "cust-1").unwrap_err();
    assert!(err.to_string().contains("epoch 1"), "{err}");
    // The copy's every DEK is wrapped under the destroyed epoch: it must be re-taken after a roll.
    assert!(read_email(&stale, "cust-2").is_err());
    let wrapped_under: Vec<u32> = stale
        .store()
        .scan_prefix(Cf::Keys, &[])
        .unwrap()
        .iter()
        .filter_map(|(_, v)| KeyRecord::decode(v).ok())
        .map(|r| r.epoch)
        .collect();
    assert!(!wrapped_under.is_empty() && wrapped_under.iter().all(|e| *e == 1));
}

#[test]
fn a_restored_backup_is_re_shredded_from_the_deletion_ledger() {
    if skip_on_postgres("restores or scans a copy of db/") {
        return;
    }
    let (vault, backup) = backup_then_shred_cust_1();
    let db = vault.data_dir().join("db");
    std::fs::remove_dir_all(&db).unwrap();
    copy_dir(&backup, &db);
    let v = vault.open().unwrap();
    assert_eq!(read_email(&v, "cust-1").unwrap(), ReadOutcome::Absent);
    assert!(matches!(
        read_email(&v, "cust-2"),
        Ok(ReadOutcome::Value(_))
    ));
    let actions = audit_actions(v.store());
    assert!(
        actions.contains(&"ledger_reshred".to_owned()),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rotate_dek_reseals_one_subject_for_the_security_lead_only() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let request = || pb::RotateSubjectKeyRequest {
        subject_id: "cust-1".into(),
    };
    let mut alice =
        KeyAdminClient::with_interceptor(server.channel().await, As::header(Some(ALICE)));
    assert_eq!(
        alice
            .rotate_subject_key(request())
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let mut lead =
        KeyAdminClient::with_interceptor(server.channel().await, As::header(Some(SEC_LEAD)));
    let done = lead
        .rotate_subject_key(request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((done.classes_rotated, done.fields_resealed), (1, 7));
    let mut account = server.client(ACCOUNT).await;
    let results = get(&mut account, "cust-1", "account", &["email"]).await;
    assert_eq!(results[0].value, "alice@example.com");
    server.stop().await;
}

#[test]
fn the_schedule_rolls_an_epoch_once_it_is_old_enough() {
    let vault = TestVault::new();
    let clock = Arc::new(privault::clock::ManualClock::new(1_800_000_000_000));
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    put(&v, "cust-1", "a@example.com");
    let ninety_days = 90 * 86_400_000;
    assert!(v.roll_epoch_if_older(ninety_days).unwrap().is_none());
    clock.advance(ninety_days + 1);
    let done = v.roll_epoch_if_older(ninety_days).unwrap().unwrap();
    assert_eq!((done.epoch, done.destroyed.clone()), (2, vec![1]));
    assert!(
        v.roll_epoch_if_older(ninety_days).unwrap().is_none(),
        "the new epoch is fresh"
    );
    assert!(matches!(
        read_email(&v, "cust-1"),
        Ok(ReadOutcome::Value(_))
    ));
}

#[test]
fn the_audit_pseudonym_is_never_stored_in_clear_and_dies_with_the_epoch() {
    if skip_on_postgres("restores or scans a copy of db/") {
        return;
    }
    let (vault, backup) = backup_then_shred_cust_1();
    // cust-2's pseudonym, as every audit record about it names it.
    let v = vault.open().unwrap();
    let pseudonym = audit_views(v.store())
        .into_iter()
        .filter(|r| r.action == "write")
        .filter_map(|r| r.subject)
        .next_back()
        .unwrap();
    drop(v);
    let raw = hex::decode(&pseudonym).unwrap();
    // The audit log names subjects by their pseudonym (its records and its subject index hold
    // it, by design); nothing else may, and nothing may link it to the sid in clear.
    for dir in [vault.data_dir().join("db"), backup.clone()] {
        let store = privault::store::Store::open_read_only(&dir).unwrap();
        for cf in Cf::ALL {
            if matches!(cf, Cf::Audit | Cf::AuditIndex) {
                continue;
            }
            for (key, value) in store.scan_prefix(cf, &[]).unwrap() {
                assert!(
                    !key.windows(16).any(|w| w == raw.as_slice())
                        && !value.windows(16).any(|w| w == raw.as_slice()),
                    "the pseudonym is in clear in the {} CF under {}",
                    cf.name(),
                    dir.display()
                );
            }
        }
    }
    // After a roll, a stale copy opened with today's keyring cannot name its subjects.
    {
        let v = vault.open().unwrap();
        v.roll_epoch(&ctx(SEC_LEAD), |_| {}).unwrap();
    }
    let (_thief, stale) = open_stale_copy(&vault, &backup);
    let err = stale
        .export(&ctx(DPO), &SubjectId::new("cust-2".into()).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("pseudonym"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_commands_print_the_vaults_answer_as_proto3_json() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let addr = format!("http://{}", server.addr);
    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_privault"))
                .args(&args)
                .output()
                .unwrap()
        })
    };
    let args = |cmd: &[&str], caller: &str| -> Vec<String> {
        cmd.iter()
            .map(|s| (*s).to_owned())
            .chain(["--json", "--server", &addr, "--as", caller].map(str::to_owned))
            .collect()
    };
    let out = run(args(&["keys", "status"], SEC_LEAD)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The proto3 JSON mapping: lowerCamelCase names.
    assert_eq!(status["currentEpoch"], 1);
    assert_eq!(status["epochs"], serde_json::json!([1]));
    let out = run(args(&["policy", "versions"], ALICE)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let versions: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(versions["versions"][0]["active"], true);
    let out = run(args(&["keys", "roll-epoch"], SEC_LEAD)).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["done"], true);
    assert_eq!(done["destroyedEpochs"], serde_json::json!([1]));
    server.stop().await;
}
