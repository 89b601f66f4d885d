"""``make run`` / ``make web``: the demo stack in the foreground, with curl commands to try. Ctrl-C stops it.

    python scripts/demo_stack.py [--web] [--idp-port 8080] [--api-port 8081] [--web-port 8181] [--store DIR]
        [mitmproxy options, e.g. --set splittoken_max_ttl=60]
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from stack import CLIENT, DEMO_OPTIONS, REVOKE_PATH, TOKEN_PATH, demo_stack


def instructions(idp_url: str, api_url: str, web_url: str | None) -> str:
    token = f"{idp_url}{TOKEN_PATH}"
    client = f"-d client_id={CLIENT['client_id']} -d client_secret={CLIENT['client_secret']}"
    pick = "python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])'"
    lines = [
        "",
        "splittoken demo stack is up.",
        f"  token endpoint (through the proxy): {token}",
        f"  echo API       (through the proxy): {api_url}/",
    ]
    if web_url:
        lines.append(f"  mitmweb UI: {web_url}")
    lines += [
        "",
        "Try (bash):",
        f"  curl -s -X POST {token} -d grant_type=client_credentials {client}",
        f"  RESP=$(curl -s -X POST {token} -d grant_type=password -d username=alice -d password=alice-pw \\",
        f"         {client})",
        f'  HANDLE=$(echo "$RESP" | {pick} access_token); REFRESH=$(echo "$RESP" | {pick} refresh_token)',
        f'  curl -s {api_url}/anything -H "Authorization: Bearer $HANDLE"    # the API got the whole JWT',
        f'  curl -s {api_url}/anything -H "Authorization: $HANDLE"           # bare handle works too',
        f'  curl -si {api_url}/anything -H "Authorization: Bearer nope"      # 401, the API never sees it',
        f'  curl -s -X POST {token} -d grant_type=refresh_token -d refresh_token="$REFRESH" {client}',
        f'  curl -si -X POST {idp_url}{REVOKE_PATH} -d token="$HANDLE" {client}',
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--web", action="store_true", help="mitmweb instead of mitmdump")
    parser.add_argument("--idp-port", type=int, default=8080, help="proxy listener for the identity provider")
    parser.add_argument("--api-port", type=int, default=8081, help="proxy listener for the echo API")
    parser.add_argument("--web-port", type=int, default=8181, help="mitmweb's UI (with --web)")
    parser.add_argument("--store", default=None, help="splittoken_store (default: under ~/.mitmproxy)")
    # Anything else goes to mitmproxy as it is: `make run ARGS="--set splittoken_max_ttl=60"`.
    args, mitmproxy_args = parser.parse_known_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with demo_stack(
            store=args.store,
            # The echo API shows what it received, the whole JWT: that is the point of trying it here. (ARGS
            # come later on the command line and win: --set splittoken_redact_api_responses=true.)
            options=DEMO_OPTIONS,
            tool="mitmweb" if args.web else "mitmdump",
            ports=(args.idp_port, args.api_port, args.web_port),
            echo=True,
            extra_args=mitmproxy_args,
        ) as stack:
            print(instructions(stack.proxy.idp_url, stack.proxy.api_url, stack.proxy.web_url), flush=True)
            processes = (stack.idp, stack.api, stack.proxy.process)
            while not stop.wait(0.5):
                if any(p.proc.poll() is not None for p in processes):
                    print("a process of the stack ended; stopping the rest", file=sys.stderr)
                    return 1
    except KeyboardInterrupt:
        pass
    print("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
