//! Rectification and deletion leave no readable old value: the subject's DEK in the field's class
//! is rotated in the same batch, the other fields re-sealed under the new key, and the old wrapped
//! key is no longer in the store. Readers racing the rotation never fail.

use std::collections::BTreeMap;

use privault::api::pb::{self, Outcome};
use privault::store::Cf;
use privault::store::keys::name_of;
use privault::store::records::{FieldRecord, KeyRecord};

use crate::support::*;

/// The stored key records by class and field records by field (one subject in the store).
fn stored(vault: &TestVault) -> (BTreeMap<String, KeyRecord>, BTreeMap<String, FieldRecord>) {
    let store = vault.store();
    let keys = store
        .scan_prefix(Cf::Keys, &[])
        .unwrap()
        .into_iter()
        .filter_map(|(k, v)| Some((name_of(&k)?.to_owned(), KeyRecord::decode(&v).ok()?)))
        .collect();
    let fields = store
        .scan_prefix(Cf::Fields, &[])
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                name_of(&k).unwrap().to_owned(),
                FieldRecord::decode(&v).unwrap(),
            )
        })
        .collect();
    (keys, fields)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overwrite_and_a_delete_each_rotate_the_key_of_the_old_value() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    server.stop().await;
    let (keys_before, fields_before) = stored(&vault);
    let dek_before = &keys_before["default"];
    assert_eq!(dek_before.dek_version, 1);

    let server = vault.start().await;
    put_account(&server, "cust-1", &[("email", "alice@new.example")]).await;
    server.stop().await;
    let (keys_after, fields_after) = stored(&vault);
    let dek_after = &keys_after["default"];
    assert_eq!(dek_after.dek_version, 2, "the overwrite rotated the DEK");
    assert_ne!(dek_after.wrapped, dek_before.wrapped);
    assert!(
        keys_after.values().all(|k| k.wrapped != dek_before.wrapped),
        "the key of the old value is no longer stored"
    );
    for (field, before) in &fields_before {
        let after = &fields_after[field];
        assert_eq!(after.dek_version, 2, "{field} re-sealed under the new DEK");
        assert_ne!(after.ciphertext, before.ciphertext, "{field}");
        if field != "email" {
            assert_eq!(
                after.written_ms, before.written_ms,
                "{field} keeps its write time"
            );
            assert_eq!(
                after.expires_ms, before.expires_ms,
                "{field} keeps its retention"
            );
        }
    }

    // Every value reads as written; then a delete rotates once more.
    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    let results = get(
        &mut account,
        "cust-1",
        "account",
        &["email", "phone", "full_name"],
    )
    .await;
    assert_eq!(
        summary(&results),
        vec![
            ("email".into(), Outcome::Value, "alice@new.example".into()),
            ("phone".into(), Outcome::Value, "+15551234567".into()),
            ("full_name".into(), Outcome::Value, "Alice Example".into()),
        ]
    );
    account
        .delete_fields(pb::DeleteFieldsRequest {
            subject_id: "cust-1".into(),
            purpose: "account".into(),
            fields: vec!["phone".into()],
        })
        .await
        .unwrap();
    let results = get(&mut account, "cust-1", "account", &["phone", "full_name"]).await;
    assert_eq!(
        summary(&results),
        vec![
            ("phone".into(), Outcome::Absent, String::new()),
            ("full_name".into(), Outcome::Value, "Alice Example".into()),
        ]
    );
    server.stop().await;
    let (keys_deleted, fields_deleted) = stored(&vault);
    assert_eq!(keys_deleted["default"].dek_version, 3);
    assert!(!fields_deleted.contains_key("phone"));
}

#[tokio::test(flavor = "multi_thread")]
async fn readers_racing_rotations_never_fail() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut client = server.client(ACCOUNT).await;
        readers.push(tokio::spawn(async move {
            for _ in 0..60 {
                let results = get(&mut client, "cust-1", "account", &["email", "full_name"]).await;
                assert!(
                    results.iter().all(|r| r.outcome() == Outcome::Value),
                    "{results:?}"
                );
                assert_eq!(results[1].value, "Alice Example");
            }
        }));
    }
    let mut account = server.client(ACCOUNT).await;
    for i in 0..60 {
        let email = format!("alice+{i}@example.com");
        account
            .put_fields(put_request(
                "cust-1",
                "account",
                &[("email", email.as_str())],
            ))
            .await
            .unwrap();
    }
    for reader in readers {
        reader.await.unwrap();
    }
    let results = get(&mut account, "cust-1", "account", &["email"]).await;
    assert_eq!(results[0].value, "alice+59@example.com");
    server.stop().await;
}
