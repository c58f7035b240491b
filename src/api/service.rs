//! `privault.v1.Vault`: each method authenticates, converts, runs the vault, and converts back.

use tonic::{Request, Response, Status};

use super::convert::{
    BatchCall, FieldsCall, PutFields, Shred, consent_message, consent_source, opt_out_signal,
    signal_message, subject_id,
};
use super::edge::Edge;
use super::pb;
use super::status::to_status;
use secrecy::SecretString;

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;

use crate::audit::Action;
use crate::domain::{ConsentSource, FieldName, Purpose, SubjectId};
use crate::vault::{
    ExtractCall, ExtractSubjects, MAX_EXTRACT_SUBJECTS, RevocationReason, SubjectExport,
};

/// Subjects per second one caller's extracts read, at most (and the burst: one full call).
const EXTRACT_SUBJECTS_PER_SEC: u32 = MAX_EXTRACT_SUBJECTS as u32;

type ExtractPace = governor::DefaultKeyedRateLimiter<String>;

/// The `privault.v1.Vault` service.
#[derive(Clone)]
pub struct VaultService {
    edge: Edge,
    // Paces each caller's extracts (GCRA, keyed by principal), so that a training pipeline cannot
    // sweep the vault faster than the rate the operators accepted.
    extract_pace: Arc<ExtractPace>,
}

impl std::fmt::Debug for VaultService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultService")
            .field("edge", &self.edge)
            .finish_non_exhaustive()
    }
}

impl VaultService {
    /// The service behind `edge`.
    pub fn new(edge: Edge) -> Self {
        let rate = NonZeroU32::new(EXTRACT_SUBJECTS_PER_SEC).unwrap_or(NonZeroU32::MIN);
        Self {
            edge,
            extract_pace: Arc::new(governor::RateLimiter::keyed(governor::Quota::per_second(
                rate,
            ))),
        }
    }
}

type ExtractStream = Pin<Box<dyn Stream<Item = Result<pb::ExtractResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::vault_server::Vault for VaultService {
    type ExtractStream = ExtractStream;

    async fn extract(
        &self,
        request: Request<pb::ExtractRequest>,
    ) -> Result<Response<ExtractStream>, Status> {
        let ctx = self.edge.context(&request, Action::Extract).await?;
        let call = self
            .edge
            .admit(&ctx, extract_call(request.into_inner()))
            .await?;
        let subjects = match &call.subjects {
            ExtractSubjects::Listed(ids) => ids.len(),
            ExtractSubjects::Every { .. } => match call.limit {
                0 => MAX_EXTRACT_SUBJECTS,
                n => n.min(MAX_EXTRACT_SUBJECTS),
            },
        };
        let n = u32::try_from(subjects.clamp(1, MAX_EXTRACT_SUBJECTS))
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MIN);
        // Within the burst by construction; a refusal would mean a bigger call than allowed,
        // which the vault refuses on its own.
        let _ = self
            .extract_pace
            .until_key_n_ready(&ctx.principal.to_string(), n)
            .await;
        let response = self
            .edge
            .run_queued_on_pool(ctx, move |vault, ctx| vault.extract(ctx, &call), |p| p)
            .await?;
        let metadata = response.metadata().clone();
        let page = response.into_inner();
        let mut messages: Vec<Result<pb::ExtractResponse, Status>> = page
            .rows
            .into_iter()
            .map(|row| {
                Ok(pb::ExtractResponse {
                    item: Some(pb::extract_response::Item::Row(pb::ExtractRow {
                        row_key: row.row_key,
                        results: row.fields.into_iter().map(pb::FieldResult::from).collect(),
                    })),
                })
            })
            .collect();
        messages.push(Ok(pb::ExtractResponse {
            item: Some(pb::extract_response::Item::Manifest(pb::ExtractManifest {
                extract_id: page.extract_id,
                manifest: page.manifest.to_json(),
                next_cursor: page.next_cursor.unwrap_or_default(),
                examined: u32::try_from(page.examined).unwrap_or(u32::MAX),
            })),
        }));
        let stream: ExtractStream = Box::pin(tokio_stream::iter(messages));
        let mut out = Response::new(stream);
        *out.metadata_mut() = metadata;
        Ok(out)
    }

    async fn extract_revocations(
        &self,
        request: Request<pb::ExtractRevocationsRequest>,
    ) -> Result<Response<pb::ExtractRevocationsResponse>, Status> {
        let ctx = self
            .edge
            .context(&request, Action::ExtractRevocations)
            .await?;
        let pb::ExtractRevocationsRequest { extract_id, since } = request.into_inner();
        let since = match since.as_str() {
            "" => Ok(0),
            text => crate::clock::parse_rfc3339(text)
                .ok_or_else(|| Status::invalid_argument("since is not an RFC 3339 time")),
        };
        let since = self.edge.admit(&ctx, since).await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.extract_revocations(ctx, &extract_id, since),
                |revocations| pb::ExtractRevocationsResponse {
                    revocations: revocations
                        .into_iter()
                        .map(|r| pb::Revocation {
                            row_key: r.row_key,
                            reason: match r.reason {
                                RevocationReason::Shredded => pb::revocation::Reason::Shredded,
                                RevocationReason::Withdrawn => pb::revocation::Reason::Withdrawn,
                                RevocationReason::Signal => pb::revocation::Reason::Signal,
                            }
                            .into(),
                            time: crate::clock::rfc3339(r.time_ms),
                        })
                        .collect(),
                },
            )
            .await
    }

    async fn put_fields(
        &self,
        request: Request<pb::PutFieldsRequest>,
    ) -> Result<Response<pb::PutFieldsResponse>, Status> {
        let ctx = self.edge.context(&request, Action::Write).await?;
        let call = self
            .edge
            .admit(&ctx, PutFields::try_from(request.into_inner()))
            .await?;
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
        let ctx = self.edge.context(&request, Action::Read).await?;
        let call = self
            .edge
            .admit(&ctx, FieldsCall::try_from(request.into_inner()))
            .await?;
        self.edge
            .run_queued(
                ctx,
                move |vault, ctx| {
                    vault.get_deferred(ctx, &call.subject, &call.purpose, &call.fields)
                },
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
        let ctx = self.edge.context(&request, Action::Delete).await?;
        let call = self
            .edge
            .admit(&ctx, FieldsCall::try_from(request.into_inner()))
            .await?;
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
        let ctx = self.edge.context(&request, Action::Shred).await?;
        let call = self
            .edge
            .admit(&ctx, Shred::try_from(request.into_inner()))
            .await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.shred(ctx, &call.subject, &call.reason),
                |outcome| pb::ShredSubjectResponse {
                    existed: outcome.existed,
                    purged: outcome.purged,
                    audit_seq: outcome.audit_seq,
                    receipt_id: outcome.receipt.body.receipt_id.clone(),
                    receipt: outcome.receipt.to_json(),
                    kept: outcome
                        .kept
                        .iter()
                        .map(|(class, reason)| pb::KeptClass {
                            key_class: class.to_string(),
                            reason: reason.clone(),
                        })
                        .collect(),
                },
            )
            .await
    }

    async fn get_erasure_receipt(
        &self,
        request: Request<pb::GetErasureReceiptRequest>,
    ) -> Result<Response<pb::GetErasureReceiptResponse>, Status> {
        let ctx = self.edge.context(&request, Action::ReceiptGet).await?;
        let pb::GetErasureReceiptRequest { receipt_id } = request.into_inner();
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.get_erasure_receipt(ctx, &receipt_id),
                |receipt| pb::GetErasureReceiptResponse {
                    receipt: receipt.to_json(),
                },
            )
            .await
    }

    async fn set_consent(
        &self,
        request: Request<pb::SetConsentRequest>,
    ) -> Result<Response<pb::SetConsentResponse>, Status> {
        let ctx = self.edge.context(&request, Action::ConsentWrite).await?;
        let pb::SetConsentRequest {
            subject_id,
            purpose,
            granted,
            source,
        } = request.into_inner();
        let parsed = SubjectId::new(subject_id)
            .and_then(|s| Ok((s, Purpose::new(purpose)?)))
            .map_err(|e| Status::invalid_argument(e.0))
            .and_then(|(s, p)| Ok((s, p, consent_source(source)?)));
        let (subject, purpose, source) = self.edge.admit(&ctx, parsed).await?;
        let source = source.unwrap_or(ConsentSource::User);
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.set_consent(ctx, &subject, &purpose, granted, source),
                |recorded_at| pb::SetConsentResponse { recorded_at },
            )
            .await
    }

    async fn record_signal(
        &self,
        request: Request<pb::RecordSignalRequest>,
    ) -> Result<Response<pb::RecordSignalResponse>, Status> {
        let ctx = self.edge.context(&request, Action::RecordSignal).await?;
        let pb::RecordSignalRequest {
            subject_id: raw,
            signal,
            source,
        } = request.into_inner();
        let parsed =
            subject_id(raw).and_then(|s| Ok((s, opt_out_signal(signal)?, consent_source(source)?)));
        let (subject, signal, source) = self.edge.admit(&ctx, parsed).await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.record_signal(ctx, &subject, signal, source),
                |(recorded_at, withdrawn)| pb::RecordSignalResponse {
                    recorded_at,
                    withdrawn: withdrawn.iter().map(ToString::to_string).collect(),
                },
            )
            .await
    }

    async fn get_consents(
        &self,
        request: Request<pb::GetConsentsRequest>,
    ) -> Result<Response<pb::GetConsentsResponse>, Status> {
        let ctx = self.edge.context(&request, Action::ConsentRead).await?;
        let pb::GetConsentsRequest { subject_id: raw } = request.into_inner();
        let subject = self.edge.admit(&ctx, subject_id(raw)).await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.get_consents(ctx, &subject),
                |(consents, signals)| pb::GetConsentsResponse {
                    consents: consents.into_iter().map(consent_message).collect(),
                    signals: signals.into_iter().map(signal_message).collect(),
                },
            )
            .await
    }

    async fn place_hold(
        &self,
        request: Request<pb::PlaceHoldRequest>,
    ) -> Result<Response<pb::PlaceHoldResponse>, Status> {
        let ctx = self.edge.context(&request, Action::HoldPlace).await?;
        let pb::PlaceHoldRequest {
            subject_id: raw,
            key_class,
            reason,
            until,
        } = request.into_inner();
        let parsed = subject_id(raw).and_then(|s| {
            let until = match until.as_str() {
                "" => None,
                text => Some(
                    crate::clock::parse_rfc3339(text)
                        .ok_or_else(|| Status::invalid_argument("until is not an RFC 3339 time"))?,
                ),
            };
            Ok((s, hold_scope(&key_class)?, until))
        });
        let (subject, scope, until) = self.edge.admit(&ctx, parsed).await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.place_hold(ctx, &subject, &scope, &reason, until),
                |audit_seq| pb::PlaceHoldResponse { audit_seq },
            )
            .await
    }

    async fn release_hold(
        &self,
        request: Request<pb::ReleaseHoldRequest>,
    ) -> Result<Response<pb::ReleaseHoldResponse>, Status> {
        let ctx = self.edge.context(&request, Action::HoldRelease).await?;
        let pb::ReleaseHoldRequest {
            subject_id: raw,
            key_class,
            reason,
        } = request.into_inner();
        let parsed = subject_id(raw).and_then(|s| Ok((s, hold_scope(&key_class)?)));
        let (subject, scope) = self.edge.admit(&ctx, parsed).await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.release_hold(ctx, &subject, &scope, &reason),
                |released| pb::ReleaseHoldResponse {
                    erased: released.erased.iter().map(ToString::to_string).collect(),
                    audit_seq: released.audit_seq,
                },
            )
            .await
    }

    async fn export_subject(
        &self,
        request: Request<pb::ExportSubjectRequest>,
    ) -> Result<Response<pb::ExportSubjectResponse>, Status> {
        let ctx = self.edge.context(&request, Action::Export).await?;
        let pb::ExportSubjectRequest { subject_id: raw } = request.into_inner();
        let subject = self.edge.admit(&ctx, subject_id(raw)).await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.export(ctx, &subject),
                export_message,
            )
            .await
    }

    async fn batch_get_fields(
        &self,
        request: Request<pb::BatchGetFieldsRequest>,
    ) -> Result<Response<pb::BatchGetFieldsResponse>, Status> {
        let ctx = self.edge.context(&request, Action::Read).await?;
        let call = self
            .edge
            .admit(&ctx, BatchCall::try_from(request.into_inner()))
            .await?;
        let BatchCall {
            subject_ids,
            subjects,
            purpose,
            fields,
        } = call;
        let request_id = ctx.request_id.clone();
        self.edge
            .run_queued(
                ctx,
                move |vault, ctx| vault.batch_get_deferred(ctx, &subjects, &purpose, &fields),
                move |per_subject| pb::BatchGetFieldsResponse {
                    subjects: subject_ids
                        .into_iter()
                        .zip(per_subject)
                        .map(|(subject_id, result)| match result {
                            Ok(reads) => pb::SubjectResult {
                                subject_id,
                                results: reads.into_iter().map(pb::FieldResult::from).collect(),
                                error: String::new(),
                            },
                            Err(e) => pb::SubjectResult {
                                subject_id,
                                results: Vec::new(),
                                error: to_status(e, &request_id).message().to_owned(),
                            },
                        })
                        .collect(),
                },
            )
            .await
    }

    async fn find_subject(
        &self,
        request: Request<pb::FindSubjectRequest>,
    ) -> Result<Response<pb::FindSubjectResponse>, Status> {
        let ctx = self.edge.context(&request, Action::Find).await?;
        let pb::FindSubjectRequest {
            field,
            value,
            purpose,
        } = request.into_inner();
        let parsed = FieldName::new(field)
            .and_then(|f| Ok((f, Purpose::new(purpose)?)))
            .map_err(|e| Status::invalid_argument(e.0));
        let (field, purpose) = self.edge.admit(&ctx, parsed).await?;
        let value = SecretString::from(value);
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.find(ctx, &field, &value, &purpose),
                |subjects| pb::FindSubjectResponse {
                    subject_ids: subjects
                        .into_iter()
                        .map(|s| s.expose().to_owned())
                        .collect(),
                },
            )
            .await
    }
}

/// An extract call from the wire: a purpose, its fields, and either subject ids or
/// `every_subject` (with its cursor).
fn extract_call(request: pb::ExtractRequest) -> Result<ExtractCall, Status> {
    let pb::ExtractRequest {
        extract_id,
        purpose,
        fields,
        subject_ids,
        every_subject,
        cursor,
        limit,
    } = request;
    let invalid = |e: crate::domain::InvalidInput| Status::invalid_argument(e.0);
    let subjects = match (every_subject, subject_ids.is_empty()) {
        (true, true) => ExtractSubjects::Every {
            cursor: (!cursor.is_empty()).then_some(cursor),
        },
        (false, false) if cursor.is_empty() => ExtractSubjects::Listed(
            subject_ids
                .into_iter()
                .map(SubjectId::new)
                .collect::<Result<_, _>>()
                .map_err(invalid)?,
        ),
        (false, false) => {
            return Err(Status::invalid_argument(
                "a cursor continues an every_subject extract; listed subjects take none",
            ));
        }
        _ => {
            return Err(Status::invalid_argument(
                "name subject_ids, or set every_subject (not both)",
            ));
        }
    };
    Ok(ExtractCall {
        extract_id: (!extract_id.is_empty()).then_some(extract_id),
        purpose: Purpose::new(purpose).map_err(invalid)?,
        fields: fields
            .into_iter()
            .map(FieldName::new)
            .collect::<Result<_, _>>()
            .map_err(invalid)?,
        subjects,
        limit: limit as usize,
    })
}

/// A hold's scope from the wire: a key class, or empty / `all` for every class.
fn hold_scope(raw: &str) -> Result<crate::hold::HoldScope, Status> {
    crate::hold::HoldScope::parse(raw).map_err(|e| Status::invalid_argument(e.0))
}

fn export_message(export: SubjectExport) -> pb::ExportSubjectResponse {
    pb::ExportSubjectResponse {
        fields: export
            .fields
            .into_iter()
            .map(|f| pb::ExportedField {
                field: f.field.to_string(),
                value: f.value.as_str().to_owned(),
                written: f.written,
                expires: f.expires.unwrap_or_default(),
                views: f
                    .views
                    .into_iter()
                    .map(|(view, value)| pb::DerivedView {
                        view: view.to_string(),
                        value,
                    })
                    .collect(),
            })
            .collect(),
        consents: export.consents.into_iter().map(consent_message).collect(),
        signals: export.signals.into_iter().map(signal_message).collect(),
        holds: export
            .holds
            .into_iter()
            .map(|h| pb::LegalHold {
                key_class: h.scope.name().to_owned(),
                reason: h.hold.reason,
                placed_at: crate::clock::rfc3339(h.hold.placed_ms),
                until: h
                    .hold
                    .until_ms
                    .map(crate::clock::rfc3339)
                    .unwrap_or_default(),
            })
            .collect(),
        erased: export.erased,
        extracts: export
            .extracts
            .into_iter()
            .map(|e| pb::ExtractMembership {
                extract_id: e.extract_id,
                principal: e.principal,
                purpose: e.purpose,
                created_at: crate::clock::rfc3339(e.created_ms),
            })
            .collect(),
        history: export
            .history
            .into_iter()
            .map(|h| pb::AccessEvent {
                seq: h.seq,
                time: h.time,
                principal: h.principal,
                action: h.action.name().to_owned(),
                purpose: h.purpose.unwrap_or_default(),
                fields: h.fields,
                outcome: h.outcome.name().to_owned(),
            })
            .collect(),
        exported_at: export.exported_at,
        history_next_seq: export.history_next_seq.unwrap_or(0),
    }
}
