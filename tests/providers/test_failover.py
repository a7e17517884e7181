"""Failover chains over real adapters and SDKs, against the local protocol fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from providers.base import (
    PCM16_16K,
    AudioFormat,
    ChatMessage,
    ProviderError,
    SttEvent,
    TtsProvider,
)
from providers.cloud.deepgram_stt import DeepgramStt
from providers.cloud.elevenlabs_tts import ElevenLabsTts
from providers.cloud.openai_llm import OpenAiLlm
from providers.cloud.openai_tts import OpenAiTts
from providers.failover import (
    CONTINUE_PROMPT,
    FailoverLlm,
    FailoverStt,
    FailoverSttStream,
    FailoverTts,
)
from tests.fakes._base import Faults
from tests.fakes.deepgram_server import FakeDeepgramServer
from tests.fakes.elevenlabs_server import FakeElevenLabsServer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.providers.conftest import SECRET, frames, quiet, speech

SENTENCE = "please book a table for two"
Switches = list[tuple[str, str, str, str]]


def recorder() -> tuple[Switches, Callable[[str, str, str, str], None]]:
    seen: Switches = []

    def on_failover(kind: str, old: str, new: str, reason: str) -> None:
        seen.append((kind, old, new, reason))

    return seen, on_failover


def dg(srv: FakeDeepgramServer, name: str, **kw: Any) -> DeepgramStt:
    return DeepgramStt(
        api_key=kw.pop("api_key", "dg-key-123456"), base_url=srv.base_url, name=name, **kw
    )


async def utterance(stream: FailoverSttStream, audio: bytes) -> list[SttEvent]:
    for frame in frames(audio, PCM16_16K):
        await stream.push(frame)
    await stream.finalize()
    return await finals(stream)


async def finals(stream: FailoverSttStream, count: int = 1) -> list[SttEvent]:
    out: list[SttEvent] = []
    async with asyncio.timeout(10):
        async for event in stream.events():
            out.append(event)
            if sum(e.kind == "final" for e in out) == count:
                break
    return out


# --------------------------------------------------------------------------- STT


async def test_stt_drop_mid_utterance_fallback_gets_the_whole_utterance() -> None:
    seen, cb = recorder()
    audio = speech(1200, PCM16_16K)  # six words of 200 ms
    async with (
        FakeDeepgramServer(utterances=[SENTENCE], drop_after_ms=500) as primary,
        FakeDeepgramServer(utterances=[SENTENCE]) as backup,
    ):
        stt = FailoverStt([dg(primary, "deepgram"), dg(backup, "deepgram-eu")], cb)
        stream = await stt.open(PCM16_16K, language="en")
        events = await utterance(stream, audio)
        await stream.aclose()
    assert events[-1].kind == "final" and events[-1].text == SENTENCE
    assert [s[:3] for s in seen] == [("stt", "deepgram", "deepgram-eu")]
    assert "dropped" in seen[0][3]
    assert bytes(backup.requests[0].audio) == audio  # replayed from the first byte, no gap
    assert stream.current_name == "deepgram-eu" and stt.index == 1


async def test_stt_final_that_never_comes_times_out_to_the_fallback() -> None:
    seen, cb = recorder()
    async with (
        FakeDeepgramServer(utterances=[SENTENCE], delay=30) as primary,  # slow final
        FakeDeepgramServer(utterances=[SENTENCE]) as backup,
    ):
        stt = FailoverStt(
            [dg(primary, "deepgram"), dg(backup, "backup")], cb, silence_timeout_s=0.3
        )
        stream = await stt.open(PCM16_16K, language="en")
        events = await utterance(stream, speech(1200, PCM16_16K))
        await stream.aclose()
    assert [e.text for e in events if e.kind == "final"] == [SENTENCE]
    assert seen[0][:3] == ("stt", "deepgram", "backup") and "no final" in seen[0][3]


async def test_stt_words_already_final_are_not_repeated_after_replay() -> None:
    seen, cb = recorder()
    script = ["hello there", "how are you"]
    async with (
        FakeDeepgramServer(utterances=script, drop_after_ms=1000) as primary,
        FakeDeepgramServer(utterances=script) as backup,
    ):
        stt = FailoverStt(
            [dg(primary, "a", endpointing_ms=300), dg(backup, "b", endpointing_ms=300)], cb
        )
        stream = await stt.open(PCM16_16K, language="en")
        audio = speech(400, PCM16_16K) + quiet(400, PCM16_16K) + speech(600, PCM16_16K)
        for frame in frames(audio, PCM16_16K):
            await stream.push(frame)
        await stream.finalize()
        events = await finals(stream, count=2)
        await stream.aclose()
    assert [e.text for e in events if e.kind == "final"] == ["hello there", "how are you"]
    assert len(seen) == 1


async def test_stt_primary_refused_at_call_start() -> None:
    seen, cb = recorder()
    async with (
        FakeDeepgramServer(faults=Faults(fail_status=503)) as primary,
        FakeDeepgramServer(utterances=["hi"]) as backup,
    ):
        stt = FailoverStt([dg(primary, "a"), dg(backup, "b")], cb)
        stream = await stt.open(PCM16_16K, language="en")
        events = await utterance(stream, speech(200, PCM16_16K))
        await stream.aclose()
    assert events[-1].text == "hi"
    assert seen[0][:3] == ("stt", "a", "b") and "503" in seen[0][3]


async def test_stt_fallback_with_another_format_gets_converted_audio() -> None:
    """The call runs μ-law 8 kHz natively on the primary; the fallback only takes pcm16."""
    mulaw = AudioFormat("mulaw", 8000)

    class Pcm16Only(DeepgramStt):
        def input_formats(self) -> list[AudioFormat]:
            return [PCM16_16K]

    async with (
        FakeDeepgramServer(utterances=["good morning"], drop_after_ms=100) as primary,
        FakeDeepgramServer(utterances=["good morning"]) as backup,
    ):
        chain = [
            dg(primary, "a"),
            Pcm16Only(api_key="k-123456", base_url=backup.base_url, name="b"),
        ]
        stream = await FailoverStt(chain).open(mulaw, language="en")
        for frame in frames(speech(400, mulaw), mulaw):
            await stream.push(frame)
        await stream.finalize()
        events = await finals(stream)
        await stream.aclose()
    assert events[-1].text == "good morning"
    assert primary.requests[0].query["encoding"] == "mulaw"
    assert backup.requests[0].query["encoding"] == "linear16"
    assert backup.requests[0].query["sample_rate"] == "16000"


async def test_stt_every_provider_failing_ends_the_stream_with_an_error() -> None:
    seen, cb = recorder()
    async with (
        FakeDeepgramServer(drop_after_ms=100) as a,
        FakeDeepgramServer(drop_after_ms=100) as b,
    ):
        stream = await FailoverStt([dg(a, "a"), dg(b, "b")], cb).open(PCM16_16K, language="en")
        with pytest.raises(ProviderError) as err:
            await utterance(stream, speech(600, PCM16_16K))
        await stream.aclose()
    assert err.value.status == 502 and not err.value.retryable
    assert [s[1:3] for s in seen] == [("a", "b")]


# --------------------------------------------------------------------------- LLM

HISTORY = [ChatMessage("system", "Be brief."), ChatMessage("user", "Hours?")]


def oa(srv: FakeOpenAIServer, name: str, key: str = "sk-key-123456") -> OpenAiLlm:
    return OpenAiLlm(api_key=key, base_url=srv.openai_base_url, name=name)


async def text_of(llm: FailoverLlm) -> str:
    return "".join([d.text async for d in llm.stream(HISTORY)])


async def test_llm_5xx_goes_to_the_next_model_and_sticks() -> None:
    seen, cb = recorder()
    async with (
        FakeOpenAIServer(faults=Faults(fail_status=503)) as primary,
        FakeOpenAIServer(reply="Nine to five.") as backup,
    ):
        llm = FailoverLlm([oa(primary, "openai"), oa(backup, "ollama")], cb)
        assert await text_of(llm) == "Nine to five."
        assert await text_of(llm) == "Nine to five."
    assert [s[:3] for s in seen] == [("llm", "openai", "ollama")]
    assert len(primary.requests) == 1  # the second reply went straight to the fallback


async def test_llm_429_goes_to_the_next_model() -> None:
    seen, cb = recorder()
    async with (
        FakeOpenAIServer(faults=Faults(fail_status=429, retry_after="30")) as primary,
        FakeOpenAIServer(reply="Sure.") as backup,
    ):
        llm = FailoverLlm([oa(primary, "a"), oa(backup, "b")], cb)
        assert await text_of(llm) == "Sure."
    assert "rate limited" in seen[0][3]


async def test_llm_drop_mid_reply_is_continued_by_the_next_model() -> None:
    seen, cb = recorder()
    async with (
        FakeOpenAIServer(reply="We open at nine", drop_after_tokens=2) as primary,
        FakeOpenAIServer(reply=" at nine tomorrow.") as backup,
    ):
        llm = FailoverLlm([oa(primary, "a"), oa(backup, "b")], cb)
        assert await text_of(llm) == "We open at nine tomorrow."
    sent = backup.requests[0].body["messages"]
    assert sent[-2] == {"role": "assistant", "content": "We open"}
    assert sent[-1] == {"role": "system", "content": CONTINUE_PROMPT}
    assert seen[0][:3] == ("llm", "a", "b")


async def test_llm_slow_first_token_times_out_to_the_next_model() -> None:
    seen, cb = recorder()
    async with (
        FakeOpenAIServer(reply="Late.", delay=5) as primary,
        FakeOpenAIServer(reply="On time.") as backup,
    ):
        llm = FailoverLlm([oa(primary, "a"), oa(backup, "b")], cb, silence_timeout_s=0.3)
        assert await text_of(llm) == "On time."
    assert "no token within 0.3 s" in seen[0][3]


async def test_llm_all_failing_raises() -> None:
    async with (
        FakeOpenAIServer(faults=Faults(fail_status=500)) as a,
        FakeOpenAIServer(faults=Faults(fail_status=402)) as b,
    ):
        with pytest.raises(ProviderError) as err:
            await text_of(FailoverLlm([oa(a, "a"), oa(b, "b")]))
    assert err.value.status == 402  # the last provider's verdict is what gets reported


async def test_failover_reasons_never_carry_keys() -> None:
    seen, cb = recorder()
    async with (
        FakeOpenAIServer(api_key="the-right-key") as primary,
        FakeOpenAIServer(reply="Ok.") as backup,
    ):
        llm = FailoverLlm([oa(primary, "a", key=SECRET), oa(backup, "b")], cb)
        assert await text_of(llm) == "Ok."
    assert seen and all(SECRET not in " ".join(s) for s in seen)


# --------------------------------------------------------------------------- TTS


async def test_tts_drop_mid_sentence_is_spoken_by_the_fallback_in_the_call_format() -> None:
    seen, cb = recorder()
    async with (
        FakeElevenLabsServer(drop_after_bytes=2000, chars_per_message=4) as primary,
        FakeOpenAIServer(char_ms=10) as backup,
    ):
        chain: list[TtsProvider] = [
            ElevenLabsTts(api_key="el-key-123456", base_url=primary.base_url),
            OpenAiTts(api_key="sk-key-123456", base_url=backup.openai_base_url, voice="nova"),
        ]
        tts = FailoverTts(chain, cb)
        stream = await tts.open(PCM16_16K, voice="JBFqnCBsd6RMkjVDRZzb", language="en")
        assert stream.output_format == PCM16_16K
        text = "A sentence long enough to be cut off."
        audio = b"".join([c async for c in stream.synthesize(text)])
        again = b"".join([c async for c in stream.synthesize("Next one.")])
        await stream.aclose()
    assert seen[0][:3] == ("tts", "elevenlabs", "openai")
    assert backup.requests[0].body["voice"] == "nova"  # the fallback's own voice
    assert backup.requests[0].body["input"] == text
    # what the primary said before it dropped (one 4-character message), then the whole
    # sentence again from the fallback, resampled 24 kHz -> 16 kHz
    before_drop = 16000 * 10 * 4 // 1000 * 2
    expected = 16000 * 10 * len(text) // 1000 * 2
    assert abs(len(audio) - before_drop - expected) <= 200
    assert len(again) > 0 and len(seen) == 1


async def test_tts_slow_first_byte_goes_to_the_fallback() -> None:
    seen, cb = recorder()
    async with (
        FakeElevenLabsServer(delay=5) as primary,
        FakeOpenAIServer() as backup,
    ):
        chain: list[TtsProvider] = [
            ElevenLabsTts(api_key="el-key-123456", base_url=primary.base_url),
            OpenAiTts(api_key="sk-key-123456", base_url=backup.openai_base_url),
        ]
        stream = await FailoverTts(chain, cb, silence_timeout_s=0.3).open(
            PCM16_16K, voice=None, language="en"
        )
        audio = b"".join([c async for c in stream.synthesize("Hello.")])
        await stream.aclose()
    assert len(audio) > 0 and "no audio within 0.3 s" in seen[0][3]


async def test_tts_primary_refused_at_open() -> None:
    seen, cb = recorder()
    async with (
        FakeElevenLabsServer(faults=Faults(fail_status=402)) as primary,
        FakeOpenAIServer() as backup,
    ):
        chain: list[TtsProvider] = [
            ElevenLabsTts(api_key="el-key-123456", base_url=primary.base_url),
            OpenAiTts(api_key="sk-key-123456", base_url=backup.openai_base_url),
        ]
        stream = await FailoverTts(chain, cb).open(PCM16_16K, voice=None, language="en")
        audio = b"".join([c async for c in stream.synthesize("Hi.")])
        await stream.aclose()
    assert stream.output_format == AudioFormat("pcm16", 24000)  # the fallback's own format
    assert len(audio) == 24000 * 10 * 3 // 1000 * 2
    assert "insufficient credits" in seen[0][3]
