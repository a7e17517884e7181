"""ElevenLabs stream-input TTS and the voice catalogue, through the ``elevenlabs`` SDK's
client configuration and protocol types, against the local protocol fake."""

from __future__ import annotations

from typing import Any

import pytest

from providers.base import MULAW_8K, PCM16_16K, AudioFormat, ProviderError
from providers.cloud.elevenlabs_tts import ElevenLabsTts, ElevenLabsTtsStream, list_voices
from tests.fakes._base import Faults
from tests.fakes.elevenlabs_server import FakeElevenLabsServer
from tests.providers.conftest import SECRET, assert_no_secret, exception_text

KEY = "el-test-key-0123456789"


def tts(srv: FakeElevenLabsServer, **kw: Any) -> ElevenLabsTts:
    return ElevenLabsTts(api_key=kw.pop("api_key", KEY), base_url=srv.base_url, **kw)


async def speak(stream: ElevenLabsTtsStream, text: str) -> bytes:
    return b"".join([chunk async for chunk in stream.synthesize(text)])


async def test_happy_path_pcm_16000_with_alignment() -> None:
    async with FakeElevenLabsServer(api_key=KEY, char_ms=10) as srv:
        provider = tts(
            srv,
            model="eleven_flash_v2_5",
            voice="JBFqnCBsd6RMkjVDRZzb",
            chunk_length_schedule=[50],
            voice_settings={"stability": 0.5, "similarity_boost": 0.8},
        )
        stream = await provider.open(PCM16_16K, voice=None, language="en")
        assert stream.output_format == PCM16_16K
        audio = await speak(stream, "Hello there.")
        assert len(audio) == 16000 * 10 * len("Hello there. ") // 1000 * 2
        assert "".join(ch for ch, _, _ in stream.alignment) == "Hello there. "
        assert stream.spoken_text(55) == "Hello "  # heard 55 ms: six characters started
        second = await speak(stream, "Bye.")
        assert len(second) > 0
        await stream.aclose()
    rec = srv.requests[0]
    assert rec.path == "/v1/text-to-speech/JBFqnCBsd6RMkjVDRZzb/stream-input"
    assert rec.headers["xi-api-key"] == KEY
    assert rec.query["model_id"] == "eleven_flash_v2_5"
    assert rec.query["output_format"] == "pcm_16000"
    first = rec.messages[0]
    assert first["text"] == " "
    assert first["generation_config"] == {"chunk_length_schedule": [50]}
    assert first["voice_settings"] == {"stability": 0.5, "similarity_boost": 0.8}
    assert "xi-api-key" not in first  # the key travels in the header only
    assert rec.messages[1:] == [{"text": "Hello there. ", "flush": True}, {"text": ""}]
    assert srv.texts == ["Hello there. ", "Bye. "]


async def test_ulaw_8000_matches_a_telephony_transport() -> None:
    async with FakeElevenLabsServer() as srv:
        provider = tts(srv)
        assert MULAW_8K in provider.output_formats()
        stream = await provider.open(MULAW_8K, voice=None, language="en")
        audio = await speak(stream, "Hi.")
        await stream.aclose()
    assert stream.output_format == MULAW_8K
    assert srv.requests[0].query["output_format"] == "ulaw_8000"
    assert len(audio) == 8000 * 10 * len("Hi. ") // 1000  # one byte per sample


async def test_unsupported_format_falls_back_to_best_native() -> None:
    async with FakeElevenLabsServer() as srv:
        stream = await tts(srv).open(AudioFormat("pcm16", 48000), voice=None, language="en")
        await speak(stream, "Ok.")
        await stream.aclose()
    assert stream.output_format == PCM16_16K


async def test_next_socket_is_ready_before_the_next_sentence() -> None:
    """Pre-warming: open() connects at call start; each sentence leaves a spare open."""
    async with FakeElevenLabsServer() as srv:
        stream = await tts(srv).open(PCM16_16K, voice=None, language="en")
        assert srv.connections == 1  # connected before any text exists
        for text in ("One.", "Two.", "Three."):
            await speak(stream, text)
        await stream.aclose()
    assert stream.sentences_on_spare == 3  # no sentence waited for a handshake
    assert srv.connections >= 3


async def test_a_spare_closed_by_the_server_is_replaced() -> None:
    async with FakeElevenLabsServer() as srv:
        provider = tts(srv, inactivity_timeout_s=1)
        stream = await provider.open(PCM16_16K, voice=None, language="en")
        import asyncio

        await asyncio.sleep(1.3)  # the idle spare is closed by the server (1008)
        assert len(await speak(stream, "Still works.")) > 0
        await stream.aclose()


async def test_mid_stream_disconnect() -> None:
    async with FakeElevenLabsServer(drop_after_bytes=3000, chars_per_message=4) as srv:
        stream = await tts(srv).open(PCM16_16K, voice=None, language="en")
        got = bytearray()
        with pytest.raises(ProviderError) as err:
            async for chunk in stream.synthesize("A long sentence that gets cut."):
                got += chunk
        assert 0 < len(got) <= 3000
        assert err.value.status == 502 and err.value.retryable
        await stream.aclose()


async def test_5xx_on_connect() -> None:
    async with FakeElevenLabsServer(faults=Faults(fail_status=500)) as srv:
        with pytest.raises(ProviderError) as err:
            await tts(srv).open(PCM16_16K, voice=None, language="en")
    assert err.value.status == 502 and err.value.retryable


async def test_429_with_retry_after() -> None:
    async with FakeElevenLabsServer(faults=Faults(fail_status=429, retry_after="4")) as srv:
        with pytest.raises(ProviderError) as err:
            await tts(srv).open(PCM16_16K, voice=None, language="en")
    assert err.value.status == 429 and err.value.retry_after == 4.0


async def test_quota_exceeded_is_402() -> None:
    async with FakeElevenLabsServer(quota_exceeded=True) as srv:
        stream = await tts(srv).open(PCM16_16K, voice=None, language="en")
        with pytest.raises(ProviderError) as err:
            await speak(stream, "Hello.")
        await stream.aclose()
    assert err.value.status == 402 and not err.value.retryable


async def test_slow_first_byte() -> None:
    async with FakeElevenLabsServer(delay=0.4) as srv:
        stream = await tts(srv).open(PCM16_16K, voice=None, language="en")
        assert len(await speak(stream, "Take your time.")) > 0
        await stream.aclose()


async def test_voice_catalogue() -> None:
    async with FakeElevenLabsServer(api_key=KEY) as srv:
        voices = await list_voices(api_key=KEY, base_url=srv.base_url)
        assert [v.id for v in voices] == ["21m00Tcm4TlvDq8ikWAM", "JBFqnCBsd6RMkjVDRZzb"]
        george = voices[1]
        assert george.name == "George" and george.languages == ("en", "fr")
        assert george.labels["accent"] == "british" and "eleven_flash_v2_5" in george.models
        assert srv.requests[-1].path == "/v1/voices"
        assert srv.requests[-1].headers["xi-api-key"] == KEY
        with pytest.raises(ProviderError) as err:
            await list_voices(api_key="wrong-key-123", base_url=srv.base_url)
        assert err.value.status == 502 and not err.value.retryable
        srv.faults.fail_status = 429
        srv.faults.retry_after = "9"
        with pytest.raises(ProviderError) as err:
            await list_voices(api_key=KEY, base_url=srv.base_url)
        assert err.value.status == 429 and err.value.retry_after == 9.0


async def test_key_never_in_logs_or_exceptions(debug_logs: pytest.LogCaptureFixture) -> None:
    texts = []
    async with FakeElevenLabsServer(api_key="the-right-key") as srv:
        with pytest.raises(ProviderError) as err:
            await tts(srv, api_key=SECRET).open(PCM16_16K, voice=None, language="en")
        texts.append(exception_text(err.value))
        with pytest.raises(ProviderError) as err:
            await list_voices(api_key=SECRET, base_url=srv.base_url)
        texts.append(exception_text(err.value))
        srv.api_key = None
        srv.drop_after_bytes = 500
        stream = await tts(srv, api_key=SECRET).open(PCM16_16K, voice=None, language="en")
        with pytest.raises(ProviderError) as err:
            await speak(stream, "Cut me off please, right here.")
        texts.append(exception_text(err.value))
        await stream.aclose()
    assert srv.requests[-1].headers["xi-api-key"] == SECRET
    assert_no_secret(debug_logs, *texts)
