//! Lookup by value (blind index): fields marked `lookup = true` in the catalog are indexed under
//! a keyed HMAC of their normalized value, so `find` can name the subjects holding a value while no
//! file holds the value. Entries are staged into the same batch as the write, delete, expiry or
//! shred that changes the field, so the index never outlives the value.

use secrecy::{ExposeSecret, SecretString};

use crate::audit::{Action, AuditEvent, FieldOutcome};
use crate::catalog::FieldSpec;
use crate::crypto::{SubjectSecret, TAG_LEN};
use crate::domain::{FieldName, Purpose, Sid, SubjectId};
use crate::policy::{FieldAction, Policies};
use crate::store::keys::{
    lookup_key, lookup_prefix, lookup_reverse_key, lookup_reverse_prefix, lookup_sid,
    subject_id_key, subject_key,
};
use crate::store::records::SubjectIdRecord;
use crate::store::{Batch, Cf};
use crate::vault::keys::decode_field;
use crate::vault::{CallContext, Vault, VaultError, field_audit};

/// Most subjects one lookup returns (a shared household phone number, not a scan).
pub const MAX_FIND_MATCHES: usize = 100;

/// A subject a lookup may return, with what decided it.
struct Match {
    subject: SubjectId,
    pseudonym: crate::domain::Pseudonym,
    policy_ids: crate::policy::PolicyIds,
}

impl Vault {
    /// Stages the index entries of `field` = `value` for `subject`, replacing the entry of its
    /// previous value, and the wrapped subject id that lookups answer with.
    pub(in crate::vault) fn stage_index(
        &self,
        sid: &Sid,
        subject: &SubjectId,
        field: &FieldName,
        spec: &FieldSpec,
        value: &str,
        batch: &mut Batch,
    ) -> Result<(), VaultError> {
        let tag = self
            .keyring
            .lookup()
            .tag(field, &spec.normalize_for_lookup(value));
        self.stage_unindex(sid, field, batch)?;
        batch.put(Cf::Lookup, lookup_key(&tag, sid), Vec::new());
        batch.put(
            Cf::Lookup,
            lookup_reverse_key(sid, field.as_str()),
            tag.to_vec(),
        );
        if self.store.get(Cf::Keys, &subject_id_key(sid))?.is_none() {
            let wrapped = self
                .kek_for_wraps(1)
                .wrap_secret(SubjectSecret::Id, sid, subject.expose().as_bytes())
                .map_err(|e| VaultError::Internal(e.to_string()))?;
            let record = SubjectIdRecord {
                epoch: wrapped.epoch,
                nonce: wrapped.nonce,
                wrapped: wrapped.ciphertext,
            };
            batch.put(Cf::Keys, subject_id_key(sid), record.encode());
            batch.wrapped_under(record.epoch);
        }
        Ok(())
    }

    /// Stages the removal of `field`'s index entries, if it has any.
    pub(in crate::vault) fn stage_unindex(
        &self,
        sid: &Sid,
        field: &FieldName,
        batch: &mut Batch,
    ) -> Result<(), VaultError> {
        let reverse = lookup_reverse_key(sid, field.as_str());
        if let Some(tag) = self.store.get(Cf::Lookup, &reverse)? {
            let tag: [u8; TAG_LEN] = tag
                .try_into()
                .map_err(|_| VaultError::DataLoss("malformed lookup entry".into()))?;
            batch.delete(Cf::Lookup, lookup_key(&tag, sid));
            batch.delete(Cf::Lookup, reverse);
        }
        Ok(())
    }

    /// Stages the removal of every index entry of the subject; returns the lookup-CF prefixes that
    /// held them, for the physical purge.
    pub(in crate::vault) fn stage_unindex_all(
        &self,
        sid: &Sid,
        batch: &mut Batch,
    ) -> Result<Vec<Vec<u8>>, VaultError> {
        let reverse = lookup_reverse_prefix(sid);
        let mut ranges = vec![reverse.clone()];
        for (key, tag) in self.store.scan_prefix(Cf::Lookup, &reverse)? {
            let tag: [u8; TAG_LEN] = tag
                .try_into()
                .map_err(|_| VaultError::DataLoss("malformed lookup entry".into()))?;
            let forward = lookup_key(&tag, sid);
            batch.delete(Cf::Lookup, forward.clone());
            batch.delete(Cf::Lookup, key);
            ranges.push(forward);
        }
        Ok(ranges)
    }

    /// Finds the subjects whose `field` holds `value`, for `purpose`. Authorized like a full read
    /// of the field, subject by subject (with each subject's consents); a subject the caller may
    /// not read is never returned. Each subject returned gets its own audit record, durable before
    /// its id leaves.
    pub fn find(
        &self,
        ctx: &CallContext,
        field: &FieldName,
        value: &SecretString,
        purpose: &Purpose,
    ) -> Result<Vec<SubjectId>, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::Find, Some(purpose), &policies);
        let matches = match self.find_matches(ctx, &policies, field, value, purpose, &mut event) {
            Ok(m) => m,
            Err(e) => return self.fail(event, e),
        };
        if matches.is_empty() {
            event.fields = vec![field_audit(
                field,
                FieldOutcome::Absent,
                &Default::default(),
            )];
            self.finish(event, Ok((Batch::new(), ())))?;
            return Ok(Vec::new());
        }
        let mut found = Vec::with_capacity(matches.len());
        for m in matches {
            let mut record = event.clone();
            record.subject = Some(m.pseudonym);
            record.fields = vec![field_audit(field, FieldOutcome::Found, &m.policy_ids)];
            self.finish(record, Ok((Batch::new(), ())))?;
            found.push(m.subject);
        }
        Ok(found)
    }

    fn find_matches(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        field: &FieldName,
        value: &SecretString,
        purpose: &Purpose,
        event: &mut AuditEvent,
    ) -> Result<Vec<Match>, VaultError> {
        let spec = self.check_stored_call(policies, purpose, &[field])?[0];
        if !spec.lookup {
            return Err(VaultError::InvalidArgument(format!(
                "field `{field}` is not a lookup field (`lookup = true` in the catalog)"
            )));
        }
        if value.expose_secret().len() > self.limits.max_value_bytes {
            return Err(VaultError::InvalidArgument(format!(
                "value is larger than {} bytes",
                self.limits.max_value_bytes
            )));
        }
        let tag = self
            .keyring
            .lookup()
            .tag(field, &spec.normalize_for_lookup(value.expose_secret()));
        let now = self.clock.now_ms();
        let mut matches = Vec::new();
        for (key, _) in self.store.scan_prefix(Cf::Lookup, &lookup_prefix(&tag))? {
            if matches.len() == MAX_FIND_MATCHES {
                break;
            }
            let sid = lookup_sid(&key)
                .ok_or_else(|| VaultError::DataLoss("malformed lookup entry".into()))?;
            // The sweeper may not have reached an expired value yet; reads treat it as absent.
            let live = self
                .store
                .get(Cf::Fields, &subject_key(&sid, field.as_str()))?
                .map(|b| decode_field(&b))
                .transpose()?
                .is_some_and(|r| !r.is_expired(now));
            if !live {
                continue;
            }
            let Some(keys) = self.subject_keys(&sid)? else {
                continue;
            };
            let context = policies.field_context(purpose, self.effective_consents(&sid, policies)?);
            let decision =
                policies.decide_field(&ctx.principal, FieldAction::Read, field, &context);
            if decision.allowed {
                matches.push(Match {
                    subject: self.subject_id_of(&sid)?,
                    pseudonym: keys.pseudonym,
                    policy_ids: decision.policy_ids,
                });
            }
        }
        if matches.is_empty() {
            // Nothing the caller may see: answer as for a value nobody holds, which is a deny
            // exactly when reading the field for this purpose is denied without any consent.
            let context = policies.field_context(purpose, Default::default());
            let decision =
                policies.decide_field(&ctx.principal, FieldAction::Read, field, &context);
            if !decision.allowed {
                event.fields = vec![field_audit(
                    field,
                    FieldOutcome::Denied,
                    &decision.policy_ids,
                )];
                return Err(VaultError::PermissionDenied {
                    action: "read",
                    denied: vec![(field.to_string(), decision.policy_ids.to_vec())],
                });
            }
        }
        Ok(matches)
    }

    /// The raw id of `sid`, unwrapped from the keys CF.
    fn subject_id_of(&self, sid: &Sid) -> Result<SubjectId, VaultError> {
        let bytes = self
            .store
            .get(Cf::Keys, &subject_id_key(sid))?
            .ok_or_else(|| VaultError::DataLoss("an indexed subject has no stored id".into()))?;
        let record =
            SubjectIdRecord::decode(&bytes).map_err(|e| VaultError::DataLoss(e.to_string()))?;
        let raw = self.unwrap_subject_id(sid, &record)?;
        let id = String::from_utf8(raw.to_vec())
            .ok()
            .and_then(|s| SubjectId::new(s).ok())
            .ok_or_else(|| VaultError::DataLoss("a stored subject id is malformed".into()))?;
        if self.keyring.index().sid(&id) != *sid {
            return Err(VaultError::DataLoss(
                "a stored subject id belongs to another subject".into(),
            ));
        }
        Ok(id)
    }
}
