#!/usr/bin/env bash
# Installs the real OpenTelemetry SDK the end-to-end test of `POST
# /v1/traces` (tests/otlp.rs) exports with: the Python `opentelemetry-sdk`
# and `opentelemetry-exporter-otlp-proto-http` from PyPI, in a virtual
# environment under DIR (default: target/otel-peers). Idempotent: what is
# installed at the pinned version is left alone.
set -euo pipefail

OTEL_VERSION=1.45.2
dir=${1:-"$(dirname "$0")/../../target/otel-peers"}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

python="$dir/venv/bin/python"
if ! "$python" -c "import importlib.metadata as m; assert m.version('opentelemetry-sdk') == '$OTEL_VERSION'; assert m.version('opentelemetry-exporter-otlp-proto-http') == '$OTEL_VERSION'" 2>/dev/null; then
    echo "installing the Python OpenTelemetry SDK $OTEL_VERSION into $dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check \
        "opentelemetry-sdk==$OTEL_VERSION" "opentelemetry-exporter-otlp-proto-http==$OTEL_VERSION"
fi
