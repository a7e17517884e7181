"""What every cloud adapter shares: error mapping, secret hygiene, endpoint policy.

Vendor SDK exceptions are never re-raised as they are: their messages and chained causes
can carry request headers. Adapters turn every failure into a :class:`ProviderError`
with the seed's status codes and a message that was scrubbed of every key this process
handed to an SDK, and raise it ``from None``.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import logging
import ssl
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from providers.base import ProviderError

log = logging.getLogger(__name__)

REDACTED = "[REDACTED]"

#: Vendor codes that mean "the account has no credits left" (seed: 402).
_CREDIT_CODES = frozenset(
    {
        "insufficient_quota",
        "quota_exceeded",
        "insufficient_credits",
        "payment_required",
        "ASR_PAYMENT_REQUIRED",
        "TTS_PAYMENT_REQUIRED",
    }
)


# --------------------------------------------------------------------------- secrets


class _SecretRegistry:
    """Every key handed to a vendor SDK, so logs and messages can be scrubbed of it."""

    def __init__(self) -> None:
        self._secrets: set[str] = set()

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 6:
            self._secrets.add(secret)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def __contains__(self, text: object) -> bool:
        return isinstance(text, str) and any(s in text for s in self._secrets)


SECRETS = _SecretRegistry()


class SecretFilter(logging.Filter):
    """Rewrites a record whose message would contain a registered key.

    Attached to the loggers that see credentials on the wire (``websockets`` handshake
    headers, the HTTP clients), so a DEBUG log level never writes a key anywhere.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is not ours to fix
            return True
        if message in SECRETS:
            record.msg = SECRETS.scrub(message)
            record.args = None
        return True


_WIRE_LOGGERS = (
    "websockets.client",
    "websockets.server",
    "websockets.protocol",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "openai",
    "openai._base_client",
    "deepgram",
    "elevenlabs",
)
_filter = SecretFilter()


def register_secret(secret: str | None) -> None:
    """Remember ``secret`` and make sure the wire loggers are scrubbed of it."""
    SECRETS.add(secret)
    for name in _WIRE_LOGGERS:
        logger = logging.getLogger(name)
        if _filter not in logger.filters:
            logger.addFilter(_filter)


def wire_logger(name: str) -> logging.Logger:
    """A logger for a client library we hand our own logger to (websockets' ``logger=``).

    Logger filters apply only where a record is created, not to ancestors, so each such
    logger carries the scrubbing filter itself.
    """
    logger = logging.getLogger(name)
    if _filter not in logger.filters:
        logger.addFilter(_filter)
    return logger


def scrub(text: str) -> str:
    return SECRETS.scrub(text)


# --------------------------------------------------------------------------- clients

_C = TypeVar("_C")


def key_digest(api_key: str | None) -> str:
    """What a client cache keys on instead of the key itself."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()


class ClientCache(Generic[_C]):
    """SDK clients shared by every call of an event loop, per endpoint and key.

    Building a vendor client costs an httpx client and a TLS context (~20 ms of CPU), so
    calls share one. Bounded (agents may name their own endpoints and keys), most
    recently used kept; an evicted client is dropped, never closed, so calls holding it
    keep working. Outside a running loop nothing is cached.
    """

    def __init__(self, limit: int = 32) -> None:
        self.limit = limit
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, _C]] = (
            weakref.WeakKeyDictionary()
        )

    def get(
        self,
        key: Hashable,
        build: Callable[[], _C],
        usable: Callable[[_C], bool] | None = None,
    ) -> _C:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return build()
        clients = self._loops.setdefault(loop, {})
        client = clients.pop(key, None)
        if client is None or (usable is not None and not usable(client)):
            client = build()
        clients[key] = client  # (re)inserted last: the most recently used
        while len(clients) > self.limit:
            del clients[next(iter(clients))]
        return client


# --------------------------------------------------------------------------- sockets


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every ``wss://`` socket of the process.

    ``websockets`` (and asyncio under it) build a fresh ``ssl.create_default_context()``
    per connection when given ``ssl=True``, which loads the CA store: ~20 ms of CPU in
    one block per call set-up. An ``SSLContext`` is safe to share between connections.
    """
    return ssl.create_default_context()


def ws_connect_options(uri: str) -> dict[str, Any]:
    """Options for an audio WebSocket: no permessage-deflate (audio does not compress,
    and deflating every frame was 7 % of the worker's CPU at 100 calls) and, for
    ``wss://``, the shared TLS context."""
    options: dict[str, Any] = {"compression": None}
    if uri.startswith("wss://"):
        options["ssl"] = shared_ssl_context()
    return options


# --------------------------------------------------------------------------- errors


def parse_retry_after(value: str | float | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return max(0.0, float(value))
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def header(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None, name: str) -> Any:
    """Case-insensitive header lookup over any mapping-like header container."""
    if headers is None:
        return None
    getter = getattr(headers, "get", None)
    if getter is not None:
        value = getter(name)
        if value is None:
            value = getter(name.lower())
        if value is not None:
            return value
    items = headers.items() if isinstance(headers, Mapping) else headers
    try:
        for key, value in items:
            if str(key).lower() == name.lower():
                return value
    except (TypeError, ValueError):
        return None
    return None


def error_from_status(
    provider: str,
    status: int | None,
    *,
    retry_after: float | None = None,
    code: str | None = None,
    detail: str = "",
) -> ProviderError:
    """Map a vendor's HTTP (or handshake) status to the seed's codes.

    402 and vendor "no credits" codes → 402 (not retryable); 429 → 429 with
    ``retry_after``; everything else the vendor refused or failed → 502, retryable
    unless it was a client-side mistake (bad key, unknown model or voice).
    """
    detail = scrub(detail)[:200]
    suffix = f": {detail}" if detail else ""
    if status == 402 or (code is not None and code in _CREDIT_CODES):
        return ProviderError(
            f"{provider}: insufficient credits{suffix}",
            provider=provider,
            status=402,
            retryable=False,
        )
    if status == 429:
        return ProviderError(
            f"{provider}: rate limited{suffix}",
            provider=provider,
            status=429,
            retryable=True,
            retry_after=retry_after,
        )
    if status in (401, 403):
        return ProviderError(
            f"{provider}: credentials rejected (HTTP {status})",
            provider=provider,
            status=502,
            retryable=False,
        )
    if status is not None and 400 <= status < 500 and status != 408:
        return ProviderError(
            f"{provider}: request rejected (HTTP {status}){suffix}",
            provider=provider,
            status=502,
            retryable=False,
        )
    what = f"HTTP {status}" if status else "upstream failure"
    return ProviderError(
        f"{provider}: upstream error ({what}){suffix}",
        provider=provider,
        status=502,
        retryable=True,
        retry_after=retry_after,
    )


def dropped(provider: str, what: str = "stream") -> ProviderError:
    """The connection went away mid-stream."""
    return ProviderError(
        f"{provider}: {what} dropped by the provider", provider=provider, status=502
    )


def timed_out(provider: str, what: str, seconds: float) -> ProviderError:
    return ProviderError(
        f"{provider}: {what} timed out after {seconds:g} s", provider=provider, status=502
    )


def unexpected(provider: str, exc: BaseException) -> ProviderError:
    """Anything else: keep the type for debugging, scrub the text."""
    text = scrub(str(exc))[:200]
    return ProviderError(
        f"{provider}: {type(exc).__name__}{': ' + text if text else ''}",
        provider=provider,
        status=502,
    )


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an adapter connects and which key (if any) it may send there."""

    base_url: str
    api_key: str | None
    custom: bool  # the agent chose a URL the operator did not configure


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return scheme, (parts.netloc or "").lower()


def resolve_endpoint(
    *,
    default_url: str,
    operator_url: str | None,
    agent_url: str | None,
    api_key: str | None,
    agent_api_key: str | None = None,
) -> Endpoint:
    """Decide the base URL and whether the worker's key may be sent to it.

    The agent configuration is tenant data; the worker's keys belong to the operator.
    A ``base_url`` in agent options that is not the vendor's or the operator's
    configured endpoint gets no worker key (an agent could otherwise point the SDK at
    a server that collects keys); such endpoints (a local Ollama or vLLM) take the
    agent's own ``api_key`` option, or none.
    """
    trusted = operator_url or default_url
    if not agent_url or _origin(agent_url) in (_origin(trusted), _origin(default_url)):
        base = agent_url or trusted
        return Endpoint(base.rstrip("/"), api_key, custom=False)
    return Endpoint(agent_url.rstrip("/"), agent_api_key, custom=True)
