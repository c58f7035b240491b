//! Derived views (`birth_date.age_band`): decided by Cedar as resources of their own, returning
//! only the derived value, read-only, audited and exported under their own names.

use privault::api::pb::{self, Outcome};
use tonic::Code;

use crate::support::*;

const RECOMMENDER_READ: [&str; 5] = [
    "birth_date.age_band",
    "birth_date",
    "birth_date.birth_year",
    "email.email_domain",
    "favorite_categories",
];

async fn put_views_profile(server: &TestServer, subject: &str) {
    put_account(
        server,
        subject,
        &[
            // Born in 1960: 65+ on any day this test can run.
            ("birth_date", "1960-01-01"),
            ("email", "Ada.L@Example.COM"),
            ("postal_code", "75011"),
            ("favorite_categories", "books,tea"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recommender_gets_the_age_band_and_never_the_birth_date() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_views_profile(&server, "cust-1").await;

    let mut recommender = server.client(RECOMMENDER).await;
    let results = get(
        &mut recommender,
        "cust-1",
        "personalization",
        &RECOMMENDER_READ,
    )
    .await;
    assert_eq!(
        summary(&results),
        vec![
            ("birth_date.age_band".into(), Outcome::Value, "65+".into()),
            ("birth_date".into(), Outcome::Denied, String::new()),
            (
                "birth_date.birth_year".into(),
                Outcome::Denied,
                String::new()
            ),
            ("email.email_domain".into(), Outcome::Denied, String::new()),
            (
                "favorite_categories".into(),
                Outcome::Value,
                "books,tea".into()
            ),
        ]
    );
    assert_eq!(results[0].policy_ids, vec!["recommender-age-band"]);
    assert_eq!(
        results[1].policy_ids,
        vec!["no-birth-date-for-personalization"]
    );

    // The account service may read every view of its own customer's fields.
    let mut account = server.client(ACCOUNT).await;
    let results = get(
        &mut account,
        "cust-1",
        "account",
        &[
            "birth_date.birth_year",
            "email.email_domain",
            "postal_code.postal_prefix",
            "birth_date",
        ],
    )
    .await;
    assert_eq!(
        summary(&results),
        vec![
            (
                "birth_date.birth_year".into(),
                Outcome::Value,
                "1960".into()
            ),
            (
                "email.email_domain".into(),
                Outcome::Value,
                "example.com".into()
            ),
            (
                "postal_code.postal_prefix".into(),
                Outcome::Value,
                "750".into()
            ),
            ("birth_date".into(), Outcome::Value, "1960-01-01".into()),
        ]
    );

    // A view of a field never written is absent, like the field.
    let results = get(
        &mut recommender,
        "cust-2",
        "personalization",
        &["birth_date.age_band"],
    )
    .await;
    assert_eq!(results[0].outcome(), Outcome::Absent);

    // The batch read decides views the same way.
    let batch = recommender
        .batch_get_fields(pb::BatchGetFieldsRequest {
            subject_ids: vec!["cust-1".into(), "cust-2".into()],
            purpose: "personalization".into(),
            fields: vec!["birth_date.age_band".into(), "birth_date".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let first = &batch.subjects[0].results;
    assert_eq!(
        summary(first)[0],
        ("birth_date.age_band".into(), Outcome::Value, "65+".into())
    );
    assert_eq!(first[1].outcome(), Outcome::Denied);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn views_are_read_only_and_only_declared_views_and_dates_are_accepted() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_views_profile(&server, "cust-1").await;
    let mut account = server.client(ACCOUNT).await;

    let refused = |status: tonic::Status, needle: &str| {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(needle), "{}", status.message());
        assert!(!status.message().contains("1960"), "no value in errors");
    };
    let write = account
        .put_fields(put_request(
            "cust-1",
            "account",
            &[("birth_date.age_band", "18-24")],
        ))
        .await
        .unwrap_err();
    refused(write, "is a view of `birth_date`");
    let delete = account
        .delete_fields(pb::DeleteFieldsRequest {
            subject_id: "cust-1".into(),
            purpose: "account".into(),
            fields: vec!["birth_date.age_band".into()],
        })
        .await
        .unwrap_err();
    refused(delete, "cannot be written, deleted or looked up");
    let unknown = account
        .get_fields(get_request("cust-1", "account", &["birth_date.zodiac"]))
        .await
        .unwrap_err();
    refused(unknown, "unknown view `zodiac` of field `birth_date`");
    let nested = account
        .get_fields(get_request("cust-1", "account", &["birth_date.age_band.x"]))
        .await
        .unwrap_err();
    assert_eq!(nested.code(), Code::InvalidArgument);
    // A field its views derive dates from takes only dates, and the refusal changes nothing.
    let not_a_date = account
        .put_fields(put_request(
            "cust-1",
            "account",
            &[("birth_date", "17 May 1990")],
        ))
        .await
        .unwrap_err();
    refused(not_a_date, "is not a date (YYYY-MM-DD)");
    let results = get(&mut account, "cust-1", "account", &["birth_date"]).await;
    assert_eq!(results[0].value, "1960-01-01");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn views_are_audited_and_exported_under_their_own_names() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_views_profile(&server, "cust-1").await;
    let mut recommender = server.client(RECOMMENDER).await;
    get(
        &mut recommender,
        "cust-1",
        "personalization",
        &RECOMMENDER_READ,
    )
    .await;

    let mut auditor = server.auditor(AUDITOR).await;
    let (records, _) = audit_query(
        &mut auditor,
        pb::AuditQueryRequest {
            subject_id: "cust-1".into(),
            action: "read".into(),
            ..Default::default()
        },
    )
    .await;
    let read = records.last().unwrap();
    let outcomes: Vec<(&str, &str)> = read
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("birth_date.age_band", "value"),
            ("birth_date", "denied"),
            ("birth_date.birth_year", "denied"),
            ("email.email_domain", "denied"),
            ("favorite_categories", "value"),
        ]
    );

    let export = server
        .client(DPO)
        .await
        .export_subject(pb::ExportSubjectRequest {
            subject_id: "cust-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let views = |field: &str| -> Vec<(String, String)> {
        export
            .fields
            .iter()
            .find(|f| f.field == field)
            .unwrap()
            .views
            .iter()
            .map(|v| (v.view.clone(), v.value.clone()))
            .collect()
    };
    assert_eq!(
        views("birth_date"),
        vec![
            ("birth_date.age_band".into(), "65+".into()),
            ("birth_date.birth_year".into(), "1960".into()),
        ]
    );
    assert_eq!(
        views("email"),
        vec![("email.email_domain".into(), "example.com".into())]
    );
    assert!(views("favorite_categories").is_empty());
    server.stop().await;
}
