//! Policy administration over gRPC: apply, rollback, refusals, dry-run, atomic swaps, and the
//! authorization and audit of every admin call.

use privault::api::pb::{self, Outcome};
use tonic::Code;

use crate::support::*;

/// The shipped files without the policy `id` (written in shop.cedar).
pub(crate) fn without(id: &str) -> pb::PolicyFiles {
    let mut files = shipped_files();
    let shop = files.policies.get_mut("shop.cedar").unwrap();
    let start = shop.find(&format!("@id(\"{id}\")")).unwrap();
    let end = start + shop[start..].find("};").unwrap() + 2;
    shop.replace_range(start..end, "");
    files
}

/// The shipped files without the recommender's permit.
fn without_recommender() -> pb::PolicyFiles {
    without("recommender-personalization")
}

/// The shipped files without checkout's permit: it then reads nothing.
fn without_checkout() -> pb::PolicyFiles {
    without("checkout-fulfillment")
}

pub(crate) async fn active_version(server: &TestServer) -> u64 {
    let mut admin = server.admin(ALICE).await;
    admin
        .get_active_policies(pb::GetActivePoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
        .version
}

async fn apply(
    server: &TestServer,
    files: pb::PolicyFiles,
    base: u64,
) -> Result<u64, tonic::Status> {
    let mut admin = server.admin(ALICE).await;
    admin
        .apply_policies(pb::ApplyPoliciesRequest {
            files: Some(files),
            base_version: base,
            comment: "test change".into(),
        })
        .await
        .map(|r| r.into_inner().version.unwrap().version)
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_swaps_the_set_and_rollback_restores_it() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    assert_eq!(active_version(&server).await, 1);
    let mut recommender = server.client(RECOMMENDER).await;
    let read = |r: Vec<pb::FieldResult>| r[0].outcome();
    assert_eq!(
        read(
            get(
                &mut recommender,
                "cust-1",
                "personalization",
                &["favorite_categories"]
            )
            .await
        ),
        Outcome::Value
    );

    assert_eq!(apply(&server, without_recommender(), 1).await.unwrap(), 2);
    assert_eq!(
        read(
            get(
                &mut recommender,
                "cust-1",
                "personalization",
                &["favorite_categories"]
            )
            .await
        ),
        Outcome::Denied
    );

    let mut alice = server.admin(ALICE).await;
    let rolled = alice
        .rollback_policies(pb::RollbackPoliciesRequest {
            to_version: 1,
            base_version: 2,
            comment: "undo".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap();
    assert_eq!(rolled.version, 3);
    assert_eq!(rolled.source, "rollback");
    assert_eq!(
        read(
            get(
                &mut recommender,
                "cust-1",
                "personalization",
                &["favorite_categories"]
            )
            .await
        ),
        Outcome::Value
    );

    let versions = alice
        .list_policy_versions(pb::ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions;
    let listed: Vec<(u64, &str, bool)> = versions
        .iter()
        .map(|v| (v.version, v.author.as_str(), v.active))
        .collect();
    assert_eq!(
        listed,
        vec![
            (3, ALICE, true),
            (2, ALICE, false),
            (1, "policies-dir", false)
        ]
    );
    assert_eq!(
        versions[0].hash, versions[2].hash,
        "a rollback restores the very same files"
    );
    server.stop().await;

    // An applied version outlives a restart while the directory is unchanged.
    let server = vault.start().await;
    assert_eq!(active_version(&server).await, 3);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_or_stale_applies_are_refused_and_change_nothing() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut broken = shipped_files();
    broken.policies.insert(
        "broken.cedar".into(),
        "permit (principal, action, resource)\nwhen { context.nope };\n".into(),
    );
    let err = apply(&server, broken, 1).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("broken.cedar:2:"),
        "{}",
        err.message()
    );

    assert_eq!(apply(&server, without_recommender(), 1).await.unwrap(), 2);
    let err = apply(&server, shipped_files(), 1).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(active_version(&server).await, 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_lists_exactly_the_decisions_that_would_change() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut recommender = server.client(RECOMMENDER).await;
    get(
        &mut recommender,
        "cust-1",
        "personalization",
        &["favorite_categories", "email"],
    )
    .await;
    let mut checkout = server.client(CHECKOUT).await;
    get(&mut checkout, "cust-1", "fulfillment", &["email"]).await;
    let mut support = server.client(SUPPORT).await;
    get(&mut support, "cust-1", "support", &["email"]).await;

    let mut auditor = server.admin(AUDITOR).await;
    let run = auditor
        .dry_run_policies(pb::DryRunPoliciesRequest {
            files: Some(without_recommender()),
            last: 100,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.examined, 4);
    let changes: Vec<(&str, &str, &str, &str, &str)> = run
        .changes
        .iter()
        .map(|c| {
            (
                c.principal.as_str(),
                c.field.as_str(),
                c.purpose.as_str(),
                c.before.as_str(),
                c.after.as_str(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![(
            RECOMMENDER,
            "favorite_categories",
            "personalization",
            "allowed",
            "denied"
        )]
    );
    assert_eq!(
        active_version(&server).await,
        1,
        "a dry run applies nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_readers_never_see_a_mixed_policy_set() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut checkout = server.client(CHECKOUT).await;
        let stop = stop.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = get(
                    &mut checkout,
                    "cust-1",
                    "fulfillment",
                    &["email", "phone", "shipping_address"],
                )
                .await;
                let outcomes: Vec<Outcome> = r.iter().map(|f| f.outcome()).collect();
                assert!(
                    outcomes.iter().all(|o| *o == outcomes[0]),
                    "mixed set: {outcomes:?}"
                );
                seen.insert(outcomes[0] as i32);
            }
            seen
        }));
    }
    let mut base = 1;
    for i in 0..10 {
        let files = if i % 2 == 0 {
            without_checkout()
        } else {
            shipped_files()
        };
        base = apply(&server, files, base).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = std::collections::BTreeSet::new();
    for r in readers {
        seen.extend(r.await.unwrap());
    }
    assert_eq!(seen.len(), 2, "readers saw both versions");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unauthorized_admin_calls_are_denied_and_audited() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let mut checkout = server.admin(CHECKOUT).await;
    let err = checkout
        .get_active_policies(pb::GetActivePoliciesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut auditor = server.admin(AUDITOR).await;
    let err = auditor
        .apply_policies(pb::ApplyPoliciesRequest {
            files: Some(without_recommender()),
            base_version: 1,
            comment: "not mine to change".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let explained = auditor
        .explain_decision(pb::ExplainDecisionRequest {
            principal: SUPPORT.into(),
            action: "read_masked".into(),
            field: "email".into(),
            purpose: "support".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(explained.allowed);
    assert_eq!(explained.policies[0].id, "support-masked");
    assert_eq!(explained.policies[0].file, "shop.cedar");
    server.stop().await;

    let store = vault.store();
    let records: Vec<privault::audit::RecordView> = audit_views(&store).into_iter().collect();
    let admin: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| (r.principal.as_str(), r.action.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        admin,
        vec![
            ("privault", "policy_load", "ok"),
            (CHECKOUT, "policy_get", "denied"),
            (AUDITOR, "policy_apply", "denied"),
            (AUDITOR, "policy_explain", "ok"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_of_an_unchanged_directory_keeps_a_set_applied_through_the_api() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let applied = apply(&server, without_checkout(), 1).await.unwrap();
    // The server's SIGHUP handler runs exactly this (a SIGHUP sent to reload the token file).
    let reloaded = server.vault().reload_policies().unwrap();
    assert_eq!(reloaded, None);
    assert_eq!(active_version(&server).await, applied);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_catalog_that_moves_a_field_to_another_key_class_is_refused() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut files = shipped_files();
    files.catalog = files.catalog.replace(
        "[fields.payment_card]\n",
        "[fields.payment_card]\nkey_class = \"tax\"\n",
    );
    assert!(files.catalog.contains("key_class = \"tax\""));
    let err = apply(&server, files, 1).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("payment_card"), "{}", err.message());
    assert_eq!(active_version(&server).await, 1);
    let mut account = server.client(ACCOUNT).await;
    let results = get(&mut account, "cust-1", "account", &["payment_card"]).await;
    assert_eq!(results[0].value, "4111111111111111");
    server.stop().await;
}
