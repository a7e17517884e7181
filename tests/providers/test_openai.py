"""OpenAI-compatible chat completions and speech through the real ``openai`` SDK,
against the local protocol fake."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.base import ChatMessage, LlmDelta, ProviderError, ToolCall, ToolSpec
from providers.cloud.openai_llm import OpenAiLlm
from providers.cloud.openai_tts import OpenAiTts
from tests.fakes._base import Faults
from tests.fakes.openai_server import FakeOpenAIServer, Reply
from tests.providers.conftest import SECRET, assert_no_secret, exception_text

KEY = "sk-test-0123456789abcdef"
HISTORY = [ChatMessage("system", "Be brief."), ChatMessage("user", "When do you open?")]
WEATHER = ToolSpec(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def llm(srv: FakeOpenAIServer, **kw: Any) -> OpenAiLlm:
    return OpenAiLlm(api_key=kw.pop("api_key", KEY), base_url=srv.openai_base_url, **kw)


async def run(
    provider: OpenAiLlm, messages: list[ChatMessage] = HISTORY, **kw: Any
) -> list[LlmDelta]:
    return [d async for d in provider.stream(messages, **kw)]


async def test_streamed_text_usage_and_ttft() -> None:
    async with FakeOpenAIServer(reply="We open at nine tomorrow.", api_key=KEY) as srv:
        provider = llm(srv, model="gpt-4o-mini", temperature=0.3)
        await provider.warm()
        deltas = await run(provider)
    text = [d.text for d in deltas if d.text]
    assert text == ["We", " open", " at", " nine", " tomorrow."]  # streamed, not one blob
    last = deltas[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None
    assert last.usage["prompt_tokens"] == 12 and last.usage["completion_tokens"] == 5
    assert last.usage["total_tokens"] == 17 and last.usage["ttft_ms"] >= 0
    assert provider.last_ttft_s is not None
    chat = next(r for r in srv.requests if r.path.endswith("/chat/completions"))
    assert chat.headers["authorization"] == f"Bearer {KEY}"
    assert chat.body["stream"] is True
    assert chat.body["stream_options"] == {"include_usage": True}
    assert chat.body["model"] == "gpt-4o-mini" and chat.body["temperature"] == 0.3
    assert chat.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "When do you open?"},
    ]
    assert any(r.path == "/v1/models" for r in srv.requests)  # warm() opened the connection


async def test_calls_reuse_the_warm_connection() -> None:
    """warm() at call start opens the connection; the turn and the next call reuse it."""
    async with FakeOpenAIServer(reply="Hi.") as srv:
        first_call = llm(srv)
        await first_call.warm()
        await run(first_call)
        second_call = llm(srv)  # another call on this worker, same endpoint and key
        await run(second_call)
    peers = {r.peer for r in srv.requests}
    assert len(srv.requests) == 3 and len(peers) == 1


async def test_tool_calls_assembled_from_partial_json() -> None:
    args = json.dumps({"city": "Paris", "unit": "celsius", "detail": "x" * 40})
    reply = Reply(text="Let me check.", tool_calls=[("get_weather", args), ("end_call", "{}")])
    async with FakeOpenAIServer(reply=reply) as srv:
        deltas = await run(llm(srv), tools=[WEATHER])
    calls = [d.tool_call for d in deltas if d.tool_call]
    assert [c.name for c in calls if c] == ["get_weather", "end_call"]
    assert calls[0] is not None and json.loads(calls[0].arguments) == json.loads(args)
    assert calls[0].id.startswith("call_")
    assert deltas[-1].finish_reason == "tool_calls"
    sent_tools = srv.requests[0].body["tools"]
    assert sent_tools[0]["type"] == "function"
    assert sent_tools[0]["function"]["name"] == "get_weather"
    assert sent_tools[0]["function"]["parameters"]["required"] == ["city"]


async def test_tool_results_are_sent_back_in_openai_shape() -> None:
    history = [
        *HISTORY,
        ChatMessage(
            "assistant", "", tool_calls=(ToolCall("call_1", "get_weather", '{"city":"Oslo"}'),)
        ),
        ChatMessage("tool", '{"temp": 3}', tool_call_id="call_1"),
    ]
    async with FakeOpenAIServer(reply="It is three degrees.") as srv:
        await run(llm(srv), history)
    sent = srv.requests[0].body["messages"]
    assert sent[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            }
        ],
    }
    assert sent[3] == {"role": "tool", "content": '{"temp": 3}', "tool_call_id": "call_1"}


async def test_usage_can_be_turned_off_for_servers_without_stream_options() -> None:
    async with FakeOpenAIServer(reply="Fine.") as srv:
        deltas = await run(llm(srv, stream_usage=False))
    assert "stream_options" not in srv.requests[0].body
    usage = deltas[-1].usage
    assert usage is not None and set(usage) == {"ttft_ms"}  # no token counts without it


async def test_local_server_without_key() -> None:
    """Ollama/vLLM style: no key configured, a placeholder is sent, never an env key."""
    async with FakeOpenAIServer(reply="Local model here.") as srv:
        deltas = await run(OpenAiLlm(api_key=None, base_url=srv.openai_base_url, model="llama3.2"))
    assert "".join(d.text for d in deltas) == "Local model here."
    assert srv.requests[0].headers["authorization"] == "Bearer no-key"
    assert srv.requests[0].body["model"] == "llama3.2"


async def test_mid_stream_disconnect() -> None:
    async with FakeOpenAIServer(reply="one two three four five", drop_after_tokens=2) as srv:
        got: list[str] = []
        with pytest.raises(ProviderError) as err:
            async for d in llm(srv).stream(HISTORY):
                got.append(d.text)
    assert got == ["one", " two"]
    assert err.value.status == 502 and err.value.retryable


async def test_5xx() -> None:
    async with FakeOpenAIServer(faults=Faults(fail_status=503)) as srv:
        with pytest.raises(ProviderError) as err:
            await run(llm(srv))
    assert err.value.status == 502 and err.value.retryable


async def test_429_with_retry_after() -> None:
    async with FakeOpenAIServer(faults=Faults(fail_status=429, retry_after="12")) as srv:
        with pytest.raises(ProviderError) as err:
            await run(llm(srv))
    assert err.value.status == 429 and err.value.retry_after == 12.0


async def test_insufficient_quota_is_402() -> None:
    faults = Faults(fail_status=429, error_code="insufficient_quota")
    async with FakeOpenAIServer(faults=faults) as srv:
        with pytest.raises(ProviderError) as err:
            await run(llm(srv))
    assert err.value.status == 402 and not err.value.retryable


async def test_slow_first_token_is_measured() -> None:
    async with FakeOpenAIServer(reply="Sorry for the wait.", delay=0.4) as srv:
        provider = llm(srv)
        deltas = await run(provider)
    assert "".join(d.text for d in deltas) == "Sorry for the wait."
    assert provider.last_ttft_s is not None and provider.last_ttft_s >= 0.4
    assert deltas[-1].usage is not None and deltas[-1].usage["ttft_ms"] >= 400


async def test_key_never_in_logs_or_exceptions(debug_logs: pytest.LogCaptureFixture) -> None:
    texts = []
    async with FakeOpenAIServer(api_key="the-right-key") as srv:
        with pytest.raises(ProviderError) as err:
            await run(llm(srv, api_key=SECRET))
        texts.append(exception_text(err.value))
        srv.api_key = None
        srv.drop_after_tokens = 1
        with pytest.raises(ProviderError) as err2:
            await run(llm(srv, api_key=SECRET))
        texts.append(exception_text(err2.value))
    assert srv.requests[-1].headers["authorization"] == f"Bearer {SECRET}"
    assert_no_secret(debug_logs, *texts)


# --------------------------------------------------------------------------- OpenAI TTS


async def test_openai_tts_streams_pcm_24k() -> None:
    async with FakeOpenAIServer(api_key=KEY, char_ms=10) as srv:
        tts = OpenAiTts(api_key=KEY, base_url=srv.openai_base_url, model="tts-1")
        stream = await tts.open(tts.output_formats()[0], voice="nova", language="en")
        audio = b"".join([c async for c in stream.synthesize("Hello there.")])
        await stream.aclose()
    assert stream.output_format.sample_rate == 24000 and stream.output_format.encoding == "pcm16"
    assert len(audio) == 24000 * 10 * len("Hello there.") // 1000 * 2
    body = srv.requests[-1].body
    assert body == {
        "model": "tts-1",
        "voice": "nova",
        "input": "Hello there.",
        "response_format": "pcm",
    }


async def test_openai_tts_chunks_are_sample_aligned() -> None:
    async with FakeOpenAIServer() as srv:
        tts = OpenAiTts(api_key=KEY, base_url=srv.openai_base_url)
        stream = await tts.open(tts.output_formats()[0], voice=None, language="en")
        chunks = [c async for c in stream.synthesize("Some longer sentence for several chunks.")]
    assert len(chunks) > 1 and all(len(c) % 2 == 0 for c in chunks)


async def test_openai_tts_errors_and_drop() -> None:
    async with FakeOpenAIServer(faults=Faults(fail_status=429, retry_after="3")) as srv:
        tts = OpenAiTts(api_key=KEY, base_url=srv.openai_base_url)
        stream = await tts.open(tts.output_formats()[0], voice=None, language="en")
        with pytest.raises(ProviderError) as err:
            [c async for c in stream.synthesize("Hi.")]
        assert err.value.status == 429 and err.value.retry_after == 3.0
        srv.faults.fail_status = 500
        with pytest.raises(ProviderError) as err:
            [c async for c in stream.synthesize("Hi.")]
        assert err.value.status == 502
        srv.faults.fail_status = None
        srv.speech_drop_after_bytes = 5000
        with pytest.raises(ProviderError) as err:
            [c async for c in stream.synthesize("A sentence long enough to be cut.")]
        assert err.value.status == 502
