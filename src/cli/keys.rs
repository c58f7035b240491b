//! `privault keys`: the key lifecycle from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use privault::clock::SystemClock;
use privault::vault::offline::change_passphrase;

use super::root::{RootArgs, passphrase};

#[derive(Subcommand)]
pub enum KeysCommand {
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
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    super::hardening::disable_core_dumps();
    match command {
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
    }
}
