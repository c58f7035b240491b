//! `privault.v1.Vault`: each method authenticates, converts, runs the vault, and converts back.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert::{FieldsCall, PutFields, Shred};
use super::edge::Edge;
use super::identity::Identity;
use super::pb;
use crate::domain::{Purpose, SubjectId};
use crate::vault::Vault;

/// The `privault.v1.Vault` service.
#[derive(Debug, Clone)]
pub struct VaultService {
    edge: Edge,
}

impl VaultService {
    /// A service over `vault` authenticating callers with `identity`.
    pub fn new(vault: Arc<Vault>, identity: Identity) -> Self {
        Self {
            edge: Edge::new(vault, identity),
        }
    }
}

#[tonic::async_trait]
impl pb::vault_server::Vault for VaultService {
    async fn put_fields(
        &self,
        request: Request<pb::PutFieldsRequest>,
    ) -> Result<Response<pb::PutFieldsResponse>, Status> {
        let ctx = self.edge.context(&request, "write").await?;
        let call = PutFields::try_from(request.into_inner())?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.put(ctx, &call.subject, &call.purpose, call.fields),
                |written| pb::PutFieldsResponse {
                    written: written.iter().map(ToString::to_string).collect(),
                },
            )
            .await
    }

    async fn get_fields(
        &self,
        request: Request<pb::GetFieldsRequest>,
    ) -> Result<Response<pb::GetFieldsResponse>, Status> {
        let ctx = self.edge.context(&request, "read").await?;
        let call = FieldsCall::try_from(request.into_inner())?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.get(ctx, &call.subject, &call.purpose, &call.fields),
                |reads| pb::GetFieldsResponse {
                    results: reads.into_iter().map(pb::FieldResult::from).collect(),
                },
            )
            .await
    }

    async fn delete_fields(
        &self,
        request: Request<pb::DeleteFieldsRequest>,
    ) -> Result<Response<pb::DeleteFieldsResponse>, Status> {
        let ctx = self.edge.context(&request, "delete").await?;
        let call = FieldsCall::try_from(request.into_inner())?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.delete(ctx, &call.subject, &call.purpose, &call.fields),
                |deleted| pb::DeleteFieldsResponse {
                    deleted: deleted.iter().map(ToString::to_string).collect(),
                },
            )
            .await
    }

    async fn shred_subject(
        &self,
        request: Request<pb::ShredSubjectRequest>,
    ) -> Result<Response<pb::ShredSubjectResponse>, Status> {
        let ctx = self.edge.context(&request, "shred").await?;
        let call = Shred::try_from(request.into_inner())?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.shred(ctx, &call.subject, &call.reason),
                |outcome| pb::ShredSubjectResponse {
                    existed: outcome.existed,
                    purged: outcome.purged,
                    audit_seq: outcome.audit_seq,
                },
            )
            .await
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::SetConsentResponse>, Status> {
        let ctx = self.edge.context(&request, "consent_write").await?;
        let pb::SetConsentRequest {
            subject_id,
            purpose,
            granted,
        } = request.into_inner();
        let subject = SubjectId::new(subject_id).map_err(|e| Status::invalid_argument(e.0))?;
        let purpose = Purpose::new(purpose).map_err(|e| Status::invalid_argument(e.0))?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.set_consent(ctx, &subject, &purpose, granted),
                |recorded_at| pb::SetConsentResponse { recorded_at },
            )
            .await
    }

    async fn get_consents(
        &self,
        request: Request<pb::GetConsentsRequest>,
    ) -> Result<Response<pb::GetConsentsResponse>, Status> {
        let ctx = self.edge.context(&request, "consent_read").await?;
        let pb::GetConsentsRequest { subject_id } = request.into_inner();
        let subject = SubjectId::new(subject_id).map_err(|e| Status::invalid_argument(e.0))?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.get_consents(ctx, &subject),
                |consents| pb::GetConsentsResponse {
                    consents: consents
                        .into_iter()
                        .map(|c| pb::Consent {
                            purpose: c.purpose.to_string(),
                            granted: c.granted,
                            time: c.time,
                            recorded_by: c.recorded_by,
                        })
                        .collect(),
                },
            )
            .await
    }
}
