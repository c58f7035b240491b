//! The shipped packaging. The systemd unit: the hardening the operations guide promises is in it,
//! and `systemd-analyze verify` accepts it (where the tool exists; the unit's `ExecStart` is
//! pointed at the binary under test, since verify checks that it is executable). The Dockerfile:
//! multi-stage, a distroless non-root final image, a private data directory.

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
        "--check-config\n",
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

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_non_root_without_a_shell() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile");
    let dockerfile = std::fs::read_to_string(path).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: {stages:?}");
    // The image that runs has no shell and no package manager, and is not root.
    assert!(stages[1].contains("distroless") && stages[1].contains("nonroot"));
    let final_stage = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(final_stage.contains("\nUSER 65532:65532\n"));
    assert!(
        !final_stage.contains("\nRUN "),
        "nothing runs in the final image"
    );
    assert!(final_stage.contains("ENTRYPOINT [\"/usr/local/bin/privault\"]"));
    assert!(final_stage.contains("STOPSIGNAL SIGTERM"));
    // The data directory is private and owned by the user the vault runs as.
    assert!(dockerfile.contains("chmod 0700 /out/var/lib/privault"));
    assert!(dockerfile.contains("chown 65532:65532 /out/var/lib/privault"));
    assert!(dockerfile.contains("cargo build --locked --release"));
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .unwrap();
    for kept_out in ["target", "privault-data"] {
        assert!(
            ignore.lines().any(|l| l == kept_out),
            "{kept_out} stays out of the build context"
        );
    }
}
