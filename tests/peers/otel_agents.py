"""Emits the spans of an orchestrator agent and its sub-agent, per the
OpenTelemetry GenAI semantic conventions, with the real Python SDK, and
exports them to ENDPOINT with TOKEN as a bearer token: over OTLP/HTTP
(protobuf, ENDPOINT is the URL of /v1/traces), or over OTLP/gRPC,
gzip-compressed (ENDPOINT is http://HOST:PORT). Prints the trace id (hex)
once the export succeeded.

Usage: otel_agents.py ENDPOINT TOKEN [http|grpc]
"""

import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind


def checked(exporter_class):
    """The exporter class, failing the script if an export is refused."""

    class Checked(exporter_class):
        failed = False

        def export(self, spans):
            result = super().export(spans)
            if result != SpanExportResult.SUCCESS:
                Checked.failed = True
            return result

    return Checked


def exporter(protocol, endpoint, token):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression

        return checked(OTLPSpanExporter)(
            endpoint=endpoint,
            insecure=True,
            # gRPC metadata keys are lowercase.
            headers=(("authorization", f"Bearer {token}"),),
            compression=Compression.Gzip,
            timeout=10,
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return checked(OTLPSpanExporter)(
        endpoint=endpoint,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )


def main():
    endpoint, token = sys.argv[1], sys.argv[2]
    protocol = sys.argv[3] if len(sys.argv) > 3 else "http"
    span_exporter = exporter(protocol, endpoint, token)
    provider = TracerProvider(resource=Resource.create({"service.name": "support-desk"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    tracer = provider.get_tracer("custody.e2e")

    with tracer.start_as_current_span(
        "invoke_agent orchestrator",
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": "openai",
            "gen_ai.agent.id": "agent-orchestrator",
            "gen_ai.agent.name": "orchestrator",
            "gen_ai.conversation.id": "conv-e2e",
            "user.id": "alice@example.com",
        },
    ) as root:
        with tracer.start_as_current_span(
            "execute_tool lookup_order",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup_order",
                "gen_ai.tool.call.id": "call-1",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "invoke_agent researcher",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.id": "agent-researcher",
                "gen_ai.agent.name": "researcher",
                "gen_ai.conversation.id": "conv-e2e",
            },
        ):
            with tracer.start_as_current_span(
                "execute_tool web_search",
                attributes={
                    "gen_ai.operation.name": "execute_tool",
                    "gen_ai.tool.name": "web_search",
                    "gen_ai.tool.call.id": "call-2",
                },
            ):
                pass
        trace_id = format(root.get_span_context().trace_id, "032x")

    provider.shutdown()
    if type(span_exporter).failed:
        sys.exit("the export was refused")
    print(trace_id)


if __name__ == "__main__":
    main()
