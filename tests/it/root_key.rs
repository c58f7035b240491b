//! The root key from a passphrase: Argon2id parameters and salt recorded in the keyring, the same
//! passphrase reopens, a wrong one is a clear start-up error that changes nothing, parameters below
//! the floor are refused, and a passphrase change re-wraps the keyring without touching data.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use privault::clock::SystemClock;
use privault::crypto::Passphrase;
use privault::vault::offline::change_passphrase;
use privault::vault::{OpenError, ReadOutcome};

use crate::support::*;

fn with_passphrase(vault: &mut TestVault, text: &str) {
    vault.config.passphrase = Some(Passphrase::new(text.to_owned()));
}

fn keyring_json(vault: &TestVault) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(vault.config.keyring_path()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_passphrase_vault_reopens_only_with_its_passphrase() {
    if skip_on_postgres("reads the keyring file and changes the passphrase offline") {
        return;
    }
    let mut vault = TestVault::new();
    with_passphrase(&mut vault, "correct horse battery staple");
    let server = vault.start().await;
    put_profile(&server, "cust-1").await;
    server.stop().await;

    let kdf = &keyring_json(&vault)["kdf"];
    assert_eq!(kdf["algorithm"], "argon2id");
    assert_eq!(kdf["m_kib"], 65536, "RFC 9106 second recommended option");
    assert!(
        !vault.data_dir().join("dev.key").exists(),
        "no key file is made"
    );

    let keyring_before = std::fs::read(vault.config.keyring_path()).unwrap();
    with_passphrase(&mut vault, "wrong horse");
    let err = vault.open().unwrap_err();
    assert!(
        err.to_string().contains("wrong key file or passphrase"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(vault.config.keyring_path()).unwrap(),
        keyring_before
    );

    with_passphrase(&mut vault, "correct horse battery staple");
    vault.config.key_file = Some(vault.data_dir().join("some.key"));
    assert!(
        matches!(vault.open(), Err(OpenError::DataDir { .. })),
        "key file for a passphrase keyring"
    );
    vault.config.key_file = None;

    let server = vault.start().await;
    let mut account = server.client(ACCOUNT).await;
    assert_eq!(
        get(&mut account, "cust-1", "account", &["email"]).await[0].value,
        "alice@example.com"
    );
    server.stop().await;
}

#[test]
fn parameters_below_the_floor_are_refused() {
    if skip_on_postgres("reads the keyring file and changes the passphrase offline") {
        return;
    }
    let mut vault = TestVault::new();
    with_passphrase(&mut vault, "pass phrase");
    drop(vault.open().unwrap());
    let mut json = keyring_json(&vault);
    json["kdf"]["m_kib"] = 1024.into();
    std::fs::write(vault.config.keyring_path(), json.to_string()).unwrap();
    let err = vault.open().unwrap_err().to_string();
    assert!(err.contains("below the floor"), "{err}");
}

#[test]
fn changing_the_passphrase_rewraps_the_keyring_and_keeps_the_data() {
    if skip_on_postgres("reads the keyring file and changes the passphrase offline") {
        return;
    }
    let mut vault = TestVault::new();
    let subject = privault::domain::SubjectId::new("cust-1".into()).unwrap();
    let email = privault::domain::FieldName::new("email").unwrap();
    let account = privault::vault::CallContext {
        principal: privault::domain::Principal::parse_uid(ACCOUNT).unwrap(),
        request_id: "t".into(),
        peer: None,
    };
    let purpose = privault::domain::Purpose::new("account").unwrap();
    // Start from a key-file keyring (the development key) and move it to a passphrase.
    {
        let v = vault.open().unwrap();
        v.put(
            &account,
            &subject,
            &purpose,
            vec![(email.clone(), secrecy::SecretString::from("a@example.com"))],
        )
        .unwrap();
    }
    let db_files_before: Vec<_> = files_under(&vault.data_dir().join("db"));
    change_passphrase(
        &vault.config,
        &Passphrase::new("new pass".into()),
        &SystemClock,
    )
    .unwrap();
    assert!(keyring_json(&vault)["kdf"].is_object());
    // The old key file no longer opens the keyring; the new passphrase does, with the data intact.
    std::fs::remove_file(vault.data_dir().join("dev.key")).unwrap();
    with_passphrase(&mut vault, "new pass");
    let v = vault.open().unwrap();
    let read = v.get(&account, &subject, &purpose, &[email]).unwrap();
    assert!(matches!(&read[0].outcome, ReadOutcome::Value(x) if x.as_str() == "a@example.com"));
    assert!(!db_files_before.is_empty());
    assert!(audit_actions(v.store()).contains(&"key_change_passphrase".to_owned()));
    drop(v);
    with_passphrase(&mut vault, "old guess");
    assert!(vault.open().is_err());
}

#[test]
fn the_binary_starts_from_a_passphrase_file_and_disables_core_dumps() {
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    let pass = cwd.path().join("pass");
    std::fs::write(&pass, "a long passphrase\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_privault"))
        .current_dir(cwd.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--root-passphrase-file",
            "pass",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    crate::binary::with_server(
        cwd.path(),
        &["--root-passphrase-file", "pass"],
        |pid, log| {
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            let core = limits
                .lines()
                .find(|l| l.starts_with("Max core file size"))
                .unwrap();
            assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
            assert!(!log.contains("DEVELOPMENT root key"), "{log}");
        },
    );
}
