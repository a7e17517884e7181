"""OpenAI text-to-speech (``POST /audio/speech``) streamed as raw PCM, via ``openai``.

``response_format: "pcm"`` is 24 kHz signed 16-bit little-endian mono without a header,
so audio can be played as it arrives. Each sentence is one HTTP request on the client's
kept-alive connection pool; there is no socket protocol to keep warm. An alternative to
ElevenLabs (for instance as its fallback) with any OpenAI-compatible speech server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from providers.base import AudioFormat
from providers.cloud._common import dropped
from providers.cloud.openai_llm import DEFAULT_BASE_URL, make_async_client, map_openai_error

log = logging.getLogger(__name__)

PCM16_24K = AudioFormat("pcm16", 24000)
VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
MODELS = ("gpt-4o-mini-tts", "tts-1", "tts-1-hd")


class OpenAiTts:
    """``TtsProvider`` for OpenAI's speech endpoint."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        voice: str | None = None,
        speed: float | None = None,
        instructions: str | None = None,
        timeout_s: float = 30.0,
        name: str | None = None,
    ) -> None:
        self.model = model or "tts-1"
        self.voice = voice or "alloy"
        self.speed = speed
        self.instructions = instructions
        if name:
            self.name = name
        self._client = make_async_client(
            api_key, base_url.rstrip("/"), timeout=timeout_s, max_retries=0
        )

    def output_formats(self) -> Sequence[AudioFormat]:
        return [PCM16_24K]

    async def open(self, fmt: AudioFormat, *, voice: str | None, language: str) -> OpenAiTtsStream:
        return OpenAiTtsStream(self, voice or self.voice)


class OpenAiTtsStream:
    output_format = PCM16_24K

    def __init__(self, provider: OpenAiTts, voice: str) -> None:
        self.provider = provider
        self.name = provider.name
        self.voice = voice

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        return self._synthesize(text)

    async def _synthesize(self, text: str) -> AsyncIterator[bytes]:
        p = self.provider
        kwargs: dict[str, Any] = {
            "model": p.model,
            "voice": self.voice,
            "input": text,
            "response_format": "pcm",
        }
        if p.speed is not None:
            kwargs["speed"] = p.speed
        if p.instructions:
            kwargs["instructions"] = p.instructions
        manager = p._client.audio.speech.with_streaming_response.create(**kwargs)
        try:
            response = await manager.__aenter__()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise map_openai_error(self.name, exc) from None
        odd = b""
        try:
            try:
                async for chunk in response.iter_bytes():
                    data = odd + chunk
                    cut = len(data) - len(data) % 2  # keep whole 16-bit samples
                    odd = data[cut:]
                    if cut:
                        yield data[:cut]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("%s: speech stream failed: %s", self.name, type(exc).__name__)
                raise dropped(self.name, "speech stream") from None
        finally:
            await manager.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Nothing per call: the HTTP pool belongs to the provider."""
