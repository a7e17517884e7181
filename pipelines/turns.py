"""The turn engine: who speaks when, as a pure state machine.

It takes timestamped events (the user's speech from the VAD, transcripts from the STT,
the agent's playout progress, ticks) and returns actions (respond, hold/release a
preemptive reply, pause/resume/cancel the agent, commit what was said and heard). It does no
I/O and reads no clock: every event carries its time, so it is tested with a virtual clock.

What it owns:
- endpointing: answer ``min_delay`` after the user's speech ended when a final transcript is
  in, or at ``max_delay`` with whatever text there is; a pause shorter than that is not cut;
- preemptive generation: start the reply as soon as the final transcript arrives, but hold
  its audio until the endpoint is confirmed; cancel it if the user goes on;
- barge-in: user speech lasting ``min_interruption_duration`` (and carrying
  ``min_interruption_words`` when set) interrupts the agent, whether it is speaking or
  still thinking;
- false-interruption recovery: the agent pauses rather than stops; if the "interruption"
  produced no words within ``false_interruption_timeout`` after it ended, the agent resumes;
- the transcript records what was heard: the assistant message committed for an
  interrupted reply is the text whose audio was actually played.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from pipelines.agent_config import AgentConfig

# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class TurnSettings:
    min_endpoint_delay: float = 0.4
    max_endpoint_delay: float = 3.0
    interruptions: bool = True
    min_interruption_duration: float = 0.4
    min_interruption_words: int = 0
    resume_false_interruption: bool = True
    false_interruption_timeout: float = 1.5
    preemptive_generation: bool = True

    @classmethod
    def from_agent(cls, agent: AgentConfig) -> TurnSettings:
        return cls(
            min_endpoint_delay=agent.endpointing.min_delay_ms / 1000,
            max_endpoint_delay=agent.endpointing.max_delay_ms / 1000,
            interruptions=agent.interruption.enabled,
            min_interruption_duration=agent.interruption.min_duration_ms / 1000,
            min_interruption_words=agent.interruption.min_words,
            resume_false_interruption=agent.interruption.resume_false_interruption,
            false_interruption_timeout=agent.interruption.false_interruption_timeout_ms / 1000,
            preemptive_generation=agent.preemptive_generation,
        )


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class UserSpeechStarted:
    t: float  # when the speech really started (first voiced audio)


@dataclass(frozen=True, slots=True)
class UserSpeechEnded:
    t: float  # when the speech really ended (last voiced audio)


@dataclass(frozen=True, slots=True)
class TranscriptReceived:
    t: float
    text: str
    final: bool


@dataclass(frozen=True, slots=True)
class AgentSegment:
    """A piece of reply text went to synthesis (``duration`` None) or its audio is complete."""

    t: float
    turn_id: int
    index: int
    text: str
    duration: float | None = None


@dataclass(frozen=True, slots=True)
class AgentSpeechStarted:
    t: float
    turn_id: int


@dataclass(frozen=True, slots=True)
class AgentSpeechEnded:
    """The reply's playout stopped: finished (``completed``) or cut after ``played`` s."""

    t: float
    turn_id: int
    played: float
    completed: bool


@dataclass(frozen=True, slots=True)
class Tick:
    t: float


Event = (
    UserSpeechStarted
    | UserSpeechEnded
    | TranscriptReceived
    | AgentSegment
    | AgentSpeechStarted
    | AgentSpeechEnded
    | Tick
)

# ------------------------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class Respond:
    """Generate a reply to ``user_text``. When ``hold`` is set, prepare it but play no
    audio until a :class:`Release` for the same turn."""

    turn_id: int
    user_text: str
    hold: bool
    speech_ended_at: float | None
    final_transcript_at: float | None
    decided_at: float | None  # None while held


@dataclass(frozen=True, slots=True)
class Release:
    """The endpoint is confirmed: a held reply may play."""

    turn_id: int
    decided_at: float


@dataclass(frozen=True, slots=True)
class Say:
    """Speak fixed text (the first message) as a reply of its own."""

    turn_id: int
    text: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Possible interruption: stop playout where it is and clear the transport's buffer."""

    turn_id: int
    t: float


@dataclass(frozen=True, slots=True)
class Resume:
    """The interruption was false: continue the paused reply where it stopped."""

    turn_id: int
    t: float


CancelReason = Literal["barge_in", "user_continued", "superseded"]


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop the reply for good: cancel generation and synthesis, clear queued audio."""

    turn_id: int
    t: float
    reason: CancelReason
    clear: bool  # something may be buffered at the transport: clear it


@dataclass(frozen=True, slots=True)
class CommitUser:
    turn_id: int
    text: str


@dataclass(frozen=True, slots=True)
class CommitAgent:
    turn_id: int
    text: str  # what the user heard
    interrupted: bool


Action = Respond | Release | Say | Pause | Resume | Cancel | CommitUser | CommitAgent


# ------------------------------------------------------------------------------ helpers

_SECONDS_PER_CHAR = 0.065  # speech-rate estimate for text whose audio is not complete yet


def heard_text(segments: Sequence[tuple[str, float | None]], played: float) -> str:
    """The prefix of the reply text whose audio played within ``played`` seconds.

    ``segments`` are (text, audio duration) in playout order; a duration of None (audio
    still being synthesized) is estimated from the text length. Inside a partly played
    segment, words are kept in proportion to the audio played.
    """
    heard: list[str] = []
    elapsed = 0.0
    for text, duration in segments:
        length = duration if duration is not None else len(text) * _SECONDS_PER_CHAR
        if played >= elapsed + length - 1e-6:
            heard.append(text)
            elapsed += length
            continue
        words = text.split()
        fraction = max(0.0, (played - elapsed) / length) if length > 0 else 0.0
        keep = int(len(words) * fraction + 1e-9)
        if keep:
            heard.append(" ".join(words[:keep]))
        break
    return " ".join(part.strip() for part in heard if part.strip())


def _word_count(text: str) -> int:
    return len(text.split())


class ReplyState(Enum):
    HELD = "held"  # preemptive: generating, audio withheld until the endpoint
    PENDING = "pending"  # decided: generating, no audio played yet
    SPEAKING = "speaking"
    PAUSED = "paused"  # possible interruption
    CANCELLED = "cancelled"  # waiting for the playout's stop report


@dataclass(slots=True)
class _Reply:
    turn_id: int
    kind: Literal["respond", "say"]
    state: ReplyState
    user_text: str = ""
    finals_used: int = 0
    user_committed: bool = False
    segments: dict[int, tuple[str, float | None]] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.state is not ReplyState.CANCELLED

    def ordered_segments(self) -> list[tuple[str, float | None]]:
        return [self.segments[i] for i in sorted(self.segments)]

    def full_text(self) -> str:
        return " ".join(text.strip() for text, _ in self.ordered_segments() if text.strip())


# ------------------------------------------------------------------------------- engine


class TurnEngine:
    """Feed it events with :meth:`handle`; carry out the actions it returns, in order."""

    def __init__(self, settings: TurnSettings | None = None) -> None:
        self.settings = settings or TurnSettings()
        self._next_turn = 1
        self._replies: dict[int, _Reply] = {}
        # the user's side
        self.user_speaking = False
        self._speech_started_at: float | None = None
        self._speech_ended_at: float | None = None
        self._finals: list[str] = []
        self._final_at: float | None = None
        self._partial = ""
        # a possible barge-in in progress
        self._candidate_since: float | None = None
        self._candidate_words = 0
        self._paused_speech_ended_at: float | None = None

    # ------------------------------------------------------------------ inspection

    @property
    def current(self) -> _Reply | None:
        """The live reply (held, pending, speaking or paused), if any."""
        for reply in reversed(self._replies.values()):
            if reply.live:
                return reply
        return None

    @property
    def agent_speaking(self) -> bool:
        reply = self.current
        return reply is not None and reply.state is ReplyState.SPEAKING

    @property
    def pending_user_text(self) -> str:
        return " ".join(self._finals)

    # ------------------------------------------------------------------ entry points

    def say(self, t: float, text: str) -> list[Action]:
        """The agent speaks first (greeting) or on its own initiative."""
        actions: list[Action] = []
        reply = self.current
        if reply is not None:
            actions += self._cancel(reply, t, "superseded")
        turn_id = self._new_turn()
        self._replies[turn_id] = _Reply(turn_id, "say", ReplyState.PENDING)
        actions.append(Say(turn_id, text))
        return actions

    def handle(self, event: Event) -> list[Action]:
        actions: list[Action]
        match event:
            case UserSpeechStarted():
                actions = self._on_speech_started(event)
            case UserSpeechEnded():
                actions = self._on_speech_ended(event)
            case TranscriptReceived():
                actions = self._on_transcript(event)
            case AgentSegment():
                reply = self._replies.get(event.turn_id)
                if reply is not None:
                    reply.segments[event.index] = (event.text, event.duration)
                actions = []
            case AgentSpeechStarted():
                actions = self._on_agent_started(event)
            case AgentSpeechEnded():
                actions = self._on_agent_ended(event)
            case Tick():
                actions = []
        return actions + self._on_time(event.t)

    # ------------------------------------------------------------------ user side

    def _on_speech_started(self, ev: UserSpeechStarted) -> list[Action]:
        self.user_speaking = True
        self._speech_started_at = ev.t
        self._speech_ended_at = None
        actions: list[Action] = []
        reply = self.current
        if reply is None:
            return actions
        if reply.state is ReplyState.HELD:
            # the user went on before the endpoint: the preemptive reply was premature
            return self._cancel(reply, ev.t, "user_continued")
        if not self.settings.interruptions and reply.state is ReplyState.SPEAKING:
            return actions
        if reply.state is ReplyState.PAUSED:
            self._paused_speech_ended_at = None  # still (again) speaking
            return actions
        self._candidate_since = ev.t
        self._candidate_words = 0
        return actions

    def _on_speech_ended(self, ev: UserSpeechEnded) -> list[Action]:
        self.user_speaking = False
        self._speech_ended_at = ev.t
        self._candidate_since = None  # too short to interrupt: a cough, a backchannel
        reply = self.current
        if reply is not None and reply.state is ReplyState.PAUSED:
            self._paused_speech_ended_at = ev.t
        return []

    def _on_transcript(self, ev: TranscriptReceived) -> list[Action]:
        text = " ".join(ev.text.split())
        reply = self.current
        words = _word_count(text)
        if reply is not None and reply.state is ReplyState.PAUSED and words:
            # words while paused: a real interruption; they start the user's next turn
            actions = self._cancel(reply, ev.t, "barge_in")
            self._record_transcript(ev, text)
            return actions
        if self._candidate_since is not None:
            self._candidate_words = max(self._candidate_words, words)
        if (
            reply is not None
            and reply.state is ReplyState.SPEAKING
            and self._candidate_since is None
            and not self.user_speaking
        ):
            # speech that did not interrupt the agent (backchannel, echo): not a turn
            self._partial = ""
            self._speech_ended_at = None
            return []
        self._record_transcript(ev, text)
        if ev.final and text and reply is not None and reply.state is ReplyState.HELD:
            # more words arrived for a turn already being answered: answer all of it
            return self._cancel(reply, ev.t, "superseded")
        return []

    def _record_transcript(self, ev: TranscriptReceived, text: str) -> None:
        if ev.final:
            self._partial = ""
            if text:
                self._finals.append(text)
                self._final_at = ev.t
        else:
            self._partial = text

    # ------------------------------------------------------------------ agent side

    def _on_agent_started(self, ev: AgentSpeechStarted) -> list[Action]:
        reply = self._replies.get(ev.turn_id)
        if reply is None or not reply.live:
            return []
        if reply.state in (ReplyState.PENDING, ReplyState.HELD):
            reply.state = ReplyState.SPEAKING
        return self._commit_user(reply)

    def _on_agent_ended(self, ev: AgentSpeechEnded) -> list[Action]:
        reply = self._replies.pop(ev.turn_id, None)
        if reply is None:
            return []
        if reply.state is ReplyState.PAUSED:
            self._paused_speech_ended_at = None
        if ev.completed:
            text, interrupted = reply.full_text(), False
        else:
            text, interrupted = heard_text(reply.ordered_segments(), ev.played), True
        if not text and ev.played <= 0:
            # nothing was heard: the user's words stay pending and join the next turn
            return []
        actions = self._commit_user(reply)
        actions.append(CommitAgent(reply.turn_id, text, interrupted))
        return actions

    def _commit_user(self, reply: _Reply) -> list[Action]:
        if reply.kind != "respond" or reply.user_committed:
            return []
        reply.user_committed = True
        del self._finals[: reply.finals_used]
        return [CommitUser(reply.turn_id, reply.user_text)]

    # ------------------------------------------------------------------ timers

    def _on_time(self, now: float) -> list[Action]:
        actions = self._check_interruption(now)
        actions += self._check_false_interruption(now)
        actions += self._check_endpoint(now)
        return actions

    def _check_interruption(self, now: float) -> list[Action]:
        since = self._candidate_since
        reply = self.current
        if since is None or reply is None or not self.user_speaking:
            return []
        if now - since < self.settings.min_interruption_duration - 1e-9:
            return []
        if self._candidate_words < self.settings.min_interruption_words:
            return []
        self._candidate_since = None
        if reply.state is ReplyState.SPEAKING and self.settings.resume_false_interruption:
            reply.state = ReplyState.PAUSED
            self._paused_speech_ended_at = None
            return [Pause(reply.turn_id, now)]
        return self._cancel(reply, now, "barge_in")

    def _check_false_interruption(self, now: float) -> list[Action]:
        reply = self.current
        ended = self._paused_speech_ended_at
        if reply is None or reply.state is not ReplyState.PAUSED or ended is None:
            return []
        if now - ended < self.settings.false_interruption_timeout - 1e-9:
            return []
        self._paused_speech_ended_at = None
        reply.state = ReplyState.SPEAKING
        return [Resume(reply.turn_id, now)]

    def _check_endpoint(self, now: float) -> list[Action]:
        ended = self._speech_ended_at
        if self.user_speaking or ended is None:
            return []
        reply = self.current
        waited = now - ended
        if reply is not None and reply.state is ReplyState.HELD:
            if waited >= self.settings.min_endpoint_delay - 1e-9:
                reply.state = ReplyState.PENDING
                self._speech_ended_at = None
                return [Release(reply.turn_id, now)]
            return []
        if reply is not None:
            return []  # the agent has the floor; new words wait for the next turn
        text = self.pending_user_text
        if text:
            if waited >= self.settings.min_endpoint_delay - 1e-9:
                return self._respond(now, text, hold=False)
            if self.settings.preemptive_generation:
                return self._respond(now, text, hold=True)
            return []
        if waited >= self.settings.max_endpoint_delay - 1e-9:
            self._speech_ended_at = None
            if self._partial:
                # no final came in time: answer what the recogniser heard so far
                self._finals.append(self._partial)
                self._partial = ""
                return self._respond(now, self.pending_user_text, hold=False)
        return []

    def _respond(self, now: float, text: str, *, hold: bool) -> list[Action]:
        turn_id = self._new_turn()
        state = ReplyState.HELD if hold else ReplyState.PENDING
        self._replies[turn_id] = _Reply(
            turn_id, "respond", state, user_text=text, finals_used=len(self._finals)
        )
        speech_ended_at = self._speech_ended_at
        if not hold:
            self._speech_ended_at = None
        return [
            Respond(
                turn_id=turn_id,
                user_text=text,
                hold=hold,
                speech_ended_at=speech_ended_at,
                final_transcript_at=self._final_at,
                decided_at=None if hold else now,
            )
        ]

    def _cancel(self, reply: _Reply, t: float, reason: CancelReason) -> list[Action]:
        clear = reply.state in (ReplyState.SPEAKING, ReplyState.PAUSED)
        reply.state = ReplyState.CANCELLED
        self._candidate_since = None
        self._paused_speech_ended_at = None
        return [Cancel(reply.turn_id, t, reason, clear)]

    def _new_turn(self) -> int:
        turn_id = self._next_turn
        self._next_turn += 1
        return turn_id
