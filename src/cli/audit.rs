//! `privault audit verify | export | head | query`: the auditors' tools. `verify`, `export` and
//! `head` read a data directory (stopped, or beside a running vault); `query` asks a running one.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use privault::api::pb;
use privault::api::pb::audit_client::AuditClient;
use privault::audit::{
    Action, AuditFilter, DetailView, Dictionaries, Log, MAX_PAGE, Outcome, Sealed, archive_to,
    query, verify_range,
};
use privault::clock::{SystemClock, parse_rfc3339};
use privault::domain::Pseudonym;
use privault::vault::offline::{open_keyring, open_store_for, open_store_read_only, sign_head};
use privault::vault::{SignedHead, check_signed_head};

use super::remote::Remote;

#[derive(Args)]
pub struct Filters {
    /// Only this caller (a Cedar uid).
    #[arg(long)]
    principal: Option<String>,
    /// Only this action (read, write, shred, policy_apply...).
    #[arg(long)]
    action: Option<Action>,
    /// Only this purpose.
    #[arg(long)]
    purpose: Option<String>,
    /// Only this outcome (ok, denied, invalid_argument...).
    #[arg(long)]
    outcome: Option<Outcome>,
    /// From this time on (RFC 3339).
    #[arg(long)]
    from_time: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    to_time: Option<String>,
    /// From this seq on.
    #[arg(long, default_value_t = 1)]
    from_seq: u64,
    /// Up to this seq.
    #[arg(long)]
    to_seq: Option<u64>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain: exit 0 with `seq hash` of the head as the last line, non-zero naming the
    /// first bad seq. With --head, also check a previously saved signed head (truncation).
    Verify {
        /// The vault's data directory.
        #[arg(long, env = "PRIVAULT_DATA_DIR", default_value = "./privault-data")]
        data_dir: PathBuf,
        /// The vault's PostgreSQL database instead (as for `serve --database-url`): the log of
        /// every node.
        #[arg(long, env = "PRIVAULT_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// A signed head saved earlier (`privault audit head`), to detect truncation.
        #[arg(long)]
        head: Option<PathBuf>,
        /// The root key, needed with --head.
        #[command(flatten)]
        root: super::root::RootArgs,
        /// First seq to walk.
        #[arg(long, default_value_t = 1)]
        from_seq: u64,
        /// Last seq to walk.
        #[arg(long)]
        to_seq: Option<u64>,
        /// An archive (`privault audit archive --to DIR`): segments dropped from the live log
        /// are read from it, so that archive and live log are checked as one chain.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Copy every sealed segment not yet archived to DIR, verify each copy on its own (chain and
    /// signed checkpoint), and mark it archived, so that the vault's retention bound may drop it.
    /// Works beside a running vault.
    Archive {
        /// The vault's data directory.
        #[arg(long, env = "PRIVAULT_DATA_DIR", default_value = "./privault-data")]
        data_dir: PathBuf,
        /// The archive directory (created if missing).
        #[arg(long)]
        to: PathBuf,
    },
    /// Write records as JSON Lines (seq, time, principal, action, subject, purpose, fields,
    /// outcome, policy_version, prev_hash, hash, request_id, peer).
    Export {
        /// The vault's data directory.
        #[arg(long, env = "PRIVAULT_DATA_DIR", default_value = "./privault-data")]
        data_dir: PathBuf,
        /// The vault's PostgreSQL database instead (as for `serve --database-url`): the log of
        /// every node.
        #[arg(long, env = "PRIVAULT_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Only this subject's records, by audit pseudonym (32 hex digits; `privault audit query
        /// --subject-id` maps a customer id to it on a running vault).
        #[arg(long, alias = "subject")]
        pseudonym: Option<String>,
        #[command(flatten)]
        filters: Filters,
        /// An archive: segments dropped from the live log are read from it.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Print the head signed with the vault's audit key, as JSON; keep it to detect truncation.
    Head {
        /// The vault's data directory.
        #[arg(long, env = "PRIVAULT_DATA_DIR", default_value = "./privault-data")]
        data_dir: PathBuf,
        /// The vault's PostgreSQL database instead (as for `serve --database-url`): the log of
        /// every node.
        #[arg(long, env = "PRIVAULT_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[command(flatten)]
        root: super::root::RootArgs,
    },
    /// Print the audit public key (Ed25519, hex): what signed heads, segment checkpoints and
    /// erasure receipts verify against. Publish it; it is not a secret.
    PublicKey {
        /// The vault's data directory.
        #[arg(long, env = "PRIVAULT_DATA_DIR", default_value = "./privault-data")]
        data_dir: PathBuf,
        /// The vault's PostgreSQL database instead (as for `serve --database-url`): the log of
        /// every node.
        #[arg(long, env = "PRIVAULT_DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        #[command(flatten)]
        root: super::root::RootArgs,
    },
    /// Follow a running vault's log (JSON Lines on stdout, the export keys): every record from
    /// --from-seq on, then each new one; reconnects after a disconnect and resumes where it was,
    /// so that every record is printed exactly once.
    Tail {
        /// The first record to print; 0: only records written from now on.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Query a running vault (JSON Lines on stdout).
    Query {
        /// Only this subject (mapped by the vault to its pseudonym).
        #[arg(long)]
        subject_id: Option<String>,
        #[command(flatten)]
        filters: Filters,
        #[command(flatten)]
        remote: Remote,
    },
}

fn filter(f: &Filters, pseudonym: Option<String>) -> anyhow::Result<AuditFilter> {
    let subject = pseudonym
        .map(|hex| {
            hex::decode(&hex)
                .ok()
                .and_then(|b| b.try_into().ok())
                .map(Pseudonym)
                .with_context(|| "--pseudonym is 32 hex digits")
        })
        .transpose()?;
    let time = |t: &Option<String>| -> anyhow::Result<Option<u64>> {
        t.as_deref()
            .map(|s| parse_rfc3339(s).with_context(|| format!("`{s}` is not RFC 3339")))
            .transpose()
    };
    Ok(AuditFilter {
        subject,
        principal: f.principal.clone(),
        purpose: f.purpose.clone(),
        action: f.action,
        outcome: f.outcome,
        from_ms: time(&f.from_time)?,
        to_ms: time(&f.to_time)?,
        from_seq: f.from_seq,
        to_seq: f.to_seq,
        limit: MAX_PAGE,
    })
}

/// The configuration offline tools open `data_dir`'s keyring with.
pub fn offline_config(
    data_dir: &std::path::Path,
    root: &super::root::RootArgs,
) -> anyhow::Result<privault::vault::VaultConfig> {
    // The policy directory is not read by offline tools.
    let mut config = privault::vault::VaultConfig::new(data_dir, "");
    root.apply(&mut config)?;
    Ok(config)
}

/// [`offline_config`] for a vault in `data_dir`, or in the PostgreSQL database at `database_url`.
fn source_config(
    data_dir: &std::path::Path,
    database_url: Option<&str>,
    root: &super::root::RootArgs,
) -> anyhow::Result<privault::vault::VaultConfig> {
    let mut config = offline_config(data_dir, root)?;
    if let Some(url) = database_url {
        let mut database = privault::store::PgConfig::new(url);
        database.pool_size = 2;
        config.store = privault::vault::StoreConfig::Postgres {
            database,
            node_id: String::new(),
        };
    }
    Ok(config)
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            data_dir,
            database_url,
            head,
            root,
            from_seq,
            to_seq,
            archive,
        } => {
            let config = source_config(&data_dir, database_url.as_deref(), &root)?;
            let store = open_store_for(&config)?;
            let sealed = sealed_with(&store, archive.as_deref())?;
            let log = Log {
                store: &store,
                sealed: &sealed,
            };
            let (seq, hash) = match verify_range(log, from_seq, to_seq) {
                Ok(h) => h,
                Err(e) if e.unreadable => {
                    eprintln!(
                        "cannot read a consistent view of the log at seq {}: {}",
                        e.seq, e.reason
                    );
                    return Ok(ExitCode::FAILURE);
                }
                Err(e) => {
                    eprintln!("{e}");
                    if super::json() {
                        super::print_json(&serde_json::json!({
                            "valid": false, "bad_seq": e.seq, "reason": e.reason,
                        }))?;
                    } else {
                        println!("bad seq {}", e.seq);
                    }
                    return Ok(super::check_failed());
                }
            };
            if let Some(path) = &head {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let signed: SignedHead =
                    serde_json::from_str(&text).context("not a signed head")?;
                let keyring = open_keyring(&config)?;
                if let Err(e) = check_signed_head(&store, &keyring, &signed) {
                    eprintln!("{e}");
                    return Ok(super::check_failed());
                }
                if !super::json() {
                    println!("signed head {} {} is in the log", signed.seq, signed.hash);
                }
            }
            let dropped: Vec<_> = sealed
                .checkpoints()
                .into_iter()
                .filter(|c| sealed.is_dropped(c.segment))
                .collect();
            if super::json() {
                super::print_json(&serde_json::json!({
                    "valid": true,
                    "head_seq": seq,
                    "head_hash": hash,
                    "signed_head_checked": head.is_some(),
                    "dropped_segments": dropped.iter().map(|c| c.segment).collect::<Vec<_>>(),
                }))?;
                return Ok(ExitCode::SUCCESS);
            }
            if let (Some(first), Some(last)) = (dropped.first(), dropped.last()) {
                let at_hand = dropped.iter().all(|c| sealed.readable(c.segment));
                println!(
                    "segments {}..{} (seqs {}..{}) were dropped from the live log for the \
                     archive; {}",
                    first.segment,
                    last.segment,
                    first.first_seq,
                    last.last_seq,
                    if at_hand {
                        "verified from the archive"
                    } else {
                        "the chain was verified from their signed checkpoint (give --archive DIR \
                         to verify their records)"
                    }
                );
            }
            println!("{seq} {hash}");
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export {
            data_dir,
            database_url,
            pseudonym,
            filters,
            archive,
        } => {
            let config = source_config(
                &data_dir,
                database_url.as_deref(),
                &super::root::RootArgs::default(),
            )?;
            let store = open_store_for(&config)?;
            let sealed = sealed_with(&store, archive.as_deref())?;
            let log = Log {
                store: &store,
                sealed: &sealed,
            };
            let mut f = filter(&filters, pseudonym)?;
            let mut out = std::io::stdout().lock();
            let dicts = Dictionaries::default();
            loop {
                let (records, next) = query(log, &dicts, &f)?;
                for r in records {
                    writeln!(out, "{}", serde_json::to_string(&r.view())?)?;
                }
                match next {
                    Some(n) => f.from_seq = n,
                    None => break,
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::PublicKey {
            data_dir,
            database_url,
            root,
        } => {
            let keyring = open_keyring(&source_config(&data_dir, database_url.as_deref(), &root)?)?;
            let key = hex::encode(keyring.audit_signer().public_key());
            if super::json() {
                super::print_json(&serde_json::json!({ "public_key": key }))?;
            } else {
                println!("{key}");
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Head {
            data_dir,
            database_url,
            root,
        } => {
            let config = source_config(&data_dir, database_url.as_deref(), &root)?;
            let store = open_store_for(&config)?;
            let keyring = open_keyring(&config)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&sign_head(&store, &keyring, &SystemClock)?)?
            );
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Query {
            subject_id,
            filters,
            remote,
        } => remote_query(subject_id, &filters, &remote),
        AuditCommand::Tail { from_seq, remote } => remote_tail(from_seq, &remote),
        AuditCommand::Archive { data_dir, to } => {
            let store = open_store_read_only(&data_dir)?;
            let sealed = Sealed::load(&store)?;
            let now = privault::clock::rfc3339(privault::clock::Clock::now_ms(&SystemClock));
            let bar =
                super::progress::items(sealed.checkpoints().len() as u64, "archiving segments");
            let archived = archive_to(&sealed, &to, now, |_| bar.inc(1));
            bar.finish_and_clear();
            let archived = archived?;
            if super::json() {
                let segments: Vec<_> = archived
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "segment": a.checkpoint.segment,
                            "first_seq": a.checkpoint.first_seq,
                            "last_seq": a.checkpoint.last_seq,
                            "copied": a.copied,
                        })
                    })
                    .collect();
                super::print_json(&serde_json::json!({ "archive": to, "segments": segments }))?;
                return Ok(ExitCode::SUCCESS);
            }
            for a in &archived {
                let c = &a.checkpoint;
                println!(
                    "segment {} seqs {}..{} {}",
                    c.segment,
                    c.first_seq,
                    c.last_seq,
                    if a.copied {
                        "archived and verified"
                    } else {
                        "already archived, verified"
                    }
                );
            }
            println!("{} segments in {}", archived.len(), to.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn remote_query(
    subject_id: Option<String>,
    f: &Filters,
    remote: &Remote,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = AuditClient::new(remote.channel().await?);
        let mut from_seq = f.from_seq;
        let mut out = std::io::stdout().lock();
        loop {
            let request = remote.request(pb::AuditQueryRequest {
                subject_id: subject_id.clone().unwrap_or_default(),
                principal: f.principal.clone().unwrap_or_default(),
                purpose: f.purpose.clone().unwrap_or_default(),
                action: f.action.map(|a| a.name().to_owned()).unwrap_or_default(),
                outcome: f.outcome.map(|o| o.name().to_owned()).unwrap_or_default(),
                from_time: f.from_time.clone().unwrap_or_default(),
                to_time: f.to_time.clone().unwrap_or_default(),
                from_seq,
                to_seq: f.to_seq.unwrap_or(0),
                page_size: 0,
            })?;
            let mut stream = client.query(request).await?.into_inner();
            let mut next = 0;
            while let Some(message) = stream.message().await? {
                if let Some(r) = message.record {
                    writeln!(out, "{}", record_json(r))?;
                } else {
                    next = message.next_seq;
                }
            }
            if next == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            from_seq = next;
        }
    })
}

/// The sealed segments of `store`, reading dropped ones from `archive` when given.
fn sealed_with(
    store: &privault::store::Store,
    archive: Option<&std::path::Path>,
) -> anyhow::Result<Sealed> {
    Ok(match archive {
        Some(dir) => Sealed::load_with_archive(store, dir)?,
        None => Sealed::load(store)?,
    })
}

fn remote_tail(from_seq: u64, remote: &Remote) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut next = from_seq;
        let mut out = std::io::stdout().lock();
        loop {
            let stream = async {
                let mut client = AuditClient::new(remote.channel().await?);
                let request = remote.request(pb::AuditTailRequest { from_seq: next })?;
                anyhow::Ok(client.tail(request).await?.into_inner())
            };
            let failure = match stream.await {
                Ok(mut stream) => loop {
                    match stream.message().await {
                        Ok(Some(r)) => {
                            next = r.seq + 1;
                            writeln!(out, "{}", record_json(r))?;
                            out.flush()?;
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(anyhow::Error::from(status)),
                    }
                },
                Err(e) => Some(e),
            };
            if let Some(status) = failure
                .as_ref()
                .and_then(|e| e.downcast_ref::<tonic::Status>())
                && !matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
                )
            {
                eprintln!("audit tail: {}", status.message());
                return Ok(ExitCode::FAILURE);
            }
            let why = failure.map_or_else(|| "the stream ended".to_owned(), |e| format!("{e:#}"));
            eprintln!("audit tail: {why}; resuming from seq {next} in 1 s");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    })
}

fn record_json(r: pb::AuditRecord) -> serde_json::Value {
    let fields: Vec<serde_json::Value> = r
        .fields
        .into_iter()
        .map(|f| serde_json::json!({"field": f.field, "outcome": f.outcome, "policy_ids": f.policy_ids}))
        .collect();
    let opt = |s: String| {
        if s.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(s)
        }
    };
    serde_json::json!({
        "seq": r.seq, "time": r.time, "principal": r.principal, "action": r.action,
        "subject": opt(r.subject), "purpose": opt(r.purpose), "fields": fields,
        "outcome": r.outcome, "request_id": r.request_id, "policy_version": r.policy_version,
        "peer": opt(r.peer), "consents": r.consents, "withdrawn": r.withdrawn,
        "detail": r.detail.map(|d| DetailView { kind: d.kind, numbers: d.numbers, name: Some(d.name).filter(|n| !n.is_empty()) }),
        "prev_hash": r.prev_hash, "hash": r.hash,
    })
}
