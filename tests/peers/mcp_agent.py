"""An agent for the containment tests: the Python `mcp` SDK's client over
streamable HTTP, with an agent token as bearer, driven by the Rust test one
step per line on stdin and answering one JSON line per step on stdout.

Steps (JSON): {"op": "call", "tool": NAME, "arguments": {...}} or
{"op": "read", "uri": URI}. Each answer names the step and carries the
result text, or the JSON-RPC error's code and message, or the exception the
SDK raised (a refused token surfaces as an HTTP error), or `timeout`.
"""

import argparse
import json
import sys

import anyio
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError


def say(**fields):
    print(json.dumps(fields), flush=True)


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def step(client, command):
    op = command["op"]
    try:
        with anyio.fail_after(command.get("timeout", 30)):
            if op == "call":
                result = await client.call_tool(command["tool"], command.get("arguments", {}))
                say(op=op, text=text_of(result), is_error=bool(result.is_error))
            elif op == "read":
                result = await client.read_resource(command["uri"])
                say(op=op, contents=len(result.contents))
            else:
                say(op=op, exception=f"unknown op {op}")
    except MCPError as error:
        say(op=op, error_code=error.error.code, error=error.error.message)
    except TimeoutError:
        say(op=op, timeout=True)
    except Exception as error:  # noqa: BLE001 - the test reads what happened
        say(op=op, exception=f"{type(error).__name__}: {error}")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {args.token}"})
    async with http:
        client = Client(streamable_http_client(args.url, http_client=http), mode="legacy")
        async with client:
            say(op="ready", version=client.protocol_version)
            while True:
                line = await anyio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    break
                await step(client, json.loads(line))
    say(op="end")


def leaves(error):
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


if __name__ == "__main__":
    try:
        anyio.run(main)
    except Exception as error:  # noqa: BLE001 - a session refused at the end
        say(op="end", exception="; ".join(f"{type(e).__name__}: {e}" for e in leaves(error)))
