//! Subject-aware policies: the catalog's `policy_attribute` fields become `context.subject.minor`
//! and `context.subject.region` at decision time, and every change to them (a rectified birth
//! date, a move, a birthday) counts from the very next decision.

use std::sync::Arc;

use privault::api::pb::{self, Outcome};
use privault::clock::ManualClock;
use privault::domain::{FieldName, Principal, PrincipalKind, Purpose, SubjectId};
use privault::vault::{CallContext, ReadOutcome, Vault};
use secrecy::SecretString;

use crate::support::*;

const ANALYTICS_US: &str = "Service::\"analytics_us\"";

async fn grant_marketing(server: &TestServer, subject: &str) {
    server
        .client(ACCOUNT)
        .await
        .set_consent(pb::SetConsentRequest {
            subject_id: subject.into(),
            purpose: "marketing".into(),
            granted: true,
            source: 0,
        })
        .await
        .unwrap();
}

async fn mailer_reads(server: &TestServer, subject: &str) -> (Outcome, Vec<String>) {
    let mut mailer = server.client(MAILER).await;
    let r = &get(&mut mailer, subject, "email_marketing", &["email"]).await[0];
    (r.outcome(), r.policy_ids.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minor_is_never_marketed_to_and_a_corrected_birth_date_counts_at_once() {
    let vault = TestVault::new();
    let server = vault.start().await;
    for (subject, born) in [
        ("kid", Some("2015-06-01")),
        ("adult", Some("1980-01-01")),
        ("unknown", None),
    ] {
        let mut fields = vec![("email", "someone@example.com")];
        if let Some(born) = born {
            fields.push(("birth_date", born));
        }
        put_account(&server, subject, &fields).await;
        grant_marketing(&server, subject).await;
    }
    assert_eq!(
        mailer_reads(&server, "kid").await,
        (
            Outcome::Denied,
            vec!["no-marketing-or-profiling-of-minors".to_owned()]
        )
    );
    assert_eq!(mailer_reads(&server, "adult").await.0, Outcome::Value);
    assert_eq!(
        mailer_reads(&server, "unknown").await.0,
        Outcome::Value,
        "an unknown age is not taken for a minor"
    );
    // The recommender does not profile the minor either.
    let mut recommender = server.client(RECOMMENDER).await;
    put_account(&server, "kid", &[("favorite_categories", "toys")]).await;
    let r = get(
        &mut recommender,
        "kid",
        "personalization",
        &["favorite_categories"],
    )
    .await;
    assert_eq!(r[0].outcome(), Outcome::Denied);

    // The birth date was wrong: the customer is an adult, from the very next read.
    put_account(&server, "kid", &[("birth_date", "1990-06-01")]).await;
    assert_eq!(mailer_reads(&server, "kid").await.0, Outcome::Value);
    // And deleting it leaves the age unknown.
    server
        .client(ACCOUNT)
        .await
        .delete_fields(pb::DeleteFieldsRequest {
            subject_id: "adult".into(),
            purpose: "account".into(),
            fields: vec!["birth_date".into()],
        })
        .await
        .unwrap();
    assert_eq!(mailer_reads(&server, "adult").await.0, Outcome::Value);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn eea_customers_reach_us_analytics_only_as_views() {
    let vault = TestVault::new();
    let server = vault.start().await;
    for (subject, country) in [
        ("eu", Some("FR")),
        ("us", Some("us")),
        ("jp", Some("JP")),
        ("none", None),
    ] {
        let mut fields = vec![
            ("favorite_categories", "books"),
            ("birth_date", "1980-01-01"),
        ];
        if let Some(country) = country {
            fields.push(("country", country));
        }
        put_account(&server, subject, &fields).await;
    }
    let mut analytics = server.client(ANALYTICS_US).await;
    let read = |results: Vec<pb::FieldResult>| -> Vec<Outcome> {
        results.iter().map(pb::FieldResult::outcome).collect()
    };
    let asked = ["favorite_categories", "birth_date.age_band", "birth_date"];
    assert_eq!(
        read(get(&mut analytics, "eu", "analytics", &asked).await),
        vec![Outcome::Denied, Outcome::Value, Outcome::Denied]
    );
    assert_eq!(
        read(get(&mut analytics, "us", "analytics", &asked).await),
        vec![Outcome::Value, Outcome::Value, Outcome::Denied]
    );
    for unplaced in ["jp", "none"] {
        assert_eq!(
            read(get(&mut analytics, unplaced, "analytics", &asked).await)[0],
            Outcome::Denied,
            "{unplaced}: an unknown region is treated as the EEA"
        );
    }
    // The customer moves to the US: the next decision sees it.
    put_account(&server, "eu", &[("country", "US")]).await;
    assert_eq!(
        read(get(&mut analytics, "eu", "analytics", &asked).await)[0],
        Outcome::Value
    );
    server.stop().await;
}

#[test]
fn a_minor_comes_of_age_on_their_birthday_without_any_write() {
    let vault = TestVault::new();
    // 2027-01-15; the customer turns 16 on 2027-01-20.
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    let ctx = |name: &str| CallContext {
        principal: Principal::new(PrincipalKind::Service, name).unwrap(),
        request_id: "test".into(),
        peer: None,
    };
    let subject = SubjectId::new("teen".into()).unwrap();
    let field = |n: &str| FieldName::new(n).unwrap();
    v.put(
        &ctx("account"),
        &subject,
        &Purpose::new("account").unwrap(),
        vec![
            (field("birth_date"), SecretString::from("2011-01-20")),
            (field("favorite_categories"), SecretString::from("games")),
        ],
    )
    .unwrap();
    let read = |v: &Vault| {
        v.get(
            &ctx("recommender"),
            &subject,
            &Purpose::new("personalization").unwrap(),
            &[field("favorite_categories")],
        )
        .unwrap()[0]
            .outcome
            .clone()
    };
    assert_eq!(read(&v), ReadOutcome::Denied);
    clock.advance(4 * 86_400_000);
    assert_eq!(read(&v), ReadOutcome::Denied, "the day before the birthday");
    clock.advance(86_400_000);
    assert!(
        matches!(read(&v), ReadOutcome::Value(_)),
        "16 today: the cached attribute is not served past the birthday"
    );
}
