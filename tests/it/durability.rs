//! Start-up and restarts: synced writes survive, a wrong or exposed key is a clear start-up error
//! that touches nothing, and an invalid policy directory refuses to start.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use privault::api::pb;
use privault::keyring::{KeyringError, keyfile};
use privault::vault::OpenError;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn writes_survive_a_restart() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    server.stop().await;
    let server = vault.start().await;
    let mut checkout = server.client(CHECKOUT).await;
    assert_eq!(
        get(&mut checkout, "cust-1", "fulfillment", &["email"]).await[0].value,
        "alice@example.com"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cold_reads_after_a_restart_are_read_from_disk_and_audited_once() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    put_profile(&server, "cust-2").await;
    server.stop().await;
    // Reopened, the data is in table files and nothing is cached: the first reads cannot be
    // served from memory on the runtime and run again on the blocking pool.
    let server = vault.start().await;
    let mut checkout = server.client(CHECKOUT).await;
    let reads = checkout
        .batch_get_fields(pb::BatchGetFieldsRequest {
            subject_ids: vec!["cust-1".into(), "cust-2".into()],
            purpose: "fulfillment".into(),
            fields: vec!["email".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        reads
            .subjects
            .iter()
            .all(|s| s.results[0].value.contains('@'))
    );
    let single = get(
        &mut checkout,
        "cust-1",
        "fulfillment",
        &["email", "full_name"],
    )
    .await;
    assert_eq!(single[0].value, "alice@example.com");

    let mut auditor = server.auditor(AUDITOR).await;
    for (subject, expected) in [("cust-1", 2), ("cust-2", 1)] {
        let (records, _) = audit_query(
            &mut auditor,
            pb::AuditQueryRequest {
                subject_id: subject.into(),
                principal: CHECKOUT.into(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(records.len(), expected, "{subject}: one record per read");
    }
    server.stop().await;
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_root_key_refuses_to_start_and_touches_nothing() {
    let mut vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    server.stop().await;
    let before = snapshot(vault.data_dir());
    let other = vault.dir.path().join("other.key");
    keyfile::create_key_file(&other).unwrap();
    vault.config.key_file = Some(other);
    let err = vault.open().unwrap_err();
    assert!(
        matches!(err, OpenError::Keyring(KeyringError::WrongRootKey(_))),
        "{err}"
    );
    assert!(err.to_string().contains("does not match"), "{err}");
    assert_eq!(before, snapshot(vault.data_dir()));
}

#[test]
fn key_file_readable_by_others_is_refused() {
    if skip_on_postgres(
        "the development key lives beside db/; PostgreSQL nodes are given their root key",
    ) {
        return;
    }
    let mut vault = TestVault::new();
    let key = vault.dir.path().join("root.key");
    keyfile::create_key_file(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    vault.config.key_file = Some(key);
    let err = vault.open().unwrap_err();
    assert!(err.to_string().contains("chmod 600"), "{err}");
}

#[test]
fn dev_key_is_generated_private_on_first_start() {
    if skip_on_postgres(
        "the development key lives beside db/; PostgreSQL nodes are given their root key",
    ) {
        return;
    }
    let vault = TestVault::new();
    drop(vault.open().unwrap());
    let mode = std::fs::metadata(vault.data_dir().join("dev.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(vault.data_dir().join("keyring").exists());
    assert!(vault.data_dir().join("db").is_dir());
}

#[test]
fn invalid_policies_refuse_to_start_with_positions() {
    let mut vault = TestVault::new();
    let policies = vault.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for f in ["schema.cedarschema", "catalog.toml", "shop.cedar"] {
        std::fs::copy(shipped_policies().join(f), policies.join(f)).unwrap();
    }
    std::fs::write(
        policies.join("bad.cedar"),
        "permit (principal, action == Action::\"read\", resource)\nwhen { context.purpose == 3 };\n",
    )
    .unwrap();
    vault.config.policies_dir = policies;
    let err = vault.open().unwrap_err().to_string();
    assert!(err.contains("bad.cedar:2:"), "{err}");
    assert!(
        !vault.data_dir().exists(),
        "nothing created on a refused start"
    );
}

#[test]
fn a_data_directory_others_may_read_is_refused_and_a_new_one_is_private() {
    let vault = TestVault::new();
    drop(vault.open().unwrap());
    let mode = std::fs::metadata(vault.data_dir())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700, "created private");
    std::fs::set_permissions(vault.data_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = vault.open().unwrap_err().to_string();
    assert!(err.contains("chmod 700"), "{err}");
    std::fs::set_permissions(vault.data_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(vault.open().is_ok());
}
