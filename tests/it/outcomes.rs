//! Every read outcome of the contract, decided field by field for the shipped shop policies.

use privault::api::pb::Outcome;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn read_allowed_for_its_purpose_returns_values_in_request_order() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut checkout = server.client(CHECKOUT).await;
    let results = get(
        &mut checkout,
        "cust-1",
        "fulfillment",
        &["shipping_address", "email"],
    )
    .await;
    assert_eq!(
        summary(&results),
        vec![
            (
                "shipping_address".into(),
                Outcome::Value,
                "1 Main St, Springfield".into()
            ),
            ("email".into(), Outcome::Value, "alice@example.com".into()),
        ]
    );
    assert_eq!(
        results[0].policy_ids,
        vec!["checkout-fulfillment".to_owned()]
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn same_field_other_purpose_is_decided_differently() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut checkout = server.client(CHECKOUT).await;
    // Checkout is registered for fulfillment only: another purpose is refused by the guard.
    let results = get(&mut checkout, "cust-1", "personalization", &["email"]).await;
    assert_eq!(results[0].outcome(), Outcome::Denied);
    assert!(results[0].value.is_empty());
    assert_eq!(results[0].policy_ids, vec!["registered-purposes-only"]);
    // For its own purpose, a field no policy grants it is a default deny, naming no policy.
    let results = get(
        &mut checkout,
        "cust-1",
        "fulfillment",
        &["favorite_categories"],
    )
    .await;
    assert_eq!(results[0].outcome(), Outcome::Denied);
    assert!(
        results[0].policy_ids.is_empty(),
        "default deny names no policy"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn support_sees_masked_values_by_each_mask_rule() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut support = server.client(SUPPORT).await;
    let results = get(
        &mut support,
        "cust-1",
        "support",
        &[
            "email",
            "phone",
            "payment_card",
            "shipping_address",
            "full_name",
        ],
    )
    .await;
    assert_eq!(
        summary(&results),
        vec![
            ("email".into(), Outcome::Masked, "a***@example.com".into()),
            ("phone".into(), Outcome::Masked, "+*********67".into()),
            (
                "payment_card".into(),
                Outcome::Masked,
                "************1111".into()
            ),
            (
                "shipping_address".into(),
                Outcome::Masked,
                "[redacted]".into()
            ),
            ("full_name".into(), Outcome::Value, "Alice Example".into()),
        ]
    );
    assert_eq!(results[0].policy_ids, vec!["support-masked".to_owned()]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forbid_wins_and_names_the_forbidding_policy() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    // The checkout service may read payment data for fulfillment, but never for personalization.
    let mut checkout = server.client(CHECKOUT).await;
    let results = get(&mut checkout, "cust-1", "fulfillment", &["payment_card"]).await;
    assert_eq!(results[0].outcome(), Outcome::Value);
    let mut recommender = server.client(RECOMMENDER).await;
    let results = get(
        &mut recommender,
        "cust-1",
        "personalization",
        &["payment_card", "favorite_categories"],
    )
    .await;
    assert_eq!(results[0].outcome(), Outcome::Denied);
    assert_eq!(
        results[0].policy_ids,
        vec!["no-payment-for-marketing".to_owned()]
    );
    assert_eq!(results[1].outcome(), Outcome::Value);
    assert_eq!(results[1].value, "books,tea");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mailer_needs_consent_which_no_subject_has_yet() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut mailer = server.client(MAILER).await;
    let results = get(&mut mailer, "cust-1", "email_marketing", &["email"]).await;
    assert_eq!(results[0].outcome(), Outcome::Denied);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_but_unstored_is_absent_and_denied_hides_existence() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut fraud = server.client(FRAUD).await;
    let stored = get(&mut fraud, "cust-1", "fraud", &["last_ip", "email"]).await;
    assert_eq!(stored[0].outcome(), Outcome::Value);
    let missing = get(&mut fraud, "cust-404", "fraud", &["last_ip"]).await;
    assert_eq!(missing[0].outcome(), Outcome::Absent);
    assert_eq!(missing[0].policy_ids, vec!["fraud-screening".to_owned()]);
    // A denied read looks the same whether or not a value exists.
    let mut recommender = server.client(RECOMMENDER).await;
    let a = get(&mut recommender, "cust-1", "personalization", &["email"]).await;
    let b = get(&mut recommender, "cust-404", "personalization", &["email"]).await;
    assert_eq!(a, b);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_invalid_argument() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut checkout = server.client(CHECKOUT).await;
    let cases = [
        get_request("cust-1", "fulfillment", &["shoe_size"]),
        get_request("cust-1", "world_domination", &["email"]),
        get_request("cust-1", "Fulfillment", &["email"]),
        get_request("", "fulfillment", &["email"]),
        get_request(&"x".repeat(300), "fulfillment", &["email"]),
        get_request("cust-1", "fulfillment", &[]),
        get_request("cust-1", "fulfillment", &["EMAIL"]),
    ];
    for request in cases {
        let err = checkout.get_fields(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let err = checkout
        .get_fields(get_request("cust-1", "fulfillment", &["shoe_size"]))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("unknown field `shoe_size`"),
        "{}",
        err.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn callers_without_a_valid_principal_are_unauthenticated() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut anonymous = server.anonymous().await;
    let err = anonymous
        .get_fields(get_request("cust-1", "fulfillment", &["email"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let mut customer = server.client("Customer::\"mallory\"").await;
    let err = customer
        .get_fields(get_request("cust-1", "fulfillment", &["email"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    server.stop().await;
}
