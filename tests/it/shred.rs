//! Crypto-shredding: authorized, logical (every field absent at once and after restart) and
//! physical (no file under the data directory still holds the wrapped DEK or a ciphertext).

use privault::api::pb::{self, Outcome};
use privault::store::Cf;
use privault::store::records::{FieldRecord, KeyRecord};
use tonic::Code;

use crate::support::*;

const ALL_FIELDS: [&str; 7] = [
    "email",
    "phone",
    "full_name",
    "shipping_address",
    "payment_card",
    "favorite_categories",
    "last_ip",
];

fn shred_request(subject: &str, reason: &str) -> pb::ShredSubjectRequest {
    pb::ShredSubjectRequest {
        subject_id: subject.into(),
        reason: reason.into(),
    }
}

/// Every field reads as ABSENT, for the account service (all but device data) and fraud (device).
async fn assert_all_absent(server: &TestServer, subject: &str) {
    let mut account = server.client(ACCOUNT).await;
    let mut results = get(&mut account, subject, "account", &ALL_FIELDS[..6]).await;
    let mut fraud = server.client(FRAUD).await;
    results.extend(get(&mut fraud, subject, "fraud", &["last_ip"]).await);
    assert!(
        results.iter().all(|r| r.outcome() == Outcome::Absent),
        "{results:?}"
    );
}

/// The wrapped DEK bytes and field ciphertexts stored so far (the subject must be the only one).
fn stored_secrets(vault: &TestVault) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let store = vault.store();
    let wrapped: Vec<Vec<u8>> = store
        .scan_prefix(Cf::Keys, &[])
        .unwrap()
        .into_iter()
        .filter_map(|(_, v)| KeyRecord::decode(&v).ok().map(|r| r.wrapped))
        .collect();
    let ciphertexts: Vec<Vec<u8>> = store
        .scan_prefix(Cf::Fields, &[])
        .unwrap()
        .into_iter()
        .map(|(_, v)| FieldRecord::decode(&v).unwrap().ciphertext)
        .collect();
    (wrapped, ciphertexts)
}

#[tokio::test(flavor = "multi_thread")]
async fn shred_makes_the_subject_absent_and_its_bytes_leave_the_data_dir() {
    if skip_on_postgres("scans RocksDB's files for erased bytes") {
        return;
    }
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-gone").await;
    server.stop().await;
    let (wrapped, ciphertexts) = stored_secrets(&vault);
    assert_eq!(wrapped.len(), 1, "one DEK in the default class");
    assert_eq!(ciphertexts.len(), ALL_FIELDS.len());
    assert!(
        !files_containing(vault.data_dir(), &wrapped[0]).is_empty(),
        "the scan finds live keys"
    );

    let server = vault.start().await;
    put_profile(&server, "cust-stays").await;
    let mut dpo = server.client(DPO).await;
    let outcome = dpo
        .shred_subject(shred_request("cust-gone", "ticket-4711"))
        .await
        .unwrap()
        .into_inner();
    assert!(outcome.existed);
    assert!(outcome.purged);
    assert_all_absent(&server, "cust-gone").await;
    server.stop().await;

    for secret in wrapped.iter().chain(&ciphertexts) {
        let hits = files_containing(vault.data_dir(), secret);
        assert!(hits.is_empty(), "shredded bytes still in {hits:?}");
    }

    let server = vault.start().await;
    assert_all_absent(&server, "cust-gone").await;
    let mut account = server.client(ACCOUNT).await;
    let stays = get(&mut account, "cust-stays", "account", &["email"]).await;
    assert_eq!(stays[0].value, "alice@example.com");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shred_is_authorized_by_policy() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut recommender = server.client(RECOMMENDER).await;
    let err = recommender
        .shred_subject(shred_request("cust-1", "ticket-1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut dpo = server.client(DPO).await;
    let err = dpo
        .shred_subject(shred_request("cust-1", ""))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "the shipped policy wants a reason"
    );
    let mut account = server.client(ACCOUNT).await;
    assert_eq!(
        get(&mut account, "cust-1", "account", &["email"]).await[0].outcome(),
        Outcome::Value
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shredding_an_unknown_subject_succeeds_and_says_so() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut dpo = server.client(DPO).await;
    let outcome = dpo
        .shred_subject(shred_request("never-seen", "ticket-2"))
        .await
        .unwrap()
        .into_inner();
    assert!(!outcome.existed);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_written_again_after_a_shred_gets_a_new_key() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut dpo = server.client(DPO).await;
    dpo.shred_subject(shred_request("cust-1", "ticket-3"))
        .await
        .unwrap();
    let mut account = server.client(ACCOUNT).await;
    account
        .put_fields(put_request(
            "cust-1",
            "account",
            &[("email", "again@example.com")],
        ))
        .await
        .unwrap();
    let results = get(&mut account, "cust-1", "account", &["email", "phone"]).await;
    assert_eq!(results[0].value, "again@example.com");
    assert_eq!(results[1].outcome(), Outcome::Absent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_who_returns_after_a_shred_keeps_the_new_data_across_restarts() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(&server, "cust-42", &[("email", "old@example.com")]).await;
    let mut dpo = server.client(DPO).await;
    dpo.shred_subject(shred_request("cust-42", "ticket-1"))
        .await
        .unwrap();
    put_account(&server, "cust-42", &[("email", "new@example.com")]).await;
    let mut account = server.client(ACCOUNT).await;
    let value = |r: Vec<pb::FieldResult>| summary(&r)[0].clone();
    assert_eq!(
        value(get(&mut account, "cust-42", "account", &["email"]).await),
        ("email".into(), Outcome::Value, "new@example.com".into())
    );
    server.stop().await;

    // The deletion ledger names cust-42's sid; replay at start must spare what came after it.
    for _ in 0..2 {
        let server = vault.start().await;
        let mut account = server.client(ACCOUNT).await;
        assert_eq!(
            value(get(&mut account, "cust-42", "account", &["email"]).await),
            ("email".into(), Outcome::Value, "new@example.com".into())
        );
        server.stop().await;
    }
}
