#!/usr/bin/env bash
# Installs the real OpenTelemetry SDK the end-to-end tests of the OTLP
# receivers (tests/otlp.rs) export with: the Python `opentelemetry-sdk`,
# `opentelemetry-exporter-otlp-proto-http` and
# `opentelemetry-exporter-otlp-proto-grpc` (with `grpcio`, which has wheels
# for Python 3.11) from PyPI, in a virtual environment under DIR (default:
# target/otel-peers). Idempotent: what is installed at the pinned versions
# is left alone.
set -euo pipefail

OTEL_VERSION=1.45.2
GRPCIO_VERSION=1.85.3
dir=${1:-"$(dirname "$0")/../../target/otel-peers"}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

python="$dir/venv/bin/python"
if ! "$python" -c "
import importlib.metadata as m
for name in ['opentelemetry-sdk', 'opentelemetry-exporter-otlp-proto-http', 'opentelemetry-exporter-otlp-proto-grpc']:
    assert m.version(name) == '$OTEL_VERSION', name
assert m.version('grpcio') == '$GRPCIO_VERSION'
" 2>/dev/null; then
    echo "installing the Python OpenTelemetry SDK $OTEL_VERSION into $dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
        "opentelemetry-sdk==$OTEL_VERSION" \
        "opentelemetry-exporter-otlp-proto-http==$OTEL_VERSION" \
        "opentelemetry-exporter-otlp-proto-grpc==$OTEL_VERSION" \
        "grpcio==$GRPCIO_VERSION"
fi
