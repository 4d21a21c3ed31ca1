"""A real MCP client (the Python `mcp` SDK) for the end-to-end tests of
`custody wrap`: connects over stdio to the command after `--`, speaks the
protocol revision given by --era (the 2025-11-25 handshake, or the SDK's
default negotiation starting with a 2026-07-28 `server/discover`), and prints one JSON line per step for the
Rust test to check.

Steps: list the tools, call `echo`, then each tool named by --call (in
order), reporting the result text or the JSON-RPC error (a refused `echo`
ends the steps).
"""

import argparse
import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client._probe import negotiate_auto
from mcp.shared.exceptions import MCPError


def say(**fields):
    print(json.dumps(fields), flush=True)


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--era", choices=["2025-11-25", "auto"], required=True)
    parser.add_argument("--call", action="append", default=[], help="TOOL or TOOL=JSON_ARGUMENTS")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    # As a host's configuration would, hand the server (here `custody wrap`)
    # this process's environment: the SDK passes only a safe subset.
    server = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            if args.era == "2025-11-25":
                await session.initialize()
            else:
                # The SDK's default: a stateless 2026-07-28 `server/discover`
                # (its `_meta` carrying the version, client and
                # capabilities) first, the initialize handshake if the server
                # answers that it does not know the method.
                await negotiate_auto(session)
            say(step="handshake", version=session.protocol_version)
            tools = await session.list_tools()
            say(step="tools", names=sorted(t.name for t in tools.tools))
            try:
                echoed = await session.call_tool("echo", {"message": "hello through custody"})
                say(step="echo", text=text_of(echoed), is_error=bool(echoed.is_error))
            except MCPError as error:
                say(step="echo", error_code=error.error.code, error=error.error.message)
                return
            for call in args.call:
                name, _, arguments = call.partition("=")
                try:
                    result = await session.call_tool(name, json.loads(arguments or "{}"))
                    say(step="call", tool=name, text=text_of(result), is_error=bool(result.is_error))
                except MCPError as error:
                    say(step="call", tool=name, error_code=error.error.code, error=error.error.message)
                    if error.error.code == -32002:
                        # Custody ended the session: nothing more will pass.
                        break


if __name__ == "__main__":
    asyncio.run(main())
