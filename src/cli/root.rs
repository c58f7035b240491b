//! Where the root key comes from, for every command that opens a keyring: a key file, a
//! passphrase read from a file (mode 0600) or from an environment variable named on the command
//! line, or a PKCS#11 token (module, token and key labels, PIN file); `<data-dir>/dev.key` when
//! none is given.

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
    /// PKCS#11 module whose token holds the root key (an HSM; the key never leaves it).
    #[arg(long, env = "PRIVAULT_ROOT_KEY_PKCS11")]
    pub root_key_pkcs11: Option<PathBuf>,
    /// The label of the token holding the root key.
    #[arg(long, env = "PRIVAULT_PKCS11_TOKEN")]
    pub pkcs11_token: Option<String>,
    /// The label of the root key in the token (generated there for a new keyring).
    #[arg(long, env = "PRIVAULT_PKCS11_KEY")]
    pub pkcs11_key: Option<String>,
    /// File holding the token's user PIN, mode 0600.
    #[arg(long, env = "PRIVAULT_PKCS11_PIN_FILE")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

/// The contents of a secret file that must be mode 0600.
fn read_secret_file(path: &Path, what: &str) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{what} file {} is readable by group or others; run `chmod 600` on it",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// The passphrase from `file` or the variable named `env`, if either is given.
pub fn passphrase(file: Option<&Path>, env: Option<&str>) -> anyhow::Result<Option<Passphrase>> {
    match (file, env) {
        (Some(_), Some(_)) => bail!("give the passphrase in a file or in a variable, not both"),
        (Some(path), None) => Ok(Some(Passphrase::new(read_secret_file(path, "passphrase")?))),
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
        config.token = token_config(
            self.root_key_pkcs11.as_deref(),
            self.pkcs11_token.as_deref(),
            self.pkcs11_key.as_deref(),
            self.pkcs11_pin_file.as_deref(),
        )?;
        Ok(())
    }
}

/// The PKCS#11 token holding the root key, when `--root-key-pkcs11` is given: it needs the token
/// and key labels and the PIN file (mode 0600); the others without it are a usage error.
pub fn token_config(
    module: Option<&Path>,
    token: Option<&str>,
    key: Option<&str>,
    pin_file: Option<&Path>,
) -> anyhow::Result<Option<privault::crypto::TokenConfig>> {
    match (module, token, key, pin_file) {
        (None, None, None, None) => Ok(None),
        (Some(module), Some(token), Some(key), Some(pin_file)) => {
            Ok(Some(privault::crypto::TokenConfig {
                module: module.to_owned(),
                token: token.to_owned(),
                key: key.to_owned(),
                pin: read_secret_file(pin_file, "PIN")?.into(),
            }))
        }
        _ => bail!(
            "--root-key-pkcs11 MODULE goes with --pkcs11-token LABEL, --pkcs11-key LABEL and \
             --pkcs11-pin-file PATH, all four"
        ),
    }
}
