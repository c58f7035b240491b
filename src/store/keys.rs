//! Key encoding for every column family. Subject keys start with the fixed-length `sid`, so one
//! prefix covers all of a subject's entries in a column family.

use crate::domain::Sid;

/// The suffix of the pseudonym entry in the keys CF; `#` cannot start a key-class name.
const PSEUDONYM_SUFFIX: &[u8] = b"#pseudonym";

/// The suffix of the wrapped subject id in the keys CF.
const SUBJECT_ID_SUFFIX: &[u8] = b"#id";

/// First byte of a lookup CF key: forward entries `tag ‖ sid` (find subjects by value).
const LOOKUP_FORWARD: u8 = 1;
/// First byte of a lookup CF key: reverse entries `sid ‖ field` → tag (remove a subject's entries).
const LOOKUP_REVERSE: u8 = 2;

/// `sid ‖ name`: a subject's entry for a field, key class or purpose.
pub fn subject_key(sid: &Sid, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + name.len());
    key.extend_from_slice(&sid.0);
    key.extend_from_slice(name.as_bytes());
    key
}

/// The keys-CF entry marking a canary subject (its value: when it was marked).
pub fn canary_key(sid: &Sid) -> Vec<u8> {
    subject_key(sid, "#canary")
}

/// The keys-CF entry marking a subject erased by a shred while a legal hold kept part of it (its
/// value: the shred's receipt id, or nothing when a ledger replay made the erasure).
pub fn erased_key(sid: &Sid) -> Vec<u8> {
    subject_key(sid, "#erased")
}

/// The keys-CF entry holding the subject's audit pseudonym.
pub fn pseudonym_key(sid: &Sid) -> Vec<u8> {
    let mut key = sid.0.to_vec();
    key.extend_from_slice(PSEUDONYM_SUFFIX);
    key
}

/// The sid of a keys-CF key when it is a pseudonym entry.
pub fn is_pseudonym_key(key: &[u8]) -> Option<Sid> {
    let (sid, suffix) = key.split_at_checked(32)?;
    (suffix == PSEUDONYM_SUFFIX)
        .then(|| sid.try_into().ok().map(Sid))
        .flatten()
}

/// The keys-CF entry holding the subject's wrapped raw id.
pub fn subject_id_key(sid: &Sid) -> Vec<u8> {
    let mut key = sid.0.to_vec();
    key.extend_from_slice(SUBJECT_ID_SUFFIX);
    key
}

/// Whether a keys-CF key is one of the subject-level entries (pseudonym, id) rather than a DEK.
pub fn is_subject_entry(key: &[u8]) -> bool {
    key.get(32) == Some(&b'#')
}

/// The lookup-CF prefix of every subject whose `field` has the value behind `tag`.
pub fn lookup_prefix(tag: &[u8; 32]) -> Vec<u8> {
    let mut key = Vec::with_capacity(65);
    key.push(LOOKUP_FORWARD);
    key.extend_from_slice(tag);
    key
}

/// The forward lookup entry: `1 ‖ tag ‖ sid`.
pub fn lookup_key(tag: &[u8; 32], sid: &Sid) -> Vec<u8> {
    let mut key = lookup_prefix(tag);
    key.extend_from_slice(&sid.0);
    key
}

/// The sid at the end of a forward lookup entry.
pub fn lookup_sid(key: &[u8]) -> Option<Sid> {
    key.get(33..65).and_then(|s| s.try_into().ok()).map(Sid)
}

/// The lookup-CF prefix of a subject's reverse entries.
pub fn lookup_reverse_prefix(sid: &Sid) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(LOOKUP_REVERSE);
    key.extend_from_slice(&sid.0);
    key
}

/// The reverse lookup entry of `field`: `2 ‖ sid ‖ field` → tag.
pub fn lookup_reverse_key(sid: &Sid, field: &str) -> Vec<u8> {
    let mut key = lookup_reverse_prefix(sid);
    key.extend_from_slice(field.as_bytes());
    key
}

/// The name part of a subject key (after the sid), if it is valid UTF-8.
pub fn name_of(key: &[u8]) -> Option<&str> {
    key.get(32..)
        .and_then(|name| std::str::from_utf8(name).ok())
}

/// The audit CF key of `seq`: big-endian so that key order is sequence order.
pub fn audit_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// Parses an audit CF key.
pub fn audit_seq(key: &[u8]) -> Option<u64> {
    key.try_into().ok().map(u64::from_be_bytes)
}

/// Meta: the id of the keyring the database is paired with.
pub const KEYRING_ID_KEY: &[u8] = b"keyring_id";
/// Meta: the data format version (u32 BE).
pub const FORMAT_KEY: &[u8] = b"format_version";
/// The meta-CF prefix of the audit segment table: `prefix ‖ segment` → first seq ‖ prev hash.
pub const AUDIT_SEGMENT_PREFIX: &[u8] = b"audit_segment/";
/// The meta-CF prefix of the dictionary hints: `prefix ‖ segment ‖ seq` → nothing, for every
/// record that defines strings in its segment's dictionary.
pub const AUDIT_DEFS_PREFIX: &[u8] = b"audit_defs/";

/// The meta-CF prefix of sealed segments: `prefix ‖ segment` → its signed checkpoint.
pub const AUDIT_SEALED_PREFIX: &[u8] = b"audit_sealed/";

/// The meta-CF prefix of segments dropped from the live log: `prefix ‖ segment` → the marker
/// naming their archived copy.
pub const AUDIT_DROPPED_PREFIX: &[u8] = b"audit_dropped/";

/// The meta-CF key of dropped segment `segment`.
pub fn audit_dropped_key(segment: u64) -> Vec<u8> {
    [AUDIT_DROPPED_PREFIX, &segment.to_be_bytes()].concat()
}

/// The meta-CF key of sealed segment `segment`.
pub fn audit_sealed_key(segment: u64) -> Vec<u8> {
    [AUDIT_SEALED_PREFIX, &segment.to_be_bytes()].concat()
}

/// The meta-CF key of segment `segment` in the segment table.
pub fn audit_segment_key(segment: u64) -> Vec<u8> {
    [AUDIT_SEGMENT_PREFIX, &segment.to_be_bytes()].concat()
}

/// The meta-CF prefix of the dictionary hints of `segment`.
pub fn audit_defs_prefix(segment: u64) -> Vec<u8> {
    [AUDIT_DEFS_PREFIX, &segment.to_be_bytes()].concat()
}

/// The meta-CF hint that record `seq` defines strings of `segment`.
pub fn audit_defs_key(segment: u64, seq: u64) -> Vec<u8> {
    [
        AUDIT_DEFS_PREFIX,
        &segment.to_be_bytes(),
        &seq.to_be_bytes(),
    ]
    .concat()
}

/// The seq at the end of a dictionary hint or a subject-index entry.
pub fn trailing_seq(key: &[u8]) -> Option<u64> {
    let at = key.len().checked_sub(8)?;
    key.get(at..)?.try_into().ok().map(u64::from_be_bytes)
}

/// The audit-index prefix of one subject's records in one segment: `segment ‖ pseudonym`.
pub fn audit_index_prefix(segment: u64, pseudonym: &[u8; 16]) -> Vec<u8> {
    [&segment.to_be_bytes()[..], pseudonym].concat()
}

/// The audit-index entry of record `seq`: `segment ‖ pseudonym ‖ seq` → nothing.
pub fn audit_index_key(segment: u64, pseudonym: &[u8; 16], seq: u64) -> Vec<u8> {
    [&segment.to_be_bytes()[..], pseudonym, &seq.to_be_bytes()].concat()
}

/// The smallest key greater than every key starting with `prefix`; `None` when there is none
/// (the prefix is all `0xff`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn prefix_end_carries() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }

    proptest! {
        #[test]
        fn audit_keys_sort_by_seq(a in any::<u64>(), b in any::<u64>()) {
            prop_assert_eq!(a.cmp(&b), audit_key(a).cmp(&audit_key(b)));
            prop_assert_eq!(audit_seq(&audit_key(a)), Some(a));
        }

        #[test]
        fn subject_keys_stay_in_their_prefix(s in any::<[u8; 32]>(), name in "[a-z_]{1,20}") {
            let sid = Sid(s);
            let key = subject_key(&sid, &name);
            prop_assert!(key.starts_with(&sid.0));
            if let Some(end) = prefix_end(&sid.0) {
                prop_assert!(key < end);
            }
            prop_assert_eq!(name_of(&key), Some(name.as_str()));
        }

        #[test]
        fn lookup_entries_name_their_subject(tag in any::<[u8; 32]>(), s in any::<[u8; 32]>()) {
            let key = lookup_key(&tag, &Sid(s));
            prop_assert!(key.starts_with(&lookup_prefix(&tag)));
            prop_assert_eq!(lookup_sid(&key), Some(Sid(s)));
            prop_assert!(!lookup_reverse_key(&Sid(s), "email").starts_with(&lookup_prefix(&tag)));
        }
    }
}
