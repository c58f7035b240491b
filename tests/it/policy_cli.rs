//! The security team's offline workflow through the binary: `policy test` and `policy explain`.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::shipped_policies;

const BIN: &str = env!("CARGO_BIN_EXE_privault");

fn privault(args: &[&str], policies: &Path) -> Output {
    Command::new(BIN)
        .args(["policy"])
        .args(args)
        .arg("--policies")
        .arg(policies)
        .output()
        .unwrap()
}

/// A copy of the shipped policy directory, tests included.
fn copy_of_shipped() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    for entry in std::fs::read_dir(shipped_policies()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::copy(
        shipped_policies().join("tests/shop.toml"),
        dir.path().join("tests/shop.toml"),
    )
    .unwrap();
    dir
}

#[test]
fn shipped_tests_pass_and_cover_every_policy() {
    let out = privault(&["test"], &shipped_policies());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    assert!(!stdout.contains("uncovered"), "{stdout}");
}

#[test]
fn a_failing_case_prints_request_expectation_and_decision() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("tests/wrong.toml"),
        r#"[[case]]
name = "the recommender reads payment data"
principal = 'Service::"recommender"'
action = "read"
field = "payment_card"
purpose = "personalization"
expect = "allow"
"#,
    )
    .unwrap();
    let out = privault(&["test"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL tests/wrong.toml:1:1 `the recommender reads payment data`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("request:  Service::\"recommender\" read Field::\"payment_card\""),
        "{stdout}"
    );
    assert!(stdout.contains("expected: allow"), "{stdout}");
    assert!(
        stdout.contains("no-payment-for-marketing  guards.cedar:4:1"),
        "{stdout}"
    );
    assert!(stdout.contains(" passed, 1 failed"), "{stdout}");
}

#[test]
fn an_untested_policy_fails_the_run_unless_allowed() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("extra.cedar"),
        "@id(\"fraud-reads-names\")\npermit (principal == Service::\"fraud\", action == Action::\"read\", resource in Category::\"identity\");\n",
    )
    .unwrap();
    let out = privault(&["test"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("uncovered: no case is decided by fraud-reads-names"),
        "{stdout}"
    );
    assert!(
        privault(&["test", "--allow-uncovered"], dir.path())
            .status
            .success()
    );
}

#[test]
fn a_malformed_case_is_reported_at_its_position() {
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("tests/typo.toml"),
        "[[case]]\nname = \"typo\"\nprincipal = 'Service::\"checkout\"'\naction = \"read\"\nfield = \"emial\"\npurpose = \"fulfillment\"\nexpect = \"allow\"\n",
    )
    .unwrap();
    let out = privault(&["test"], dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("tests/typo.toml:1:1: case `typo`: unknown field `emial`"),
        "{stdout}"
    );
}

#[test]
fn explain_names_the_policies_and_the_read_outcome() {
    let out = privault(
        &[
            "explain",
            "--principal",
            "Service::\"support\"",
            "--field",
            "email",
            "--purpose",
            "support",
        ],
        &shipped_policies(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("no policy permits it (default deny)"),
        "{stdout}"
    );
    assert!(stdout.contains("support-masked  shop.cedar:"), "{stdout}");
    assert!(stdout.contains("outcome of a read: MASKED"), "{stdout}");
}
