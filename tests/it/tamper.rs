//! Ciphertexts are bound to their subject and field: moved anywhere else through RocksDB's own
//! API, they fail to open and the read is DATA_LOSS, never another customer's value.

use privault::store::{Batch, Cf, Store};
use tonic::Code;

use crate::support::*;

/// Runs `edit` on the stopped vault's database.
fn edit_db(vault: &TestVault, edit: impl FnOnce(&Store)) {
    let store = Store::open(&vault.data_dir().join("db")).unwrap();
    edit(&store);
}

fn entry_named(store: &Store, suffix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .scan_prefix(Cf::Fields, &[])
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.ends_with(suffix) && k.len() == 32 + suffix.len())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ciphertext_copied_to_another_subject_fails_to_open() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-a").await;
    let mut account = server.client(ACCOUNT).await;
    account
        .put_fields(put_request(
            "cust-b",
            "account",
            &[("email", "bob@example.com")],
        ))
        .await
        .unwrap();
    server.stop().await;

    edit_db(&vault, |store| {
        let emails = entry_named(store, b"email");
        assert_eq!(emails.len(), 2);
        let mut batch = Batch::new();
        batch.put(Cf::Fields, emails[0].0.clone(), emails[1].1.clone());
        batch.put(Cf::Fields, emails[1].0.clone(), emails[0].1.clone());
        store.write(&batch).unwrap();
    });

    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    for subject in ["cust-a", "cust-b"] {
        let err = account
            .get_fields(get_request(subject, "account", &["email"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
        assert!(!err.message().contains("example.com"));
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ciphertext_copied_to_another_field_fails_to_open() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-a").await;
    server.stop().await;

    edit_db(&vault, |store| {
        let email = entry_named(store, b"email").remove(0);
        let mut phone_key = email.0[..32].to_vec();
        phone_key.extend_from_slice(b"phone");
        let mut batch = Batch::new();
        batch.put(Cf::Fields, phone_key, email.1);
        store.write(&batch).unwrap();
    });

    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    let err = account
        .get_fields(get_request("cust-a", "account", &["phone"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);
    server.stop().await;
}
