//! The `privault` binary: `serve` runs the vault; `policy validate/test/explain` serve the security team.
//! Thin: parses flags, sets up logging and signals, and calls the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

mod cli;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use privault::api::{self, Identity};
use privault::clock::SystemClock;
use privault::vault::{Vault, VaultConfig};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "privault",
    version,
    about = "An encrypted personal-data vault with purpose-bound Cedar policies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the vault.
    Serve(ServeArgs),
    /// Work with a policy directory.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Export everything stored about one customer from a running vault, as JSON.
    Export(cli::export::ExportArgs),
    /// The auditors' tools: verify, export, signed head, query.
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// Print the record of processing (GDPR Art. 30) derived from catalog and policies.
    Ropa(cli::ropa::RopaArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Holds db/, keyring, the deletion ledger and, in development, dev.key.
    #[arg(long, env = "PRIVAULT_DATA_DIR", default_value = "./privault-data")]
    data_dir: PathBuf,
    /// Address to listen on. Without TLS only loopback addresses are accepted.
    #[arg(long, env = "PRIVAULT_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Policy directory: schema.cedarschema, *.cedar, catalog.toml.
    #[arg(long, env = "PRIVAULT_POLICIES", default_value = "./policies")]
    policies: PathBuf,
    /// Root key file (64 hex digits, mode 0600). Default: <data-dir>/dev.key, generated when absent.
    #[arg(long, env = "PRIVAULT_KEY_FILE")]
    key_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Policy(command) => cli::policy::run(command),
        Command::Audit(command) => cli::audit::run(command),
        Command::Export(args) => cli::export::run(args),
        Command::Ropa(args) => cli::ropa::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {} without TLS: development mode trusts the x-privault-principal header \
             and only listens on loopback",
            args.listen
        );
    }
    let mut config = VaultConfig::new(&args.data_dir, &args.policies);
    config.key_file = args.key_file;
    let vault = Arc::new(
        Vault::open(&config, Arc::new(SystemClock))
            .with_context(|| format!("cannot open the vault in {}", args.data_dir.display()))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::warn!(
            "DEVELOPMENT MODE: callers are whoever the x-privault-principal header says; loopback only"
        );
        tokio::spawn(reload_on_sighup(Arc::clone(&vault)));
        tokio::spawn(sweep_retention(Arc::clone(&vault)));
        tracing::info!("listening on {addr}");
        api::serve(vault, Identity::Development, listener, shutdown_signal()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Re-reads the policy directory on every SIGHUP; an invalid directory leaves the active set.
async fn reload_on_sighup(vault: Arc<Vault>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; policy reload by signal is off");
        return;
    };
    while hangups.recv().await.is_some() {
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

/// Deletes expired fields in the background: a bounded slice every second, so that a large store
/// is swept over time without ever holding the writer for long.
async fn sweep_retention(vault: Arc<Vault>) {
    const SLICE: usize = 1000;
    let mut cursor = privault::vault::SweepCursor::default();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
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

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = async {
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
