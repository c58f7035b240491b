//! `privault.v1.PolicyAdmin`: the security team's policy workflow over gRPC.

use tonic::{Request, Response, Status};

use super::edge::Edge;
use super::pb;
use crate::audit::Action;
use crate::diagnostic::{SourceError, SourcePos};
use crate::policy::{AccessRequest, Sources};
use crate::vault::PolicyVersionInfo;

/// Replayed read decisions when a dry run names no count.
const DEFAULT_DRY_RUN: usize = 1000;

/// The `privault.v1.PolicyAdmin` service.
#[derive(Debug, Clone)]
pub struct PolicyAdminService {
    edge: Edge,
}

impl PolicyAdminService {
    /// The service behind `edge`.
    pub fn new(edge: Edge) -> Self {
        Self { edge }
    }
}

fn sources(files: Option<pb::PolicyFiles>) -> Result<Sources, Status> {
    let pb::PolicyFiles {
        schema,
        catalog,
        policies,
    } = files.ok_or_else(|| Status::invalid_argument("no policy files given"))?;
    if let Some(bad) = policies
        .keys()
        .find(|name| !name.ends_with(".cedar") || name.contains('/') || name.starts_with('.'))
    {
        return Err(Status::invalid_argument(format!(
            "policy file name `{}` must be a plain `*.cedar` name",
            bad.escape_debug()
        )));
    }
    Ok(Sources {
        schema,
        catalog,
        policies: policies.into_iter().collect(),
    })
}

fn files(sources: Sources) -> pb::PolicyFiles {
    pb::PolicyFiles {
        schema: sources.schema,
        catalog: sources.catalog,
        policies: sources.policies.into_iter().collect(),
    }
}

fn version(info: PolicyVersionInfo) -> pb::PolicyVersion {
    pb::PolicyVersion {
        version: info.number,
        hash: info.hash,
        created: info.created,
        author: info.author,
        comment: info.comment,
        source: info.source,
        active: info.active,
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn source_error(e: SourceError) -> pb::SourceError {
    pb::SourceError {
        file: e.file,
        line: to_u32(e.line),
        column: to_u32(e.column),
        message: e.message,
    }
}

fn policy_ref(id: String, pos: Option<SourcePos>) -> pb::PolicyRef {
    let (file, line, column) = pos.map_or((String::new(), 0, 0), |p| {
        (p.file, to_u32(p.line), to_u32(p.column))
    });
    pb::PolicyRef {
        id,
        file,
        line,
        column,
    }
}

#[tonic::async_trait]
impl pb::policy_admin_server::PolicyAdmin for PolicyAdminService {
    async fn get_active_policies(
        &self,
        request: Request<pb::GetActivePoliciesRequest>,
    ) -> Result<Response<pb::GetActivePoliciesResponse>, Status> {
        let ctx = self.edge.context(&request, Action::PolicyGet).await?;
        let pb::GetActivePoliciesRequest {} = request.into_inner();
        self.edge
            .run(
                ctx,
                |vault, ctx| vault.active_policies(ctx),
                |(info, sources)| pb::GetActivePoliciesResponse {
                    version: Some(version(info)),
                    files: Some(files(sources)),
                },
            )
            .await
    }

    async fn validate_policies(
        &self,
        request: Request<pb::ValidatePoliciesRequest>,
    ) -> Result<Response<pb::ValidatePoliciesResponse>, Status> {
        let ctx = self.edge.context(&request, Action::PolicyValidate).await?;
        let pb::ValidatePoliciesRequest { files } = request.into_inner();
        let candidate = sources(files)?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.validate_policies(ctx, &candidate),
                |v| pb::ValidatePoliciesResponse {
                    valid: v.valid,
                    errors: v.errors.into_iter().map(source_error).collect(),
                    hash: v.hash,
                },
            )
            .await
    }

    async fn dry_run_policies(
        &self,
        request: Request<pb::DryRunPoliciesRequest>,
    ) -> Result<Response<pb::DryRunPoliciesResponse>, Status> {
        let ctx = self.edge.context(&request, Action::PolicyDryRun).await?;
        let pb::DryRunPoliciesRequest { files, last } = request.into_inner();
        let candidate = sources(files)?;
        let last = if last == 0 {
            DEFAULT_DRY_RUN
        } else {
            last as usize
        };
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.dry_run_policies(ctx, &candidate, last),
                |run| pb::DryRunPoliciesResponse {
                    examined: to_u32(run.examined),
                    changes: run
                        .changes
                        .into_iter()
                        .map(|c| pb::DecisionChange {
                            seq: c.seq,
                            principal: c.principal,
                            field: c.field,
                            purpose: c.purpose,
                            before: c.before,
                            after: c.after,
                        })
                        .collect(),
                },
            )
            .await
    }

    async fn apply_policies(
        &self,
        request: Request<pb::ApplyPoliciesRequest>,
    ) -> Result<Response<pb::ApplyPoliciesResponse>, Status> {
        let ctx = self.edge.context(&request, Action::PolicyApply).await?;
        let pb::ApplyPoliciesRequest {
            files,
            base_version,
            comment,
        } = request.into_inner();
        let candidate = sources(files)?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.apply_policies(ctx, candidate, base_version, &comment),
                |info| pb::ApplyPoliciesResponse {
                    version: Some(version(info)),
                },
            )
            .await
    }

    async fn list_policy_versions(
        &self,
        request: Request<pb::ListPolicyVersionsRequest>,
    ) -> Result<Response<pb::ListPolicyVersionsResponse>, Status> {
        let ctx = self.edge.context(&request, Action::PolicyVersions).await?;
        let pb::ListPolicyVersionsRequest {} = request.into_inner();
        self.edge
            .run(
                ctx,
                |vault, ctx| vault.policy_versions(ctx),
                |list| pb::ListPolicyVersionsResponse {
                    versions: list.into_iter().map(version).collect(),
                },
            )
            .await
    }

    async fn rollback_policies(
        &self,
        request: Request<pb::RollbackPoliciesRequest>,
    ) -> Result<Response<pb::ApplyPoliciesResponse>, Status> {
        let ctx = self.edge.context(&request, Action::PolicyRollback).await?;
        let pb::RollbackPoliciesRequest {
            to_version,
            base_version,
            comment,
        } = request.into_inner();
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.rollback_policies(ctx, to_version, base_version, &comment),
                |info| pb::ApplyPoliciesResponse {
                    version: Some(version(info)),
                },
            )
            .await
    }

    async fn explain_decision(
        &self,
        request: Request<pb::ExplainDecisionRequest>,
    ) -> Result<Response<pb::ExplainDecisionResponse>, Status> {
        let ctx = self.edge.context(&request, Action::PolicyExplain).await?;
        let pb::ExplainDecisionRequest {
            principal,
            action,
            field,
            purpose,
            consents,
            reason,
            withdrawn,
        } = request.into_inner();
        let some = |s: String| (!s.is_empty()).then_some(s);
        let (field, purpose, reason) = (some(field), some(purpose), some(reason));
        self.edge
            .run(
                ctx,
                move |vault, ctx| {
                    vault.explain(ctx, |active| {
                        AccessRequest::parse(
                            active,
                            &principal,
                            &action,
                            field.as_deref(),
                            purpose.as_deref(),
                            crate::policy::RequestFacts {
                                granted: &consents,
                                withdrawn: &withdrawn,
                                ..Default::default()
                            },
                            reason.as_deref(),
                        )
                    })
                },
                |e| pb::ExplainDecisionResponse {
                    allowed: e.decision.allowed,
                    policies: e
                        .locations
                        .into_iter()
                        .map(|(id, pos)| policy_ref(id, pos))
                        .collect(),
                    errors: e.decision.errors,
                    policy_version: e.version,
                },
            )
            .await
    }
}
