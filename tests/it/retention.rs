//! Retention from the catalog: a value past its retention is never returned, even before any
//! sweeper removes it. Driven through the vault API with a manual clock.

use std::sync::Arc;

use privault::clock::ManualClock;
use privault::domain::{FieldName, Principal, PrincipalKind, Purpose, SubjectId};
use privault::vault::{CallContext, ReadOutcome, Vault};
use secrecy::SecretString;

use crate::support::{TestVault, audit_actions};

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

#[test]
fn the_sweeper_deletes_expired_fields_in_bounded_slices_and_audits_it() {
    let vault = TestVault::new();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    let account = ctx(PrincipalKind::Service, "account");
    let purpose = Purpose::new("account").unwrap();
    for i in 0..5 {
        let subject = SubjectId::new(format!("cust-{i}")).unwrap();
        let fields = vec![
            (
                FieldName::new("last_ip").unwrap(),
                SecretString::from("203.0.113.7"),
            ),
            (
                FieldName::new("email").unwrap(),
                SecretString::from("a@example.com"),
            ),
        ];
        v.put(&account, &subject, &purpose, fields).unwrap();
    }
    clock.advance(31 * DAY_MS);
    let mut cursor = privault::vault::SweepCursor::default();
    let mut deleted = 0;
    for _ in 0..10 {
        let report = v.sweep_expired(&cursor, 3).unwrap();
        assert!(report.examined <= 3);
        deleted += report.deleted;
        cursor = report.next;
        if cursor == privault::vault::SweepCursor::default() {
            break;
        }
    }
    assert_eq!(
        deleted, 5,
        "every last_ip (30 days) and no email (no limit)"
    );
    let stored: Vec<Vec<u8>> = v
        .store()
        .scan_prefix(privault::store::Cf::Fields, &[])
        .unwrap()
        .into_iter()
        .map(|(k, _)| k[32..].to_vec())
        .collect();
    assert_eq!(stored, vec![b"email".to_vec(); 5]);
    let sweeps = audit_actions(v.store())
        .iter()
        .filter(|a| *a == "retention_delete")
        .count();
    assert_eq!(sweeps, 5, "one audit record per subject swept");
}

#[test]
fn a_subject_whose_last_field_expires_is_shredded_when_the_catalog_says_so() {
    let vault = TestVault::new();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    let account = ctx(PrincipalKind::Service, "account");
    let purpose = Purpose::new("account").unwrap();
    let only_ip = SubjectId::new("cust-ip".into()).unwrap();
    let with_email = SubjectId::new("cust-email".into()).unwrap();
    let ip = || {
        (
            FieldName::new("last_ip").unwrap(),
            SecretString::from("203.0.113.7"),
        )
    };
    v.put(&account, &only_ip, &purpose, vec![ip()]).unwrap();
    v.put(
        &account,
        &with_email,
        &purpose,
        vec![
            ip(),
            (
                FieldName::new("email").unwrap(),
                SecretString::from("b@example.com"),
            ),
        ],
    )
    .unwrap();
    v.set_consent(
        &account,
        &only_ip,
        &Purpose::new("marketing").unwrap(),
        true,
        privault::domain::ConsentSource::User,
    )
    .unwrap();
    clock.advance(31 * DAY_MS);
    let report = v
        .sweep_expired(&privault::vault::SweepCursor::default(), 100)
        .unwrap();
    assert_eq!(report.deleted, 2);

    let store = v.store();
    let actions = audit_actions(store);
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "retention_shred" || *a == "retention_delete")
            .count(),
        2
    );
    assert!(actions.contains(&"retention_shred".to_owned()));
    // The emptied subject is gone entirely (keys, consents, receipt kept); the other keeps email.
    assert_eq!(
        store
            .scan_prefix(privault::store::Cf::Shredded, &[])
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .scan_prefix(privault::store::Cf::Consent, &[])
            .unwrap()
            .is_empty()
    );
    assert!(v.get_consents(&account, &only_ip).unwrap().0.is_empty());
    let read = v
        .get(
            &account,
            &with_email,
            &purpose,
            &[FieldName::new("email").unwrap()],
        )
        .unwrap();
    assert!(matches!(&read[0].outcome, ReadOutcome::Value(v) if v.as_str() == "b@example.com"));
}

/// Flips a byte in every wrapped DEK of the keys CF that is not in `spare` (the stopped vault's).
fn corrupt_keys_except(vault: &TestVault, spare: &[Vec<u8>]) {
    use privault::store::records::KeyRecord;
    use privault::store::{Batch, Cf};
    let store = vault.store();
    let mut batch = Batch::new();
    for (key, value) in store.scan_prefix(Cf::Keys, &[]).unwrap() {
        if spare.contains(&key) || key.get(32) == Some(&b'#') {
            continue;
        }
        if let Ok(mut record) = KeyRecord::decode(&value) {
            record.wrapped[0] ^= 1;
            batch.put(Cf::Keys, key, record.encode());
        }
    }
    store.write(&batch).unwrap();
}

/// The keys of the keys CF of the stopped vault.
fn key_entries(vault: &TestVault) -> Vec<Vec<u8>> {
    let store = vault.store();
    store
        .scan_prefix(privault::store::Cf::Keys, &[])
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn put_ip(v: &Vault, subject: &str) {
    v.put(
        &ctx(PrincipalKind::Service, "account"),
        &SubjectId::new(subject.into()).unwrap(),
        &Purpose::new("account").unwrap(),
        vec![
            (
                FieldName::new("last_ip").unwrap(),
                SecretString::from("203.0.113.7"),
            ),
            (
                FieldName::new("email").unwrap(),
                SecretString::from("a@example.com"),
            ),
        ],
    )
    .unwrap();
}

/// A stopped vault with `good` readable subjects (`good-0`...) and `bad`, whose DEK fails to
/// unwrap; each has an email and a last_ip (30 days).
fn with_an_unreadable_subject(good: usize) -> (TestVault, Arc<ManualClock>) {
    let vault = TestVault::new();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    for i in 0..good {
        put_ip(&v, &format!("good-{i}"));
    }
    drop(v);
    let spare = key_entries(&vault);
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    put_ip(&v, "bad");
    drop(v);
    corrupt_keys_except(&vault, &spare);
    (vault, clock)
}

#[test]
fn one_unreadable_subject_is_quarantined_and_the_sweep_goes_on() {
    let (vault, clock) = with_an_unreadable_subject(4);
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    clock.advance(31 * DAY_MS);
    let report = v
        .sweep_expired(&privault::vault::SweepCursor::default(), 1000)
        .unwrap();
    assert_eq!(
        report.deleted, 4,
        "every readable subject swept: {report:?}"
    );
    assert_eq!(report.quarantined, 1);
    let quarantined = v.quarantined().unwrap();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(
        quarantined[0].found_by,
        privault::vault::Maintenance::RetentionSweep
    );
    assert!(audit_actions(v.store()).contains(&"quarantine".to_owned()));
    // The next pass skips it instead of failing on it again.
    let again = v
        .sweep_expired(&privault::vault::SweepCursor::default(), 1000)
        .unwrap();
    assert_eq!((again.quarantined, again.skipped), (0, 1));

    // The operator's way out: the subject can still be shredded, which releases the mark.
    v.shred(
        &ctx(PrincipalKind::Operator, "dpo"),
        &SubjectId::new("bad".into()).unwrap(),
        "ticket-9",
    )
    .unwrap();
    assert!(v.quarantined().unwrap().is_empty());
}

#[test]
fn an_epoch_roll_quarantines_an_unreadable_key_and_still_destroys_the_old_kek() {
    let (vault, clock) = with_an_unreadable_subject(1);
    let v = Vault::open(&vault.config, clock.clone()).unwrap();
    let done = v
        .roll_epoch(&ctx(PrincipalKind::Operator, "sec-lead"), |_| {})
        .unwrap();
    assert!(done.done);
    assert_eq!(done.destroyed, vec![1]);
    assert_eq!(v.quarantined().unwrap().len(), 1);
    let read = v
        .get(
            &ctx(PrincipalKind::Service, "account"),
            &SubjectId::new("good-0".into()).unwrap(),
            &Purpose::new("account").unwrap(),
            &[FieldName::new("email").unwrap()],
        )
        .unwrap();
    assert!(matches!(read[0].outcome, ReadOutcome::Value(_)));
}
