//! Retention from the catalog: a value past its retention is never returned, even before any
//! sweeper removes it. Driven through the vault API with a manual clock.

use std::sync::Arc;

use privault::clock::ManualClock;
use privault::domain::{FieldName, Principal, PrincipalKind, Purpose, SubjectId};
use privault::vault::{CallContext, ReadOutcome, Vault};
use secrecy::SecretString;

use crate::support::TestVault;

const DAY_MS: u64 = 86_400_000;

fn ctx(kind: PrincipalKind, name: &str) -> CallContext {
    CallContext {
        principal: Principal::new(kind, name).unwrap(),
        request_id: "test".into(),
        peer: None,
    }
}

#[test]
fn a_value_past_its_retention_reads_as_absent() {
    let vault = TestVault::new();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    let subject = SubjectId::new("cust-1".into()).unwrap();
    let last_ip = FieldName::new("last_ip").unwrap();
    v.put(
        &ctx(PrincipalKind::Service, "account"),
        &subject,
        &Purpose::new("account").unwrap(),
        vec![(last_ip.clone(), SecretString::from("203.0.113.7"))],
    )
    .unwrap();
    let fraud = ctx(PrincipalKind::Service, "fraud");
    let purpose = Purpose::new("fraud").unwrap();
    let read = |v: &Vault| {
        v.get(&fraud, &subject, &purpose, std::slice::from_ref(&last_ip))
            .unwrap()
    };

    clock.advance(29 * DAY_MS);
    assert!(matches!(read(&v)[0].outcome, ReadOutcome::Value(_)));
    clock.advance(2 * DAY_MS);
    assert_eq!(
        read(&v)[0].outcome,
        ReadOutcome::Absent,
        "the catalog keeps last_ip 30 days"
    );
}
