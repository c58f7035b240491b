//! The shipped systemd unit: the hardening the operations guide promises is in it, and
//! `systemd-analyze verify` accepts it (where the tool exists; the unit's `ExecStart` is pointed
//! at the binary under test, since verify checks that it is executable).

use std::path::Path;
use std::process::Command;

use crate::binary::BIN;

#[test]
fn the_systemd_unit_is_hardened_and_verifies() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/privault.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    for directive in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LimitCORE=0",
        "LimitMEMLOCK=infinity",
        "StateDirectory=privault",
        "StateDirectoryMode=0700",
        "UMask=0077",
        "CapabilityBoundingSet=\n",
        "KillSignal=SIGTERM",
    ] {
        assert!(
            unit.contains(directive),
            "the unit lacks `{}`",
            directive.trim()
        );
    }
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed here; only the directives were checked");
        return;
    };
    assert!(probe.status.success());
    let dir = tempfile::tempdir().unwrap();
    let tested = dir.path().join("privault.service");
    std::fs::write(&tested, unit.replace("/usr/local/bin/privault", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&tested)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("privault.service:"),
        "systemd-analyze found fault with the unit:\n{stderr}"
    );
}
