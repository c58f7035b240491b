//! Signed erasure receipts: ShredSubject returns one naming no customer, it verifies offline with
//! the audit public key, any change to it is caught, and GetErasureReceipt issues it again with
//! the horizons reached since (an epoch roll destroying the KEK that wrapped the erased keys).

use std::process::Command;

use privault::api::pb;
use privault::api::pb::key_admin_client::KeyAdminClient;
use tonic::Code;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_privault");

fn verify(file: &std::path::Path, key: &str) -> std::process::Output {
    Command::new(BIN)
        .args(["receipt", "verify"])
        .arg(file)
        .args(["--public-key", key])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shred_returns_a_receipt_that_verifies_offline_and_later_horizons_are_reissued() {
    if skip_on_postgres("verifies offline against the keyring file") {
        return;
    }
    let vault = TestVault::new();
    let server = vault.start().await;
    put_profile(&server, "cust-receipt-7").await;
    let shred = server
        .client(DPO)
        .await
        .shred_subject(pb::ShredSubjectRequest {
            subject_id: "cust-receipt-7".into(),
            reason: "ticket-991".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let receipt: serde_json::Value = serde_json::from_str(&shred.receipt).unwrap();
    assert_eq!(receipt["receipt_id"], shred.receipt_id.as_str());
    assert_eq!(receipt["audit_seq"], shred.audit_seq);
    assert_eq!(
        receipt["key_classes_erased"],
        serde_json::json!(["default"])
    );
    assert_eq!(receipt["key_classes_kept"], serde_json::json!([]));
    assert_eq!(receipt["horizons"]["keys_destroyed"], true);
    assert_eq!(receipt["horizons"]["live_store_purged"], shred.purged);
    assert_eq!(receipt["horizons"]["epochs_destroyed"], false);
    assert!(!shred.receipt.contains("cust-receipt-7"), "no customer id");
    assert!(!shred.receipt.contains("ticket-991"), "no reason either");

    // Verified offline with the public key the auditor publishes.
    let public_key = server
        .auditor(AUDITOR)
        .await
        .head(pb::AuditHeadRequest::default())
        .await
        .unwrap()
        .into_inner()
        .public_key;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("receipt.json");
    std::fs::write(&file, &shred.receipt).unwrap();
    let ok = verify(&file, &public_key);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("valid erasure receipt"));

    // A tampered receipt (a kept class erased from the record, a later shred time) is refused.
    for (from, to) in [
        ("\"audit_seq\": ", "\"audit_seq\": 1"),
        ("\"default\"", "\"payment\""),
    ] {
        let tampered = dir.path().join("tampered.json");
        std::fs::write(&tampered, shred.receipt.replacen(from, to, 1)).unwrap();
        let refused = verify(&tampered, &public_key);
        assert_eq!(refused.status.code(), Some(3), "{from} -> {to}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("signature does not match"));
    }
    let other_key = "11".repeat(32);
    assert_ne!(verify(&file, &other_key).status.code(), Some(0));

    // After an epoch roll destroys the KEK that wrapped the erased DEKs, the receipt says so.
    let mut keys = KeyAdminClient::with_interceptor(
        server.channel().await,
        As::header(Some("Operator::\"sec-lead\"")),
    );
    let mut roll = keys
        .roll_epoch(pb::RollEpochRequest {})
        .await
        .unwrap()
        .into_inner();
    while roll.message().await.unwrap().is_some() {}
    let mut vault_client = server.client(DPO).await;
    let again = vault_client
        .get_erasure_receipt(pb::GetErasureReceiptRequest {
            receipt_id: shred.receipt_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .receipt;
    let again_json: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again_json["horizons"]["epochs_destroyed"], true, "{again}");
    assert_eq!(again_json["horizons"]["live_store_purged"], true);
    assert_eq!(again_json["audit_seq"], shred.audit_seq);
    std::fs::write(&file, &again).unwrap();
    assert!(verify(&file, &public_key).status.success());

    // Refusals: a malformed or unknown id, and a caller who may not read the audit log.
    let bad = vault_client
        .get_erasure_receipt(pb::GetErasureReceiptRequest {
            receipt_id: "not-hex".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let unknown = vault_client
        .get_erasure_receipt(pb::GetErasureReceiptRequest {
            receipt_id: "0".repeat(32),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let refused = server
        .client(RECOMMENDER)
        .await
        .get_erasure_receipt(pb::GetErasureReceiptRequest {
            receipt_id: shred.receipt_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    server.stop().await;

    // The published key: `privault audit public-key` prints the same key offline.
    let printed = Command::new(BIN)
        .args(["audit", "public-key", "--data-dir"])
        .arg(vault.data_dir())
        .output()
        .unwrap();
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), public_key);
}
