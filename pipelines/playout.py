"""Agent audio waiting to be played, and how much of it the caller has heard.

Pure bookkeeping for the paced playout loop in :mod:`pipelines.conversation`: frames of
one reply are kept until the reply ends so that a pause (possible interruption) can rewind
to what was actually heard and a resume can replay from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FRAME_S = 0.02


@dataclass(slots=True)
class ReplyAudio:
    """The frames of one reply in the transport's format."""

    turn_id: int
    playable: bool = True  # False while a preemptive reply is held
    frames: list[bytes] = field(default_factory=list)
    sent: int = 0  # frames handed to the transport
    lead: int = 0  # frames sent ahead of real time (still in the transport's buffer)
    paused: bool = False
    finished: bool = False  # synthesis is over: no more frames will come
    started: bool = False  # the first frame went out
    underruns: int = 0

    def push(self, frames: list[bytes]) -> None:
        self.frames.extend(frames)

    @property
    def ready(self) -> bool:
        """A frame can be sent now."""
        return self.playable and not self.paused and self.sent < len(self.frames)

    @property
    def drained(self) -> bool:
        """Everything was sent and nothing more will come."""
        return self.finished and self.sent >= len(self.frames)

    def take(self) -> bytes:
        frame = self.frames[self.sent]
        self.sent += 1
        self.started = True
        return frame

    def played_frames(self) -> int:
        """Frames the caller has heard: sent minus what still sits in the transport."""
        return max(0, self.sent - self.lead)

    def played_seconds(self) -> float:
        return self.played_frames() * FRAME_S

    def total_seconds(self) -> float:
        return len(self.frames) * FRAME_S

    def pause(self) -> None:
        """Stop at what was heard; the transport's buffer is cleared by the caller."""
        self.sent = self.played_frames()
        self.lead = 0
        self.paused = True

    def resume(self) -> None:
        self.paused = False
