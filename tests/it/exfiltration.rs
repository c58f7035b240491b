//! Exfiltration guards. Read budgets: a service reads at most N distinct subjects per window and
//! purpose; re-reading one it already read costs nothing; past the budget every field is DENIED
//! with reason `budget`, audited and counted. Canaries: a decoy whose read is served as usual and
//! audited as `canary`.

use privault::api::pb::key_admin_client::KeyAdminClient;
use privault::api::pb::{self, Outcome};
use tonic::Code;

use crate::support::*;

/// The shipped policies with the recommender's budget cut to 3 subjects an hour.
fn vault_with_budget() -> TestVault {
    let mut vault = TestVault::new();
    let policies = vault.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for f in [
        "schema.cedarschema",
        "shop.cedar",
        "guards.cedar",
        "admin.cedar",
    ] {
        std::fs::copy(shipped_policies().join(f), policies.join(f)).unwrap();
    }
    let catalog = std::fs::read_to_string(shipped_policies().join("catalog.toml"))
        .unwrap()
        .replace("read_budget = \"5000/1h\"", "read_budget = \"3/1h\"");
    assert!(catalog.contains("read_budget = \"3/1h\""));
    std::fs::write(policies.join("catalog.toml"), catalog).unwrap();
    vault.config.policies_dir = policies;
    vault
}

#[tokio::test(flavor = "multi_thread")]
async fn a_budget_is_crossed_by_distinct_subjects_and_not_by_rereading_one() {
    let vault = vault_with_budget();
    let server = vault.start().await;
    for i in 0..5 {
        put_account(
            &server,
            &format!("cust-{i}"),
            &[("favorite_categories", "tea")],
        )
        .await;
    }
    let mut recommender = server.client(RECOMMENDER).await;
    let mut read = async |subject: &str| {
        let r = &get(
            &mut recommender,
            subject,
            "personalization",
            &["favorite_categories"],
        )
        .await[0];
        (r.outcome(), r.reason.clone())
    };
    // Re-reading one subject a hundred times spends one subject of the budget.
    for _ in 0..100 {
        assert_eq!(read("cust-0").await.0, Outcome::Value);
    }
    assert_eq!(read("cust-1").await.0, Outcome::Value);
    assert_eq!(read("cust-2").await.0, Outcome::Value);
    let (outcome, reason) = read("cust-3").await;
    assert_eq!(outcome, Outcome::Denied);
    assert!(reason.starts_with("budget"), "{reason}");
    // The subjects already read stay readable; a subject never written is refused too.
    assert_eq!(read("cust-1").await.0, Outcome::Value);
    assert_eq!(read("nobody").await.0, Outcome::Denied);
    // A batch past the budget: each new subject refused on its own.
    let batch = recommender
        .batch_get_fields(pb::BatchGetFieldsRequest {
            subject_ids: vec!["cust-2".into(), "cust-4".into()],
            purpose: "personalization".into(),
            fields: vec!["favorite_categories".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.subjects[0].results[0].outcome(), Outcome::Value);
    assert_eq!(batch.subjects[1].results[0].outcome(), Outcome::Denied);
    // Other services have budgets of their own (the account service has none).
    let mut account = server.client(ACCOUNT).await;
    let r = get(&mut account, "cust-4", "account", &["favorite_categories"]).await;
    assert_eq!(r[0].outcome(), Outcome::Value);

    let mut auditor = server.auditor(AUDITOR).await;
    let (records, _) = audit_query(
        &mut auditor,
        pb::AuditQueryRequest {
            subject_id: "cust-3".into(),
            action: "read".into(),
            ..Default::default()
        },
    )
    .await;
    let refused = records.last().unwrap();
    assert_eq!(refused.fields[0].outcome, "budget");
    assert!(refused.fields[0].policy_ids.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_read_is_served_and_raises_the_alarm_in_the_audit_log() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(
        &server,
        "decoy-1",
        &[("favorite_categories", "rare orchids")],
    )
    .await;
    put_account(&server, "cust-1", &[("favorite_categories", "tea")]).await;
    let mut keys = KeyAdminClient::with_interceptor(
        server.channel().await,
        As::header(Some("Operator::\"sec-lead\"")),
    );
    keys.add_canary(pb::AddCanaryRequest {
        subject_id: "decoy-1".into(),
    })
    .await
    .unwrap();
    // Only key managers plant canaries.
    let mut recommender_keys =
        KeyAdminClient::with_interceptor(server.channel().await, As::header(Some(RECOMMENDER)));
    let refused = recommender_keys
        .add_canary(pb::AddCanaryRequest {
            subject_id: "cust-1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);

    let mut recommender = server.client(RECOMMENDER).await;
    for subject in ["decoy-1", "cust-1"] {
        let r = get(
            &mut recommender,
            subject,
            "personalization",
            &["favorite_categories"],
        )
        .await;
        assert_eq!(
            r[0].outcome(),
            Outcome::Value,
            "a canary is served like anyone"
        );
    }
    let mut auditor = server.auditor(AUDITOR).await;
    let outcome = async |auditor: &mut AuditorClient, subject: &str| {
        let (records, _) = audit_query(
            auditor,
            pb::AuditQueryRequest {
                subject_id: subject.into(),
                action: "read".into(),
                ..Default::default()
            },
        )
        .await;
        records.last().unwrap().outcome.clone()
    };
    assert_eq!(outcome(&mut auditor, "decoy-1").await, "canary");
    assert_eq!(outcome(&mut auditor, "cust-1").await, "ok");
    // The mark survives a restart (it is stored with the keys).
    server.stop().await;
    let server = vault.start().await;
    let mut recommender = server.client(RECOMMENDER).await;
    get(
        &mut recommender,
        "decoy-1",
        "personalization",
        &["favorite_categories"],
    )
    .await;
    let mut auditor = server.auditor(AUDITOR).await;
    assert_eq!(outcome(&mut auditor, "decoy-1").await, "canary");
    server.stop().await;
}
