"""A local stand-in for ElevenLabs: the ``stream-input`` TTS WebSocket and ``/v1/voices``.

``/v1/text-to-speech/{voice_id}/stream-input?model_id=…&output_format=…`` follows the
documented protocol: the first message is ``{"text": " ", …settings}`` (the key in the
``xi-api-key`` header or the message), then text pieces; ``"flush": true`` forces
generation of what is buffered; ``{"text": ""}`` ends the input, after which the server
sends the remaining audio, ``{"isFinal": true}`` and closes. Audio messages carry base64
audio in the requested ``output_format`` (``pcm_*`` or ``ulaw_8000``) with character
``alignment`` / ``normalizedAlignment`` relative to the chunk. Errors are sent as
``{"message", "error", "code": 1008}`` and the socket is closed with 1008, as the real
service does for quota and input errors. The connection closes with 1008 after
``inactivity_timeout`` seconds without text.

Usage (also from a benchmark script)::

    async with FakeElevenLabsServer(delay=0.15) as srv:
        ElevenLabsTts(api_key="k", base_url=srv.base_url)
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from tests.fakes._base import FakeServer, Faults, Recorded, abort, dumps, pcm16_to_mulaw

FORMATS = {
    "pcm_8000": ("pcm", 8000),
    "pcm_16000": ("pcm", 16000),
    "pcm_22050": ("pcm", 22050),
    "pcm_24000": ("pcm", 24000),
    "pcm_44100": ("pcm", 44100),
    "pcm_48000": ("pcm", 48000),
    "ulaw_8000": ("ulaw", 8000),
}

DEFAULT_VOICES: list[dict[str, Any]] = [
    {
        "voice_id": "21m00Tcm4TlvDq8ikWAM",
        "name": "Rachel",
        "category": "premade",
        "labels": {"accent": "american", "gender": "female", "use_case": "narration"},
        "description": "Calm",
        "preview_url": "https://example.invalid/rachel.mp3",
        "high_quality_base_model_ids": ["eleven_flash_v2_5", "eleven_multilingual_v2"],
        "verified_languages": [
            {"language": "en", "model_id": "eleven_flash_v2_5", "accent": "american"}
        ],
    },
    {
        "voice_id": "JBFqnCBsd6RMkjVDRZzb",
        "name": "George",
        "category": "premade",
        "labels": {"accent": "british", "gender": "male"},
        "description": "Warm",
        "preview_url": "https://example.invalid/george.mp3",
        "high_quality_base_model_ids": ["eleven_flash_v2_5"],
        "verified_languages": [
            {"language": "en", "model_id": "eleven_flash_v2_5", "accent": "british"},
            {"language": "fr", "model_id": "eleven_flash_v2_5", "accent": "standard"},
        ],
    },
]


class FakeElevenLabsServer(FakeServer):
    """Knobs (mutable at runtime):

    ``delay``: seconds from a generation trigger (flush / end of input) to the first
    audio — the TTS first-byte delay; ``drop_after_bytes``: cut the connection (no close
    frame) once that many audio bytes were sent on it; ``quota_exceeded``: answer the
    first text with the quota error; ``char_ms``: audio per character;
    ``chars_per_message``: characters of audio per audio message; ``voices``: the
    catalogue ``GET /v1/voices`` returns.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        drop_after_bytes: int | None = None,
        quota_exceeded: bool = False,
        char_ms: int = 10,
        chars_per_message: int = 8,
        voices: list[dict[str, Any]] | None = None,
        api_key: str | None = None,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(api_key=api_key, faults=faults)
        self.delay = delay
        self.drop_after_bytes = drop_after_bytes
        self.quota_exceeded = quota_exceeded
        self.char_ms = char_ms
        self.chars_per_message = chars_per_message
        self.voices = voices if voices is not None else list(DEFAULT_VOICES)
        self.connections = 0
        self.texts: list[str] = []  # every text generated, per generation

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/text-to-speech/{voice_id}/stream-input", self._stream_input)
        app.router.add_get("/v1/voices", self._voices)

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        status_text = self.faults.error_code or (
            "too_many_concurrent_requests" if status == 429 else "error"
        )
        return {"detail": {"status": status_text, "message": message}}

    def _refuse(self, request: web.Request, header_key: str | None) -> web.Response | None:
        if self.api_key is not None and header_key is not None and header_key != self.api_key:
            return web.json_response(
                {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, status=401
            )
        status = self.faults.take_failure()
        if status is not None:
            return self._refusal(status, f"fake elevenlabs refused the request ({status})")
        return None

    # ------------------------------------------------------------------ voices

    async def _voices(self, request: web.Request) -> web.Response:
        self._record(request)
        key = request.headers.get("xi-api-key")
        if self.api_key is not None and key != self.api_key:
            return web.json_response(
                {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}, status=401
            )
        refusal = self._refuse(request, key)
        if refusal is not None:
            return refusal
        return web.json_response({"voices": self.voices, "has_more": False})

    # ------------------------------------------------------------------ stream-input

    async def _stream_input(self, request: web.Request) -> web.StreamResponse:
        rec = self._record(request)
        refusal = self._refuse(request, request.headers.get("xi-api-key"))
        if refusal is not None:
            return refusal
        fmt = FORMATS.get(request.query.get("output_format", "mp3_44100_128"))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        try:
            await _StreamInput(self, request, ws, rec, fmt).run()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return ws


class _StreamInput:
    def __init__(
        self,
        server: FakeElevenLabsServer,
        request: web.Request,
        ws: web.WebSocketResponse,
        rec: Recorded,
        fmt: tuple[str, int] | None,
    ) -> None:
        self.server = server
        self.request = request
        self.ws = ws
        self.rec = rec
        self.fmt = fmt
        self.buffer = ""
        self.sent_bytes = 0
        self.initialized = False
        self.inactivity = float(request.query.get("inactivity_timeout", "20"))

    async def error(self, message: str, error: str) -> None:
        await self.ws.send_str(dumps({"message": message, "error": error, "code": 1008}))
        await self.ws.close(code=1008, message=message[:120].encode())

    async def run(self) -> None:
        if self.fmt is None:
            await self.error("The fake only produces pcm_* and ulaw_8000.", "invalid_output_format")
            return
        while True:
            try:
                msg = await self.ws.receive(timeout=self.inactivity)
            except TimeoutError:
                await self.ws.close(
                    code=1008,
                    message=(
                        f"Have not received a new text input within the timeout of "
                        f"{self.inactivity:g} seconds."
                    ).encode(),
                )
                return
            if msg.type is not WSMsgType.TEXT:
                return
            try:
                data = json.loads(msg.data)
                text = data["text"]
            except (ValueError, KeyError, TypeError):
                await self.error(
                    "Could not parse input message, make sure it is a json and follows the "
                    "schema outlined in protocol.",
                    "invalid_input_message",
                )
                return
            self.rec.messages.append(data)
            if not self.initialized:
                self.initialized = True
                key = self.request.headers.get("xi-api-key") or data.get("xi-api-key")
                if self.server.api_key is not None and key != self.server.api_key:
                    await self.error("Invalid API key", "invalid_api_key")
                    return
                if text != " ":
                    await self.error(
                        "The first message must be a single space.", "invalid_input_message"
                    )
                    return
                continue
            if text == "":  # end of input
                if self.buffer.strip():
                    if not await self.generate():
                        return
                await self.ws.send_str(
                    dumps(
                        {
                            "audio": None,
                            "isFinal": True,
                            "normalizedAlignment": None,
                            "alignment": None,
                        }
                    )
                )
                await self.ws.close()
                return
            if self.server.quota_exceeded:
                await self.error(
                    "This request exceeds your quota. You have 0 credits remaining.",
                    "quota_exceeded",
                )
                return
            self.buffer += text
            if data.get("flush") or data.get("try_trigger_generation"):
                if not await self.generate():
                    return

    async def generate(self) -> bool:
        """Audio for the buffered text; False when the connection was cut."""
        text, self.buffer = self.buffer, ""
        if not text.strip():
            return True
        self.server.texts.append(text)
        await asyncio.sleep(self.server.delay)
        kind, rate = self.fmt  # type: ignore[misc]
        step = max(1, self.server.chars_per_message)
        for i in range(0, len(text), step):
            piece = text[i : i + step]
            n = rate * self.server.char_ms // 1000
            t = np.arange(n * len(piece)) / rate
            pcm = (6000 * np.sin(2 * np.pi * 180 * t)).astype("<i2")
            audio = pcm16_to_mulaw(pcm) if kind == "ulaw" else pcm.tobytes()
            limit = self.server.drop_after_bytes
            if limit is not None and self.sent_bytes + len(audio) > limit:
                if self.server.faults.take_drop():
                    abort(self.request)
                    return False
            starts = [j * self.server.char_ms for j in range(len(piece))]
            durations = [self.server.char_ms] * len(piece)
            alignment = {
                "chars": list(piece),
                "charStartTimesMs": starts,
                "charDurationsMs": durations,
            }
            await self.ws.send_str(
                dumps(
                    {
                        "audio": base64.b64encode(audio).decode(),
                        "isFinal": False,
                        "normalizedAlignment": alignment,
                        "alignment": alignment,
                    }
                )
            )
            self.sent_bytes += len(audio)
        return True
