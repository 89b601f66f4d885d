"""One error family for the whole package, as pyjwt's ``PyJWTError``: callers catch ``SplitTokenError`` (or
one of its kinds) instead of listing unrelated exceptions. Every message is safe to log and, where the proxy
answers with it, to send: none ever holds a token, a handle or a secret.
"""

from __future__ import annotations


class SplitTokenError(Exception):
    """Base of every error splittoken raises on purpose."""


class Unparseable(SplitTokenError, ValueError):
    """A body that is neither a JSON object nor a form, or an encoding the proxy cannot undo."""


class TooLarge(SplitTokenError, ValueError):
    """A body past the configured limit (before or after its Content-Encoding is undone)."""


class TokenRefused(SplitTokenError, ValueError):
    """A token the proxy must not hand on (unsigned, expired, malformed, not verified)."""


class SealBroken(SplitTokenError, ValueError):
    """A sealed record that does not open under this handle: tampered with, moved, or not ours."""


class StoreUnavailable(SplitTokenError):
    """The store cannot be read or written right now: the proxy answers 503."""


class StoreInvalid(SplitTokenError, ValueError):
    """A store the proxy cannot use as given: an unknown URL scheme, a Redis URL redis-py would misread."""


class ReplicasInvalid(StoreInvalid):
    """A ``min_replicas`` the store cannot honour: the option's fault, not the URL's."""


class OptionInvalid(SplitTokenError, ValueError):
    """An option value the proxy refuses to run with; ``option`` names it."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(f"{option}: {problem}")
        self.option = option


class ProofRefused(SplitTokenError, ValueError):
    """The DPoP proof is not acceptable. The message is a fixed sentence: safe to log and to send."""

    error = "invalid_dpop_proof"


class NonceRequired(ProofRefused):
    """The proof is sound but lacks a nonce the server currently accepts (RFC 9449 §8, §9)."""

    error = "use_dpop_nonce"
