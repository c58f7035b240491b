//! Consent per purpose: recorded per subject under its sid (nothing on disk names the subject),
//! audited, shredded with the subject, and handed to Cedar as `context.consents` on every read.
//! Decisions are cached by consent set, so a withdrawal counts from the very next read.

use std::sync::Arc;

use super::{CallContext, Vault, VaultError, require};
use crate::audit::FieldAudit;
use crate::catalog::EffectiveConsents;
use crate::clock::rfc3339;
use crate::domain::{Purpose, Sid, SubjectId};
use crate::policy::Policies;
use crate::store::keys::{name_of, subject_key};
use crate::store::records::ConsentRecord;
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
    /// Every consent recorded for `sid`.
    pub(super) fn consents_of(&self, sid: &Sid) -> Result<Vec<ConsentState>, VaultError> {
        self.store
            .scan_prefix(Cf::Consent, &sid.0)?
            .into_iter()
            .filter_map(|(key, value)| {
                let purpose = name_of(&key).and_then(|n| Purpose::new(n).ok())?;
                Some(ConsentRecord::decode(&value).map(|r| ConsentState {
                    purpose,
                    granted: r.granted,
                    time: rfc3339(r.time_ms),
                    recorded_by: r.principal,
                }))
            })
            .collect::<Result<_, _>>()
            .map_err(|e| VaultError::DataLoss(e.to_string()))
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
        let mut event = self.event(ctx, "consent_write", Some(purpose), &policies);
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
            event.subject = Some(keys.pseudonym.to_string());
            let record = ConsentRecord {
                granted,
                time_ms: now,
                principal: ctx.principal.to_string(),
            };
            batch.put(
                Cf::Consent,
                subject_key(&sid, purpose.as_str()),
                record.encode(),
            );
            let outcome = if granted { "granted" } else { "withdrawn" };
            event.fields.push(FieldAudit {
                field: "consent".into(),
                outcome: outcome.into(),
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
        let mut event = self.event(ctx, "consent_read", None, &policies);
        let result = (|| {
            let (sid, _) = self.locate(subject, &mut event)?;
            require(policies.decide_consent_read(&ctx.principal), "consent_read")?;
            Ok((Batch::new(), self.consents_of(&sid)?))
        })();
        self.finish(event, result).map(|(c, _)| c)
    }
}
