"""One call's conversation: audio in, the turn engine in the middle, paced audio out.

The transport pushes caller audio; the VAD and STT turn it into events for the
:class:`~pipelines.turns.TurnEngine`; its actions start, hold, pause, resume or cancel
replies. Each reply is one cancellable unit (LLM → sentence chunker → TTS → playout
queue); a barge-in cancels it and clears the transport's buffered audio in the same loop
iteration. A single playout task sends one 20 ms frame every 20 ms while the agent speaks
and sleeps otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipelines.agent_config import AgentConfig
from pipelines.audio import AudioConverter, Reframer, silence
from pipelines.chunker import SentenceChunker
from pipelines.pacing import FrameClock
from pipelines.playout import FRAME_S, ReplyAudio
from pipelines.ports import AudioOutput, CallObserver, TranscriptSegment
from pipelines.turns import (
    Action,
    AgentSegment,
    AgentSpeechEnded,
    AgentSpeechStarted,
    Cancel,
    CommitAgent,
    CommitUser,
    Event,
    Pause,
    Release,
    Respond,
    Resume,
    Say,
    Tick,
    TranscriptReceived,
    TurnEngine,
    TurnSettings,
    UserSpeechEnded,
    UserSpeechStarted,
)
from pipelines.vad import VadSegmenter
from providers.base import (
    AudioFormat,
    ChatMessage,
    LlmProvider,
    ProviderError,
    SttEvent,
    SttProvider,
    SttStream,
    ToolCall,
    ToolSpec,
    TtsProvider,
    TtsStream,
)

log = logging.getLogger(__name__)

END_CALL_TOOL = ToolSpec(
    name="end_call",
    description="Hang up the call after the current reply has been spoken.",
    parameters={"type": "object", "properties": {"reason": {"type": "string"}}},
)
_VAD_RATES = (8000, 16000, 32000, 48000)
#: 20 ms frames of caller audio per STT send (see Conversation._push_stt).
STT_CHUNK_FRAMES = 3


@dataclass(slots=True)
class TurnMarks:
    """Per-turn latency marks, seconds on the conversation's clock."""

    speech_ended: float | None = None
    final_transcript: float | None = None
    endpoint: float | None = None
    #: the LLM request went out (before the endpoint when the reply is preemptive)
    llm_request: float | None = None
    llm_first_token: float | None = None
    tts_first_audio: float | None = None
    first_audio_out: float | None = None

    def as_dict(self, origin: float) -> dict[str, float | None]:
        return {
            name: (None if value is None else round(value - origin, 4))
            for name, value in (
                ("speech_ended", self.speech_ended),
                ("final_transcript", self.final_transcript),
                ("endpoint", self.endpoint),
                ("llm_request", self.llm_request),
                ("llm_first_token", self.llm_first_token),
                ("tts_first_audio", self.tts_first_audio),
                ("first_audio_out", self.first_audio_out),
            )
        }

    def durations_ms(self) -> dict[str, float | None]:
        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round((b - a) * 1000, 1)

        llm_start = self.llm_request
        if llm_start is None:
            llm_start = self.endpoint if self.endpoint is not None else self.final_transcript
        return {
            "endpointing": span(self.speech_ended, self.endpoint),
            "stt_final": span(self.speech_ended, self.final_transcript),
            "llm_ttft": span(llm_start, self.llm_first_token),
            "tts_ttfb": span(self.llm_first_token, self.tts_first_audio),
            "voice_to_voice": span(self.speech_ended, self.first_audio_out),
        }


@dataclass(slots=True)
class _Reply:
    turn_id: int
    audio: ReplyAudio
    marks: TurnMarks
    user_text: str | None  # None: fixed text (Say)
    text: str = ""
    task: asyncio.Task[None] | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    end_call: bool = False
    metrics_sent: bool = False


class Conversation:
    """Runs one call. See the module docstring; the transport contract is in ports.py."""

    def __init__(
        self,
        *,
        agent: AgentConfig,
        stt: SttProvider,
        llm: LlmProvider,
        tts: TtsProvider,
        input_format: AudioFormat,
        output: AudioOutput,
        observer: CallObserver,
        clock: Callable[[], float] = time.monotonic,
        playout_lead_frames: int = 2,
    ) -> None:
        self.agent = agent
        self.stt_provider = stt
        self.llm = llm
        self.tts_provider = tts
        self.input_format = input_format
        self.output = output
        self.observer = observer
        self.clock = clock
        self.lead_frames = max(0, playout_lead_frames)
        self.engine = TurnEngine(TurnSettings.from_agent(agent))
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.history: list[ChatMessage] = [ChatMessage("system", agent.prompt)]
        self.turns: dict[int, TurnMarks] = {}

        # input side: transport format -> 20 ms frames -> VAD (pcm16) and STT formats
        self._in_frames = Reframer.for_format(input_format)
        vad_rate = min(_VAD_RATES, key=lambda r: (abs(r - input_format.sample_rate), -r))
        self._vad_format = AudioFormat("pcm16", vad_rate)
        self._to_vad = AudioConverter(input_format, self._vad_format)
        self._vad_frames = Reframer(self._vad_format.frame_bytes())
        self.vad = VadSegmenter(
            sample_rate=vad_rate,
            aggressiveness=agent.vad.aggressiveness,
            min_speech_ms=agent.vad.min_speech_ms,
            min_silence_ms=agent.vad.min_silence_ms,
        )
        formats = list(stt.input_formats())
        self.stt_format = input_format if input_format in formats else formats[0]
        self._to_stt = AudioConverter(input_format, self.stt_format)
        self._preroll: deque[bytes] = deque(maxlen=max(1, agent.vad.preroll_ms // 20))
        self._stt_gate_open = False
        self._stt_chunk: list[bytes] = []  # caller audio not yet sent (STT_CHUNK_FRAMES)

        self._stt: SttStream | None = None
        self._tts: TtsStream | None = None
        self._replies: dict[int, _Reply] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closed = False
        self._t0 = clock()
        self._last_tick = self._t0
        self._last_user_activity = self._t0
        self._silence_frame = silence(output.format, 20)
        self.frames_in = 0
        self.frames_out = 0
        self.input_errors = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the provider streams in parallel, then speak the first message."""
        language = self.agent.stt.language or self.agent.language
        tts_language = self.agent.tts.language or self.agent.language
        stt, tts, _ = await asyncio.gather(
            self.stt_provider.open(self.stt_format, language=language),
            self.tts_provider.open(
                self.output.format, voice=self.agent.tts.voice, language=tts_language
            ),
            self.llm.warm(),
        )
        self._stt, self._tts = stt, tts
        self._t0 = self._last_tick = self._last_user_activity = self.clock()
        self._spawn(self._stt_loop(), "stt")
        self._spawn(self._playout_loop(), "playout")
        self._spawn(self._ticker(), "ticker")
        self._spawn(self._watchdog(), "watchdog")
        if self.agent.first_message:
            await self._run_actions(self.engine.say(self.clock(), self.agent.first_message))

    async def close(self, reason: str) -> None:
        """Stop everything, commit what was heard, release the providers. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for reply in list(self._replies.values()):
            await self._stop_reply(reply, completed=False)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for stream in (self._stt, self._tts):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()
        self._end(reason)

    def _end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=f"conversation-{name}")
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._closed:
            return
        exc = task.exception()
        if exc is not None:
            log.error("conversation task %s failed", task.get_name(), exc_info=exc)
            self.observer.event("call.error", {"where": task.get_name(), "error": str(exc)})
            self._end("error")

    # ------------------------------------------------------------------ input path

    async def push_audio(self, data: bytes) -> None:
        """Caller audio in ``input_format``, any chunk size."""
        if self._closed:
            return
        for frame in self._in_frames.push(data):
            await self._on_frame(frame)

    async def _on_frame(self, frame: bytes) -> None:
        now = self.clock()
        self.frames_in += 1
        events: list[Event] = []
        frame_start = now - FRAME_S
        for vad_frame in self._vad_frames.push(self._to_vad.process(frame)):
            for ev in self.vad.process(vad_frame, frame_start):
                if ev.kind == "speech_started":
                    events.append(UserSpeechStarted(ev.t))
                else:
                    events.append(UserSpeechEnded(ev.t))
        stt_audio = self._to_stt.process(frame)
        await self._feed_stt(stt_audio, events)
        for event in events:
            self._report_speech(event)
            await self._feed(event)
        self._last_tick = now
        await self._feed(Tick(now))

    async def _feed_stt(self, audio: bytes, events: list[Event]) -> None:
        stream = self._stt
        if stream is None:
            return
        if not self.stt_provider.gated:
            if audio:
                await self._push_stt(stream, audio)
            return
        # ``audio`` may be empty for this frame (an upsampling resampler releases its
        # output in blocks, e.g. μ-law 8 kHz → 16 kHz); the gate must still follow the VAD.
        started = any(isinstance(e, UserSpeechStarted) for e in events)
        ended = any(isinstance(e, UserSpeechEnded) for e in events)
        if started and not self._stt_gate_open:
            self._stt_gate_open = True
            while self._preroll:
                await stream.push(self._preroll.popleft())
        if self._stt_gate_open:
            if audio:
                await self._push_stt(stream, audio)
            if ended:
                self._stt_gate_open = False
                await self._push_stt(stream, b"", flush=True)
                await stream.finalize()
        elif audio:
            self._preroll.append(audio)

    async def _push_stt(self, stream: SttStream, audio: bytes, *, flush: bool = False) -> None:
        """Send caller audio to the STT in STT_CHUNK_FRAMES-frame pieces: every send is a
        WebSocket frame (mask, maybe deflate, a write), the largest per-frame cost of the
        input path at 100+ calls. The gate flushes before it finalizes, so the final
        transcript waits for nothing; only partials come up to 40 ms later."""
        chunk = self._stt_chunk
        if audio:
            chunk.append(audio)
        if chunk and (flush or len(chunk) >= STT_CHUNK_FRAMES):
            data = chunk[0] if len(chunk) == 1 else b"".join(chunk)
            chunk.clear()
            await stream.push(data)

    def _report_speech(self, event: Event) -> None:
        if isinstance(event, UserSpeechStarted):
            self._last_user_activity = event.t
            self.observer.event("user.speech_started", {"t": round(event.t - self._t0, 3)})
        elif isinstance(event, UserSpeechEnded):
            self._last_user_activity = event.t
            self.observer.event("user.speech_stopped", {"t": round(event.t - self._t0, 3)})

    async def _stt_loop(self) -> None:
        assert self._stt is not None
        event: SttEvent
        async for event in self._stt.events():
            now = self.clock()
            if event.kind == "partial":
                self.observer.live("user.partial", {"text": event.text})
                await self._feed(TranscriptReceived(now, event.text, final=False))
            elif event.kind == "final":
                self.observer.live("user.final", {"text": event.text})
                await self._feed(TranscriptReceived(now, event.text, final=True))

    def on_mark(self, name: str) -> None:
        """The transport says audio up to mark ``name`` was played."""
        self.observer.live("agent.mark_played", {"name": name})

    def dtmf(self, digit: str) -> None:
        self._last_user_activity = self.clock()
        self.observer.event("dtmf", {"digit": digit})

    async def _ticker(self) -> None:
        """Keep timers running when the transport sends no audio."""
        while True:
            await asyncio.sleep(0.05)
            now = self.clock()
            if now - self._last_tick >= 0.04:
                self._last_tick = now
                await self._feed(Tick(now))

    async def _watchdog(self) -> None:
        """End the call at the agent's maximum duration or after a long silence."""
        while True:
            await asyncio.sleep(0.5)
            now = self.clock()
            if now - self._t0 >= self.agent.max_duration_s:
                self._end("max_duration")
                return
            busy = self.engine.current is not None or self.engine.user_speaking
            if busy:
                self._last_user_activity = now
            elif now - self._last_user_activity >= self.agent.silence_timeout_s:
                self._end("silence_timeout")
                return

    # ------------------------------------------------------------------ the engine

    async def _feed(self, event: Event) -> None:
        await self._run_actions(self.engine.handle(event))

    async def _run_actions(self, actions: list[Action]) -> None:
        for action in actions:
            await self._run(action)

    async def _run(self, action: Action) -> None:
        match action:
            case Respond():
                marks = TurnMarks(
                    speech_ended=action.speech_ended_at,
                    final_transcript=action.final_transcript_at,
                    endpoint=action.decided_at,
                )
                self._start_reply(action.turn_id, marks, user_text=action.user_text)
                self._replies[action.turn_id].audio.playable = not action.hold
            case Say():
                self._start_reply(action.turn_id, TurnMarks(), user_text=None, text=action.text)
            case Release():
                reply = self._replies.get(action.turn_id)
                if reply is not None:
                    reply.marks.endpoint = action.decided_at
                    reply.audio.playable = True
                    self._wake.set()
            case Pause():
                reply = self._replies.get(action.turn_id)
                if reply is not None:
                    reply.audio.pause()
                    await self.output.clear()
                    self.observer.event("agent.paused", {"turn_id": action.turn_id})
            case Resume():
                reply = self._replies.get(action.turn_id)
                if reply is not None:
                    reply.audio.resume()
                    self._wake.set()
                    self.observer.event("agent.resumed", {"turn_id": action.turn_id})
            case Cancel():
                reply = self._replies.get(action.turn_id)
                if reply is not None:
                    if action.reason == "barge_in":
                        self.observer.event(
                            "agent.interrupted",
                            {"turn_id": action.turn_id, "played_s": reply.audio.played_seconds()},
                        )
                    await self._stop_reply(reply, completed=False, clear=action.clear)
            case CommitUser():
                self.history.append(ChatMessage("user", action.text))
                now = self.clock() - self._t0
                self.observer.transcript(
                    TranscriptSegment("user", action.text, action.turn_id, now, now)
                )
            case CommitAgent():
                if action.text:
                    self.history.append(ChatMessage("assistant", action.text))
                now = self.clock() - self._t0
                self.observer.transcript(
                    TranscriptSegment(
                        "agent", action.text, action.turn_id, now, now, action.interrupted
                    )
                )

    # ------------------------------------------------------------------ replies

    def _start_reply(
        self, turn_id: int, marks: TurnMarks, *, user_text: str | None, text: str = ""
    ) -> None:
        audio = ReplyAudio(turn_id)
        reply = _Reply(turn_id, audio, marks, user_text, text=text)
        self._replies[turn_id] = reply
        self.turns[turn_id] = marks
        reply.task = asyncio.create_task(self._produce(reply), name=f"reply-{turn_id}")

    async def _produce(self, reply: _Reply) -> None:
        """LLM text → sentence chunks → TTS → frames on the playout queue."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        try:
            async with asyncio.TaskGroup() as group:
                if reply.user_text is None:
                    queue.put_nowait(reply.text)
                    queue.put_nowait(None)
                else:
                    group.create_task(self._generate(reply, queue))
                group.create_task(self._synthesize(reply, queue))
        except* ProviderError as errors:
            for error in errors.exceptions:
                assert isinstance(error, ProviderError)
                self.observer.event(
                    "provider.error",
                    {
                        "turn_id": reply.turn_id,
                        "provider": error.provider,
                        "status": error.status,
                        "error": str(error),
                    },
                )
        finally:
            reply.audio.finished = True
            self._wake.set()

    async def _generate(self, reply: _Reply, queue: asyncio.Queue[str | None]) -> None:
        chunker = SentenceChunker()
        messages = [*self.history, ChatMessage("user", reply.user_text or "")]
        tools = [END_CALL_TOOL, *self._agent_tools()]
        reply.marks.llm_request = self.clock()
        try:
            async for delta in self.llm.stream(messages, tools=tools):
                if delta.text:
                    if reply.marks.llm_first_token is None:
                        reply.marks.llm_first_token = self.clock()
                    for chunk in chunker.push(delta.text):
                        queue.put_nowait(chunk)
                if delta.tool_call is not None:
                    self._on_tool_call(reply, delta.tool_call)
            rest = chunker.flush()
            if rest:
                queue.put_nowait(rest)
        finally:
            queue.put_nowait(None)

    def _agent_tools(self) -> list[ToolSpec]:
        return [ToolSpec(t.name, t.description, t.parameters) for t in self.agent.tools]

    def _on_tool_call(self, reply: _Reply, call: ToolCall) -> None:
        reply.tool_calls.append(call)
        self.observer.event(
            "tool.call",
            {
                "turn_id": reply.turn_id,
                "id": call.id,
                "name": call.name,
                "arguments": call.arguments,
            },
        )
        if call.name == END_CALL_TOOL.name:
            reply.end_call = True

    async def _synthesize(self, reply: _Reply, queue: asyncio.Queue[str | None]) -> None:
        assert self._tts is not None
        tts = self._tts
        converter = AudioConverter(tts.output_format, self.output.format)
        frames = Reframer.for_format(self.output.format)
        index = 0
        texts: list[str] = []
        while (chunk := await queue.get()) is not None:
            await self._feed(AgentSegment(self.clock(), reply.turn_id, index, chunk, None))
            produced = 0
            async for audio in tts.synthesize(chunk):
                if reply.marks.tts_first_audio is None:
                    reply.marks.tts_first_audio = self.clock()
                pcm = converter.process(audio)
                produced += len(pcm)
                ready = frames.push(pcm)
                if ready:
                    reply.audio.push(ready)
                    self._wake.set()
            duration = self.output.format.duration_s(produced)
            await self._feed(AgentSegment(self.clock(), reply.turn_id, index, chunk, duration))
            texts.append(chunk)
            self.observer.live("agent.text", {"turn_id": reply.turn_id, "text": chunk})
            index += 1
        tail = converter.flush()
        if tail:
            frames.push(tail)
        last = frames.flush(pad=True)
        if last:
            reply.audio.push([last])
        reply.text = " ".join(texts)

    async def _stop_reply(self, reply: _Reply, *, completed: bool, clear: bool = False) -> None:
        """End a reply: clear the transport, tell the engine, cancel its production.

        It may run inside the reply's own task (an engine action triggered while that
        task fed an event), so the cancellation comes last and is not awaited.
        """
        if self._replies.pop(reply.turn_id, None) is None:
            return
        played = reply.audio.total_seconds() if completed else reply.audio.played_seconds()
        if clear:
            await self.output.clear()
        if reply.audio.started:
            self.observer.event(
                "agent.speech_stopped",
                {"turn_id": reply.turn_id, "interrupted": not completed, "played_s": played},
            )
        self._send_metrics(reply)
        if completed and reply.end_call:
            self._end("agent_hangup")
        task = reply.task
        if task is not None and not task.done():
            task.cancel()
        await self._feed(AgentSpeechEnded(self.clock(), reply.turn_id, played, completed))

    def _send_metrics(self, reply: _Reply) -> None:
        if reply.metrics_sent or reply.marks.first_audio_out is None:
            return
        reply.metrics_sent = True
        self.observer.event(
            "turn.metrics",
            {
                "turn_id": reply.turn_id,
                "marks": reply.marks.as_dict(self._t0),
                "durations_ms": reply.marks.durations_ms(),
                "underruns": reply.audio.underruns,
            },
        )

    # ------------------------------------------------------------------ playout

    def _next_audio(self) -> ReplyAudio | None:
        """The oldest live reply's audio: replies play in turn order."""
        return self._replies[min(self._replies)].audio if self._replies else None

    async def _playout_loop(self) -> None:
        """Send one frame every 20 ms while a reply has audio; sleep otherwise."""
        clock = FrameClock(FRAME_S)
        while True:
            audio = self._next_audio()
            if audio is None or not audio.ready:
                if audio is not None and audio.drained and audio.playable and not audio.paused:
                    await self._finish_playout(audio)
                    continue
                if audio is not None and audio.started and audio.playable and not audio.paused:
                    audio.underruns += 1
                self._wake.clear()
                await self._wake.wait()
                clock.restart()
                if audio is not None:
                    audio.lead = 0
                continue
            reply = self._replies[audio.turn_id]
            frame = audio.take()
            first = audio.sent == 1 and reply.marks.first_audio_out is None
            await self.output.send_frame(frame)
            self.frames_out += 1
            if first:
                reply.marks.first_audio_out = self.clock()
                self.observer.event("agent.speech_started", {"turn_id": audio.turn_id})
                await self._feed(AgentSpeechStarted(self.clock(), audio.turn_id))
            if audio.lead < self.lead_frames:
                audio.lead += 1  # sent ahead of real time: no wait
                continue
            await clock.wait()

    async def _finish_playout(self, audio: ReplyAudio) -> None:
        reply = self._replies.get(audio.turn_id)
        if reply is None:
            return
        # the last frames are still in the transport's buffer for ``lead`` frames
        if audio.lead:
            await asyncio.sleep(audio.lead * FRAME_S)
            if audio.paused or not audio.drained or audio.turn_id not in self._replies:
                return
        audio.lead = 0
        if audio.started:
            await self.output.mark(f"turn-{audio.turn_id}-end")
        await self._stop_reply(reply, completed=True)
