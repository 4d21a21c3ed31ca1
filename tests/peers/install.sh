#!/usr/bin/env bash
# Installs the real MCP peers the end-to-end tests of `custody wrap` run
# against, into DIR (default: target/mcp-peers): the reference servers
# `@modelcontextprotocol/server-everything` and
# `@modelcontextprotocol/server-filesystem` from npm (DIR/node), the MCP
# conformance suite `@modelcontextprotocol/conformance` from npm
# (DIR/conformance, a prefix of its own: it pins its own SDK), and the
# Python `mcp` SDK from PyPI in a virtual environment (DIR/venv).
# Idempotent: what is installed at the pinned version is left alone, so a
# second run takes a moment.
set -euo pipefail

SERVER_VERSION=2026.8.31
FILESYSTEM_VERSION=2026.8.31
# 0.1.14 and later need Node 22 (they import `globSync` from `fs`).
CONFORMANCE_VERSION=0.1.13
SDK_VERSION=2.3.0
dir=${1:-"$(dirname "$0")/../../target/mcp-peers"}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

# npm_package PREFIX NAME VERSION: installs NAME@VERSION into PREFIX unless
# it is there at that version.
npm_package() {
    local package="$1/node_modules/$2/package.json"
    if ! grep -q "\"version\": \"$3\"" "$package" 2>/dev/null; then
        echo "installing $2@$3 into $1"
        npm install --prefix "$1" --no-audit --no-fund --loglevel=error "$2@$3"
    fi
}
npm_package "$dir/node" @modelcontextprotocol/server-everything "$SERVER_VERSION"
npm_package "$dir/node" @modelcontextprotocol/server-filesystem "$FILESYSTEM_VERSION"
npm_package "$dir/conformance" @modelcontextprotocol/conformance "$CONFORMANCE_VERSION"

python="$dir/venv/bin/python"
if ! "$python" -c "import importlib.metadata as m; assert m.version('mcp') == '$SDK_VERSION'" 2>/dev/null; then
    echo "installing the Python mcp SDK $SDK_VERSION into $dir/venv"
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$SDK_VERSION"
fi
