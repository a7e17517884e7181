"""The whole offline loop over real sockets: a caller speaks, the worker answers, barge-in.

The worker runs in-process with the embedded /v1 API; the caller is a WebSocket client
streaming espeak-ng speech in real-time 20 ms frames. Recognition (pocketsphinx),
reply (playbook) and synthesis (espeak-ng from the wheel) are the real offline engines.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipelines.agent_config import default_agent
from runtime.server import Worker
from runtime.settings import WorkerSettings
from tests.support.speech import speech
from tests.support.stream_client import StreamCaller

pytestmark = pytest.mark.e2e


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    settings = WorkerSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "data")
    w = Worker(settings, embedded_api=True)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


async def api_get(worker: Worker, path: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{worker.url}{path}", headers={"Authorization": f"Bearer {worker.api_key}"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def default_agent_id(worker: Worker) -> str:
    agents = (await api_get(worker, "/v1/agents"))["agents"]
    assert agents, "the embedded API creates a default agent on first start"
    return str(agents[0]["id"])


async def test_spoken_question_gets_a_spoken_answer_and_barge_in_stops_it(worker: Worker) -> None:
    agent_id = await default_agent_id(worker)
    reply_text = default_agent().playbook.intents[0].reply
    question = speech("what are your opening hours tomorrow")
    barge_in = speech("wait, what about on sunday")

    async with StreamCaller(
        f"{worker.url.replace('http', 'ws')}/v1/stream", worker.api_key, agent_id
    ) as caller:
        call_id = caller.call_id
        # the greeting plays first and finishes
        await caller.wait_event("agent.speech_started", 15, turn_id=1)
        await caller.wait_event("agent.speech_stopped", 20, turn_id=1)

        caller.say(question)
        started = await caller.wait_event("agent.speech_started", 30, turn_id=2)
        users = [s for s in caller.transcripts() if s["role"] == "user"]
        assert users, "the user's words are committed when the agent answers"
        heard_words = set(users[0]["text"].split())
        assert heard_words & {"open", "opening", "hours", "tomorrow"}, users[0]["text"]

        # let the reply play for a second, then talk over it
        await asyncio.sleep(1.0)
        audio_before = sum(1 for r in caller.log if r.kind == "audio" and r.at > started.at)
        assert audio_before >= 30, "reply audio streams at 20 ms a frame"
        caller.say(barge_in)
        clear = await caller.wait_for(lambda r: r.kind == "clear", 10)
        paused_or_interrupted = {e["type"] for e in caller.events()} & {
            "agent.paused",
            "agent.interrupted",
        }
        assert paused_or_interrupted
        await caller.wait_event("agent.interrupted", 10, turn_id=2)

        # after the clear no audio of the interrupted reply arrives
        await asyncio.sleep(1.0)
        next_turn = [
            r
            for r in caller.log
            if r.kind == "event"
            and r.data["event"]["type"] == "agent.speech_started"
            and r.data["event"]["data"]["turn_id"] > 2
        ]
        cutoff = next_turn[0].at if next_turn else time.monotonic()
        late_audio = [
            r for r in caller.log if r.kind == "audio" and clear.at + 0.05 < r.at < cutoff
        ]
        assert late_audio == []

        interrupted = [
            s for s in caller.transcripts() if s["role"] == "agent" and s["turn_id"] == 2
        ]
        assert interrupted and interrupted[0]["interrupted"] is True
        heard = interrupted[0]["text"]
        assert heard and reply_text.startswith(heard) and heard != reply_text

        await caller.hang_up()
        await asyncio.wait_for(caller.ended.wait(), 10)

    # everything reached the API (through the outbox), once and in order
    deadline = time.monotonic() + 15
    while True:
        call = await api_get(worker, f"/v1/calls/{call_id}")
        if call["status"] == "completed" or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert call["status"] == "completed"
    events = (await api_get(worker, f"/v1/calls/{call_id}/events?limit=200"))["events"]
    types = [e["type"] for e in events]
    for expected in (
        "call.status",
        "user.speech_started",
        "agent.speech_started",
        "agent.interrupted",
        "turn.metrics",
    ):
        assert expected in types, types
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    statuses = [e["data"]["status"] for e in events if e["type"] == "call.status"]
    assert statuses[0] == "ringing" and "in_progress" in statuses and statuses[-1] == "completed"

    segments = (await api_get(worker, f"/v1/calls/{call_id}/transcript?limit=200"))["segments"]
    roles = [(s["role"], s["turn_id"]) for s in segments]
    assert roles[:3] == [("agent", 1), ("user", 2), ("agent", 2)]
    assert segments[2]["interrupted"] is True and segments[2]["text"] == heard
    metrics = [
        e["data"] for e in events if e["type"] == "turn.metrics" and e["data"]["turn_id"] == 2
    ]
    assert metrics and metrics[0]["durations_ms"]["voice_to_voice"] is not None
