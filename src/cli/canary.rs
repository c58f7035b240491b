//! `privault canary add`: marks a subject of a running vault as a canary (an exfiltration alarm).

use std::process::ExitCode;

use clap::Subcommand;
use privault::api::pb;
use privault::api::pb::key_admin_client::KeyAdminClient;

use super::keys::remotely;
use super::remote::Remote;

#[derive(Subcommand)]
pub enum CanaryCommand {
    /// Mark a subject as a canary: every later read of it is served as usual but logged loudly,
    /// audited as `canary` and counted in privault_canary_reads_total. Store decoy fields for it
    /// like for any customer (PutFields). Needs `key_manage`.
    Add {
        /// The decoy's customer id.
        #[arg(long)]
        subject_id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

pub fn run(command: CanaryCommand) -> anyhow::Result<ExitCode> {
    match command {
        CanaryCommand::Add { subject_id, remote } => remotely(async move {
            let mut client = KeyAdminClient::new(remote.channel().await?);
            client
                .add_canary(remote.request(pb::AddCanaryRequest { subject_id })?)
                .await?;
            if super::json() {
                super::print_json(&serde_json::json!({ "canary": true }))?;
            } else {
                println!("marked as a canary");
            }
            Ok(ExitCode::SUCCESS)
        }),
    }
}
