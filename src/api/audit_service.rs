//! `privault.v1.Audit`: queries, the signed head and chain verification, for auditors.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::edge::Edge;
use super::pb;
use crate::audit::{Action, AuditFilter, AuditRecord, DetailView, MAX_PAGE, Outcome};
use crate::clock::{parse_rfc3339, rfc3339};
use crate::vault::SignedHead;

/// The `privault.v1.Audit` service.
#[derive(Debug, Clone)]
pub struct AuditService {
    edge: Edge,
    /// Turns true when the server begins to shut down: every tail ends.
    stopping: tokio::sync::watch::Receiver<bool>,
}

impl AuditService {
    /// The service behind `edge`; tails end when `stopping` turns true.
    pub fn new(edge: Edge, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        Self { edge, stopping }
    }
}

/// Records a tail sends per read of the log.
const TAIL_PAGE: usize = 256;
/// Messages a tail buffers for a slow reader before it waits.
const TAIL_BUFFER: usize = 64;

/// Follows the log for one tail: sends every durable record from `next` on, in order, then waits
/// for the head to move; ends when the reader goes away or the server stops.
async fn follow(
    vault: std::sync::Arc<crate::vault::Vault>,
    mut next: u64,
    mut head: tokio::sync::watch::Receiver<u64>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
    out: tokio::sync::mpsc::Sender<Result<pb::AuditRecord, Status>>,
) {
    loop {
        let through = *head.borrow_and_update();
        while next <= through {
            let v = std::sync::Arc::clone(&vault);
            let page =
                tokio::task::spawn_blocking(move || v.audit_tail_page(next, through, TAIL_PAGE))
                    .await;
            let records = match page {
                Ok(Ok(records)) if records.first().is_some_and(|r| r.seq == next) => records,
                Ok(Ok(_)) => {
                    // Below the oldest record kept (dropped by retention): say so, never skip.
                    let _ = out
                        .send(Err(Status::out_of_range(format!(
                            "record {next} is no longer in the live log: read it from the archive"
                        ))))
                        .await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "audit tail cannot read the log");
                    let _ = out
                        .send(Err(Status::data_loss("the audit log cannot be read")))
                        .await;
                    return;
                }
                Err(_) => return,
            };
            for r in records {
                next = r.seq + 1;
                if out.send(Ok(record(r))).await.is_err() {
                    return;
                }
            }
        }
        tokio::select! {
            changed = head.changed() => if changed.is_err() { return },
            _ = async { stopping.wait_for(|s| *s).await.is_ok() } => {
                let _ = out
                    .send(Err(Status::unavailable(format!(
                        "the vault is shutting down: resume from seq {next}"
                    ))))
                    .await;
                return;
            }
            () = out.closed() => return,
        }
    }
}

pub(super) fn record(r: AuditRecord) -> pb::AuditRecord {
    let e = r.event;
    pb::AuditRecord {
        seq: r.seq,
        time: rfc3339(r.time_ms),
        principal: e.principal,
        action: e.action.name().to_owned(),
        subject: e.subject.map(|p| p.to_string()).unwrap_or_default(),
        purpose: e.purpose.unwrap_or_default(),
        fields: e
            .fields
            .into_iter()
            .map(|f| pb::AuditFieldOutcome {
                field: f.field,
                outcome: f.outcome.name().to_owned(),
                policy_ids: f.policy_ids.to_vec(),
            })
            .collect(),
        outcome: e.outcome.name().to_owned(),
        request_id: e.request_id,
        policy_version: e.policy_version,
        peer: e.peer.unwrap_or_default(),
        consents: e.consents,
        withdrawn: e.withdrawn,
        detail: e
            .detail
            .as_ref()
            .map(DetailView::of)
            .map(|d| pb::AuditDetail {
                kind: d.kind,
                numbers: d.numbers,
                name: d.name.unwrap_or_default(),
            }),
        prev_hash: hex::encode(r.prev_hash),
        hash: hex::encode(r.hash),
    }
}

/// A vocabulary filter: empty is none, an unknown name is refused.
fn word<T>(text: String, what: &str, parse: fn(&str) -> Option<T>) -> Result<Option<T>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    parse(&text).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!("unknown {what} `{}`", text.escape_debug()))
    })
}

fn head(h: SignedHead) -> pb::SignedHead {
    pb::SignedHead {
        seq: h.seq,
        hash: h.hash,
        time: h.time,
        keyring_id: h.keyring_id,
        public_key: h.public_key,
        signature: h.signature,
    }
}

fn time(text: &str, name: &str) -> Result<Option<u64>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    parse_rfc3339(text).map(Some).ok_or_else(|| {
        Status::invalid_argument(format!("{name} is not RFC 3339 (2026-01-31T12:00:00Z)"))
    })
}

type QueryStream = Pin<Box<dyn Stream<Item = Result<pb::AuditQueryResponse, Status>> + Send>>;
type TailStream = Pin<Box<dyn Stream<Item = Result<pb::AuditRecord, Status>> + Send>>;

#[tonic::async_trait]
impl pb::audit_server::Audit for AuditService {
    type QueryStream = QueryStream;
    type TailStream = TailStream;

    async fn tail(
        &self,
        request: Request<pb::AuditTailRequest>,
    ) -> Result<Response<TailStream>, Status> {
        let ctx = self.edge.context(&request, Action::AuditTail).await?;
        let pb::AuditTailRequest { from_seq } = request.into_inner();
        let response = self
            .edge
            .run(
                ctx,
                move |vault, ctx| vault.audit_tail(ctx, from_seq),
                |t| t,
            )
            .await?;
        let metadata = response.metadata().clone();
        let (start, head) = response.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(TAIL_BUFFER);
        tokio::spawn(follow(
            self.edge.vault(),
            start,
            head,
            self.stopping.clone(),
            tx,
        ));
        let stream: TailStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        let mut out = Response::new(stream);
        *out.metadata_mut() = metadata;
        Ok(out)
    }

    async fn query(
        &self,
        request: Request<pb::AuditQueryRequest>,
    ) -> Result<Response<QueryStream>, Status> {
        let ctx = self.edge.context(&request, Action::AuditQuery).await?;
        let pb::AuditQueryRequest {
            subject_id,
            principal,
            purpose,
            action,
            outcome,
            from_time,
            to_time,
            from_seq,
            to_seq,
            page_size,
        } = request.into_inner();
        let subject = if subject_id.is_empty() {
            None
        } else {
            Some(
                self.edge
                    .admit(&ctx, super::convert::subject_id(subject_id))
                    .await?,
            )
        };
        let some = |s: String| (!s.is_empty()).then_some(s);
        let filter = AuditFilter {
            subject: None,
            principal: some(principal),
            purpose: some(purpose),
            action: word(action, "action", Action::from_name)?,
            outcome: word(outcome, "outcome", Outcome::from_name)?,
            from_ms: time(&from_time, "from_time")?,
            to_ms: time(&to_time, "to_time")?,
            from_seq,
            to_seq: (to_seq > 0).then_some(to_seq),
            limit: if page_size == 0 {
                MAX_PAGE
            } else {
                page_size as usize
            },
        };
        let response = self
            .edge
            .run(
                ctx,
                move |vault, ctx| vault.audit_query(ctx, subject.as_ref(), filter),
                |page| page,
            )
            .await?;
        let metadata = response.metadata().clone();
        let (records, next) = response.into_inner();
        let mut messages: Vec<Result<pb::AuditQueryResponse, Status>> = records
            .into_iter()
            .map(|r| {
                Ok(pb::AuditQueryResponse {
                    record: Some(record(r)),
                    next_seq: 0,
                })
            })
            .collect();
        messages.push(Ok(pb::AuditQueryResponse {
            record: None,
            next_seq: next.unwrap_or(0),
        }));
        let stream: QueryStream = Box::pin(tokio_stream::iter(messages));
        let mut out = Response::new(stream);
        *out.metadata_mut() = metadata;
        Ok(out)
    }

    async fn head(
        &self,
        request: Request<pb::AuditHeadRequest>,
    ) -> Result<Response<pb::SignedHead>, Status> {
        let ctx = self.edge.context(&request, Action::AuditHead).await?;
        let pb::AuditHeadRequest {} = request.into_inner();
        self.edge
            .run(ctx, |vault, ctx| vault.audit_head(ctx), head)
            .await
    }

    async fn verify(
        &self,
        request: Request<pb::AuditVerifyRequest>,
    ) -> Result<Response<pb::AuditVerifyResponse>, Status> {
        let ctx = self.edge.context(&request, Action::AuditVerify).await?;
        let pb::AuditVerifyRequest { from_seq, to_seq } = request.into_inner();
        let to = (to_seq > 0).then_some(to_seq);
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.audit_verify(ctx, from_seq.max(1), to),
                |result| match result {
                    Ok((seq, hash)) => pb::AuditVerifyResponse {
                        ok: true,
                        last_seq: seq,
                        last_hash: hash,
                        ..Default::default()
                    },
                    Err(e) => pb::AuditVerifyResponse {
                        ok: false,
                        bad_seq: e.seq,
                        reason: e.reason,
                        ..Default::default()
                    },
                },
            )
            .await
    }
}
