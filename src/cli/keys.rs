//! `privault keys`: the key lifecycle from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use privault::clock::SystemClock;
use privault::vault::offline::change_passphrase;

use privault::api::pb;
use privault::api::pb::key_admin_client::KeyAdminClient;

use super::remote::Remote;
use super::root::{RootArgs, passphrase};

pub fn remotely(
    work: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(work)
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Roll the KEK epoch of a running vault (or resume an unfinished roll): every live key is
    /// re-wrapped under a new KEK, then the old KEKs are destroyed. Prints progress.
    RollEpoch {
        #[command(flatten)]
        remote: Remote,
    },
    /// Replace every DEK of one subject in a running vault, re-sealing its fields.
    RotateDek {
        /// The customer id.
        #[arg(long, alias = "subject")]
        subject_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// The KEK epochs of a running vault.
    Status {
        #[command(flatten)]
        remote: Remote,
    },
    /// Re-wrap the keyring under a root key derived from a new passphrase (fresh salt, RFC 9106
    /// parameters). Also turns a key-file keyring into a passphrase one. Touches no data; the
    /// vault must be stopped.
    ChangePassphrase {
        /// The vault's data directory.
        #[arg(long, env = "PRIVAULT_DATA_DIR", default_value = "./privault-data")]
        data_dir: PathBuf,
        /// The current root key.
        #[command(flatten)]
        root: RootArgs,
        /// File holding the new passphrase, mode 0600.
        #[arg(long)]
        new_passphrase_file: Option<PathBuf>,
        /// Name of an environment variable holding the new passphrase.
        #[arg(long)]
        new_passphrase_env: Option<String>,
    },
    /// Write a new random root key file (64 hex digits, mode 0600) for --key-file: what every
    /// node of a vault on PostgreSQL is given. Refuses to overwrite an existing file.
    NewKeyFile {
        /// Where to write it.
        path: PathBuf,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::RollEpoch { remote } => remotely(async move {
            let mut client = KeyAdminClient::new(remote.channel().await?);
            let mut stream = client
                .roll_epoch(remote.request(pb::RollEpochRequest {})?)
                .await?
                .into_inner();
            let bar = super::progress::items(0, "re-wrapping");
            while let Some(p) = stream.message().await? {
                if p.done {
                    bar.finish_and_clear();
                    if super::json() {
                        super::print_json(&p)?;
                    } else {
                        println!(
                            "epoch {} is the only epoch: {} keys re-wrapped, epochs {:?} destroyed",
                            p.epoch, p.rewrapped, p.destroyed_epochs
                        );
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                bar.set_length(p.total);
                bar.set_position(p.examined);
                if bar.is_hidden() {
                    eprintln!(
                        "epoch {}: {} of about {} keys examined, {} re-wrapped",
                        p.epoch, p.examined, p.total, p.rewrapped
                    );
                }
            }
            bar.finish_and_clear();
            anyhow::bail!("the roll stopped before it finished; run the command again to resume")
        }),
        KeysCommand::RotateDek { subject_id, remote } => remotely(async move {
            let mut client = KeyAdminClient::new(remote.channel().await?);
            let done = client
                .rotate_subject_key(remote.request(pb::RotateSubjectKeyRequest { subject_id })?)
                .await?
                .into_inner();
            if super::json() {
                super::print_json(&done)?;
            } else {
                println!(
                    "{} key classes rotated, {} fields re-sealed",
                    done.classes_rotated, done.fields_resealed
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
        KeysCommand::Status { remote } => remotely(async move {
            let mut client = KeyAdminClient::new(remote.channel().await?);
            let status = client
                .key_status(remote.request(pb::KeyStatusRequest {})?)
                .await?
                .into_inner();
            if super::json() {
                super::print_json(&status)?;
            } else {
                println!(
                    "current epoch {}; epochs held {:?}",
                    status.current_epoch, status.epochs
                );
            }
            Ok(ExitCode::SUCCESS)
        }),
        KeysCommand::ChangePassphrase {
            data_dir,
            root,
            new_passphrase_file,
            new_passphrase_env,
        } => {
            let config = super::audit::offline_config(&data_dir, &root)?;
            let new = passphrase(
                new_passphrase_file.as_deref(),
                new_passphrase_env.as_deref(),
            )?
            .context(
                "give the new passphrase with --new-passphrase-file or --new-passphrase-env",
            )?;
            change_passphrase(&config, &new, &SystemClock)
                .context("cannot change the passphrase (is the vault still running?)")?;
            println!("keyring re-wrapped under the new passphrase; no data was touched");
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::NewKeyFile { path } => {
            if path.exists() {
                anyhow::bail!("{} exists: a root key is never overwritten", path.display());
            }
            privault::keyring::keyfile::create_key_file(&path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote a new root key to {} (mode 0600)", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
