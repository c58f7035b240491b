//! The audit vocabulary, in one place: what a call did (`Action`), how it ended (`Outcome`), what
//! became of each field (`FieldOutcome`) and the typed facts some records carry (`Detail`). Each
//! name is spelled once, here; the binary encoding stores the code, the JSON view the name.

use serde::{Deserialize, Serialize};

use crate::domain::{ConsentSource, OptOutSignal};

/// What a call did.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::FromRepr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum Action {
    /// `GetFields`, `BatchGetFields`, masked reveals.
    Read = 1,
    /// A per-field `read_masked` decision (records of older versions).
    ReadMasked = 2,
    /// `PutFields`.
    Write = 3,
    /// `DeleteFields`.
    Delete = 4,
    /// `ShredSubject`.
    Shred = 5,
    /// `FindSubjects` by a lookup field.
    Find = 6,
    /// `SetConsent`.
    ConsentWrite = 7,
    /// `GetConsents`.
    ConsentRead = 8,
    /// `ExportSubject`.
    Export = 9,
    /// `Audit/Query`.
    AuditQuery = 10,
    /// `Audit/Head`.
    AuditHead = 11,
    /// `Audit/Verify`.
    AuditVerify = 12,
    /// `Audit/Tail`.
    AuditTail = 13,
    /// `Keys/Status`.
    KeyStatus = 14,
    /// `Keys/RollEpoch`, and the scheduled roll.
    KeyRollEpoch = 15,
    /// `Keys/RotateSubjectKey`.
    KeyRotateDek = 16,
    /// The end of a roll: old epochs destroyed.
    KeyEpochDestroyed = 17,
    /// One slice of a roll: keys re-wrapped under the new epoch.
    KeyRewrap = 18,
    /// The format-1 upgrade: clear pseudonyms wrapped under the KEK.
    PseudonymWrap = 19,
    /// `privault keys change-passphrase`.
    KeyChangePassphrase = 20,
    /// `Policy/GetActive`.
    PolicyGet = 21,
    /// `Policy/Validate`.
    PolicyValidate = 22,
    /// `Policy/DryRun`.
    PolicyDryRun = 23,
    /// `Policy/Apply`.
    PolicyApply = 24,
    /// `Policy/ListVersions`.
    PolicyVersions = 25,
    /// `Policy/Rollback`.
    PolicyRollback = 26,
    /// `Policy/Explain`.
    PolicyExplain = 27,
    /// The first policy set, loaded from files at the first start.
    PolicyLoad = 28,
    /// Policy files re-read on SIGHUP.
    PolicyReload = 29,
    /// The deletion ledger erased a subject again (a restored backup).
    LedgerReshred = 30,
    /// The retention sweeper deleted expired fields.
    RetentionDelete = 31,
    /// A subject's stored data failed a check and was set aside.
    Quarantine = 32,
    /// Sealed audit segments copied to an archive and verified there.
    AuditArchive = 33,
    /// Archived audit segments dropped from the live log by its retention bound.
    AuditDrop = 34,
    /// The retention sweeper erased a subject with nothing left (`shred_when_empty`).
    RetentionShred = 35,
    /// `Backup/CreateBackup`, and `privault backup create` on a stopped vault.
    Backup = 36,
    /// `Vault/RecordSignal`: an opt-out signal and the withdrawals it made.
    RecordSignal = 37,
    /// `Vault/GetErasureReceipt`.
    ReceiptGet = 38,
    /// `KeyAdmin/AddCanary`, `privault canary add`: a subject marked as a canary.
    CanaryAdd = 39,
    /// `Vault/PlaceHold`: a legal hold placed (or extended) on a subject's key class.
    HoldPlace = 40,
    /// `Vault/ReleaseHold`: a legal hold lifted.
    HoldRelease = 41,
    /// A legal hold reached its `until` and lapsed (made by the system). A release or lapse record
    /// lists, as `deleted`, the key classes of an erased subject it let the vault erase.
    HoldLapse = 42,
    /// `Vault/Extract`: one record per subject read for a training set (with the subject), and
    /// one per call (without) when its manifest is issued.
    Extract = 43,
    /// `Vault/ExtractRevocations`.
    ExtractRevocations = 44,
}

/// How a call ended.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::FromRepr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum Outcome {
    /// It did what was asked.
    Ok = 1,
    /// A policy denied it.
    Denied = 2,
    /// The request was malformed; nothing changed.
    InvalidArgument = 3,
    /// The vault's state does not allow it.
    FailedPrecondition = 4,
    /// What it names does not exist.
    NotFound = 5,
    /// The vault could not do it now.
    Unavailable = 6,
    /// Stored data failed an integrity check.
    DataLoss = 7,
    /// The response would have been too large.
    ResourceExhausted = 8,
    /// An internal error.
    Internal = 9,
    /// No or invalid credentials.
    Unauthenticated = 10,
    /// An epoch roll began.
    Started = 11,
    /// An interrupted epoch roll was taken up again.
    Resumed = 12,
    /// The scheduled epoch roll began.
    Scheduled = 13,
    /// A canary subject was read (served as usual): the exfiltration alarm.
    Canary = 14,
}

/// What became of one field (or the one consent) a call touched.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    strum::EnumString,
    strum::IntoStaticStr,
    strum::Display,
    strum::FromRepr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
#[repr(u8)]
pub enum FieldOutcome {
    /// The value was returned.
    Value = 1,
    /// A masked form was returned.
    Masked = 2,
    /// A policy denied it.
    Denied = 3,
    /// Nothing is stored.
    Absent = 4,
    /// A write or delete was allowed (recorded when another field of the call was denied).
    Allowed = 5,
    /// It was written.
    Written = 6,
    /// It was deleted.
    Deleted = 7,
    /// A lookup found subjects by it.
    Found = 8,
    /// Retention removed it.
    Expired = 9,
    /// The consent was granted.
    Granted = 10,
    /// The consent was withdrawn.
    Withdrawn = 11,
    /// Refused: the service's read budget of distinct subjects is spent for the window.
    Budget = 12,
    /// Kept by a legal hold: a key class a shred spared, or a read of what the hold kept of an
    /// erased subject for a purpose other than legal claims (refused).
    Held = 13,
    /// A legal hold on it was released or lapsed.
    Released = 14,
}

/// Names (for JSON views, filters and policies) and stable one-byte codes (for the binary record:
/// never reused, never renumbered) of each vocabulary.
macro_rules! words {
    ($($name:ident),+) => {$(
        impl $name {
            /// Every value, in code order.
            pub const ALL: &[Self] = <Self as strum::VariantArray>::VARIANTS;

            /// The name in JSON views, filters and policies.
            pub fn name(self) -> &'static str {
                self.into()
            }

            /// The value named `name`.
            pub fn from_name(name: &str) -> Option<Self> {
                name.parse().ok()
            }

            /// The stable code in the binary record.
            pub fn code(self) -> u8 {
                self as u8
            }

            /// The value of `code`.
            pub fn from_code(code: u8) -> Option<Self> {
                Self::from_repr(code)
            }
        }
    )+};
}

words!(Action, Outcome, FieldOutcome);

/// A typed fact of a record that is not a field's outcome: what an auditor filtering by outcome
/// must never mistake for one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detail {
    /// The KEK epoch a roll made current.
    Epoch(u32),
    /// The KEK epochs a roll destroyed.
    EpochsDestroyed(Vec<u32>),
    /// How many keys one slice of a roll re-wrapped.
    KeysRewrapped(u64),
    /// How many pseudonyms the format-1 upgrade wrapped.
    PseudonymsWrapped(u64),
    /// The policy version an apply, rollback, load or reload made active.
    PolicyVersion(u64),
    /// The maintenance task that found a quarantined subject.
    FoundBy(Action),
    /// Where a consent record came from.
    ConsentSource(ConsentSource),
    /// The opt-out signal a call recorded.
    Signal(OptOutSignal),
    /// Sealed segments archived or dropped: their first and last seq.
    Segments {
        /// The first seq of the first segment.
        first_seq: u64,
        /// The last seq of the last segment.
        last_seq: u64,
    },
}

impl Detail {
    /// The kind's name in views (`epoch`, `keys_rewrapped`...).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Epoch(_) => "epoch",
            Self::EpochsDestroyed(_) => "epochs_destroyed",
            Self::KeysRewrapped(_) => "keys_rewrapped",
            Self::PseudonymsWrapped(_) => "pseudonyms_wrapped",
            Self::PolicyVersion(_) => "policy_version",
            Self::FoundBy(_) => "found_by",
            Self::Segments { .. } => "segments",
            Self::ConsentSource(_) => "consent_source",
            Self::Signal(_) => "signal",
        }
    }

    /// The numbers it holds, in order.
    pub fn numbers(&self) -> Vec<u64> {
        match self {
            Self::Epoch(e) => vec![u64::from(*e)],
            Self::EpochsDestroyed(list) => list.iter().map(|e| u64::from(*e)).collect(),
            Self::KeysRewrapped(n) | Self::PseudonymsWrapped(n) | Self::PolicyVersion(n) => {
                vec![*n]
            }
            Self::FoundBy(_) | Self::ConsentSource(_) | Self::Signal(_) => Vec::new(),
            Self::Segments {
                first_seq,
                last_seq,
            } => vec![*first_seq, *last_seq],
        }
    }

    /// The stable code of the kind in the binary record.
    pub(super) fn code(&self) -> u8 {
        match self {
            Self::Epoch(_) => 1,
            Self::EpochsDestroyed(_) => 2,
            Self::KeysRewrapped(_) => 3,
            Self::PseudonymsWrapped(_) => 4,
            Self::PolicyVersion(_) => 5,
            Self::FoundBy(_) => 6,
            Self::Segments { .. } => 7,
            Self::ConsentSource(_) => 8,
            Self::Signal(_) => 9,
        }
    }

    /// The detail a format-1 record spelled as a pseudo-field `name` with outcome `value`.
    pub(super) fn from_v1_field(name: &str, value: &str) -> Option<Self> {
        match name {
            "epoch" => value.parse().ok().map(Self::Epoch),
            "keys" => value.parse().ok().map(Self::KeysRewrapped),
            "pseudonyms" => value.parse().ok().map(Self::PseudonymsWrapped),
            "policy_version" => value.parse().ok().map(Self::PolicyVersion),
            "found_by" => match value {
                "retention_sweep" => Some(Self::FoundBy(Action::RetentionDelete)),
                "epoch_roll" => Some(Self::FoundBy(Action::KeyRollEpoch)),
                _ => None,
            },
            _ => None,
        }
    }

    /// Merges a second format-1 pseudo-field into this detail (`key_epoch_destroyed` listed one
    /// field per epoch).
    pub(super) fn absorb_v1(&mut self, next: Self) -> bool {
        match (self, next) {
            (Self::EpochsDestroyed(list), Self::Epoch(e)) => {
                list.push(e);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_are_unique_and_round_trip() {
        fn check<T: Copy + Eq + std::fmt::Debug>(
            all: &[T],
            name: fn(T) -> &'static str,
            from_name: fn(&str) -> Option<T>,
            code: fn(T) -> u8,
            from_code: fn(u8) -> Option<T>,
        ) {
            let mut names = std::collections::HashSet::new();
            let mut codes = std::collections::HashSet::new();
            for &v in all {
                assert!(names.insert(name(v)), "{v:?}: name twice");
                assert!(codes.insert(code(v)), "{v:?}: code twice");
                assert_eq!(from_name(name(v)), Some(v));
                assert_eq!(from_code(code(v)), Some(v));
            }
            assert_eq!(from_code(0), None);
        }
        check(
            Action::ALL,
            Action::name,
            Action::from_name,
            Action::code,
            Action::from_code,
        );
        check(
            Outcome::ALL,
            Outcome::name,
            Outcome::from_name,
            Outcome::code,
            Outcome::from_code,
        );
        check(
            FieldOutcome::ALL,
            FieldOutcome::name,
            FieldOutcome::from_name,
            FieldOutcome::code,
            FieldOutcome::from_code,
        );
    }
}
