//! `privault.v1.Vault`: each method authenticates, converts, runs the vault on the blocking pool,
//! and converts back. The request id goes back in the `x-request-id` response header.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::convert::{FieldsCall, PutFields, Shred};
use super::identity::Identity;
use super::pb;
use super::status::to_status;
use crate::crypto::random_bytes;
use crate::vault::{CallContext, Vault, VaultError};

/// The response header that carries the request id (also in the audit record).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The `privault.v1.Vault` service.
#[derive(Debug, Clone)]
pub struct VaultService {
    vault: Arc<Vault>,
    identity: Identity,
}

impl VaultService {
    /// A service over `vault` authenticating callers with `identity`.
    pub fn new(vault: Arc<Vault>, identity: Identity) -> Self {
        Self { vault, identity }
    }

    fn context<T>(&self, request: &Request<T>) -> Result<CallContext, Status> {
        let principal = self.identity.principal(request)?;
        let mut id = [0u8; 8];
        random_bytes(&mut id).map_err(|_| Status::unavailable("random number generator failed"))?;
        Ok(CallContext {
            principal,
            request_id: hex::encode(id),
        })
    }

    /// Runs `op` on the blocking pool (RocksDB and fsync must not stall the runtime).
    async fn run<T, M>(
        &self,
        ctx: CallContext,
        op: impl FnOnce(&Vault, &CallContext) -> Result<T, VaultError> + Send + 'static,
        to_message: impl FnOnce(T) -> M,
    ) -> Result<Response<M>, Status>
    where
        T: Send + 'static,
    {
        let vault = Arc::clone(&self.vault);
        let request_id = ctx.request_id.clone();
        let result = tokio::task::spawn_blocking(move || op(&vault, &ctx))
            .await
            .map_err(|e| {
                tracing::error!(request_id, error = %e, "vault task failed");
                Status::internal(format!("internal error (request id {request_id})"))
            })?;
        let mut response =
            Response::new(to_message(result.map_err(|e| to_status(e, &request_id))?));
        if let Ok(value) = MetadataValue::try_from(request_id.as_str()) {
            response.metadata_mut().insert(REQUEST_ID_HEADER, value);
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl pb::vault_server::Vault for VaultService {
    async fn put_fields(
        &self,
        request: Request<pb::PutFieldsRequest>,
    ) -> Result<Response<pb::PutFieldsResponse>, Status> {
        let ctx = self.context(&request)?;
        let call = PutFields::try_from(request.into_inner())?;
        self.run(
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
        let ctx = self.context(&request)?;
        let call = FieldsCall::try_from(request.into_inner())?;
        self.run(
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
        let ctx = self.context(&request)?;
        let call = FieldsCall::try_from(request.into_inner())?;
        self.run(
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
        let ctx = self.context(&request)?;
        let call = Shred::try_from(request.into_inner())?;
        self.run(
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
}
