//! The PostgreSQL backend itself: migrations through the binary, the node-id lease, the keys
//! schema kept apart from the data schema. Runs against a real server in both passes of the suite.

use std::process::Command;

use crate::support::postgres::shared;
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_privault");

fn db(args: &[&str], url: &str) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("db")
        .args(args)
        .env("PRIVAULT_DATABASE_URL", url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn db_migrate_creates_both_schemas_once_and_status_tells_the_version() {
    let cluster = shared();
    let url = cluster.new_database();
    let (code, out, _) = db(&["status"], &url);
    assert_eq!(code, 3, "an empty database is behind: {out}");
    assert!(out.contains("database schema version 0"), "{out}");

    let (code, out, err) = db(&["migrate"], &url);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("applied 1:") && out.contains("applied 2:"),
        "{out}"
    );
    let (code, out, _) = db(&["migrate"], &url);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to apply"), "{out}");
    let (code, _, _) = db(&["status"], &url);
    assert_eq!(code, 0);

    let name = url.rsplit('/').next().unwrap();
    let schemas = cluster.psql(
        name,
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace \
         WHERE nspname LIKE 'privault%'",
    );
    assert_eq!(schemas, "privault,privault_keys");
    let versions = cluster.psql(name, "SELECT count(*) FROM privault_keys.schema_version");
    assert_eq!(versions, "2");

    // A URL that reaches nothing fails clearly, and never echoes a password.
    let (code, _, err) = db(
        &["status"],
        "postgresql://privault:hunter2@127.0.0.1:1/none?connect_timeout=2",
    );
    assert_ne!(code, 0);
    assert!(err.contains("127.0.0.1:1/none"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_under_the_same_node_id_is_refused_and_takes_over_after() {
    let url = shared().new_database();
    let first = TestVault::on_postgres(&url);
    let server = first.start().await;
    put_profile(&server, "cust-lease").await;

    let second = first.another_node("node-1");
    let refused = second.open().unwrap_err().to_string();
    assert!(
        refused.contains("another privault process serves this database as node `node-1`"),
        "{refused}"
    );
    assert!(!refused.contains("cust-lease"));
    // Under an id of its own, a node runs beside it.
    let third = first.another_node("node-3");
    drop(third.open().unwrap());

    server.stop().await;
    let server = second.start().await;
    let mut recommender = server.client(RECOMMENDER).await;
    let read = get(
        &mut recommender,
        "cust-lease",
        "personalization",
        &["favorite_categories"],
    )
    .await;
    assert_eq!(
        summary(&read)[0].1,
        privault::api::pb::Outcome::Value,
        "{read:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_keyring_and_ledger_live_in_the_keys_schema_and_the_data_schema_holds_no_kek() {
    let cluster = shared();
    let url = cluster.new_database();
    let name = url.rsplit('/').next().unwrap().to_owned();
    let vault = TestVault::on_postgres(&url);
    let server = vault.start().await;
    put_profile(&server, "cust-keys").await;
    let mut dpo = server.client(DPO).await;
    dpo.shred_subject(privault::api::pb::ShredSubjectRequest {
        subject_id: "cust-keys".into(),
        reason: "erasure request".into(),
    })
    .await
    .unwrap();
    server.stop().await;

    let keyring = cluster.psql(&name, "SELECT body FROM privault_keys.keyring");
    let keyring: serde_json::Value = serde_json::from_str(&keyring).unwrap();
    let wrapped_kek = keyring["epochs"][0]["wrapped"].as_str().unwrap().to_owned();
    assert!(wrapped_kek.len() >= 32, "{keyring}");
    let ledger = cluster.psql(&name, "SELECT count(*) FROM privault_keys.ledger");
    assert_eq!(ledger, "1", "the shred's ledger line");
    assert!(
        !vault.data_dir().join("keyring").exists() && !vault.data_dir().join("ledger").exists(),
        "nothing of the vault is kept on the node"
    );

    // What a dump of the data schema carries: no KEK, no keyring, no ledger.
    let dump = Command::new(postgres_bin("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "privault",
        ])
        .args(["--schema", "privault", "--data-only", &name])
        .output()
        .unwrap();
    assert!(dump.status.success());
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("COPY privault.fields"),
        "the dump holds the data"
    );
    assert!(!dump.contains(&wrapped_kek));
    assert!(!dump.contains("privault_keys"));
    assert!(!dump.contains("cust-keys"));
}

fn postgres_bin(name: &str) -> std::path::PathBuf {
    crate::support::postgres::bin_dir().join(name)
}
