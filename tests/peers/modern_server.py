"""A real MCP server made with the Python `mcp` SDK (2.3.0), speaking the
2026-07-28 revision (stateless requests, `server/discover`, multi round-trip
requests) as well as the 2025-11-25 handshake, for the end-to-end tests of
Custody's gateway: the "modern upstream".

    python modern_server.py              # stdio
    python modern_server.py --http PORT  # streamable HTTP on 127.0.0.1:PORT/mcp

Tools:
- `echo` (message) -> the text `Echo: <message>`;
- `add` (a, b) -> their sum, as text and as structured content;
- `countdown` (steps, seconds) -> sleeps `steps` times `seconds`, reporting
  progress after each step (for progress and cancellation);
- `confirm-action` (action) -> asks the user to confirm through an
  elicitation, then says what was decided. On 2026-07-28 the SDK answers the
  first `tools/call` with an `input_required` result carrying the
  elicitation request (SEP-2322) and the client retries with
  `inputResponses`; on 2025-11-25 the server sends a standalone
  `elicitation/create` during the call.
"""

import argparse
from typing import Annotated

import anyio

from pydantic import BaseModel, Field

from mcp.server.mcpserver import Context, Elicit, ElicitationResult, MCPServer, Resolve

server = MCPServer(name="custody-modern-upstream", version="1.0.0", log_level="WARNING")


@server.tool()
def echo(message: str) -> str:
    """Echoes the message back."""
    return f"Echo: {message}"


@server.tool()
def add(a: float, b: float) -> float:
    """Adds two numbers."""
    return a + b


@server.tool()
async def countdown(steps: int, seconds: float, ctx: Context) -> str:
    """Counts `steps` steps of `seconds` each, reporting progress after each."""
    for step in range(1, steps + 1):
        await anyio.sleep(seconds)
        await ctx.report_progress(step, steps)
    return f"counted {steps} steps"


class Confirmation(BaseModel):
    confirm: bool = Field(description="Go ahead with the action")
    note: str = Field(default="", description="Anything to add")


def ask_confirmation(action: str) -> Elicit[Confirmation]:
    return Elicit(f"Confirm the action: {action}", Confirmation)


@server.tool(name="confirm-action")
def confirm_action(
    action: str,
    answer: Annotated[ElicitationResult[Confirmation], Resolve(ask_confirmation)],
) -> str:
    """Asks the user to confirm an action (a multi round-trip request on 2026-07-28)."""
    if answer.action != "accept":
        return f"{action}: {answer.action}"
    decided = "confirmed" if answer.data.confirm else "not confirmed"
    return f"{action}: {decided} ({answer.data.note})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT/mcp")
    args = parser.parse_args()
    if args.http is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=args.http, streamable_http_path="/mcp")


if __name__ == "__main__":
    main()
