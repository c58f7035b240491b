//! Consent per purpose: recorded per subject under its sid (nothing on disk names the subject),
//! audited, shredded with the subject, and handed to Cedar as `context.consents` on every read.
//! Decisions are cached by consent set, so a withdrawal counts from the very next read.

use std::sync::Arc;

use crate::audit::{Action, Detail, FieldAudit, FieldOutcome};
use crate::catalog::{
    EffectiveConsents, PolicyAttribute, SubjectAttributes, utc_date, utc_midnight_ms,
};
use crate::clock::Millis;
use crate::clock::rfc3339;
use crate::crypto::RecordKind;
use crate::domain::{ConsentSource, OptOutSignal, Purpose, Sid, SubjectId};
use crate::policy::Policies;
use crate::store::keys::{name_of, subject_key};
use crate::store::records::ConsentRecord;
use crate::vault::consent_cache::Recorded;
use crate::vault::keys::{StaleKeys, decode_field};
use crate::vault::{CallContext, Vault, VaultError, require};
use strum::VariantArray;

/// First byte of a tagged consent record.
const SEALED_CONSENT: u8 = 2;

/// The consent CF key name of a recorded opt-out signal, beside the purposes' names (which never
/// start with `#`).
fn signal_name(signal: OptOutSignal) -> String {
    format!("#signal:{}", signal.name())
}

/// What a consent record's tag covers: the subject, the entry's name (a purpose, or a signal's
/// [`signal_name`]) and the record.
fn consent_tagged(sid: &Sid, name: &str, body: &[u8]) -> Vec<u8> {
    let name = name.as_bytes();
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
    /// Where it came from.
    pub source: ConsentSource,
    /// The opt-out signal that withdrew it, if one did.
    pub signal: Option<OptOutSignal>,
}

/// One opt-out signal a subject sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalState {
    /// The signal.
    pub signal: OptOutSignal,
    /// When it was last recorded (RFC 3339).
    pub time: String,
    /// Who recorded it.
    pub recorded_by: String,
    /// Where it came from.
    pub source: ConsentSource,
}

/// Everything in the consent column family for one subject.
#[derive(Debug, Default)]
pub(in crate::vault) struct ConsentEntries {
    pub consents: Vec<ConsentState>,
    pub signals: Vec<SignalState>,
}

impl Vault {
    /// Every consent and signal recorded for `sid`, each checked against its tag.
    pub(in crate::vault) fn consent_entries(
        &self,
        sid: &Sid,
    ) -> Result<ConsentEntries, VaultError> {
        let mut out = ConsentEntries::default();
        for (key, value) in self.store.scan_prefix(Cf::Consent, &sid.0)? {
            let Some(name) = name_of(&key) else { continue };
            if let Ok(purpose) = Purpose::new(name) {
                let r = self.open_consent(sid, name, &value)?;
                out.consents.push(ConsentState {
                    purpose,
                    granted: r.granted,
                    time: rfc3339(r.time_ms),
                    recorded_by: r.principal,
                    source: r.source,
                    signal: r.signal,
                });
            } else if let Some(signal) = OptOutSignal::VARIANTS
                .iter()
                .copied()
                .find(|s| signal_name(*s) == name)
            {
                let r = self.open_consent(sid, name, &value)?;
                out.signals.push(SignalState {
                    signal,
                    time: rfc3339(r.time_ms),
                    recorded_by: r.principal,
                    source: r.source,
                });
            }
        }
        Ok(out)
    }

    /// Every consent recorded for `sid`, each checked against its tag.
    pub(in crate::vault) fn consents_of(&self, sid: &Sid) -> Result<Vec<ConsentState>, VaultError> {
        Ok(self.consent_entries(sid)?.consents)
    }

    /// `record`'s stored bytes: `2 ‖ tag ‖ record`, the tag (a key from the keyring) binding it to
    /// the subject and purpose, so that a consent edited, flipped or copied in `db/` is refused.
    fn seal_consent(&self, sid: &Sid, name: &str, record: &ConsentRecord) -> Vec<u8> {
        let body = record.encode();
        let tag = self.keyring.index().record_tag(
            RecordKind::Consent,
            0,
            &consent_tagged(sid, name, &body),
        );
        [&[SEALED_CONSENT][..], &tag, &body].concat()
    }

    fn open_consent(
        &self,
        sid: &Sid,
        name: &str,
        bytes: &[u8],
    ) -> Result<ConsentRecord, VaultError> {
        let forged = || {
            VaultError::DataLoss(format!(
                "a consent record for `{name}` fails its authentication"
            ))
        };
        let (&kind, rest) = bytes.split_first().ok_or_else(forged)?;
        let (tag, body) = rest.split_at_checked(32).ok_or_else(forged)?;
        let tagged = consent_tagged(sid, name, body);
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
    pub(in crate::vault) fn tag_format1_consents(&self) -> Result<(), VaultError> {
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
                    self.seal_consent(&Sid(sid), purpose.as_str(), &record),
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
    pub(in crate::vault) fn effective_consents(
        &self,
        sid: &Sid,
        policies: &Policies,
    ) -> Result<EffectiveConsents, VaultError> {
        let now = self.clock.now_ms();
        let recorded = self.consents.recorded(sid, now, || {
            let entries = self.consent_entries(sid)?;
            let mut signals: Vec<OptOutSignal> = entries.signals.iter().map(|s| s.signal).collect();
            signals.sort();
            let (subject, valid_until) = self.subject_attributes(sid, policies, now)?;
            Ok(Recorded {
                purposes: entries
                    .consents
                    .into_iter()
                    .map(|c| (c.purpose, c.granted))
                    .collect(),
                signals,
                subject,
                valid_until,
            })
        })?;
        let mut effective = policies
            .catalog()
            .resolve_consents(recorded.purposes.iter().map(|(p, g)| (p, *g)));
        effective.signals = recorded.signals.clone();
        effective.subject = recorded.subject.clone();
        Ok(effective)
    }

    /// The subject's policy attributes, from the catalog's `policy_attribute` fields decrypted
    /// here (the values go no further than the derivation), and until when they hold without a
    /// write: the first retention expiry among those fields, or a minor's coming of age.
    fn subject_attributes(
        &self,
        sid: &Sid,
        policies: &Policies,
        now: Millis,
    ) -> Result<(SubjectAttributes, Option<Millis>), VaultError> {
        let catalog = policies.catalog();
        let fields: Vec<_> = catalog.attribute_fields().collect();
        if fields.is_empty() {
            return Ok(Default::default());
        }
        let Some(keys) = self.subject_keys(sid)? else {
            return Ok(Default::default());
        };
        let storage_keys: Vec<Vec<u8>> = fields
            .iter()
            .map(|(field, ..)| subject_key(sid, field.as_str()))
            .collect();
        let request: Vec<&[u8]> = storage_keys.iter().map(Vec::as_slice).collect();
        let rules = catalog.attribute_rules();
        let today = utc_date(now);
        self.with_current_keys(sid, Some(keys), |keys| {
            let mut out = SubjectAttributes::default();
            let mut until: Option<Millis> = None;
            let Some(keys) = keys else {
                return Ok(Ok((out, until)));
            };
            let mut sooner = |t: Millis| until = Some(until.map_or(t, |u| u.min(t)));
            let values = self.store.multi_get(Cf::Fields, &request)?;
            for ((field, spec, attribute), value) in fields.iter().zip(values) {
                let Some(bytes) = value else { continue };
                let record = decode_field(&bytes)?;
                if record.is_expired(now) {
                    continue;
                }
                if let Some(expires) = record.expires_ms {
                    sooner(expires);
                }
                let Some(text) = keys.open_record(sid, field, &spec.key_class, &record)? else {
                    return Ok(Err(StaleKeys));
                };
                rules.derive(*attribute, &text, today, &mut out);
                if *attribute == PolicyAttribute::Minor
                    && out.minor == Some(true)
                    && let Some(adult) = rules.adult_from(&text)
                {
                    sooner(utc_midnight_ms(adult));
                }
            }
            Ok(Ok((out, until)))
        })
    }

    /// Records `subject`'s consent to `purpose` (or its withdrawal), from `source`. Returns when
    /// it was recorded. A grant of a purpose an opt-out signal withdrew (itself or its nearest
    /// recorded ancestor) is refused unless it is the customer's own (`user`).
    pub fn set_consent(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        purpose: &Purpose,
        granted: bool,
        source: ConsentSource,
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
            event.detail = Some(Detail::ConsentSource(source));
            if granted && source != ConsentSource::User {
                let recorded = self.consents_of(&sid)?;
                if let Some(signal) = signal_withdrawal(policies.catalog(), &recorded, purpose) {
                    return Err(VaultError::FailedPrecondition(format!(
                        "`{purpose}` was withdrawn by the customer's `{signal}` opt-out signal: \
                         only the customer's own grant (source `user`) undoes it"
                    )));
                }
            }
            let mut batch = Batch::new();
            let now = self.clock.now_ms();
            let keys = self.keys_for_write(&sid, &Default::default(), &mut batch, now)?;
            event.subject = Some(keys.pseudonym);
            let record = ConsentRecord {
                granted,
                time_ms: now,
                principal: ctx.principal.to_string(),
                source,
                signal: None,
            };
            batch.put(
                Cf::Consent,
                subject_key(&sid, purpose.as_str()),
                self.seal_consent(&sid, purpose.as_str(), &record),
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

    /// Records an opt-out signal of `subject`: a withdrawal, from `source` (by default the
    /// signal's own), of every purpose the catalog marks as covered by it and of their children,
    /// and the signal itself, which policies see as `context.signals`. Authorized as a
    /// `consent_write` of each purpose it withdraws. Returns when it was recorded and what it
    /// withdrew.
    pub fn record_signal(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
        signal: OptOutSignal,
        source: Option<ConsentSource>,
    ) -> Result<(String, Vec<Purpose>), VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::RecordSignal, None, &policies);
        event.detail = Some(Detail::Signal(signal));
        let _writer = self.lock_subject(&self.keyring.index().sid(subject))?;
        let source = source.unwrap_or(signal.default_source());
        let staged = (|| {
            let (sid, _) = self.locate(subject, &mut event)?;
            let covered = policies.catalog().covered_by(signal);
            let mut decisions = Vec::with_capacity(covered.len());
            for purpose in &covered {
                let decision = policies.decide_consent_write(&ctx.principal, purpose);
                decisions.push(decision.policy_ids.clone());
                require(decision, "consent_write")?;
            }
            let mut batch = Batch::new();
            let now = self.clock.now_ms();
            let keys = self.keys_for_write(&sid, &Default::default(), &mut batch, now)?;
            event.subject = Some(keys.pseudonym);
            let record = |granted, signal| ConsentRecord {
                granted,
                time_ms: now,
                principal: ctx.principal.to_string(),
                source,
                signal,
            };
            let name = signal_name(signal);
            batch.put(
                Cf::Consent,
                subject_key(&sid, &name),
                self.seal_consent(&sid, &name, &record(false, None)),
            );
            for (purpose, policy_ids) in covered.iter().zip(decisions) {
                batch.put(
                    Cf::Consent,
                    subject_key(&sid, purpose.as_str()),
                    self.seal_consent(&sid, purpose.as_str(), &record(false, Some(signal))),
                );
                event.fields.push(FieldAudit {
                    field: purpose.to_string(),
                    outcome: FieldOutcome::Withdrawn,
                    policy_ids,
                });
            }
            Ok((batch, (sid, keys, rfc3339(now), covered)))
        })();
        let ((sid, keys, time, covered), _) = self.finish(event, staged)?;
        self.consents.changed();
        self.keys.publish(sid, Arc::new(keys));
        Ok((time, covered.into_iter().collect()))
    }

    /// The consents and signals recorded for `subject`.
    pub fn get_consents(
        &self,
        ctx: &CallContext,
        subject: &SubjectId,
    ) -> Result<(Vec<ConsentState>, Vec<SignalState>), VaultError> {
        let policies = self.policies();
        let mut event = self.event(ctx, Action::ConsentRead, None, &policies);
        let result = (|| {
            let (sid, _) = self.locate(subject, &mut event)?;
            require(policies.decide_consent_read(&ctx.principal), "consent_read")?;
            let entries = self.consent_entries(&sid)?;
            Ok((Batch::new(), (entries.consents, entries.signals)))
        })();
        self.finish(event, result).map(|(c, _)| c)
    }
}

/// The signal whose withdrawal decides `purpose` among `recorded` consents, if one does: the
/// record of the purpose itself, or else of its nearest ancestor with a record, as the precedence
/// rule reads them.
fn signal_withdrawal(
    catalog: &crate::catalog::Catalog,
    recorded: &[ConsentState],
    purpose: &Purpose,
) -> Option<OptOutSignal> {
    let parents: std::collections::BTreeMap<&Purpose, Option<&Purpose>> =
        catalog.purposes().collect();
    let mut current = Some(purpose);
    for _ in 0..=parents.len() {
        let p = current?;
        if let Some(record) = recorded.iter().find(|c| &c.purpose == p) {
            return (!record.granted).then_some(record.signal).flatten();
        }
        current = parents.get(p).copied().flatten();
    }
    None
}
