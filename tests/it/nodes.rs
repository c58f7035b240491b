//! Two nodes over one PostgreSQL database: a change committed through one is seen by the other's
//! very next call (a write, a shred, a consent withdrawal, a policy apply, an epoch roll), and
//! the one audit chain they share verifies.

use privault::api::pb::key_admin_client::KeyAdminClient;
use privault::api::pb::{self, Outcome};

use crate::policy_admin::{active_version, without};
use crate::support::postgres::shared;
use crate::support::*;

const SEC_LEAD: &str = "Operator::\"sec-lead\"";

fn two_nodes() -> (TestVault, TestVault) {
    let first = TestVault::on_postgres(&shared().new_database());
    let second = first.another_node("node-2");
    (first, second)
}

async fn recommender_reads(server: &TestServer, subject: &str) -> Outcome {
    let mut recommender = server.client(RECOMMENDER).await;
    get(
        &mut recommender,
        subject,
        "personalization",
        &["favorite_categories"],
    )
    .await[0]
        .outcome()
}

async fn mailer_reads(server: &TestServer, subject: &str) -> Outcome {
    let mut mailer = server.client(MAILER).await;
    get(&mut mailer, subject, "email_marketing", &["email"]).await[0].outcome()
}

async fn set_consent(server: &TestServer, subject: &str, purpose: &str, granted: bool) {
    let mut account = server.client(ACCOUNT).await;
    account
        .set_consent(pb::SetConsentRequest {
            subject_id: subject.into(),
            purpose: purpose.into(),
            granted,
            source: 0,
        })
        .await
        .unwrap();
}

const BIN: &str = env!("CARGO_BIN_EXE_privault");

/// `privault audit ARGS --database-url` for `vault`'s database, with its root key.
fn audit_tool(vault: &TestVault, args: &[&str]) -> (bool, String, String) {
    let privault::vault::StoreConfig::Postgres { database, .. } = &vault.config.store else {
        panic!("not on PostgreSQL");
    };
    let out = std::process::Command::new(BIN)
        .arg("audit")
        .args(args)
        .env("PRIVAULT_DATABASE_URL", &database.url)
        .env("PRIVAULT_KEY_FILE", vault.config.key_file.as_ref().unwrap())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_chain_verifies(vault: &TestVault) {
    let store = vault.store();
    let (verified, _) = privault::audit::verify(&store).unwrap();
    let views = audit_views(&store);
    assert_eq!(views.len() as u64, verified, "every record reads once");
    assert!(views.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_on_one_node_reads_on_the_other_and_a_shred_there_binds_it_at_once() {
    let (first, second) = two_nodes();
    let a = first.start().await;
    let b = second.start().await;
    put_profile(&a, "cust-1").await;
    put_profile(&a, "cust-2").await;
    // The second node reads, and so caches the subject's keys.
    assert_eq!(recommender_reads(&b, "cust-1").await, Outcome::Value);
    assert_eq!(recommender_reads(&b, "cust-2").await, Outcome::Value);

    let mut dpo = a.client(DPO).await;
    dpo.shred_subject(pb::ShredSubjectRequest {
        subject_id: "cust-1".into(),
        reason: "ticket 7".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        recommender_reads(&b, "cust-1").await,
        Outcome::Absent,
        "no cached DEK outlives the shred on the other node"
    );
    assert_eq!(recommender_reads(&b, "cust-2").await, Outcome::Value);
    // The customer comes back through the second node: a new key, not the erased one it cached.
    put_profile(&b, "cust-1").await;
    assert_eq!(recommender_reads(&a, "cust-1").await, Outcome::Value);

    // Writes through the second node read back on the first, both ways.
    put_profile(&b, "cust-3").await;
    assert_eq!(recommender_reads(&a, "cust-3").await, Outcome::Value);
    // The auditors' tools read the one chain of both nodes from the database: a signed head taken
    // now is found in the log later, and the export names both nodes' calls.
    let (ok, signed, err) = audit_tool(&first, &["head"]);
    assert!(ok, "{err}");
    let head_file = first.dir.path().join("head.json");
    std::fs::write(&head_file, &signed).unwrap();
    put_profile(&b, "cust-4").await;
    let (ok, out, err) = audit_tool(&first, &["verify", "--head", head_file.to_str().unwrap()]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("is in the log"), "{out}");
    let (ok, exported, err) = audit_tool(&first, &["export", "--action", "shred"]);
    assert!(ok, "{err}");
    assert_eq!(exported.lines().count(), 1, "{exported}");
    assert!(!exported.contains("cust-1"), "no raw subject id in the log");
    a.stop().await;
    b.stop().await;
    assert_chain_verifies(&first);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consent_withdrawal_and_a_policy_apply_on_one_node_bind_the_others_next_call() {
    let (first, second) = two_nodes();
    let a = first.start().await;
    let b = second.start().await;
    put_profile(&a, "cust-1").await;
    set_consent(&a, "cust-1", "marketing", true).await;
    assert_eq!(mailer_reads(&b, "cust-1").await, Outcome::Value);
    set_consent(&a, "cust-1", "marketing", false).await;
    assert_eq!(
        mailer_reads(&b, "cust-1").await,
        Outcome::Denied,
        "the withdrawal binds the other node's next read"
    );

    assert_eq!(recommender_reads(&b, "cust-1").await, Outcome::Value);
    let active = active_version(&a).await;
    let mut admin = a.admin(ALICE).await;
    admin
        .apply_policies(pb::ApplyPoliciesRequest {
            files: Some(without("recommender-personalization")),
            base_version: active,
            comment: "no more recommendations".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        recommender_reads(&b, "cust-1").await,
        Outcome::Denied,
        "the applied set decides the other node's next read"
    );
    let applied = active_version(&b).await;
    let mut admin_b = b.admin(ALICE).await;
    assert!(
        applied > active,
        "the other node reports the applied set as active"
    );
    admin_b
        .rollback_policies(pb::RollbackPoliciesRequest {
            to_version: active,
            base_version: applied,
            comment: "back".into(),
        })
        .await
        .unwrap();
    assert_eq!(recommender_reads(&a, "cust-1").await, Outcome::Value);
    a.stop().await;
    b.stop().await;
    assert_chain_verifies(&first);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_epoch_roll_on_one_node_is_taken_up_by_the_other_which_drops_the_old_kek() {
    let (first, second) = two_nodes();
    let a = first.start().await;
    let b = second.start().await;
    for i in 0..20 {
        put_profile(&a, &format!("cust-{i}")).await;
    }
    assert_eq!(recommender_reads(&b, "cust-3").await, Outcome::Value);

    let mut keys = KeyAdminClient::with_interceptor(a.channel().await, As::header(Some(SEC_LEAD)));
    let mut stream = keys
        .roll_epoch(pb::RollEpochRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut last = None;
    while let Some(p) = stream.message().await.unwrap() {
        last = Some(p);
    }
    let last = last.unwrap();
    assert!(last.done && last.epoch == 2 && last.destroyed_epochs == vec![1]);

    let mut keys_b =
        KeyAdminClient::with_interceptor(b.channel().await, As::header(Some(SEC_LEAD)));
    let status = keys_b
        .key_status(pb::KeyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.current_epoch, status.epochs),
        (2, vec![2]),
        "the other node took up the new epoch and dropped the destroyed one"
    );
    assert_eq!(recommender_reads(&b, "cust-3").await, Outcome::Value);
    // A subject created through the second node is wrapped under the new epoch and reads back
    // after both nodes restart.
    put_profile(&b, "cust-new").await;
    a.stop().await;
    b.stop().await;
    let b = second.start().await;
    assert_eq!(recommender_reads(&b, "cust-new").await, Outcome::Value);
    assert_eq!(recommender_reads(&b, "cust-7").await, Outcome::Value);
    b.stop().await;
    assert_chain_verifies(&first);
}

#[tokio::test(flavor = "multi_thread")]
async fn both_nodes_under_concurrent_load_fail_no_call_and_keep_one_chain() {
    let (first, second) = two_nodes();
    let a = first.start().await;
    let b = second.start().await;
    let mut tasks = Vec::new();
    for (n, server) in [&a, &b].into_iter().cycle().take(16).enumerate() {
        let mut account = server.client(ACCOUNT).await;
        let mut recommender = server.client(RECOMMENDER).await;
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                let id = format!("cust-{n}-{i}");
                account
                    .put_fields(put_request(
                        &id,
                        "account",
                        &[("email", "x@example.com"), ("favorite_categories", "books")],
                    ))
                    .await
                    .unwrap();
                let read = get(
                    &mut recommender,
                    &id,
                    "personalization",
                    &["favorite_categories"],
                )
                .await;
                assert_eq!(read[0].outcome(), Outcome::Value);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    a.stop().await;
    b.stop().await;
    assert_chain_verifies(&first);
    let writes = audit_views(&first.store())
        .into_iter()
        .filter(|r| r.action == "write")
        .count();
    assert_eq!(writes, 16 * 20, "one record per write, from both nodes");
}
