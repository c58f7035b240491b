//! `privault.v1.Backup`: a backup cut by the vault (authorized and audited there) and streamed to
//! the caller from its staging directory, file after file in 1 MiB chunks, on the blocking pool;
//! the staging directory is removed when the stream ends or the caller goes.

use std::io::Read;
use std::pin::Pin;

use tokio::sync::mpsc::Sender;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::edge::Edge;
use super::pb;
use crate::audit::Action;
use crate::backup::Manifest;
use crate::vault::StagedBackup;

const CHUNK_BYTES: usize = 1 << 20;

/// The `privault.v1.Backup` service.
#[derive(Debug, Clone)]
pub struct BackupService {
    edge: Edge,
}

impl BackupService {
    /// The service behind `edge`.
    pub fn new(edge: Edge) -> Self {
        Self { edge }
    }
}

/// The manifest as sent.
pub fn manifest_message(m: &Manifest) -> pb::BackupManifest {
    pb::BackupManifest {
        created: m.created.clone(),
        keyring_id: m.keyring_id.clone(),
        kek_epochs: m.kek_epochs.clone(),
        data_format: m.data_format,
        audit_head_seq: m.audit_head_seq,
        audit_head_hash: m.audit_head_hash.clone(),
        files: m
            .files
            .iter()
            .map(|f| pb::BackupFile {
                path: f.path.clone(),
                bytes: f.bytes,
                sha256: f.sha256.clone(),
            })
            .collect(),
    }
}

/// The manifest as received.
pub fn manifest_from_message(m: pb::BackupManifest) -> Manifest {
    Manifest {
        format: crate::backup::MANIFEST_FORMAT,
        created: m.created,
        keyring_id: m.keyring_id,
        kek_epochs: m.kek_epochs,
        data_format: m.data_format,
        audit_head_seq: m.audit_head_seq,
        audit_head_hash: m.audit_head_hash,
        files: m
            .files
            .into_iter()
            .map(|f| crate::backup::BackupFile {
                path: f.path,
                bytes: f.bytes,
                sha256: f.sha256,
            })
            .collect(),
    }
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

fn chunk(part: pb::backup_chunk::Part) -> Result<pb::BackupChunk, Status> {
    Ok(pb::BackupChunk { part: Some(part) })
}

/// The caller went away: nothing more to send.
struct Gone;

/// Sends the staged backup; returns when it is sent, the caller is gone or a file fails.
fn send(staged: &StagedBackup, tx: &Sender<Result<pb::BackupChunk, Status>>) {
    match send_files(staged, tx) {
        Ok(Ok(())) | Err(Gone) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a staged backup file cannot be read");
            let _ = tx.blocking_send(Err(Status::unavailable(
                "a staged backup file cannot be read",
            )));
        }
    }
}

fn send_files(
    staged: &StagedBackup,
    tx: &Sender<Result<pb::BackupChunk, Status>>,
) -> Result<std::io::Result<()>, Gone> {
    let put = |part| tx.blocking_send(chunk(part)).map_err(|_| Gone);
    put(pb::backup_chunk::Part::Manifest(manifest_message(
        &staged.manifest,
    )))?;
    let dir = staged.dir();
    let mut buf = vec![0u8; CHUNK_BYTES];
    for file in &staged.manifest.files {
        let mut input = match std::fs::File::open(dir.join(&file.path)) {
            Ok(input) => input,
            Err(e) => return Ok(Err(e)),
        };
        let mut offset = 0u64;
        loop {
            let n = match input.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => return Ok(Err(e)),
            };
            put(pb::backup_chunk::Part::Chunk(pb::FileChunk {
                path: file.path.clone(),
                offset,
                data: buf[..n].to_vec(),
            }))?;
            offset += n as u64;
        }
    }
    Ok(Ok(()))
}

#[tonic::async_trait]
impl pb::backup_server::Backup for BackupService {
    type CreateBackupStream = ChunkStream;

    async fn create_backup(
        &self,
        request: Request<pb::CreateBackupRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let ctx = self.edge.context(&request, Action::Backup).await?;
        let staged = self
            .edge
            .run(ctx, |vault, ctx| vault.backup(ctx), |staged| staged)
            .await?;
        let (metadata, staged, extensions) = staged.into_parts();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            send(&staged, &tx);
            drop(staged);
        });
        Ok(Response::from_parts(
            metadata,
            Box::pin(ReceiverStream::new(rx)),
            extensions,
        ))
    }
}
