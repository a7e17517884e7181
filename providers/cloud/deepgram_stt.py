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
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from providers.base import AudioFormat, ProviderError, SttEvent
from providers.cloud._common import (
    dropped,
    error_from_status,
    header,
    parse_retry_after,
    register_secret,
    timed_out,
    unexpected,
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


def make_client(api_key: str, base_url: str, timeout: float) -> Any:
    """An ``AsyncDeepgramClient`` whose REST and WebSocket hosts are ``base_url``."""
    from deepgram import AsyncDeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    register_secret(api_key)
    ws = ws_url_for(base_url)
    env = DeepgramClientEnvironment(base=base_url, production=ws, agent=ws, agent_rest=base_url)
    return AsyncDeepgramClient(api_key=api_key, environment=env, timeout=timeout)


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
        request_options: dict[str, Any] = {}
        if self.extra_query:
            request_options["additional_query_parameters"] = dict(self.extra_query)
        cm = client.listen.v1.connect(**params, request_options=request_options or None)
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
