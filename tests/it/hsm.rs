//! The root key in a PKCS#11 token (SoftHSM2, Debian's `softhsm2`): `privault serve` with
//! `--root-key-pkcs11` generates the key in a fresh token for a new keyring, wraps the keyring's
//! keys with it inside the token (an epoch roll too), keeps no key file, and opens the same data
//! after restarts; a wrong PIN, a token or key that is not there, or a readable PIN file are
//! clear start-up errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use privault::api::pb;
use privault::api::pb::key_admin_client::KeyAdminClient;
use privault::api::pb::vault_client::VaultClient;

use crate::binary::{channel_to, signal, spawn_served};
use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_privault");
const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 configuration with its own token directory, and a token initialized in it.
struct Token {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    pin_file: PathBuf,
}

fn init_token(label: &str, pin: &str) -> Token {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .env("SOFTHSM2_CONF", &conf)
        .args(["--init-token", "--free", "--label", label])
        .args(["--so-pin", "12345678", "--pin", pin])
        .output()
        .expect("softhsm2-util (Debian's softhsm2, installed by scripts/install-deps)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
    std::fs::set_permissions(&pin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    Token {
        _dir: dir,
        conf,
        pin_file,
    }
}

fn serve(cwd: &Path, token: &Token, label: &str, key: &str, pin_file: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(cwd)
        .env("SOFTHSM2_CONF", &token.conf)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--root-key-pkcs11",
            MODULE,
        ])
        .args([
            "--pkcs11-token",
            label,
            "--pkcs11-key",
            key,
            "--pkcs11-pin-file",
        ])
        .arg(pin_file);
    command
}

async fn client(addr: &str, principal: &str) -> Client {
    VaultClient::with_interceptor(channel_to(addr).await, As::header(Some(principal)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vault_whose_root_key_lives_in_a_token_serves_and_reopens() {
    let token = init_token("privault-test", "87654321");
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();

    let mut served = spawn_served(serve(
        cwd.path(),
        &token,
        "privault-test",
        "root",
        &token.pin_file,
    ));
    assert!(
        served.log.contains("generating the root key"),
        "{}",
        served.log
    );
    let mut account = client(&served.addr, ACCOUNT).await;
    account
        .put_fields(put_request(
            "cust-hsm",
            "account",
            &[("email", "hsm@example.com")],
        ))
        .await
        .unwrap();
    signal(&served.child, "-TERM");
    assert!(served.child.wait().unwrap().success());
    let data = cwd.path().join("privault-data");
    assert!(
        !data.join("dev.key").exists(),
        "no key file: the key is in the token"
    );

    // Restarted: the token unwraps the keyring's keys and the value reads back.
    let mut served = spawn_served(serve(
        cwd.path(),
        &token,
        "privault-test",
        "root",
        &token.pin_file,
    ));
    assert!(
        !served.log.contains("generating the root key"),
        "{}",
        served.log
    );
    let mut account = client(&served.addr, ACCOUNT).await;
    let read = get(&mut account, "cust-hsm", "account", &["email"]).await;
    assert_eq!(read[0].value, "hsm@example.com");
    // An epoch roll wraps the new KEK in the token too; the data reads back after another restart.
    let mut keys = KeyAdminClient::with_interceptor(
        channel_to(&served.addr).await,
        As::header(Some("Operator::\"sec-lead\"")),
    );
    let mut roll = keys
        .roll_epoch(pb::RollEpochRequest {})
        .await
        .unwrap()
        .into_inner();
    while roll.message().await.unwrap().is_some() {}
    signal(&served.child, "-TERM");
    assert!(served.child.wait().unwrap().success());
    let mut served = spawn_served(serve(
        cwd.path(),
        &token,
        "privault-test",
        "root",
        &token.pin_file,
    ));
    let mut account = client(&served.addr, ACCOUNT).await;
    let read = get(&mut account, "cust-hsm", "account", &["email"]).await;
    assert_eq!(read[0].value, "hsm@example.com");
    signal(&served.child, "-TERM");
    assert!(served.child.wait().unwrap().success());

    // A wrong PIN, a missing key and another token's key all stop the start with a clear error.
    let wrong_pin = cwd.path().join("wrong-pin");
    std::fs::write(&wrong_pin, "00000000\n").unwrap();
    std::fs::set_permissions(&wrong_pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let other = init_token("privault-other", "87654321");
    let mut other_key = serve(
        cwd.path(),
        &other,
        "privault-other",
        "root",
        &other.pin_file,
    );
    // The other token has no `root` key: generated only for a new keyring, so refused.
    for (mut command, expect) in [
        (
            serve(cwd.path(), &token, "privault-test", "root", &wrong_pin),
            "wrong PIN",
        ),
        (
            serve(cwd.path(), &token, "privault-test", "nope", &token.pin_file),
            "no key labelled `nope`",
        ),
        (
            serve(cwd.path(), &token, "no-such-token", "root", &token.pin_file),
            "no token labelled",
        ),
        (
            std::mem::replace(&mut other_key, Command::new("true")),
            "no key labelled `root`",
        ),
    ] {
        let out = command.output().unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{expect}: {stderr}");
        assert!(!stderr.contains("87654321"), "the PIN is never printed");
    }
    // A readable PIN file is refused before the token is touched.
    std::fs::set_permissions(&token.pin_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = serve(cwd.path(), &token, "privault-test", "root", &token.pin_file)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));
}
