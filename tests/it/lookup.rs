//! Lookup by value through the blind index: found under any spelling, authorized like a read of
//! the field subject by subject, gone with rectification, deletion and shred, and never on disk in
//! clear.

use privault::api::pb;
use privault::store::Cf;
use tonic::Code;

use crate::support::*;

fn find_request(field: &str, value: &str, purpose: &str) -> pb::FindSubjectRequest {
    pb::FindSubjectRequest {
        field: field.into(),
        value: value.into(),
        purpose: purpose.into(),
    }
}

async fn find(client: &mut Client, field: &str, value: &str, purpose: &str) -> Vec<String> {
    client
        .find_subject(find_request(field, value, purpose))
        .await
        .unwrap()
        .into_inner()
        .subject_ids
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subject_is_found_by_email_under_any_spelling_and_only_by_who_may_read_it() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(
        &server,
        "cust-1",
        &[("email", "Ada@Example.com"), ("phone", "+1 555 0100")],
    )
    .await;
    put_account(&server, "cust-2", &[("email", "bob@example.com")]).await;

    let mut account = server.client(ACCOUNT).await;
    assert_eq!(
        find(&mut account, "email", "  ada@EXAMPLE.com ", "account").await,
        vec!["cust-1"]
    );
    assert_eq!(
        find(&mut account, "phone", "+1 (555) 0100", "account").await,
        vec!["cust-1"]
    );
    assert!(
        find(&mut account, "email", "nobody@example.com", "account")
            .await
            .is_empty()
    );

    // Fraud may read contact data for fraud prevention, so it may look a customer up.
    let mut fraud = server.client(FRAUD).await;
    assert_eq!(
        find(&mut fraud, "email", "bob@example.com", "fraud").await,
        vec!["cust-2"]
    );

    // Support sees contact data only masked: a lookup would confirm the full value, so it is
    // refused, and refused the same way whether or not anyone holds the value.
    let mut support = server.client(SUPPORT).await;
    for value in ["bob@example.com", "nobody@example.com"] {
        let err = support
            .find_subject(find_request("email", value, "support"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    // The mailer may read an email only with the subject's consent to marketing.
    let mut mailer = server.client(MAILER).await;
    let err = mailer
        .find_subject(find_request("email", "bob@example.com", "email_marketing"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    account
        .set_consent(pb::SetConsentRequest {
            subject_id: "cust-2".into(),
            purpose: "marketing".into(),
            granted: true,
            source: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        find(&mut mailer, "email", "bob@example.com", "email_marketing").await,
        vec!["cust-2"]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_lookups_are_invalid_arguments() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    for (field, purpose) in [
        ("full_name", "account"), // declared, but not a lookup field
        ("shoe_size", "account"), // not in the catalog
        ("Email!", "account"),    // not a field name
        ("email", "astrology"),   // not a declared purpose
    ] {
        let err = account
            .find_subject(find_request(field, "x", purpose))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field} for {purpose}");
    }
    let err = server
        .anonymous()
        .await
        .find_subject(find_request("email", "x", "account"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rectification_deletion_and_shred_take_the_index_entry_with_them() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    put_account(
        &server,
        "cust-1",
        &[("email", "old@example.com"), ("phone", "+15550001")],
    )
    .await;
    assert_eq!(
        find(&mut account, "email", "old@example.com", "account").await,
        vec!["cust-1"]
    );

    // Rectification: the old value finds nobody, the new one finds the subject.
    put_account(&server, "cust-1", &[("email", "new@example.com")]).await;
    assert!(
        find(&mut account, "email", "old@example.com", "account")
            .await
            .is_empty()
    );
    assert_eq!(
        find(&mut account, "email", "new@example.com", "account").await,
        vec!["cust-1"]
    );

    // Deletion of the field.
    account
        .delete_fields(pb::DeleteFieldsRequest {
            subject_id: "cust-1".into(),
            purpose: "account".into(),
            fields: vec!["email".into()],
        })
        .await
        .unwrap();
    assert!(
        find(&mut account, "email", "new@example.com", "account")
            .await
            .is_empty()
    );
    assert_eq!(
        find(&mut account, "phone", "+15550001", "account").await,
        vec!["cust-1"]
    );

    // Shred: nothing of the subject is left in the index, nor its wrapped id.
    server
        .client(DPO)
        .await
        .shred_subject(pb::ShredSubjectRequest {
            subject_id: "cust-1".into(),
            reason: "ticket-7".into(),
        })
        .await
        .unwrap();
    assert!(
        find(&mut account, "phone", "+15550001", "account")
            .await
            .is_empty()
    );
    server.stop().await;

    let store = vault.store();
    assert!(store.scan_prefix(Cf::Lookup, &[]).unwrap().is_empty());
    assert!(store.scan_prefix(Cf::Keys, &[]).unwrap().is_empty());
    drop(store);
    for needle in ["cust-1", "old@example.com", "new@example.com", "+15550001"] {
        assert!(
            files_containing(vault.data_dir(), needle.as_bytes()).is_empty(),
            "`{needle}` is on disk in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lookup_is_in_the_found_subjects_access_history() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(&server, "cust-1", &[("email", "ada@example.com")]).await;
    let mut fraud = server.client(FRAUD).await;
    find(&mut fraud, "email", "ada@example.com", "fraud").await;
    let export = server
        .client(DPO)
        .await
        .export_subject(pb::ExportSubjectRequest {
            subject_id: "cust-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let lookup = export
        .history
        .iter()
        .find(|e| e.action == "find")
        .expect("the lookup is in the subject's history");
    assert_eq!(lookup.principal, FRAUD);
    assert_eq!(lookup.purpose, "fraud");
    assert_eq!(lookup.fields, vec!["email:found"]);
    server.stop().await;
}
