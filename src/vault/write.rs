//! `put` and `delete`: every field decided first; any denied field refuses the whole call and
//! changes nothing. Changes and their audit record go in one atomic, synced batch.

use std::collections::BTreeSet;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use super::{CallContext, Vault, VaultError, field_audit};
use crate::audit::AuditEvent;
use crate::domain::{FieldName, KeyClass, Purpose, SubjectId};
use crate::policy::{FieldAction, FieldContext, Policies};
use crate::store::keys::subject_key;
use crate::store::records::FieldRecord;
use crate::store::{Batch, Cf};

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
                "allowed"
            } else {
                "denied"
            };
            event
                .fields
                .push(field_audit(field, outcome, &decision.policy_ids));
            if !decision.allowed {
                denied.push((field.to_string(), decision.policy_ids));
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
        let mut event = self.event(ctx, "write", Some(purpose), &policies);
        let _writer = self
            .writer
            .lock()
            .map_err(|_| VaultError::Internal("writer poisoned".into()))?;
        let result = self.put_inner(ctx, &policies, subject, purpose, &fields, &mut event);
        match result {
            Ok((batch, names, sid, keys)) => {
                let (written, _) = self.finish(event, Ok((batch, names)))?;
                // Only now is the new key durable, so only now may readers see it.
                self.keys.insert(sid, Arc::new(keys));
                Ok(written)
            }
            Err(e) => self.finish(event, Err(e)).map(|(v, _)| v),
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
    ) -> Result<
        (
            Batch,
            Vec<FieldName>,
            crate::domain::Sid,
            super::keys::SubjectKeys,
        ),
        VaultError,
    > {
        let (sid, _) = self.locate(subject, event)?;
        let names: Vec<&FieldName> = fields.iter().map(|(f, _)| f).collect();
        let specs = self.check_call(policies, purpose, &names)?;
        for (field, value) in fields {
            if value.expose_secret().len() > self.limits.max_value_bytes {
                return Err(VaultError::InvalidArgument(format!(
                    "value of `{field}` is larger than {} bytes",
                    self.limits.max_value_bytes
                )));
            }
        }
        let context = policies.field_context(purpose, &self.granted_purposes(&sid)?);
        self.authorize_all(ctx, policies, FieldAction::Write, &context, &names, event)?;

        let now = self.clock.now_ms();
        let mut batch = Batch::new();
        let classes: BTreeSet<KeyClass> = specs.iter().map(|s| s.key_class.clone()).collect();
        let mut keys = self.keys_for_write(&sid, &classes, &mut batch, now)?;
        event.subject = Some(keys.pseudonym.to_string());
        for class in &classes {
            let count = specs.iter().filter(|s| &s.key_class == class).count() as u64;
            self.count_seals(&sid, &mut keys, class, count, &mut batch);
        }
        for ((field, value), spec) in fields.iter().zip(&specs) {
            let sealed = keys
                .cipher(&spec.key_class)?
                .seal(&sid, field, value.expose_secret().as_bytes())
                .map_err(|e| VaultError::Internal(e.to_string()))?;
            let record = FieldRecord {
                dek_version: sealed.dek_version,
                nonce: sealed.nonce,
                ciphertext: sealed.ciphertext,
                written_ms: now,
                expires_ms: spec.retention_ms.map(|r| now.saturating_add(r)),
            };
            batch.put(
                Cf::Fields,
                subject_key(&sid, field.as_str()),
                record.encode(),
            );
            event.fields.push(field_audit(field, "written", &[]));
        }
        let mut written: Vec<FieldName> = names.into_iter().cloned().collect();
        written.sort();
        Ok((batch, written, sid, keys))
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
        let mut event = self.event(ctx, "delete", Some(purpose), &policies);
        let _writer = self
            .writer
            .lock()
            .map_err(|_| VaultError::Internal("writer poisoned".into()))?;
        let result = self.delete_inner(ctx, &policies, subject, purpose, fields, &mut event);
        self.finish(event, result).map(|(deleted, _)| deleted)
    }

    fn delete_inner(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        subject: &SubjectId,
        purpose: &Purpose,
        fields: &[FieldName],
        event: &mut AuditEvent,
    ) -> Result<(Batch, Vec<FieldName>), VaultError> {
        let (sid, _) = self.locate(subject, event)?;
        let names: Vec<&FieldName> = fields.iter().collect();
        self.check_call(policies, purpose, &names)?;
        let context = policies.field_context(purpose, &self.granted_purposes(&sid)?);
        self.authorize_all(ctx, policies, FieldAction::Delete, &context, &names, event)?;
        let unique: BTreeSet<&FieldName> = names.into_iter().collect();
        let keys: Vec<Vec<u8>> = unique
            .iter()
            .map(|f| subject_key(&sid, f.as_str()))
            .collect();
        let request: Vec<(Cf, &[u8])> = keys.iter().map(|k| (Cf::Fields, k.as_slice())).collect();
        let existing = self.store.multi_get(&request)?;
        let mut batch = Batch::new();
        let mut deleted = Vec::new();
        for ((field, key), value) in unique.iter().zip(keys).zip(existing) {
            let outcome = if value.is_some() {
                batch.delete(Cf::Fields, key);
                deleted.push((*field).clone());
                "deleted"
            } else {
                "absent"
            };
            event.fields.push(field_audit(field, outcome, &[]));
        }
        Ok((batch, deleted))
    }
}
