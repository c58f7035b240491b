//! Consent per purpose: granted and withdrawn through the API, effective on the very next read,
//! covering child purposes, and erased with the subject.

use privault::api::pb::{self, Outcome};
use tonic::Code;

use crate::support::*;

async fn set(
    server: &TestServer,
    principal: &str,
    subject: &str,
    purpose: &str,
    granted: bool,
) -> Result<(), tonic::Status> {
    let mut client = server.client(principal).await;
    client
        .set_consent(pb::SetConsentRequest {
            subject_id: subject.into(),
            purpose: purpose.into(),
            granted,
            source: 0,
        })
        .await
        .map(|_| ())
}

async fn mailer_reads(server: &TestServer, subject: &str, purpose: &str) -> Outcome {
    let mut mailer = server.client(MAILER).await;
    get(&mut mailer, subject, purpose, &["email"]).await[0].outcome()
}

#[tokio::test(flavor = "multi_thread")]
async fn grant_and_withdrawal_change_the_very_next_read() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    assert_eq!(
        mailer_reads(&server, "cust-1", "email_marketing").await,
        Outcome::Denied
    );

    // Consent to the parent purpose covers its children.
    set(&server, ACCOUNT, "cust-1", "marketing", true)
        .await
        .unwrap();
    assert_eq!(
        mailer_reads(&server, "cust-1", "email_marketing").await,
        Outcome::Value
    );
    assert_eq!(
        mailer_reads(&server, "cust-2", "email_marketing").await,
        Outcome::Denied,
        "per subject"
    );

    set(&server, ACCOUNT, "cust-1", "marketing", false)
        .await
        .unwrap();
    assert_eq!(
        mailer_reads(&server, "cust-1", "email_marketing").await,
        Outcome::Denied
    );

    // A sibling purpose does not cover another.
    set(&server, ACCOUNT, "cust-1", "sms_marketing", true)
        .await
        .unwrap();
    assert_eq!(
        mailer_reads(&server, "cust-1", "email_marketing").await,
        Outcome::Denied
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn consents_are_listed_authorized_and_shredded() {
    let vault = TestVault::new();
    let server = vault.start().await;
    set(&server, ACCOUNT, "cust-1", "marketing", true)
        .await
        .unwrap();
    set(&server, ACCOUNT, "cust-1", "sms_marketing", false)
        .await
        .unwrap();

    let err = set(&server, MAILER, "cust-1", "email_marketing", true)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "a service cannot grant itself consent"
    );
    let err = set(&server, ACCOUNT, "cust-1", "telepathy", true)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    let mut dpo = server.client(DPO).await;
    let list = |dpo: &mut Client| {
        let mut dpo = dpo.clone();
        async move {
            dpo.get_consents(pb::GetConsentsRequest {
                subject_id: "cust-1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .consents
        }
    };
    let consents = list(&mut dpo).await;
    let summary: Vec<(&str, bool, &str)> = consents
        .iter()
        .map(|c| (c.purpose.as_str(), c.granted, c.recorded_by.as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("marketing", true, ACCOUNT),
            ("sms_marketing", false, ACCOUNT)
        ]
    );
    assert!(consents[0].time.ends_with('Z'));

    dpo.shred_subject(pb::ShredSubjectRequest {
        subject_id: "cust-1".into(),
        reason: "erasure #2".into(),
    })
    .await
    .unwrap();
    assert!(list(&mut dpo).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_replay_reads_with_the_consents_they_were_decided_with() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    set(&server, ACCOUNT, "cust-1", "marketing", true)
        .await
        .unwrap();
    assert_eq!(
        mailer_reads(&server, "cust-1", "email_marketing").await,
        Outcome::Value
    );
    let mut auditor = server.admin(AUDITOR).await;
    let run = auditor
        .dry_run_policies(pb::DryRunPoliciesRequest {
            files: Some(shipped_files()),
            last: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.examined, 1);
    assert!(run.changes.is_empty(), "{:?}", run.changes);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_most_specific_consent_record_wins_for_every_parent_and_child() {
    let vault = TestVault::new();
    let server = vault.start().await;
    let states = [None, Some(true), Some(false)];
    let mut n = 0;
    for parent in states {
        for child in states {
            n += 1;
            let subject = format!("cust-{n}");
            put_profile(&server, &subject).await;
            if let Some(g) = parent {
                set(&server, ACCOUNT, &subject, "marketing", g)
                    .await
                    .unwrap();
            }
            if let Some(g) = child {
                set(&server, ACCOUNT, &subject, "email_marketing", g)
                    .await
                    .unwrap();
            }
            let allowed = |effective: Option<bool>| {
                if effective == Some(true) {
                    Outcome::Value
                } else {
                    Outcome::Denied
                }
            };
            assert_eq!(
                mailer_reads(&server, &subject, "email_marketing").await,
                allowed(child.or(parent)),
                "parent {parent:?}, child {child:?}, read for the child"
            );
            assert_eq!(
                mailer_reads(&server, &subject, "marketing").await,
                allowed(parent),
                "parent {parent:?}, child {child:?}, read for the parent"
            );
            // The sibling follows the parent: the child's record is the child's alone.
            assert_eq!(
                mailer_reads(&server, &subject, "sms_marketing").await,
                allowed(parent),
                "parent {parent:?}, child {child:?}, read for the sibling"
            );
        }
    }
    server.stop().await;
}
