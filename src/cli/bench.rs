//! `privault bench`: the load tool. Starts `privault serve` (this same binary, release build
//! recommended) on a fresh data directory, or targets a running vault; loads N subjects; then
//! drives GetFields (5 fields), PutFields (5 fields), a 90/10 read/write mix and, as the gRPC floor
//! on the same server, `grpc.health.v1.Health/Check`, with C concurrent clients for a fixed time
//! each. Prints throughput, p50/p99/p99.9 latency, the ratio to the floor, a read phase paced at
//! half the measured maximum, and the server's resident memory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use privault::api::pb;
use privault::api::pb::vault_client::VaultClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// The five fields every read and write names.
const FIELDS: [&str; 5] = [
    "email",
    "phone",
    "full_name",
    "shipping_address",
    "favorite_categories",
];
const CALLER: &str = "Service::\"account\"";
const PURPOSE: &str = "account";

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Every phase: floor, get, get at half load, put, mix.
    All,
    /// GetFields only (with the floor).
    Get,
    /// PutFields only (with the floor).
    Put,
    /// 90% GetFields, 10% PutFields (with the floor).
    Mix,
}

#[derive(Args)]
pub struct BenchArgs {
    /// A running vault in development mode (e.g. http://127.0.0.1:50051), or several nodes of one
    /// vault, comma-separated (the connections alternate between them); default: start one.
    #[arg(long)]
    target: Option<String>,
    /// Policy directory for the vault this tool starts.
    #[arg(long, default_value = "./policies")]
    policies: PathBuf,
    /// Data directory for the vault this tool starts [default: a fresh temporary directory]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Subjects to load before measuring (5 fields each).
    #[arg(long, default_value_t = 10_000)]
    subjects: u64,
    /// The subjects are already stored (loaded by an earlier run on the same `--data-dir` or
    /// `--target`): measure reads spread over them without loading them again.
    #[arg(long)]
    loaded: bool,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// What to measure.
    #[arg(long, value_enum, default_value = "all")]
    workload: Workload,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
}

/// One measured phase.
struct Phase {
    name: String,
    calls: u64,
    errors: u64,
    /// The first failed call's status, to tell what failed.
    first_error: Option<String>,
    seconds: f64,
    latencies_us: Vec<u32>,
}

impl Phase {
    fn throughput(&self) -> f64 {
        self.calls as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let rank = ((p / 100.0) * (self.latencies_us.len() - 1) as f64).round() as usize;
        f64::from(self.latencies_us[rank.min(self.latencies_us.len() - 1)]) / 1000.0
    }

    fn print(&self, floor: Option<f64>) {
        let ratio = floor.map_or(String::new(), |f| {
            format!("  {:.2}x floor", self.throughput() / f)
        });
        println!(
            "{:<28} {:>9.0} calls/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  errors {}{}",
            self.name,
            self.throughput(),
            self.percentile(50.0),
            self.percentile(99.0),
            self.percentile(99.9),
            self.errors,
            ratio
        );
        if let Some(e) = &self.first_error {
            println!("{:<28} first error: {e}", "");
        }
    }
}

/// The vault under load: started here (and stopped on drop) or given.
struct Server {
    child: Option<Child>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Server {
    fn start(args: &BenchArgs) -> anyhow::Result<Self> {
        if let Some(url) = &args.target {
            return Ok(Self {
                child: None,
                url: url.clone(),
                _dir: None,
            });
        }
        let dir = tempfile::tempdir()?;
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let mut child = Command::new(std::env::current_exe()?)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data_dir)
            .arg("--policies")
            .arg(&args.policies)
            .args(["--max-concurrent-per-peer", "100000"])
            .env("RUST_LOG", "warn,privault::cli::serve=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start privault serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let Some(line) = lines.next() else {
                bail!("privault serve exited before listening");
            };
            let line = line?;
            if let Some(addr) = line.split("listening on ").nth(1) {
                break addr.trim().to_owned();
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child: Some(child),
            url: format!("http://{addr}"),
            _dir: Some(dir),
        })
    }

    /// The server's (peak, current) resident set in MiB, when it runs here.
    fn rss_mib(&self) -> Option<(f64, f64)> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        };
        Some((kib("VmHWM:")? / 1024.0, kib("VmRSS:")? / 1024.0))
    }
}

fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-privault-principal",
        tonic::metadata::MetadataValue::from_static(CALLER),
    );
    request
}

fn put_request(subject: u64, round: u64) -> pb::PutFieldsRequest {
    pb::PutFieldsRequest {
        subject_id: format!("bench-{subject}"),
        purpose: PURPOSE.into(),
        fields: [
            ("email", format!("c{subject}.{round}@example.com")),
            ("phone", format!("+1555{subject:07}")),
            ("full_name", format!("Customer {subject}")),
            (
                "shipping_address",
                format!("{subject} Main St, Springfield"),
            ),
            ("favorite_categories", "books,tea,garden".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    }
}

fn get_request(subject: u64) -> pb::GetFieldsRequest {
    pb::GetFieldsRequest {
        subject_id: format!("bench-{subject}"),
        purpose: PURPOSE.into(),
        fields: FIELDS.iter().map(|f| (*f).to_owned()).collect(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Health,
    Get,
    Put,
    Mix,
}

/// A cheap per-worker pseudo-random sequence (xorshift), to spread calls over the subjects.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn one_call(
    channel: &Channel,
    op: Op,
    subject: u64,
    round: u64,
) -> Result<(), tonic::Status> {
    match op {
        Op::Health => HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop),
        Op::Get => VaultClient::new(channel.clone())
            .get_fields(request(get_request(subject)))
            .await
            .map(drop),
        Op::Put => VaultClient::new(channel.clone())
            .put_fields(request(put_request(subject, round)))
            .await
            .map(drop),
        Op::Mix if round.is_multiple_of(10) => {
            Box::pin(one_call(channel, Op::Put, subject, round)).await
        }
        Op::Mix => Box::pin(one_call(channel, Op::Get, subject, round)).await,
    }
}

/// Runs `op` from `concurrency` workers for `seconds`; with `rate`, paced to that many calls per
/// second in total.
async fn phase(
    name: &str,
    channels: &[Channel],
    op: Op,
    subjects: u64,
    concurrency: usize,
    seconds: u64,
    rate: Option<f64>,
) -> Phase {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::OnceLock::new());
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let channel = channels[w % channels.len()].clone();
        let errors = Arc::clone(&errors);
        let first_error = Arc::clone(&first_error);
        let interval = rate.map(|r| Duration::from_secs_f64(concurrency as f64 / r));
        workers.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let mut latencies = Vec::new();
            let mut round = 0u64;
            // Paced workers start spread over one interval: started together they would fire in
            // bursts of `concurrency` calls, and measure the burst instead of the rate.
            let mut next =
                start + interval.map_or(Duration::ZERO, |i| i * w as u32 / concurrency as u32);
            while Instant::now() < deadline {
                // A paced call that is overdue (the previous one ran past its slot) counts from
                // when it was due, so that a slow server cannot hide its queueing by delaying the
                // calls that would have measured it; one on time counts from when it is sent, not
                // charging the server for the timer's millisecond granularity.
                let began = match interval {
                    Some(i) => {
                        let due = next;
                        next += i;
                        if Instant::now() >= due {
                            due
                        } else {
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        }
                    }
                    None => Instant::now(),
                };
                let subject = rng.next() % subjects.max(1);
                if let Err(status) = one_call(&channel, op, subject, round).await {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .get_or_init(|| format!("{:?}: {}", status.code(), status.message()));
                }
                latencies.push(u32::try_from(began.elapsed().as_micros()).unwrap_or(u32::MAX));
                round += 1;
            }
            latencies
        }));
    }
    let mut latencies_us = Vec::new();
    for w in workers {
        latencies_us.extend(w.await.unwrap_or_default());
    }
    latencies_us.sort_unstable();
    Phase {
        name: name.to_owned(),
        calls: latencies_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        first_error: first_error.get().cloned(),
        seconds: start.elapsed().as_secs_f64(),
        latencies_us,
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let server = Server::start(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Several targets (nodes of one vault, comma-separated) share the connections in turn.
        let urls: Vec<&str> = server.url.split(',').map(str::trim).collect();
        let mut channels = Vec::new();
        for i in 0..args.connections.max(urls.len()) {
            let url = urls[i % urls.len()].to_owned();
            channels.push(Channel::from_shared(url)?.connect().await?);
        }
        let c = args.concurrency.max(1);
        println!(
            "privault bench: {} subjects, {} clients over {} connections, {} s per phase, server {}",
            args.subjects,
            c,
            channels.len(),
            args.duration,
            server.url
        );
        if !args.loaded && (args.target.is_none() || args.subjects > 0) {
            let load = Instant::now();
            let per = args.subjects.div_ceil(c as u64);
            let progress = super::progress::items(args.subjects, "loading subjects");
            let mut loaders = Vec::new();
            for w in 0..c as u64 {
                let channel = channels[w as usize % channels.len()].clone();
                let range = (w * per)..((w + 1) * per).min(args.subjects);
                let progress = progress.clone();
                loaders.push(tokio::spawn(async move {
                    for s in range {
                        if let Err(status) = one_call(&channel, Op::Put, s, 0).await {
                            return Err(anyhow::anyhow!(
                                "loading subject {s} failed: {:?}: {}",
                                status.code(),
                                status.message()
                            ));
                        }
                        progress.inc(1);
                    }
                    Ok(())
                }));
            }
            for l in loaders {
                l.await??;
            }
            progress.finish_and_clear();
            println!(
                "loaded {} subjects in {:.1} s ({:.0} puts/s)",
                args.subjects,
                load.elapsed().as_secs_f64(),
                args.subjects as f64 / load.elapsed().as_secs_f64()
            );
        }
        if let Some((peak, now)) = server.rss_mib() {
            println!("server RSS after load: {now:.0} MiB (peak {peak:.0} MiB)");
        }
        let n = args.subjects;
        let d = args.duration;
        let floor = phase("health check (gRPC floor)", &channels, Op::Health, n, c, d, None).await;
        floor.print(None);
        let f = Some(floor.throughput());
        let w = args.workload;
        if matches!(w, Workload::All | Workload::Get) {
            let get = phase("GetFields, 5 fields", &channels, Op::Get, n, c, d, None).await;
            get.print(f);
            let half = get.throughput() / 2.0;
            let paced = phase("GetFields at half max", &channels, Op::Get, n, c, d, Some(half)).await;
            paced.print(f);
        }
        if matches!(w, Workload::All | Workload::Put) {
            phase("PutFields, 5 fields", &channels, Op::Put, n, c, d, None).await.print(f);
        }
        if matches!(w, Workload::All | Workload::Mix) {
            phase("90% get / 10% put", &channels, Op::Mix, n, c, d, None).await.print(f);
        }
        if let Some((peak, now)) = server.rss_mib() {
            println!("server RSS at the end: {now:.0} MiB (peak {peak:.0} MiB)");
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
