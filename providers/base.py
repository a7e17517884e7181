"""The small streaming protocols every engine adapter implements.

The conversation engine (``pipelines``) only ever sees these types, so a vendor can be
swapped by name in the agent config without touching the engine. Audio crosses these
boundaries as raw ``bytes`` in an :class:`AudioFormat` the provider declares, never as one
object per sample block; the pipeline converts between the transport's format and the
provider's only where the provider cannot take the transport's format natively.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Encoding = Literal["pcm16", "mulaw", "alaw"]


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """Mono audio: ``pcm16`` is signed 16-bit little-endian; G.711 is one byte a sample."""

    encoding: Encoding
    sample_rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding == "pcm16" else 1

    def bytes_per_ms(self) -> float:
        return self.sample_rate * self.bytes_per_sample / 1000.0

    def frame_bytes(self, ms: int = 20) -> int:
        """Size of one frame of ``ms`` milliseconds."""
        return self.sample_rate * ms // 1000 * self.bytes_per_sample

    def duration_s(self, nbytes: int) -> float:
        return nbytes / (self.sample_rate * self.bytes_per_sample)

    def __str__(self) -> str:
        return f"{self.encoding}@{self.sample_rate}"


PCM16_16K = AudioFormat("pcm16", 16000)
MULAW_8K = AudioFormat("mulaw", 8000)


class ProviderError(Exception):
    """A provider failed. ``status`` follows the seed's codes (402, 429, 502, ...).

    ``retryable`` tells the failover logic whether another try (or the next provider in
    the agent's fallback list) may succeed. The message must never contain a key.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int = 502,
        retryable: bool = True,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class ConfigError(ValueError):
    """A provider was named or configured in a way that cannot work."""


# --------------------------------------------------------------------------- STT


@dataclass(frozen=True, slots=True)
class SttEvent:
    """One recognition event.

    ``partial``: interim hypothesis of the current utterance (replaces the previous one).
    ``final``: a stable piece of text; finals accumulate into the user's turn.
    ``speech_final``/``utterance_end``: the provider's own endpoint signals (optional).
    ``speech_started``: the provider's own VAD heard speech (optional).
    """

    kind: Literal["partial", "final", "speech_started", "utterance_end"]
    text: str = ""
    confidence: float | None = None
    speech_final: bool = False


@runtime_checkable
class SttStream(Protocol):
    """One call's recognition stream."""

    async def push(self, audio: bytes) -> None:
        """Send audio in the format the stream was opened with."""

    async def finalize(self) -> None:
        """Our endpointer decided the user stopped: flush and emit the final result."""

    def events(self) -> AsyncIterator[SttEvent]:
        """Recognition events until the stream is closed."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SttProvider(Protocol):
    name: str
    #: True when the engine only wants audio while the user speaks (pre-roll included),
    #: followed by ``finalize()``; False when it wants the continuous stream.
    gated: bool

    def input_formats(self) -> Sequence[AudioFormat]:
        """Formats accepted without conversion, best first."""
        ...

    async def open(self, fmt: AudioFormat, *, language: str) -> SttStream: ...


# --------------------------------------------------------------------------- LLM


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass(frozen=True, slots=True)
class LlmDelta:
    """A piece of a streamed reply: text, a completed tool call, or the final usage."""

    text: str = ""
    tool_call: ToolCall | None = None
    usage: Mapping[str, int] | None = None
    finish_reason: str | None = None


@runtime_checkable
class LlmProvider(Protocol):
    name: str

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
    ) -> AsyncIterator[LlmDelta]:
        """Stream one reply. Cancelling the iteration must abort the request."""
        ...

    async def warm(self) -> None:
        """Open connections ahead of the first turn (no-op when nothing to warm)."""


# --------------------------------------------------------------------------- TTS


@runtime_checkable
class TtsStream(Protocol):
    """One call's synthesis session (a warm connection where the vendor has one)."""

    #: The format of the audio ``synthesize`` yields.
    output_format: AudioFormat

    def synthesize(self, text: str) -> AsyncIterator[bytes]:
        """Audio for exactly this text, streamed as produced. Cancel to abort."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class TtsProvider(Protocol):
    name: str

    def output_formats(self) -> Sequence[AudioFormat]:
        """Formats the engine can produce natively, best first."""
        ...

    async def open(self, fmt: AudioFormat, *, voice: str | None, language: str) -> TtsStream:
        """Open a session producing ``fmt`` if it is among ``output_formats()``, else the
        provider's best native format (the pipeline converts)."""
        ...
