//! Backups end to end: `privault backup create` streams a running vault's backup while writers go
//! on, `backup verify` checks it, `backup restore` puts it into a new data directory with the
//! keyring and the live ledger, and the restored vault serves every write acknowledged before the
//! backup and none of a customer shredded after it.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use privault::api::pb;
use privault::api::pb::backup_client::BackupClient;
use privault::api::pb::key_admin_client::KeyAdminClient;
use privault::vault::VaultConfig;
use tonic::Code;

use crate::binary::BIN;
use crate::support::*;

const SRE: &str = "Operator::\"sre\"";
const SEC_LEAD: &str = "Operator::\"sec-lead\"";

fn email_of(i: u64) -> String {
    format!("customer{i}@example.com")
}

fn privault(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// `privault backup create` against `server`, off the runtime that serves it.
async fn create_from(server: &TestServer, to: &Path, caller: &str) -> Output {
    let args: Vec<String> = [
        "backup",
        "create",
        "--to",
        to.to_str().unwrap(),
        "--server",
        &format!("http://{}", server.addr),
        "--as",
        caller,
    ]
    .map(str::to_owned)
    .to_vec();
    tokio::task::spawn_blocking(move || {
        privault(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap()
}

/// `restore` of `backup` into `target` with `vault`'s own keyring and ledger.
fn restore_with_own_keys(backup: &Path, target: &Path, vault: &TestVault) -> Output {
    restore(
        backup,
        target,
        &vault.data_dir().join("keyring"),
        &vault.data_dir().join("ledger"),
    )
}

fn restore(from: &Path, data_dir: &Path, keyring: &Path, ledger: &Path) -> Output {
    privault(&[
        "backup",
        "restore",
        "--from",
        from.to_str().unwrap(),
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--keyring",
        keyring.to_str().unwrap(),
        "--ledger",
        ledger.to_str().unwrap(),
    ])
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A vault on `data_dir` with the test vault's development key.
fn restored_vault(original: &TestVault, data_dir: &Path) -> TestVault {
    std::fs::copy(
        original.data_dir().join("dev.key"),
        data_dir.join("dev.key"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    TestVault {
        dir,
        config: VaultConfig::new(data_dir, shipped_policies()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_every_acknowledged_write_and_no_later_shred() {
    if skip_on_postgres("backups copy db/; PostgreSQL is backed up with its own tools") {
        return;
    }
    let vault = TestVault::new();
    let server = vault.start().await;
    for i in 0..50 {
        put_account(&server, &format!("cust-{i}"), &[("email", &email_of(i))]).await;
    }
    // Writers keep going while the backup is cut and streamed.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let mut client = server.client(ACCOUNT).await;
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 1000 + w * 100_000;
            while !stop.load(Ordering::Relaxed) {
                let subject = format!("cust-{i}");
                client
                    .put_fields(put_request(&subject, "account", &[("email", &email_of(i))]))
                    .await
                    .unwrap();
                acked.push((i, std::time::Instant::now()));
                i += 1;
            }
            acked
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("backup");
    let started = std::time::Instant::now();
    let out = create_from(&server, &backup, SRE).await;
    assert!(out.status.success(), "{}", text(&out));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut before_backup = Vec::new();
    let mut after_backup = 0;
    for writer in writers {
        for (i, at) in writer.await.unwrap() {
            if at < started {
                before_backup.push(i);
            } else {
                after_backup += 1;
            }
        }
    }
    assert!(
        before_backup.len() > 20 && after_backup > 0,
        "load ran across the backup"
    );
    // Shredded after the backup: its data is in the backup, its shred only in the live ledger.
    let mut dpo = server.client(DPO).await;
    let shred = dpo
        .shred_subject(pb::ShredSubjectRequest {
            subject_id: "cust-7".into(),
            reason: "erasure request 12".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(shred.existed);
    server.stop().await;

    let out = privault(&["backup", "verify", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let restored_dir = work.path().join("restored");
    let out = restore_with_own_keys(&backup, &restored_dir, &vault);
    assert!(out.status.success(), "{}", text(&out));

    let restored = restored_vault(&vault, &restored_dir);
    let server = restored.start().await;
    let mut account = server.client(ACCOUNT).await;
    for i in (0..50).chain(before_backup.iter().copied()) {
        if i == 7 {
            continue;
        }
        let results = get(&mut account, &format!("cust-{i}"), "account", &["email"]).await;
        assert_eq!(
            summary(&results),
            vec![("email".into(), pb::Outcome::Value, email_of(i))],
            "cust-{i}, acknowledged before the backup"
        );
    }
    let results = get(&mut account, "cust-7", "account", &["email"]).await;
    assert_eq!(
        results[0].outcome(),
        pb::Outcome::Absent,
        "shredded after the backup"
    );
    drop(account);
    let actions = audit_actions(server.vault().store());
    assert!(actions.iter().any(|a| a == "ledger_reshred"), "{actions:?}");
    assert!(actions.iter().any(|a| a == "backup"), "{actions:?}");
    server.stop().await;
}

#[tokio::test]
async fn only_a_permitted_operator_takes_a_backup_and_every_attempt_is_audited() {
    if skip_on_postgres("backups copy db/; PostgreSQL is backed up with its own tools") {
        return;
    }
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(&server, "cust-1", &[("email", "a@example.com")]).await;
    for caller in [SEC_LEAD, ACCOUNT] {
        let mut client =
            BackupClient::with_interceptor(server.channel().await, As::header(Some(caller)));
        let err = client
            .create_backup(pb::CreateBackupRequest {})
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{caller}");
    }
    let work = tempfile::tempdir().unwrap();
    let denied = work.path().join("denied");
    let out = create_from(&server, &denied, SEC_LEAD).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!denied.exists(), "a refused backup leaves no directory");
    let views = audit_views(server.vault().store());
    let backups: Vec<_> = views
        .iter()
        .filter(|v| v.action == "backup")
        .map(|v| (v.principal.as_str(), v.outcome.as_str()))
        .collect();
    assert_eq!(
        backups,
        vec![
            (SEC_LEAD, "denied"),
            (ACCOUNT, "denied"),
            (SEC_LEAD, "denied")
        ]
    );
    let taken = work.path().join("taken");
    let out = create_from(&server, &taken, SRE).await;
    assert!(out.status.success(), "{}", text(&out));
    let views = audit_views(server.vault().store());
    let last: Vec<_> = views
        .iter()
        .filter(|v| v.action == "backup" && v.principal == SRE)
        .map(|v| v.outcome.as_str())
        .collect();
    assert_eq!(last, vec!["started", "ok"]);
    // Nothing of the staging directory stays in the data directory.
    assert!(std::fs::read_dir(vault.data_dir()).unwrap().all(|e| {
        !e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".backup-")
    }));
    // The backup holds no key material and no plaintext.
    assert!(!taken.join("keyring").exists() && !taken.join("ledger").exists());
    assert!(files_containing(&taken, b"a@example.com").is_empty());
    server.stop().await;
}

/// A running vault with one customer, and a backup of it in `work/b`.
async fn backed_up() -> (TestVault, TestServer, tempfile::TempDir, std::path::PathBuf) {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(&server, "cust-1", &[("email", "a@example.com")]).await;
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("b");
    let out = create_from(&server, &backup, SRE).await;
    assert!(out.status.success(), "{}", text(&out));
    (vault, server, work, backup)
}

#[tokio::test]
async fn verify_fails_with_exit_3_on_a_changed_or_missing_file() {
    if skip_on_postgres("backups copy db/; PostgreSQL is backed up with its own tools") {
        return;
    }
    let (vault, server, work, backup) = backed_up().await;
    server.stop().await;
    let out = privault(&["backup", "verify", backup.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sst = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .find(|p| p.ends_with(".sst"))
        .unwrap();
    let path = backup.join(&sst);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let out = privault(&["backup", "verify", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains(&sst), "{}", text(&out));
    // A restore of a damaged backup refuses and leaves nothing behind.
    let target = work.path().join("restored");
    let out = restore_with_own_keys(&backup, &target, &vault);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!target.join("db").exists() && !target.join("keyring").exists());
    std::fs::remove_file(&path).unwrap();
    let out = privault(&["backup", "verify", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let out = privault(&["backup", "verify", work.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "not a backup: {}", text(&out));
}

#[tokio::test]
async fn a_restore_refuses_a_keyring_whose_epoch_roll_destroyed_the_backups_keys() {
    if skip_on_postgres("backups copy db/; PostgreSQL is backed up with its own tools") {
        return;
    }
    let (vault, server, work, backup) = backed_up().await;
    let mut keys =
        KeyAdminClient::with_interceptor(server.channel().await, As::header(Some(SEC_LEAD)));
    let mut roll = keys
        .roll_epoch(pb::RollEpochRequest {})
        .await
        .unwrap()
        .into_inner();
    while roll.message().await.unwrap().is_some() {}
    server.stop().await;
    let target = work.path().join("restored");
    let out = restore_with_own_keys(&backup, &target, &vault);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("epoch"), "{}", text(&out));
    assert!(!target.join("db").exists());
    // A keyring of another vault is refused too.
    let other = TestVault::new();
    drop(other.open().unwrap());
    let out = restore(
        &backup,
        &target,
        &other.data_dir().join("keyring"),
        &vault.data_dir().join("ledger"),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("another vault"), "{}", text(&out));
}

#[test]
fn a_stopped_vault_is_backed_up_offline_and_a_running_one_is_refused() {
    if skip_on_postgres("backups copy db/; PostgreSQL is backed up with its own tools") {
        return;
    }
    let vault = TestVault::new();
    drop(vault.open().unwrap());
    let work = tempfile::tempdir().unwrap();
    let backup = work.path().join("b");
    let data_dir = vault.data_dir().to_str().unwrap().to_owned();
    let out = privault(&[
        "backup",
        "create",
        "--to",
        backup.to_str().unwrap(),
        "--data-dir",
        &data_dir,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not in a backup"), "{}", text(&out));
    let out = privault(&["backup", "verify", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // A restore names the ledger or says explicitly that there is none.
    let out = privault(&[
        "backup",
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        work.path().join("r").to_str().unwrap(),
        "--keyring",
        vault.data_dir().join("keyring").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // A staging directory a crash left mid-backup goes at the next start.
    let stale = vault.data_dir().join(".backup-crashed/backup/db");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("000009.sst"), b"old table").unwrap();
    let running = vault.open().unwrap();
    assert!(!vault.data_dir().join(".backup-crashed").exists());
    let out = privault(&[
        "backup",
        "create",
        "--to",
        work.path().join("b2").to_str().unwrap(),
        "--data-dir",
        &data_dir,
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("still running"), "{}", text(&out));
    drop(running);
}

#[tokio::test]
async fn a_backup_into_an_existing_directory_is_refused_and_leaves_it_alone() {
    if skip_on_postgres("backups copy db/; PostgreSQL is backed up with its own tools") {
        return;
    }
    let (_vault, server, work, _) = backed_up().await;
    let existing = work.path().join("existing");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("keep.txt"), b"mine").unwrap();
    let out = create_from(&server, &existing, SRE).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(std::fs::read(existing.join("keep.txt")).unwrap(), b"mine");
    server.stop().await;
}
