//! Where the root key comes from, for every command that opens a keyring: a key file, or a
//! passphrase read from a file (mode 0600) or from an environment variable named on the command
//! line; `<data-dir>/dev.key` when none is given.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use privault::crypto::Passphrase;
use privault::vault::VaultConfig;

#[derive(Args, Default, Clone)]
pub struct RootArgs {
    /// Root key file (64 hex digits, mode 0600) [default: <data-dir>/dev.key]
    #[arg(long, env = "PRIVAULT_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// File holding the passphrase the root key is derived from (Argon2id), mode 0600.
    #[arg(long, env = "PRIVAULT_ROOT_PASSPHRASE_FILE")]
    pub root_passphrase_file: Option<PathBuf>,
    /// Name of an environment variable holding the passphrase.
    #[arg(long, env = "PRIVAULT_ROOT_PASSPHRASE_ENV")]
    pub root_passphrase_env: Option<String>,
}

/// The passphrase from `file` or the variable named `env`, if either is given.
pub fn passphrase(file: Option<&Path>, env: Option<&str>) -> anyhow::Result<Option<Passphrase>> {
    match (file, env) {
        (Some(_), Some(_)) => bail!("give the passphrase in a file or in a variable, not both"),
        (Some(path), None) => {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                bail!(
                    "passphrase file {} is readable by group or others; run `chmod 600` on it",
                    path.display()
                );
            }
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Some(Passphrase::new(text)))
        }
        (None, Some(name)) => {
            let text = std::env::var(name)
                .with_context(|| format!("environment variable {name} is not set"))?;
            Ok(Some(Passphrase::new(text)))
        }
        (None, None) => Ok(None),
    }
}

impl RootArgs {
    /// Puts the root key source into `config`.
    pub fn apply(&self, config: &mut VaultConfig) -> anyhow::Result<()> {
        config.key_file.clone_from(&self.key_file);
        config.passphrase = passphrase(
            self.root_passphrase_file.as_deref(),
            self.root_passphrase_env.as_deref(),
        )?;
        Ok(())
    }
}
