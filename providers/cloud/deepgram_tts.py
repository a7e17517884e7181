"""Deepgram Aura text-to-speech over its ``/v1/speak`` WebSocket, through ``deepgram-sdk``.

One socket per call, opened at call start: each sentence is ``Speak`` + ``Flush`` and
its audio is the binary frames up to the matching ``Flushed``. A cancelled sentence
(barge-in) sends ``Clear`` and drops audio until ``Cleared``, so the socket stays usable.
``encoding``/``sample_rate`` follow the transport where Aura supports it (μ-law 8 kHz
for telephony, linear16 at 8–48 kHz).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from providers.base import AudioFormat, ProviderError
from providers.cloud._common import dropped, register_secret, timed_out, unexpected
from providers.cloud.deepgram_stt import (
    DEFAULT_BASE_URL,
    make_client,
    map_connect_error,
    session_headers,
)

log = logging.getLogger(__name__)

DEFAULT_VOICE = "aura-2-thalia-en"
_FORMATS = [
    AudioFormat("pcm16", 24000),
    AudioFormat("mulaw", 8000),
    AudioFormat("pcm16", 16000),
    AudioFormat("pcm16", 8000),
    AudioFormat("pcm16", 48000),
    AudioFormat("pcm16", 32000),
    AudioFormat("alaw", 8000),
]
_ENCODINGS = {"pcm16": "linear16", "mulaw": "mulaw", "alaw": "alaw"}
_DONE = object()


class DeepgramTts:
    """``TtsProvider`` for Deepgram Aura; the voice is the model name (``aura-2-…``)."""

    name = "deepgram"

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        voice: str | None = None,
        connect_timeout_s: float = 5.0,
        clear_timeout_s: float = 2.0,
        name: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.voice = voice or DEFAULT_VOICE
        self.connect_timeout_s = connect_timeout_s
        self.clear_timeout_s = clear_timeout_s
        if name:
            self.name = name
        register_secret(api_key)

    def output_formats(self) -> Sequence[AudioFormat]:
        return list(_FORMATS)

    async def open(
        self, fmt: AudioFormat, *, voice: str | None, language: str
    ) -> DeepgramTtsStream:
        chosen = fmt if fmt in _FORMATS else _FORMATS[0]
        stream = DeepgramTtsStream(self, chosen, voice or self.voice)
        await stream.connect()
        return stream


class DeepgramTtsStream:
    def __init__(self, provider: DeepgramTts, fmt: AudioFormat, voice: str) -> None:
        self.provider = provider
        self.name = provider.name
        self.output_format = fmt
        self.voice = voice
        self._cm: Any = None
        self._socket: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[Any] | None = None  # the sentence being spoken
        self._discarding = False
        self._cleared = asyncio.Event()
        self._error: ProviderError | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.connections = 0

    async def connect(self) -> None:
        p = self.provider
        client = make_client(p.api_key, p.base_url, p.connect_timeout_s)
        cm = client.speak.v1.connect(
            model=self.voice,
            encoding=_ENCODINGS[self.output_format.encoding],
            sample_rate=str(self.output_format.sample_rate),
            request_options=session_headers(),
        )
        try:
            socket = await asyncio.wait_for(cm.__aenter__(), p.connect_timeout_s)
        except TimeoutError:
            raise timed_out(self.name, "connect", p.connect_timeout_s) from None
        except Exception as exc:
            raise map_connect_error(self.name, exc) from None
        self._cm, self._socket, self._error = cm, socket, None
        self._discarding = False
        self.connections += 1
        self._reader = asyncio.create_task(self._read(socket), name="deepgram-tts-read")

    async def _read(self, socket: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        error: ProviderError | None = None
        try:
            async for message in socket:
                if isinstance(message, bytes):
                    if self._queue is not None and not self._discarding:
                        self._queue.put_nowait(message)
                    continue
                kind = getattr(message, "type", None)
                if kind is None and isinstance(message, dict):
                    kind = message.get("type")
                if kind == "Flushed":
                    if self._queue is not None and not self._discarding:
                        self._queue.put_nowait(_DONE)
                elif kind == "Cleared":
                    self._discarding = False
                    self._cleared.set()
                elif kind == "Warning":
                    log.warning("%s: %s", self.name, getattr(message, "description", "warning"))
            error = dropped(self.name, "speech socket closed")
        except ConnectionClosed:
            error = dropped(self.name, "speech socket")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = unexpected(self.name, exc)
        if not self._closed:
            self._error = error
            if self._queue is not None:
                self._queue.put_nowait(error)

    async def _ready(self) -> None:
        """A usable socket: reconnect after a drop, wait out a pending ``Clear``."""
        if self._discarding:
            try:
                await asyncio.wait_for(self._cleared.wait(), self.provider.clear_timeout_s)
            except TimeoutError:
                await self._disconnect()
        if self._error is not None or self._socket is None:
            await self._disconnect()
            await self.connect()

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return self._synthesize(text)

    async def _synthesize(self, text: str) -> AsyncIterator[bytes]:
        from deepgram.speak.v1.types import SpeakV1Text
        from websockets.exceptions import ConnectionClosed

        if self._closed:
            raise ProviderError(f"{self.name}: stream is closed", provider=self.name)
        if not text.strip():
            return
        async with self._lock:
            await self._ready()
            queue: asyncio.Queue[Any] = asyncio.Queue()
            self._queue = queue
            finished = False
            odd = b""
            try:
                try:
                    await self._socket.send_text(SpeakV1Text(type="Speak", text=text))
                    await self._socket.send_flush()
                except ConnectionClosed:
                    raise dropped(self.name, "speech socket") from None
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        finished = True
                        break
                    if isinstance(item, ProviderError):
                        raise item
                    if self.output_format.encoding == "pcm16":
                        item = odd + item
                        cut = len(item) - len(item) % 2
                        item, odd = item[:cut], item[cut:]
                    if item:
                        yield item
            finally:
                self._queue = None
                if not finished and self._error is None and self._socket is not None:
                    # abandoned mid-sentence: drop the rest server-side, keep the socket
                    self._discarding = True
                    self._cleared.clear()
                    with contextlib.suppress(Exception):
                        await self._socket.send_clear()

    async def _disconnect(self) -> None:
        reader, self._reader = self._reader, None
        cm, self._cm, self._socket = self._cm, None, None
        if reader is not None and not reader.done():
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        if cm is not None:
            with contextlib.suppress(Exception):
                await cm.__aexit__(None, None, None)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._socket is not None and self._error is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._socket.send_close(), 1.0)
        await self._disconnect()
