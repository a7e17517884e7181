"""The cloud engines as the runtime gets them: by name from the registry, with the
worker's credentials, and the endpoint policy that keeps those keys at home."""

from __future__ import annotations

import subprocess
import sys

import pytest

from providers import registry
from providers.base import PCM16_16K, ChatMessage, ConfigError
from tests.fakes.deepgram_server import FakeDeepgramServer
from tests.fakes.elevenlabs_server import FakeElevenLabsServer
from tests.fakes.openai_server import FakeOpenAIServer
from tests.providers.conftest import SECRET, frames, speech


def test_importing_the_registry_loads_no_vendor_sdk() -> None:
    code = (
        "import sys, providers.registry as r; "
        "assert 'deepgram' in r.names('stt') and 'elevenlabs' in r.names('tts'); "
        "sdks = ('openai', 'deepgram', 'elevenlabs'); "
        "bad = [m for m in sys.modules if m.split('.')[0] in sdks]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_catalogue_lists_cloud_models_voices_and_languages() -> None:
    described = registry.describe()
    llm = {item["name"]: item for item in described["llm"]}
    assert "gpt-4o-mini" in llm["openai"]["models"]
    assert llm["openai"]["credentials"] == ["OPENAI_API_KEY"]
    tts = {item["name"]: item for item in described["tts"]}
    assert "21m00Tcm4TlvDq8ikWAM" in tts["elevenlabs"]["voices"]
    assert "mulaw@8000" in tts["elevenlabs"]["formats"]
    assert "nova" in tts["openai"]["voices"] and "aura-2-thalia-en" in tts["deepgram"]["voices"]
    langs = registry.languages()
    assert "deepgram" in langs["fr"]["stt"] and "elevenlabs" in langs["fr"]["tts"]


def test_missing_key_and_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="DEEPGRAM_API_KEY"):
        registry.create_stt("deepgram", language="en", credentials={})
    with pytest.raises(ConfigError, match="endpointing_ms"):
        registry.create_stt(
            "deepgram", options={"endpointing_ms": "soon"}, credentials={"DEEPGRAM_API_KEY": "k"}
        )
    with pytest.raises(ConfigError, match="colour"):
        registry.create_tts(
            "elevenlabs", options={"colour": 1}, credentials={"ELEVENLABS_API_KEY": "k"}
        )
    with pytest.raises(ConfigError, match="only for a custom base_url"):
        registry.create_llm("openai", options={"api_key": "x"}, credentials={"OPENAI_API_KEY": "k"})


async def test_worker_credentials_and_operator_base_url() -> None:
    async with FakeDeepgramServer(utterances=["hi there"], api_key=SECRET) as srv:
        stt = registry.create_stt(
            "deepgram",
            model="nova-3",
            language="en",
            credentials={"DEEPGRAM_API_KEY": SECRET, "DEEPGRAM_BASE_URL": srv.base_url},
        )
        stream = await stt.open(PCM16_16K, language="en")
        for frame in frames(speech(400, PCM16_16K), PCM16_16K):
            await stream.push(frame)
        await stream.finalize()
        async for event in stream.events():
            if event.kind == "final":
                assert event.text == "hi there"
                break
        await stream.aclose()
    assert srv.requests[0].headers["authorization"] == f"Token {SECRET}"


async def test_agent_chosen_base_url_never_receives_the_worker_key() -> None:
    """An agent pointing ``base_url`` at its own server (Ollama, or a key collector)."""
    async with FakeOpenAIServer(reply="Local.") as srv:
        llm = registry.create_llm(
            "openai",
            model="llama3.2",
            options={"base_url": srv.openai_base_url},
            credentials={"OPENAI_API_KEY": SECRET},
        )
        text = "".join([d.text async for d in llm.stream([ChatMessage("user", "hi")])])
        assert text == "Local."
        # the agent may bring a key for its own endpoint
        llm2 = registry.create_llm(
            "openai",
            options={"base_url": srv.openai_base_url, "api_key": "agent-own-key"},
            credentials={"OPENAI_API_KEY": SECRET},
        )
        _ = [d async for d in llm2.stream([ChatMessage("user", "hi")])]
    assert [r.headers["authorization"] for r in srv.requests] == [
        "Bearer no-key",
        "Bearer agent-own-key",
    ]


async def test_tts_engines_by_name() -> None:
    async with FakeElevenLabsServer() as el, FakeOpenAIServer() as oa:
        creds = {
            "ELEVENLABS_API_KEY": "el-key-123456",
            "ELEVENLABS_BASE_URL": el.base_url,
            "OPENAI_API_KEY": "sk-key-123456",
            "OPENAI_BASE_URL": oa.openai_base_url,
        }
        eleven = registry.create_tts("elevenlabs", voice="JBFqnCBsd6RMkjVDRZzb", credentials=creds)
        stream = await eleven.open(PCM16_16K, voice=None, language="en")
        assert len(b"".join([c async for c in stream.synthesize("Hi.")])) > 0
        await stream.aclose()
        openai_tts = registry.create_tts("openai", voice="coral", credentials=creds)
        stream2 = await openai_tts.open(PCM16_16K, voice=None, language="en")
        assert len(b"".join([c async for c in stream2.synthesize("Hi.")])) > 0
    assert el.requests[0].path.endswith("/JBFqnCBsd6RMkjVDRZzb/stream-input")
    assert oa.requests[-1].body["voice"] == "coral"
