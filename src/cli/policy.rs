//! `privault policy validate | test | explain`: the security team's offline workflow.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use privault::policy::cases::{TestReport, load_cases, run_cases};
use privault::policy::{AccessRequest, Decision, Policies, PolicyError};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Check a policy directory: exit 0 when valid, else print `file:line:column: message` errors.
    Validate {
        /// Policy directory.
        #[arg(long, env = "PRIVAULT_POLICIES", default_value = "./policies")]
        policies: PathBuf,
    },
    /// Run the test cases in `<policies>/tests/*.toml`; exit non-zero on any failure.
    Test {
        /// Policy directory.
        #[arg(long, env = "PRIVAULT_POLICIES", default_value = "./policies")]
        policies: PathBuf,
        /// Do not fail when a policy determines no test case.
        #[arg(long)]
        allow_uncovered: bool,
    },
    /// Explain the decision for one request: decision, determining policies with their source
    /// positions, and evaluation errors.
    Explain {
        /// Policy directory.
        #[arg(long, env = "PRIVAULT_POLICIES", default_value = "./policies")]
        policies: PathBuf,
        /// The caller, e.g. `Service::"checkout"`.
        #[arg(long)]
        principal: String,
        /// read (then read_masked when denied), read_masked, write, delete or shred.
        #[arg(long, default_value = "read")]
        action: String,
        /// The field (per-field actions).
        #[arg(long)]
        field: Option<String>,
        /// The stated purpose (per-field actions).
        #[arg(long)]
        purpose: Option<String>,
        /// A purpose the subject consented to; repeat for several.
        #[arg(long = "consent")]
        consents: Vec<String>,
        /// A purpose the subject withdrew; repeat for several.
        #[arg(long = "withdrawn")]
        withdrawn: Vec<String>,
        /// The stated reason (shred).
        #[arg(long)]
        reason: Option<String>,
    },
    #[command(flatten)]
    Remote(super::remote::RemoteCommand),
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Remote(remote) => super::remote::run(remote),
        PolicyCommand::Validate { policies } => validate(&policies),
        PolicyCommand::Test {
            policies,
            allow_uncovered,
        } => test(&policies, allow_uncovered),
        PolicyCommand::Explain {
            policies,
            principal,
            action,
            field,
            purpose,
            consents,
            withdrawn,
            reason,
        } => {
            let Some(set) = load(&policies)? else {
                return Ok(ExitCode::FAILURE);
            };
            let request = AccessRequest::parse(
                &set,
                &principal,
                &action,
                field.as_deref(),
                purpose.as_deref(),
                privault::policy::RecordedConsents {
                    granted: &consents,
                    withdrawn: &withdrawn,
                },
                reason.as_deref(),
            )
            .map_err(anyhow::Error::msg)?;
            explain(&set, request);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_errors(dir: &Path, errors: &privault::diagnostic::SourceErrors) {
    for e in &errors.0 {
        println!(
            "{}:{}:{}: {}",
            dir.join(&e.file).display(),
            e.line,
            e.column,
            e.message
        );
    }
}

/// Loads `dir`, printing its errors; `None` when it is invalid.
pub fn load(dir: &Path) -> anyhow::Result<Option<Policies>> {
    match Policies::load(dir) {
        Ok(p) => Ok(Some(p)),
        Err(PolicyError::Invalid(errors)) => {
            print_errors(dir, &errors);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

fn validate(dir: &Path) -> anyhow::Result<ExitCode> {
    let Some(set) = load(dir)? else {
        return Ok(super::check_failed());
    };
    println!(
        "{}: valid ({} policies, version {})",
        dir.display(),
        set.policy_count(),
        set.version()
    );
    Ok(ExitCode::SUCCESS)
}

fn test(dir: &Path, allow_uncovered: bool) -> anyhow::Result<ExitCode> {
    let Some(set) = load(dir)? else {
        return Ok(super::check_failed());
    };
    let cases = match load_cases(dir, &set) {
        Ok(c) => c,
        Err(PolicyError::Invalid(errors)) => {
            print_errors(dir, &errors);
            return Ok(super::check_failed());
        }
        Err(e) => return Err(e.into()),
    };
    let report = run_cases(&set, cases);
    print_report(&set, &report);
    let failed = report.failures().count();
    let uncovered_fails = !allow_uncovered && !report.uncovered.is_empty();
    Ok(if failed == 0 && !uncovered_fails {
        ExitCode::SUCCESS
    } else {
        super::check_failed()
    })
}

fn print_report(set: &Policies, report: &TestReport) {
    for r in report.failures() {
        println!("FAIL {} `{}`", r.case.pos, r.case.name);
        println!("  request:  {}", r.case.request);
        let expected = if r.case.expect_allow { "allow" } else { "deny" };
        match &r.case.expect_policies {
            Some(p) => println!("  expected: {expected} by [{}]", p.join(", ")),
            None => println!("  expected: {expected}"),
        }
        print_decision(set, "  decided:  ", &r.decision);
    }
    let failed = report.failures().count();
    println!("{} passed, {failed} failed", report.results.len() - failed);
    if !report.uncovered.is_empty() {
        println!(
            "uncovered: no case is decided by {} (add cases, or pass --allow-uncovered)",
            report.uncovered.join(", ")
        );
    }
}

fn print_decision(set: &Policies, prefix: &str, decision: &Decision) {
    let verdict = if decision.allowed { "allow" } else { "deny" };
    println!("{prefix}{verdict}");
    if decision.policy_ids.is_empty() && !decision.allowed {
        println!("    no policy permits it (default deny)");
    }
    for id in decision.policy_ids.iter() {
        match set.location(id) {
            Some(pos) => println!("    {id}  {pos}"),
            None => println!("    {id}"),
        }
    }
    for e in &decision.errors {
        println!("    evaluation error (counts as deny): {e}");
    }
}

fn explain(set: &Policies, request: AccessRequest) {
    println!("policy version {}", set.version());
    println!("request: {request}");
    let decision = set.evaluate(&request);
    print_decision(set, "decision: ", &decision);
    if let AccessRequest::Field {
        principal,
        action: privault::policy::FieldAction::Read,
        field,
        purpose,
        consents,
        withdrawn,
    } = request
        && !decision.allowed
    {
        let masked = AccessRequest::Field {
            principal,
            action: privault::policy::FieldAction::ReadMasked,
            field,
            purpose,
            consents,
            withdrawn,
        };
        println!("read denied, so the vault asks: {masked}");
        let masked_decision = set.evaluate(&masked);
        print_decision(set, "decision: ", &masked_decision);
        println!(
            "outcome of a read: {}",
            if masked_decision.allowed {
                "MASKED"
            } else {
                "DENIED"
            }
        );
    } else if decision.allowed {
        println!("outcome: allowed");
    }
}
