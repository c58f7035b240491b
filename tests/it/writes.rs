//! Writes and deletes: all-or-nothing under policy, bounded, and durable.

use privault::api::pb::{self, Outcome};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn put_with_any_denied_field_writes_nothing() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut recommender = server.client(RECOMMENDER).await;
    let err = recommender
        .put_fields(put_request(
            "cust-1",
            "personalization",
            &[
                ("favorite_categories", "garden"),
                ("email", "x@example.com"),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("`email`"), "{}", err.message());
    assert!(!err.message().contains("x@example.com"));
    // The same, structured: google.rpc.ErrorInfo and a BadRequest violation per denied field.
    {
        use tonic_types::StatusExt;
        let details = err.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, privault::api::POLICY_DENIED);
        assert_eq!(info.domain, privault::api::ERROR_DOMAIN);
        assert_eq!(info.metadata["action"], "write");
        assert_eq!(info.metadata["deniedFields"], "email");
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "email");
        assert!(!format!("{details:?}").contains("x@example.com"));
    }
    let results = get(
        &mut recommender,
        "cust-1",
        "personalization",
        &["favorite_categories"],
    )
    .await;
    assert_eq!(results[0].outcome(), Outcome::Absent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_values_and_unknown_fields_change_nothing() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut account = server.client(ACCOUNT).await;
    let big = "x".repeat(64 * 1024 + 1);
    for request in [
        put_request(
            "cust-1",
            "account",
            &[("email", "new@example.com"), ("full_name", &big)],
        ),
        put_request(
            "cust-1",
            "account",
            &[("email", "new@example.com"), ("shoe_size", "42")],
        ),
    ] {
        let err = account.put_fields(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let results = get(&mut account, "cust-1", "account", &["email"]).await;
    assert_eq!(results[0].value, "alice@example.com");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overwrite_replaces_and_delete_removes() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut account = server.client(ACCOUNT).await;
    account
        .put_fields(put_request(
            "cust-1",
            "account",
            &[("email", "alice@new.example")],
        ))
        .await
        .unwrap();
    assert_eq!(
        get(&mut account, "cust-1", "account", &["email"]).await[0].value,
        "alice@new.example"
    );
    let deleted = account
        .delete_fields(pb::DeleteFieldsRequest {
            subject_id: "cust-1".into(),
            purpose: "account".into(),
            fields: vec!["email".into(), "birth_date".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .deleted;
    assert_eq!(deleted, vec!["email".to_owned()]);
    let results = get(&mut account, "cust-1", "account", &["email", "phone"]).await;
    assert_eq!(results[0].outcome(), Outcome::Absent);
    assert_eq!(results[1].outcome(), Outcome::Value);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_needs_the_delete_action() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut checkout = server.client(CHECKOUT).await;
    let err = checkout
        .delete_fields(pb::DeleteFieldsRequest {
            subject_id: "cust-1".into(),
            purpose: "fulfillment".into(),
            fields: vec!["email".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        get(&mut checkout, "cust-1", "fulfillment", &["email"]).await[0].outcome(),
        Outcome::Value
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_writes_of_one_subject_share_one_key() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut account = server.client(ACCOUNT).await;
        tasks.push(tokio::spawn(async move {
            let field = if i % 2 == 0 { "email" } else { "phone" };
            account
                .put_fields(put_request(
                    "cust-race",
                    "account",
                    &[(field, &format!("v{i}"))],
                ))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut account = server.client(ACCOUNT).await;
    let results = get(&mut account, "cust-race", "account", &["email", "phone"]).await;
    assert!(
        results.iter().all(|r| r.outcome() == Outcome::Value),
        "{results:?}"
    );
    server.stop().await;
}
