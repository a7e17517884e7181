"""Deepgram live STT through the real ``deepgram-sdk``, against the local protocol fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any, cast

import pytest

from providers.base import MULAW_8K, PCM16_16K, AudioFormat, ProviderError, SttEvent
from providers.cloud.deepgram_stt import DeepgramStt, DeepgramSttStream
from providers.cloud.deepgram_tts import DeepgramTts
from tests.fakes._base import Faults
from tests.fakes.deepgram_server import FakeDeepgramServer
from tests.providers.conftest import (
    SECRET,
    assert_no_secret,
    exception_text,
    frames,
    quiet,
    speech,
)

KEY = "dg-test-key-0123456789"


async def collect(stream: DeepgramSttStream, until: str = "final") -> list[SttEvent]:
    out: list[SttEvent] = []
    async with asyncio.timeout(10):
        async for event in stream.events():
            out.append(event)
            if event.kind == until:
                break
    return out


async def say(stream: DeepgramSttStream, audio: bytes, fmt: AudioFormat) -> None:
    for frame in frames(audio, fmt):
        await stream.push(frame)


def provider(srv: FakeDeepgramServer, **kw: Any) -> DeepgramStt:
    return DeepgramStt(api_key=kw.pop("api_key", KEY), base_url=srv.base_url, **kw)


async def test_happy_path_interim_then_final_on_finalize() -> None:
    async with FakeDeepgramServer(utterances=["hello big world"], api_key=KEY) as srv:
        stt = provider(srv, model="nova-3")
        assert PCM16_16K in stt.input_formats() and MULAW_8K in stt.input_formats()
        stream = await stt.open(PCM16_16K, language="en")
        await say(stream, speech(600, PCM16_16K), PCM16_16K)
        await stream.finalize()
        events = await collect(stream)
        await stream.aclose()

    partials = [e.text for e in events if e.kind == "partial"]
    assert partials == ["hello", "hello big", "hello big world"]
    assert events[-1] == SttEvent("final", "hello big world", confidence=0.98)
    rec = srv.requests[0]
    assert rec.path == "/v1/listen"
    assert rec.headers["authorization"] == f"Token {KEY}"
    assert rec.query["encoding"] == "linear16" and rec.query["sample_rate"] == "16000"
    assert rec.query["model"] == "nova-3" and rec.query["interim_results"] == "true"
    assert {"type": "Finalize"} in rec.messages
    assert srv.stats[0].closed_by_client  # CloseStream on aclose


async def test_mulaw_8k_is_sent_natively() -> None:
    async with FakeDeepgramServer(utterances=["yes please"]) as srv:
        stream = await provider(srv).open(MULAW_8K, language="en")
        audio = speech(400, MULAW_8K)
        await say(stream, audio, MULAW_8K)
        await stream.finalize()
        events = await collect(stream)
        await stream.aclose()
    assert events[-1].text == "yes please"
    assert srv.requests[0].query["encoding"] == "mulaw"
    assert srv.requests[0].query["sample_rate"] == "8000"
    assert bytes(srv.requests[0].audio) == audio  # byte for byte, no transcoding


async def test_linear16_at_other_rates() -> None:
    fmt = AudioFormat("pcm16", 48000)
    async with FakeDeepgramServer(utterances=["fine"]) as srv:
        stt = provider(srv)
        assert fmt in stt.input_formats()
        stream = await stt.open(fmt, language="en")
        await say(stream, speech(200, fmt), fmt)
        await stream.finalize()
        assert (await collect(stream))[-1].text == "fine"
        await stream.aclose()
    assert srv.requests[0].query["sample_rate"] == "48000"


async def test_provider_endpointing_speech_final_and_vad_events() -> None:
    """Continuous mode: Deepgram's own endpoint (speech_final), SpeechStarted, UtteranceEnd."""
    async with FakeDeepgramServer(utterances=["good morning"]) as srv:
        stt = provider(srv, endpointing_ms=300, utterance_end_ms=1000, gated=False)
        stream = await stt.open(PCM16_16K, language="en")
        await say(stream, quiet(100, PCM16_16K) + speech(400, PCM16_16K), PCM16_16K)
        await say(stream, quiet(1200, PCM16_16K), PCM16_16K)
        events = await collect(stream, until="utterance_end")
        await stream.aclose()
    kinds = [e.kind for e in events]
    assert kinds[0] == "speech_started"
    final = next(e for e in events if e.kind == "final")
    assert final.text == "good morning" and final.speech_final
    assert kinds[-1] == "utterance_end"
    q = srv.requests[0].query
    assert q["endpointing"] == "300" and q["utterance_end_ms"] == "1000"
    assert q["vad_events"] == "true"


async def test_keepalive_keeps_a_silent_stream_open() -> None:
    async with FakeDeepgramServer(utterances=["still here"], idle_timeout=0.4) as srv:
        stream = await provider(srv, keepalive_s=0.1).open(PCM16_16K, language="en")
        await asyncio.sleep(1.0)  # longer than the server's idle timeout, no audio
        await say(stream, speech(400, PCM16_16K), PCM16_16K)
        await stream.finalize()
        assert (await collect(stream))[-1].text == "still here"
        await stream.aclose()
    assert srv.stats[0].keepalives >= 2
    assert {"type": "KeepAlive"} in srv.requests[0].messages


async def test_without_keepalive_the_idle_close_is_an_error() -> None:
    async with FakeDeepgramServer(idle_timeout=0.3) as srv:
        stream = await provider(srv, keepalive_s=0).open(PCM16_16K, language="en")
        with pytest.raises(ProviderError) as err:
            await collect(stream)
        assert err.value.status == 502 and err.value.provider == "deepgram"
        await stream.aclose()


async def test_mid_stream_disconnect_raises_provider_error() -> None:
    async with FakeDeepgramServer(utterances=["one two three four"], drop_after_ms=300) as srv:
        stream = await provider(srv).open(PCM16_16K, language="en")
        with pytest.raises(ProviderError) as err:
            await say(stream, speech(800, PCM16_16K), PCM16_16K)
            await stream.finalize()
            await collect(stream)
        assert err.value.status == 502 and err.value.retryable
        await stream.aclose()


async def test_5xx_on_connect() -> None:
    async with FakeDeepgramServer(faults=Faults(fail_status=503)) as srv:
        with pytest.raises(ProviderError) as err:
            await provider(srv).open(PCM16_16K, language="en")
    assert err.value.status == 502 and err.value.retryable


async def test_429_with_retry_after() -> None:
    async with FakeDeepgramServer(faults=Faults(fail_status=429, retry_after="7")) as srv:
        with pytest.raises(ProviderError) as err:
            await provider(srv).open(PCM16_16K, language="en")
    assert err.value.status == 429 and err.value.retry_after == 7.0 and err.value.retryable


async def test_402_is_insufficient_credits() -> None:
    async with FakeDeepgramServer(faults=Faults(fail_status=402)) as srv:
        with pytest.raises(ProviderError) as err:
            await provider(srv).open(PCM16_16K, language="en")
    assert err.value.status == 402 and not err.value.retryable


async def test_slow_first_byte_still_transcribes() -> None:
    async with FakeDeepgramServer(utterances=["slow start"], first_byte_delay=0.5) as srv:
        stream = await provider(srv).open(PCM16_16K, language="en")
        await say(stream, speech(400, PCM16_16K), PCM16_16K)
        await stream.finalize()
        assert (await collect(stream))[-1].text == "slow start"
        await stream.aclose()


async def test_key_never_in_logs_or_exceptions(debug_logs: pytest.LogCaptureFixture) -> None:
    texts: list[str] = []
    async with FakeDeepgramServer(api_key="the-right-key") as srv:
        with pytest.raises(ProviderError) as err:  # 401: the SDK's error carries headers
            await provider(srv, api_key=SECRET).open(PCM16_16K, language="en")
        texts.append(exception_text(err.value))
        srv.api_key = None
        srv.drop_after_ms = 100
        stream = await provider(srv, api_key=SECRET).open(PCM16_16K, language="en")
        with pytest.raises(ProviderError) as err2:
            await say(stream, speech(400, PCM16_16K), PCM16_16K)
            await collect(stream)
        texts.append(exception_text(err2.value))
        await stream.aclose()
    assert srv.requests[-1].headers["authorization"] == f"Token {SECRET}"  # it was sent...
    assert_no_secret(debug_logs, *texts)  # ...and never written anywhere


# --------------------------------------------------------------------------- Aura TTS


def aura(srv: FakeDeepgramServer, **kw: Any) -> DeepgramTts:
    return DeepgramTts(api_key=KEY, base_url=srv.base_url, **kw)


async def test_aura_speak_flush_per_sentence_on_one_socket() -> None:
    fmt = AudioFormat("pcm16", 24000)
    async with FakeDeepgramServer(api_key=KEY, char_ms=10) as srv:
        stream = await aura(srv, voice="aura-2-thalia-en").open(fmt, voice=None, language="en")
        first = b"".join([c async for c in stream.synthesize("Hello there.")])
        second = b"".join([c async for c in stream.synthesize("Bye.")])
        await stream.aclose()
    assert len(first) == 24000 * 10 * len("Hello there.") // 1000 * 2
    assert len(second) == 24000 * 10 * len("Bye.") // 1000 * 2
    assert stream.connections == 1
    rec = srv.requests[0]
    assert rec.path == "/v1/speak" and rec.headers["authorization"] == f"Token {KEY}"
    assert rec.query == {
        "model": "aura-2-thalia-en",
        "encoding": "linear16",
        "sample_rate": "24000",
    }
    assert rec.messages == [
        {"type": "Speak", "text": "Hello there."},
        {"type": "Flush"},
        {"type": "Speak", "text": "Bye."},
        {"type": "Flush"},
        {"type": "Close"},
    ]


async def test_aura_mulaw_for_telephony() -> None:
    async with FakeDeepgramServer() as srv:
        stream = await aura(srv).open(MULAW_8K, voice="aura-2-apollo-en", language="en")
        audio = b"".join([c async for c in stream.synthesize("Hi.")])
        await stream.aclose()
    assert stream.output_format == MULAW_8K
    assert srv.requests[0].query["encoding"] == "mulaw" and len(audio) == 8000 * 10 * 3 // 1000


async def test_aura_cancelled_sentence_is_cleared_and_socket_reused() -> None:
    async with FakeDeepgramServer(char_ms=50) as srv:
        stream = await aura(srv).open(PCM16_16K, voice=None, language="en")
        agen = cast(
            AsyncGenerator[bytes, None],
            stream.synthesize("A very long sentence that the caller interrupts early on."),
        )
        await agen.__anext__()
        await agen.aclose()  # barge-in
        nxt = b"".join([c async for c in stream.synthesize("Sorry, go ahead.")])
        await stream.aclose()
    assert len(nxt) == 16000 * 50 * len("Sorry, go ahead.") // 1000 * 2  # nothing stale
    assert {"type": "Clear"} in srv.requests[0].messages and stream.connections == 1


async def test_aura_drop_then_reconnect_and_errors() -> None:
    async with FakeDeepgramServer(tts_drop_after_bytes=2000, faults=Faults(drop_times=1)) as srv:
        stream = await aura(srv).open(PCM16_16K, voice=None, language="en")
        with pytest.raises(ProviderError) as err:
            [c async for c in stream.synthesize("This sentence is long enough to be cut off.")]
        assert err.value.status == 502
        again = b"".join([c async for c in stream.synthesize("Back.")])  # reconnects
        assert len(again) > 0 and stream.connections == 2
        await stream.aclose()
        srv.faults = Faults(fail_status=429, retry_after="2")
        with pytest.raises(ProviderError) as err:
            await aura(srv).open(PCM16_16K, voice=None, language="en")
        assert err.value.status == 429 and err.value.retry_after == 2.0
        srv.faults = Faults(fail_status=502)
        with pytest.raises(ProviderError) as err:
            await aura(srv).open(PCM16_16K, voice=None, language="en")
        assert err.value.status == 502


async def test_aura_slow_first_byte() -> None:
    async with FakeDeepgramServer(tts_delay=0.4) as srv:
        stream = await aura(srv).open(PCM16_16K, voice=None, language="en")
        assert len(b"".join([c async for c in stream.synthesize("Ok.")])) > 0
        await stream.aclose()
