//! The physical purge after a shred: a purge that fails (or a crash before it) is redone at the
//! next start and checked against the live table files.

use fail::FailScenario;
use privault::store::records::KeyRecord;
use privault::store::{Cf, Store};

use crate::races::{ctx, put_email, subject};
use crate::support::*;

fn wrapped_deks(vault: &TestVault) -> Vec<Vec<u8>> {
    let store = Store::open(&vault.data_dir().join("db")).unwrap();
    store
        .scan_prefix(Cf::Keys, &[])
        .unwrap()
        .into_iter()
        .filter_map(|(_, v)| KeyRecord::decode(&v).ok().map(|r| r.wrapped))
        .collect()
}

#[test]
fn a_failed_purge_is_redone_at_the_next_start_and_checked() {
    let scenario = FailScenario::setup();
    let vault = TestVault::new();
    put_email(&vault.open().unwrap(), "cust-1", "a@example.com");
    let deks = wrapped_deks(&vault);
    assert_eq!(deks.len(), 1);

    let v = vault.open().unwrap();
    fail::cfg("store-purge", "return").unwrap();
    let outcome = v.shred(&ctx(DPO), &subject("cust-1"), "ticket-1").unwrap();
    fail::remove("store-purge");
    assert!(!outcome.purged, "the injected failure is reported");
    assert_eq!(v.pending_purges().unwrap(), 1);
    drop(v);

    let v = vault.open().unwrap();
    assert_eq!(v.pending_purges().unwrap(), 0, "redone at start");
    drop(v);
    for dek in &deks {
        assert!(
            files_containing(vault.data_dir(), dek).is_empty(),
            "a wrapped DEK outlived the redone purge"
        );
    }
    scenario.teardown();
}

#[test]
fn a_customer_back_after_a_shred_does_not_keep_the_purge_pending() {
    let scenario = FailScenario::setup();
    let vault = TestVault::new();
    let v = vault.open().unwrap();
    put_email(&v, "cust-1", "a@example.com");
    fail::cfg("store-purge", "return").unwrap();
    v.shred(&ctx(DPO), &subject("cust-1"), "ticket-1").unwrap();
    fail::remove("store-purge");
    put_email(&v, "cust-1", "b@example.com");
    drop(v);
    // The new incarnation shares the subject handle; the check tells the erased one apart.
    let v = vault.open().unwrap();
    assert_eq!(v.pending_purges().unwrap(), 0);
    scenario.teardown();
}
