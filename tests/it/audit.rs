//! The first cut of the audit log: one chained record per call, naming the subject only by its
//! audit pseudonym and never holding a value.

use privault::audit::{RecordView, verify};

use crate::support::*;

fn records(vault: &TestVault) -> Vec<RecordView> {
    let store = vault.store();
    verify(&store).unwrap();
    audit_views(&store).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_leaves_one_chained_record_without_values_or_ids() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-audit-1").await;
    let mut support = server.client(SUPPORT).await;
    get(
        &mut support,
        "cust-audit-1",
        "support",
        &["email", "full_name"],
    )
    .await;
    let mut recommender = server.client(RECOMMENDER).await;
    get(
        &mut recommender,
        "cust-audit-1",
        "personalization",
        &["email"],
    )
    .await;
    let _ = recommender
        .put_fields(put_request(
            "cust-audit-1",
            "personalization",
            &[("email", "evil@example.com")],
        ))
        .await
        .unwrap_err();
    let _ = recommender
        .get_fields(get_request(
            "cust-audit-1",
            "personalization",
            &["shoe_size"],
        ))
        .await
        .unwrap_err();
    server.stop().await;

    let mut records = records(&vault);
    assert_eq!(
        records.remove(0).action,
        "policy_load",
        "the first record is the policy set's activation"
    );
    let summary: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r.principal.as_str(), r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (ACCOUNT, "write", "ok"),
            (SUPPORT, "read", "ok"),
            (RECOMMENDER, "read", "ok"),
            (RECOMMENDER, "write", "denied"),
            (RECOMMENDER, "read", "invalid_argument"),
        ]
    );
    let pseudonym = records[0].subject.clone().unwrap();
    assert!(
        records
            .iter()
            .all(|r| r.subject.as_deref() == Some(pseudonym.as_str()))
    );
    let support_fields: Vec<(&str, &str)> = records[1]
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.outcome.as_str()))
        .collect();
    assert_eq!(
        support_fields,
        vec![("email", "masked"), ("full_name", "value")]
    );
    assert_eq!(
        records[1].fields[0].policy_ids,
        vec!["support-masked".to_owned()]
    );

    let text: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    for secret in [
        "cust-audit-1",
        "alice@example.com",
        "a***@example.com",
        "Alice Example",
        "evil@example.com",
    ] {
        assert!(!text.contains(secret), "audit log holds `{secret}`");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_chain_still_verifies_after_a_shred() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut dpo = server.client(DPO).await;
    dpo.shred_subject(privault::api::pb::ShredSubjectRequest {
        subject_id: "cust-1".into(),
        reason: "ticket-9".into(),
    })
    .await
    .unwrap();
    server.stop().await;
    let mut records = records(&vault);
    records.remove(0);
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].action, "shred");
    assert_eq!(
        records[1].subject, records[0].subject,
        "the shred record names the pseudonym it destroys"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_refused_at_the_edge_for_bad_syntax_is_audited() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut checkout = server.client(CHECKOUT).await;
    let err = checkout
        .get_fields(get_request("", "fulfillment", &["email"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = checkout
        .get_fields(get_request("cust-1", "Not A Purpose", &["email"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    server.stop().await;
    let store = vault.store();
    let refused: Vec<privault::audit::RecordView> = audit_views(&store)
        .into_iter()
        .filter(|r: &privault::audit::RecordView| r.outcome == "invalid_argument")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused
            .iter()
            .all(|r| r.action == "read" && r.principal == CHECKOUT && r.subject.is_none())
    );
}
