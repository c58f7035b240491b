//! What every service method does around the vault call: authenticate, admit the call under the
//! peer's concurrency limit, assign a request id, run the vault (reads in memory on the runtime,
//! the rest on the blocking pool), map errors, and return the request id in `x-request-id`.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use super::identity::Identity;
use super::peers::{PeerLimiter, PeerPermit};
use super::status::to_status;
use crate::audit::Action;
use crate::crypto::random_bytes;
use crate::store::memory_only;
use crate::vault::{CallContext, Queued, Vault, VaultError};

/// The response header that carries the request id (also in the audit record).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The vault, how callers are authenticated and how many calls a peer may have in flight; shared
/// by every service.
#[derive(Debug, Clone)]
pub struct Edge {
    vault: Arc<Vault>,
    identity: Identity,
    peers: Arc<PeerLimiter>,
}

/// An authenticated, admitted call: its context, and its slot under the peer's limit.
#[derive(Debug)]
pub struct Authorized {
    call: CallContext,
    action: Action,
    _permit: Option<PeerPermit>,
}

impl std::ops::Deref for Authorized {
    type Target = CallContext;
    fn deref(&self) -> &CallContext {
        &self.call
    }
}

impl Edge {
    /// Calls into `vault`, authenticating callers with `identity`, admitting at most
    /// `max_per_peer` concurrent calls per peer address.
    pub fn new(vault: Arc<Vault>, identity: Identity, max_per_peer: usize) -> Self {
        Self {
            vault,
            identity,
            peers: PeerLimiter::new(max_per_peer),
        }
    }

    /// The vault behind the edge, for work that outlives one call's handler (a tail's follower).
    pub fn vault(&self) -> Arc<Vault> {
        Arc::clone(&self.vault)
    }

    /// The identity mode.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The call context of `request`: its authenticated principal and a fresh request id. A caller
    /// that fails to authenticate is refused, and the refusal of `action` is audited.
    pub async fn context<T>(
        &self,
        request: &Request<T>,
        action: Action,
    ) -> Result<Authorized, Status> {
        let permit = match request.remote_addr() {
            Some(addr) => Some(self.peers.admit(addr.ip()).ok_or_else(|| {
                Status::resource_exhausted("too many concurrent calls from this address")
            })?),
            None => None,
        };
        let mut id = [0u8; 8];
        random_bytes(&mut id).map_err(|_| Status::unavailable("random number generator failed"))?;
        let request_id = hex::encode(id);
        // The call's span (api/observe.rs) names it in every log line of the call.
        tracing::Span::current().record("request_id", request_id.as_str());
        let peer = request.remote_addr().map(|a| a.to_string());
        match self.identity.principal(request).await {
            Ok(principal) => Ok(Authorized {
                call: CallContext {
                    principal,
                    request_id,
                    peer,
                },
                action,
                _permit: permit,
            }),
            Err(status) => {
                let vault = Arc::clone(&self.vault);
                let audited = tokio::task::spawn_blocking(move || {
                    vault.record_unauthenticated(action, peer, &request_id)
                })
                .await;
                if !matches!(audited, Ok(Ok(_))) {
                    tracing::error!("could not audit an unauthenticated call");
                }
                Err(status)
            }
        }
    }

    /// Passes a converted request through; a request that failed to convert (bad syntax) is
    /// refused with its status, and the refusal is audited like every other call.
    pub async fn admit<T>(
        &self,
        ctx: &Authorized,
        converted: Result<T, Status>,
    ) -> Result<T, Status> {
        let status = match converted {
            Ok(call) => return Ok(call),
            Err(status) => status,
        };
        let vault = Arc::clone(&self.vault);
        let (call, action) = (ctx.call.clone(), ctx.action);
        let audited =
            tokio::task::spawn_blocking(move || vault.record_refused(&call, action)).await;
        if !matches!(audited, Ok(Ok(_))) {
            tracing::error!(
                request_id = ctx.request_id,
                "could not audit a refused call"
            );
        }
        Err(status)
    }

    /// Runs a read whose audit records are queued rather than awaited: first on the async
    /// runtime itself with reads limited to memory (the common case costs no thread hand-off),
    /// and only when that needs the disk again on the blocking pool. Then awaits the records'
    /// durability on the runtime: values leave only once every record is durable (fail closed:
    /// UNAVAILABLE and nothing else otherwise).
    pub async fn run_queued<T, M>(
        &self,
        ctx: Authorized,
        op: impl Fn(&Vault, &CallContext) -> Queued<T> + Send + Sync + 'static,
        to_message: impl FnOnce(T) -> M,
    ) -> Result<Response<M>, Status>
    where
        T: Send + 'static,
    {
        let Authorized { call, _permit, .. } = ctx;
        let request_id = call.request_id.clone();
        // A backend with nothing in memory (PostgreSQL) goes to the pool at once.
        let queued = if !self.vault.reads_in_memory() {
            self.on_pool(call, op).await?
        } else {
            match memory_only(|| op(&self.vault, &call)) {
                Queued::NeedsDisk => self.on_pool(call, op).await?,
                ready => ready,
            }
        };
        finish_queued(queued, &request_id, to_message).await
    }

    /// Like [`Edge::run_queued`] for a read too large for the runtime (an extract): runs on the
    /// blocking pool straight away, then awaits every record's durability before anything leaves.
    pub async fn run_queued_on_pool<T, M>(
        &self,
        ctx: Authorized,
        op: impl FnOnce(&Vault, &CallContext) -> Queued<T> + Send + 'static,
        to_message: impl FnOnce(T) -> M,
    ) -> Result<Response<M>, Status>
    where
        T: Send + 'static,
    {
        let Authorized { call, _permit, .. } = ctx;
        let request_id = call.request_id.clone();
        let queued = self.on_pool(call, op).await?;
        finish_queued(queued, &request_id, to_message).await
    }

    /// Runs `op` with `call` on the blocking pool; a task that panicked is INTERNAL.
    async fn on_pool<T: Send + 'static>(
        &self,
        call: CallContext,
        op: impl FnOnce(&Vault, &CallContext) -> T + Send + 'static,
    ) -> Result<T, Status> {
        let vault = Arc::clone(&self.vault);
        let request_id = call.request_id.clone();
        // Other nodes' changes first (PostgreSQL): no cache may answer what one of them forbids.
        tokio::task::spawn_blocking(move || vault.catch_up().map(|()| op(&vault, &call)))
            .await
            .map_err(|e| {
                tracing::error!(request_id, error = %e, "vault task failed");
                Status::internal(format!("internal error (request id {request_id})"))
            })?
            .map_err(|e| to_status(e, &request_id))
    }

    /// Runs `op` on the blocking pool (RocksDB and fsync must not stall the runtime).
    pub async fn run<T, M>(
        &self,
        ctx: Authorized,
        op: impl FnOnce(&Vault, &CallContext) -> Result<T, VaultError> + Send + 'static,
        to_message: impl FnOnce(T) -> M,
    ) -> Result<Response<M>, Status>
    where
        T: Send + 'static,
    {
        let Authorized { call, _permit, .. } = ctx;
        let request_id = call.request_id.clone();
        let result = self.on_pool(call, op).await?;
        let mut response =
            Response::new(to_message(result.map_err(|e| to_status(e, &request_id))?));
        insert_request_id(&mut response, &request_id);
        Ok(response)
    }
}

/// Awaits every record of a queued read, then converts its result: values only when all are
/// durable.
async fn finish_queued<T, M>(
    queued: Queued<T>,
    request_id: &str,
    to_message: impl FnOnce(T) -> M,
) -> Result<Response<M>, Status> {
    let Queued::Ready { result, records } = queued else {
        return Err(to_status(VaultError::NeedsDisk, request_id));
    };
    let mut durable = true;
    for record in records {
        if let Err(e) = record.durable().await {
            tracing::error!(request_id, error = %e, "audit commit failed; failing closed");
            durable = false;
        }
    }
    let value = match result {
        Ok(_) if !durable => Err(VaultError::Unavailable(
            "the audit log cannot be written".into(),
        )),
        other => other,
    };
    let mut response = Response::new(to_message(value.map_err(|e| to_status(e, request_id))?));
    insert_request_id(&mut response, request_id);
    Ok(response)
}

fn insert_request_id<M>(response: &mut Response<M>, request_id: &str) {
    if let Ok(value) = MetadataValue::try_from(request_id) {
        response.metadata_mut().insert(REQUEST_ID_HEADER, value);
    }
}
