//! The binary's subcommands other than `serve`.

pub mod audit;
pub mod backup;
pub mod bench;
pub mod export;
pub mod hardening;
pub mod keys;
pub mod policy;
pub mod progress;
pub mod remote;
pub mod root;
pub mod ropa;
pub mod serve;
pub mod telemetry;
pub mod token;

/// The exit code of a check that ran and failed (a broken chain, a failing policy test, invalid
/// policies, a signed head not in the log), apart from 1 (the command could not run) and 2 (usage,
/// clap's own).
pub fn check_failed() -> std::process::ExitCode {
    std::process::ExitCode::from(3)
}
