//! Each step of a multi-step operation failing in turn: the write, the shred (its ledger line, its
//! commit), the epoch roll (after a slice, before the old KEK is destroyed). The vault rolls back
//! (nothing changed) or resumes (finished at the next call or start); never half-applied.

use fail::FailScenario;
use privault::vault::{ReadOutcome, Vault, VaultError};

use crate::races::{ctx, put_email, subject, try_put_email};
use crate::support::*;

fn email(v: &Vault, id: &str) -> ReadOutcome {
    read_field(v, ACCOUNT, id, "account", "email")
}

#[test]
fn the_audit_log_reports_unwritable_from_a_failed_write_until_one_succeeds() {
    let scenario = FailScenario::setup();
    let vault = TestVault::new();
    let v = vault.open().unwrap();
    let writable = v.audit_writable();
    put_email(&v, "cust-1", "one@example.com");
    assert!(*writable.borrow(), "writable after a good write");
    fail::cfg("audit-write", "return").unwrap();
    let failed = try_put_email(&v, "cust-1", "two@example.com");
    assert!(failed.is_err());
    assert!(
        !*writable.borrow(),
        "a failed write makes the log unwritable"
    );
    fail::remove("audit-write");
    put_email(&v, "cust-1", "three@example.com");
    assert!(
        *writable.borrow(),
        "the next good write makes it writable again"
    );
    scenario.teardown();
}

#[test]
fn a_write_whose_commit_fails_changes_nothing() {
    let scenario = FailScenario::setup();
    let vault = TestVault::new();
    let v = vault.open().unwrap();
    put_email(&v, "cust-1", "old@example.com");
    fail::cfg("audit-write", "return").unwrap();
    let failed = try_put_email(&v, "cust-1", "new@example.com");
    fail::remove("audit-write");
    assert!(
        matches!(failed, Err(VaultError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(email(&v, "cust-1"), value("old@example.com"));
    drop(v);
    let v = vault.open().unwrap();
    assert_eq!(email(&v, "cust-1"), value("old@example.com"));
    assert!(privault::audit::verify(v.store()).is_ok());
    scenario.teardown();
}

#[test]
fn a_shred_whose_ledger_line_cannot_be_written_is_refused_and_changes_nothing() {
    let scenario = FailScenario::setup();
    let vault = TestVault::new();
    let v = vault.open().unwrap();
    put_email(&v, "cust-1", "a@example.com");
    fail::cfg("ledger-append", "return").unwrap();
    let failed = v.shred(&ctx(DPO), &subject("cust-1"), "ticket-1");
    fail::remove("ledger-append");
    assert!(
        matches!(failed, Err(VaultError::Unavailable(_))),
        "{failed:?}"
    );
    assert_eq!(email(&v, "cust-1"), value("a@example.com"));
    drop(v);
    assert_eq!(
        std::fs::read_to_string(vault.config.ledger_path()).unwrap(),
        "",
        "no ledger line for a refused shred"
    );
    let v = vault.open().unwrap();
    assert_eq!(email(&v, "cust-1"), value("a@example.com"));
    scenario.teardown();
}

#[test]
fn a_shred_whose_commit_fails_is_finished_at_the_next_start() {
    let scenario = FailScenario::setup();
    let vault = TestVault::new();
    let v = vault.open().unwrap();
    put_email(&v, "cust-1", "a@example.com");
    put_email(&v, "cust-2", "b@example.com");
    fail::cfg("audit-write", "return").unwrap();
    let failed = v.shred(&ctx(DPO), &subject("cust-1"), "ticket-1");
    fail::remove("audit-write");
    assert!(
        matches!(failed, Err(VaultError::Unavailable(_))),
        "{failed:?}"
    );
    drop(v);
    // The ledger line was written first: the shred the caller asked for is carried out at start.
    let v = vault.open().unwrap();
    assert_eq!(email(&v, "cust-1"), ReadOutcome::Absent);
    assert_eq!(email(&v, "cust-2"), value("b@example.com"));
    assert_eq!(v.pending_purges().unwrap(), 0);
    scenario.teardown();
}

#[test]
fn an_epoch_roll_stopped_at_any_step_resumes_and_destroys_the_old_kek() {
    let scenario = FailScenario::setup();
    for point in ["roll-after-slice", "roll-before-destroy"] {
        let vault = TestVault::new();
        let v = vault.open().unwrap();
        for i in 0..3 {
            put_email(&v, &format!("cust-{i}"), "a@example.com");
        }
        fail::cfg(point, "return").unwrap();
        let stopped = v.roll_epoch(&ctx("Operator::\"sec-lead\""), |_| {});
        fail::remove(point);
        assert!(stopped.is_err(), "{point}");
        // Reads and writes go on meanwhile, under either epoch.
        assert_eq!(email(&v, "cust-0"), value("a@example.com"));
        put_email(&v, "cust-3", "d@example.com");
        assert!(v.epoch_roll_pending(), "{point}");
        drop(v);
        let v = vault.open().unwrap();
        let done = v.resume_epoch_roll().unwrap().unwrap();
        assert!(done.done, "{point}");
        assert_eq!(done.destroyed, vec![1], "{point}");
        for i in 0..4 {
            assert!(matches!(
                email(&v, &format!("cust-{i}")),
                ReadOutcome::Value(_)
            ));
        }
    }
    scenario.teardown();
}
