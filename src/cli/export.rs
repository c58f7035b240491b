//! `privault export`: a data subject's full export from a running vault, as JSON (GDPR Art. 15
//! and 20): every field, the consents, and the access history.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use privault::api::pb;
use privault::api::pb::vault_client::VaultClient;

use super::remote::Remote;

#[derive(Args)]
pub struct ExportArgs {
    /// The customer's id.
    #[arg(long)]
    subject_id: String,
    /// Write the JSON here (mode 0600) instead of to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    remote: Remote,
}

fn to_json(e: pb::ExportSubjectResponse) -> serde_json::Value {
    serde_json::json!({
        "exported_at": e.exported_at,
        "fields": e.fields.into_iter().map(|f| serde_json::json!({
            "field": f.field, "value": f.value, "written": f.written,
            "expires": if f.expires.is_empty() { serde_json::Value::Null } else { f.expires.into() },
            "views": f.views.into_iter().map(|v| (v.view, serde_json::Value::from(v.value)))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "consents": e.consents.into_iter().map(|c| serde_json::json!({
            "purpose": c.purpose, "granted": c.granted, "time": c.time, "recorded_by": c.recorded_by,
            "source": c.source,
            "signal": if c.signal.is_empty() { serde_json::Value::Null } else { c.signal.into() },
        })).collect::<Vec<_>>(),
        "signals": e.signals.into_iter().map(|s| serde_json::json!({
            "signal": s.signal, "time": s.time, "recorded_by": s.recorded_by, "source": s.source,
        })).collect::<Vec<_>>(),
        "access_history": e.history.into_iter().map(|h| serde_json::json!({
            "seq": h.seq, "time": h.time, "principal": h.principal, "action": h.action,
            "purpose": h.purpose, "fields": h.fields, "outcome": h.outcome,
        })).collect::<Vec<_>>(),
        // Where the history goes on when the server cut it to fit its response budget.
        "access_history_next_seq": (e.history_next_seq != 0).then_some(e.history_next_seq),
    })
}

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = runtime.block_on(async {
        let channel = args.remote.channel().await?;
        let request = args.remote.request(pb::ExportSubjectRequest {
            subject_id: args.subject_id.clone(),
        })?;
        anyhow::Ok(
            VaultClient::new(channel)
                .export_subject(request)
                .await?
                .into_inner(),
        )
    })?;
    let text = zeroize::Zeroizing::new(serde_json::to_string_pretty(&to_json(response))? + "\n");
    match args.out {
        Some(path) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        None => print!("{}", text.as_str()),
    }
    Ok(ExitCode::SUCCESS)
}
