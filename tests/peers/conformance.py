"""Runs the MCP conformance suite (`@modelcontextprotocol/conformance`,
installed by install.sh into DIR/conformance) against a streamable-HTTP MCP
server and prints ONE JSON object on stdout, for a test (or a person) to
compare runs:

    {"url": ..., "seconds": 1.9,
     "passed": ["ping", ...], "failed": ["completion-complete", ...],
     "checks": {"passed": 13, "failed": 19},
     "failures": {"completion-complete": ["<errorMessage>", ...]}}

A scenario has failed when one of its checks is FAILURE or WARNING (the
suite's own rule for its --expected-failures baseline); `checks` counts
SUCCESS and FAILURE checks as the suite's "Total:" line does. Scenario
names come from the suite's `-o` results directory, one directory per
scenario (`server-<scenario>-<timestamp>/checks.json`), paired with the
"=== Running scenario: NAME ===" line that precedes its "Results saved to"
line.

    python3 conformance.py --url http://127.0.0.1:PORT/mcp [--peers DIR]
        [--scenario NAME]... [--keep DIR]

Exits 0 when the suite ran (whatever it found), 2 when it could not run.
Needs only the Python standard library.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True, help="the server's MCP endpoint")
    parser.add_argument(
        "--peers",
        default=os.path.join(here, "..", "..", "target", "mcp-peers"),
        help="where install.sh installed the peers (default: target/mcp-peers)",
    )
    parser.add_argument("--scenario", action="append", default=[], help="run only these scenarios")
    parser.add_argument("--keep", help="write the suite's results here (default: a temporary directory)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before giving up on the suite")
    args = parser.parse_args()

    suite = os.path.join(args.peers, "conformance/node_modules/@modelcontextprotocol/conformance/dist/index.js")
    if not os.path.exists(suite):
        print(f"the conformance suite is not installed at {suite}: run tests/peers/install.sh", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep or scratch
        runs = [[]] if not args.scenario else [["--scenario", s] for s in args.scenario]
        scenarios = {}
        started = time.monotonic()
        for extra in runs:
            command = ["node", suite, "server", "--url", args.url, "-o", out, *extra]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"the conformance suite did not finish within {args.timeout} s", file=sys.stderr)
                return 2
            found = results_of(done.stdout)
            if not found:
                print(
                    f"the conformance suite reported no scenario (exit {done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}",
                    file=sys.stderr,
                )
                return 2
            scenarios.update(found)
        seconds = round(time.monotonic() - started, 2)

        passed, failed, failures = [], [], {}
        counts = {"passed": 0, "failed": 0}
        for name, directory in scenarios.items():
            with open(os.path.join(directory, "checks.json")) as f:
                checks = json.load(f)
            statuses = [c.get("status") for c in checks]
            counts["passed"] += statuses.count("SUCCESS")
            counts["failed"] += statuses.count("FAILURE")
            bad = [c for c in checks if c.get("status") in ("FAILURE", "WARNING")]
            if bad:
                failed.append(name)
                failures[name] = [f"{c.get('id')}: {c.get('errorMessage', c.get('status'))}" for c in bad]
            else:
                passed.append(name)
    print(
        json.dumps(
            {
                "url": args.url,
                "seconds": seconds,
                "passed": sorted(passed),
                "failed": sorted(failed),
                "checks": counts,
                "failures": failures,
            }
        )
    )
    return 0


def results_of(stdout):
    """{scenario: results directory} from the suite's progress lines."""
    found, current = {}, None
    for line in stdout.splitlines():
        running = re.match(r"=== Running scenario: (.+) ===$", line.strip())
        if running:
            current = running.group(1)
            continue
        saved = re.match(r"Results saved to (.+)$", line.strip())
        if saved and current is not None:
            found[current] = saved.group(1)
            current = None
    return found


if __name__ == "__main__":
    sys.exit(main())
