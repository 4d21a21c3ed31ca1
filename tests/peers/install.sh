#!/usr/bin/env bash
# Installs the real MCP peers the end-to-end tests of `custody wrap` run
# against, into DIR (default: target/mcp-peers): the reference server
# `@modelcontextprotocol/server-everything` from npm, and the Python `mcp`
# SDK from PyPI in a virtual environment. Idempotent: what is installed at
# the pinned version is left alone, so a second run takes a moment.
set -euo pipefail

SERVER_VERSION=2026.8.31
SDK_VERSION=2.3.0
dir=${1:-"$(dirname "$0")/../../target/mcp-peers"}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

package="$dir/node/node_modules/@modelcontextprotocol/server-everything/package.json"
if ! grep -q "\"version\": \"$SERVER_VERSION\"" "$package" 2>/dev/null; then
    echo "installing @modelcontextprotocol/server-everything@$SERVER_VERSION into $dir/node"
    npm install --prefix "$dir/node" --no-audit --no-fund --loglevel=error \
        "@modelcontextprotocol/server-everything@$SERVER_VERSION"
fi

python="$dir/venv/bin/python"
if ! "$python" -c "import importlib.metadata as m; assert m.version('mcp') == '$SDK_VERSION'" 2>/dev/null; then
    echo "installing the Python mcp SDK $SDK_VERSION into $dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$SDK_VERSION"
fi
