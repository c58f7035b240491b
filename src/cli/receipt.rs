//! `privault receipt verify`: checks an erasure receipt or an extract manifest offline against
//! the vault's audit public key (`privault audit public-key`), and prints what it proves.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use privault::manifest::SignedManifest;
use privault::receipt::{ReceiptError, SignedReceipt};

#[derive(Subcommand)]
pub enum ReceiptCommand {
    /// Verify an erasure receipt (the `receipt` of ShredSubject or GetErasureReceipt) or an
    /// extract manifest (the `manifest` of Extract), saved as a file: exit 0 and print its facts
    /// when the signature holds, 3 when it does not.
    Verify {
        /// The receipt file (JSON).
        file: PathBuf,
        /// The vault's audit public key: 64 hex digits, or a file holding them.
        #[arg(long)]
        public_key: String,
    },
}

pub fn run(command: ReceiptCommand) -> anyhow::Result<ExitCode> {
    match command {
        ReceiptCommand::Verify { file, public_key } => {
            let document = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let key = match std::fs::read_to_string(&public_key) {
                Ok(text) => text,
                Err(_) => public_key,
            };
            let receipt = SignedReceipt::verify(&document, key.trim());
            if let Err(ReceiptError::Malformed(_)) = receipt
                && document.contains("\"extract_id\"")
            {
                return verify_manifest(&document, key.trim());
            }
            match receipt {
                Ok(receipt) => {
                    let b = &receipt.body;
                    if super::json() {
                        super::print_json(&serde_json::json!({"valid": true, "receipt": b}))?;
                    } else {
                        println!("valid erasure receipt {}", b.receipt_id);
                        println!("shredded at {}, audit seq {}", b.shredded_at, b.audit_seq);
                        println!("key classes erased: {}", b.key_classes_erased.join(", "));
                        for kept in &b.key_classes_kept {
                            println!("key class kept: {} ({})", kept.key_class, kept.reason);
                        }
                        println!(
                            "as of {}: keys destroyed {}, live store purged {}, key epochs destroyed {}",
                            b.issued_at,
                            b.horizons.keys_destroyed,
                            b.horizons.live_store_purged,
                            b.horizons.epochs_destroyed
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(3))
                }
            }
        }
    }
}

fn verify_manifest(document: &str, key: &str) -> anyhow::Result<ExitCode> {
    match SignedManifest::verify(document, key) {
        Ok(manifest) => {
            let b = &manifest.body;
            if super::json() {
                super::print_json(&serde_json::json!({"valid": true, "manifest": b}))?;
            } else {
                println!("valid extract manifest {} part {}", b.extract_id, b.part);
                println!("purpose {}, fields {}", b.purpose, b.fields.join(", "));
                println!(
                    "{} rows, issued at {}, extract complete {}",
                    b.row_keys.len(),
                    b.issued_at,
                    b.complete
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(3))
        }
    }
}
