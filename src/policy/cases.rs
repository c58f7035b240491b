//! Policy test cases: `tests/*.toml` in the policy directory, each a list of `[[case]]` tables
//! with a request and its expected decision. Run by `privault policy test`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{AccessRequest, Decision, Policies, PolicyError};
use crate::diagnostic::{SourceError, SourceErrors, SourcePos};

/// The test directory inside a policy directory.
pub const TESTS_DIR: &str = "tests";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default, rename = "case")]
    cases: Vec<Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: String,
    principal: String,
    action: String,
    field: Option<String>,
    purpose: Option<String>,
    #[serde(default)]
    consents: Vec<String>,
    #[serde(default)]
    withdrawn: Vec<String>,
    /// Opt-out signals the subject sent: `["gpc"]`.
    #[serde(default)]
    signals: Vec<String>,
    /// For `hold`: the key class (or `all`, the default) and whether it is a release.
    key_class: Option<String>,
    #[serde(default)]
    release: bool,
    /// The subject's policy attributes: `{ region = "eu", minor = true }`, each optional.
    #[serde(default)]
    subject: RawSubject,
    reason: Option<String>,
    expect: Expect,
    policies: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubject {
    region: Option<String>,
    minor: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allow,
    Deny,
}

/// One test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    /// Where it is written.
    pub pos: SourcePos,
    /// Its name.
    pub name: String,
    /// The request.
    pub request: AccessRequest,
    /// Whether the request must be allowed.
    pub expect_allow: bool,
    /// The exact determining policies, when the case names them.
    pub expect_policies: Option<Vec<String>>,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case.
    pub case: TestCase,
    /// What the policies decided.
    pub decision: Decision,
    /// Whether that is what the case expects.
    pub passed: bool,
}

/// The outcome of a test run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestReport {
    /// Every case in file order.
    pub results: Vec<CaseResult>,
    /// Policies that determined no case: untested rules.
    pub uncovered: Vec<String>,
}

impl TestReport {
    /// The failed cases.
    pub fn failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.results.iter().filter(|r| !r.passed)
    }
}

/// Reads every `tests/*.toml` of the policy directory `dir`, checking each case against `policies`.
pub fn load_cases(dir: &Path, policies: &Policies) -> Result<Vec<TestCase>, PolicyError> {
    let tests = dir.join(TESTS_DIR);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PolicyError::Io { path, source }
    };
    let mut files: Vec<_> = fs::read_dir(&tests)
        .map_err(io(&tests))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    let mut errors = Vec::new();
    for path in files {
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let name = format!(
            "{TESTS_DIR}/{}",
            path.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        let file: CaseFile = match toml::from_str(&text) {
            Ok(f) => f,
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                errors.push(SourceError::at_offset(
                    &name,
                    &text,
                    offset,
                    e.message().to_lowercase(),
                ));
                continue;
            }
        };
        for raw in file.cases {
            let pos = SourcePos::at_offset(&name, &text, raw.span().start);
            let raw = raw.into_inner();
            match AccessRequest::parse(
                policies,
                &raw.principal,
                &raw.action,
                raw.field.as_deref(),
                raw.purpose.as_deref(),
                crate::policy::RequestFacts {
                    granted: &raw.consents,
                    withdrawn: &raw.withdrawn,
                    signals: &raw.signals,
                    subject: crate::catalog::SubjectAttributes {
                        region: raw.subject.region.clone(),
                        minor: raw.subject.minor,
                    },
                    key_class: raw.key_class.as_deref(),
                    release: raw.release,
                },
                raw.reason.as_deref(),
            ) {
                Ok(request) => cases.push(TestCase {
                    pos,
                    name: raw.name,
                    request,
                    expect_allow: raw.expect == Expect::Allow,
                    expect_policies: raw.policies.map(|mut p| {
                        p.sort();
                        p
                    }),
                }),
                Err(message) => errors.push(SourceError {
                    file: pos.file,
                    line: pos.line,
                    column: pos.column,
                    message: format!("case `{}`: {message}", raw.name),
                }),
            }
        }
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(PolicyError::Invalid(SourceErrors(errors)))
    }
}

/// Runs `cases` against `policies`.
pub fn run_cases(policies: &Policies, cases: Vec<TestCase>) -> TestReport {
    let mut determining = BTreeSet::new();
    let results: Vec<CaseResult> = cases
        .into_iter()
        .map(|case| {
            let decision = policies.evaluate(&case.request);
            determining.extend(decision.policy_ids.iter().cloned());
            let policies_ok = case
                .expect_policies
                .as_ref()
                .is_none_or(|expected| expected[..] == decision.policy_ids[..]);
            let passed =
                decision.allowed == case.expect_allow && policies_ok && decision.errors.is_empty();
            CaseResult {
                case,
                decision,
                passed,
            }
        })
        .collect();
    let uncovered = policies
        .policy_ids()
        .filter(|id| !determining.contains(*id))
        .map(str::to_owned)
        .collect();
    TestReport { results, uncovered }
}
