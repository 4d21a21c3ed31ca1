#!/usr/bin/env bash
# Installs moto, the AWS mock whose server speaks the real IAM query API, that
# the AWS responder's end-to-end tests (tests/aws.rs) run against: PyPI's
# `moto[server]` in a virtual environment under DIR (default:
# target/aws-peers), started by the tests as `DIR/venv/bin/moto_server`.
# Idempotent: what is installed at the pinned version is left alone.
set -euo pipefail

MOTO_VERSION=5.2.1
dir=${1:-"$(dirname "$0")/../../../../target/aws-peers"}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

python="$dir/venv/bin/python"
if ! "$python" -c "import importlib.metadata as m; assert m.version('moto') == '$MOTO_VERSION'" 2>/dev/null \
    || [ ! -x "$dir/venv/bin/moto_server" ]; then
    echo "installing moto[server] $MOTO_VERSION into $dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
