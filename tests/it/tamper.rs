//! Ciphertexts are bound to their subject and field: moved anywhere else through RocksDB's own
//! API, they fail to open and the read is DATA_LOSS, never another customer's value.

use privault::store::{Batch, Cf, Store};
use tonic::Code;

use crate::support::*;

/// Runs `edit` on the stopped vault's database.
fn edit_db(vault: &TestVault, edit: impl FnOnce(&Store)) {
    let store = vault.store();
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

/// The shipped policies plus one that permits everything, as a stored policy version.
fn forged_policy_record(number: u64) -> Vec<u8> {
    let mut files = privault::policy::load_sources(&shipped_policies()).unwrap();
    files.policies.insert(
        "zz-forged.cedar".into(),
        "permit (principal, action, resource);".into(),
    );
    let record = privault::vault::PolicyRecord {
        number,
        hash: "forged".into(),
        created_ms: 0,
        author: "attacker".into(),
        comment: String::new(),
        source: "api".into(),
        files,
    };
    serde_json::to_vec(&record).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_version_written_into_db_without_the_keyring_is_refused() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-a").await;
    server.stop().await;

    // A forged version 99 made active, as anyone who can write `db/` could.
    edit_db(&vault, |store| {
        let mut batch = Batch::new();
        batch.put(
            Cf::Policies,
            99u64.to_be_bytes().to_vec(),
            forged_policy_record(99),
        );
        batch.put(
            Cf::Meta,
            b"policy_active".to_vec(),
            99u64.to_be_bytes().to_vec(),
        );
        store.write(&batch).unwrap();
    });
    let err = vault.open().unwrap_err().to_string();
    assert!(err.contains("policy"), "{err}");

    // The genuine active version, edited in place.
    let vault = TestVault::new();
    let server = vault.start().await;
    server.stop().await;
    edit_db(&vault, |store| {
        let (key, mut value) = store.last(Cf::Policies).unwrap().unwrap();
        let at = value.len() - 10;
        value[at] ^= 1;
        let mut batch = Batch::new();
        batch.put(Cf::Policies, key, value);
        store.write(&batch).unwrap();
    });
    let err = vault.open().unwrap_err().to_string();
    assert!(err.contains("authentication"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retention_extended_by_editing_db_fails_the_integrity_check() {
    use privault::store::records::FieldRecord;
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-a").await;
    server.stop().await;

    // last_ip is kept 30 days: someone moves its expiry a year out.
    edit_db(&vault, |store| {
        let (key, value) = entry_named(store, b"last_ip").remove(0);
        let mut record = FieldRecord::decode(&value).unwrap();
        record.expires_ms = record.expires_ms.map(|e| e + 365 * 86_400_000);
        let mut batch = Batch::new();
        batch.put(Cf::Fields, key, record.encode());
        store.write(&batch).unwrap();
    });
    let server = vault.start().await;
    let mut fraud = server.client(FRAUD).await;
    let err = fraud
        .get_fields(get_request("cust-a", "fraud", &["last_ip"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consent_flipped_or_copied_in_db_is_refused() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-a").await;
    put_profile(&server, "cust-b").await;
    let mut account = server.client(ACCOUNT).await;
    for (subject, granted) in [("cust-a", true), ("cust-b", false)] {
        account
            .set_consent(privault::api::pb::SetConsentRequest {
                subject_id: subject.into(),
                purpose: "marketing".into(),
                granted,
                source: 0,
            })
            .await
            .unwrap();
    }
    server.stop().await;

    // cust-a's grant copied over cust-b's withdrawal.
    edit_db(&vault, |store| {
        let consents = store.scan_prefix(Cf::Consent, &[]).unwrap();
        assert_eq!(consents.len(), 2);
        let mut batch = Batch::new();
        batch.put(Cf::Consent, consents[0].0.clone(), consents[1].1.clone());
        batch.put(Cf::Consent, consents[1].0.clone(), consents[0].1.clone());
        store.write(&batch).unwrap();
    });
    let server = vault.start().await;
    let mut mailer = server.client(MAILER).await;
    for subject in ["cust-a", "cust-b"] {
        let err = mailer
            .get_fields(get_request(subject, "email_marketing", &["email"]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    }
    server.stop().await;
}
