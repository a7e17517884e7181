"""Per-process SDK clients, uncompressed audio sockets and the start-up warm-up, through
the real SDKs against the local protocol fakes."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from providers.base import MULAW_8K, ChatMessage
from providers.cloud import warm_cloud_providers
from providers.cloud._common import shared_ssl_context, ws_connect_options
from providers.cloud.deepgram_stt import DeepgramStt, make_client, tune_sdk_sockets
from providers.cloud.deepgram_tts import DeepgramTts
from providers.cloud.elevenlabs_tts import ElevenLabsTts
from providers.cloud.openai_llm import OpenAiLlm
from runtime.providers import warm_providers
from tests.fakes.deepgram_server import FakeDeepgramServer
from tests.fakes.elevenlabs_server import FakeElevenLabsServer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.providers.conftest import SECRET, assert_no_secret, frames, speech

KEY = "dg-test-key-0123456789"


async def final_text(stream: Any) -> str:
    async with asyncio.timeout(10):
        async for event in stream.events():
            if event.kind == "final":
                return str(event.text)
    raise AssertionError("no final")


async def test_deepgram_streams_share_one_client_and_survive_each_other() -> None:
    async with FakeDeepgramServer(utterances=["one"], api_key=KEY) as srv:
        stt = DeepgramStt(api_key=KEY, base_url=srv.base_url)
        tts = DeepgramTts(api_key=KEY, base_url=srv.base_url)
        assert make_client(KEY, srv.base_url, 5.0) is make_client(KEY, srv.base_url, 5.0)
        assert make_client(KEY, srv.base_url, 5.0) is not make_client(KEY + "x", srv.base_url, 5.0)
        a = await stt.open(MULAW_8K, language="en")
        b = await stt.open(MULAW_8K, language="en")
        speaker = await tts.open(MULAW_8K, voice=None, language="en")
        await a.aclose()  # one call ends; the others keep using the shared client
        for frame in frames(speech(400, MULAW_8K), MULAW_8K):
            await b.push(frame)
        await b.finalize()
        assert await final_text(b) == "one"  # each socket hears the script from its start
        audio = b"".join([chunk async for chunk in speaker.synthesize("Still here.")])
        assert audio
        c = await stt.open(MULAW_8K, language="en")  # and new calls still connect
        await c.aclose()
        await b.aclose()
        await speaker.aclose()
    sessions = [r.headers.get("x-deepgram-session-id") for r in srv.requests]
    assert len(sessions) == 4 and None not in sessions
    assert len(set(sessions)) == 4  # one session id per socket, not per shared client


async def test_deepgram_audio_sockets_negotiate_no_compression() -> None:
    async with FakeDeepgramServer(utterances=["hi"], api_key=KEY) as srv:
        stt = await DeepgramStt(api_key=KEY, base_url=srv.base_url).open(MULAW_8K, language="en")
        tts = await DeepgramTts(api_key=KEY, base_url=srv.base_url).open(
            MULAW_8K, voice=None, language="en"
        )
        # the aiohttp fake accepts permessage-deflate whenever a client offers it
        assert stt._socket._websocket.extensions == []
        assert tts._socket._websocket.extensions == []
        await stt.aclose()
        await tts.aclose()
    for rec in srv.requests:
        assert "sec-websocket-extensions" not in rec.headers


def test_socket_tuning_leaves_foreign_transports_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module("deepgram.listen.v1.client")

    def custom(url: str, extra_headers: Any = None) -> Any:  # e.g. an SDK transport_factory
        raise AssertionError("not called")

    monkeypatch.setattr(module, "websockets_client_connect", custom)
    tune_sdk_sockets()
    assert module.websockets_client_connect is custom
    tune_sdk_sockets()  # idempotent for the modules it did wrap
    raw = importlib.import_module("deepgram.listen.v1.raw_client")
    wrapped = raw.websockets_client_connect
    assert not hasattr(wrapped.rymi_original, "rymi_original")


def test_tls_context_is_shared_and_only_for_wss() -> None:
    assert ws_connect_options("wss://api.deepgram.com/v1/listen")["ssl"] is shared_ssl_context()
    assert "ssl" not in ws_connect_options("ws://127.0.0.1:1/v1/listen")
    assert ws_connect_options("ws://127.0.0.1:1/")["compression"] is None


async def test_elevenlabs_engines_share_one_sdk_client() -> None:
    async with FakeElevenLabsServer(api_key=KEY) as srv:
        first = ElevenLabsTts(api_key=KEY, base_url=srv.base_url)
        second = ElevenLabsTts(api_key=KEY, base_url=srv.base_url)
        other = ElevenLabsTts(api_key=KEY + "x", base_url=srv.base_url)
        assert first._sdk is second._sdk and first._sdk is not other._sdk
        stream = await first.open(MULAW_8K, voice=None, language="en")
        await stream.aclose()
        stream = await second.open(MULAW_8K, voice=None, language="en")  # still usable
        assert b"".join([c async for c in stream.synthesize("Hi.")])
        await stream.aclose()


async def test_warm_up_builds_the_clients_calls_then_use(
    debug_logs: pytest.LogCaptureFixture,
) -> None:
    async with FakeDeepgramServer(api_key=SECRET) as dg, FakeOpenAIServer(reply="Hi.") as oa:
        creds = {
            "DEEPGRAM_API_KEY": SECRET,
            "DEEPGRAM_BASE_URL": dg.base_url,
            "OPENAI_API_KEY": SECRET,
            "OPENAI_BASE_URL": oa.base_url,
        }
        assert warm_providers(creds) == ["deepgram", "openai"]
        client = make_client(SECRET, dg.base_url, 5.0)
        llm = OpenAiLlm(api_key=SECRET, base_url=oa.base_url)
        text = "".join([d.text async for d in llm.stream([ChatMessage("user", "hi")]) if d.text])
        assert text == "Hi."
        assert warm_providers(creds) == ["deepgram", "openai"]  # idempotent
        assert make_client(SECRET, dg.base_url, 5.0) is client
    assert warm_cloud_providers({}) == []  # an offline-only worker imports nothing
    assert_no_secret(debug_logs)


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_sse_events_split_anywhere_crlf_and_multiline() -> None:
    from providers.cloud.openai_llm import sse_data

    body = b': comment\r\ndata: {"a": 1}\r\n\r\nevent: x\ndata:{"b":\ndata: 2}\n\ndata: [DONE]\n\n'
    for cut in range(1, len(body)):  # the transport may split the body at any byte
        events = [e async for e in sse_data(_chunks(body[:cut], body[cut:]))]
        assert events == [b'{"a": 1}', b'{"b":\n2}', b"[DONE]"], cut
    assert [e async for e in sse_data(_chunks(b"data: last"))] == [b"last"]  # no blank line


async def test_llm_connection_is_reused_across_replies() -> None:
    async with FakeOpenAIServer(reply="One. Two.") as oa:
        llm = OpenAiLlm(api_key="sk-test-123456", base_url=oa.base_url)
        for _ in range(3):
            deltas = [d async for d in llm.stream([ChatMessage("user", "hi")])]
            assert "".join(d.text for d in deltas if d.text) == "One. Two."
            assert deltas[-1].finish_reason == "stop" and deltas[-1].usage
    peers = {r.peer for r in oa.requests if r.path.endswith("/chat/completions")}
    assert len(peers) == 1  # read to the end after [DONE]: one kept-alive connection


async def test_client_cache_is_bounded_and_never_closes_what_it_drops() -> None:
    from providers.cloud._common import ClientCache

    cache: ClientCache[OpenAiLlm] = ClientCache(limit=2)
    async with FakeOpenAIServer(reply="Hi.") as oa:
        llms = [OpenAiLlm(api_key=f"sk-tenant-{i}-123456", base_url=oa.base_url) for i in range(3)]
        first = cache.get("a", lambda: llms[0])
        assert cache.get("a", lambda: llms[1]) is first
        cache.get("b", lambda: llms[1])
        cache.get("c", lambda: llms[2])  # "a" is dropped, the least recently used
        assert cache.get("a", lambda: llms[2]) is llms[2]
        # a call still holding the dropped engine's client keeps working
        text = "".join([d.text async for d in first.stream([ChatMessage("user", "x")]) if d.text])
        assert text == "Hi."
