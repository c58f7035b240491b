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
    assert_eq!(out.status.code(), Some(3), "a failed check exits 3");
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
    assert_eq!(out.status.code(), Some(3), "a failed check exits 3");
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
    assert_eq!(out.status.code(), Some(3), "a failed check exits 3");
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

#[test]
fn ropa_prints_the_record_of_processing_as_markdown_and_json() {
    let run = |format: &str, policies: &Path| {
        Command::new(BIN)
            .args(["ropa", "--format", format, "--policies"])
            .arg(policies)
            .output()
            .unwrap()
    };
    let out = run("markdown", &shipped_policies());
    assert!(out.status.success());
    let markdown = String::from_utf8(out.stdout).unwrap();
    assert!(markdown.contains("## Service `recommender`"), "{markdown}");
    assert!(markdown.contains(
        "| personalization | preferences | favorite_categories | full | no | unlimited | all but minor = true |"
    ));
    assert!(markdown.contains(
        "| email_marketing | contact | email | full | yes | unlimited | all but minor = true |"
    ));

    let out = run("json", &shipped_policies());
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = json["services"].as_array().unwrap();
    assert_eq!(services.len(), 10);
    // Subject-conditional reads name the customers they are for.
    let analytics = services
        .iter()
        .find(|s| s["service"] == "analytics_us")
        .unwrap();
    let preferences = analytics["reads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["field"] == "favorite_categories")
        .unwrap_or_else(|| panic!("{analytics}"));
    assert_eq!(
        preferences["customers"], "only region = us",
        "{preferences}"
    );
    let age_band = analytics["reads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["field"] == "birth_date.age_band")
        .unwrap();
    assert_eq!(age_band["customers"], "any");
    // The exceptions to erasure: the key class a hold keeps and who reads it.
    assert_eq!(
        json["legal_hold_purposes"],
        serde_json::json!(["legal_claims"])
    );
    assert!(
        json["key_classes"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"key_class": "tax", "fields": ["tax_id"]})),
        "{}",
        json["key_classes"]
    );
    assert!(markdown.contains("Exceptions to erasure"), "{markdown}");
    assert_eq!(
        json["extract_purposes"],
        serde_json::json!(["model_training"])
    );
    assert!(markdown.contains("Bulk extraction"), "{markdown}");
    let ads = services.iter().find(|s| s["service"] == "ads").unwrap();
    assert!(
        ads["reads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["access"] == "view" && r["consent_required"] == true),
        "{ads}"
    );
    let checkout = services
        .iter()
        .find(|s| s["service"] == "checkout")
        .unwrap();
    let fields: Vec<&str> = checkout["reads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"shipping_address"));
    assert!(!fields.contains(&"birth_date"), "data minimization");

    // A service registered for a purpose the catalog does not declare is refused with its place.
    let dir = copy_of_shipped();
    let catalog = dir.path().join("catalog.toml");
    let text = std::fs::read_to_string(&catalog).unwrap();
    std::fs::write(
        &catalog,
        text.replace("purposes = [\"fraud\"]", "purposes = [\"astrology\"]"),
    )
    .unwrap();
    let out = run("json", dir.path());
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap() + &String::from_utf8(out.stdout).unwrap();
    assert!(stderr.contains("catalog.toml:"), "{stderr}");
    assert!(
        stderr.contains("purpose `astrology`, which is not declared"),
        "{stderr}"
    );
}

fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn json_output_of_validate_test_and_explain_is_one_document_each() {
    let out = privault(&["validate", "--json"], &shipped_policies());
    assert!(out.status.success());
    assert_eq!(json_of(&out)["valid"], true);
    let out = privault(&["test", "--json"], &shipped_policies());
    let report = json_of(&out);
    assert_eq!(report["failed"], 0);
    assert!(report["passed"].as_u64().unwrap() > 10);
    let out = privault(
        &[
            "explain",
            "--json",
            "--principal",
            "Service::\"support\"",
            "--action",
            "read",
            "--field",
            "email",
            "--purpose",
            "support",
        ],
        &shipped_policies(),
    );
    let explained = json_of(&out);
    assert_eq!(explained["decision"]["allowed"], false);
    assert_eq!(explained["outcome"], "MASKED");
    assert_eq!(
        explained["masked_decision"]["policies"][0]["id"],
        "support-masked"
    );
    // Invalid policies: exit 3, and the errors as JSON with their positions.
    let dir = copy_of_shipped();
    std::fs::write(
        dir.path().join("broken.cedar"),
        "permit (principal, action, resource) when {",
    )
    .unwrap();
    let out = privault(&["validate", "--json"], dir.path());
    assert_eq!(out.status.code(), Some(3));
    let invalid = json_of(&out);
    assert_eq!(invalid["valid"], false);
    let first = &invalid["errors"][0];
    assert!(
        first["file"].as_str().unwrap().ends_with("broken.cedar"),
        "{first}"
    );
    assert_eq!(first["line"], 1);
}
