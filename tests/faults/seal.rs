//! Sealing a closed audit segment failing before or after its file is written: the records stay in
//! the live column family, the chain verifies throughout, and the next start seals them.

use std::time::Duration;

use fail::FailScenario;
use privault::audit::{Sealed, verify};

use crate::races::put_email;
use crate::support::*;

#[test]
fn a_seal_stopped_before_or_after_its_file_is_finished_at_the_next_start() {
    let scenario = FailScenario::setup();
    for point in ["audit-seal-before-file", "audit-seal-after-file"] {
        let mut vault = TestVault::new();
        vault.config.audit.segment_bytes = 4096;
        let v = vault.open().unwrap();
        fail::cfg(point, "return").unwrap();
        put_email(&v, "cust-1", "one@example.com");
        for _ in 0..120 {
            assert_eq!(
                read_field(&v, ACCOUNT, "cust-1", "account", "email"),
                value("one@example.com")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            Sealed::load(v.store()).unwrap().checkpoints().is_empty(),
            "{point}: nothing sealed"
        );
        let head = v.audit_head_seq();
        assert_eq!(verify(v.store()).unwrap().0, head, "{point}");
        assert_eq!(audit_views(v.store()).len() as u64, head, "{point}");
        // Without a restart: the next roll seals every closed segment, the failed ones first.
        fail::remove(point);
        for _ in 0..60 {
            read_field(&v, ACCOUNT, "cust-1", "account", "email");
        }
        let mut segments = Vec::new();
        for _ in 0..100 {
            segments = Sealed::load(v.store())
                .unwrap()
                .checkpoints()
                .iter()
                .map(|c| c.segment)
                .collect();
            if segments.len() >= 3 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(segments.len() >= 3, "{point}: {segments:?}");
        assert_eq!(
            segments,
            (1..=segments.len() as u64).collect::<Vec<_>>(),
            "{point}: no closed segment left unsealed"
        );
        drop(v);
        let v = vault.open().unwrap();
        let mut sealed = Vec::new();
        for _ in 0..100 {
            sealed = Sealed::load(v.store()).unwrap().checkpoints();
            if sealed.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(sealed.len() >= 2, "{point}: sealed at the next start");
        let head = v.audit_head_seq();
        assert_eq!(verify(v.store()).unwrap().0, head, "{point}");
        let views = audit_views(v.store());
        assert_eq!(views.len() as u64, head, "{point}: every record reads once");
        assert!(views.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
    }
    scenario.teardown();
}
