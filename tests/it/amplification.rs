//! Read amplification: a small request must not make a large response. Duplicate fields and
//! subjects are refused, and the values one call returns are bounded by a per-call byte budget
//! (every subject of a batch together), all with a definite code and nothing returned.

use privault::api::pb;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_fields_and_subjects_are_refused() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut account = server.client(ACCOUNT).await;
    let err = account
        .get_fields(get_request(
            "cust-1",
            "account",
            &["email", "phone", "email"],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("`email`"), "{}", err.message());
    let err = account
        .delete_fields(pb::DeleteFieldsRequest {
            subject_id: "cust-1".into(),
            purpose: "account".into(),
            fields: vec!["email".into(), "email".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut recommender = server.client(RECOMMENDER).await;
    let err = recommender
        .batch_get_fields(pb::BatchGetFieldsRequest {
            subject_ids: vec!["cust-1".into(), "cust-2".into(), "cust-1".into()],
            purpose: "personalization".into(),
            fields: vec!["favorite_categories".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.message().contains("cust-"), "no subject id echoed");
    let err = recommender
        .batch_get_fields(pb::BatchGetFieldsRequest {
            subject_ids: vec!["cust-1".into()],
            purpose: "personalization".into(),
            fields: vec!["favorite_categories".into(), "favorite_categories".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // Nothing changed: the email is still there.
    let results = get(&mut account, "cust-1", "account", &["email"]).await;
    assert_eq!(results[0].value, "alice@example.com");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_past_the_byte_budget_is_refused_whole() {
    let mut vault = TestVault::new();
    vault.config.limits.max_response_bytes = 256 * 1024;
    let server = vault.start().await;
    let big = "x".repeat(60 * 1024);
    for i in 0..6 {
        put_account(
            &server,
            &format!("cust-{i}"),
            &[("favorite_categories", big.as_str()), ("email", "a@b.c")],
        )
        .await;
    }
    let mut recommender = server.client(RECOMMENDER).await;
    // Four subjects: 240 KiB of values, within the budget (and read off the async runtime).
    let four = pb::BatchGetFieldsRequest {
        subject_ids: (0..4).map(|i| format!("cust-{i}")).collect(),
        purpose: "personalization".into(),
        fields: vec!["favorite_categories".into()],
    };
    let ok = recommender
        .batch_get_fields(four)
        .await
        .unwrap()
        .into_inner();
    assert!(ok.subjects.iter().all(|s| s.results[0].value == big));
    // Six: 360 KiB, past it. Nothing leaves, and the code says why.
    let six = pb::BatchGetFieldsRequest {
        subject_ids: (0..6).map(|i| format!("cust-{i}")).collect(),
        purpose: "personalization".into(),
        fields: vec!["favorite_categories".into()],
    };
    let err = recommender.batch_get_fields(six).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(!err.message().contains("xxxx"));
    // A single read within the budget still works; the refusal was audited.
    let results = get(
        &mut recommender,
        "cust-5",
        "personalization",
        &["favorite_categories"],
    )
    .await;
    assert_eq!(results[0].value, big);
    let store = vault.store_view();
    let outcomes: Vec<String> = audit_views(&store)
        .into_iter()
        .filter(|r| r.outcome == "resource_exhausted")
        .map(|r| r.outcome)
        .collect();
    assert_eq!(outcomes.len(), 5, "one refused record per subject read");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_stays_within_the_byte_budget() {
    let mut vault = TestVault::new();
    vault.config.limits.max_response_bytes = 70 * 1024;
    let server = vault.start().await;
    let big = "x".repeat(60 * 1024);
    put_account(&server, "cust-1", &[("favorite_categories", big.as_str())]).await;
    let mut recommender = server.client(RECOMMENDER).await;
    for _ in 0..200 {
        get(
            &mut recommender,
            "cust-1",
            "personalization",
            &["favorite_categories"],
        )
        .await;
    }
    let mut dpo = server.client(DPO).await;
    let export = dpo
        .export_subject(pb::ExportSubjectRequest {
            subject_id: "cust-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(export.fields[0].value, big);
    // 200 reads do not fit beside the value: the history is cut, and says where it goes on.
    assert!(!export.history.is_empty() && export.history.len() < 201);
    assert_eq!(
        export.history_next_seq,
        export.history.last().unwrap().seq + 1
    );
    // Two such values do not fit at all.
    put_account(&server, "cust-1", &[("recent_views", big.as_str())]).await;
    let err = dpo
        .export_subject(pb::ExportSubjectRequest {
            subject_id: "cust-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    server.stop().await;
}
