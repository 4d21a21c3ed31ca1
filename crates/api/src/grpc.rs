//! The OTLP/gRPC trace receiver:
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export`.
//!
//! The same requests as `POST /v1/traces`, from the same callers (an
//! `ingest` token, or an agent token, in the `authorization` metadata as
//! `Bearer TOKEN`), gzip-compressed or not, mapped and recorded by the same
//! [`export`](crate::otlp::export) and answered once their events are
//! durable. Errors are gRPC statuses a collector's exporter acts on:
//! `UNAUTHENTICATED`, `PERMISSION_DENIED`, `INVALID_ARGUMENT` (retrying is
//! pointless), `RESOURCE_EXHAUSTED` with a `google.rpc.RetryInfo` when the
//! ingest queue is full and `UNAVAILABLE` while the server stops (retry).

use std::convert::Infallible;
use std::time::Duration;

use custody_otlp::collector::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use prost::Message as _;
use tonic::codec::{
    CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::AppState;
use crate::auth::Role;
use crate::error::ApiError;

/// The service's name, as a gRPC client calls it.
const SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// The method's path, where refused agent tokens are recorded as met.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The trace service, answering from the API's state: gzip accepted (and
/// used for answers to clients that accept it), messages up to the API's
/// body limit, compressed and decompressed.
///
/// Written out rather than generated (`opentelemetry-proto`'s `gen-tonic`)
/// for one reason: the generated service decodes with a codec answering
/// `INTERNAL` to a request that is not protobuf, which tells an exporter
/// the fault is the server's; this one answers `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub(crate) struct TraceService {
    state: AppState,
}

impl TraceService {
    pub(crate) fn new(state: AppState) -> TraceService {
        TraceService { state }
    }
}

impl NamedService for TraceService {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for TraceService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move {
            if request.uri().path() != EXPORT_PATH {
                return Ok(
                    Status::unimplemented(format!("{SERVICE} has one method, Export")).into_http(),
                );
            }
            let mut gzip = EnabledCompressionEncodings::default();
            gzip.enable(CompressionEncoding::Gzip);
            let limit = state.limits.max_body_bytes;
            let mut grpc = Grpc::new(OtlpCodec)
                .apply_compression_config(gzip, gzip)
                .apply_max_message_size_config(Some(limit), None);
            Ok(grpc.unary(Export(state), request).await)
        })
    }
}

/// The `Export` method.
struct Export(AppState);

impl UnaryService<ExportTraceServiceRequest> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = BoxFuture<Response<Self::Response>, Status>;

    fn call(&mut self, request: Request<ExportTraceServiceRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move { export(&state, request).await })
    }
}

/// Authenticates the caller as the HTTP routes do, then maps and records
/// the spans through the one export path of every transport.
async fn export(
    state: &AppState,
    request: Request<ExportTraceServiceRequest>,
) -> Result<Response<ExportTraceServiceResponse>, Status> {
    let started = std::time::Instant::now();
    if *state.stopping.borrow() {
        return Err(status(ApiError::Unavailable));
    }
    let authorization = request
        .metadata()
        .get("authorization")
        .map(|value| value.to_str().map_err(|_| ()));
    let caller = crate::resolve_caller(state, authorization, EXPORT_PATH)
        .await
        .map_err(status)?;
    caller.require(Role::Ingest).map_err(status)?;
    crate::otlp::export(state, &caller, started, request.get_ref())
        .await
        .map(Response::new)
        .map_err(status)
}

/// Protobuf both ways; a request that does not decode is the client's
/// fault, `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy)]
struct OtlpCodec;

impl tonic::codec::Codec for OtlpCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = ExportTraceServiceRequest;
    type Encoder = OtlpCodec;
    type Decoder = OtlpCodec;

    fn encoder(&mut self) -> Self::Encoder {
        OtlpCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        OtlpCodec
    }
}

impl Encoder for OtlpCodec {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|error| Status::internal(format!("encoding the answer: {error}")))
    }
}

impl Decoder for OtlpCodec {
    type Item = ExportTraceServiceRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportTraceServiceRequest::decode(src)
            .map(Some)
            .map_err(|error| {
                Status::invalid_argument(format!(
                    "the message is not an OTLP trace request: {error}"
                ))
            })
    }
}

/// The gRPC status saying what an API error says over HTTP.
pub(crate) fn status(error: ApiError) -> Status {
    let code = match &error {
        ApiError::Unauthenticated(_) | ApiError::AgentToken(_) => Code::Unauthenticated,
        ApiError::Forbidden { .. } => Code::PermissionDenied,
        ApiError::BadRequest(_) | ApiError::Unsupported(_) | ApiError::AllRejected(_) => {
            Code::InvalidArgument
        }
        ApiError::NotFound(_) => Code::NotFound,
        ApiError::Conflict(_) => Code::FailedPrecondition,
        ApiError::MethodNotAllowed => Code::Unimplemented,
        ApiError::TooLarge { .. } | ApiError::Busy { .. } => Code::ResourceExhausted,
        ApiError::Unavailable => Code::Unavailable,
        ApiError::Internal(_) => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(%error, "OTLP/gRPC export failed");
    }
    match error {
        // OTLP: RESOURCE_EXHAUSTED is retried only when the server says
        // when, with a google.rpc.RetryInfo: in the status details, where
        // the Go and Java exporters read it, and in the trailer
        // `google.rpc.retryinfo-bin`, where the Python exporter does.
        ApiError::Busy {
            retry_after_secs, ..
        } => {
            let delay = Duration::from_secs(retry_after_secs);
            let info = tonic_types::pb::RetryInfo::from(tonic_types::RetryInfo::new(Some(delay)));
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert_bin(
                "google.rpc.retryinfo-bin",
                tonic::metadata::MetadataValue::from_bytes(&info.encode_to_vec()),
            );
            Status::with_error_details_and_metadata(
                code,
                error.to_string(),
                ErrorDetails::with_retry_info(Some(delay)),
                metadata,
            )
        }
        error => Status::new(code, error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_is_resource_exhausted_with_when_to_retry() {
        let status = status(ApiError::Busy {
            retry_after_secs: 2,
            detail: "10 of 10".into(),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        let retry = details.retry_info().expect("a RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));
        let trailer = status
            .metadata()
            .get_bin("google.rpc.retryinfo-bin")
            .expect("the Python exporter's trailer")
            .to_bytes()
            .unwrap();
        let info = tonic_types::pb::RetryInfo::decode(trailer.as_ref()).unwrap();
        assert_eq!(info.retry_delay.unwrap().seconds, 2);
        assert_eq!(
            super::status(ApiError::Unavailable).code(),
            Code::Unavailable
        );
        assert_eq!(
            super::status(ApiError::Forbidden {
                have: Role::Viewer,
                needed: Role::Ingest
            })
            .code(),
            Code::PermissionDenied
        );
    }
}
