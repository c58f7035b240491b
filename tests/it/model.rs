//! The model-based test: random sequences of puts, reads, deletes, shreds, re-creations, consent
//! changes on parent and child purposes, DEK rotations, epoch rolls, clock jumps past retention,
//! sweeps and restarts, run against the real vault (RocksDB in a temp dir, the shipped policies)
//! and checked after every step against a small model of what each principal may see.
//!
//! CI runs a bounded number of sequences; `PRIVAULT_MODEL_CASES=2000 PRIVAULT_MODEL_STEPS=80
//! cargo test --test it model -- --nocapture` is the long soak.

use std::collections::BTreeMap;
use std::sync::Arc;

use privault::clock::{Clock, ManualClock};
use privault::domain::{FieldName, Principal, Purpose, SubjectId};
use privault::vault::{CallContext, ReadOutcome, SweepCursor, Vault};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use secrecy::SecretString;

use crate::support::TestVault;

const DAY_MS: u64 = 86_400_000;
const SUBJECTS: usize = 3;
/// Fields the model covers: one without retention, one with (90 days), one the recommender reads.
const FIELDS: [&str; 3] = ["email", "recent_views", "favorite_categories"];
const MARKETING: [&str; 3] = ["marketing", "email_marketing", "sms_marketing"];
const VALUES: [&str; 3] = ["v-one", "v-two", "v-three"];

#[derive(Debug, Clone)]
enum Op {
    Put {
        subject: usize,
        field: usize,
        value: usize,
    },
    Delete {
        subject: usize,
        field: usize,
    },
    Shred {
        subject: usize,
    },
    Consent {
        subject: usize,
        purpose: usize,
        granted: bool,
    },
    Rotate {
        subject: usize,
    },
    RollEpoch,
    Advance {
        days: u64,
    },
    Sweep,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let subject = 0..SUBJECTS;
    prop_oneof![
        4 => (subject.clone(), 0..FIELDS.len(), 0..VALUES.len())
            .prop_map(|(subject, field, value)| Op::Put { subject, field, value }),
        1 => (subject.clone(), 0..FIELDS.len()).prop_map(|(subject, field)| Op::Delete { subject, field }),
        2 => subject.clone().prop_map(|subject| Op::Shred { subject }),
        4 => (subject.clone(), 0..MARKETING.len(), any::<bool>())
            .prop_map(|(subject, purpose, granted)| Op::Consent { subject, purpose, granted }),
        1 => subject.prop_map(|subject| Op::Rotate { subject }),
        1 => Just(Op::RollEpoch),
        1 => prop_oneof![Just(1u64), Just(45), Just(100)].prop_map(|days| Op::Advance { days }),
        1 => Just(Op::Sweep),
        2 => Just(Op::Restart),
    ]
}

/// What the vault should hold of one subject.
#[derive(Debug, Clone, Default)]
struct ModelSubject {
    /// field → (value, expires at).
    fields: BTreeMap<usize, (usize, Option<u64>)>,
    /// purpose index → granted.
    consents: BTreeMap<usize, bool>,
}

#[derive(Debug, Default)]
struct Model {
    subjects: [ModelSubject; SUBJECTS],
}

/// The outcome a read should have: `None` for DENIED, else the value (or `None` inside for ABSENT).
type Expected = Option<Option<String>>;

impl Model {
    fn stored(&self, subject: usize, field: usize, now: u64) -> Option<String> {
        self.subjects[subject]
            .fields
            .get(&field)
            .filter(|(_, expires)| expires.is_none_or(|e| e > now))
            .map(|(v, _)| VALUES[*v].to_owned())
    }

    /// The shipped policies' answer for the mailer reading `email` for `purpose`: the most specific
    /// consent record (the purpose's own, else its parent's) must be a grant.
    fn mailer(&self, subject: usize, purpose: usize, now: u64) -> Expected {
        let consents = &self.subjects[subject].consents;
        let effective = consents.get(&purpose).or(consents.get(&0)).copied();
        (effective == Some(true)).then(|| self.stored(subject, 0, now))
    }
}

fn ctx(principal: &str) -> CallContext {
    CallContext {
        principal: Principal::parse_uid(principal).unwrap(),
        request_id: "model".into(),
        peer: None,
    }
}

fn sid(subject: usize) -> SubjectId {
    SubjectId::new(format!("cust-{subject}")).unwrap()
}

fn read(v: &Vault, principal: &str, subject: usize, purpose: &str, field: &str) -> Expected {
    let reads = v
        .get(
            &ctx(principal),
            &sid(subject),
            &Purpose::new(purpose).unwrap(),
            &[FieldName::new(field).unwrap()],
        )
        .unwrap_or_else(|e| panic!("{principal} reading {field} for {purpose}: {e}"));
    match &reads[0].outcome {
        ReadOutcome::Value(v) => Some(Some(v.as_str().to_owned())),
        ReadOutcome::Absent => Some(None),
        ReadOutcome::Denied => None,
        ReadOutcome::Masked(m) => panic!("unexpected masked read {m}"),
        ReadOutcome::OverBudget => panic!("the model reads far fewer subjects than any budget"),
        ReadOutcome::Held => panic!("the model places no legal hold"),
    }
}

struct Run {
    vault: TestVault,
    clock: Arc<ManualClock>,
    live: Option<Vault>,
}

impl Run {
    fn v(&mut self) -> &Vault {
        if self.live.is_none() {
            let clock: Arc<dyn Clock> = self.clock.clone();
            self.live = Some(Vault::open(&self.vault.config, clock).unwrap());
        }
        self.live.as_ref().unwrap()
    }
}

fn apply(run: &mut Run, model: &mut Model, op: &Op) {
    let now = run.clock.now_ms();
    match *op {
        Op::Put {
            subject,
            field,
            value,
        } => {
            run.v()
                .put(
                    &ctx("Service::\"account\""),
                    &sid(subject),
                    &Purpose::new("account").unwrap(),
                    vec![(
                        FieldName::new(FIELDS[field]).unwrap(),
                        SecretString::from(VALUES[value]),
                    )],
                )
                .unwrap();
            let expires = (FIELDS[field] == "recent_views").then_some(now + 90 * DAY_MS);
            model.subjects[subject]
                .fields
                .insert(field, (value, expires));
        }
        Op::Delete { subject, field } => {
            run.v()
                .delete(
                    &ctx("Service::\"account\""),
                    &sid(subject),
                    &Purpose::new("account").unwrap(),
                    &[FieldName::new(FIELDS[field]).unwrap()],
                )
                .unwrap();
            model.subjects[subject].fields.remove(&field);
        }
        Op::Shred { subject } => {
            run.v()
                .shred(&ctx("Operator::\"dpo\""), &sid(subject), "ticket-model")
                .unwrap();
            model.subjects[subject] = ModelSubject::default();
        }
        Op::Consent {
            subject,
            purpose,
            granted,
        } => {
            run.v()
                .set_consent(
                    &ctx("Service::\"account\""),
                    &sid(subject),
                    &Purpose::new(MARKETING[purpose]).unwrap(),
                    granted,
                    privault::domain::ConsentSource::User,
                )
                .unwrap();
            model.subjects[subject].consents.insert(purpose, granted);
        }
        Op::Rotate { subject } => {
            run.v()
                .rotate_subject_keys(&ctx("Operator::\"sec-lead\""), &sid(subject))
                .unwrap();
        }
        Op::RollEpoch => {
            let done = run
                .v()
                .roll_epoch(&ctx("Operator::\"sec-lead\""), |_| {})
                .unwrap();
            assert!(done.done);
        }
        Op::Advance { days } => run.clock.advance(days * DAY_MS),
        Op::Sweep => {
            let mut cursor = SweepCursor::default();
            loop {
                let report = run.v().sweep_expired(&cursor, 100).unwrap();
                assert_eq!(report.quarantined, 0);
                cursor = report.next;
                if cursor == SweepCursor::default() {
                    break;
                }
            }
            // Expired fields are gone; a subject left with nothing is shredded (shred_when_empty).
            for s in &mut model.subjects {
                s.fields
                    .retain(|_, (_, expires)| expires.is_none_or(|e| e > now));
            }
            let _ = now;
        }
        Op::Restart => run.live = None,
    }
}

/// Every read the model can predict, compared.
fn check(run: &mut Run, model: &Model) -> Result<(), TestCaseError> {
    let now = run.clock.now_ms();
    for subject in 0..SUBJECTS {
        for (field, name) in FIELDS.iter().enumerate() {
            let got = read(run.v(), "Service::\"account\"", subject, "account", name);
            prop_assert_eq!(
                got,
                Some(model.stored(subject, field, now)),
                "account reads {} of cust-{}",
                name,
                subject
            );
        }
        let got = read(
            run.v(),
            "Service::\"recommender\"",
            subject,
            "personalization",
            "favorite_categories",
        );
        prop_assert_eq!(
            got,
            Some(model.stored(subject, 2, now)),
            "recommender, cust-{}",
            subject
        );
        for (purpose, name) in MARKETING.iter().enumerate() {
            let got = read(run.v(), "Service::\"mailer\"", subject, name, "email");
            prop_assert_eq!(
                got,
                model.mailer(subject, purpose, now),
                "mailer reads email of cust-{} for {} (consents {:?})",
                subject,
                name,
                model.subjects[subject].consents
            );
        }
    }
    Ok(())
}

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_vault_matches_the_model_through_restarts_shreds_and_consent_changes() {
    let cases = env("PRIVAULT_MODEL_CASES", 12);
    let steps = env("PRIVAULT_MODEL_STEPS", 30) as usize;
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let total = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&proptest::collection::vec(op(), 1..=steps), |ops| {
        let mut run = Run {
            vault: TestVault::new(),
            clock: Arc::new(ManualClock::new(1_800_000_000_000)),
            live: None,
        };
        let mut model = Model::default();
        for op in &ops {
            // Retention shreds subjects left empty, which the model mirrors by clearing consents
            // too: a sweep that empties a subject erases everything of it.
            let emptied_by_sweep: Vec<usize> = if matches!(op, Op::Sweep) {
                let now = run.clock.now_ms();
                (0..SUBJECTS)
                    .filter(|s| {
                        let f = &model.subjects[*s].fields;
                        !f.is_empty() && f.values().all(|(_, e)| e.is_some_and(|e| e <= now))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            apply(&mut run, &mut model, op);
            for s in emptied_by_sweep {
                model.subjects[s] = ModelSubject::default();
            }
            check(&mut run, &model)?;
            total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let v = run.v();
        prop_assert!(
            privault::audit::verify(v.store()).is_ok(),
            "the chain verifies"
        );
        Ok(())
    });
    eprintln!(
        "model: {cases} sequences, {} steps checked",
        total.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
