//! The binary's subcommands other than `serve`.

pub mod audit;
pub mod backup;
pub mod bench;
pub mod canary;
pub mod db;
pub mod export;
pub mod hardening;
pub mod keys;
pub mod policy;
pub mod progress;
pub mod receipt;
pub mod remote;
pub mod root;
pub mod ropa;
pub mod serve;
pub mod telemetry;
pub mod token;

static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Sets the global `--json`: commands that print data print one JSON document instead of text.
pub fn set_json(on: bool) {
    let _ = JSON.set(on);
}

/// Whether `--json` was given.
pub fn json() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// Prints `value` as one line of JSON on stdout (protobuf messages in the proto3 JSON mapping).
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

/// The exit code of a check that ran and failed (a broken chain, a failing policy test, invalid
/// policies, a signed head not in the log), apart from 1 (the command could not run) and 2 (usage,
/// clap's own).
pub fn check_failed() -> std::process::ExitCode {
    std::process::ExitCode::from(3)
}
