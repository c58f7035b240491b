//! `privault ropa`: prints the GDPR Art. 30 record of processing derived from a policy directory,
//! as Markdown (for the data-protection officer) or JSON (for tooling).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Markdown,
    Json,
}

#[derive(Args)]
pub struct RopaArgs {
    /// Policy directory.
    #[arg(long, env = "PRIVAULT_POLICIES", default_value = "./policies")]
    policies: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "markdown")]
    format: Format,
}

pub fn run(args: RopaArgs) -> anyhow::Result<ExitCode> {
    let Some(set) = super::policy::load(&args.policies)? else {
        return Ok(ExitCode::FAILURE);
    };
    let ropa = set.record_of_processing();
    match args.format {
        Format::Markdown => print!("{}", ropa.to_markdown()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&ropa)?),
    }
    Ok(ExitCode::SUCCESS)
}
