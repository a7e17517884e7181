"""ElevenLabs streaming TTS over its ``stream-input`` WebSocket, with the voice catalogue.

The ``elevenlabs`` SDK supplies the client configuration (base URL, ``xi-api-key``
header), the URL builder and the typed protocol messages (``InitializeConnection``,
``SendText``, ``CloseConnection``, ``AudioOutput``/``FinalOutput``). Its only
stream-input client (``convert_realtime``) is synchronous, blocks a thread, forces
``wss://`` and takes no socket timeouts, so the socket itself is opened here with
``websockets``' asyncio client. The catalogue is read through ``AsyncElevenLabs``.

How a call uses it (why):

- ``stream-input`` ends a generation only by closing (``{"text": ""}`` → ``isFinal``), so
  each sentence uses its own socket. To keep the first byte fast, the next socket is
  opened and initialised while the current sentence plays (``open()`` opens the first
  one at call start), so a sentence never waits for a handshake.
- Text is sent with ``flush: true``: the engine hands over whole sentences, and ElevenLabs
  would otherwise wait for ``chunk_length_schedule`` characters.
- ``output_format`` is chosen to match the transport (``ulaw_8000`` for telephony,
  ``pcm_16000``/``pcm_24000``/… otherwise) so no transcoding is needed.
- Character alignment is kept (``alignment``) so the caller can tell which text was heard
  when playback stopped early (:meth:`ElevenLabsTtsStream.spoken_text`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from providers.base import AudioFormat, ProviderError
from providers.cloud._common import (
    ClientCache,
    dropped,
    error_from_status,
    header,
    key_digest,
    parse_retry_after,
    register_secret,
    shared_ssl_context,
    timed_out,
    unexpected,
    wire_logger,
)

log = logging.getLogger(__name__)
_wire = wire_logger("providers.cloud.elevenlabs.wire")

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
DEFAULT_VOICE = "21m00Tcm4TlvDq8ikWAM"  # "Rachel", a premade voice every account has
DEFAULT_MODEL = "eleven_flash_v2_5"
MODELS = ("eleven_flash_v2_5", "eleven_turbo_v2_5", "eleven_multilingual_v2", "eleven_flash_v2")

#: Native formats, best first, and their ``output_format`` names.
FORMATS: dict[AudioFormat, str] = {
    AudioFormat("pcm16", 16000): "pcm_16000",
    AudioFormat("mulaw", 8000): "ulaw_8000",
    AudioFormat("pcm16", 24000): "pcm_24000",
    AudioFormat("pcm16", 22050): "pcm_22050",
    AudioFormat("pcm16", 44100): "pcm_44100",
}
_SPARE_MARGIN_S = 5.0


_clients: ClientCache[Any] = ClientCache()


def _client(api_key: str | None, base_url: str) -> Any:
    """An ``AsyncElevenLabs``, shared by every call of this event loop with the same
    endpoint and key (see :class:`ClientCache`)."""
    register_secret(api_key)

    def build() -> Any:
        from elevenlabs.client import AsyncElevenLabs

        # api_key must be explicit: the SDK's default is read from the environment
        return AsyncElevenLabs(api_key=api_key or "", base_url=base_url)

    return _clients.get((base_url, key_digest(api_key)), build)


def warm(api_key: str | None, base_url: str) -> None:
    """Import the SDK and the socket client, and build the shared client, before any call."""
    import elevenlabs.types
    import elevenlabs.url_utils  # noqa: F401
    import websockets.asyncio.client  # noqa: F401

    _client(api_key, base_url)


def _map_api_error(provider: str, exc: BaseException) -> ProviderError:
    from elevenlabs.core.api_error import ApiError

    if isinstance(exc, ApiError):
        code = None
        detail = ""
        if isinstance(exc.body, Mapping):
            inner = exc.body.get("detail")
            if isinstance(inner, Mapping):
                code = inner.get("status")
                detail = str(inner.get("message") or "")
        return error_from_status(
            provider,
            exc.status_code,
            retry_after=parse_retry_after(header(exc.headers, "Retry-After")),
            code=code,
            detail="" if exc.status_code in (401, 403) else detail,
        )
    if isinstance(exc, OSError) or type(exc).__name__ in ("ConnectError", "ReadError"):
        return ProviderError(f"{provider}: cannot connect", provider=provider)
    return unexpected(provider, exc)


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    """One voice as agent configuration needs it."""

    id: str
    name: str
    category: str | None = None
    description: str | None = None
    preview_url: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    languages: tuple[str, ...] = ()
    models: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "category": self.category,
            "description": self.description,
            "preview_url": self.preview_url,
            "labels": dict(self.labels),
            "languages": list(self.languages),
            "models": list(self.models),
        }


async def list_voices(
    *, api_key: str | None, base_url: str = DEFAULT_BASE_URL, provider: str = "elevenlabs"
) -> list[VoiceInfo]:
    """The account's voices (``GET /v1/voices``), for the Voice Providers area."""
    client = _client(api_key, base_url.rstrip("/"))
    try:
        # no SDK retries: a 429 is reported with its Retry-After instead of slept on
        response = await client.voices.get_all(
            request_options={"max_retries": 0, "timeout_in_seconds": 10}
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise _map_api_error(provider, exc) from None
    voices = []
    for v in response.voices:
        languages = tuple(
            dict.fromkeys(
                lang.language
                for lang in (v.verified_languages or [])
                if getattr(lang, "language", None)
            )
        )
        voices.append(
            VoiceInfo(
                id=v.voice_id,
                name=v.name or v.voice_id,
                category=str(v.category) if v.category else None,
                description=v.description,
                preview_url=v.preview_url,
                labels=dict(v.labels or {}),
                languages=languages,
                models=tuple(v.high_quality_base_model_ids or ()),
            )
        )
    return voices


# --------------------------------------------------------------------------- TTS


class ElevenLabsTts:
    """``TtsProvider`` for ElevenLabs' ``stream-input`` WebSocket."""

    name = "elevenlabs"

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        voice: str | None = None,
        voice_settings: Mapping[str, Any] | None = None,
        chunk_length_schedule: Sequence[int] | None = None,
        language_code: str | None = None,
        inactivity_timeout_s: int = 180,
        connect_timeout_s: float = 5.0,
        name: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.model = model or DEFAULT_MODEL
        self.voice = voice or DEFAULT_VOICE
        self.voice_settings = dict(voice_settings) if voice_settings else None
        self.chunk_length_schedule = list(chunk_length_schedule) if chunk_length_schedule else None
        self.language_code = language_code
        self.inactivity_timeout_s = max(1, min(180, inactivity_timeout_s))
        self.connect_timeout_s = connect_timeout_s
        if name:
            self.name = name
        self._sdk = _client(api_key, self.base_url)

    def output_formats(self) -> Sequence[AudioFormat]:
        return list(FORMATS)

    async def open(
        self, fmt: AudioFormat, *, voice: str | None, language: str
    ) -> ElevenLabsTtsStream:
        chosen = fmt if fmt in FORMATS else next(iter(FORMATS))
        stream = ElevenLabsTtsStream(self, chosen, voice or self.voice)
        await stream.prepare()  # the first socket, at call start
        return stream

    async def voices(self) -> list[VoiceInfo]:
        return await list_voices(api_key=self.api_key, base_url=self.base_url, provider=self.name)

    def url(self, voice: str, output_format: str) -> str:
        from elevenlabs.url_utils import build_ws_url

        params = {
            "model_id": self.model,
            "output_format": output_format,
            "inactivity_timeout": str(self.inactivity_timeout_s),
        }
        if self.language_code:
            params["language_code"] = self.language_code
        return build_ws_url(
            self._sdk._client_wrapper.get_base_url(),
            ["v1", "text-to-speech", voice, "stream-input"],
            params,
        )

    def init_message(self) -> dict[str, Any]:
        from elevenlabs.types import GenerationConfig, InitializeConnection, RealtimeVoiceSettings

        kwargs: dict[str, Any] = {}
        if self.voice_settings:
            kwargs["voice_settings"] = RealtimeVoiceSettings(**self.voice_settings)
        if self.chunk_length_schedule:
            kwargs["generation_config"] = GenerationConfig(
                chunk_length_schedule=[float(n) for n in self.chunk_length_schedule]
            )
        return dict(InitializeConnection(**kwargs).dict())


@dataclass(slots=True)
class _Socket:
    ws: Any
    opened: float


def _error_from_message(provider: str, data: Mapping[str, Any]) -> ProviderError:
    code = str(data.get("error") or "")
    message = str(data.get("message") or code or "error")
    if code in ("quota_exceeded", "insufficient_credits", "payment_required"):
        return error_from_status(provider, 402, code=code, detail=message)
    if code in ("invalid_api_key", "unauthorized"):
        return error_from_status(provider, 401)
    if code in ("rate_limited", "too_many_concurrent_requests", "system_busy"):
        return error_from_status(provider, 429, detail=message)
    return error_from_status(provider, 400 if code.startswith("invalid") else 502, detail=message)


class ElevenLabsTtsStream:
    """A call's synthesis: one initialised socket per sentence, the next one kept ready."""

    def __init__(self, provider: ElevenLabsTts, fmt: AudioFormat, voice: str) -> None:
        self.provider = provider
        self.name = provider.name
        self.output_format = fmt
        self.voice = voice
        self._output_format_name = FORMATS[fmt]
        self._spare: asyncio.Task[_Socket] | None = None
        self._closed = False
        #: (character, start ms, duration ms) of the last sentence, times from its start
        self.alignment: list[tuple[str, int, int]] = []
        self.sockets_opened = 0
        self.sentences_on_spare = 0  # sentences that found their socket already open

    async def prepare(self) -> None:
        """Open the first socket now; raise if the vendor refuses (so failover can act)."""
        self._spare = asyncio.create_task(self._connect())
        try:
            await asyncio.shield(self._spare)
        except BaseException:
            self._spare = None
            raise

    async def _connect(self) -> _Socket:
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        p = self.provider
        url = p.url(self.voice, self._output_format_name)
        headers = p._sdk._client_wrapper.get_headers()
        # wss: the process's TLS context, not a new one (CA store load) per sentence
        tls: dict[str, Any] = {"ssl": shared_ssl_context()} if url.startswith("wss://") else {}
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                open_timeout=p.connect_timeout_s,
                close_timeout=1.0,
                max_size=2**24,
                logger=_wire,
                **tls,
            )
        except InvalidStatus as exc:
            response = exc.response
            code = None
            with contextlib.suppress(Exception):
                detail = json.loads(response.body or b"{}").get("detail") or {}
                code = detail.get("status") if isinstance(detail, Mapping) else None
            raise error_from_status(
                self.name,
                response.status_code,
                retry_after=parse_retry_after(header(response.headers, "Retry-After")),
                code=code,
            ) from None
        except TimeoutError:
            raise timed_out(self.name, "connect", p.connect_timeout_s) from None
        except (OSError, WebSocketException) as exc:
            raise ProviderError(
                f"{self.name}: cannot connect ({type(exc).__name__})", provider=self.name
            ) from None
        try:
            await ws.send(json.dumps(p.init_message()))
        except Exception:
            await ws.close()
            raise dropped(self.name, "connection") from None
        self.sockets_opened += 1
        return _Socket(ws, time.monotonic())

    async def _take(self) -> _Socket:
        """The ready socket if it is still usable, else a fresh one; start the next."""
        from websockets.protocol import State

        sock: _Socket | None = None
        if self._spare is not None:
            task, self._spare = self._spare, None
            try:
                sock = await task
            except ProviderError:
                sock = None  # the spare failed: try once more below, now
            if sock is not None:
                stale = time.monotonic() - sock.opened > (
                    self.provider.inactivity_timeout_s - _SPARE_MARGIN_S
                )
                if stale or sock.ws.state is not State.OPEN:
                    with contextlib.suppress(Exception):
                        await sock.ws.close()
                    sock = None
        if sock is None:
            sock = await self._connect()
        else:
            self.sentences_on_spare += 1
        if not self._closed:
            self._spare = asyncio.create_task(self._connect())
            self._spare.add_done_callback(_ignore_result)
        return sock

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return self._synthesize(text)

    async def _synthesize(self, text: str) -> AsyncIterator[bytes]:
        from elevenlabs.types import CloseConnection, SendText
        from websockets.exceptions import ConnectionClosed

        if self._closed:
            raise ProviderError(f"{self.name}: stream is closed", provider=self.name)
        self.alignment = []
        if not text.strip():
            return
        sock = await self._take()
        ws = sock.ws
        finished = False
        odd = b""
        offset_ms = 0
        try:
            try:
                body = text if text.endswith(" ") else text + " "
                await ws.send(json.dumps(SendText(text=body, flush=True).dict()))
                await ws.send(json.dumps(CloseConnection().dict()))
                async for raw in ws:
                    data = json.loads(raw)
                    if data.get("error") or ("message" in data and "audio" not in data):
                        raise _error_from_message(self.name, data)
                    audio = data.get("audio")
                    if audio:
                        chunk = base64.b64decode(audio)
                        offset_ms = self._align(data, offset_ms)
                        if self.output_format.encoding == "pcm16":
                            chunk = odd + chunk
                            cut = len(chunk) - len(chunk) % 2
                            chunk, odd = chunk[:cut], chunk[cut:]
                        if chunk:
                            yield chunk
                    if data.get("isFinal"):
                        finished = True
                        break
            except ConnectionClosed as exc:
                raise self._closed_error(exc) from None
            if not finished:
                raise self._closed_error(None)
        finally:
            await _close_quietly(ws)

    def _closed_error(self, exc: Any) -> ProviderError:
        rcvd = getattr(exc, "rcvd", None)
        reason = str(getattr(rcvd, "reason", "") or "")
        if "quota" in reason.lower():
            return error_from_status(self.name, 402, code="quota_exceeded")
        return dropped(self.name, "speech stream")

    def _align(self, data: Mapping[str, Any], offset_ms: int) -> int:
        """Accumulate per-character timing; chunk times are relative to the chunk."""
        align = data.get("alignment") or data.get("normalizedAlignment")
        if not align:
            return offset_ms
        chars = align.get("chars") or []
        starts = align.get("charStartTimesMs") or []
        durations = align.get("charDurationsMs") or []
        end = offset_ms
        for ch, start, dur in zip(chars, starts, durations, strict=False):
            self.alignment.append((ch, offset_ms + int(start), int(dur)))
            end = max(end, offset_ms + int(start) + int(dur))
        return end

    def spoken_text(self, played_ms: float) -> str:
        """The part of the last sentence whose audio started within ``played_ms``."""
        return "".join(ch for ch, start, _ in self.alignment if start < played_ms)

    async def aclose(self) -> None:
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is None:
            return
        if not spare.done():
            spare.cancel()
            with contextlib.suppress(BaseException):
                await spare
            return
        with contextlib.suppress(BaseException):
            await _close_quietly(spare.result().ws)


def _ignore_result(task: asyncio.Task[Any]) -> None:
    """A failed spare is retried when it is needed; don't log 'never retrieved'."""
    if not task.cancelled():
        task.exception()


async def _close_quietly(ws: Any) -> None:
    with contextlib.suppress(Exception):
        await ws.close()
