//! `privault.v1.KeyAdmin`: the key lifecycle over gRPC; the roll's progress is streamed while the
//! roll runs on the blocking pool.

use std::pin::Pin;

use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert::subject_id;
use super::edge::Edge;
use super::pb;
use crate::audit::Action;
use crate::vault::RollProgress;

/// The `privault.v1.KeyAdmin` service.
#[derive(Debug, Clone)]
pub struct KeyService {
    edge: Edge,
}

impl KeyService {
    /// The service behind `edge`.
    pub fn new(edge: Edge) -> Self {
        Self { edge }
    }
}

fn progress(p: &RollProgress) -> pb::RollEpochProgress {
    pb::RollEpochProgress {
        epoch: p.epoch,
        rewrapped: p.rewrapped,
        done: p.done,
        destroyed_epochs: p.destroyed.clone(),
        examined: p.examined,
        total: p.total,
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::RollEpochProgress, Status>> + Send>>;

#[tonic::async_trait]
impl pb::key_admin_server::KeyAdmin for KeyService {
    type RollEpochStream = ProgressStream;

    async fn roll_epoch(
        &self,
        request: Request<pb::RollEpochRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let ctx = self.edge.context(&request, Action::KeyRollEpoch).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let edge = self.edge.clone();
        let sender = tx.clone();
        tokio::spawn(async move {
            let result = edge
                .run(
                    ctx,
                    move |vault, ctx| {
                        vault.roll_epoch(ctx, |p| {
                            // A client gone mid-roll does not stop it: it runs to the end.
                            let _ = sender.blocking_send(Ok(progress(p)));
                        })
                    },
                    |_| (),
                )
                .await;
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn rotate_subject_key(
        &self,
        request: Request<pb::RotateSubjectKeyRequest>,
    ) -> Result<Response<pb::RotateSubjectKeyResponse>, Status> {
        let ctx = self.edge.context(&request, Action::KeyRotateDek).await?;
        let pb::RotateSubjectKeyRequest { subject_id: raw } = request.into_inner();
        let subject = self.edge.admit(&ctx, subject_id(raw)).await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.rotate_subject_keys(ctx, &subject),
                |(classes, fields)| pb::RotateSubjectKeyResponse {
                    classes_rotated: u32::try_from(classes).unwrap_or(u32::MAX),
                    fields_resealed: u32::try_from(fields).unwrap_or(u32::MAX),
                },
            )
            .await
    }

    async fn add_canary(
        &self,
        request: Request<pb::AddCanaryRequest>,
    ) -> Result<Response<pb::AddCanaryResponse>, Status> {
        let ctx = self.edge.context(&request, Action::CanaryAdd).await?;
        let pb::AddCanaryRequest { subject_id: raw } = request.into_inner();
        let subject = self.edge.admit(&ctx, subject_id(raw)).await?;
        self.edge
            .run(
                ctx,
                move |vault, ctx| vault.add_canary(ctx, &subject),
                |()| pb::AddCanaryResponse {},
            )
            .await
    }

    async fn key_status(
        &self,
        request: Request<pb::KeyStatusRequest>,
    ) -> Result<Response<pb::KeyStatusResponse>, Status> {
        let ctx = self.edge.context(&request, Action::KeyStatus).await?;
        self.edge
            .run(
                ctx,
                |vault, ctx| vault.key_status(ctx),
                |(epochs, current)| pb::KeyStatusResponse {
                    current_epoch: current,
                    epochs,
                },
            )
            .await
    }
}
