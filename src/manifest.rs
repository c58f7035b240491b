//! Signed extract manifests: what one `Vault/Extract` call handed out (the extract, its purpose,
//! the fields and the row keys), as a JSON document signed with the audit key over
//! `"privault/extract-manifest/v1" ‖ keyring id ‖ the canonical body`, like erasure receipts. A
//! row key is a pseudonym scoped to the extract: the manifest names no customer.

use serde::{Deserialize, Serialize};

use crate::crypto::AuditSigner;
use crate::receipt::{ReceiptError, check_signature, signed_message};

const LABEL: &[u8] = b"privault/extract-manifest/v1";

/// The signed part of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestBody {
    /// Format version (1).
    pub version: u32,
    /// The extract (32 hex digits).
    pub extract_id: String,
    /// The vault whose audit key signs it (its keyring id, hex).
    pub vault: String,
    /// The purpose every row was read for.
    pub purpose: String,
    /// The fields and views asked for.
    pub fields: Vec<String>,
    /// The rows this call returned, by row key, in order.
    pub row_keys: Vec<String>,
    /// Which call of the extract this is (1 for the first).
    pub part: u64,
    /// Whether the extract is complete (no cursor to continue from).
    pub complete: bool,
    /// When it was issued (RFC 3339).
    pub issued_at: String,
}

/// A manifest and its signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// What is signed.
    #[serde(flatten)]
    pub body: ManifestBody,
    /// Ed25519 over the label, the keyring id and the canonical body (hex).
    pub signature: String,
}

impl SignedManifest {
    /// Signs `body` with the vault's audit key.
    pub fn sign(body: ManifestBody, signer: &AuditSigner) -> Result<Self, ReceiptError> {
        let signature = signer.sign_message(&signed_message(LABEL, &body.vault, &body)?);
        Ok(Self {
            body,
            signature: hex::encode(signature),
        })
    }

    /// Parses and checks a manifest document against the audit public key `public_key` (hex).
    pub fn verify(document: &str, public_key: &str) -> Result<Self, ReceiptError> {
        let manifest: Self =
            serde_json::from_str(document).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        let message = signed_message(LABEL, &manifest.body.vault, &manifest.body)?;
        check_signature(&message, &manifest.signature, public_key)?;
        Ok(manifest)
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

    #[test]
    fn a_manifest_verifies_and_any_change_is_caught() {
        let signer = AuditSigner::new(&Key256::random().unwrap());
        let body = ManifestBody {
            version: 1,
            extract_id: "ab".repeat(16),
            vault: "01".repeat(16),
            purpose: "model_training".into(),
            fields: vec!["favorite_categories".into()],
            row_keys: vec!["cd".repeat(16)],
            part: 1,
            complete: true,
            issued_at: "2026-12-01T10:00:00.000Z".into(),
        };
        let signed = SignedManifest::sign(body, &signer).unwrap();
        let key = hex::encode(signer.public_key());
        let doc = signed.to_json();
        assert_eq!(SignedManifest::verify(&doc, &key).unwrap(), signed);
        let dropped = doc.replace(&"cd".repeat(16), &"ef".repeat(16));
        assert_eq!(
            SignedManifest::verify(&dropped, &key),
            Err(ReceiptError::BadSignature)
        );
    }
}
