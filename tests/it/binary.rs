//! The `privault` binary as a user runs it: `serve` on the embedded default layout (dev key
//! generated, loopback only, health and reflection served, clean exit on SIGTERM) and
//! `policy validate`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::shipped_policies;

pub const BIN: &str = env!("CARGO_BIN_EXE_privault");

/// A running `privault serve` child, its log so far and its address.
pub struct Served {
    pub child: Child,
    pub log: String,
    pub addr: String,
    lines: mpsc::Receiver<String>,
}

/// Starts `privault serve` in `cwd` and waits for its `listening on ADDR` line.
fn start(cwd: &Path, extra: &[&str]) -> Served {
    let mut command = Command::new(BIN);
    command
        .current_dir(cwd)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(extra);
    spawn_served(command)
}

/// Spawns `command` (which runs `privault serve`), following its log until it listens.
#[expect(
    clippy::zombie_processes,
    reason = "the caller waits through `terminate`"
)]
pub fn spawn_served(mut command: Command) -> Served {
    if !command.get_envs().any(|(k, _)| k == "RUST_LOG") {
        command.env("RUST_LOG", "info");
    }
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut log = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no `listening on` line:\n{log}"));
        log.push_str(&line);
        log.push('\n');
        // Text or JSON: the address ends at a space or the closing quote.
        if let Some(rest) = line.split("listening on ").nth(1) {
            let addr = rest
                .split(|c: char| c == '"' || c.is_whitespace())
                .next()
                .unwrap_or_default()
                .to_owned();
            return Served {
                child,
                log,
                addr,
                lines: rx,
            };
        }
    }
}

/// Runs `privault serve` in `cwd` with `extra` flags, calls `check` with its pid and log once it
/// listens, then stops it with SIGTERM and expects a clean exit.
pub fn with_server(cwd: &Path, extra: &[&str], check: impl FnOnce(u32, &str)) {
    let mut served = start(cwd, extra);
    check(served.child.id(), &served.log);
    assert!(terminate(&mut served.child).success());
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    signal(child, "-TERM");
    child.wait().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_on_the_embedded_default_and_stops_on_sigterm() {
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    let mut served = start(cwd.path(), &[]);
    assert!(
        served.log.contains("DEVELOPMENT root key"),
        "{}",
        served.log
    );
    let addr = served.addr.clone();
    assert!(cwd.path().join("privault-data/dev.key").exists());

    let mut health = HealthClient::new(channel_to(&addr).await);
    for service in ["", "privault.v1.Vault"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service `{service}`");
    }
    assert_eq!(
        reflected_services(channel_to(&addr).await).await,
        vec![
            "grpc.health.v1.Health".to_owned(),
            "grpc.reflection.v1.ServerReflection".to_owned(),
            "privault.v1.Audit".to_owned(),
            "privault.v1.Backup".to_owned(),
            "privault.v1.KeyAdmin".to_owned(),
            "privault.v1.PolicyAdmin".to_owned(),
            "privault.v1.Vault".to_owned(),
        ]
    );
    assert!(terminate(&mut served.child).success());
}

pub async fn channel_to(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// The services a stock client (grpcurl, grpcio) discovers through server reflection.
async fn reflected_services(channel: tonic::transport::Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    names
}

/// Runs `privault serve` with `args` in `cwd`, expects it to refuse to start, and returns stderr.
fn refused_serve(cwd: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .current_dir(cwd)
        .arg("serve")
        .args(args)
        .arg("--policies")
        .arg(shipped_policies())
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn serve_refuses_a_non_loopback_address_without_tls() {
    let cwd = tempfile::tempdir().unwrap();
    assert!(refused_serve(cwd.path(), &["--listen", "0.0.0.0:0"]).contains("loopback"));
    assert!(!cwd.path().join("privault-data").exists());
}

#[test]
fn metrics_listen_serves_on_loopback_and_is_refused_elsewhere_without_tls() {
    let cwd = tempfile::tempdir().unwrap();
    assert!(
        refused_serve(cwd.path(), &["--metrics-listen", "0.0.0.0:0"])
            .contains("refusing to serve metrics")
    );

    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    with_server(
        cwd.path(),
        &["--metrics-listen", "127.0.0.1:0"],
        |_, log| {
            let addr = log
                .split("metrics on http://")
                .nth(1)
                .and_then(|rest| rest.split("/metrics").next())
                .unwrap_or_else(|| panic!("no metrics line:\n{log}"));
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            stream.read_to_string(&mut text).unwrap();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(
                text.contains("privault_process_resident_memory_bytes"),
                "{text}"
            );
        },
    );
}

#[test]
fn policy_validate_accepts_the_shipped_policies_and_points_at_errors() {
    let ok = Command::new(BIN)
        .args(["policy", "validate", "--policies"])
        .arg(shipped_policies())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );

    let dir = tempfile::tempdir().unwrap();
    for f in [
        "schema.cedarschema",
        "catalog.toml",
        "shop.cedar",
        "guards.cedar",
    ] {
        std::fs::copy(shipped_policies().join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("typo.cedar"),
        "@id(\"typo\")\npermit (principal, action == Action::\"read\", resource == Field::\"emial\");\n",
    )
    .unwrap();
    let bad = Command::new(BIN)
        .args(["policy", "validate", "--policies"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let out = String::from_utf8_lossy(&bad.stdout);
    assert!(out.contains("typo.cedar:2:"), "{out}");
    assert!(out.contains("Field::\"emial\"` is not declared"), "{out}");
}

pub fn signal(child: &Child, name: &str) {
    assert!(
        // bash's builtin `kill`: the procps binary need not be installed.
        Command::new("bash")
            .arg("-c")
            .arg(format!("kill {name} {}", child.id()))
            .status()
            .unwrap()
            .success()
    );
}

/// Waits for a log line containing `needle`.
fn wait_for_line(served: &Served, needle: &str) -> String {
    loop {
        let line = served
            .lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no log line with `{needle}`"));
        if line.contains(needle) {
            return line;
        }
    }
}

async fn active_version(addr: &str) -> u64 {
    use privault::api::pb::policy_admin_client::PolicyAdminClient;
    let mut request = tonic::Request::new(privault::api::pb::GetActivePoliciesRequest {});
    request.metadata_mut().insert(
        "x-privault-principal",
        "Operator::\"alice\"".parse().unwrap(),
    );
    PolicyAdminClient::new(channel_to(addr).await)
        .get_active_policies(request)
        .await
        .unwrap()
        .into_inner()
        .version
        .unwrap()
        .version
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_a_valid_directory_and_keeps_the_set_on_an_invalid_one() {
    let cwd = tempfile::tempdir().unwrap();
    let policies = cwd.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    for entry in std::fs::read_dir(shipped_policies()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policies.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut served = start(cwd.path(), &[]);
    let addr = served.addr.clone();
    assert_eq!(active_version(&addr).await, 1);

    let guards = policies.join("guards.cedar");
    let text = std::fs::read_to_string(&guards).unwrap() + "// reviewed by the security team\n";
    std::fs::write(&guards, text).unwrap();
    signal(&served.child, "-HUP");
    wait_for_line(&served, "policies reloaded");
    assert_eq!(active_version(&addr).await, 2);

    std::fs::write(
        policies.join("bad.cedar"),
        "permit (principal, action, resource) when { 1 };\n",
    )
    .unwrap();
    signal(&served.child, "-HUP");
    let refused = wait_for_line(&served, "policy directory refused");
    assert!(refused.contains("SIGHUP"), "{refused}");
    assert_eq!(
        active_version(&addr).await,
        2,
        "an invalid directory leaves the active set"
    );
    assert!(terminate(&mut served.child).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_fail_closed_when_the_audit_record_cannot_be_written() {
    use privault::api::pb::vault_client::VaultClient;

    // A real disk-full: the server may not grow any file past 2 MiB (SIGXFSZ ignored, so the
    // write fails with EFBIG instead of killing the process). Values are written until the WAL
    // hits the limit; from then on no audit record can be made durable.
    let cwd = tempfile::tempdir().unwrap();
    let mut command = Command::new("bash");
    command.current_dir(cwd.path()).arg("-c").arg(format!(
        "trap '' XFSZ; ulimit -f 2048; exec {BIN} serve --listen 127.0.0.1:0 --policies {}",
        shipped_policies().display()
    ));
    let mut served = spawn_served(command);
    let as_ =
        |p: &str| -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> { p.parse().unwrap() };
    let mut vault = VaultClient::new(channel_to(&served.addr).await);
    let put = |i: usize| {
        let mut request = tonic::Request::new(crate::support::put_request(
            &format!("cust-{i}"),
            "account",
            &[
                ("email", "alice@example.com"),
                ("full_name", &"x".repeat(60_000)),
            ],
        ));
        request
            .metadata_mut()
            .insert("x-privault-principal", as_("Service::\"account\""));
        request
    };
    let mut failed = None;
    for i in 0..200 {
        if let Err(status) = vault.put_fields(put(i)).await {
            failed = Some(status);
            break;
        }
    }
    let status = failed.expect("the file size limit was never reached");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    wait_for_line(&served, "failing closed");
    // Load balancers are told: every health name turns NOT_SERVING.
    let mut health = HealthClient::new(channel_to(&served.addr).await);
    for service in ["", "privault.v1.Vault", "privault.v1.Audit"] {
        let mut status = ServingStatus::Serving;
        for _ in 0..50 {
            status = health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status();
            if status == ServingStatus::NotServing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(status, ServingStatus::NotServing, "service `{service}`");
    }

    let mut read = tonic::Request::new(crate::support::get_request(
        "cust-0",
        "fulfillment",
        &["email"],
    ));
    read.metadata_mut()
        .insert("x-privault-principal", as_("Service::\"checkout\""));
    let err = vault.get_fields(read).await.unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unavailable,
        "no value leaves without its audit record"
    );
    assert!(!err.message().contains("alice"));
    let mut batch = tonic::Request::new(privault::api::pb::BatchGetFieldsRequest {
        subject_ids: vec!["cust-0".into(), "cust-1".into()],
        purpose: "fulfillment".into(),
        fields: vec!["email".into()],
    });
    batch
        .metadata_mut()
        .insert("x-privault-principal", as_("Service::\"checkout\""));
    let err = vault.batch_get_fields(batch).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "nor from a batch");
    assert!(!err.message().contains("alice"));
    let _ = terminate(&mut served.child);
}

#[test]
fn serve_reads_a_config_file_and_flags_override_it() {
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    std::fs::write(
        cwd.path().join("privault.toml"),
        "data-dir = \"from-config\"\nlisten = \"127.0.0.1:1\"\nmax-fields-per-call = 8\n",
    )
    .unwrap();
    // `--listen 127.0.0.1:0` (from `start`) wins over the file's port 1.
    with_server(cwd.path(), &["--config", "privault.toml"], |_, log| {
        assert!(!log.contains("127.0.0.1:1\n"), "{log}");
    });
    assert!(cwd.path().join("from-config/keyring").exists());

    std::fs::write(cwd.path().join("bad.toml"), "colour = \"red\"\n").unwrap();
    let out = Command::new(BIN)
        .current_dir(cwd.path())
        .args(["serve", "--config", "bad.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:1") && err.contains("colour"),
        "{err}"
    );
}

#[test]
fn check_config_and_print_config_judge_and_show_the_settings_without_opening_data() {
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    let serve = |args: &[&str]| {
        Command::new(BIN)
            .current_dir(cwd.path())
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    std::fs::write(
        cwd.path().join("good.toml"),
        "data-dir = \"vault-data\"\nmax-fields-per-call = 8\n",
    )
    .unwrap();
    let out = serve(&["--config", "good.toml", "--check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!cwd.path().join("vault-data").exists(), "no data is opened");
    // A bad value, with its line.
    std::fs::write(
        cwd.path().join("bad.toml"),
        "data-dir = \"vault-data\"\n\nmax-fields-per-call = \"many\"\n",
    )
    .unwrap();
    let out = serve(&["--config", "bad.toml", "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:3"), "{err}");
    // Settings that cannot work together, and a policy directory that does not load.
    let out = serve(&["--listen", "0.0.0.0:50051", "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("without TLS"));
    let out = serve(&["--policies", "no-such-dir", "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    // The effective settings: the flag over the file over the defaults, fed back as a config.
    let out = serve(&[
        "--config",
        "good.toml",
        "--listen",
        "127.0.0.1:6000",
        "--print-config",
    ]);
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "data-dir = \"vault-data\"",
        "listen = \"127.0.0.1:6000\"",
        "max-fields-per-call = 8",
        "shutdown-grace-secs = 20",
    ] {
        assert!(printed.lines().any(|l| l == line), "{line} in:\n{printed}");
    }
    std::fs::write(cwd.path().join("printed.toml"), &printed).unwrap();
    let out = serve(&["--config", "printed.toml", "--check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A passphrase is named, never printed.
    std::fs::write(cwd.path().join("pass"), "correct horse battery staple").unwrap();
    let out = serve(&["--root-passphrase-file", "pass", "--print-config"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("root-passphrase-file = \"pass\""),
        "{printed}"
    );
    assert!(!printed.contains("horse"), "{printed}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_open_health_watches_and_exits_promptly() {
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    // A grace period longer than the test's patience: the exit must come from the watch ending,
    // not from the drain being cut off.
    let mut served = start(cwd.path(), &["--shutdown-grace-secs", "120"]);
    let mut health = HealthClient::new(channel_to(&served.addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "privault.v1.Vault".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    signal(&served.child, "-TERM");
    let mut seen = Vec::new();
    while let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(10), watch.message()).await
    {
        seen.push(m.status());
    }
    assert_eq!(
        seen,
        vec![ServingStatus::NotServing],
        "the watcher is told first"
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the server did not exit with a watch open"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_callers_traceparent_names_the_json_log_lines_of_its_call_and_the_response() {
    use privault::api::pb::vault_client::VaultClient;

    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    let mut command = Command::new(BIN);
    command
        .current_dir(cwd.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("RUST_LOG", "info,privault=debug");
    let mut served = spawn_served(command);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let subject = "trace-canary-subject-77";
    let mut client = VaultClient::new(channel_to(&served.addr).await);
    let mut request =
        tonic::Request::new(crate::support::get_request(subject, "account", &["email"]));
    let metadata = request.metadata_mut();
    metadata.insert(
        "x-privault-principal",
        "Service::\"account\"".parse().unwrap(),
    );
    metadata.insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse().unwrap(),
    );
    let response = client.get_fields(request).await.unwrap();
    assert_eq!(
        response
            .metadata()
            .get("x-trace-id")
            .unwrap()
            .to_str()
            .unwrap(),
        trace
    );
    let request_id = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    // The call's lines carry its trace id and request id in the span, as JSON objects.
    let mut ended = None;
    while ended.is_none() {
        let line = served
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("no log line of the call");
        assert!(!line.contains(subject), "a subject id in the log: {line}");
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&line) else {
            panic!("not a JSON line: {line}");
        };
        if json["fields"]["message"] == "call ended" && json["span"]["trace_id"] == trace {
            ended = Some(json);
        }
    }
    let ended = ended.unwrap();
    assert_eq!(ended["span"]["rpc"], "/privault.v1.Vault/GetFields");
    assert_eq!(ended["span"]["request_id"], request_id.as_str());
    assert_eq!(ended["fields"]["code"], "OK");
    assert!(terminate(&mut served.child).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_turns_health_first_drains_calls_and_loses_no_audit_record() {
    use privault::api::pb::vault_client::VaultClient;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    let mut served = start(cwd.path(), &["--shutdown-grace-secs", "10"]);
    let mut health = HealthClient::new(channel_to(&served.addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let terminated = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let channel = channel_to(&served.addr).await;
        let terminated = Arc::clone(&terminated);
        writers.push(tokio::spawn(async move {
            let mut client = VaultClient::new(channel);
            let (mut acked, mut i) = (0u64, 0u64);
            loop {
                let mut request = tonic::Request::new(crate::support::put_request(
                    &format!("cust-{w}-{i}"),
                    "account",
                    &[("email", "someone@example.com")],
                ));
                request.metadata_mut().insert(
                    "x-privault-principal",
                    crate::support::ACCOUNT.parse().unwrap(),
                );
                let sent_after_term = terminated.load(Ordering::SeqCst);
                match client.put_fields(request).await {
                    Ok(_) => acked += 1,
                    // Once the server drains, new calls are refused by the transport (GOAWAY,
                    // then a closed port: CANCELLED, INTERNAL "http2 error" or UNAVAILABLE, as the
                    // race with the client goes); a call sent before the signal is never cut off.
                    Err(status) => {
                        return (
                            acked,
                            status.code(),
                            sent_after_term,
                            status.message().to_owned(),
                        );
                    }
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    terminated.store(true, Ordering::SeqCst);
    signal(&served.child, "-TERM");
    let signalled = std::time::Instant::now();
    let next = tokio::time::timeout(Duration::from_secs(10), watch.message()).await;
    assert_eq!(
        next.unwrap().unwrap().unwrap().status(),
        ServingStatus::NotServing,
        "health turns first"
    );
    let status = loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(15),
            "no exit within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit {status:?}");
    let mut acked = 0;
    for writer in writers {
        let (n, code, sent_after_term, message) = writer.await.unwrap();
        assert!(
            sent_after_term,
            "a writer's call failed with {code:?} {message} (sent after the signal: {sent_after_term})"
        );
        acked += n;
    }
    assert!(acked > 50, "the load ran: {acked} writes");
    // Every acknowledged write has its audit record, and the chain holds.
    let data_dir = cwd.path().join("privault-data");
    let store = privault::vault::offline::open_store_read_only(&data_dir).unwrap();
    let written = crate::support::audit_views(&store)
        .into_iter()
        .filter(|r| r.action == "write" && r.outcome == "ok")
        .count() as u64;
    assert!(
        written >= acked && written <= acked + 8,
        "{written} write records for {acked} acknowledged writes"
    );
    privault::audit::verify(&store).unwrap();
}

/// An OTLP/gRPC trace collector on a loopback port that keeps every export request.
struct Collector(Arc<std::sync::Mutex<Vec<ExportTraceServiceRequest>>>);

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::sync::Arc;

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_export_sends_each_calls_span_in_the_callers_trace_and_nothing_personal() {
    use privault::api::pb::vault_client::VaultClient;
    use prost::Message;

    let exports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(Arc::clone(&exports))))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let cwd = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(shipped_policies(), cwd.path().join("policies")).unwrap();
    let mut command = Command::new(BIN);
    command.current_dir(cwd.path()).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--otlp-endpoint",
        &format!("http://{collector_addr}"),
    ]);
    let mut served = spawn_served(command);
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let subject = "otlp-canary-subject-31";
    let mut client = VaultClient::new(channel_to(&served.addr).await);
    let mut request = tonic::Request::new(crate::support::put_request(
        subject,
        "account",
        &[("email", "otlp-canary-value@example.com")],
    ));
    request.metadata_mut().insert(
        "x-privault-principal",
        "Service::\"account\"".parse().unwrap(),
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-b7ad6b7169203331-01").parse().unwrap(),
    );
    let response = client.put_fields(request).await.unwrap();
    let request_id = response.metadata().get("x-request-id").unwrap().to_owned();
    // Spans are batched; the drain at SIGTERM flushes them.
    assert!(terminate(&mut served.child).success());
    let exports = exports.lock().unwrap();
    let spans: Vec<_> = exports
        .iter()
        .flat_map(|e| &e.resource_spans)
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let call = spans
        .iter()
        .find(|s| s.name == "call" && hex::encode(&s.trace_id) == trace)
        .unwrap_or_else(|| panic!("no call span in the caller's trace: {spans:?}"));
    assert_eq!(hex::encode(&call.parent_span_id), "b7ad6b7169203331");
    let attribute = |key: &str| {
        call.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .map(|v| format!("{v:?}"))
            .unwrap_or_default()
    };
    assert!(attribute("rpc").contains("/privault.v1.Vault/PutFields"));
    assert!(attribute("request_id").contains(request_id.to_str().unwrap()));
    let service = exports[0].resource_spans[0].resource.as_ref().unwrap();
    assert!(format!("{service:?}").contains("privault"));
    for export in exports.iter() {
        let bytes = export.encode_to_vec();
        for canary in [subject.as_bytes(), b"otlp-canary-value"] {
            assert!(
                !bytes.windows(canary.len()).any(|w| w == canary),
                "a subject id or value left in a span"
            );
        }
    }
}

#[test]
fn completions_and_man_pages_are_generated_from_the_command_line() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("backup") && script.contains("--subject-id"));
    // bash parses it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("privault.bash"), &script).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(dir.path().join("privault.bash"))
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    for shell in ["zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}");
    }
    let man = dir.path().join("man");
    let out = Command::new(BIN).arg("man").arg(&man).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "privault.1",
        "privault-serve.1",
        "privault-backup-restore.1",
    ] {
        let text = std::fs::read_to_string(man.join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page} is roff"
        );
    }
}
