//! `privault policy apply | diff | rollback | versions`: policy changes against a running vault,
//! through `privault.v1.PolicyAdmin`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use privault::api::pb::policy_admin_client::PolicyAdminClient;
use privault::api::pb::{self, PolicyFiles};
use privault::policy::load_sources;
use tonic::Request;
use tonic::transport::Channel;

/// Where the vault is and who is calling.
#[derive(Args)]
pub struct Remote {
    /// The vault's address.
    #[arg(
        long,
        env = "PRIVAULT_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Who you are: a Cedar uid such as `Operator::"alice"` (sent in development and token
    /// mode; with mTLS your certificate names you).
    #[arg(long = "as", env = "PRIVAULT_PRINCIPAL")]
    pub caller: String,
    /// CA certificate (PEM) that signed the vault's certificate; turns TLS on (`https://` server).
    #[arg(long, env = "PRIVAULT_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Your client certificate (PEM), for mTLS.
    #[arg(long, env = "PRIVAULT_CLIENT_CERT")]
    pub client_cert: Option<PathBuf>,
    /// Your client key (PEM), for mTLS.
    #[arg(long, env = "PRIVAULT_CLIENT_KEY")]
    pub client_key: Option<PathBuf>,
    /// File holding your bearer token, for token mode (the server's `--token-file` holds only
    /// hashes; this holds the token itself, mode 0600).
    #[arg(long, env = "PRIVAULT_BEARER_TOKEN_FILE", alias = "token-file")]
    pub bearer_token_file: Option<PathBuf>,
}

impl Remote {
    /// A channel to the vault, over TLS when `--ca-cert` is given.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        let mut endpoint = Channel::from_shared(self.server.clone())?;
        if let Some(ca) = &self.ca_cert {
            let read = |p: &PathBuf| {
                std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let mut tls = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
            match (&self.client_cert, &self.client_key) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(tonic::transport::Identity::from_pem(
                        read(cert)?,
                        read(key)?,
                    ));
                }
                (None, None) => {}
                _ => anyhow::bail!("--client-cert and --client-key go together"),
            }
            endpoint = endpoint.tls_config(tls)?;
        }
        endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the vault at {}", self.server))
    }

    /// `message` as a request naming the caller (and carrying the token, in token mode).
    pub fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        let mut request = Request::new(message);
        request.metadata_mut().insert(
            "x-privault-principal",
            self.caller.parse().context("--as must be ASCII")?,
        );
        if let Some(path) = &self.bearer_token_file {
            let token = zeroize::Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            );
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", token.trim())
                    .parse()
                    .context("the token must be ASCII")?,
            );
        }
        Ok(request)
    }
}

#[derive(Subcommand)]
pub enum RemoteCommand {
    /// Validate the policy directory and make it the active set of a running vault.
    Apply {
        /// Policy directory to apply.
        #[arg(long, env = "PRIVAULT_POLICIES", default_value = "./policies")]
        policies: PathBuf,
        /// Why (recorded with the version).
        #[arg(long)]
        comment: String,
        /// The version the change was written against (default: the active one).
        #[arg(long)]
        base: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show what applying the policy directory would change: files, and recorded read decisions.
    Diff {
        /// Policy directory to compare with the active set.
        #[arg(long, env = "PRIVAULT_POLICIES", default_value = "./policies")]
        policies: PathBuf,
        /// How many recorded read decisions to replay.
        #[arg(long, default_value_t = 1000)]
        last: u32,
        #[command(flatten)]
        remote: Remote,
    },
    /// Activate an earlier version again (as a new version).
    Rollback {
        /// The version to return to.
        #[arg(long)]
        to: u64,
        /// Why (recorded with the version).
        #[arg(long, default_value = "")]
        comment: String,
        /// The version the rollback was decided against (default: the active one).
        #[arg(long)]
        base: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the stored policy versions, newest first.
    Versions {
        #[command(flatten)]
        remote: Remote,
    },
}

struct Admin<'a> {
    client: PolicyAdminClient<Channel>,
    remote: &'a Remote,
}

impl<'a> Admin<'a> {
    async fn connect(remote: &'a Remote) -> anyhow::Result<Self> {
        Ok(Self {
            client: PolicyAdminClient::new(remote.channel().await?),
            remote,
        })
    }

    fn request<T>(&self, message: T) -> anyhow::Result<Request<T>> {
        self.remote.request(message)
    }

    async fn active(&mut self) -> anyhow::Result<pb::GetActivePoliciesResponse> {
        let request = self.request(pb::GetActivePoliciesRequest {})?;
        Ok(self.client.get_active_policies(request).await?.into_inner())
    }
}

fn local_files(dir: &std::path::Path) -> anyhow::Result<PolicyFiles> {
    let sources = load_sources(dir)?;
    Ok(PolicyFiles {
        schema: sources.schema,
        catalog: sources.catalog,
        policies: sources.policies.into_iter().collect(),
    })
}

fn print_version(v: &pb::PolicyVersion) {
    println!(
        "{}{:>4}  {}  {}  {:<8}  {}  {}",
        if v.active { "*" } else { " " },
        v.version,
        v.created,
        v.hash,
        v.source,
        v.author,
        v.comment
    );
}

pub fn run(command: RemoteCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match command {
            RemoteCommand::Apply {
                policies,
                comment,
                base,
                remote,
            } => {
                let files = local_files(&policies)?;
                let mut admin = Admin::connect(&remote).await?;
                let base = match base {
                    Some(b) => b,
                    None => admin.active().await?.version.map_or(0, |v| v.version),
                };
                let request = admin.request(pb::ApplyPoliciesRequest {
                    files: Some(files),
                    base_version: base,
                    comment,
                })?;
                let applied = admin.client.apply_policies(request).await?.into_inner();
                if super::json() {
                    super::print_json(&applied)?;
                } else if let Some(v) = applied.version {
                    println!("applied as version {} (based on {base})", v.version);
                }
                Ok(ExitCode::SUCCESS)
            }
            RemoteCommand::Diff {
                policies,
                last,
                remote,
            } => {
                let files = local_files(&policies)?;
                let mut admin = Admin::connect(&remote).await?;
                let active = admin.active().await?;
                let changed = file_diff(active.files.unwrap_or_default(), &files);
                let request = admin.request(pb::DryRunPoliciesRequest {
                    files: Some(files),
                    last,
                })?;
                let run = admin.client.dry_run_policies(request).await?.into_inner();
                if super::json() {
                    super::print_json(&serde_json::json!({
                        "files_changed": changed,
                        "dry_run": run,
                    }))?;
                    return Ok(ExitCode::SUCCESS);
                }
                if changed.is_empty() {
                    println!("files: identical to the active set");
                } else {
                    println!("files changed against the active set:");
                    for c in changed {
                        println!("  {c}");
                    }
                }
                println!(
                    "{} recorded read decisions replayed, {} would change",
                    run.examined,
                    run.changes.len()
                );
                for c in run.changes {
                    println!(
                        "  seq {:>6}  {}  {}  for {}: {} -> {}",
                        c.seq, c.principal, c.field, c.purpose, c.before, c.after
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            RemoteCommand::Rollback {
                to,
                comment,
                base,
                remote,
            } => {
                let mut admin = Admin::connect(&remote).await?;
                let base = match base {
                    Some(b) => b,
                    None => admin.active().await?.version.map_or(0, |v| v.version),
                };
                let request = admin.request(pb::RollbackPoliciesRequest {
                    to_version: to,
                    base_version: base,
                    comment,
                })?;
                let applied = admin.client.rollback_policies(request).await?.into_inner();
                if super::json() {
                    super::print_json(&applied)?;
                } else if let Some(v) = applied.version {
                    println!("version {to} is active again as version {}", v.version);
                }
                Ok(ExitCode::SUCCESS)
            }
            RemoteCommand::Versions { remote } => {
                let mut admin = Admin::connect(&remote).await?;
                let request = admin.request(pb::ListPolicyVersionsRequest {})?;
                let listed = admin
                    .client
                    .list_policy_versions(request)
                    .await?
                    .into_inner();
                if super::json() {
                    super::print_json(&listed)?;
                } else {
                    listed.versions.iter().for_each(print_version);
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// The files that differ: `~ name` changed, `+ name` added, `- name` removed.
fn file_diff(active: PolicyFiles, candidate: &PolicyFiles) -> Vec<String> {
    let mut changed = Vec::new();
    if active.schema != candidate.schema {
        changed.push("~ schema.cedarschema".to_owned());
    }
    if active.catalog != candidate.catalog {
        changed.push("~ catalog.toml".to_owned());
    }
    let names: std::collections::BTreeSet<&String> = active
        .policies
        .keys()
        .chain(candidate.policies.keys())
        .collect();
    for name in names {
        match (active.policies.get(name), candidate.policies.get(name)) {
            (Some(a), Some(b)) if a != b => changed.push(format!("~ {name}")),
            (None, Some(_)) => changed.push(format!("+ {name}")),
            (Some(_), None) => changed.push(format!("- {name}")),
            _ => {}
        }
    }
    changed
}
