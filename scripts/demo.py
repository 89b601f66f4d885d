"""``make demo``: the Split Token Flow as a security walk-through in the terminal, for a talk or a blog post.

It starts the demo stack (identity provider, echo API, mitmdump with the addon, a throwaway store) on free
loopback ports and shows, step by step:

  1. what anyone holding a raw JWT reads in it, with no key, as jwt.io would;
  2. the same login through the proxy: the client gets a handle, and there is nothing in it to read;
  3. an API call with the handle: the API receives the whole JWT, claims and all;
  4. a tampered handle and a stolen JWT: 401 from the proxy, and the API never sees them;
  5. a DPoP-bound handle (RFC 9449): stolen, with or without the proofs the thief saw, it gets 401 too.

Every process it started is stopped on the way out, Ctrl-C included.

    python scripts/demo.py [--no-color] [--pause]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from rich import box
from rich.columns import Columns
from rich.console import Console, Group
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from stack import CLIENT, DEMO_OPTIONS, ROOT, TOKEN_PATH, Stack, demo_stack

sys.path.insert(0, str(ROOT / "addons"))
from splittoken import dpop, jws
from splittoken.view import describe_time

# What makes a leaked token worth stealing: who, how to reach them, what they may do, whose data.
REVEALING = ("email", "preferred_username", "realm_access", "tenant", "sub")
LOGIN = {"grant_type": "password", "username": "alice", "password": "alice-pw", **CLIENT}


class DemoFailed(Exception):
    """The stack did not behave as the walk-through says it does: stop rather than tell a wrong story."""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def call(
    url: str, form: dict[str, str] | None = None, authorization: str | None = None, proof: str | None = None
) -> Answer:
    """One HTTP exchange; error statuses are answers too (a 401 is the point of step 4). ``proof``: a DPoP
    header."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    if proof is not None:
        request.add_header("DPoP", proof)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    body = json.loads(raw) if raw else None
    return Answer(status, {k.lower(): v for k, v in headers.items()}, body)


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)


def short(value: str, keep: int = 24) -> str:
    return value if len(value) <= keep + 12 else f"{value[:keep]}… ({len(value)} characters)"


def claims_table(claims: dict[str, Any], title: str, now: float) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, show_header=False, title_justify="left", expand=False)
    table.add_column("claim", style="cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in claims.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
        if when := describe_time(name, value, now):
            shown += f"  ({when})"
        table.add_row(name, Text(shown, style="bold red" if name in REVEALING else ""))
    return table


class Demo:
    def __init__(self, console: Console, stack: Stack, pause: bool) -> None:
        self.out = console
        self.stack = stack
        self.pause = pause

    def step(self, number: int, title: str) -> None:
        if self.pause and number > 1:
            self.out.input("[dim]Enter for the next step…[/dim]")
        self.out.print()
        self.out.print(Rule(f"Step {number}: {title}", style="bold", align="left"))

    def run(self) -> None:
        stack = self.stack
        self.out.print(Panel.fit(
            Text.assemble(
                ("Split Token Flow demo\n", "bold"),
                f"identity provider  {stack.idp.url}   (direct)\n",
                f"echo API           {stack.api.url}   (direct)\n",
                f"proxy → IdP        {stack.proxy.idp_url}\n",
                f"proxy → API        {stack.proxy.api_url}",
            ),
        ))  # fmt: skip
        raw_jwt = self.raw_jwt()
        handle = self.through_proxy()
        self.api_call(handle)
        self.refused(handle, raw_jwt)
        self.dpop_bound()
        self.out.print()
        self.out.print(Panel.fit(
            "The client only ever held a handle. The JWT went from the identity provider to the proxy, and "
            "from the proxy to the API: never to the browser, its extensions, or a script injected into it.",
            title="Summary", border_style="green",
        ))  # fmt: skip

    def raw_jwt(self) -> str:
        self.step(1, "a raw JWT, fetched straight from the identity provider")
        answer = call(f"{self.stack.idp.url}{TOKEN_PATH}", LOGIN)
        expect(answer.status == 200, f"the identity provider answered {answer.status}: {answer.body}")
        token = answer.body["access_token"]
        header, claims = jws.inspect(token)
        self.out.print(f"POST {TOKEN_PATH}  (alice logs in)  →  access_token: [yellow]{short(token)}[/]")
        self.out.print(
            "A JWT is signed, not encrypted: its header and claims are base64url. Decoded, with no key:"
        )
        now = time.time()
        self.out.print(Columns([claims_table(header, "header", now), claims_table(claims, "claims", now)]))
        roles = ", ".join(claims.get("realm_access", {}).get("roles", []))
        self.out.print(Panel(
            f"Whoever holds this token learns that it is [bold red]{claims.get('preferred_username')} "
            f"<{claims.get('email')}>[/], with roles [bold red]{roles}[/] in tenant "
            f"[bold red]{claims.get('tenant')}[/]: the single-page app, every browser extension, an XSS "
            "payload, a log line, a crash report. And until it expires, they can replay it.",
            title="What leaks", border_style="red",
        ))  # fmt: skip
        return token

    def through_proxy(self) -> str:
        self.step(2, "the same login through the proxy")
        answer = call(self.stack.token_url, LOGIN)
        expect(answer.status == 200, f"the proxy answered {answer.status}: {answer.body}")
        handle = answer.body["access_token"]
        body = Table(title="what the client receives", box=box.SIMPLE_HEAD, title_justify="left")
        body.add_column("field", style="cyan", no_wrap=True)
        body.add_column("value", overflow="fold")
        for name, value in answer.body.items():
            body.add_row(name, Text(short(str(value)), style="yellow" if name.endswith("_token") else ""))
        self.out.print(body)
        self.out.print(f"Decoding the access_token like a JWT: {self.decode_attempt(handle)}")
        self.out.print(Panel(
            "The handle is the JWT's signature: random-looking bytes, no header, no claims. The proxy kept "
            "header and claims, sealed in its store under a key derived from the handle itself.",
            title="Nothing to read", border_style="green",
        ))  # fmt: skip
        return handle

    def decode_attempt(self, handle: str) -> str:
        try:
            jws.inspect(handle)
        except jws.TokenRefused as e:
            refused = str(e)
        else:
            raise DemoFailed("the client received a readable JWT")
        noise = len(jwt.utils.base64url_decode(handle))
        return f"[green]{refused}[/] — base64url-decoded it is {noise} bytes of signature, no JSON in it."

    def api_call(self, handle: str) -> None:
        self.step(3, "an API call with the handle")
        answer = call(f"{self.stack.proxy.api_url}/orders", authorization=f"Bearer {handle}")
        expect(answer.status == 200, f"the API call answered {answer.status}: {answer.body}")
        received = [v for k, v in answer.body["headers"] if k.lower() == "authorization"]
        expect(len(received) == 1, f"the API received {len(received)} Authorization headers")
        token = received[0].partition(" ")[2]
        expect(token.endswith(f".{handle}"), "the API did not receive the JWT signed with the handle")
        sent = Panel(
            f"GET /orders\nAuthorization: Bearer [yellow]{short(handle, 16)}[/]",
            title="the client sent", border_style="yellow",
        )  # fmt: skip
        got = Panel(
            f"GET /orders\nAuthorization: Bearer [red]{short(token, 16)}[/]",
            title="the API received", border_style="red",
        )  # fmt: skip
        self.out.print(Columns([sent, got]))
        self.out.print(
            "The proxy joined the header and claims it kept with the handle, which is the identity "
            "provider's own signature: the API verifies the JWT as usual, its code and libraries unchanged."
        )
        claims = answer.body.get("jwt_claims") or {}
        expect(bool(claims), "the API received no JWT")
        self.out.print(claims_table(claims, "claims the API reads (the echo API decodes them)", time.time()))

    def refused(self, handle: str, raw_jwt: str) -> None:
        self.step(4, "a tampered handle, and a stolen JWT")
        before = self.api_requests()
        tampered = handle[:10] + ("A" if handle[10] != "A" else "B") + handle[11:]
        attempts = (
            ("a tampered handle (one character changed)", tampered),
            ("the raw JWT from step 1, replayed by a thief", raw_jwt),
        )
        for what, credential in attempts:
            answer = call(f"{self.stack.proxy.api_url}/orders", authorization=f"Bearer {credential}")
            expect(answer.status == 401, f"{what}: expected 401, got {answer.status}")
            self.out.print(Panel(
                Group(
                    f"GET /orders\nAuthorization: Bearer {short(credential, 16)}",
                    Text(f"HTTP {answer.status}", style="bold green"),
                    f"WWW-Authenticate: {answer.headers.get('www-authenticate', '')}",
                    json.dumps(answer.body),
                ),
                title=what, title_align="left", border_style="green",
            ))  # fmt: skip
        after = self.api_requests()
        expect(after == before, f"the API saw {after - before} of the refused requests")
        self.out.print(
            f"Requests the echo API has received: {before} before, {after} after: "
            "[bold green]unchanged[/], the proxy answered both itself (RFC 6750) and the API never saw them."
        )
        self.out.print(Panel(
            "A handle hides the claims, but it is still a bearer credential: whoever steals the handle "
            "itself can call the API through the proxy with it until it expires or is revoked. Keep TLS in "
            "front of the proxy, access token lifetimes short, and revoke handles you suspect (RFC 7009, "
            "splittoken.revoke).",
            title="what a handle does not protect", title_align="left", border_style="yellow",
        ))  # fmt: skip

    def dpop_bound(self) -> None:
        self.step(5, "a DPoP-bound handle: stolen, it is useless")
        key, thief_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        token_url, api = self.stack.token_url, f"{self.stack.proxy.api_url}/orders"
        answer = call(token_url, LOGIN, proof=dpop.make_proof(key, "POST", token_url))
        expect(answer.status == 200, f"the proxy answered {answer.status}: {answer.body}")
        expect(answer.body.get("token_type") == "DPoP", "the handle is not DPoP-bound")
        handle = answer.body["access_token"]
        seen = dpop.make_proof(key, "GET", api, access_token=handle)
        owner = call(api, authorization=f"DPoP {handle}", proof=seen)
        expect(owner.status == 200, f"the owner's call answered {owner.status}: {owner.body}")
        self.out.print(
            "The client logged in with a DPoP proof (a JWT signed by a key only it holds): its handles are "
            "bound to that key, and each API call carries a fresh proof. The API still receives "
            "Authorization: Bearer <JWT>, and no proof."
        )
        before = self.api_requests()
        attempts = (
            ("the stolen handle, as a bearer token", f"Bearer {handle}", None),
            ("the stolen handle, with the proof the client just sent", f"DPoP {handle}", seen),
            ("the stolen handle, with a proof of the thief's own key", f"DPoP {handle}",
             dpop.make_proof(thief_key, "GET", api, access_token=handle)),
        )  # fmt: skip
        for what, authorization, proof in attempts:
            answer = call(api, authorization=authorization, proof=proof)
            expect(answer.status == 401, f"{what}: expected 401, got {answer.status}")
            self.out.print(Panel(
                Group(
                    f"GET /orders\nAuthorization: {short(authorization, 24)}"
                    + (f"\nDPoP: {short(proof, 16)}" if proof else ""),
                    Text(f"HTTP {answer.status}", style="bold green"),
                    f"WWW-Authenticate: {answer.headers.get('www-authenticate', '')}",
                ),
                title=what, title_align="left", border_style="green",
            ))  # fmt: skip
        after = self.api_requests()
        expect(after == before, f"the API saw {after - before} of the refused requests")
        self.out.print(Panel(
            "Where a stolen bearer handle still works (step 4), a stolen DPoP-bound handle is refused: "
            "without the client's private key there is no proof, and a proof it saw is accepted once only. "
            "Turn it on for every client with --set splittoken_dpop=required.",
            title="sender-constrained", title_align="left", border_style="green",
        ))  # fmt: skip

    def api_requests(self) -> int:
        # Straight to the echo API: its counters are not behind the proxy.
        return call(f"{self.stack.api.url}/_stats").body["requests"]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-color", action="store_true", help="plain text, no colors (also: NO_COLOR=1)")
    parser.add_argument("--pause", action="store_true", help="wait for Enter between steps (for a talk)")
    args = parser.parse_args()
    console = Console(no_color=args.no_color or None, highlight=False)
    # SIGTERM unwinds like Ctrl-C, so that the stack is stopped either way.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        with contextlib.ExitStack() as cleanup:
            # A throwaway store and confdir: the demo leaves no handles and no CA files behind.
            tmp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="splittoken-demo-"))
            with console.status("starting the identity provider, the echo API and mitmdump…"):
                stack = cleanup.enter_context(
                    demo_stack(store=f"{tmp}/store", options={"confdir": f"{tmp}/conf", **DEMO_OPTIONS})
                )
            Demo(console, stack, args.pause and console.is_terminal).run()
    except KeyboardInterrupt:
        console.print("\ninterrupted; the demo stack is stopped.")
        return 130
    except DemoFailed as e:
        console.print(f"[bold red]demo failed:[/] {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
