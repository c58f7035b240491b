//! `put` and `delete`: every field decided first; any denied field refuses the whole call and
//! changes nothing. Changes and their audit record go in one atomic, synced batch.

use std::collections::BTreeSet;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::audit::{Action, AuditEvent, FieldOutcome};
use crate::crypto::FieldTimes;
use crate::domain::{FieldName, KeyClass, Purpose, Sid, SubjectId};
use crate::policy::{FieldAction, FieldContext, Policies};
use crate::store::keys::subject_key;
use crate::store::records::FieldRecord;
use crate::store::{Batch, Cf};
use crate::vault::keys::{MAX_SEALS_PER_DEK, SubjectKeys};
use crate::vault::{CallContext, Vault, VaultError, field_audit};

impl Vault {
    /// Decides `action` on every field; fails with PERMISSION_DENIED (auditing each field's
    /// decision) unless all are allowed.
    fn authorize_all(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        action: FieldAction,
        context: &FieldContext,
        fields: &[&FieldName],
        event: &mut AuditEvent,
    ) -> Result<(), VaultError> {
        let mut denied = Vec::new();
        for field in fields {
            let decision = policies.decide_field(&ctx.principal, action, field, context);
            let outcome = if decision.allowed {
                FieldOutcome::Allowed
            } else {
                FieldOutcome::Denied
            };
            event
                .fields
                .push(field_audit(field, outcome, &decision.policy_ids));
            if !decision.allowed {
                denied.push((field.to_string(), decision.policy_ids.to_vec()));
            }
        }
        if denied.is_empty() {
            event.fields.clear();
            Ok(())
        } else {
            Err(VaultError::PermissionDenied {
                action: action.name(),
                denied,
            })
        }
    }

    /// Seals and stores `fields` of `subject`, written for `purpose`. Returns the written names.
    pub fn put(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: Vec<(FieldName, SecretString)>,
    ) -> Result<Vec<FieldName>, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::Write, Some(purpose), &policies);
        let _writer = self.lock_subject(&self.keyring.index().sid(subject))?;
        let staged = self.put_inner(ctx, &policies, subject, purpose, &fields, &mut event);
        let written = self.finish_staged(event, staged)?;
        self.attributes_changed(&policies, &written);
        Ok(written)
    }

    /// After a committed change of `fields`: a field that gives a policy attribute makes every
    /// cached attribute stale (they are cached with the consents).
    pub(in crate::vault) fn attributes_changed(&self, policies: &Policies, fields: &[FieldName]) {
        let catalog = policies.catalog();
        if fields.iter().any(|f| {
            catalog
                .field(f)
                .is_some_and(|s| s.policy_attribute.is_some())
        }) {
            self.consents.changed();
        }
    }

    fn put_inner(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[(FieldName, SecretString)],
        event: &mut AuditEvent,
    ) -> Result<Staged<Vec<FieldName>>, VaultError> {
        let (sid, _) = self.locate(subject, event)?;
        let names: Vec<&FieldName> = fields.iter().map(|(f, _)| f).collect();
        let specs = self.check_stored_call(policies, purpose, &names)?;
        for ((field, value), spec) in fields.iter().zip(&specs) {
            if value.expose_secret().len() > self.limits.max_value_bytes {
                return Err(VaultError::InvalidArgument(format!(
                    "value of `{field}` is larger than {} bytes",
                    self.limits.max_value_bytes
                )));
            }
            // A view derives from the field (an age band from a birth date): what it cannot be
            // derived from is refused now rather than read back as absent from the view.
            if spec.holds_dates() && crate::catalog::parse_date(value.expose_secret()).is_none() {
                return Err(VaultError::InvalidArgument(format!(
                    "value of `{field}` is not a date (YYYY-MM-DD), which its views derive from"
                )));
            }
        }
        let context = policies.field_context(purpose, self.effective_consents(&sid, policies)?);
        self.authorize_all(ctx, policies, FieldAction::Write, &context, &names, event)?;

        let now = self.clock.now_ms();
        let mut batch = Batch::new();
        let classes: BTreeSet<KeyClass> = specs.iter().map(|s| s.key_class.clone()).collect();
        let mut keys = self.keys_for_write(&sid, &classes, &mut batch, now)?;
        event.subject = Some(keys.pseudonym);

        // An overwrite rotates the class's DEK, so the superseded ciphertext keeps no live key;
        // so does a DEK that has sealed its share of random nonces.
        let existing = self.stored(&sid, &names)?;
        let mut rotate: BTreeSet<KeyClass> = specs
            .iter()
            .zip(&existing)
            .filter(|(_, present)| **present)
            .map(|(spec, _)| spec.key_class.clone())
            .collect();
        for class in &classes {
            let count = specs.iter().filter(|s| &s.key_class == class).count() as u64;
            if keys
                .records
                .get(class)
                .is_some_and(|r| r.seals.saturating_add(count) > MAX_SEALS_PER_DEK)
            {
                rotate.insert(class.clone());
            }
        }
        let dropped: BTreeSet<&FieldName> = names.iter().copied().collect();
        self.rotate_deks(
            &sid,
            &mut keys,
            &rotate,
            &dropped,
            policies.catalog(),
            &mut batch,
            now,
        )?;
        for class in &classes {
            let count = specs.iter().filter(|s| &s.key_class == class).count() as u64;
            self.count_seals(&sid, &mut keys, class, count, &mut batch);
        }
        for ((field, value), spec) in fields.iter().zip(&specs) {
            let times = FieldTimes {
                written_ms: now,
                expires_ms: spec.retention_ms.map(|r| now.saturating_add(r)),
            };
            let sealed = keys
                .cipher(&spec.key_class)?
                .seal(&sid, field, &times, value.expose_secret().as_bytes())
                .map_err(|e| VaultError::Internal(e.to_string()))?;
            let record = FieldRecord {
                dek_version: sealed.dek_version,
                nonce: sealed.nonce,
                ciphertext: sealed.ciphertext,
                written_ms: times.written_ms,
                expires_ms: times.expires_ms,
                times_bound: true,
            };
            batch.put(
                Cf::Fields,
                subject_key(&sid, field.as_str()),
                record.encode(),
            );
            if spec.lookup {
                self.stage_index(
                    &sid,
                    subject,
                    field,
                    spec,
                    value.expose_secret(),
                    &mut batch,
                )?;
            }
            event.fields.push(field_audit(
                field,
                FieldOutcome::Written,
                &Default::default(),
            ));
        }
        let mut written: Vec<FieldName> = names.into_iter().cloned().collect();
        written.sort();
        Ok(Staged {
            batch,
            value: written,
            keys: Some((sid, keys)),
        })
    }

    /// Whether each of `fields` has a stored record (expired or not), with one multi-get.
    fn stored(&self, sid: &Sid, fields: &[&FieldName]) -> Result<Vec<bool>, VaultError> {
        let keys: Vec<Vec<u8>> = fields
            .iter()
            .map(|f| subject_key(sid, f.as_str()))
            .collect();
        let request: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        Ok(self
            .store
            .multi_get(Cf::Fields, &request)?
            .into_iter()
            .map(|v| v.is_some())
            .collect())
    }

    /// Deletes `fields` of `subject`. Returns the fields that were stored.
    pub fn delete(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[FieldName],
    ) -> Result<Vec<FieldName>, VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::Delete, Some(purpose), &policies);
        let _writer = self.lock_subject(&self.keyring.index().sid(subject))?;
        let staged = self.delete_inner(ctx, &policies, subject, purpose, fields, &mut event);
        let deleted = self.finish_staged(event, staged)?;
        self.attributes_changed(&policies, &deleted);
        Ok(deleted)
    }

    fn delete_inner(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[FieldName],
        event: &mut AuditEvent,
    ) -> Result<Staged<Vec<FieldName>>, VaultError> {
        let (sid, _) = self.locate(subject, event)?;
        let names: Vec<&FieldName> = fields.iter().collect();
        self.check_stored_call(policies, purpose, &names)?;
        let context = policies.field_context(purpose, self.effective_consents(&sid, policies)?);
        self.authorize_all(ctx, policies, FieldAction::Delete, &context, &names, event)?;
        let unique: Vec<&FieldName> = names
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let existing = self.stored(&sid, &unique)?;
        let present: Vec<&FieldName> = unique
            .iter()
            .zip(&existing)
            .filter(|(_, p)| **p)
            .map(|(f, _)| *f)
            .collect();
        self.refuse_held(&sid, policies, &present)?;
        let mut batch = Batch::new();
        let mut deleted = Vec::new();
        for (field, present) in unique.iter().zip(existing) {
            let outcome = if present {
                batch.delete(Cf::Fields, subject_key(&sid, field.as_str()));
                self.stage_unindex(&sid, field, &mut batch)?;
                deleted.push((*field).clone());
                FieldOutcome::Deleted
            } else {
                FieldOutcome::Absent
            };
            event
                .fields
                .push(field_audit(field, outcome, &Default::default()));
        }
        let keys = self.rotate_away(&sid, &deleted, policies, &mut batch)?;
        Ok(Staged {
            batch,
            value: deleted,
            keys,
        })
    }

    /// For fields being removed from storage: rotates the DEKs of their classes, so that the
    /// removed ciphertexts keep no live key. Returns the new keys to publish after the commit.
    pub(in crate::vault) fn rotate_away(
        &self,
        sid: &Sid,
        removed: &[FieldName],
        policies: &Policies,
        batch: &mut Batch,
    ) -> Result<Option<(Sid, SubjectKeys)>, VaultError> {
        if removed.is_empty() {
            return Ok(None);
        }
        let Some(mut keys) = self.load_keys(sid)? else {
            return Ok(None);
        };
        let catalog = policies.catalog();
        let classes: BTreeSet<KeyClass> = removed.iter().map(|f| catalog.key_class_of(f)).collect();
        let dropped: BTreeSet<&FieldName> = removed.iter().collect();
        let now = self.clock.now_ms();
        self.rotate_deks(sid, &mut keys, &classes, &dropped, catalog, batch, now)?;
        Ok(Some((*sid, keys)))
    }

    /// Commits a staged change with its audit record, then publishes the keys it changed: only
    /// once they are durable may readers see them.
    pub(in crate::vault) fn finish_staged<T>(
        &self,
        event: AuditEvent,
        staged: Result<Staged<T>, VaultError>,
    ) -> Result<T, VaultError> {
        match staged {
            Ok(Staged { batch, value, keys }) => {
                let (value, _) = self.finish(event, Ok((batch, value)))?;
                if let Some((sid, keys)) = keys {
                    self.keys.publish(sid, Arc::new(keys));
                }
                Ok(value)
            }
            Err(e) => self.fail(event, e),
        }
    }
}

/// A change ready to commit: the batch, what the call returns, and the subject keys it changed.
pub(in crate::vault) struct Staged<T> {
    pub batch: Batch,
    pub value: T,
    pub keys: Option<(Sid, SubjectKeys)>,
}
