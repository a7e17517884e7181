"""μ-law end to end: when the engines speak the carrier's format, nothing is transcoded.

A Twilio call (μ-law 8 kHz) to an agent whose STT is Deepgram and TTS is ElevenLabs,
both served by local fakes of their exact wire protocols (tests/fakes): the STT stream is
opened as ``mulaw``/8000 and receives the caller's bytes unchanged; the TTS stream is
asked for ``ulaw_8000`` and its bytes go to the carrier unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pipelines.agent_config import default_agent
from runtime.server import Worker
from tests.carriers.harness import (
    api_post,
    find_call,
    make_caller,
    speech_for,
    transcript,
    wait_event,
    worker_settings,
)
from tests.fakes.deepgram_server import FakeDeepgramServer
from tests.fakes.elevenlabs_server import FakeElevenLabsServer

pytestmark = pytest.mark.e2e

QUESTION = "what time does the store open tomorrow"


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeDeepgramServer, FakeElevenLabsServer]]:
    async with FakeDeepgramServer(utterances=[QUESTION], api_key="dg-key") as deepgram, \
            FakeElevenLabsServer(api_key="el-key") as elevenlabs:
        yield deepgram, elevenlabs


@pytest.fixture
async def cloud_worker(
    tmp_path: Path, fakes: tuple[FakeDeepgramServer, FakeElevenLabsServer]
) -> AsyncIterator[Worker]:
    deepgram, elevenlabs = fakes
    settings = worker_settings(
        tmp_path / "data",
        deepgram_api_key="dg-key", deepgram_base_url=deepgram.base_url,
        elevenlabs_api_key="el-key", elevenlabs_base_url=elevenlabs.base_url,
    )
    w = Worker(settings, embedded_api=True)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


async def test_mulaw_flows_untouched_between_twilio_and_the_engines(
    cloud_worker: Worker, fakes: tuple[FakeDeepgramServer, FakeElevenLabsServer]
) -> None:
    deepgram, elevenlabs = fakes
    base = default_agent().model_dump()
    base.update({"name": "Cloud agent", "stt": {"provider": "deepgram", "model": "nova-3"},
                 "tts": {"provider": "elevenlabs"}, "llm": {"provider": "playbook"}})
    agent_id = (await api_post(cloud_worker, "/v1/agents", base))["id"]

    async with make_caller("twilio", cloud_worker, agent_id) as caller:
        call_id = (await find_call(cloud_worker, caller.carrier_call_id))["id"]
        await wait_event(cloud_worker, call_id, "agent.speech_stopped", 30, turn_id=1)
        spoken = speech_for(caller, QUESTION)
        caller.say(spoken)
        await wait_event(cloud_worker, call_id, "agent.speech_started", 30, turn_id=2)
        await asyncio.sleep(0.5)
        await caller.hang_up()

    listen = [r for r in deepgram.requests if r.path == "/v1/listen"]
    assert listen and listen[0].query["encoding"] == "mulaw"
    assert listen[0].query["sample_rate"] == "8000"
    # the caller's μ-law bytes reached Deepgram byte for byte (no decode/re-encode)
    middle = spoken[len(spoken) // 3: len(spoken) // 3 + 1600]
    assert middle in bytes(listen[0].audio)
    speak = [r for r in elevenlabs.requests if r.path.endswith("/stream-input")]
    assert speak and {r.query["output_format"] for r in speak} == {"ulaw_8000"}
    assert caller.heard_energy() > 100
    users = [s for s in await transcript(cloud_worker, call_id) if s["role"] == "user"]
    assert users and users[0]["text"].lower().startswith("what time")
