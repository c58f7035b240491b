//! Opt-out signals and consent provenance: a GPC or do-not-sell signal withdraws every purpose
//! marked `sale_or_share` and their children, binds every reader, and is undone only by the
//! customer's own grant; sources are kept and shown; policies see the signals.

use privault::api::pb::record_signal_request::Signal;
use privault::api::pb::{self, ConsentSource, Outcome};
use tonic::Code;

use crate::support::*;

const ADS: &str = "Service::\"ads\"";

async fn consent(
    server: &TestServer,
    subject: &str,
    purpose: &str,
    granted: bool,
    source: ConsentSource,
) -> Result<(), tonic::Status> {
    let mut account = server.client(ACCOUNT).await;
    account
        .set_consent(pb::SetConsentRequest {
            subject_id: subject.into(),
            purpose: purpose.into(),
            granted,
            source: source.into(),
        })
        .await
        .map(|_| ())
}

async fn signal(
    server: &TestServer,
    principal: &str,
    subject: &str,
    signal: Signal,
) -> Result<pb::RecordSignalResponse, tonic::Status> {
    let mut client = server.client(principal).await;
    client
        .record_signal(pb::RecordSignalRequest {
            subject_id: subject.into(),
            signal: signal.into(),
            source: 0,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn ads_reads(server: &TestServer, subject: &str, purpose: &str) -> Outcome {
    let mut ads = server.client(ADS).await;
    get(&mut ads, subject, purpose, &["postal_code.postal_prefix"]).await[0].outcome()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gpc_signal_withdraws_shared_purposes_and_only_the_customer_undoes_it() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(&server, "cust-1", &[("postal_code", "75011")]).await;
    consent(
        &server,
        "cust-1",
        "ad_sharing",
        true,
        ConsentSource::Unspecified,
    )
    .await
    .unwrap();
    assert_eq!(
        ads_reads(&server, "cust-1", "retargeting").await,
        Outcome::Value
    );

    let recorded = signal(&server, ACCOUNT, "cust-1", Signal::Gpc)
        .await
        .unwrap();
    assert_eq!(recorded.withdrawn, vec!["ad_sharing", "retargeting"]);
    assert_eq!(
        ads_reads(&server, "cust-1", "retargeting").await,
        Outcome::Denied
    );
    assert_eq!(
        ads_reads(&server, "cust-1", "ad_sharing").await,
        Outcome::Denied
    );

    // A grant from the browser's signal source or from support cannot undo the customer's signal.
    for source in [
        ConsentSource::Gpc,
        ConsentSource::Support,
        ConsentSource::Import,
    ] {
        let refused = consent(&server, "cust-1", "retargeting", true, source)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{source:?}");
        assert!(
            refused.message().contains("`gpc` opt-out signal"),
            "{}",
            refused.message()
        );
    }
    assert_eq!(
        ads_reads(&server, "cust-1", "retargeting").await,
        Outcome::Denied
    );
    // Withdrawing needs no such care, from any source.
    consent(
        &server,
        "cust-1",
        "email_marketing",
        false,
        ConsentSource::Support,
    )
    .await
    .unwrap();

    // The customer's own grant does.
    consent(&server, "cust-1", "retargeting", true, ConsentSource::User)
        .await
        .unwrap();
    assert_eq!(
        ads_reads(&server, "cust-1", "retargeting").await,
        Outcome::Value
    );
    assert_eq!(
        ads_reads(&server, "cust-1", "ad_sharing").await,
        Outcome::Denied,
        "the parent stays withdrawn"
    );

    let listed = server
        .client(ACCOUNT)
        .await
        .get_consents(pb::GetConsentsRequest {
            subject_id: "cust-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let row = |purpose: &str| {
        let c = listed
            .consents
            .iter()
            .find(|c| c.purpose == purpose)
            .unwrap();
        (c.granted, c.source.clone(), c.signal.clone())
    };
    assert_eq!(row("ad_sharing"), (false, "gpc".into(), "gpc".into()));
    assert_eq!(row("retargeting"), (true, "user".into(), String::new()));
    assert_eq!(
        row("email_marketing"),
        (false, "support".into(), String::new())
    );
    assert_eq!(listed.signals.len(), 1);
    assert_eq!(
        (
            listed.signals[0].signal.as_str(),
            listed.signals[0].source.as_str()
        ),
        ("gpc", "gpc")
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
    assert_eq!(export.signals.len(), 1);
    assert!(export.consents.iter().any(|c| c.source == "gpc"));

    let mut auditor = server.auditor(AUDITOR).await;
    let (records, _) = audit_query(
        &mut auditor,
        pb::AuditQueryRequest {
            subject_id: "cust-1".into(),
            ..Default::default()
        },
    )
    .await;
    let signalled = records
        .iter()
        .find(|r| r.action == "record_signal")
        .unwrap();
    let withdrawn: Vec<(&str, &str)> = signalled
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.outcome.as_str()))
        .collect();
    assert_eq!(
        withdrawn,
        vec![("ad_sharing", "withdrawn"), ("retargeting", "withdrawn")]
    );
    let detail = signalled.detail.as_ref().unwrap();
    assert_eq!(
        (detail.kind.as_str(), detail.name.as_str()),
        ("signal", "gpc")
    );
    let sources: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r.action == "consent_write")
        .map(|r| {
            let d = r.detail.as_ref().unwrap();
            (d.kind.as_str(), d.name.as_str())
        })
        .collect();
    assert!(sources.contains(&("consent_source", "gpc")), "{sources:?}");
    assert!(sources.contains(&("consent_source", "user")), "{sources:?}");
    // Refused grants are audited too.
    assert!(
        records
            .iter()
            .any(|r| r.action == "consent_write" && r.outcome == "failed_precondition")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_objection_to_profiling_stops_personalization() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(&server, "cust-1", &[("favorite_categories", "books")]).await;
    let mut recommender = server.client(RECOMMENDER).await;
    let read = |outcome: Outcome| outcome;
    assert_eq!(
        read(
            get(
                &mut recommender,
                "cust-1",
                "personalization",
                &["favorite_categories"]
            )
            .await[0]
                .outcome()
        ),
        Outcome::Value
    );
    let recorded = signal(&server, ACCOUNT, "cust-1", Signal::ObjectToProfiling)
        .await
        .unwrap();
    assert_eq!(
        recorded.withdrawn,
        vec!["model_training", "personalization"]
    );
    assert_eq!(
        get(
            &mut recommender,
            "cust-1",
            "personalization",
            &["favorite_categories"]
        )
        .await[0]
            .outcome(),
        Outcome::Denied
    );
    // Another customer is untouched.
    put_account(&server, "cust-2", &[("favorite_categories", "tea")]).await;
    assert_eq!(
        get(
            &mut recommender,
            "cust-2",
            "personalization",
            &["favorite_categories"]
        )
        .await[0]
            .outcome(),
        Outcome::Value
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_signals_and_unauthorized_callers_change_nothing() {
    let vault = TestVault::new();
    let server = vault.start().await;
    put_account(&server, "cust-1", &[("postal_code", "75011")]).await;
    consent(&server, "cust-1", "ad_sharing", true, ConsentSource::User)
        .await
        .unwrap();

    let unspecified = signal(&server, ACCOUNT, "cust-1", Signal::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(unspecified.code(), Code::InvalidArgument);
    let mut account = server.client(ACCOUNT).await;
    let bad_source = account
        .record_signal(pb::RecordSignalRequest {
            subject_id: "cust-1".into(),
            signal: Signal::Gpc.into(),
            source: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_source.code(), Code::InvalidArgument);
    let bad_consent_source = account
        .set_consent(pb::SetConsentRequest {
            subject_id: "cust-1".into(),
            purpose: "ad_sharing".into(),
            granted: false,
            source: 42,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_consent_source.code(), Code::InvalidArgument);
    // The recommender may not record consents, so it may not record a signal either.
    let refused = signal(&server, RECOMMENDER, "cust-1", Signal::DoNotSell)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        ads_reads(&server, "cust-1", "ad_sharing").await,
        Outcome::Value
    );
    server.stop().await;
}

#[test]
fn policies_see_the_signals_in_the_context() {
    let mut vault = TestVault::new();
    let policies = vault.dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for f in [
        "schema.cedarschema",
        "catalog.toml",
        "shop.cedar",
        "guards.cedar",
    ] {
        std::fs::copy(shipped_policies().join(f), policies.join(f)).unwrap();
    }
    // A stricter shop: after a GPC signal, no email domain leaves for any purpose at all.
    std::fs::write(
        policies.join("gpc.cedar"),
        "@id(\"gpc-no-email-domain\")\nforbid (principal, action == Action::\"read\", \
         resource == View::\"email.email_domain\")\nwhen { context.signals.contains(\"gpc\") };\n",
    )
    .unwrap();
    vault.config.policies_dir = policies;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let server = vault.start().await;
        put_account(&server, "cust-1", &[("email", "ada@example.com")]).await;
        let mut account = server.client(ACCOUNT).await;
        let before = get(&mut account, "cust-1", "account", &["email.email_domain"]).await;
        assert_eq!(before[0].value, "example.com");
        signal(&server, ACCOUNT, "cust-1", Signal::Gpc)
            .await
            .unwrap();
        let after = get(&mut account, "cust-1", "account", &["email.email_domain"]).await;
        assert_eq!(after[0].outcome(), Outcome::Denied);
        assert_eq!(after[0].policy_ids, vec!["gpc-no-email-domain"]);
        server.stop().await;
    });
}

#[test]
fn signals_are_named_on_the_wire_as_the_contract_names_them() {
    let names: Vec<&str> = [Signal::Gpc, Signal::DoNotSell, Signal::ObjectToProfiling]
        .iter()
        .map(|s| s.as_str_name())
        .collect();
    assert_eq!(names, ["GPC", "DO_NOT_SELL", "OBJECT_TO_PROFILING"]);
}
