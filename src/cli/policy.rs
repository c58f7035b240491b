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
        /// An opt-out signal the subject sent (gpc, do_not_sell, object_to_profiling); repeat.
        #[arg(long = "signal")]
        signals: Vec<String>,
        /// The stated reason (shred, hold).
        #[arg(long)]
        reason: Option<String>,
        /// The key class of a hold (default: all).
        #[arg(long)]
        key_class: Option<String>,
        /// A hold's release rather than its placement.
        #[arg(long)]
        release: bool,
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
            signals,
            reason,
            key_class,
            release,
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
                privault::policy::RequestFacts {
                    granted: &consents,
                    withdrawn: &withdrawn,
                    signals: &signals,
                    key_class: key_class.as_deref(),
                    release,
                    ..Default::default()
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
    if super::json() {
        let errors: Vec<_> = errors
            .0
            .iter()
            .map(|e| {
                serde_json::json!({
                    "file": dir.join(&e.file), "line": e.line, "column": e.column,
                    "message": e.message,
                })
            })
            .collect();
        let _ = super::print_json(&serde_json::json!({ "valid": false, "errors": errors }));
        return;
    }
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
    if super::json() {
        super::print_json(&serde_json::json!({
            "valid": true, "policies": set.policy_count(), "version": set.version(),
        }))?;
    } else {
        println!(
            "{}: valid ({} policies, version {})",
            dir.display(),
            set.policy_count(),
            set.version()
        );
    }
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

fn decision_json(set: &Policies, decision: &Decision) -> serde_json::Value {
    serde_json::json!({
        "allowed": decision.allowed,
        "policies": decision.policy_ids.iter().map(|id| serde_json::json!({
            "id": id, "at": set.location(id).map(|p| p.to_string()),
        })).collect::<Vec<_>>(),
        "errors": decision.errors,
    })
}

fn print_report(set: &Policies, report: &TestReport) {
    if super::json() {
        let failures: Vec<_> = report
            .failures()
            .map(|r| {
                serde_json::json!({
                    "case": r.case.name,
                    "at": r.case.pos.to_string(),
                    "request": r.case.request.to_string(),
                    "expected": if r.case.expect_allow { "allow" } else { "deny" },
                    "expected_policies": r.case.expect_policies,
                    "decided": decision_json(set, &r.decision),
                })
            })
            .collect();
        let _ = super::print_json(&serde_json::json!({
            "passed": report.results.len() - failures.len(),
            "failed": failures.len(),
            "failures": failures,
            "uncovered": report.uncovered,
        }));
        return;
    }
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

/// The read-masked request the vault asks when `request` is a denied read.
fn masked_of(request: &AccessRequest, decision: &Decision) -> Option<AccessRequest> {
    match request {
        AccessRequest::Field {
            principal,
            action: privault::policy::FieldAction::Read,
            field,
            purpose,
            consents,
            withdrawn,
            signals,
            subject,
        } if !decision.allowed => Some(AccessRequest::Field {
            principal: principal.clone(),
            action: privault::policy::FieldAction::ReadMasked,
            field: field.clone(),
            purpose: purpose.clone(),
            consents: consents.clone(),
            withdrawn: withdrawn.clone(),
            signals: signals.clone(),
            subject: subject.clone(),
        }),
        _ => None,
    }
}

fn explain(set: &Policies, request: AccessRequest) {
    let decision = set.evaluate(&request);
    let masked = masked_of(&request, &decision).map(|m| {
        let d = set.evaluate(&m);
        (m, d)
    });
    let outcome = match &masked {
        Some((_, d)) if d.allowed => "MASKED",
        Some(_) => "DENIED",
        None if decision.allowed => "allowed",
        None => "denied",
    };
    if super::json() {
        let mut out = serde_json::json!({
            "policy_version": set.version(),
            "request": request.to_string(),
            "decision": decision_json(set, &decision),
            "outcome": outcome,
        });
        if let Some((m, d)) = &masked {
            out["masked_request"] = m.to_string().into();
            out["masked_decision"] = decision_json(set, d);
        }
        let _ = super::print_json(&out);
        return;
    }
    println!("policy version {}", set.version());
    println!("request: {request}");
    print_decision(set, "decision: ", &decision);
    if let Some((m, d)) = &masked {
        println!("read denied, so the vault asks: {m}");
        print_decision(set, "decision: ", d);
        println!("outcome of a read: {outcome}");
    } else if decision.allowed {
        println!("outcome: allowed");
    }
}
