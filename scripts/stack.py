"""The demo stack: the demo identity provider, the echo API, and mitmdump (or mitmweb) with the addon in
reverse-proxy mode in front of both, one listener each. One place that knows how to start it, shared by
``make run``/``make web`` (scripts/demo_stack.py), ``make demo``, the end-to-end tests and the benchmark.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from procs import ManagedProcess, free_port, listening_on, start_process

ROOT = Path(__file__).resolve().parent.parent
ADDON = ROOT / "addons" / "split_token.py"
TOKEN_PATH = "/realms/demo/protocol/openid-connect/token"
REVOKE_PATH = "/realms/demo/protocol/openid-connect/revoke"
CLIENT = {"client_id": "demo-client", "client_secret": "demo-secret"}
# The demos show what the echo API received, the whole JWT, which the proxy by default keeps out of the
# API's answers (splittoken_redact_api_responses).
DEMO_OPTIONS = {"splittoken_redact_api_responses": "false"}


def tool_path(tool: str) -> str:
    """mitmdump / mitmweb from the interpreter's own environment (the project's .venv)."""
    return str(Path(sys.executable).parent / tool)


def start_idp(*args: str, echo: str | None = None) -> ManagedProcess:
    return start_process(
        [sys.executable, str(ROOT / "scripts" / "demo_idp.py"), "--port", "0", *args],
        listening_on("demo-idp"), echo=echo,
    )  # fmt: skip


def start_api(echo: str | None = None) -> ManagedProcess:
    script = str(ROOT / "scripts" / "echo_api.py")
    return start_process([sys.executable, script, "--port", "0"], listening_on("echo-api"), echo=echo)


@dataclass
class Proxy:
    process: ManagedProcess
    idp_url: str  # the listener in front of the identity provider
    api_url: str  # the listener in front of the API
    web_url: str | None = None  # mitmweb's UI, with its access token

    def stop(self) -> int:
        return self.process.stop()

    def output(self) -> str:
        return self.process.output()


def _mitmweb_args(web_port: int) -> list[str]:
    args = ["--set", "web_open_browser=false", "--set", "web_host=127.0.0.1", "--set", f"web_port={web_port}"]
    # The addon's notes are flow comments, which mitmweb lists only in its optional Comment column.
    for column in ("tls", "icon", "path", "method", "status", "size", "time", "comment"):
        args += ["--set", f"web_columns={column}"]  # a repeated --set builds the list
    # mitmweb's command bar saves every command to <confdir>/command_history: keep handles given to
    # `splittoken.revoke` out of it.
    return [*args, "--set", "command_history=false"]


def start_proxy(
    idp_upstream: str,
    api_upstream: str,
    *,
    store: str | None,
    options: Mapping[str, str] | None = None,
    tool: str = "mitmdump",
    addon: bool = True,
    ports: Sequence[int] | None = None,
    echo: str | None = None,
    extra_args: Sequence[str] = (),
) -> Proxy:
    """mitmdump (or mitmweb) with two reverse-proxy listeners on loopback: identity provider and API.

    ``store=None`` keeps the addon's default store (under mitmproxy's confdir); ``addon=False`` gives the
    plain proxy the benchmark compares against.
    """
    idp_port, api_port, web_port = ports or (free_port(), free_port(), free_port())
    args = [
        tool_path(tool),
        "--set", "listen_host=127.0.0.1",
        "--mode", f"reverse:{idp_upstream}@{idp_port}",
        "--mode", f"reverse:{api_upstream}@{api_port}",
        # Open the upstream connection only when a request goes out: a refused request never reaches it.
        "--set", "connection_strategy=lazy",
    ]  # fmt: skip
    if addon:
        args += ["-s", str(ADDON)]
        if store is not None:
            args += ["--set", f"splittoken_store={store}"]
    for name, value in (options or {}).items():
        args += ["--set", f"{name}={value}"]
    if tool == "mitmweb":
        args += _mitmweb_args(web_port)
    args += list(extra_args)
    process = start_process(args, re.compile(rf"listening at .*:{idp_port}\b"), timeout=30, echo=echo)
    try:
        process.wait_for(re.compile(rf"listening at .*:{api_port}\b"), timeout=30)
        if addon and not {"-q", "--quiet"} & set(args):
            # mitmproxy listens before it has loaded the script: until this line, flows pass untouched.
            process.wait_for("splittoken: ready", timeout=30)
        web_url = None
        if tool == "mitmweb":
            web_url = process.wait_for(re.compile(r"Web server listening at (\S+)"), timeout=30).group(1)
    except BaseException:
        process.stop()
        raise
    return Proxy(process, f"http://127.0.0.1:{idp_port}", f"http://127.0.0.1:{api_port}", web_url)


@dataclass
class Stack:
    idp: ManagedProcess
    api: ManagedProcess
    proxy: Proxy

    @property
    def token_url(self) -> str:
        return self.proxy.idp_url + TOKEN_PATH

    @property
    def revoke_url(self) -> str:
        return self.proxy.idp_url + REVOKE_PATH


@contextlib.contextmanager
def demo_stack(
    *,
    store: str | None,
    options: Mapping[str, str] | None = None,
    tool: str = "mitmdump",
    idp_args: Sequence[str] = (),
    ports: Sequence[int] | None = None,
    echo: bool = False,
    extra_args: Sequence[str] = (),
) -> Iterator[Stack]:
    """Start the whole stack; stop every process it started on the way out, whatever happens."""
    with contextlib.ExitStack() as started:
        idp = started.enter_context(start_idp(*idp_args, echo="[idp] " if echo else None))
        api = started.enter_context(start_api(echo="[api] " if echo else None))
        assert idp.url and api.url
        proxy = start_proxy(
            idp.url,
            api.url,
            store=store,
            options=options,
            tool=tool,
            ports=ports,
            echo="" if echo else None,
            extra_args=extra_args,
        )
        started.callback(proxy.stop)
        yield Stack(idp, api, proxy)
