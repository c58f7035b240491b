//! Races made deterministic: a fail point parks one call at the racing step while another
//! commits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use fail::FailScenario;
use privault::domain::{FieldName, Principal, Purpose, SubjectId};
use privault::vault::{CallContext, Vault};
use secrecy::SecretString;

use crate::support::*;

pub fn ctx(principal: &str) -> CallContext {
    CallContext {
        principal: Principal::parse_uid(principal).unwrap(),
        request_id: "t".into(),
        peer: None,
    }
}

pub fn subject(id: &str) -> SubjectId {
    SubjectId::new(id.into()).unwrap()
}

pub fn put_email(v: &Vault, id: &str, email: &str) {
    try_put_email(v, id, email).unwrap();
}

/// Writes `email` for `id` as the account service, returning what the vault answered.
pub fn try_put_email(
    v: &Vault,
    id: &str,
    email: &str,
) -> Result<Vec<FieldName>, privault::vault::VaultError> {
    v.put(
        &ctx(ACCOUNT),
        &subject(id),
        &Purpose::new("account").unwrap(),
        vec![(FieldName::new("email").unwrap(), SecretString::from(email))],
    )
}

/// Parks the first call that reaches `point` until the test lets it go.
struct Park {
    arrived: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl Park {
    fn at(point: &str) -> Self {
        let arrived = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let first = AtomicBool::new(true);
        let (a, r) = (Arc::clone(&arrived), Arc::clone(&release));
        fail::cfg_callback(point, move || {
            if first.swap(false, Ordering::SeqCst) {
                a.wait();
                r.wait();
            }
        })
        .unwrap();
        Self { arrived, release }
    }
}

#[test]
fn a_read_racing_a_shred_cannot_put_the_erased_keys_back_in_the_cache() {
    let scenario = FailScenario::setup();
    let vault = TestVault::new();
    put_email(&vault.open().unwrap(), "cust-1", "a@example.com");
    // A fresh open: the key cache is empty, so the export below loads the keys from the store.
    let v = Arc::new(vault.open().unwrap());
    let park = Park::at("keys-loaded");
    let reader = {
        let v = Arc::clone(&v);
        std::thread::spawn(move || {
            // Loads cust-1's keys, then parks before filling the cache.
            let _ = v.export(&ctx(DPO), &subject("cust-1"));
        })
    };
    park.arrived.wait();
    v.shred(&ctx(DPO), &subject("cust-1"), "ticket-1").unwrap();
    // The reader fills the cache with the keys it loaded before the shred.
    park.release.wait();
    reader.join().unwrap();
    fail::remove("keys-loaded");

    let export = v.export(&ctx(DPO), &subject("cust-1")).unwrap();
    assert!(
        export.history.is_empty() && export.fields.is_empty(),
        "the erased customer's history came back through the key cache: {} records",
        export.history.len()
    );
    scenario.teardown();
}
