//! Observes every call at the HTTP/2 layer, under the tonic server: counts and times it (the
//! method from the path: only the methods this server serves become labels, any other path is
//! `other`, so a caller cannot mint label values; the gRPC code from the response's headers or,
//! for a call that ran, its trailers; a response dropped unfinished counts as CANCELLED), and runs
//! it in a `call` span carrying its trace id: the caller's, from a W3C `traceparent` header, or a
//! fresh one. The trace id goes back in the `x-trace-id` response header, and the edge adds the
//! request id to the span, so every log line of the call names both. Nothing else of the request
//! (no subject id, no value) enters the span.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use prost::Message;
use tonic::Code;
use tracing::Instrument;

use crate::metrics::{CallLabels, RpcLabels, metrics};

/// The methods served, as `/package.Service/Method`, from the descriptors the server registers.
static METHODS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    let mut methods = HashSet::new();
    for set in [
        super::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    let path = format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    );
                    // Once per method at start-up: the label values live as long as the process.
                    methods.insert(&*Box::leak(path.into_boxed_str()));
                }
            }
        }
    }
    for reflection in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        methods.insert(reflection);
    }
    methods
});

fn rpc_label(path: &str) -> &'static str {
    METHODS.get(path).copied().unwrap_or("other")
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The response header that carries the call's trace id.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), when it is valid: lower
/// case hex, version not `ff`, neither id all zeros (the spec's rule for ignoring the header).
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    // A later version may append fields; version 00 has exactly four.
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && !zero(trace_id)
        && hex(parent_id, 16)
        && !zero(parent_id)
        && hex(flags, 2);
    valid.then_some(trace_id)
}

/// The caller's valid `traceparent` (whose trace id is `trace_id`) as an OpenTelemetry remote
/// parent.
fn remote_parent(traceparent: &str, trace_id: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let mut parts = traceparent.trim().split('-').skip(2);
    let span_id = SpanId::from_hex(parts.next()?).ok()?;
    let flags = u8::from_str_radix(parts.next()?, 16).ok()?;
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Some(opentelemetry::Context::new().with_remote_span_context(context))
}

/// Names `span`'s trace: the caller's trace (also its OpenTelemetry parent, when traces are
/// exported), else the exported span's own trace, else a fresh random id for the logs.
fn trace_id(headers: &http::HeaderMap, span: &tracing::Span) -> String {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    if let Some(traceparent) = traceparent
        && let Some(id) = trace_id_of(traceparent)
    {
        if let Some(parent) = remote_parent(traceparent, id) {
            // Without an OpenTelemetry layer (no --otlp-endpoint) this does nothing.
            let _ = span.set_parent(parent);
        }
        return id.to_owned();
    }
    let exported = span.context().span().span_context().trace_id();
    if exported != opentelemetry::trace::TraceId::INVALID {
        return exported.to_string();
    }
    let mut id = [0u8; 16];
    // Without randomness the call still runs; its trace id only has to tell it apart in logs.
    if crate::crypto::random_bytes(&mut id).is_err() {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        id[8..].copy_from_slice(&n.to_be_bytes());
    }
    hex::encode(id)
}

fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

/// The layer that observes every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner }
    }
}

/// [`ObserveLayer`]'s service.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Observe<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let rpc = rpc_label(request.uri().path());
        let started = Instant::now();
        let span = tracing::info_span!(
            "call",
            rpc,
            trace_id = tracing::field::Empty,
            request_id = tracing::field::Empty
        );
        let trace_id = trace_id(request.headers(), &span);
        span.record("trace_id", trace_id.as_str());
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = response.await?;
                if let Ok(value) = http::HeaderValue::from_str(&trace_id) {
                    response.headers_mut().insert(TRACE_ID_HEADER, value);
                }
                let early = status_in(response.headers());
                let span = tracing::Span::current();
                Ok(response.map(|inner| ObservedBody {
                    inner,
                    call: Some(Call {
                        rpc,
                        started,
                        early,
                        span,
                    }),
                }))
            }
            .instrument(span),
        )
    }
}

struct Call {
    rpc: &'static str,
    started: Instant,
    // The code of a trailers-only response (every refused call), known from the headers.
    early: Option<Code>,
    span: tracing::Span,
}

impl Call {
    fn finish(self, code: Code) {
        let elapsed = self.started.elapsed();
        self.span.in_scope(|| {
            tracing::debug!(
                code = code_label(code),
                elapsed_us = elapsed.as_micros() as u64,
                "call ended"
            );
        });
        let m = metrics();
        m.requests
            .get_or_create(&CallLabels {
                rpc: self.rpc,
                code: code_label(code),
            })
            .inc();
        m.request_duration
            .get_or_create(&RpcLabels { rpc: self.rpc })
            .observe(elapsed.as_secs_f64());
    }
}

/// A response body that records its call once it ends.
pub struct ObservedBody<B> {
    inner: B,
    call: Option<Call>,
}

impl<B: Body + Unpin> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in)
                    && let Some(call) = self.call.take()
                {
                    call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.finish(Code::Internal);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    let code = call.early.unwrap_or(Code::Unknown);
                    call.finish(code);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            // A trailers-only response may end without a frame being polled.
            let code = call.early.unwrap_or(Code::Cancelled);
            call.finish(code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::trace_id_of;

    #[test]
    fn only_a_valid_traceparent_names_the_trace() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(
            trace_id_of(&format!("00-{id}-00f067aa0ba902b7-01")),
            Some(id)
        );
        assert_eq!(
            trace_id_of(&format!("01-{id}-00f067aa0ba902b7-01-later")),
            Some(id),
            "a later version may add fields"
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-cust-42-alice@example.com-01",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }
}
