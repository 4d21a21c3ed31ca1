"""The parity client: a real MCP client (the Python `mcp` SDK, 2.3.0) that
runs a fixed scenario against one MCP server and prints ONE normalized JSON
line per step, so that a test can run it once directly against a server and
once through Custody and compare the two transcripts line for line.

    python mcp_parity.py --scenario everything|filesystem|modern --era ERA
        [--dir DIR] (-- COMMAND... | --url URL [--header 'Name: value']...)

Transports: stdio (the command after `--`, handed this process's
environment, as a host's configuration would) or streamable HTTP (`--url`,
with any `--header`, e.g. `Authorization: Bearer X`).

Eras: `2025-11-25` (the initialize handshake), `auto` (the SDK's default: a
2026-07-28 `server/discover` first, the handshake if the server does not
know it), `2026-07-28` (adopt the modern revision without a probe).

Normalized: nothing timed is printed; strings longer than 1,000 characters
are replaced by their length and SHA-256; times of day (`4:22:03 AM`) by
`<time>`; `--dir` (and its real path) is
printed as `$DIR`. A step that fails prints its JSON-RPC error (code and
message) instead of its result and the scenario goes on, so a difference
shows as a differing line rather than a crash. The client's response cache
is off: every step reaches the server.

Scenarios:
- everything (`@modelcontextprotocol/server-everything`): tools/list, echo,
  a structured tool, content of each kind (image, embedded resource, links,
  annotations), an unknown tool and bad arguments, resources/list and a read, resources/templates/list and
  a read through a template, prompts/list and prompts/get with arguments,
  completion/complete, resources/subscribe and unsubscribe, ping and
  logging/setLevel, a
  sampling round trip, an elicitation round trip, progress (notifications
  counted), roots (`roots/list` asked by the server), cancellation (a long call cancelled after its first progress
  notification, then a later call).
- filesystem (`@modelcontextprotocol/server-filesystem DIR`):
  list_allowed_directories, write_file then read_text_file in DIR,
  list_directory.
- modern (tests/peers/modern_server.py): echo, add, and `confirm-action`, a
  multi round-trip request (SEP-2322) whose first round is reported, then
  completed by the SDK's own driver; progress and cancellation with
  `countdown`.
"""

import argparse
import asyncio
import hashlib
import json
import os
import re
import warnings

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

# The fixed answers of this client's callbacks.
SAMPLED_TEXT = "sampled by the parity client"
ELICITED = {"name": "Parity Tester", "check": True, "confirm": True, "note": "from the parity client"}

# What the callbacks saw, printed by the steps that caused them.
seen = {"sampling": [], "elicitation": [], "progress": 0}
replacements = []


def say(step, **fields):
    print(json.dumps({"step": step, **normalize(fields)}, sort_keys=True), flush=True)


def normalize(value):
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if isinstance(value, str):
        for old, new in replacements:
            value = value.replace(old, new)
        # server-everything's dynamic resources say when they were made.
        value = re.sub(r"\b\d{1,2}:\d{2}:\d{2}( [AP]M)?\b", "<time>", value)
        if len(value) > 1000:
            return {"len": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()}
    return value


def dump(model):
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def result_fields(result):
    """A tool result, as the client parsed it (with its `_meta`)."""
    return dump(result)


async def step(name, action, **fields):
    """Runs one step; prints what it returned, or its error."""
    try:
        said = await action()
    except MCPError as error:
        say(name, **fields, error_code=error.error.code, error=error.error.message)
        return None
    say(name, **fields, **said)
    return said


async def sampling(context, params):
    seen["sampling"].append(
        {
            "messages": [dump(m) for m in params.messages],
            "max_tokens": params.max_tokens,
            "system_prompt": params.system_prompt,
        }
    )
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=SAMPLED_TEXT),
        model="parity-model",
        stop_reason="endTurn",
    )


async def elicitation(context, params):
    schema = getattr(params, "requested_schema", None) or {}
    if not isinstance(schema, dict):
        schema = dump(schema)
    seen["elicitation"].append({"message": params.message, "fields": sorted(schema.get("properties", {}))})
    wanted = schema.get("properties", {})
    # In key order: a gateway may re-serialize the answer (JSON objects are
    # unordered), and server-everything prints what it got as it came.
    content = {k: ELICITED[k] for k in sorted(ELICITED) if k in wanted}
    return types.ElicitResult(action="accept", content=content)


async def notified(message):
    """Counts every progress notification, whether a call still waits for it or not."""
    method = getattr(message, "method", None) or getattr(getattr(message, "root", None), "method", None)
    if method == "notifications/progress":
        seen["progress"] += 1


async def list_roots(context):
    return types.ListRootsResult(roots=[types.Root(uri="file:///parity/root", name="parity root")])


def drain(kind):
    got, seen[kind] = seen[kind], []
    return got


async def everything(client):
    await step("tools", lambda: tools(client))
    await step("echo", lambda: call(client, "echo", {"message": "parity"}))
    await step("structured", lambda: call(client, "get-structured-content", {"location": "Chicago"}))
    # Content of each kind: an image, an embedded resource, resource links,
    # annotations; then errors: an unknown tool, arguments of the wrong type.
    await step("image", lambda: call(client, "get-tiny-image", {}))
    await step("embedded", lambda: call(client, "get-resource-reference", {"resourceType": "Text", "resourceId": 2}))
    await step("links", lambda: call(client, "get-resource-links", {"count": 2}))
    await step("annotated", lambda: call(client, "get-annotated-message", {"messageType": "success"}))
    await step("unknown-tool", lambda: call(client, "no-such-tool", {}))
    await step("bad-arguments", lambda: call(client, "get-sum", {"a": "one", "b": 2}))

    async def resources():
        listed = await client.list_resources()
        uris = sorted(r.uri for r in listed.resources)
        read = await client.read_resource(uris[0])
        return {"uris": uris, "read": uris[0], "contents": [dump(c) for c in read.contents]}

    await step("resources", resources)

    async def templates():
        listed = await client.list_resource_templates()
        uri = "demo://resource/dynamic/text/7"
        read = await client.read_resource(uri)
        return {
            "templates": sorted(t.uri_template for t in listed.resource_templates),
            "read": uri,
            "contents": [dump(c) for c in read.contents],
        }

    await step("templates", templates)

    async def prompts():
        listed = await client.list_prompts()
        got = await client.get_prompt("args-prompt", {"city": "Paris", "state": "Texas"})
        return {"names": sorted(p.name for p in listed.prompts), "messages": [dump(m) for m in got.messages]}

    await step("prompts", prompts)

    async def complete():
        got = await client.complete(
            types.PromptReference(type="ref/prompt", name="completable-prompt"),
            {"name": "department", "value": "E"},
        )
        return {"completion": dump(got.completion)}

    await step("complete", complete)

    async def subscribe():
        uri = "demo://resource/static/document/features.md"
        await client.subscribe_resource(uri)
        await client.unsubscribe_resource(uri)
        return {"uri": uri}

    await step("subscribe", subscribe)

    async def legacy_requests():
        # Removed in 2026-07-28 (server-everything speaks 2025-11-25 in
        # both eras): ping and logging/setLevel.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.send_ping()
            await client.set_logging_level("error")
        return {}

    await step("ping-and-log-level", legacy_requests)

    async def sample():
        said = await call(client, "trigger-sampling-request", {"prompt": "parity", "maxTokens": 20})
        return {**said, "sampling_requests": drain("sampling")}

    await step("sampling", sample)

    async def elicit():
        said = await call(client, "trigger-elicitation-request", {})
        return {**said, "elicitation_requests": drain("elicitation")}

    await step("elicitation", elicit)

    async def progress():
        notes = []

        async def on_progress(progress, total, message):
            notes.append([progress, total])

        said = await call(
            client, "trigger-long-running-operation", {"duration": 1, "steps": 4}, progress_callback=on_progress
        )
        return {**said, "progress": notes}

    await step("progress", progress)
    # The server asks this client for its roots (`roots/list`).
    await step("roots", lambda: call(client, "get-roots-list", {}))
    await cancellation(client, "trigger-long-running-operation", {"duration": 6, "steps": 12})
    await step("after-cancel", lambda: call(client, "echo", {"message": "still here"}))


async def cancellation(client, tool, arguments):
    """Starts a long call, cancels it at its first progress notification (the
    SDK sends `notifications/cancelled`), then waits a while: the session
    must survive whatever the server still sends for it."""
    first = anyio.Event()
    outcome = {}

    async def on_progress(progress, total, message):
        first.set()

    async def long_call(scope):
        with scope:
            try:
                result = await client.call_tool(tool, arguments, progress_callback=on_progress)
                outcome["completed"] = result_fields(result)
            except MCPError as error:
                outcome["error_code"] = error.error.code
                outcome["error"] = error.error.message
        if scope.cancelled_caught:
            outcome["cancelled"] = True

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as group:
        group.start_soon(long_call, scope)
        with anyio.move_on_after(10):
            await first.wait()
        outcome["progress_before_cancel"] = first.is_set()
        scope.cancel()
    # Long enough for the server's next progress notifications for the
    # cancelled call, if it goes on, to arrive (and be dropped): whether any
    # came says whether the server stopped (the Python SDK's server does,
    # server-everything's tool does not).
    before = seen["progress"]
    await anyio.sleep(1.5)
    outcome["progress_after_cancel"] = seen["progress"] > before
    say("cancel", tool=tool, **outcome)


async def tools(client):
    """The tools listed, names and whole definitions (a gateway re-serializes
    this answer: nothing may be lost on the way)."""
    listed = await client.list_tools()
    return {
        "names": sorted(t.name for t in listed.tools),
        "definitions": sorted((dump(t) for t in listed.tools), key=lambda t: t["name"]),
        "next_cursor": listed.next_cursor,
    }


async def call(client, name, arguments, **options):
    result = await client.call_tool(name, arguments, **options)
    return result_fields(result)


async def filesystem(client, directory):
    await step("tools", lambda: tools(client))
    await step("allowed", lambda: call(client, "list_allowed_directories", {}))
    path = os.path.join(directory, "parity.txt")
    await step("write", lambda: call(client, "write_file", {"path": path, "content": "written through the parity client\n"}))
    await step("read", lambda: call(client, "read_text_file", {"path": path}))
    await step("list", lambda: call(client, "list_directory", {"path": directory}))


async def modern(client):
    await step("tools", lambda: tools(client))
    await step("echo", lambda: call(client, "echo", {"message": "parity"}))
    await step("add", lambda: call(client, "add", {"a": 2, "b": 3}))

    async def first_round():
        # One round by hand: on 2026-07-28 the server answers with an
        # input_required result carrying the elicitation (SEP-2322); on
        # 2025-11-25 it elicits during the call and answers with the result.
        result = await client.session.call_tool(
            "confirm-action", {"action": "deploy"}, allow_input_required=True
        )
        fields = dump(result)
        requests = fields.get("inputRequests") or {}
        return {
            "result_type": fields.get("resultType", "complete"),
            "input_requests": sorted(r.get("method") for r in requests.values()),
            "has_request_state": "requestState" in fields,
            "elicitation_requests": drain("elicitation"),
        }

    await step("mrtr-first-round", first_round)

    async def complete():
        said = await call(client, "confirm-action", {"action": "deploy"})
        return {**said, "elicitation_requests": drain("elicitation")}

    await step("mrtr", complete)

    async def progress():
        notes = []

        async def on_progress(progress, total, message):
            notes.append([progress, total])

        said = await call(client, "countdown", {"steps": 3, "seconds": 0.2}, progress_callback=on_progress)
        return {**said, "progress": notes}

    await step("progress", progress)
    await cancellation(client, "countdown", {"steps": 6, "seconds": 1})
    await step("after-cancel", lambda: call(client, "echo", {"message": "still here"}))


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenario", choices=["everything", "filesystem", "modern"], required=True)
    parser.add_argument("--era", choices=["2025-11-25", "auto", "2026-07-28"], required=True)
    parser.add_argument("--url", help="a streamable-HTTP endpoint, in place of a command")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', sent on every HTTP request")
    parser.add_argument("--dir", help="the filesystem scenario's directory (printed as $DIR)")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if bool(command) == bool(args.url):
        parser.error("give either a command after `--` or --url")
    if args.dir:
        args.dir = os.path.realpath(args.dir)
        replacements.append((args.dir, "$DIR"))
    if args.scenario == "filesystem" and not args.dir:
        parser.error("the filesystem scenario needs --dir")

    mode = {"2025-11-25": "legacy"}.get(args.era, args.era)
    callbacks = dict(
        sampling_callback=sampling,
        elicitation_callback=elicitation,
        list_roots_callback=list_roots,
        message_handler=notified,
        cache=None,
        mode=mode,
    )
    if args.url:
        headers = {}
        for header in args.header:
            name, _, value = header.partition(":")
            headers[name.strip()] = value.strip()
        http = create_mcp_http_client(headers=headers)
        async with http:
            await run(Client(streamable_http_client(args.url, http_client=http), **callbacks), args)
    else:
        server = StdioServerParameters(command=command[0], args=command[1:], env=dict(os.environ))
        await run(Client(server, **callbacks), args)


async def run(client, args):
    async with client:
        say("handshake", version=client.protocol_version, server=getattr(client.server_info, "name", None))
        if args.scenario == "everything":
            await everything(client)
        elif args.scenario == "filesystem":
            await filesystem(client, args.dir)
        else:
            await modern(client)
    say("end")


if __name__ == "__main__":
    asyncio.run(main())
