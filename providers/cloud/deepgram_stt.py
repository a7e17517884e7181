"""Deepgram live speech-to-text over its WebSocket, through ``deepgram-sdk``.

Why these choices:

- μ-law 8 kHz and linear16 at the usual rates are sent as they come from the transport
  (``encoding``/``sample_rate`` query), so telephony audio is never resampled for it.
- Gated by default: the engine sends speech (with pre-roll) and calls ``finalize()`` at
  its endpoint, which becomes Deepgram's ``Finalize``; between utterances the socket is
  kept open with ``KeepAlive`` (Deepgram closes a silent stream after ~10 s).
- ``interim_results`` become partials, ``is_final`` results become finals,
  ``SpeechStarted`` (``vad_events``) and ``UtteranceEnd`` are passed through for the
  turn engine.
- An unexpected close is an error (``ProviderError`` 502), never a silent end, so the
  failover wrapper can replay the utterance to the next provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from providers.base import AudioFormat, ProviderError, SttEvent
from providers.cloud._common import (
    ClientCache,
    dropped,
    error_from_status,
    header,
    key_digest,
    parse_retry_after,
    register_secret,
    timed_out,
    unexpected,
    ws_connect_options,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.deepgram.com"
_ENCODINGS = {"pcm16": "linear16", "mulaw": "mulaw", "alaw": "alaw"}
#: linear16 rates offered natively (Deepgram takes any rate; these cover the transports).
_PCM_RATES = (16000, 8000, 24000, 48000, 44100, 32000, 22050, 12000, 11025)
_END = object()


def ws_url_for(base_url: str) -> str:
    """``https://host`` → ``wss://host`` (and ``http`` → ``ws``) for the streaming API."""
    if base_url.startswith("https://"):
        return "wss://" + base_url[len("https://") :]
    if base_url.startswith("http://"):
        return "ws://" + base_url[len("http://") :]
    return base_url


_clients: ClientCache[Any] = ClientCache()

#: The SDK modules whose module-level ``websockets_client_connect`` opens the async
#: ``/v1/listen`` and ``/v1/speak`` sockets (``client.listen.v1.connect`` uses the one
#: in ``client``, the raw client its own).
_SDK_SOCKET_MODULES = (
    "deepgram.listen.v1.client",
    "deepgram.listen.v1.raw_client",
    "deepgram.speak.v1.client",
    "deepgram.speak.v1.raw_client",
)


def make_client(api_key: str, base_url: str, timeout: float) -> Any:
    """An ``AsyncDeepgramClient`` whose REST and WebSocket hosts are ``base_url``.

    Shared by every stream of this event loop with the same endpoint, key and timeout:
    building one costs an httpx client and a TLS context (~20 ms of CPU), even when
    only its WebSockets are used. Nothing closes it (streams close their sockets only),
    so one call ending cannot break another's client.
    """
    register_secret(api_key)

    def build() -> Any:
        from deepgram import AsyncDeepgramClient
        from deepgram.environment import DeepgramClientEnvironment

        tune_sdk_sockets()
        ws = ws_url_for(base_url)
        env = DeepgramClientEnvironment(base=base_url, production=ws, agent=ws, agent_rest=base_url)
        return AsyncDeepgramClient(api_key=api_key, environment=env, timeout=timeout)

    return _clients.get((base_url, key_digest(api_key), timeout), build)


def session_headers() -> dict[str, Any]:
    """``request_options`` giving one socket its own ``x-deepgram-session-id`` (the SDK
    sets one per client, and the client is shared by every call)."""
    return {"additional_headers": {"x-deepgram-session-id": str(uuid.uuid4())}}


def _tuned(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(uri: str, **kwargs: Any) -> Any:
        for name, value in ws_connect_options(uri).items():
            kwargs.setdefault(name, value)
        return original(uri, **kwargs)

    connect.rymi_original = original  # type: ignore[attr-defined]
    return connect


def tune_sdk_sockets() -> list[str]:
    """Open the SDK's audio sockets without permessage-deflate and with the shared TLS
    context; returns the modules changed.

    The SDK calls ``websockets_client_connect(url, extra_headers=...)`` and offers no
    option for either, so the module attribute is wrapped — only where it still is
    ``websockets``' own ``connect`` taking ``compression`` (not a transport installed
    with ``transport_factory``, not an SDK version that moved it). Anything else is left
    as it is: the sockets then work as before, just compressed.
    """
    changed = []
    for name in _SDK_SOCKET_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        original = getattr(module, "websockets_client_connect", None)
        if original is None or hasattr(original, "rymi_original"):
            continue
        if not str(getattr(original, "__module__", "")).startswith("websockets"):
            continue
        try:
            if "compression" not in inspect.signature(original).parameters:
                continue
        except (TypeError, ValueError):
            continue
        module.websockets_client_connect = _tuned(original)  # type: ignore[attr-defined]
        changed.append(name)
    if not changed:
        log.debug("deepgram: SDK sockets left with their defaults")
    return changed


def warm(api_key: str, base_url: str, timeout: float = 5.0) -> None:
    """Import what the first stream would (the SDK, its socket and message modules, ~0.5 s)
    and build the shared client for the operator's endpoint, before any call."""
    client = make_client(api_key, base_url, timeout)
    client.listen.v1  # noqa: B018  (lazily imported sub-clients)
    client.speak.v1  # noqa: B018
    for name in (
        "deepgram.core.api_error",
        "deepgram.listen.v1.socket_client",
        "deepgram.speak.v1.socket_client",
        "deepgram.speak.v1.types",
        "websockets.exceptions",
        "websockets.legacy.client",
    ):
        importlib.import_module(name)


def map_connect_error(provider: str, exc: BaseException) -> ProviderError:
    """A refused or failed WebSocket upgrade, from the SDK's ``ApiError`` and its cause."""
    from deepgram.core.api_error import ApiError

    if isinstance(exc, ApiError):
        cause = exc.__context__ or exc.__cause__
        headers = getattr(cause, "headers", None)
        if headers is None:
            headers = getattr(getattr(cause, "response", None), "headers", None)
        retry_after = parse_retry_after(header(headers, "Retry-After"))
        return error_from_status(provider, exc.status_code, retry_after=retry_after)
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        headers = getattr(exc, "headers", None) or getattr(
            getattr(exc, "response", None), "headers", None
        )
        return error_from_status(
            provider, status, retry_after=parse_retry_after(header(headers, "Retry-After"))
        )
    if isinstance(exc, OSError):
        return ProviderError(
            f"{provider}: cannot connect ({type(exc).__name__})", provider=provider
        )
    return unexpected(provider, exc)


class DeepgramStt:
    """``SttProvider`` for Deepgram's ``/v1/listen`` streaming API."""

    name = "deepgram"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        language: str | None = None,
        endpointing_ms: int | None = 300,
        utterance_end_ms: int | None = 1000,
        interim_results: bool = True,
        vad_events: bool = True,
        smart_format: bool = True,
        keepalive_s: float = 4.0,
        connect_timeout_s: float = 5.0,
        gated: bool = True,
        extra_query: Mapping[str, str] | None = None,
        name: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.model = model or "nova-3"
        self.language = language
        self.endpointing_ms = endpointing_ms
        self.utterance_end_ms = utterance_end_ms
        self.interim_results = interim_results
        self.vad_events = vad_events
        self.smart_format = smart_format
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.gated = gated
        self.extra_query = dict(extra_query or {})
        if name:
            self.name = name
        register_secret(api_key)

    def input_formats(self) -> Sequence[AudioFormat]:
        return [
            AudioFormat("pcm16", _PCM_RATES[0]),
            AudioFormat("mulaw", 8000),
            *(AudioFormat("pcm16", r) for r in _PCM_RATES[1:]),
            AudioFormat("alaw", 8000),
        ]

    def query(self, fmt: AudioFormat, language: str) -> dict[str, Any]:
        """The ``/v1/listen`` parameters for a stream of ``fmt``."""
        params: dict[str, Any] = {
            "model": self.model,
            "language": self.language or language or "en",
            "encoding": _ENCODINGS[fmt.encoding],
            "sample_rate": str(fmt.sample_rate),
            "channels": "1",
            "interim_results": "true" if self.interim_results else "false",
            "endpointing": "false" if self.endpointing_ms is None else str(self.endpointing_ms),
            "vad_events": "true" if self.vad_events else "false",
            "smart_format": "true" if self.smart_format else "false",
            "punctuate": "true",
        }
        # UtteranceEnd needs interim results (Deepgram's rule) and at least 1000 ms.
        if self.utterance_end_ms is not None and self.interim_results:
            params["utterance_end_ms"] = str(max(1000, self.utterance_end_ms))
        return params

    async def open(self, fmt: AudioFormat, *, language: str) -> DeepgramSttStream:
        if fmt.encoding not in _ENCODINGS:
            raise ProviderError(
                f"{self.name}: unsupported encoding {fmt.encoding}", provider=self.name
            )
        client = make_client(self.api_key, self.base_url, self.connect_timeout_s)
        params = self.query(fmt, language)
        request_options: dict[str, Any] = session_headers()
        if self.extra_query:
            request_options["additional_query_parameters"] = dict(self.extra_query)
        cm = client.listen.v1.connect(**params, request_options=request_options)
        try:
            socket = await asyncio.wait_for(cm.__aenter__(), self.connect_timeout_s)
        except TimeoutError:
            raise timed_out(self.name, "connect", self.connect_timeout_s) from None
        except Exception as exc:
            raise map_connect_error(self.name, exc) from None
        stream = DeepgramSttStream(self, cm, socket)
        stream.start()
        return stream


class DeepgramSttStream:
    """One live transcription socket."""

    def __init__(self, provider: DeepgramStt, cm: Any, socket: Any) -> None:
        self.provider = provider
        self.name = provider.name
        self._cm = cm
        self._socket = socket
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._error: ProviderError | None = None
        self._closing = False
        self._closed = False
        self._last_send = time.monotonic()
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self.keepalives_sent = 0

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="deepgram-stt-read")
        if self.provider.keepalive_s > 0:
            self._keepalive = asyncio.create_task(self._keep_alive(), name="deepgram-stt-keepalive")

    # ------------------------------------------------------------------ receive

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for message in self._socket:
                events = self._translate(message)
                if isinstance(events, ProviderError):
                    self._error = events
                    return
                for event in events:
                    self._queue.put_nowait(event)
            if not self._closing:
                self._error = dropped(self.name, "stream closed")
        except ConnectionClosed:
            if not self._closing:
                self._error = dropped(self.name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._closing:
                self._error = unexpected(self.name, exc)
        finally:
            self._queue.put_nowait(_END)

    def _translate(self, message: Any) -> list[SttEvent] | ProviderError:
        kind = getattr(message, "type", None)
        if kind == "Results":
            alternatives = message.channel.alternatives if message.channel else []
            if not alternatives:
                return []
            best = alternatives[0]
            text = (best.transcript or "").strip()
            events: list[SttEvent] = []
            if text and message.is_final:
                events.append(
                    SttEvent(
                        "final",
                        text,
                        confidence=best.confidence,
                        speech_final=bool(message.speech_final),
                    )
                )
            elif text:
                events.append(SttEvent("partial", text, confidence=best.confidence))
            if message.from_finalize:
                # the answer to Finalize: everything sent so far is transcribed
                events.append(SttEvent("utterance_end"))
            return events
        if kind == "SpeechStarted":
            return [SttEvent("speech_started")]
        if kind == "UtteranceEnd":
            return [SttEvent("utterance_end")]
        if kind == "Error":
            description = getattr(message, "description", "") or getattr(message, "variant", "")
            return ProviderError(
                f"{self.name}: stream error: {description}"[:300], provider=self.name
            )
        return []  # Metadata, unknown messages

    def events(self) -> AsyncIterator[SttEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[SttEvent]:
        while True:
            item = await self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item

    # ------------------------------------------------------------------ send

    async def _send(self, op: str, *args: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        if self._error is not None:
            raise self._error
        if self._closed:
            raise ProviderError(f"{self.name}: stream is closed", provider=self.name)
        try:
            await getattr(self._socket, op)(*args)
        except ConnectionClosed:
            self._error = self._error or dropped(self.name)
            raise self._error from None
        self._last_send = time.monotonic()

    async def push(self, audio: bytes) -> None:
        if audio:
            await self._send("send_media", audio)

    async def finalize(self) -> None:
        await self._send("send_finalize")

    async def _keep_alive(self) -> None:
        """Deepgram closes a stream that gets nothing for ~10 s; silence is normal here."""
        interval = self.provider.keepalive_s
        with contextlib.suppress(ProviderError):
            while not self._closed:
                idle = time.monotonic() - self._last_send
                if idle >= interval:
                    await self._send("send_keep_alive")
                    self.keepalives_sent += 1
                    idle = 0.0
                await asyncio.sleep(max(0.05, interval - idle))

    # ------------------------------------------------------------------ close

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closing = True
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._error is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._socket.send_close_stream(), 1.0)
            if self._reader is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
        self._closed = True
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        with contextlib.suppress(Exception):
            await self._cm.__aexit__(None, None, None)
