//! Signed erasure receipts: what `ShredSubject` proves to the customer, as a JSON document signed
//! with the vault's audit key (Ed25519) over `"privault/erasure-receipt/v1" ‖ keyring id ‖ the
//! canonical body`. The receipt names no customer: the DPO hands it over with the request it
//! answers. Verifiable offline with the public key `privault audit public-key` prints.

use serde::{Deserialize, Serialize};

use crate::crypto::AuditSigner;

const LABEL: &[u8] = b"privault/erasure-receipt/v1";

/// How far an erasure has gone: each horizon, once reached, stays reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Horizons {
    /// The keys and values are unreadable (the shred committed): always true in a receipt.
    pub keys_destroyed: bool,
    /// The bytes have physically left the live store (flush, compaction, no WAL left).
    pub live_store_purged: bool,
    /// Every KEK epoch that wrapped the subject's DEKs is destroyed, so no backup, snapshot or
    /// archived WAL holding the wrapped DEKs can open them again.
    pub epochs_destroyed: bool,
}

/// The signed part of a receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// Format version (1).
    pub version: u32,
    /// The receipt's id (32 hex digits, random).
    pub receipt_id: String,
    /// The vault whose audit key signs it (its keyring id, hex).
    pub vault: String,
    /// When the subject was shredded (RFC 3339).
    pub shredded_at: String,
    /// The key classes whose DEKs were destroyed, with everything sealed under them.
    pub key_classes_erased: Vec<String>,
    /// The key classes kept, each with why (a legal hold's reason); empty without holds.
    pub key_classes_kept: Vec<KeptClass>,
    /// The audit record of the shred.
    pub audit_seq: u64,
    /// The KEK epochs that wrapped the erased DEKs.
    pub epochs: Vec<u32>,
    /// The horizons reached when this receipt was issued.
    pub horizons: Horizons,
    /// When this receipt was issued (RFC 3339): later issues report later horizons.
    pub issued_at: String,
}

/// A key class a shred kept, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptClass {
    /// The key class.
    pub key_class: String,
    /// Why it was kept.
    pub reason: String,
}

/// A receipt and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    /// What is signed.
    #[serde(flatten)]
    pub body: ReceiptBody,
    /// Ed25519 over the label, the keyring id and the canonical body (hex).
    pub signature: String,
}

/// Why a receipt does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    /// Not a receipt document.
    #[error("not an erasure receipt: {0}")]
    Malformed(String),
    /// The public key is not an Ed25519 public key (64 hex digits).
    #[error("the public key is not an Ed25519 public key (64 hex digits)")]
    BadKey,
    /// The signature does not match the body: the receipt was changed or not signed by this key.
    #[error("the signature does not match: the receipt was altered or signed by another vault")]
    BadSignature,
}

/// The signed bytes of a document body: `label ‖ keyring id ‖ canonical body`. serde_json writes
/// a struct's fields in declaration order, with no whitespace, so the same body always gives the
/// same bytes.
pub(crate) fn signed_message<B: Serialize>(
    label: &[u8],
    vault_hex: &str,
    body: &B,
) -> Result<Vec<u8>, ReceiptError> {
    let vault = hex::decode(vault_hex)
        .ok()
        .filter(|v| v.len() == 16)
        .ok_or_else(|| ReceiptError::Malformed("vault is not a keyring id".into()))?;
    let canonical = serde_json::to_vec(body).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    Ok([label, &vault, &canonical].concat())
}

/// Checks `signature_hex` over `message` against the audit public key `public_key` (hex).
pub(crate) fn check_signature(
    message: &[u8],
    signature_hex: &str,
    public_key: &str,
) -> Result<(), ReceiptError> {
    let key: [u8; 32] = hex::decode(public_key.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or(ReceiptError::BadKey)?;
    let signature: [u8; 64] = hex::decode(signature_hex)
        .ok()
        .and_then(|s| s.try_into().ok())
        .ok_or(ReceiptError::BadSignature)?;
    crate::crypto::verify_message(&key, message, &signature).map_err(|e| match e {
        crate::crypto::CryptoError::MalformedKey(_) => ReceiptError::BadKey,
        _ => ReceiptError::BadSignature,
    })
}

impl SignedReceipt {
    /// Signs `body` with the vault's audit key.
    pub fn sign(body: ReceiptBody, signer: &AuditSigner) -> Result<Self, ReceiptError> {
        let signature = signer.sign_message(&signed_message(LABEL, &body.vault, &body)?);
        Ok(Self {
            body,
            signature: hex::encode(signature),
        })
    }

    /// Parses and checks a receipt document against the audit public key `public_key` (hex).
    pub fn verify(document: &str, public_key: &str) -> Result<Self, ReceiptError> {
        let receipt: Self =
            serde_json::from_str(document).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        let message = signed_message(LABEL, &receipt.body.vault, &receipt.body)?;
        check_signature(&message, &receipt.signature, public_key)?;
        Ok(receipt)
    }

    /// The document: pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Key256;

    fn body() -> ReceiptBody {
        ReceiptBody {
            version: 1,
            receipt_id: "00112233445566778899aabbccddeeff".into(),
            vault: "0f".repeat(16),
            shredded_at: "2026-12-01T10:00:00Z".into(),
            key_classes_erased: vec!["default".into()],
            key_classes_kept: Vec::new(),
            audit_seq: 42,
            epochs: vec![1],
            horizons: Horizons {
                keys_destroyed: true,
                live_store_purged: true,
                epochs_destroyed: false,
            },
            issued_at: "2026-12-01T10:00:00Z".into(),
        }
    }

    #[test]
    fn a_signed_receipt_verifies_and_any_change_is_caught() {
        let signer = AuditSigner::new(&Key256::random().unwrap());
        let key = hex::encode(signer.public_key());
        let document = SignedReceipt::sign(body(), &signer).unwrap().to_json();
        assert_eq!(SignedReceipt::verify(&document, &key).unwrap().body, body());

        let tampered = document.replace("\"audit_seq\": 42", "\"audit_seq\": 43");
        assert_ne!(tampered, document);
        assert_eq!(
            SignedReceipt::verify(&tampered, &key),
            Err(ReceiptError::BadSignature)
        );
        let other = hex::encode(AuditSigner::new(&Key256::random().unwrap()).public_key());
        assert_eq!(
            SignedReceipt::verify(&document, &other),
            Err(ReceiptError::BadSignature)
        );
        assert_eq!(
            SignedReceipt::verify(&document, "abc"),
            Err(ReceiptError::BadKey)
        );
        assert!(matches!(
            SignedReceipt::verify("{}", &key),
            Err(ReceiptError::Malformed(_))
        ));
    }
}
