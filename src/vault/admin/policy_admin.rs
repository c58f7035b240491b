//! Policy administration for the security team: inspect, validate, dry-run, apply, roll back and
//! explain. Every call is decided by Cedar (`policy_read` / `policy_write`) and audited.

use std::sync::Arc;

use crate::audit::{Action, AuditEvent, FieldOutcome};
use crate::diagnostic::{SourceError, SourcePos};
use crate::domain::{FieldName, Principal, Purpose};
use crate::policy::{
    AccessRequest, AdminAction, Decision, Policies, PolicyError, ReadDecision, Sources,
};
use crate::store::Batch;
use crate::vault::policy_versions::PolicyVersionInfo;
use crate::vault::{CallContext, Vault, VaultError, require};

/// Longest comment accepted on apply or rollback.
const MAX_COMMENT_BYTES: usize = 1024;
/// Most field decisions one dry run replays.
const MAX_DRY_RUN: usize = 100_000;

/// The result of validating a candidate policy set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// No errors.
    pub valid: bool,
    /// `file:line:column: message` errors.
    pub errors: Vec<SourceError>,
    /// The candidate's content hash.
    pub hash: String,
}

/// A recorded read decision that a candidate set would decide differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionChange {
    /// The audit record it was replayed from.
    pub seq: u64,
    /// Who read.
    pub principal: String,
    /// Which field.
    pub field: String,
    /// For what purpose.
    pub purpose: String,
    /// `allowed`, `masked` or `denied` as recorded.
    pub before: String,
    /// `allowed`, `masked`, `denied`, or `invalid` (field or purpose no longer declared).
    pub after: String,
}

/// The result of a dry run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    /// Field decisions replayed.
    pub examined: usize,
    /// Those that would change.
    pub changes: Vec<DecisionChange>,
}

/// The explanation of one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The decision.
    pub decision: Decision,
    /// Each determining policy with where it is written.
    pub locations: Vec<(String, Option<SourcePos>)>,
    /// The active version that decided.
    pub version: u64,
}

fn invalid_policies(e: PolicyError) -> VaultError {
    match e {
        PolicyError::Invalid(errors) => {
            VaultError::InvalidArgument(format!("invalid policy set:\n{errors}"))
        }
        PolicyError::Io { .. } => VaultError::InvalidArgument(e.to_string()),
    }
}

/// `allowed` / `masked` / `denied` of a recorded read outcome; `None` for anything else.
fn recorded_class(outcome: FieldOutcome) -> Option<&'static str> {
    match outcome {
        FieldOutcome::Value | FieldOutcome::Absent => Some("allowed"),
        FieldOutcome::Masked => Some("masked"),
        FieldOutcome::Denied => Some("denied"),
        _ => None,
    }
}

impl Vault {
    fn authorize_admin(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        action: AdminAction,
    ) -> Result<(), VaultError> {
        require(policies.decide_admin(&ctx.principal, action), action.name())
    }

    /// Runs a read-only admin call: authorize, run, audit.
    fn admin_read<T>(
        &self,
        ctx: &CallContext,
        name: Action,
        op: impl FnOnce(&Arc<Policies>) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let policies = self.policies();
        let event = self.event(ctx, name, None, &policies);
        let result = self
            .authorize_admin(ctx, &policies, AdminAction::Read)
            .and_then(|()| op(&policies))
            .map(|v| (Batch::new(), v));
        self.finish(event, result).map(|(v, _)| v)
    }

    /// The active version and its files.
    pub fn active_policies(
        &self,
        ctx: &CallContext,
    ) -> Result<(PolicyVersionInfo, Sources), VaultError> {
        self.admin_read(ctx, Action::PolicyGet, |active| {
            let record = self.policy_record(active.number())?.ok_or_else(|| {
                VaultError::DataLoss("the active policy version is not stored".into())
            })?;
            Ok((record.info(active.number()), record.files))
        })
    }

    /// Every version, newest first.
    pub fn policy_versions(&self, ctx: &CallContext) -> Result<Vec<PolicyVersionInfo>, VaultError> {
        self.admin_read(ctx, Action::PolicyVersions, |active| {
            Ok(self
                .policy_records()?
                .iter()
                .map(|r| r.info(active.number()))
                .collect())
        })
    }

    /// Validates a candidate set.
    pub fn validate_policies(
        &self,
        ctx: &CallContext,
        files: &Sources,
    ) -> Result<Validation, VaultError> {
        self.admin_read(ctx, Action::PolicyValidate, |_| {
            Ok(match Policies::from_sources(files) {
                Ok(set) => Validation {
                    valid: true,
                    errors: Vec::new(),
                    hash: set.hash().to_owned(),
                },
                Err(PolicyError::Invalid(errors)) => Validation {
                    valid: false,
                    errors: errors.0,
                    hash: crate::policy::hash_of(files),
                },
                Err(e) => return Err(invalid_policies(e)),
            })
        })
    }

    /// Explains the active set's decision for `request` (parsed against the active catalog).
    pub fn explain(
        &self,
        ctx: &CallContext,
        parse: impl FnOnce(&Policies) -> Result<AccessRequest, String>,
    ) -> Result<Explanation, VaultError> {
        self.admin_read(ctx, Action::PolicyExplain, |active| {
            let request = parse(active).map_err(VaultError::InvalidArgument)?;
            let decision = active.evaluate(&request);
            let locations = decision
                .policy_ids
                .iter()
                .map(|id| (id.clone(), active.location(id).cloned()))
                .collect();
            Ok(Explanation {
                decision,
                locations,
                version: active.number(),
            })
        })
    }

    /// Replays the last `last` recorded read decisions under `files` and lists those that change.
    pub fn dry_run_policies(
        &self,
        ctx: &CallContext,
        files: &Sources,
        last: usize,
    ) -> Result<DryRun, VaultError> {
        self.admin_read(ctx, Action::PolicyDryRun, |_| {
            let candidate = Policies::from_sources(files).map_err(invalid_policies)?;
            self.replay_reads(&candidate, last.clamp(1, MAX_DRY_RUN))
        })
    }

    fn replay_reads(&self, candidate: &Policies, last: usize) -> Result<DryRun, VaultError> {
        let mut run = DryRun {
            examined: 0,
            changes: Vec::new(),
        };
        let mut next: Option<u64> = None;
        let unreadable = || VaultError::DataLoss("an audit record is unreadable".into());
        'pages: loop {
            let page = self
                .audit
                .log()
                .scan_back(next, 1024)
                .map_err(|_| unreadable())?;
            if page.is_empty() {
                break;
            }
            for (seq, bytes) in page {
                let (_, record) = self
                    .audit
                    .dictionaries()
                    .event(self.audit.log(), seq, &bytes)
                    .map_err(|_| unreadable())?;
                next = seq.checked_sub(1).filter(|s| *s > 0);
                if record.action == Action::Read {
                    self.replay_record(candidate, seq, &record, &mut run);
                }
                if run.examined >= last || next.is_none() {
                    break 'pages;
                }
            }
        }
        Ok(run)
    }

    fn replay_record(&self, candidate: &Policies, seq: u64, record: &AuditEvent, run: &mut DryRun) {
        let (Ok(principal), Some(purpose)) =
            (Principal::parse_uid(&record.principal), &record.purpose)
        else {
            return;
        };
        for field in &record.fields {
            let Some(before) = recorded_class(field.outcome) else {
                continue;
            };
            run.examined += 1;
            let after = match (
                FieldName::new(field.field.clone()),
                Purpose::new(purpose.clone()),
            ) {
                (Ok(name), Ok(p))
                    if candidate.catalog().field(&name).is_some()
                        && candidate.catalog().has_purpose(&p) =>
                {
                    // The consents recorded with the decision, made effective again over the
                    // candidate's hierarchy (the recorded lists name every purpose, so an
                    // unchanged hierarchy gives them back); one no longer declared applies to
                    // nothing.
                    let parse = |list: &[String], granted: bool| -> Vec<(Purpose, bool)> {
                        list.iter()
                            .filter_map(|c| Purpose::new(c.clone()).ok())
                            .map(|c| (c, granted))
                            .collect()
                    };
                    let mut recorded = parse(&record.consents, true);
                    recorded.extend(parse(&record.withdrawn, false));
                    let consents = candidate
                        .catalog()
                        .resolve_consents(recorded.iter().map(|(p, g)| (p, *g)));
                    let ctx = candidate.field_context(&p, consents);
                    match candidate.decide_read(&principal, &name, &ctx) {
                        ReadDecision::Allowed(permit) if permit.masked() => "masked",
                        ReadDecision::Allowed(_) => "allowed",
                        ReadDecision::Denied(_) => "denied",
                    }
                }
                _ => "invalid",
            };
            if after != before {
                run.changes.push(DecisionChange {
                    seq,
                    principal: record.principal.clone(),
                    field: field.field.clone(),
                    purpose: purpose.clone(),
                    before: before.to_owned(),
                    after: after.to_owned(),
                });
            }
        }
    }

    fn check_comment(comment: &str) -> Result<(), VaultError> {
        if comment.len() > MAX_COMMENT_BYTES || comment.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(VaultError::InvalidArgument(format!(
                "comment must be at most {MAX_COMMENT_BYTES} bytes without control characters"
            )));
        }
        Ok(())
    }

    /// Stages a policy change: authorized, based on the active version, valid. Under the writer lock.
    fn stage_change(
        &self,
        ctx: &CallContext,
        policies: &Policies,
        base: u64,
        comment: &str,
        files: &Sources,
    ) -> Result<Policies, VaultError> {
        self.authorize_admin(ctx, policies, AdminAction::Write)?;
        Self::check_comment(comment)?;
        let active = self.policies().number();
        if base != active {
            return Err(VaultError::FailedPrecondition(format!(
                "base version {base} is not the active version {active}: fetch the active set and try again"
            )));
        }
        Policies::from_sources(files).map_err(invalid_policies)
    }

    fn change(
        &self,
        ctx: &CallContext,
        name: Action,
        stage: impl FnOnce(&Policies) -> Result<(Policies, Sources, String, &'static str), VaultError>,
    ) -> Result<PolicyVersionInfo, VaultError> {
        let _writer = self.lock_writer()?;
        let policies = self.policies();
        let event: AuditEvent = self.event(ctx, name, None, &policies);
        match stage(&policies) {
            Ok((set, files, comment, source)) => {
                let record = self.activate(
                    set,
                    files,
                    &ctx.principal.to_string(),
                    &comment,
                    source,
                    event,
                )?;
                Ok(record.info(record.number))
            }
            Err(e) => self.fail(event, e),
        }
    }

    /// Validates `files` and activates them as a new version, if `base` is still active.
    pub fn apply_policies(
        &self,
        ctx: &CallContext,
        files: Sources,
        base: u64,
        comment: &str,
    ) -> Result<PolicyVersionInfo, VaultError> {
        self.change(ctx, Action::PolicyApply, |policies| {
            let set = self.stage_change(ctx, policies, base, comment, &files)?;
            Ok((set, files, comment.to_owned(), "api"))
        })
    }

    /// Activates the files of version `to` again, as a new version, if `base` is still active.
    pub fn rollback_policies(
        &self,
        ctx: &CallContext,
        to: u64,
        base: u64,
        comment: &str,
    ) -> Result<PolicyVersionInfo, VaultError> {
        self.change(ctx, Action::PolicyRollback, |policies| {
            self.authorize_admin(ctx, policies, AdminAction::Write)?;
            let record = self.policy_record(to)?.ok_or_else(|| {
                VaultError::NotFound(format!("policy version {to} does not exist"))
            })?;
            let set = self.stage_change(ctx, policies, base, comment, &record.files)?;
            Ok((
                set,
                record.files,
                format!("rollback to version {to}: {comment}"),
                "rollback",
            ))
        })
    }
}
