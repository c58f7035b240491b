//! Where the binary's log lines and spans go: stderr as text or JSON (every command), and, for
//! `serve --otlp-endpoint`, OpenTelemetry spans over OTLP/gRPC to a collector. The exporter runs on
//! a small runtime of its own (as opentelemetry-otlp documents for a program without
//! `#[tokio::main]`), so trace export never takes a thread from the vault's runtime; spans are
//! batched and flushed when the process ends.

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::trace::TracerProvider;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// How log lines are written to stderr.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One object per line, with the call's span.
    Json,
}

/// Keeps the trace exporter alive; flushes and stops it when dropped.
pub struct Telemetry {
    provider: SdkTracerProvider,
    runtime: tokio::runtime::Runtime,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _guard = self.runtime.enter();
        if let Err(e) = self.provider.shutdown() {
            eprintln!("warning: the last spans could not be exported: {e}");
        }
    }
}

type Boxed = Box<dyn Layer<Registry> + Send + Sync>;

fn exporter(endpoint: &str) -> anyhow::Result<Telemetry> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .context("cannot start the trace exporter's runtime")?;
    let provider = runtime.block_on(async {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint);
        if endpoint.starts_with("https://") {
            // The collector's certificate is checked against the system's roots.
            exporter = exporter
                .with_tls_config(tonic::transport::ClientTlsConfig::new().with_native_roots());
        }
        let exporter = exporter
            .build()
            .with_context(|| format!("cannot set up OTLP export to {endpoint}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("privault")
            .build();
        anyhow::Ok(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .build(),
        )
    })?;
    Ok(Telemetry { provider, runtime })
}

/// Installs the global subscriber: `RUST_LOG` levels (default `info`), stderr in `format`, and
/// span export to `otlp_endpoint` when given.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Option<Telemetry>> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr: Boxed = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let telemetry = otlp_endpoint.map(exporter).transpose()?;
    let spans: Option<Boxed> = telemetry.as_ref().map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.provider.tracer("privault"))
            .boxed()
    });
    let layers: Vec<Boxed> = [Some(stderr), spans].into_iter().flatten().collect();
    tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init()
        .context("cannot install the log subscriber")?;
    Ok(telemetry)
}
