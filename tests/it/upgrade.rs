//! A data directory written by data format 1 (pseudonyms in clear, untagged policy versions and
//! consents, ledger lines without incarnations; `tests/data/format1`, made by the previous
//! version) opens, is upgraded in place and keeps every promise.

use std::sync::Arc;

use privault::audit::Action;
use privault::clock::ManualClock;
use privault::domain::{Principal, SubjectId};
use privault::store::Cf;
use privault::store::keys::audit_key;
use privault::vault::{CallContext, ReadOutcome, Vault, VaultConfig};

use crate::support::*;

fn ctx(p: &str) -> CallContext {
    CallContext {
        principal: Principal::parse_uid(p).unwrap(),
        request_id: "upgrade".into(),
        peer: None,
    }
}

/// The fixture copied into a private temp dir.
fn format1_copy() -> (tempfile::TempDir, VaultConfig) {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format1");
    for dir in [data.clone(), data.join("db")] {
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
    }
    for sub in ["", "db"] {
        for entry in std::fs::read_dir(fixture.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                // Git keeps no file modes but the executable bit, so a clean clone holds the key
                // file as 0644: the copy gets the owner-only mode a real data directory has.
                let to = data.join(sub).join(path.file_name().unwrap());
                std::fs::copy(&path, &to).unwrap();
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }
    (tmp, VaultConfig::new(data, shipped_policies()))
}

fn email(v: &Vault, principal: &str, id: &str, purpose: &str) -> ReadOutcome {
    read_field(v, principal, id, purpose, "email")
}

#[test]
fn a_format1_directory_is_upgraded_in_place_and_keeps_its_data_chain_and_consents() {
    let (_tmp, config) = format1_copy();
    let clock = Arc::new(ManualClock::new(1_790_000_100_000));
    let v = Vault::open(&config, clock.clone()).unwrap();
    let first_new_seq = v.audit_head_seq();
    assert_eq!(
        email(&v, ACCOUNT, "cust-1", "account"),
        value("one@example.com")
    );
    assert_eq!(
        email(&v, ACCOUNT, "cust-2", "account"),
        value("two@example.com")
    );
    // cust-3 was shredded, then came back: format 1's ledger line names no incarnation, and the
    // time rule spares what came after the shred.
    assert_eq!(
        email(&v, ACCOUNT, "cust-3", "account"),
        value("back@example.com")
    );
    // Consents (tagged by the upgrade) still decide.
    assert_eq!(
        email(&v, MAILER, "cust-1", "email_marketing"),
        value("one@example.com")
    );
    assert_eq!(
        email(&v, MAILER, "cust-2", "email_marketing"),
        ReadOutcome::Denied
    );
    // The chain continues across the upgrade, and the upgrade is on it.
    assert!(privault::audit::verify(v.store()).is_ok());
    assert!(audit_actions(v.store()).contains(&"pseudonym_wrap".to_owned()));
    let first = v.store().get(Cf::Audit, &audit_key(1)).unwrap().unwrap();
    let (_, last) = v.store().last(Cf::Audit).unwrap().unwrap();
    assert_eq!(
        (first[0], last[0]),
        (b'{', 2),
        "the JSON records are kept as written, the binary ones continue them"
    );
    // The upgrade indexed the JSON records by subject: cust-2's history holds its format-1 write
    // and today's reads.
    let history = v
        .export(&ctx(DPO), &SubjectId::new("cust-2".into()).unwrap())
        .unwrap()
        .history;
    assert_eq!(history.first().map(|h| h.action), Some(Action::Write));
    assert!(
        history
            .iter()
            .any(|h| h.action == Action::Read && h.seq > first_new_seq)
    );
    // No pseudonym is left in clear: every entry is the longer wrapped record.
    let entries = v.store().scan_prefix(Cf::Keys, &[]).unwrap();
    let clear = entries
        .iter()
        .filter(|(k, v)| k.ends_with(b"#pseudonym") && v.len() == 16)
        .count();
    assert_eq!(clear, 0);
    drop(v);
    // Reopened as format 2, nothing to upgrade again; writes and shreds work.
    let v = Vault::open(&config, clock).unwrap();
    v.shred(
        &ctx(DPO),
        &SubjectId::new("cust-1".into()).unwrap(),
        "ticket-2",
    )
    .unwrap();
    assert_eq!(email(&v, ACCOUNT, "cust-1", "account"), ReadOutcome::Absent);
    assert_eq!(
        email(&v, ACCOUNT, "cust-2", "account"),
        value("two@example.com")
    );
}
