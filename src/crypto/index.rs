//! The subject index key: `sid = HMAC-SHA256(index key, "privault/sid/v1" ‖ subject_id)`, so that
//! no file on disk names a customer.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Key256;
use crate::domain::{Sid, SubjectId};

const SID_LABEL: &[u8] = b"privault/sid/v1";
const RECORD_LABEL: &[u8] = b"privault/record-tag/v1";
const ROW_LABEL: &[u8] = b"privault/extract-row/v1";

/// The keyed hash that turns subject ids into on-disk handles, and authenticates the vault's own
/// records in `db/` (policy versions), each under its own label.
pub struct IndexKey {
    mac: Hmac<Sha256>,
    records: Hmac<Sha256>,
    rows: Hmac<Sha256>,
}

/// A kind of record [`IndexKey::record_tag`] authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A stored policy version.
    PolicyVersion,
    /// The pointer to the active policy version.
    ActivePolicy,
    /// A subject's consent record (bound to its sid and purpose).
    Consent,
}

impl IndexKey {
    /// An index keyed by `key`.
    pub fn new(key: &Key256) -> Self {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
            .unwrap_or_else(|_| super::root::unreachable_hmac());
        let mut records = mac.clone();
        let mut rows = mac.clone();
        mac.update(SID_LABEL);
        records.update(RECORD_LABEL);
        rows.update(ROW_LABEL);
        Self { mac, records, rows }
    }

    /// The tag of record `number` of `kind` with content `bytes`: a copy of `db/` edited without
    /// the keyring cannot make a record that passes [`IndexKey::check_record_tag`].
    pub fn record_tag(&self, kind: RecordKind, number: u64, bytes: &[u8]) -> [u8; 32] {
        let mut mac = self.records.clone();
        mac.update(&[kind as u8]);
        mac.update(&number.to_be_bytes());
        mac.update(bytes);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the record's tag, compared in constant time.
    pub fn check_record_tag(
        &self,
        kind: RecordKind,
        number: u64,
        bytes: &[u8],
        tag: &[u8],
    ) -> bool {
        let mut mac = self.records.clone();
        mac.update(&[kind as u8]);
        mac.update(&number.to_be_bytes());
        mac.update(bytes);
        mac.verify_slice(tag).is_ok()
    }

    /// The row key of subject `sid` in extract `extract_id`: a pseudonym scoped to the extract
    /// (another extract gives the same subject an unrelated key), 128 bits.
    pub fn row_key(&self, extract_id: &[u8; 16], sid: &Sid) -> [u8; 16] {
        let mut mac = self.rows.clone();
        mac.update(extract_id);
        mac.update(&sid.0);
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    /// The on-disk handle of `subject`.
    pub fn sid(&self, subject: &SubjectId) -> Sid {
        let mut mac = self.mac.clone();
        mac.update(subject.expose().as_bytes());
        Sid(mac.finalize().into_bytes().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_is_stable_per_key_and_differs_across_keys() {
        let id = SubjectId::new("cust-1".into()).unwrap();
        let a = IndexKey::new(&Key256::from_slice(&[1; 32]).unwrap());
        let b = IndexKey::new(&Key256::from_slice(&[2; 32]).unwrap());
        assert_eq!(a.sid(&id), a.sid(&id));
        assert_ne!(a.sid(&id), b.sid(&id));
        assert_ne!(a.sid(&id), a.sid(&SubjectId::new("cust-2".into()).unwrap()));
    }
}
