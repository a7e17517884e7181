"""What the conversation engine needs from the outside world, and nothing more.

A transport (local WebSocket, carrier stream, LiveKit room) implements :class:`AudioOutput`;
the runtime implements :class:`CallObserver` (durable reporting plus live updates to the
client). The engine never imports either side's code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from providers.base import AudioFormat


class AudioOutput(Protocol):
    """Where the agent's voice goes. The engine paces frames in real time itself."""

    #: The format frames are sent in (the transport's native format).
    format: AudioFormat

    async def send_frame(self, frame: bytes) -> None:
        """One 20 ms frame in ``format``; called every 20 ms while the agent speaks."""

    async def clear(self) -> None:
        """Drop every frame the transport (or the far end) still buffers, now."""

    async def mark(self, name: str) -> None:
        """Ask to be told (through ``Conversation.on_mark``) when audio sent so far has
        played. Transports without marks do nothing."""


@dataclass(frozen=True, slots=True)
class TranscriptSegment:
    """A finished piece of the conversation as heard: what gets reported and kept."""

    role: Literal["user", "agent"]
    text: str
    turn_id: int
    start: float  # seconds since call start
    end: float
    interrupted: bool = False


class CallObserver(Protocol):
    """Receives everything the conversation reports.

    ``event`` and ``transcript`` are durable facts (reported to the API exactly once);
    ``live`` is ephemeral UI information (partial transcripts, reply text as spoken) that
    only live clients need.
    """

    def event(self, type: str, data: Mapping[str, Any]) -> None: ...

    def transcript(self, segment: TranscriptSegment) -> None: ...

    def live(self, type: str, data: Mapping[str, Any]) -> None: ...
