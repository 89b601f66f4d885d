"""Proof of possession at the proxy (DPoP, RFC 9449): proofs checked on token requests and API calls, handles
bound to the key that signed them.

The shell half of dpop.py. It knows which URL a proof must name (``htu``: the one the client used to reach
the proxy, not the upstream URL mitmproxy rewrites a reverse-proxied request to), remembers every accepted
``jti`` in the store for as long as its proof could be accepted, so that any proxy sharing the store accepts
it once, and decides what a bound handle may do:

- a token request with a valid proof gets handles bound to its key (``Record.jkt``); an authorization server
  that binds the token itself (``cnf.jkt``) must have bound it to that same key;
- an API call with a bound handle needs ``Authorization: DPoP <handle>`` and a proof by that key whose ``ath``
  is the handle's hash; the API gets ``Authorization: Bearer <JWT>`` and no ``DPoP`` header;
- a bound handle presented as ``Bearer`` is refused, and so is a bearer handle presented as ``DPoP``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from . import dpop, policy
from .dpop import Proof
from .errors import NonceRequired, ProofRefused, TokenRefused
from .policy import Presented, Refusal
from .routing import in_reverse_mode
from .seal import Record
from .settings import Settings
from .state import FlowState
from .vault import Vault

# Keys of remembered jti values live beside record keys (SHA-256 hex of a handle): a domain of their own
# keeps the two apart, and hashing keeps a client's jti, which may be long, out of the store in clear.
_JTI_DOMAIN = b"splittoken dpop jti v1\x00"
_NONCE_DOMAIN = b"splittoken dpop nonce v1\x00"
# RFC 9110 §11.1: an authentication scheme is case-insensitive.
_SCHEME = "dpop"


@dataclass(frozen=True)
class Proven(Presented):
    """A handle presented with ``Authorization: DPoP`` and a valid proof, signed by the key ``jkt``."""

    jkt: str = ""


def request_url(flow: http.HTTPFlow, public_urls: Mapping[int, str]) -> str:
    """The URL the client used for this request, as its proof's ``htu`` must name it.

    A listener named in ``splittoken_public_urls`` is what is in front of it (a load balancer, a TLS
    terminator, a DNS name). Otherwise, in reverse mode, the scheme, address and port the client connected
    to: mitmproxy has already pointed the request (and, unless keep_host_header, its Host header) at the
    upstream, and a Host header is the client's word, which would let a proof made for another server pass.
    In the other modes the request names its destination itself."""
    address, port = flow.client_conn.sockname[:2]
    base = public_urls.get(port)
    if base is None:
        if not in_reverse_mode(flow):
            return flow.request.url
        scheme = "https" if flow.client_conn.tls else "http"
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack listener addressed the IPv4 address
        host = f"[{ip.compressed}]" if ip.version == 6 else str(ip)
        base = f"{scheme}://{host}:{port}"
    return base + flow.request.path


def jti_key(proof: Proof) -> str:
    """The store key under which a proof's jti is remembered. Scoped to the key that signed it: one
    client's jti cannot lock out another's."""
    return hashlib.sha256(_JTI_DOMAIN + f"{proof.jkt}\x00{proof.jti}".encode()).hexdigest()


def bound_to(claims: Mapping[str, Any], proven: str) -> str:
    """The thumbprint the handles of a token response are bound to: the key of the token request's proof
    (``proven``, empty without one), or the key the authorization server bound the token to (``cnf.jkt``,
    RFC 9449 §6.1), which must then be the same. Raises TokenRefused when it is not."""
    cnf = claims.get("cnf")
    if not isinstance(cnf, dict) or "jkt" not in cnf:
        return proven
    issued = cnf["jkt"]
    if not isinstance(issued, str) or not issued or (proven and issued != proven):
        raise TokenRefused("the token is bound to another DPoP key than the token request's proof")
    return issued


class Possession:
    def __init__(self, settings: Settings, vault: Vault) -> None:
        self.settings = settings
        self.vault = vault
        self._nonces: dict[int, str] = {}  # server nonces by window number, the current and previous one

    async def token_request(self, flow: http.HTTPFlow, st: FlowState) -> Refusal | None:
        """Check a token request's proof, which goes on to the authorization server unchanged (it may bind
        the token itself). Sets ``st.jkt`` when it is valid; a refusal (400) when it is not, or when one is
        required and missing: a client that sent a proof must not get handles that are not bound."""
        if self.settings.dpop == "off":
            return None
        values = flow.request.headers.get_all("dpop")
        if not values and self.settings.dpop == "optional":
            return None
        try:
            if not values:
                raise ProofRefused("a DPoP proof is required")
            proof = await self._accept(flow, values, access_token=None)
        except ProofRefused as e:
            return await self._proof_refused(e, st, policy.invalid_dpop_proof(str(e), e.error))
        st.jkt, st.dpop = proof.jkt, "proof verified"
        return None

    def binding(self, claims: Mapping[str, Any], st: FlowState) -> str:
        """The thumbprint a token response's handles are bound to (``bound_to``), kept in ``st.jkt``; empty
        for bearer handles. Raises TokenRefused (502) when the server bound the token to another key."""
        if self.settings.dpop != "off":
            st.jkt = bound_to(claims, st.jkt)
        return st.jkt

    async def read_authorization(self, flow: http.HTTPFlow, st: FlowState) -> Presented | Refusal:
        """What an API call presents: ``DPoP <handle>`` with its proof checked (a Proven), else whatever
        policy.read_authorization reads. The ``DPoP`` header does not go on to the API."""
        values = flow.request.headers.get_all("authorization")
        scheme, _, credential = values[0].strip(" \t").partition(" ") if len(values) == 1 else ("", "", "")
        if self.settings.dpop == "off":
            return policy.read_authorization(values)
        if scheme.lower() != _SCHEME:
            # The API takes the proxy's word for possession: a proof beside a bearer handle, which the proxy
            # never checked, must not reach it either.
            flow.request.headers.pop("dpop", None)
            return policy.read_authorization(values)
        handle = policy.read_handle(credential.strip(" "))
        if handle is None:
            return self._refused("invalid_token", "malformed credential: DPoP takes a handle")
        try:
            proof = await self._accept(flow, flow.request.headers.get_all("dpop"), access_token=handle)
        except ProofRefused as e:
            return await self._proof_refused(e, st, self._refused(e.error, str(e)))
        del flow.request.headers["dpop"]
        st.dpop = "proof verified"
        return Proven(handle, is_jwt=False, jkt=proof.jkt)

    def judge(self, presented: Presented, record: Record | None, st: FlowState) -> Refusal | None:
        """Whether the handle's binding allows how it was presented. None for a bearer handle presented as
        Bearer (and for an unknown one: the caller refuses it as today)."""
        if isinstance(presented, Proven):
            if record is None or record.kind != "access":
                return self._refused("invalid_token", "unknown, expired or revoked handle")
            if not record.jkt:
                return self._refused("invalid_token", "the handle is not DPoP-bound: present it as Bearer")
            if record.jkt != presented.jkt:
                return self._refused("invalid_dpop_proof", "the proof's key is not the handle's")
        elif record is not None and record.jkt:
            # RFC 9449 §7.2: a bound token presented as a bearer token is refused, whoever presents it.
            return self._refused("invalid_token", "a DPoP-bound handle needs Authorization: DPoP and a proof")
        if record is not None:
            st.jkt = record.jkt
        return None

    async def _accept(self, flow: http.HTTPFlow, values: list[str], access_token: str | None) -> Proof:
        """The proof in ``values`` (the DPoP header fields), checked and its jti remembered; ProofRefused."""
        if len(values) != 1:
            raise ProofRefused("exactly one DPoP header is needed")
        now = self.vault.clock()
        window = self.settings.dpop_window
        nonces = await self._accepted_nonces(now) if self.settings.dpop_nonce else None
        proof = dpop.verify_proof(
            values[0], method=flow.request.method, url=request_url(flow, self.settings.public_urls), now=now,
            window=window, access_token=access_token, nonces=nonces,
        )  # fmt: skip
        # Until no clock within the window on either side could take the proof's iat for recent.
        if not await self._remember(jti_key(proof), now + 2 * window):
            raise ProofRefused("DPoP proof jti was used before")
        return proof

    async def _remember(self, key: str, expires_at: float) -> bool:
        return await self.vault.add(key, b"", expires_at)

    async def _proof_refused(self, e: ProofRefused, st: FlowState, refusal: Refusal) -> Refusal:
        st.dpop = str(e)
        if not isinstance(e, NonceRequired):
            return refusal
        nonce = await self._nonce(self._window_number(self.vault.clock()), make=True)
        return dataclasses.replace(refusal, headers=(*refusal.headers, ("DPoP-Nonce", nonce or "")))

    def _window_number(self, now: float) -> int:
        return int(now // self.settings.dpop_window)

    async def _accepted_nonces(self, now: float) -> tuple[str, ...]:
        """The current window's nonce and the previous one's: a client that just got a nonce keeps it
        working for at least one window."""
        current = self._window_number(now)
        found = [await self._nonce(number, make=False) for number in (current, current - 1)]
        return tuple(nonce for nonce in found if nonce)

    async def _nonce(self, number: int, make: bool) -> str | None:
        """The server nonce of window ``number``: whichever proxy on the store needed it first made it, so
        that every proxy accepts it. ``make``: made here if there is none yet."""
        if nonce := self._nonces.get(number):
            return nonce
        key = hashlib.sha256(_NONCE_DOMAIN + str(number).encode()).hexdigest()
        expires_at = (number + 2) * self.settings.dpop_window  # good through the window after its own
        fresh = secrets.token_urlsafe(24)
        if make and await self.vault.add(key, fresh.encode(), expires_at):
            nonce = fresh
        else:
            stored = await self.vault.get(key)
            nonce = stored.decode("ascii", "replace") if stored else None
        if nonce:
            self._nonces = {n: v for n, v in self._nonces.items() if n >= number - 1} | {number: nonce}
        return nonce

    def _refused(self, error: str, description: str) -> Refusal:
        return policy.dpop_refused(error, description, dpop.ASYMMETRIC_ALGORITHMS)
