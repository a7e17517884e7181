"""The conversation orchestrator with scripted engines at the provider edge.

The STT stand-in emits a scripted transcript on ``finalize``; the LLM stand-in streams fixed
text (optionally slowly); the TTS stand-in renders a tone whose length is proportional to
the text. The VAD, turn engine, chunker, converters and playout are the real ones; caller
audio is a real-time stream of tone bursts (voiced to webrtcvad) and silence.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from pipelines.agent_config import AgentConfig, InterruptionSettings
from pipelines.conversation import Conversation
from pipelines.ports import TranscriptSegment
from providers.base import (
    AudioFormat,
    ChatMessage,
    LlmDelta,
    SttEvent,
    ToolSpec,
)

PCM16K = AudioFormat("pcm16", 16000)
FRAME = 640


def tone(seconds: float, rate: int = 16000, freq: float = 220.0) -> bytes:
    n = int(seconds * rate)
    # a buzzy, voice-like signal webrtcvad reliably calls speech
    return b"".join(
        struct.pack(
            "<h",
            int(
                9000 * math.sin(2 * math.pi * freq * i / rate)
                + 5000 * math.sin(2 * math.pi * freq * 3 * i / rate)
                + 3000 * math.sin(2 * math.pi * freq * 7 * i / rate)
            ),
        )
        for i in range(n)
    )


class ScriptedStt:
    name = "scripted-stt"
    gated = True

    def __init__(self, transcripts: list[str]) -> None:
        self.transcripts = transcripts
        self.pushed = 0

    def input_formats(self) -> Sequence[AudioFormat]:
        return [PCM16K]

    async def open(self, fmt: AudioFormat, *, language: str) -> ScriptedStt.Stream:
        return ScriptedStt.Stream(self)

    class Stream:
        def __init__(self, owner: ScriptedStt) -> None:
            self.owner = owner
            self.queue: asyncio.Queue[SttEvent | None] = asyncio.Queue()

        async def push(self, audio: bytes) -> None:
            self.owner.pushed += len(audio)

        async def finalize(self) -> None:
            text = self.owner.transcripts.pop(0) if self.owner.transcripts else ""
            await asyncio.sleep(0.05)
            self.queue.put_nowait(SttEvent("final", text))

        async def events(self) -> AsyncIterator[SttEvent]:
            while (event := await self.queue.get()) is not None:
                yield event

        async def aclose(self) -> None:
            self.queue.put_nowait(None)


class ScriptedLlm:
    name = "scripted-llm"

    def __init__(self, reply: str, delay: float = 0.0) -> None:
        self.reply = reply
        self.delay = delay
        self.requests: list[list[ChatMessage]] = []

    async def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmDelta]:
        self.requests.append(list(messages))
        await asyncio.sleep(self.delay)
        for word in self.reply.split(" "):
            yield LlmDelta(text=word + " ")
        yield LlmDelta(finish_reason="stop")

    async def warm(self) -> None:
        return None


class ToneTts:
    """0.05 s of audio per character at 24 kHz: a different rate than the transport."""

    name = "tone-tts"
    output_format = AudioFormat("pcm16", 24000)

    def output_formats(self) -> Sequence[AudioFormat]:
        return [self.output_format]

    async def open(self, fmt: AudioFormat, *, voice: str | None, language: str) -> ToneTts:
        return self

    async def synthesize(self, text: str) -> AsyncIterator[bytes]:
        audio = tone(len(text) * 0.05, rate=24000, freq=300)
        for i in range(0, len(audio), 4800):
            await asyncio.sleep(0)
            yield audio[i : i + 4800]

    async def aclose(self) -> None:
        return None


class Output:
    def __init__(self) -> None:
        self.format = PCM16K
        self.frames: list[tuple[float, int]] = []
        self.clears: list[float] = []

    async def send_frame(self, frame: bytes) -> None:
        assert len(frame) == FRAME
        self.frames.append((asyncio.get_running_loop().time(), len(frame)))

    async def clear(self) -> None:
        self.clears.append(asyncio.get_running_loop().time())

    async def mark(self, name: str) -> None:
        return None


class Observer:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.segments: list[TranscriptSegment] = []

    def event(self, type: str, data: Any) -> None:
        self.events.append((type, dict(data)))

    def transcript(self, segment: TranscriptSegment) -> None:
        self.segments.append(segment)

    def live(self, type: str, data: Any) -> None:
        return None

    def types(self) -> list[str]:
        return [t for t, _ in self.events]


async def stream_audio(conv: Conversation, audio: bytes) -> None:
    """Push audio in real time, 20 ms a frame."""
    loop = asyncio.get_running_loop()
    deadline = loop.time()
    for i in range(0, len(audio), FRAME):
        await conv.push_audio(audio[i : i + FRAME])
        deadline += 0.02
        await asyncio.sleep(max(0.0, deadline - loop.time()))


async def silence(conv: Conversation, seconds: float) -> None:
    await stream_audio(conv, b"\0" * int(seconds * 16000) * 2)


def make(
    reply: str, transcripts: list[str], *, llm_delay: float = 0.0, **agent: Any
) -> tuple[Conversation, Output, Observer, ScriptedLlm]:
    output, observer = Output(), Observer()
    llm = ScriptedLlm(reply, llm_delay)
    config = AgentConfig(**agent)
    conv = Conversation(
        agent=config,
        stt=ScriptedStt(transcripts),
        llm=llm,
        tts=ToneTts(),
        input_format=PCM16K,
        output=output,
        observer=observer,
    )
    return conv, output, observer, llm


async def test_a_turn_is_answered_with_paced_audio_and_committed() -> None:
    reply = "We open at nine. We close at six."
    conv, output, observer, llm = make(reply, ["when do you open"])
    await conv.start()
    try:
        await silence(conv, 0.3)
        await stream_audio(conv, tone(0.8))
        await silence(conv, 2.5)
        assert "agent.speech_started" in observer.types()
        await silence(conv, len(reply) * 0.05)
    finally:
        await conv.close("test")
    user = [s for s in observer.segments if s.role == "user"]
    agent = [s for s in observer.segments if s.role == "agent"]
    assert [s.text for s in user] == ["when do you open"]
    assert [(s.text, s.interrupted) for s in agent] == [(reply, False)]
    assert llm.requests[0][-1] == ChatMessage("user", "when do you open")
    # the reply was paced: frames ~20 ms apart after the lead
    times = [t for t, _ in output.frames]
    assert len(times) >= int((len(reply) - 1) * 0.05 / 0.02) - 2  # two chunks, no space
    span = times[-1] - times[2]
    assert span >= (len(times) - 3) * 0.02 * 0.9
    metrics = [d for t, d in observer.events if t == "turn.metrics"]
    assert metrics and all(v is not None for v in metrics[0]["marks"].values())
    # the reply was generated before the endpoint (preemptively): the LLM's time to first
    # token is measured from its request, not from the endpoint
    marks = metrics[0]["marks"]
    assert marks["final_transcript"] <= marks["llm_request"] < marks["endpoint"]
    assert marks["llm_request"] <= marks["llm_first_token"]
    assert metrics[0]["durations_ms"]["llm_ttft"] >= 0


async def test_barge_in_clears_and_commits_what_was_heard() -> None:
    reply = "one two three four five six seven eight nine ten eleven twelve"
    conv, output, observer, _ = make(
        reply,
        ["tell me a number", "stop please"],
        interruption=InterruptionSettings(min_duration_ms=200, false_interruption_timeout_ms=500),
    )
    await conv.start()
    try:
        await silence(conv, 0.3)
        await stream_audio(conv, tone(0.8))
        await silence(conv, 1.5)
        assert "agent.speech_started" in observer.types()
        await silence(conv, 0.6)
        await stream_audio(conv, tone(1.0))
        await silence(conv, 1.0)
    finally:
        await conv.close("test")
    assert output.clears, "the transport's buffer was cleared"
    types = observer.types()
    assert "agent.paused" in types and "agent.interrupted" in types
    agent = [s for s in observer.segments if s.role == "agent"]
    assert agent[0].interrupted
    assert agent[0].text and reply.startswith(agent[0].text) and agent[0].text != reply
    # no frame of the interrupted reply went out after the clear
    cleared_at = output.clears[0]
    resumed = [t for t, _ in output.frames if t > cleared_at + 0.001]
    second_reply = [d for t, d in observer.events if t == "agent.speech_started"][1:]
    assert not resumed or second_reply


async def test_a_cough_pauses_then_the_agent_resumes() -> None:
    reply = "this is a fairly long answer that keeps going for a while"
    conv, _output, observer, _ = make(
        reply,
        ["go on", ""],  # the cough is transcribed as nothing
        interruption=InterruptionSettings(min_duration_ms=200, false_interruption_timeout_ms=400),
    )
    await conv.start()
    try:
        await silence(conv, 0.3)
        await stream_audio(conv, tone(0.8))
        await silence(conv, 1.5)
        await stream_audio(conv, tone(0.4, freq=180))  # the cough
        await silence(conv, len(reply) * 0.05 + 1.5)
    finally:
        await conv.close("test")
    types = observer.types()
    assert "agent.paused" in types and "agent.resumed" in types
    assert "agent.interrupted" not in types
    agent = [s for s in observer.segments if s.role == "agent"]
    assert [(s.text, s.interrupted) for s in agent] == [(reply, False)]


async def test_barge_in_while_the_llm_thinks_cancels_without_clearing_audio() -> None:
    conv, output, observer, llm = make(
        "Sure.",
        ["book a table", "for two"],
        llm_delay=1.5,
        interruption=InterruptionSettings(min_duration_ms=200),
    )
    await conv.start()
    try:
        await silence(conv, 0.3)
        await stream_audio(conv, tone(0.6))
        await silence(conv, 0.8)  # the reply is requested; the LLM is still thinking
        await stream_audio(conv, tone(0.6))
        await silence(conv, 3.0)
    finally:
        await conv.close("test")
    assert [m[-1].content for m in llm.requests] == ["book a table", "book a table for two"]
    user = [s.text for s in observer.segments if s.role == "user"]
    assert user == ["book a table for two"]
    assert not output.clears


@pytest.mark.parametrize("fmt", [AudioFormat("mulaw", 8000), AudioFormat("pcm16", 48000)])
async def test_other_transport_formats_are_framed_and_converted(fmt: AudioFormat) -> None:
    output, observer = Output(), Observer()
    output.format = fmt
    frames: list[int] = []

    async def send(frame: bytes) -> None:
        frames.append(len(frame))

    output.send_frame = send  # type: ignore[method-assign]
    conv = Conversation(
        agent=AgentConfig(first_message="Hello there."),
        stt=ScriptedStt([]),
        llm=ScriptedLlm(""),
        tts=ToneTts(),
        input_format=fmt,
        output=output,
        observer=observer,
    )
    await conv.start()
    await asyncio.sleep(len("Hello there.") * 0.05 + 0.3)
    await conv.close("test")
    assert frames and set(frames) == {fmt.frame_bytes()}
    assert [s.text for s in observer.segments] == ["Hello there."]


async def test_caller_audio_reaches_the_stt_in_chunks_all_of_it_before_finalize() -> None:
    """Fewer, larger STT sends (one WebSocket frame each), and a finalize never leaves
    speech behind in the chunk buffer."""
    log: list[tuple[str, int]] = []

    class RecordingStt(ScriptedStt):
        async def open(self, fmt: AudioFormat, *, language: str) -> ScriptedStt.Stream:
            stream = ScriptedStt.Stream(self)
            push, finalize = stream.push, stream.finalize

            async def logged_push(audio: bytes) -> None:
                log.append(("push", len(audio)))
                await push(audio)

            async def logged_finalize() -> None:
                log.append(("finalize", len(conv._stt_chunk)))  # audio still held back
                await finalize()

            stream.push = logged_push  # type: ignore[method-assign]
            stream.finalize = logged_finalize  # type: ignore[method-assign]
            return stream

    output, observer = Output(), Observer()
    conv = Conversation(agent=AgentConfig(), stt=RecordingStt(["hello"]),
                        llm=ScriptedLlm("hi"), tts=ToneTts(), input_format=PCM16K,
                        output=output, observer=observer)
    await conv.start()
    try:
        await silence(conv, 0.3)
        await stream_audio(conv, tone(0.8))
        await silence(conv, 1.0)
    finally:
        await conv.close("test")
    assert ("finalize", 0) in log  # nothing held back when the STT is asked to finish
    before = log[: log.index(("finalize", 0))]
    # the preroll goes frame by frame, then speech in chunks of several frames
    assert max(size for _, size in before) >= 3 * FRAME
    assert sum(size for _, size in before) % FRAME == 0  # whole frames only
    assert "user.speech_stopped" in observer.types()
