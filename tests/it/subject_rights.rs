//! Data-subject rights over gRPC: a complete export (fields, consents, access history) and batch
//! reads with an outcome per subject.

use privault::api::pb::{self, Outcome};
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn export_holds_every_field_consent_and_access() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    put_profile(&server, "cust-2").await;
    let mut account = server.client(ACCOUNT).await;
    account
        .set_consent(pb::SetConsentRequest {
            subject_id: "cust-1".into(),
            purpose: "marketing".into(),
            granted: true,
            source: 0,
        })
        .await
        .unwrap();
    let mut checkout = server.client(CHECKOUT).await;
    get(
        &mut checkout,
        "cust-1",
        "fulfillment",
        &["shipping_address"],
    )
    .await;
    let mut recommender = server.client(RECOMMENDER).await;
    get(&mut recommender, "cust-1", "personalization", &["email"]).await;

    let mut dpo = server.client(DPO).await;
    let export = |dpo: &mut Client, subject: &str| {
        let mut dpo = dpo.clone();
        let request = pb::ExportSubjectRequest {
            subject_id: subject.into(),
        };
        async move { dpo.export_subject(request).await }
    };
    let data = export(&mut dpo, "cust-1").await.unwrap().into_inner();
    let fields: Vec<(&str, &str)> = data
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.value.as_str()))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("email", "alice@example.com"),
            ("favorite_categories", "books,tea"),
            ("full_name", "Alice Example"),
            ("last_ip", "203.0.113.7"),
            ("payment_card", "4111111111111111"),
            ("phone", "+15551234567"),
            ("shipping_address", "1 Main St, Springfield"),
        ]
    );
    assert!(
        data.fields
            .iter()
            .find(|f| f.field == "last_ip")
            .unwrap()
            .expires
            .ends_with('Z')
    );
    assert_eq!(data.consents.len(), 1);
    assert_eq!(data.consents[0].purpose, "marketing");
    let history: Vec<(&str, &str, &str)> = data
        .history
        .iter()
        .map(|h| (h.principal.as_str(), h.action.as_str(), h.outcome.as_str()))
        .collect();
    assert_eq!(
        history,
        vec![
            (ACCOUNT, "write", "ok"),
            (ACCOUNT, "consent_write", "ok"),
            (CHECKOUT, "read", "ok"),
            (RECOMMENDER, "read", "ok"),
        ]
    );
    assert_eq!(data.history[3].fields, vec!["email:denied".to_owned()]);

    let out = vault.dir.path().join("cust-1.json");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_privault"))
        .args(["export", "--subject-id", "cust-1", "--as", DPO, "--server"])
        .arg(format!("http://{}", server.addr))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(json["fields"].as_array().unwrap().len(), 7);
    assert_eq!(json["consents"][0]["purpose"], "marketing");
    assert!(json["access_history"].as_array().unwrap().len() >= 4);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let err = export(&mut account, "cust-1").await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    dpo.shred_subject(pb::ShredSubjectRequest {
        subject_id: "cust-1".into(),
        reason: "erasure #3".into(),
    })
    .await
    .unwrap();
    let after = export(&mut dpo, "cust-1").await.unwrap().into_inner();
    assert!(after.fields.is_empty() && after.consents.is_empty() && after.history.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_reads_decide_each_subject_on_its_own() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut account = server.client(ACCOUNT).await;
    account
        .put_fields(put_request(
            "cust-2",
            "account",
            &[("favorite_categories", "garden")],
        ))
        .await
        .unwrap();
    let mut recommender = server.client(RECOMMENDER).await;
    let response = recommender
        .batch_get_fields(pb::BatchGetFieldsRequest {
            subject_ids: vec!["cust-1".into(), "cust-2".into(), "cust-404".into()],
            purpose: "personalization".into(),
            fields: vec![
                "favorite_categories".into(),
                "recent_views".into(),
                "email".into(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<(String, Vec<Outcome>)> = response
        .subjects
        .iter()
        .map(|s| {
            (
                s.subject_id.clone(),
                s.results.iter().map(|r| r.outcome()).collect(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (
                "cust-1".into(),
                vec![Outcome::Value, Outcome::Absent, Outcome::Denied]
            ),
            (
                "cust-2".into(),
                vec![Outcome::Value, Outcome::Absent, Outcome::Denied]
            ),
            (
                "cust-404".into(),
                vec![Outcome::Absent, Outcome::Absent, Outcome::Denied]
            ),
        ]
    );
    assert_eq!(response.subjects[1].results[0].value, "garden");

    let too_many = pb::BatchGetFieldsRequest {
        subject_ids: (0..101).map(|i| format!("cust-{i}")).collect(),
        purpose: "personalization".into(),
        fields: vec!["favorite_categories".into()],
    };
    let err = recommender.batch_get_fields(too_many).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    server.stop().await;
}
