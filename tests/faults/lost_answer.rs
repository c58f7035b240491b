//! A group write that commits but whose answer is lost (PostgreSQL: the connection drops during
//! COMMIT): its caller is refused, its records stay, and the next group chains after them
//! instead of overwriting them.

use fail::FailScenario;
use privault::audit::verify;

use crate::races::{put_email, try_put_email};
use crate::support::*;

#[test]
fn a_committed_group_whose_answer_is_lost_keeps_its_records_and_the_chain_goes_on_after_them() {
    let scenario = FailScenario::setup();
    let vault = TestVault::new();
    let v = vault.open().unwrap();
    put_email(&v, "cust-1", "one@example.com");
    let before = v.audit_head_seq();

    fail::cfg("audit-write-answer-lost", "1*return").unwrap();
    let refused = try_put_email(&v, "cust-2", "two@example.com");
    assert!(
        matches!(refused, Err(privault::vault::VaultError::Unavailable(_))),
        "{refused:?}"
    );
    fail::remove("audit-write-answer-lost");

    put_email(&v, "cust-3", "three@example.com");
    // The refused write's record is durable, and the next one follows it: none was overwritten.
    assert_eq!(v.audit_head_seq(), before + 2);
    let views = audit_views(v.store());
    assert_eq!(views.len() as u64, v.audit_head_seq());
    assert!(views.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    let puts = views.iter().filter(|r| r.action == "write").count();
    assert_eq!(puts, 3, "every write that committed keeps its record");
    assert_eq!(verify(v.store()).unwrap().0, v.audit_head_seq());
    drop(v);
    // And the store agrees at the next start.
    let v = vault.open().unwrap();
    assert_eq!(v.audit_head_seq(), before + 2);
    scenario.teardown();
}
