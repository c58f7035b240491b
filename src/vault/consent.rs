//! Consent per purpose: recorded per subject under its sid (nothing on disk names the subject),
//! audited, shredded with the subject, and handed to Cedar as `context.consents` on every read.
//! Decisions are cached by consent set, so a withdrawal counts from the very next read.

use std::sync::Arc;

use super::{CallContext, Vault, VaultError, require};
use crate::audit::{Action, FieldAudit, FieldOutcome};
use crate::catalog::EffectiveConsents;
use crate::clock::rfc3339;
use crate::crypto::RecordKind;
use crate::domain::{Purpose, Sid, SubjectId};
use crate::policy::Policies;
use crate::store::keys::{name_of, subject_key};
use crate::store::records::ConsentRecord;

/// First byte of a tagged consent record.
const SEALED_CONSENT: u8 = 2;

/// What a consent record's tag covers: the subject, the purpose and the record.
fn consent_tagged(sid: &Sid, purpose: &Purpose, body: &[u8]) -> Vec<u8> {
    let name = purpose.as_str().as_bytes();
    [&sid.0[..], &(name.len() as u32).to_be_bytes(), name, body].concat()
}
use crate::store::{Batch, Cf};

/// One recorded consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentState {
    /// The purpose.
    pub purpose: Purpose,
    /// Granted or withdrawn.
    pub granted: bool,
    /// When it was last set (RFC 3339).
    pub time: String,
    /// Who recorded it.
    pub recorded_by: String,
}

impl Vault {
    /// Every consent recorded for `sid`, each checked against its tag.
    pub(super) fn consents_of(&self, sid: &Sid) -> Result<Vec<ConsentState>, VaultError> {
        self.store
            .scan_prefix(Cf::Consent, &sid.0)?
            .into_iter()
            .filter_map(|(key, value)| {
                let purpose = name_of(&key).and_then(|n| Purpose::new(n).ok())?;
                Some(
                    self.open_consent(sid, &purpose, &value)
                        .map(|r| ConsentState {
                            purpose,
                            granted: r.granted,
                            time: rfc3339(r.time_ms),
                            recorded_by: r.principal,
                        }),
                )
            })
            .collect()
    }

    /// `record`'s stored bytes: `2 ‖ tag ‖ record`, the tag (a key from the keyring) binding it to
    /// the subject and purpose, so that a consent edited, flipped or copied in `db/` is refused.
    fn seal_consent(&self, sid: &Sid, purpose: &Purpose, record: &ConsentRecord) -> Vec<u8> {
        let body = record.encode();
        let tag = self.keyring.index().record_tag(
            RecordKind::Consent,
            0,
            &consent_tagged(sid, purpose, &body),
        );
        [&[SEALED_CONSENT][..], &tag, &body].concat()
    }

    fn open_consent(
        &self,
        sid: &Sid,
        purpose: &Purpose,
        bytes: &[u8],
    ) -> Result<ConsentRecord, VaultError> {
        let forged = || {
            VaultError::DataLoss(format!(
                "a consent record for `{purpose}` fails its authentication"
            ))
        };
        let (&kind, rest) = bytes.split_first().ok_or_else(forged)?;
        let (tag, body) = rest.split_at_checked(32).ok_or_else(forged)?;
        let tagged = consent_tagged(sid, purpose, body);
        if kind != SEALED_CONSENT
            || !self
                .keyring
                .index()
                .check_record_tag(RecordKind::Consent, 0, &tagged, tag)
        {
            return Err(forged());
        }
        ConsentRecord::decode(body).map_err(|e| VaultError::DataLoss(e.to_string()))
    }

    /// Data format 1 kept consent records untagged: tags them once, trusting them as format 1 did.
    /// Idempotent.
    pub(super) fn tag_format1_consents(&self) -> Result<(), VaultError> {
        let mut cursor = Vec::new();
        loop {
            let entries = self.store.scan_from(Cf::Consent, &cursor, 1000)?;
            let mut batch = Batch::new();
            for (key, value) in &entries {
                let (Some(sid), Some(purpose)) = (
                    key.get(..32).and_then(|s| <[u8; 32]>::try_from(s).ok()),
                    name_of(key).and_then(|n| Purpose::new(n).ok()),
                ) else {
                    continue;
                };
                if value.first() == Some(&SEALED_CONSENT) {
                    continue;
                }
                let record = ConsentRecord::decode(value)
                    .map_err(|e| VaultError::DataLoss(e.to_string()))?;
                batch.put(
                    Cf::Consent,
                    key.clone(),
                    self.seal_consent(&Sid(sid), &purpose, &record),
                );
            }
            self.store.write(&batch)?;
            match entries.last() {
                Some((key, _)) if entries.len() == 1000 => {
                    cursor = key.clone();
                    cursor.push(0);
                }
                _ => return Ok(()),
            }
        }
    }

    /// `sid`'s consents made effective over `policies`' purpose hierarchy, as the context of its
    /// decisions.
    pub(super) fn effective_consents(
        &self,
        sid: &Sid,
        policies: &Policies,
    ) -> Result<EffectiveConsents, VaultError> {
        let recorded = self.consents.recorded(sid, || {
            Ok(self
                .consents_of(sid)?
                .into_iter()
                .map(|c| (c.purpose, c.granted))
                .collect())
        })?;
        Ok(policies
            .catalog()
            .resolve_consents(recorded.iter().map(|(p, g)| (p, *g))))
    }

    /// Records `subject`'s consent to `purpose` (or its withdrawal). Returns when it was recorded.
    pub fn set_consent(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        purpose: &Purpose,
        granted: bool,
    ) -> Result<String, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::ConsentWrite, Some(purpose), &policies);
        let _writer = self.lock_subject(&self.keyring.index().sid(subject))?;
        let staged = (|| {
            let (sid, _) = self.locate(subject, &mut event)?;
            if !policies.catalog().has_purpose(purpose) {
                return Err(VaultError::InvalidArgument(format!(
                    "unknown purpose `{purpose}`: not declared in the catalog"
                )));
            }
            let decision = policies.decide_consent_write(&ctx.principal, purpose);
            let policy_ids = decision.policy_ids.clone();
            require(decision, "consent_write")?;
            let mut batch = Batch::new();
            let now = self.clock.now_ms();
            let keys = self.keys_for_write(&sid, &Default::default(), &mut batch, now)?;
            event.subject = Some(keys.pseudonym);
            let record = ConsentRecord {
                granted,
                time_ms: now,
                principal: ctx.principal.to_string(),
            };
            batch.put(
                Cf::Consent,
                subject_key(&sid, purpose.as_str()),
                self.seal_consent(&sid, purpose, &record),
            );
            let outcome = if granted {
                FieldOutcome::Granted
            } else {
                FieldOutcome::Withdrawn
            };
            event.fields.push(FieldAudit {
                field: "consent".into(),
                outcome,
                policy_ids,
            });
            Ok((batch, (sid, keys, rfc3339(now))))
        })();
        let ((sid, keys, time), _) = self.finish(event, staged)?;
        self.consents.changed();
        self.keys.publish(sid, Arc::new(keys));
        Ok(time)
    }

    /// The consents recorded for `subject`.
    pub fn get_consents(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
    ) -> Result<Vec<ConsentState>, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::ConsentRead, None, &policies);
        let result = (|| {
            let (sid, _) = self.locate(subject, &mut event)?;
            require(policies.decide_consent_read(&ctx.principal), "consent_read")?;
            Ok((Batch::new(), self.consents_of(&sid)?))
        })();
        self.finish(event, result).map(|(c, _)| c)
    }
}
