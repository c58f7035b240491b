//! Value formats of the subject column families: versioned, length-checked binary records of
//! opaque bytes. Decoding never panics on arbitrary input; an unknown version is an error.

use crate::clock::Millis;
use crate::domain::{ConsentSource, OptOutSignal};

/// A record that failed to decode: corrupted or from an unknown format version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind} record: {reason}")]
pub struct DecodeError {
    /// Which record.
    pub kind: &'static str,
    /// What is wrong.
    pub reason: &'static str,
}

const V1: u8 = 1;
/// Field records whose times are bound into the ciphertext's AAD.
const FIELD_V2: u8 = 2;

/// A wrapped DEK as stored in the keys CF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The DEK version within its class, bound into every field's AAD.
    pub dek_version: u32,
    /// The KEK epoch that wraps it.
    pub epoch: u32,
    /// Nonce of the wrap.
    pub nonce: [u8; 12],
    /// The wrapped DEK.
    pub wrapped: Vec<u8>,
    /// When this DEK was created.
    pub created_ms: Millis,
    /// How many values this DEK has sealed, so it is rotated long before the random-nonce limit.
    pub seals: u64,
}

/// The raw subject id, wrapped under a KEK epoch, as stored in the keys CF under `sid ‖ "#id"` for
/// subjects with a lookup field: the only copy of the id, so lookups can answer with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectIdRecord {
    /// The KEK epoch that wraps it.
    pub epoch: u32,
    /// Nonce of the wrap.
    pub nonce: [u8; 12],
    /// The wrapped id and tag.
    pub wrapped: Vec<u8>,
}

/// The audit pseudonym as stored in the keys CF under `sid ‖ "#pseudonym"`: wrapped under a KEK
/// epoch (so that an old copy of the database is no link between a subject and its audit records
/// once the epoch is rolled), with the subject's incarnation: a random id drawn when the subject is
/// created, which the deletion ledger names so that its replay erases only the incarnation that
/// was shredded and never a customer who came back after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PseudonymRecord {
    /// The KEK epoch that wraps it.
    pub epoch: u32,
    /// Nonce of the wrap.
    pub nonce: [u8; 12],
    /// The wrapped pseudonym and tag.
    pub wrapped: Vec<u8>,
    /// The subject's incarnation.
    pub incarnation: [u8; 16],
    /// When this incarnation was created.
    pub created_ms: Millis,
}

/// A stored pseudonym entry: wrapped, or in clear as data format 1 kept it (upgraded at open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredPseudonym {
    /// Data format 2.
    Wrapped(PseudonymRecord),
    /// Data format 1: the 16 pseudonym bytes in clear, no incarnation.
    Clear([u8; 16]),
}

impl StoredPseudonym {
    /// Parses a stored pseudonym entry of either format.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        // Format 1 was the bare 16 bytes; every format-2 record is longer.
        match <[u8; 16]>::try_from(bytes) {
            Ok(clear) => Ok(Self::Clear(clear)),
            Err(_) => PseudonymRecord::decode(bytes).map(Self::Wrapped),
        }
    }
}

/// A sealed field value as stored in the fields CF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRecord {
    /// The DEK version that sealed it.
    pub dek_version: u32,
    /// The GCM nonce.
    pub nonce: [u8; 12],
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
    /// When it was last written.
    pub written_ms: Millis,
    /// When it expires under the catalog's retention; `None` for no limit.
    pub expires_ms: Option<Millis>,
    /// Whether its write and expiry times are bound into the ciphertext's AAD (format 2); records
    /// of format 1 are not, until rewritten.
    pub times_bound: bool,
}

/// The receipt of a shred, kept under the sid: when, by whom, why. No identifier, no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredReceipt {
    /// When the shred committed.
    pub shredded_ms: Millis,
    /// Who asked (a principal uid).
    pub principal: String,
    /// The stated reason (a ticket id).
    pub reason: String,
}

/// A subject's consent to one purpose, as stored in the consent CF under `sid ‖ purpose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRecord {
    /// Granted (true) or withdrawn (false).
    pub granted: bool,
    /// When it was last set.
    pub time_ms: Millis,
    /// Who recorded it (a principal uid).
    pub principal: String,
    /// Where it came from (records written before sources existed read as `user`).
    pub source: ConsentSource,
    /// The opt-out signal that made this withdrawal, if one did.
    pub signal: Option<OptOutSignal>,
}

struct Writer(Vec<u8>);

impl Writer {
    fn new() -> Self {
        Self(vec![V1])
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(v);
        self
    }
    fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

struct Reader<'a> {
    rest: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], kind: &'static str) -> Result<Self, DecodeError> {
        match bytes.split_first() {
            Some((&V1, rest)) => Ok(Self { rest, kind }),
            Some(_) => Err(DecodeError {
                kind,
                reason: "unknown format version",
            }),
            None => Err(DecodeError {
                kind,
                reason: "empty",
            }),
        }
    }
    fn fail(&self, reason: &'static str) -> DecodeError {
        DecodeError {
            kind: self.kind,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(self.fail("truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| self.fail("truncated"))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32()?).map_err(|_| self.fail("length overflow"))?;
        self.take(len)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.fail("invalid utf-8"))
    }
    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.fail("trailing bytes"))
        }
    }
}

impl KeyRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.dek_version)
            .u32(self.epoch)
            .raw(&self.nonce)
            .bytes(&self.wrapped)
            .u64(self.created_ms)
            .u64(self.seals);
        w.0
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "key")?;
        let record = Self {
            dek_version: r.u32()?,
            epoch: r.u32()?,
            nonce: r.array()?,
            wrapped: r.bytes()?.to_vec(),
            created_ms: r.u64()?,
            seals: r.u64()?,
        };
        r.finish()?;
        Ok(record)
    }
}

impl SubjectIdRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.epoch).raw(&self.nonce).bytes(&self.wrapped);
        w.0
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "subject id")?;
        let record = Self {
            epoch: r.u32()?,
            nonce: r.array()?,
            wrapped: r.bytes()?.to_vec(),
        };
        r.finish()?;
        Ok(record)
    }
}

impl PseudonymRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.epoch)
            .raw(&self.nonce)
            .bytes(&self.wrapped)
            .raw(&self.incarnation)
            .u64(self.created_ms);
        w.0
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "pseudonym")?;
        let record = Self {
            epoch: r.u32()?,
            nonce: r.array()?,
            wrapped: r.bytes()?.to_vec(),
            incarnation: r.array()?,
            created_ms: r.u64()?,
        };
        r.finish()?;
        Ok(record)
    }
}

impl FieldRecord {
    /// Whether the catalog's retention has run out by `now`.
    pub fn is_expired(&self, now: Millis) -> bool {
        self.expires_ms.is_some_and(|e| e <= now)
    }

    /// The times bound into the ciphertext, for opening it (`None` for a format-1 record).
    pub fn bound_times(&self) -> Option<crate::crypto::FieldTimes> {
        self.times_bound.then_some(crate::crypto::FieldTimes {
            written_ms: self.written_ms,
            expires_ms: self.expires_ms,
        })
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        if self.times_bound {
            w.0[0] = FIELD_V2;
        }
        w.u32(self.dek_version)
            .raw(&self.nonce)
            .bytes(&self.ciphertext)
            .u64(self.written_ms)
            .u64(self.expires_ms.unwrap_or(0));
        w.0
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let times_bound = bytes.first() == Some(&FIELD_V2);
        let mut r = if times_bound {
            Reader {
                rest: bytes.get(1..).unwrap_or_default(),
                kind: "field",
            }
        } else {
            Reader::new(bytes, "field")?
        };
        let record = Self {
            dek_version: r.u32()?,
            nonce: r.array()?,
            ciphertext: r.bytes()?.to_vec(),
            written_ms: r.u64()?,
            expires_ms: Some(r.u64()?).filter(|&e| e != 0),
            times_bound,
        };
        r.finish()?;
        Ok(record)
    }
}

impl ConsentRecord {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(&[u8::from(self.granted)])
            .u64(self.time_ms)
            .bytes(self.principal.as_bytes())
            .raw(&[self.source as u8, self.signal.map_or(0, |s| s as u8)]);
        w.0
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "consent")?;
        let granted = match r.array::<1>()? {
            [0] => false,
            [1] => true,
            _ => return Err(r.fail("invalid flag")),
        };
        let time_ms = r.u64()?;
        let principal = r.string()?;
        // Source and signal came later: a record without them was the customer's choice as
        // recorded through SetConsent, which had no source then.
        let (source, signal) = if r.rest.is_empty() {
            (ConsentSource::User, None)
        } else {
            let [source, signal] = r.array::<2>()?;
            let source =
                ConsentSource::from_repr(source).ok_or_else(|| r.fail("unknown source"))?;
            let signal = match signal {
                0 => None,
                s => Some(OptOutSignal::from_repr(s).ok_or_else(|| r.fail("unknown signal"))?),
            };
            (source, signal)
        };
        let record = Self {
            granted,
            time_ms,
            principal,
            source,
            signal,
        };
        r.finish()?;
        Ok(record)
    }
}

impl ShredReceipt {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u64(self.shredded_ms)
            .bytes(self.principal.as_bytes())
            .bytes(self.reason.as_bytes());
        w.0
    }

    /// Parses stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes, "shred receipt")?;
        let record = Self {
            shredded_ms: r.u64()?,
            principal: r.string()?,
            reason: r.string()?,
        };
        r.finish()?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn records_round_trip() {
        let key = KeyRecord {
            dek_version: 1,
            epoch: 3,
            nonce: [9; 12],
            wrapped: vec![1, 2, 3],
            created_ms: 42,
            seals: 7,
        };
        assert_eq!(KeyRecord::decode(&key.encode()).unwrap(), key);
        let field = FieldRecord {
            dek_version: 1,
            nonce: [1; 12],
            ciphertext: vec![5; 40],
            written_ms: 10,
            expires_ms: Some(20),
            times_bound: true,
        };
        assert_eq!(FieldRecord::decode(&field.encode()).unwrap(), field);
        let format1 = FieldRecord {
            times_bound: false,
            ..field
        };
        assert_eq!(FieldRecord::decode(&format1.encode()).unwrap(), format1);
        let receipt = ShredReceipt {
            shredded_ms: 1,
            principal: "Operator::\"dpo\"".into(),
            reason: "ticket-1".into(),
        };
        assert_eq!(ShredReceipt::decode(&receipt.encode()).unwrap(), receipt);
        let consent = ConsentRecord {
            granted: false,
            time_ms: 5,
            principal: "Service::\"account\"".into(),
            source: ConsentSource::Gpc,
            signal: Some(OptOutSignal::Gpc),
        };
        assert_eq!(ConsentRecord::decode(&consent.encode()).unwrap(), consent);
        // A record written before sources existed: the customer's choice, no signal.
        let mut old = consent.encode();
        old.truncate(old.len() - 2);
        let old = ConsentRecord::decode(&old).unwrap();
        assert_eq!((old.source, old.signal), (ConsentSource::User, None));
        let id = SubjectIdRecord {
            epoch: 2,
            nonce: [3; 12],
            wrapped: vec![4; 30],
        };
        assert_eq!(SubjectIdRecord::decode(&id.encode()).unwrap(), id);
        let pseudonym = PseudonymRecord {
            epoch: 2,
            nonce: [5; 12],
            wrapped: vec![6; 32],
            incarnation: [7; 16],
            created_ms: 9,
        };
        assert_eq!(
            StoredPseudonym::decode(&pseudonym.encode()).unwrap(),
            StoredPseudonym::Wrapped(pseudonym)
        );
        assert_eq!(
            StoredPseudonym::decode(&[1; 16]).unwrap(),
            StoredPseudonym::Clear([1; 16])
        );
    }

    #[test]
    fn trailing_bytes_and_unknown_versions_are_refused() {
        let mut bytes = FieldRecord {
            dek_version: 1,
            nonce: [1; 12],
            ciphertext: vec![],
            written_ms: 0,
            expires_ms: None,
            times_bound: true,
        }
        .encode();
        bytes.push(0);
        assert!(FieldRecord::decode(&bytes).is_err());
        assert!(KeyRecord::decode(&[2, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = KeyRecord::decode(&bytes);
            let _ = FieldRecord::decode(&bytes);
            let _ = ShredReceipt::decode(&bytes);
            let _ = ConsentRecord::decode(&bytes);
            let _ = SubjectIdRecord::decode(&bytes);
            let _ = StoredPseudonym::decode(&bytes);
        }
    }
}
