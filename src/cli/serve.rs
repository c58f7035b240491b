//! `privault serve`: every setting from a flag, its `PRIVAULT_*` environment variable, or the
//! `--config` file (flags and environment win), checked together before anything starts; then the
//! server with its SIGHUP reload and retention sweeper.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use privault::api::tokens::TokenVerifier;
use privault::api::{self, Identity, ServeOptions, tls};
use privault::clock::SystemClock;
use privault::vault::{Limits, StoreConfig, Vault, VaultConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Args, Default)]
pub struct ServeArgs {
    /// A TOML file with any of the settings below (keys are the flag names, e.g.
    /// `data-dir = "/var/lib/privault"`); flags and PRIVAULT_* variables override it.
    #[arg(long, env = "PRIVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Check the settings (the config file, the files it names, the policy directory) and exit:
    /// 0 when the vault would start with them, 2 with `file:line: message` otherwise. Opens no
    /// data: safe beside a running vault.
    #[arg(long, conflicts_with = "print_config")]
    check_config: bool,
    /// Print the effective settings (flags over environment over the config file over the
    /// defaults) as a config file, and exit. Secrets are never inline: the passphrase, keys and
    /// tokens are named by file or variable, and only those names are printed.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    settings: Settings,
}

/// Every setting of `serve`; `None` means "not given here".
#[derive(Args, Deserialize, Serialize, Default, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Holds db/, keyring, the deletion ledger and, in development, dev.key [default: ./privault-data]
    #[arg(long, env = "PRIVAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the data is: `rocksdb` (in <data-dir>/db) or `postgres` (--database-url) [default: rocksdb]
    #[arg(long, env = "PRIVAULT_STORE")]
    store: Option<privault::store::Backend>,
    /// PostgreSQL URL for --store postgres, e.g. `postgresql://privault@db1,db2/privault?target_session_attrs=read-write`; `sslmode=require` turns TLS on. Prefer the environment over the command line: a password in it would show in `ps` (never printed by --print-config)
    #[arg(long, env = "PRIVAULT_DATABASE_URL", hide_env_values = true)]
    #[serde(skip_serializing)]
    database_url: Option<String>,
    /// PEM file of the CA certificates the database's certificate must chain to [default: the system's roots]
    #[arg(long, env = "PRIVAULT_DATABASE_CA")]
    database_ca: Option<PathBuf>,
    /// Connections to the database this node keeps at most [default: 16]
    #[arg(long, env = "PRIVAULT_DATABASE_POOL")]
    database_pool: Option<usize>,
    /// This node's name in logs, its lease and its audit records [default: the host name]
    #[arg(long, env = "PRIVAULT_NODE_ID")]
    node_id: Option<String>,
    /// Address to listen on; without TLS only loopback addresses [default: 127.0.0.1:50051]
    #[arg(long, env = "PRIVAULT_LISTEN")]
    listen: Option<SocketAddr>,
    /// Policy directory: schema.cedarschema, *.cedar, catalog.toml [default: ./policies]
    #[arg(long, env = "PRIVAULT_POLICIES")]
    policies: Option<PathBuf>,
    /// Root key file (64 hex digits, mode 0600) [default: <data-dir>/dev.key, generated when absent]
    #[arg(long, env = "PRIVAULT_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// File holding the root passphrase (Argon2id derives the root key), mode 0600.
    #[arg(long, env = "PRIVAULT_ROOT_PASSPHRASE_FILE")]
    root_passphrase_file: Option<PathBuf>,
    /// Name of an environment variable holding the root passphrase.
    #[arg(long, env = "PRIVAULT_ROOT_PASSPHRASE_ENV")]
    root_passphrase_env: Option<String>,
    /// PKCS#11 module whose token holds the root key (an HSM; the key never leaves it).
    #[arg(long, env = "PRIVAULT_ROOT_KEY_PKCS11")]
    root_key_pkcs11: Option<PathBuf>,
    /// The label of the token holding the root key.
    #[arg(long, env = "PRIVAULT_PKCS11_TOKEN")]
    pkcs11_token: Option<String>,
    /// The label of the root key in the token (generated there for a new keyring).
    #[arg(long, env = "PRIVAULT_PKCS11_KEY")]
    pkcs11_key: Option<String>,
    /// File holding the token's user PIN, mode 0600.
    #[arg(long, env = "PRIVAULT_PKCS11_PIN_FILE")]
    pkcs11_pin_file: Option<PathBuf>,
    /// Lock the process's memory (mlockall) so keys and values never reach swap [default: true]
    #[arg(long, env = "PRIVAULT_LOCK_MEMORY")]
    lock_memory: Option<bool>,
    /// Roll the KEK epoch automatically once the current one is this many days old [default: off]
    #[arg(long, env = "PRIVAULT_EPOCH_ROLL_DAYS")]
    epoch_roll_days: Option<u64>,
    /// Server certificate chain (PEM); turns TLS on, with --tls-key.
    #[arg(long, env = "PRIVAULT_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "PRIVAULT_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA that signs client certificates (PEM): mTLS, the principal from the certificate.
    #[arg(long, env = "PRIVAULT_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// SPIFFE trust domain client certificates must name (required with --client-ca)
    #[arg(long, env = "PRIVAULT_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Token file (TOML, principal → Argon2id hash): bearer-token authentication.
    #[arg(long, env = "PRIVAULT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Largest request message in bytes [default: 4194304]
    #[arg(long, env = "PRIVAULT_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Most bytes of values one call may return, all subjects of a batch together [default: 4194304]
    #[arg(long, env = "PRIVAULT_MAX_RESPONSE_BYTES")]
    max_response_bytes: Option<usize>,
    /// Most fields in one call [default: 64]
    #[arg(long, env = "PRIVAULT_MAX_FIELDS_PER_CALL")]
    max_fields_per_call: Option<usize>,
    /// Largest field value in bytes [default: 65536]
    #[arg(long, env = "PRIVAULT_MAX_VALUE_BYTES")]
    max_value_bytes: Option<usize>,
    /// Longest subject id in bytes, at most 256 [default: 256]
    #[arg(long, env = "PRIVAULT_MAX_SUBJECT_ID_BYTES")]
    max_subject_id_bytes: Option<usize>,
    /// Longest purpose name in bytes, at most 64 [default: 64]
    #[arg(long, env = "PRIVAULT_MAX_PURPOSE_BYTES")]
    max_purpose_bytes: Option<usize>,
    /// Calls one peer address may have in flight [default: 256]
    #[arg(long, env = "PRIVAULT_MAX_CONCURRENT_PER_PEER")]
    max_concurrent_per_peer: Option<usize>,
    /// Longest a call may run, in seconds; a client's shorter deadline wins [default: 30]
    #[arg(long, env = "PRIVAULT_REQUEST_TIMEOUT_SECS")]
    request_timeout_secs: Option<u64>,
    /// Seconds in-flight calls may drain after SIGTERM before the rest are cut off [default: 20]
    #[arg(long, env = "PRIVAULT_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
    /// Subjects whose unwrapped keys stay cached [default: 10000]
    #[arg(long, env = "PRIVAULT_KEY_CACHE_SUBJECTS")]
    key_cache_subjects: Option<usize>,
    /// MiB of RocksDB's block cache; reads that miss it leave the async runtime [default: 256]
    #[arg(long, env = "PRIVAULT_BLOCK_CACHE_MIB")]
    block_cache_mib: Option<usize>,
    /// Bytes of audit records after which the log starts a new segment and seals the last one
    /// into a signed file under audit/ [default: 67108864]
    #[arg(long, env = "PRIVAULT_AUDIT_SEGMENT_BYTES")]
    audit_segment_bytes: Option<u64>,
    /// Drop sealed audit segments older than this many days, once archived [default: keep all]
    #[arg(long, env = "PRIVAULT_AUDIT_RETENTION_DAYS")]
    audit_retention_days: Option<u64>,
    /// Drop the oldest archived audit segments while the live log is larger [default: keep all]
    #[arg(long, env = "PRIVAULT_AUDIT_MAX_BYTES")]
    audit_max_bytes: Option<u64>,
    /// Address of the Prometheus `GET /metrics` listener: over TLS with the server's certificate
    /// when --tls-cert is set, otherwise loopback only [default: off]
    #[arg(long, env = "PRIVAULT_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// OTLP/gRPC collector to export each call's span to, e.g. `http://127.0.0.1:4317` (spans carry
    /// the rpc, trace id and request id: never a subject id or a value) [default: off]
    #[arg(long, env = "PRIVAULT_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

impl Settings {
    /// Every default, in one place: what `serve` uses for a setting nobody gave, what
    /// `--print-config` shows, and what the README table and the example config are checked
    /// against. Settings that are off by default stay `None`.
    pub fn defaults() -> Settings {
        let limits = Limits::default();
        let serve = ServeOptions::development();
        Settings {
            data_dir: Some(PathBuf::from("./privault-data")),
            store: Some(privault::store::Backend::Rocksdb),
            database_pool: Some(16),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            policies: Some(PathBuf::from("./policies")),
            lock_memory: Some(true),
            max_message_bytes: Some(serve.max_message_bytes),
            max_response_bytes: Some(limits.max_response_bytes),
            max_fields_per_call: Some(limits.max_fields_per_call),
            max_value_bytes: Some(limits.max_value_bytes),
            max_subject_id_bytes: Some(limits.max_subject_id_bytes),
            max_purpose_bytes: Some(limits.max_purpose_bytes),
            max_concurrent_per_peer: Some(serve.max_concurrent_per_peer),
            request_timeout_secs: Some(serve.request_timeout.as_secs()),
            shutdown_grace_secs: Some(serve.shutdown_grace.as_secs()),
            key_cache_subjects: Some(limits.key_cache_subjects),
            block_cache_mib: Some(limits.block_cache_bytes >> 20),
            audit_segment_bytes: Some(privault::audit::AuditOptions::default().segment_bytes),
            ..Settings::default()
        }
    }

    /// `self`, with what it leaves unset taken from `file`.
    fn or(self, file: Settings) -> Settings {
        macro_rules! merge {
            ($($f:ident),*) => { Settings { $($f: self.$f.or(file.$f)),* } };
        }
        merge!(
            data_dir,
            store,
            database_url,
            database_ca,
            database_pool,
            node_id,
            listen,
            policies,
            key_file,
            root_passphrase_file,
            root_passphrase_env,
            root_key_pkcs11,
            pkcs11_token,
            pkcs11_key,
            pkcs11_pin_file,
            lock_memory,
            epoch_roll_days,
            tls_cert,
            tls_key,
            client_ca,
            trust_domain,
            token_file,
            max_message_bytes,
            max_response_bytes,
            max_fields_per_call,
            max_value_bytes,
            max_subject_id_bytes,
            max_purpose_bytes,
            max_concurrent_per_peer,
            request_timeout_secs,
            shutdown_grace_secs,
            key_cache_subjects,
            block_cache_mib,
            audit_segment_bytes,
            audit_retention_days,
            audit_max_bytes,
            metrics_listen,
            otlp_endpoint
        )
    }
}

/// The resolved configuration of one `serve`.
struct Resolved {
    vault: VaultConfig,
    listen: SocketAddr,
    /// The metrics listener's address, and its TLS when the server has TLS.
    metrics: Option<(SocketAddr, Option<tokio_rustls::TlsAcceptor>)>,
    options: ServeOptions,
    tokens: Option<Arc<TokenVerifier>>,
    lock_memory: bool,
    epoch_roll_days: Option<u64>,
}

fn read_config(path: &Path) -> anyhow::Result<Settings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| text[..s.start].lines().count().max(1))
            .unwrap_or(1);
        anyhow::anyhow!("{}:{at}: {}", path.display(), e.message())
    })
}

impl ServeArgs {
    /// Where spans are exported, if anywhere: needed before logging starts, so read first.
    pub fn otlp_endpoint(&self) -> anyhow::Result<Option<String>> {
        let endpoint = effective(self)?.otlp_endpoint;
        if let Some(url) = &endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("--otlp-endpoint must be an http:// or https:// URL, not `{url}`");
        }
        Ok(endpoint)
    }
}

/// The settings in force: flags and environment, then the config file, then the defaults.
fn effective(args: &ServeArgs) -> anyhow::Result<Settings> {
    let given = match &args.config {
        Some(path) => args.settings.clone().or(read_config(path)?),
        None => args.settings.clone(),
    };
    Ok(given.or(Settings::defaults()))
}

fn resolve(args: &ServeArgs) -> anyhow::Result<Resolved> {
    let s = effective(args)?;
    // `effective` filled every setting that has a default.
    let data_dir = s.data_dir.context("no data directory")?;
    let policies = s.policies.context("no policy directory")?;
    let listen = s.listen.context("no listen address")?;
    let defaults = Limits::default();
    let limits = Limits {
        max_fields_per_call: s
            .max_fields_per_call
            .unwrap_or(defaults.max_fields_per_call),
        max_value_bytes: s.max_value_bytes.unwrap_or(defaults.max_value_bytes),
        key_cache_subjects: s.key_cache_subjects.unwrap_or(defaults.key_cache_subjects),
        block_cache_bytes: s.block_cache_mib.map_or(defaults.block_cache_bytes, |mib| {
            mib.saturating_mul(1 << 20)
        }),
        max_subject_id_bytes: s
            .max_subject_id_bytes
            .unwrap_or(defaults.max_subject_id_bytes),
        max_purpose_bytes: s.max_purpose_bytes.unwrap_or(defaults.max_purpose_bytes),
        max_response_bytes: s.max_response_bytes.unwrap_or(defaults.max_response_bytes),
        ..defaults
    };
    if limits.max_subject_id_bytes > defaults.max_subject_id_bytes
        || limits.max_purpose_bytes > defaults.max_purpose_bytes
    {
        bail!(
            "max-subject-id-bytes is at most {} and max-purpose-bytes at most {}",
            defaults.max_subject_id_bytes,
            defaults.max_purpose_bytes
        );
    }
    let mut vault = VaultConfig::new(&data_dir, &policies);
    vault.key_file = s.key_file;
    vault.passphrase = super::root::passphrase(
        s.root_passphrase_file.as_deref(),
        s.root_passphrase_env.as_deref(),
    )?;
    vault.token = super::root::token_config(
        s.root_key_pkcs11.as_deref(),
        s.pkcs11_token.as_deref(),
        s.pkcs11_key.as_deref(),
        s.pkcs11_pin_file.as_deref(),
    )?;
    vault.limits = limits;
    vault.store = match (s.store, s.database_url) {
        (Some(privault::store::Backend::Postgres), Some(url)) => {
            let mut database = privault::store::PgConfig::new(url);
            database.ca_file = s.database_ca;
            if let Some(size) = s.database_pool {
                if size == 0 {
                    bail!("--database-pool is at least 1");
                }
                database.pool_size = size;
            }
            StoreConfig::Postgres {
                database,
                node_id: s.node_id.unwrap_or_else(super::db::host_name),
            }
        }
        (Some(privault::store::Backend::Postgres), None) => {
            bail!("--store postgres needs --database-url (or PRIVAULT_DATABASE_URL)")
        }
        (_, Some(_)) => bail!("--database-url goes with --store postgres"),
        _ => StoreConfig::Rocksdb,
    };
    if let Some(bytes) = s.audit_segment_bytes {
        if bytes < 4096 {
            bail!("--audit-segment-bytes is at least 4096");
        }
        vault.audit.segment_bytes = bytes;
    }
    vault.audit.retention = privault::audit::LogRetention {
        max_age_ms: s.audit_retention_days.map(|d| d.saturating_mul(86_400_000)),
        max_bytes: s.audit_max_bytes,
    };

    let tls = match (&s.tls_cert, &s.tls_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let tokens = match &s.token_file {
        Some(path) => Some(Arc::new(TokenVerifier::load(path)?)),
        None => None,
    };
    let identity = match (&s.client_ca, &tokens) {
        (Some(_), Some(_)) => bail!("choose one identity mode: --client-ca (mTLS) or --token-file"),
        (Some(_), None) if tls.is_none() => bail!("--client-ca needs --tls-cert and --tls-key"),
        (Some(_), None) => match &s.trust_domain {
            // Without it, any SPIFFE id the client CA signs would name a principal, whatever
            // trust domain it belongs to.
            None => bail!(
                "--client-ca needs --trust-domain: the SPIFFE trust domain client certificates must name"
            ),
            Some(domain) => Identity::Certificate {
                trust_domain: Some(domain.clone()),
            },
        },
        (None, Some(verifier)) => Identity::Token(Arc::clone(verifier)),
        (None, None) if tls.is_some() => bail!(
            "TLS without --client-ca needs --token-file: the development header is never trusted \
             over TLS"
        ),
        (None, None) => Identity::Development,
    };
    let secure = tls.is_some();
    if !secure && !listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {listen} without TLS: development mode trusts the \
             x-privault-principal header and only listens on loopback, and tokens would cross the \
             network in clear"
        );
    }
    let metrics = match (s.metrics_listen, &tls) {
        (None, _) => None,
        (Some(addr), Some((cert, key))) => Some((addr, Some(api::metrics_tls(cert, key)?))),
        (Some(addr), None) if addr.ip().is_loopback() => Some((addr, None)),
        (Some(addr), None) => bail!(
            "refusing to serve metrics on {addr} without TLS: without --tls-cert the metrics \
             listener is loopback only"
        ),
    };
    let tls_config = match (&tls, &s.client_ca) {
        (Some((cert, key)), Some(ca)) => Some(tls::server_tls(cert, key, ca)?),
        (Some((cert, key)), None) => Some(tls::server_tls_without_client_auth(cert, key)?),
        (None, _) => None,
    };
    let dev = ServeOptions::development();
    let options = ServeOptions {
        identity,
        tls: tls_config,
        max_message_bytes: s.max_message_bytes.unwrap_or(dev.max_message_bytes),
        max_concurrent_per_peer: s
            .max_concurrent_per_peer
            .unwrap_or(dev.max_concurrent_per_peer),
        request_timeout: s
            .request_timeout_secs
            .map_or(dev.request_timeout, Duration::from_secs),
        shutdown_grace: s
            .shutdown_grace_secs
            .map_or(dev.shutdown_grace, Duration::from_secs),
    };
    Ok(Resolved {
        vault,
        listen,
        metrics,
        options,
        tokens,
        lock_memory: s.lock_memory.unwrap_or(true),
        epoch_roll_days: s.epoch_roll_days.filter(|d| *d > 0),
    })
}

/// `serve --check-config`: everything `serve` checks before it opens the data directory, and the
/// policy directory; the error in `file:line: message` form when the config file is at fault.
fn check_config(args: &ServeArgs) -> ExitCode {
    let checked = resolve(args).and_then(|resolved| {
        let sources = privault::policy::load_sources(&resolved.vault.policies_dir)?;
        privault::policy::Policies::from_sources(&sources)?;
        Ok(resolved)
    });
    match checked {
        Ok(resolved) => {
            println!(
                "config ok: data directory {}, policies {}, listening on {}",
                resolved.vault.data_dir.display(),
                resolved.vault.policies_dir.display(),
                resolved.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::from(2)
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.print_config {
        print!("{}", toml::to_string(&effective(&args)?)?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.check_config {
        return Ok(check_config(&args));
    }
    serve(&args)?;
    Ok(ExitCode::SUCCESS)
}

fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    let resolved = resolve(args)?;
    if resolved.lock_memory {
        super::hardening::lock_memory();
    }
    let data_dir = resolved.vault.data_dir.clone();
    let vault = Arc::new(
        Vault::open(&resolved.vault, Arc::new(SystemClock))
            .with_context(|| format!("cannot open the vault in {}", data_dir.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(resolved.listen)
            .await
            .with_context(|| format!("cannot listen on {}", resolved.listen))?;
        let addr = listener.local_addr()?;
        match &resolved.options.identity {
            Identity::Development => tracing::warn!(
                "DEVELOPMENT MODE: callers are whoever the x-privault-principal header says; \
                 loopback only"
            ),
            Identity::Certificate { .. } => {
                tracing::info!("mTLS: callers named by their client certificates")
            }
            Identity::Token(_) => tracing::info!("bearer tokens: callers proven by their tokens"),
        }
        // Handlers are installed before `listening on`, so a SIGTERM right after it is a clean stop.
        let shutdown = shutdown_signal()?;
        // Background work runs under one tracker and stops between slices once the server has
        // drained: a slice in progress is finished, never cut.
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(reload_on_sighup(
            Arc::clone(&vault),
            resolved.tokens,
            stop.clone(),
        ));
        tasks.spawn(sweep_retention(Arc::clone(&vault), stop.clone()));
        tasks.spawn(sweep_audit_log(Arc::clone(&vault), stop.clone()));
        // One blocking run: it is not waited for at shutdown (a roll resumes at the next start).
        tokio::spawn(finish_epoch_roll(Arc::clone(&vault)));
        // Always scheduled: without --epoch-roll-days the epoch still rolls once its KEK nears
        // the random-nonce bound.
        {
            let days = resolved.epoch_roll_days.unwrap_or(u64::MAX / 86_400_000);
            tasks.spawn(scheduled_epoch_roll(Arc::clone(&vault), days, stop.clone()));
        }
        if let Some((metrics_addr, metrics_tls)) = resolved.metrics {
            let metrics_listener = TcpListener::bind(metrics_addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {metrics_addr}"))?;
            tracing::info!(
                "metrics on {}://{}/metrics",
                if metrics_tls.is_some() {
                    "https"
                } else {
                    "http"
                },
                metrics_listener.local_addr()?
            );
            // It serves until the process ends: a scrape during the drain still sees it.
            tokio::spawn(api::serve_metrics(
                Arc::clone(&vault),
                metrics_listener,
                metrics_tls,
                std::future::pending(),
            ));
        }
        tracing::info!("listening on {addr}");
        let grace = resolved.options.shutdown_grace;
        api::serve_with(vault, resolved.options, listener, shutdown).await?;
        stop.cancel();
        tasks.close();
        if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "background tasks still running after the grace period; stopping anyway"
            );
        }
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// Re-reads the policy directory (and the token file) on every SIGHUP; an invalid one is refused
/// and what is loaded stays.
async fn reload_on_sighup(
    vault: Arc<Vault>,
    tokens: Option<Arc<TokenVerifier>>,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reload by signal is off");
        return;
    };
    loop {
        tokio::select! {
            signal = hangups.recv() => if signal.is_none() { return },
            () = stop.cancelled() => return,
        }
        if let Some(tokens) = &tokens {
            match tokens.reload() {
                Ok(n) => tracing::info!(principals = n, "SIGHUP: token file reloaded"),
                Err(e) => tracing::error!("SIGHUP: {e}; the loaded tokens stay"),
            }
        }
        let vault = Arc::clone(&vault);
        match tokio::task::spawn_blocking(move || vault.reload_policies()).await {
            Ok(Ok(Some(version))) => {
                tracing::info!(policy_version = version, "SIGHUP: policies reloaded")
            }
            Ok(Ok(None)) => tracing::info!("SIGHUP: policy directory unchanged"),
            Ok(Err(e)) => tracing::error!("SIGHUP: {e}"),
            Err(e) => tracing::error!("SIGHUP: reload task failed: {e}"),
        }
    }
}

/// Finishes a KEK epoch roll a crash interrupted, in the background while the vault serves.
async fn finish_epoch_roll(vault: Arc<Vault>) {
    if !vault.epoch_roll_pending() {
        return;
    }
    tracing::warn!("an epoch roll was interrupted; resuming it");
    match tokio::task::spawn_blocking(move || vault.resume_epoch_roll()).await {
        Ok(Ok(Some(done))) => tracing::info!(
            epoch = done.epoch,
            rewrapped = done.rewrapped,
            destroyed = ?done.destroyed,
            "epoch roll finished"
        ),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!("resuming the epoch roll failed: {e}"),
        Err(e) => tracing::error!("epoch roll task failed: {e}"),
    }
}

/// Rolls the epoch whenever the current one is older than `days` or its KEK has made nearly as
/// many wraps as a random-nonce key may, checked hourly.
async fn scheduled_epoch_roll(vault: Arc<Vault>, days: u64, stop: CancellationToken) {
    let max_age_ms = days.saturating_mul(86_400_000);
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let v = Arc::clone(&vault);
        match tokio::task::spawn_blocking(move || {
            v.catch_up()
                .and_then(|()| v.roll_epoch_if_older(max_age_ms))
        })
        .await
        {
            Ok(Ok(Some(done))) => tracing::info!(
                epoch = done.epoch,
                rewrapped = done.rewrapped,
                "scheduled epoch roll finished"
            ),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::error!("scheduled epoch roll failed: {e}"),
            Err(e) => tracing::error!("scheduled epoch roll task failed: {e}"),
        }
    }
}

/// Deletes expired fields in the background: a bounded slice every second, so that a large store
/// is swept over time without ever holding the writer for long. Legal holds past their `until`
/// are retired first, so the same pass sweeps what they no longer keep.
async fn sweep_retention(vault: Arc<Vault>, stop: CancellationToken) {
    const SLICE: usize = 1000;
    let mut cursor = privault::vault::SweepCursor::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let v = Arc::clone(&vault);
        match tokio::task::spawn_blocking(move || {
            v.catch_up().and_then(|()| v.retire_lapsed_holds())
        })
        .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(holds = n, "legal holds lapsed and retired"),
            Ok(Err(e)) => tracing::error!("retiring lapsed legal holds failed: {e}"),
            Err(e) => tracing::error!("legal hold task failed: {e}"),
        }
        let v = Arc::clone(&vault);
        let from = cursor.clone();
        match tokio::task::spawn_blocking(move || v.sweep_expired(&from, SLICE)).await {
            Ok(Ok(report)) => {
                if report.deleted > 0 {
                    tracing::info!(
                        deleted = report.deleted,
                        "retention: expired fields deleted"
                    );
                }
                cursor = report.next;
            }
            Ok(Err(e)) => tracing::error!("retention sweep failed: {e}"),
            Err(e) => tracing::error!("retention sweep task failed: {e}"),
        }
    }
}

/// Applies the audit log's retention bound at start and every minute.
async fn sweep_audit_log(vault: Arc<Vault>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let v = Arc::clone(&vault);
        match tokio::task::spawn_blocking(move || v.sweep_audit_log()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("audit log retention sweep failed: {e}"),
            Err(e) => tracing::error!("audit log retention task failed: {e}"),
        }
    }
}

/// A future that resolves on SIGTERM or SIGINT, with both handlers installed now.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_config_file() {
        let flags = Settings {
            listen: Some("127.0.0.1:6000".parse().unwrap()),
            ..Settings::default()
        };
        let file: Settings =
            toml::from_str("listen = \"127.0.0.1:7000\"\ndata-dir = \"/srv/vault\"\n").unwrap();
        let merged = flags.or(file);
        assert_eq!(merged.listen, Some("127.0.0.1:6000".parse().unwrap()));
        assert_eq!(merged.data_dir, Some(PathBuf::from("/srv/vault")));
        assert!(toml::from_str::<Settings>("colour = 1").is_err());
    }

    #[test]
    fn the_documented_example_config_parses() {
        let example: Settings =
            toml::from_str(include_str!("../../docs/privault.example.toml")).unwrap();
        assert_eq!(example.trust_domain.as_deref(), Some("shop.example"));
        assert_eq!(example.epoch_roll_days, Some(90));
    }

    #[test]
    fn a_client_ca_without_a_trust_domain_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, "").unwrap();
            path
        };
        let settings = Settings {
            tls_cert: Some(file("cert.pem")),
            tls_key: Some(file("key.pem")),
            client_ca: Some(file("ca.pem")),
            ..Settings::default()
        };
        let err = resolve(&ServeArgs {
            settings,
            ..ServeArgs::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("--trust-domain"), "{err}");
    }

    /// `n` bytes as the README writes them: `4 MiB`, `64 KiB`, or the number.
    fn human(n: u64) -> String {
        match n {
            n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
            n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
            n => n.to_string(),
        }
    }

    #[test]
    fn the_example_config_shows_the_defaults_the_code_uses() {
        let example: toml::Table =
            toml::from_str(include_str!("../../docs/privault.example.toml")).unwrap();
        let defaults = toml::Table::try_from(Settings::defaults()).unwrap();
        // The example's "Limits (defaults shown)" block and the segment size.
        for key in [
            "max-message-bytes",
            "max-response-bytes",
            "max-fields-per-call",
            "max-value-bytes",
            "max-subject-id-bytes",
            "max-purpose-bytes",
            "max-concurrent-per-peer",
            "request-timeout-secs",
            "shutdown-grace-secs",
            "key-cache-subjects",
            "block-cache-mib",
            "audit-segment-bytes",
        ] {
            assert_eq!(example.get(key), defaults.get(key), "{key}");
        }
    }

    #[test]
    fn the_readme_table_names_every_flag_and_the_defaults_the_code_uses() {
        use clap::CommandFactory;
        let readme = include_str!("../../README.md");
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: ServeArgs,
        }
        for arg in Serve::command().get_arguments() {
            let Some(flag) = arg.get_long() else { continue };
            assert!(
                readme.contains(&format!("`--{flag}")) || readme.contains(&format!(", `--{flag}")),
                "README.md does not document --{flag}"
            );
        }
        let d = Settings::defaults();
        let limits = [
            human(d.max_message_bytes.unwrap() as u64),
            format!("{} of values", human(d.max_response_bytes.unwrap() as u64)),
            d.max_fields_per_call.unwrap().to_string(),
            human(d.max_value_bytes.unwrap() as u64),
            d.max_subject_id_bytes.unwrap().to_string(),
            d.max_purpose_bytes.unwrap().to_string(),
            d.max_concurrent_per_peer.unwrap().to_string(),
            d.request_timeout_secs.unwrap().to_string(),
            d.shutdown_grace_secs.unwrap().to_string(),
            d.key_cache_subjects.unwrap().to_string(),
            format!("{} MiB", d.block_cache_mib.unwrap()),
        ]
        .join(", ");
        assert!(
            readme.contains(&format!("| {limits} |")),
            "README limits row: {limits}"
        );
        let segment = human(d.audit_segment_bytes.unwrap());
        assert!(
            readme.contains(&format!("| {segment}, none, none:")),
            "{segment}"
        );
        for default in [
            format!("`{}`", d.data_dir.unwrap().display()),
            format!("`{}`", d.listen.unwrap()),
            format!("`{}`", d.policies.unwrap().display()),
        ] {
            assert!(readme.contains(&default), "README default {default}");
        }
    }

    #[test]
    fn printed_settings_read_back_as_the_same_settings() {
        let args = ServeArgs {
            settings: Settings {
                listen: Some("127.0.0.1:6000".parse().unwrap()),
                token_file: Some(PathBuf::from("/etc/privault/tokens.toml")),
                ..Settings::default()
            },
            ..ServeArgs::default()
        };
        let printed = toml::to_string(&effective(&args).unwrap()).unwrap();
        let read: Settings = toml::from_str(&printed).unwrap();
        assert_eq!(read, effective(&args).unwrap());
        assert!(printed.contains("listen = \"127.0.0.1:6000\""), "{printed}");
        assert!(printed.contains("max-fields-per-call = 64"), "{printed}");
    }
}
