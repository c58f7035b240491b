//! `privault backup create | verify | restore`: backups of `db/` and the sealed audit segments,
//! taken from a running vault (streamed through `privault.v1.Backup`) or from a stopped one, and
//! restored into a new data directory with the keyring and the live deletion ledger, which a
//! backup never holds.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use privault::api::pb::backup_client::BackupClient;
use privault::api::{manifest_from_message, pb};
use privault::backup::{self, Apart, Manifest, Receiver};
use privault::clock::SystemClock;
use privault::vault::VaultConfig;
use privault::vault::offline::backup_stopped;

use super::remote::Remote;

#[derive(Subcommand)]
pub enum BackupCommand {
    /// Take a backup of `db/` and the sealed audit segments into a new directory: from a running
    /// vault (the default: streamed over gRPC, authorized as `backup` and audited), or from a
    /// stopped one with --data-dir. The keyring and the deletion ledger are NOT in it: back them up
    /// apart (see docs/operations.md).
    Create {
        /// The new backup directory.
        #[arg(long)]
        to: PathBuf,
        /// Back up the stopped vault in this data directory instead of a running one.
        #[arg(long, conflicts_with_all = ["server", "caller"])]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        remote: Option<Remote>,
    },
    /// Check a backup: every file against the manifest's size and SHA-256, the copy opens, and its
    /// audit chain walks to the manifest's head. Exit 3 when it does not hold.
    Verify {
        /// The backup directory.
        dir: PathBuf,
    },
    /// Restore a backup into a new data directory, with the keyring and the deletion ledger from
    /// where they are kept apart. The restored vault replays the ledger at its first start: every
    /// customer shredded after the backup stays shredded.
    Restore {
        /// The backup directory.
        #[arg(long)]
        from: PathBuf,
        /// The new data directory (must hold no db/, audit/, keyring or ledger).
        #[arg(long)]
        data_dir: PathBuf,
        /// The vault's keyring (from its own backup): checked against the backup's pairing and KEK
        /// epochs, then copied in.
        #[arg(long)]
        keyring: PathBuf,
        /// The live deletion ledger (the newest copy, never one as old as the backup).
        #[arg(long, required_unless_present = "no_ledger")]
        ledger: Option<PathBuf>,
        /// Restore without a ledger: only when no customer was ever shredded after the backup.
        #[arg(long)]
        no_ledger: bool,
    },
}

fn summary(manifest: &Manifest) -> String {
    format!(
        "{} files, {} bytes, audit head {} ({}), keyring {}, KEK epochs {:?}",
        manifest.files.len(),
        manifest.total_bytes(),
        manifest.audit_head_seq,
        manifest.audit_head_hash,
        manifest.keyring_id,
        manifest.kek_epochs
    )
}

const APART: &str = "the keyring and the deletion ledger are not in a backup: keep copies of \
                     <data-dir>/keyring and <data-dir>/ledger apart from it";

pub fn run(command: BackupCommand) -> anyhow::Result<ExitCode> {
    match command {
        BackupCommand::Create {
            to,
            data_dir: Some(data_dir),
            ..
        } => {
            let config = VaultConfig::new(&data_dir, "");
            let manifest = backup_stopped(&config, &to, &SystemClock)
                .context("cannot back up the data directory (is the vault still running?)")?;
            report_taken(&to, &manifest)
        }
        BackupCommand::Create {
            to, remote: None, ..
        } => anyhow::bail!(
            "say which vault: --as (and --server) for a running one, --data-dir for a stopped one; {}",
            to.display()
        ),
        BackupCommand::Create {
            to,
            remote: Some(remote),
            ..
        } => super::keys::remotely(async move {
            let manifest = receive(&remote, &to).await?;
            report_taken(&to, &manifest)
        }),
        BackupCommand::Verify { dir } => {
            let total = backup::Manifest::read(&dir)
                .map(|m| m.total_bytes())
                .unwrap_or(0);
            let progress = super::progress::bytes(total, "verifying");
            let verified = backup::verify(&dir, |done| progress.set_position(done));
            progress.finish_and_clear();
            match verified {
                Ok(v) if super::json() => {
                    super::print_json(&v.manifest)?;
                    Ok(ExitCode::SUCCESS)
                }
                Ok(v) => {
                    println!("backup {} holds: {}", dir.display(), summary(&v.manifest));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ (backup::BackupError::Mismatch { .. } | backup::BackupError::Chain(_))) => {
                    eprintln!("backup {} does not verify: {e}", dir.display());
                    Ok(super::check_failed())
                }
                Err(e @ backup::BackupError::Manifest { .. }) => {
                    eprintln!("{e}");
                    Ok(super::check_failed())
                }
                Err(e) => Err(e.into()),
            }
        }
        BackupCommand::Restore {
            from,
            data_dir,
            keyring,
            ledger,
            no_ledger: _,
        } => {
            let total = backup::Manifest::read(&from)?.total_bytes();
            let progress = super::progress::bytes(total, "restoring");
            let apart = Apart {
                keyring: Some(keyring),
                ledger,
            };
            let restored = backup::restore(&from, &data_dir, &apart, |done| {
                progress.set_position(done);
            });
            progress.finish_and_clear();
            let restored = restored?;
            if super::json() {
                super::print_json(&restored.manifest)?;
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "restored into {}: {}",
                data_dir.display(),
                summary(&restored.manifest)
            );
            if restored.ledger {
                println!(
                    "the deletion ledger is replayed when the vault starts on {}",
                    data_dir.display()
                );
            } else {
                eprintln!(
                    "no deletion ledger: a customer shredded after {} would come back",
                    restored.manifest.created
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn report_taken(to: &Path, manifest: &Manifest) -> anyhow::Result<ExitCode> {
    if super::json() {
        super::print_json(manifest)?;
    } else {
        println!("backup in {}: {}", to.display(), summary(manifest));
    }
    eprintln!("{APART}");
    Ok(ExitCode::SUCCESS)
}

async fn receive(remote: &Remote, to: &Path) -> anyhow::Result<Manifest> {
    if to.exists() {
        return Err(backup::BackupError::Exists(to.to_owned()).into());
    }
    let mut client = BackupClient::new(remote.channel().await?).max_decoding_message_size(4 << 20);
    let mut stream = client
        .create_backup(remote.request(pb::CreateBackupRequest {})?)
        .await?
        .into_inner();
    let first = stream
        .message()
        .await?
        .context("the vault sent no backup manifest")?;
    let Some(pb::backup_chunk::Part::Manifest(manifest)) = first.part else {
        anyhow::bail!("the vault's backup stream did not start with its manifest");
    };
    let mut receiver = Receiver::new(to, manifest_from_message(manifest))?;
    let progress = super::progress::bytes(receiver.manifest().total_bytes(), "receiving");
    let received = async {
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(pb::backup_chunk::Part::Chunk(c)) => {
                    receiver.chunk(&c.path, c.offset, &c.data)?;
                    progress.set_position(receiver.received());
                }
                _ => anyhow::bail!("the vault's backup stream sent a second manifest"),
            }
        }
        Ok(())
    }
    .await;
    progress.finish_and_clear();
    let finished = received.and_then(|()| Ok(receiver.finish()?));
    if finished.is_err() {
        // A partial copy (this command created the directory) has no manifest; it is not left
        // looking like a backup.
        let _ = std::fs::remove_dir_all(to);
    }
    finished
}
