//! The keyring file format (JSON, versioned): what is stored, and its strict parsing.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::crypto::KdfParams;
use crate::crypto::root::WrappedKey;

/// The keyring format this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyring {
    format: u32,
    id: String,
    root_check: String,
    current_epoch: u32,
    epochs: Vec<RawEpoch>,
    index_key: RawWrapped,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    audit_key: Option<RawWrapped>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lookup_key: Option<RawWrapped>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kdf: Option<RawKdf>,
}

/// How the root key is derived from a passphrase, when it is.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKdf {
    algorithm: String,
    m_kib: u32,
    t: u32,
    p: u32,
    salt: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEpoch {
    epoch: u32,
    created_ms: u64,
    nonce: String,
    wrapped: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWrapped {
    nonce: String,
    wrapped: String,
}

/// A parsed keyring file.
pub(super) struct KeyringFile {
    pub format: u32,
    pub id: [u8; 16],
    pub root_check: [u8; 32],
    pub current_epoch: u32,
    pub epochs: Vec<EpochEntry>,
    pub index_key: WrappedEntry,
    /// The Ed25519 audit signing seed; absent in keyrings written before audit signing.
    pub audit_key: Option<WrappedEntry>,
    /// The blind-index key for lookups; absent in keyrings written before lookups.
    pub lookup_key: Option<WrappedEntry>,
    /// The Argon2id parameters and salt when the root key comes from a passphrase.
    pub kdf: Option<KdfParams>,
}

pub(super) struct EpochEntry {
    pub epoch: u32,
    pub created_ms: Millis,
    pub key: WrappedEntry,
}

pub(super) struct WrappedEntry {
    nonce: [u8; 12],
    wrapped: Vec<u8>,
}

impl From<WrappedKey> for WrappedEntry {
    fn from(w: WrappedKey) -> Self {
        Self {
            nonce: w.nonce,
            wrapped: w.ciphertext,
        }
    }
}

impl WrappedEntry {
    pub fn to_wrapped(&self) -> WrappedKey {
        WrappedKey {
            nonce: self.nonce,
            ciphertext: self.wrapped.clone(),
        }
    }

    fn raw(&self) -> RawWrapped {
        RawWrapped {
            nonce: hex::encode(self.nonce),
            wrapped: hex::encode(&self.wrapped),
        }
    }

    fn parse(nonce: &str, wrapped: &str) -> Result<Self, String> {
        Ok(Self {
            nonce: fixed_hex(nonce, "nonce")?,
            wrapped: hex::decode(wrapped).map_err(|_| "a wrapped key is not hex".to_owned())?,
        })
    }
}

fn fixed_hex<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = hex::decode(text).map_err(|_| format!("`{what}` is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| format!("`{what}` is not {N} bytes"))
}

impl KeyringFile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawKeyring = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if raw.format != FORMAT_VERSION {
            return Err(format!(
                "format {} is not supported (this version reads {FORMAT_VERSION})",
                raw.format
            ));
        }
        let epochs = raw
            .epochs
            .iter()
            .map(|e| {
                Ok(EpochEntry {
                    epoch: e.epoch,
                    created_ms: e.created_ms,
                    key: WrappedEntry::parse(&e.nonce, &e.wrapped)?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            format: raw.format,
            id: fixed_hex(&raw.id, "id")?,
            root_check: fixed_hex(&raw.root_check, "root_check")?,
            current_epoch: raw.current_epoch,
            epochs,
            index_key: WrappedEntry::parse(&raw.index_key.nonce, &raw.index_key.wrapped)?,
            audit_key: raw
                .audit_key
                .as_ref()
                .map(|k| WrappedEntry::parse(&k.nonce, &k.wrapped))
                .transpose()?,
            lookup_key: raw
                .lookup_key
                .as_ref()
                .map(|k| WrappedEntry::parse(&k.nonce, &k.wrapped))
                .transpose()?,
            kdf: raw
                .kdf
                .as_ref()
                .map(|k| {
                    if k.algorithm != "argon2id" {
                        return Err(format!("kdf `{}` is not supported", k.algorithm));
                    }
                    Ok(KdfParams {
                        m_kib: k.m_kib,
                        t: k.t,
                        p: k.p,
                        salt: fixed_hex(&k.salt, "kdf salt")?,
                    })
                })
                .transpose()?,
        })
    }

    pub fn render(&self) -> String {
        let raw = RawKeyring {
            format: self.format,
            id: hex::encode(self.id),
            root_check: hex::encode(self.root_check),
            current_epoch: self.current_epoch,
            epochs: self
                .epochs
                .iter()
                .map(|e| {
                    let w = e.key.raw();
                    RawEpoch {
                        epoch: e.epoch,
                        created_ms: e.created_ms,
                        nonce: w.nonce,
                        wrapped: w.wrapped,
                    }
                })
                .collect(),
            index_key: self.index_key.raw(),
            audit_key: self.audit_key.as_ref().map(WrappedEntry::raw),
            lookup_key: self.lookup_key.as_ref().map(WrappedEntry::raw),
            kdf: self.kdf.as_ref().map(|k| RawKdf {
                algorithm: "argon2id".into(),
                m_kib: k.m_kib,
                t: k.t,
                p: k.p,
                salt: hex::encode(k.salt),
            }),
        };
        // Serializing plain strings and integers cannot fail.
        serde_json::to_string_pretty(&raw).unwrap_or_default() + "\n"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in ".*") {
            let _ = KeyringFile::parse(&text);
        }
    }
}
