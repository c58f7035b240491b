//! The `privault` binary: `serve` runs the vault; `policy validate/test/explain` serve the security team.
//! Thin: parses flags, sets up logging and signals, and calls the library.

use std::process::ExitCode;

mod cli;

// glibc's malloc serialized the runtime workers and the audit committer on its arena locks (futex
// waits in a profile of the read path); mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "privault",
    version,
    about = "An encrypted personal-data vault with purpose-bound Cedar policies"
)]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one object per line, with
    /// the call's span: rpc, trace id, request id) for log pipelines
    #[arg(long, global = true, env = "PRIVAULT_LOG_FORMAT", value_enum, default_value_t = cli::telemetry::LogFormat::Text)]
    log_format: cli::telemetry::LogFormat,
    /// Print data as JSON (one document, or JSON Lines for streams) instead of text, on every
    /// command that prints data
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the vault.
    Serve(Box<cli::serve::ServeArgs>),
    /// Work with a policy directory.
    #[command(subcommand)]
    Policy(cli::policy::PolicyCommand),
    /// Export everything stored about one customer from a running vault, as JSON.
    Export(cli::export::ExportArgs),
    /// The auditors' tools: verify, export, signed head, query.
    #[command(subcommand)]
    Audit(cli::audit::AuditCommand),
    /// The key lifecycle: change the root passphrase, roll the KEK epoch, rotate a subject's key.
    #[command(subcommand)]
    Keys(cli::keys::KeysCommand),
    /// The PostgreSQL backend's schema: apply its migrations, show its version.
    #[command(subcommand)]
    Db(cli::db::DbCommand),
    /// The load tool: throughput and latency of GetFields/PutFields against the gRPC floor.
    Bench(cli::bench::BenchArgs),
    /// Backups of `db/` and the audit segments: create (running or stopped vault), verify, restore.
    #[command(subcommand)]
    Backup(cli::backup::BackupCommand),
    /// Bearer tokens for the token identity mode.
    #[command(subcommand)]
    Token(cli::token::TokenCommand),
    /// Canary subjects: mark a decoy whose every read raises the alarm.
    #[command(subcommand)]
    Canary(cli::canary::CanaryCommand),
    /// Erasure receipts: verify one offline.
    #[command(subcommand)]
    Receipt(cli::receipt::ReceiptCommand),
    /// Print the record of processing (GDPR Art. 30) derived from catalog and policies.
    Ropa(cli::ropa::RopaArgs),
    /// Print a shell completion script (e.g. `privault completions bash > /etc/bash_completion.d/privault`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (privault.1 and one per subcommand, e.g. privault-backup-create.1) into DIR.
    Man {
        /// The directory to write into (created when absent).
        dir: std::path::PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::set_json(cli.json);
    let otlp = match &cli.command {
        Command::Serve(args) => match args.otlp_endpoint() {
            Ok(endpoint) => endpoint,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    // Flushes the last spans when main returns.
    let _telemetry = match cli::telemetry::init(cli.log_format, otlp.as_deref()) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // A command whose output goes to a pipe closed early (`privault audit export | head`) ends
    // quietly, as Unix tools do, instead of panicking on EPIPE. Not `serve`: a log reader going
    // away must not kill the vault.
    if !matches!(cli.command, Command::Serve(_)) {
        sigpipe::reset();
    }
    // Every command may hold keys or values (exports, audit tools with the root key, remote reads,
    // tokens): none may leave a core dump.
    cli::hardening::disable_core_dumps();
    let result = match cli.command {
        Command::Serve(args) => cli::serve::run(*args),
        Command::Policy(command) => cli::policy::run(command),
        Command::Audit(command) => cli::audit::run(command),
        Command::Export(args) => cli::export::run(args),
        Command::Ropa(args) => cli::ropa::run(args),
        Command::Receipt(command) => cli::receipt::run(command),
        Command::Canary(command) => cli::canary::run(command),
        Command::Token(command) => cli::token::run(command),
        Command::Bench(args) => cli::bench::run(args),
        Command::Db(command) => cli::db::run(command),
        Command::Keys(command) => cli::keys::run(command),
        Command::Backup(command) => cli::backup::run(command),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "privault",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir))
            .map(|()| ExitCode::SUCCESS)
            .map_err(|e| anyhow::anyhow!("cannot write the man pages into {}: {e}", dir.display())),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    /// Every (sub)command with its path, e.g. `privault keys rotate-dek`.
    fn commands(command: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), command.clone()));
        for sub in command.get_subcommands() {
            commands(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    /// The `privault ...` code spans of a paragraph of prose.
    fn inline_commands(paragraph: &str, found: &mut Vec<String>) {
        for (i, span) in paragraph.split('`').enumerate() {
            // Odd pieces are inside backticks; alternatives (`a|b`) and elisions are prose.
            if i % 2 == 1
                && span.starts_with("privault ")
                && !span.contains('|')
                && !span.contains("...")
                && !span.contains('…')
            {
                found.push(span.to_owned());
            }
        }
    }

    /// Every `privault ...` command a document shows: lines of its code blocks (joined over `\`
    /// continuations, after a `$ ` prompt, up to a comment, a redirection, a pipe or an elision)
    /// and the code spans of its prose.
    fn documented_commands(doc: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut in_block = false;
        let mut pending = String::new();
        let mut paragraph = String::new();
        for line in doc.lines() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                inline_commands(&std::mem::take(&mut paragraph), &mut found);
                continue;
            }
            let code = if in_block {
                Some(line.trim())
            } else {
                line.strip_prefix("    ")
                    .filter(|_| paragraph.is_empty())
                    .map(str::trim)
            };
            let Some(code) = code else {
                if line.trim().is_empty() {
                    inline_commands(&std::mem::take(&mut paragraph), &mut found);
                } else {
                    paragraph.push(' ');
                    paragraph.push_str(line.trim());
                }
                continue;
            };
            let code = code.strip_prefix("$ ").unwrap_or(code);
            if let Some(head) = code.strip_suffix('\\') {
                pending.push_str(head);
                continue;
            }
            pending.push_str(code);
            let command = std::mem::take(&mut pending);
            let command = [" # ", " > ", " | ", " && ", " ...", "; "]
                .iter()
                .fold(command.as_str(), |c, cut| c.split(cut).next().unwrap_or(c))
                .trim()
                .to_owned();
            if command.starts_with("privault ") {
                found.push(command);
            }
        }
        inline_commands(&paragraph, &mut found);
        found
    }

    #[test]
    fn every_documented_command_parses() {
        let mut checked = 0;
        let mut failures = Vec::new();
        for (name, doc) in [
            ("README.md", include_str!("../README.md")),
            ("docs/operations.md", include_str!("../docs/operations.md")),
            ("docs/policies.md", include_str!("../docs/policies.md")),
            ("SECURITY.md", include_str!("../SECURITY.md")),
        ] {
            for command in documented_commands(doc) {
                // Usage brackets mark optional parts: check them as given.
                let command = command
                    .replace("$(date +%F)", "2026-12-01")
                    .replace(['[', ']'], "");
                let words = shell_words::split(&command)
                    .unwrap_or_else(|e| panic!("{name}: `{command}`: {e}"));
                match super::Cli::try_parse_from(&words) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            clap::error::ErrorKind::DisplayHelp
                                | clap::error::ErrorKind::DisplayVersion
                                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                                // Prose names a command whose caller flags (`--as`, or
                                // PRIVAULT_PRINCIPAL) are given elsewhere; every flag it does
                                // show must still exist and take what it is given.
                                | clap::error::ErrorKind::MissingRequiredArgument
                        ) => {}
                    Err(e) => failures.push(format!("{name}: `{command}`:\n{e}")),
                }
                checked += 1;
            }
        }
        assert!(
            failures.is_empty(),
            "documented commands that do not parse:\n{}",
            failures.join("\n")
        );
        eprintln!("{checked} documented commands parse");
        assert!(checked > 40, "only {checked} documented commands found");
    }

    #[test]
    fn one_flag_name_per_concept_across_commands() {
        let mut all = Vec::new();
        commands(&super::Cli::command(), "privault".into(), &mut all);
        for (path, command) in &all {
            for arg in command.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                // A customer id is --subject-id, an audit pseudonym --pseudonym.
                assert_ne!(long, "subject", "{path}: say --subject-id or --pseudonym");
                // The server's token file holds hashes; a client's holds its token.
                if long == "token-file" {
                    assert_eq!(
                        path, "privault serve",
                        "{path}: a client's is --bearer-token-file"
                    );
                }
            }
        }
        assert!(all.iter().any(|(p, _)| p == "privault keys rotate-dek"));
    }
}
