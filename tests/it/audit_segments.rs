//! The audit log as a log: sealed segments, archival, the live retention bound and reading and
//! verifying across a drop.

use std::time::Duration;

use privault::audit::{Log, LogRetention, Sealed, archive_to, verify, verify_range};
use privault::store::Store;

use crate::support::*;

/// A vault whose audit log is cut into 4 KiB segments, bounded to `max_bytes` once archived.
fn small_segments(max_bytes: u64) -> TestVault {
    let mut vault = TestVault::new();
    vault.config.audit.segment_bytes = 4096;
    vault.config.audit.retention = LogRetention {
        max_age_ms: None,
        max_bytes: Some(max_bytes),
    };
    vault
}

/// Waits for the sealer to seal at least `n` segments.
async fn sealed_at_least(store: &Store, n: usize) -> Vec<privault::audit::Checkpoint> {
    for _ in 0..200 {
        let sealed = Sealed::load(store).unwrap().checkpoints();
        if sealed.len() >= n {
            return sealed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sealer did not seal {n} segments");
}

fn seg_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            })
            .count()
        })
        .unwrap_or(0)
}

async fn subject_history(server: &TestServer, subject: &str) -> Vec<u64> {
    let mut auditor = server.auditor(AUDITOR).await;
    let (records, _) = audit_query(
        &mut auditor,
        privault::api::pb::AuditQueryRequest {
            subject_id: subject.into(),
            ..Default::default()
        },
    )
    .await;
    records.iter().map(|r| r.seq).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn archived_segments_leave_the_live_log_and_the_chain_reads_and_verifies_across_the_drop() {
    if skip_on_postgres("sealed segment files are RocksDB's; on PostgreSQL the table is the log") {
        return;
    }
    let vault = small_segments(1);
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    put_profile(&server, "cust-2").await;
    let mut checkout = server.client(CHECKOUT).await;
    for i in 0..150 {
        let subject = if i % 3 == 0 { "cust-1" } else { "cust-2" };
        get(&mut checkout, subject, "fulfillment", &["email"]).await;
    }
    let v = server.vault();
    let sealed = sealed_at_least(v.store(), 3).await;
    let segments_dir = vault.data_dir().join("audit");
    let history = subject_history(&server, "cust-1").await;
    assert!(history.len() > 50, "{}", history.len());

    // Past the bound, nothing archived: everything stays, and the vault says so.
    let report = v.sweep_audit_log().unwrap();
    assert!(report.dropped.is_empty());
    assert_eq!(report.blocked_by, Some(1));
    assert_eq!(*v.audit_retention_blocked().borrow(), Some(1));
    assert_eq!(seg_files(&segments_dir), sealed.len());

    // Archived and verified: the sweep drops them; the live directory shrinks.
    let archive = vault.dir.path().join("archive");
    let mut reported = 0;
    let archived = archive_to(
        &Sealed::load(v.store()).unwrap(),
        &archive,
        "2026-12-01T00:00:00Z".into(),
        |_| reported += 1,
    )
    .unwrap();
    assert_eq!(reported, archived.len(), "progress once per segment");
    assert!(archived.len() >= sealed.len());
    assert!(archived.iter().all(|a| a.copied));
    let report = v.sweep_audit_log().unwrap();
    assert_eq!(report.dropped.len(), archived.len(), "{report:?}");
    assert_eq!(report.blocked_by, None);
    assert_eq!(seg_files(&segments_dir), 0);
    assert!(audit_actions(v.store()).contains(&"audit_drop".to_owned()));

    // Queries still read the dropped records, from the archive the markers name.
    assert_eq!(
        subject_history(&server, "cust-1").await[..history.len()],
        history[..]
    );
    // A tail from a record whose archive is not at hand says so; it never skips to the next one.
    let away = vault.dir.path().join("archive-away");
    std::fs::rename(&archive, &away).unwrap();
    let mut auditor = server.auditor(AUDITOR).await;
    let mut tail = auditor
        .tail(privault::api::pb::AuditTailRequest { from_seq: 1 })
        .await
        .unwrap()
        .into_inner();
    let status = tail.message().await.expect_err("no record is sent");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    std::fs::rename(&away, &archive).unwrap();
    let head = v.audit_head_seq();
    drop(v);
    server.stop().await;

    let store = vault.store_view();
    // The live log verifies alone (from the dropped segments' signed checkpoint) and with the
    // archive as one chain from seq 1.
    assert_eq!(verify(&store).unwrap().0, head);
    let with_archive = Sealed::load_with_archive(&store, &archive).unwrap();
    let log = Log {
        store: &store,
        sealed: &with_archive,
    };
    assert_eq!(verify_range(log, 1, None).unwrap().0, head);
    // An archived segment changed is found at its seq; each copy verifies alone.
    let first = &archived[0].checkpoint;
    let path = archive.join(format!("{:016}.seg", first.segment));
    privault::audit::verify_segment(&path, Some(&first.public_key)).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    bytes[len / 2] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let err = verify_range(log, 1, None).unwrap_err();
    assert!(
        err.seq >= first.first_seq && err.seq <= first.last_seq,
        "{err}"
    );
    assert!(privault::audit::verify_segment(&path, None).is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_tail_is_found_against_the_last_signed_checkpoint() {
    if skip_on_postgres("sealed segment files are RocksDB's; on PostgreSQL the table is the log") {
        return;
    }
    let vault = small_segments(u64::MAX);
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    let mut checkout = server.client(CHECKOUT).await;
    for _ in 0..120 {
        get(&mut checkout, "cust-1", "fulfillment", &["email"]).await;
    }
    let sealed = sealed_at_least(server.vault().store(), 2).await;
    server.stop().await;
    let last = *sealed.last().unwrap();
    // The tail cut: the last sealed segment's file and every live record after it removed.
    std::fs::remove_file(
        vault
            .data_dir()
            .join("audit")
            .join(format!("{:016}.seg", last.segment)),
    )
    .unwrap();
    {
        let store = vault.store();
        let mut batch = privault::store::Batch::new();
        batch.delete_range(
            privault::store::Cf::Audit,
            (last.last_seq + 1).to_be_bytes().to_vec(),
            u64::MAX.to_be_bytes().to_vec(),
        );
        store.write(&batch).unwrap();
    }
    let store = vault.store_view();
    let err = verify(&store).unwrap_err();
    assert_eq!(err.seq, last.first_seq, "{err}");
    assert!(!err.unreadable);
}
