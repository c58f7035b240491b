//! Counts and times every call at the HTTP/2 layer, under the tonic server: the method from the
//! path (only the methods this server serves become labels; any other path is `other`, so a
//! caller cannot mint label values), and the gRPC code from the response's headers or, for a
//! call that ran, its trailers. A call whose response is dropped unfinished counts as CANCELLED.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame};
use prost::Message;
use tonic::Code;

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
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let early = status_in(response.headers());
            Ok(response.map(|inner| ObservedBody {
                inner,
                call: Some(Call {
                    rpc,
                    started,
                    early,
                }),
            }))
        })
    }
}

struct Call {
    rpc: &'static str,
    started: Instant,
    // The code of a trailers-only response (every refused call), known from the headers.
    early: Option<Code>,
}

impl Call {
    fn finish(self, code: Code) {
        let m = metrics();
        m.requests
            .get_or_create(&CallLabels {
                rpc: self.rpc,
                code: code_label(code),
            })
            .inc();
        m.request_duration
            .get_or_create(&RpcLabels { rpc: self.rpc })
            .observe(self.started.elapsed().as_secs_f64());
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
