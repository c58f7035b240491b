//! Legal holds through the real server: a held key class survives ShredSubject (kept, read for
//! legal claims only, never written or deleted), the receipt says what was kept and why, releasing
//! the hold erases the rest; a restore of `db/` from before the hold keeps it (it lives in the
//! ledger); holds outrank retention and lapse at `until`; and every refusal changes nothing.

use std::sync::Arc;

use privault::api::pb;
use privault::api::pb::Outcome;
use privault::clock::ManualClock;
use privault::domain::{FieldName, Principal, PrincipalKind, Purpose, SubjectId};
use privault::hold::HoldScope;
use privault::vault::{CallContext, ReadOutcome, Vault};
use secrecy::SecretString;
use tonic::Code;

use crate::support::*;

const LEGAL: &str = "Operator::\"legal\"";
const COUNSEL: &str = "Service::\"legal\"";
const CASE: &str = "case-2026-114";

fn hold_request(subject: &str, key_class: &str, until: &str) -> pb::PlaceHoldRequest {
    pb::PlaceHoldRequest {
        subject_id: subject.into(),
        key_class: key_class.into(),
        reason: CASE.into(),
        until: until.into(),
    }
}

async fn put_customer_with_tax_id(server: &TestServer, subject: &str) {
    put_account(
        server,
        subject,
        &[
            ("email", "held@example.com"),
            ("full_name", "Held Example"),
            ("tax_id", "DE123456789"),
        ],
    )
    .await;
}

async fn shred(server: &TestServer, subject: &str) -> pb::ShredSubjectResponse {
    server
        .client(DPO)
        .await
        .shred_subject(pb::ShredSubjectRequest {
            subject_id: subject.into(),
            reason: "erasure-request-77".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_class_survives_a_shred_and_is_erased_when_the_hold_is_released() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_customer_with_tax_id(&server, "cust-held").await;
    put_customer_with_tax_id(&server, "cust-free").await;
    server
        .client(LEGAL)
        .await
        .place_hold(hold_request("cust-held", "tax", ""))
        .await
        .unwrap();

    let shredded = shred(&server, "cust-held").await;
    assert_eq!(
        shredded.kept,
        vec![pb::KeptClass {
            key_class: "tax".into(),
            reason: CASE.into()
        }]
    );
    let receipt: serde_json::Value = serde_json::from_str(&shredded.receipt).unwrap();
    assert_eq!(
        receipt["key_classes_erased"],
        serde_json::json!(["default"])
    );
    assert_eq!(
        receipt["key_classes_kept"],
        serde_json::json!([{"key_class": "tax", "reason": CASE}])
    );
    // Without a hold, the same shred erases the tax class too.
    let free = shred(&server, "cust-free").await;
    assert!(free.kept.is_empty());

    // Counsel reads the kept tax number for the claim; nothing else of the customer is left.
    let mut counsel = server.client(COUNSEL).await;
    let read = get(&mut counsel, "cust-held", "legal_claims", &["tax_id"]).await;
    assert_eq!(
        summary(&read),
        vec![("tax_id".into(), Outcome::Value, "DE123456789".into())]
    );
    // Any other purpose is refused, even one whose policy would allow the read.
    let mut checkout = server.client(CHECKOUT).await;
    let read = get(
        &mut checkout,
        "cust-held",
        "fulfillment",
        &["tax_id", "email"],
    )
    .await;
    for result in &read {
        assert_eq!(result.outcome(), Outcome::Denied, "{result:?}");
        assert!(result.reason.starts_with("held"), "{}", result.reason);
    }
    let read = get(&mut counsel, "cust-free", "legal_claims", &["tax_id"]).await;
    assert_eq!(read[0].outcome(), Outcome::Absent, "not held: erased");

    // What the hold keeps is neither deleted nor written over, and the subject takes no new data.
    let mut account = server.client(ACCOUNT).await;
    let delete = account
        .delete_fields(pb::DeleteFieldsRequest {
            subject_id: "cust-held".into(),
            purpose: "account".into(),
            fields: vec!["tax_id".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(delete.code(), Code::FailedPrecondition, "{delete:?}");
    let write = account
        .put_fields(put_request(
            "cust-held",
            "account",
            &[("email", "new@example.com")],
        ))
        .await
        .unwrap_err();
    assert_eq!(write.code(), Code::FailedPrecondition, "{write:?}");

    // The export shows the erased customer's held remains and the hold itself.
    let export = server
        .client(DPO)
        .await
        .export_subject(pb::ExportSubjectRequest {
            subject_id: "cust-held".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(export.erased);
    let fields: Vec<&str> = export.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, vec!["tax_id"]);
    assert_eq!(export.holds.len(), 1);
    assert_eq!(export.holds[0].key_class, "tax");
    assert_eq!(export.holds[0].reason, CASE);
    assert!(export.holds[0].until.is_empty());

    // Releasing the hold erases what it kept, and the receipt says so when fetched again.
    let released = server
        .client(DPO)
        .await
        .release_hold(pb::ReleaseHoldRequest {
            subject_id: "cust-held".into(),
            key_class: "tax".into(),
            reason: "case-2026-114 settled".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(released.erased, vec!["tax".to_owned()]);
    let read = get(&mut counsel, "cust-held", "legal_claims", &["tax_id"]).await;
    assert_eq!(read[0].outcome(), Outcome::Absent);
    let reissued = server
        .client(AUDITOR)
        .await
        .get_erasure_receipt(pb::GetErasureReceiptRequest {
            receipt_id: shredded.receipt_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let receipt: serde_json::Value = serde_json::from_str(&reissued.receipt).unwrap();
    assert_eq!(
        receipt["key_classes_erased"],
        serde_json::json!(["default", "tax"])
    );
    assert_eq!(receipt["key_classes_kept"], serde_json::json!([]));
    // The customer may come back as a new customer.
    put_account(&server, "cust-held", &[("email", "back@example.com")]).await;

    let vault_ref = server.vault();
    let views = audit_views(vault_ref.store());
    drop(vault_ref);
    server.stop().await;
    let held: Vec<_> = views
        .iter()
        .filter(|r| r.action.starts_with("hold") || r.action == "shred")
        .map(|r| {
            let fields: Vec<String> = r
                .fields
                .iter()
                .map(|f| format!("{}={}", f.field, f.outcome))
                .collect();
            (r.action.as_str(), r.outcome.as_str(), fields)
        })
        .collect();
    assert_eq!(
        held,
        vec![
            ("hold_place", "ok", vec!["key_class:tax=held".to_owned()]),
            ("shred", "ok", vec!["key_class:tax=held".to_owned()]),
            ("shred", "ok", vec![]),
            (
                "hold_release",
                "ok",
                vec![
                    "key_class:tax=released".to_owned(),
                    "key_class:tax=deleted".to_owned()
                ]
            ),
        ]
    );
    for record in &views {
        let text = format!("{record:?}");
        assert!(!text.contains("cust-held") && !text.contains("DE123456789"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_are_refused_to_whoever_may_not_place_them_and_for_bad_input() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_customer_with_tax_id(&server, "cust-refusals").await;
    let mut legal = server.client(LEGAL).await;
    let cases = [
        (
            hold_request("cust-refusals", "nope", ""),
            Code::InvalidArgument,
        ),
        (
            hold_request("cust-refusals", "Tax Class", ""),
            Code::InvalidArgument,
        ),
        (
            hold_request("cust-refusals", "tax", "2001-01-01T00:00:00Z"),
            Code::InvalidArgument,
        ),
        (
            hold_request("cust-refusals", "tax", "next tuesday"),
            Code::InvalidArgument,
        ),
        (
            pb::PlaceHoldRequest {
                reason: String::new(),
                ..hold_request("cust-refusals", "tax", "")
            },
            Code::InvalidArgument,
        ),
        (hold_request("cust-nobody", "tax", ""), Code::NotFound),
    ];
    for (request, code) in cases {
        let err = legal.place_hold(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err:?}");
    }
    for who in [DPO, ACCOUNT, ALICE] {
        let err = server
            .client(who)
            .await
            .place_hold(hold_request("cust-refusals", "tax", ""))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{who}");
    }
    let err = server
        .client(DPO)
        .await
        .release_hold(pb::ReleaseHoldRequest {
            subject_id: "cust-refusals".into(),
            key_class: "tax".into(),
            reason: "nothing to release".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Nothing was held by any of it: the shred erases everything.
    assert!(shred(&server, "cust-refusals").await.kept.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_from_before_the_hold_keeps_it_and_the_shred_it_survived() {
    if skip_on_postgres("restores a copy of db/") {
        return;
    }
    let vault = TestVault::new();
    let server = vault.start().await;
    put_customer_with_tax_id(&server, "cust-restored").await;
    server.stop().await;
    // A copy of `db/` taken before the hold, as a backup would be.
    let backup = vault.dir.path().join("db-before-hold");
    copy_dir(&vault.data_dir().join("db"), &backup);

    let server = vault.start().await;
    server
        .client(LEGAL)
        .await
        .place_hold(hold_request("cust-restored", "all", ""))
        .await
        .unwrap();
    let shredded = shred(&server, "cust-restored").await;
    assert_eq!(shredded.kept.len(), 2, "all: both classes kept");
    server.stop().await;

    std::fs::remove_dir_all(vault.data_dir().join("db")).unwrap();
    copy_dir(&backup, &vault.data_dir().join("db"));
    let server = vault.start().await;
    // The ledger replayed the shred after the restore, and the hold kept what it holds.
    let mut counsel = server.client(COUNSEL).await;
    let read = get(&mut counsel, "cust-restored", "legal_claims", &["tax_id"]).await;
    assert_eq!(read[0].value, "DE123456789");
    let mut account = server.client(ACCOUNT).await;
    let read = get(&mut account, "cust-restored", "account", &["email"]).await;
    assert_eq!(
        read[0].outcome(),
        Outcome::Denied,
        "erased: held for legal claims only"
    );
    let released = server
        .client(DPO)
        .await
        .release_hold(pb::ReleaseHoldRequest {
            subject_id: "cust-restored".into(),
            key_class: String::new(),
            reason: "case closed".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        released.erased,
        vec!["default".to_owned(), "tax".to_owned()]
    );
    let read = get(&mut account, "cust-restored", "account", &["email"]).await;
    assert_eq!(read[0].outcome(), Outcome::Absent);
    server.stop().await;
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn ctx(kind: PrincipalKind, name: &str) -> CallContext {
    CallContext {
        principal: Principal::new(kind, name).unwrap(),
        request_id: "test".into(),
        peer: None,
    }
}

fn subject(id: &str) -> SubjectId {
    SubjectId::new(id.to_owned()).unwrap()
}

fn read_ip(v: &Vault, id: &str) -> ReadOutcome {
    let fraud = ctx(PrincipalKind::Service, "fraud");
    v.get(
        &fraud,
        &subject(id),
        &Purpose::new("fraud").unwrap(),
        &[FieldName::new("last_ip").unwrap()],
    )
    .unwrap()
    .remove(0)
    .outcome
}

#[test]
fn a_hold_outranks_retention_until_it_lapses() {
    const DAY_MS: u64 = 86_400_000;
    let vault = TestVault::new();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    let account = ctx(PrincipalKind::Service, "account");
    v.put(
        &account,
        &subject("cust-lapse"),
        &Purpose::new("account").unwrap(),
        vec![(
            FieldName::new("last_ip").unwrap(),
            SecretString::from("203.0.113.9"),
        )],
    )
    .unwrap();
    let legal = ctx(PrincipalKind::Operator, "legal");
    let until = 1_800_000_000_000 + 60 * DAY_MS;
    v.place_hold(
        &legal,
        &subject("cust-lapse"),
        &HoldScope::All,
        CASE,
        Some(until),
    )
    .unwrap();

    // Past its 30-day retention the held value stays, readable and unswept.
    clock.advance(31 * DAY_MS);
    let report = v.sweep_expired(&Default::default(), 100).unwrap();
    assert_eq!(report.deleted, 0);
    assert_eq!(read_ip(&v, "cust-lapse"), value("203.0.113.9"));
    assert_eq!(v.retire_lapsed_holds().unwrap(), 0, "still in force");

    // Once the hold lapses it is retired, and the sweeper deletes what retention ended.
    clock.advance(30 * DAY_MS);
    assert_eq!(v.retire_lapsed_holds().unwrap(), 1);
    assert_eq!(v.retire_lapsed_holds().unwrap(), 0, "retired once");
    assert_eq!(read_ip(&v, "cust-lapse"), ReadOutcome::Absent);
    let report = v.sweep_expired(&Default::default(), 100).unwrap();
    assert_eq!(report.deleted, 1);
    let actions = audit_actions(v.store());
    assert!(actions.contains(&"hold_lapse".to_owned()), "{actions:?}");
    drop(v);

    // A lapsed hold stays retired across a restart: the ledger has its release.
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    assert_eq!(v.holds_in_force(), 0);
    assert_eq!(v.retire_lapsed_holds().unwrap(), 0);
}

#[test]
fn a_shred_during_a_hold_that_lapses_is_completed_by_the_lapse() {
    const DAY_MS: u64 = 86_400_000;
    let vault = TestVault::new();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    let account = ctx(PrincipalKind::Service, "account");
    v.put(
        &account,
        &subject("cust-shred-lapse"),
        &Purpose::new("account").unwrap(),
        vec![(
            FieldName::new("last_ip").unwrap(),
            SecretString::from("198.51.100.4"),
        )],
    )
    .unwrap();
    let legal = ctx(PrincipalKind::Operator, "legal");
    v.place_hold(
        &legal,
        &subject("cust-shred-lapse"),
        &HoldScope::All,
        CASE,
        Some(1_800_000_000_000 + DAY_MS),
    )
    .unwrap();
    let dpo = ctx(PrincipalKind::Operator, "dpo");
    let shred = v
        .shred(&dpo, &subject("cust-shred-lapse"), "ticket-5")
        .unwrap();
    assert_eq!(shred.kept.len(), 1);
    let counsel = ctx(PrincipalKind::Service, "legal");
    let tax = FieldName::new("tax_id").unwrap();
    let legal_claims = Purpose::new("legal_claims").unwrap();
    assert_eq!(
        v.get(
            &counsel,
            &subject("cust-shred-lapse"),
            &legal_claims,
            std::slice::from_ref(&tax)
        )
        .unwrap()[0]
            .outcome,
        ReadOutcome::Absent,
        "held, but no tax number was ever stored"
    );
    assert_eq!(read_ip(&v, "cust-shred-lapse"), ReadOutcome::Held);
    clock.advance(2 * DAY_MS);
    assert_eq!(v.retire_lapsed_holds().unwrap(), 1);
    assert_eq!(read_ip(&v, "cust-shred-lapse"), ReadOutcome::Absent);
    let receipt = v
        .get_erasure_receipt(
            &ctx(PrincipalKind::Operator, "auditor"),
            &shred.receipt.body.receipt_id,
        )
        .unwrap();
    assert!(receipt.body.key_classes_kept.is_empty());
    assert_eq!(receipt.body.key_classes_erased, vec!["default".to_owned()]);
    assert!(receipt.body.horizons.live_store_purged);
}
