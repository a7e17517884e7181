"""The call contract end to end on a real worker (embedded /v1 API, offline engines, real
sockets): stereo recording of what was played, post-call summary and reprocess, ending a
call from the API, live calls and capacity, and the DNC check of outbound calls."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from runtime.server import Worker
from tests.carriers.harness import make_caller, worker_settings
from tests.support.speech import speech
from tests.support.stream_client import StreamCaller

pytestmark = pytest.mark.e2e


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    w = Worker(worker_settings(tmp_path / "data"), embedded_api=True)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


async def api(worker: Worker, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{worker.url}{path}", json=body,
                        headers={"Authorization": f"Bearer {worker.api_key}"}) as resp,
    ):
        if resp.content_type == "audio/wav":
            return resp.status, await resp.read()
        return resp.status, await resp.json(content_type=None)


async def default_agent_id(worker: Worker) -> str:
    _status, body = await api(worker, "GET", "/v1/agents")
    return str(body["agents"][0]["id"])


async def eventually(fetch: Any, ok: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


def caller_for(worker: Worker, agent_id: str) -> StreamCaller:
    return StreamCaller(f"{worker.url.replace('http', 'ws')}/v1/stream", worker.api_key,
                        agent_id)


def voiced(samples: np.ndarray, rate: int) -> np.ndarray:
    """Per 20 ms block: does it hold sound?"""
    block = rate // 50
    count = len(samples) // block
    blocks = samples[: count * block].reshape(count, block).astype(np.float64)
    return np.sqrt((blocks**2).mean(axis=1)) > 300


async def test_a_call_is_recorded_and_summarised(worker: Worker) -> None:
    agent_id = await default_agent_id(worker)
    async with caller_for(worker, agent_id) as caller:
        call_id = caller.call_id
        await caller.wait_event("agent.speech_stopped", 20, turn_id=1)
        caller.say(speech("what are your opening hours tomorrow"))
        await caller.wait_event("agent.speech_stopped", 40, turn_id=2)
        await caller.hang_up()
        await asyncio.wait_for(caller.ended.wait(), 10)

    async def summary() -> tuple[int, Any]:
        return await api(worker, "GET", f"/v1/calls/{call_id}/summary")

    status, body = await eventually(summary, lambda r: r[0] == 200)
    assert status == 200, body
    assert body["source"] == "worker" and body["provider"] == "playbook"
    assert set(body["extracted"]) == {"intent", "callback_number"}
    assert body["extracted"]["intent"] == "hours"
    assert body["outcome"] == "resolved" and body["sentiment"] in ("neutral", "positive")

    async def recording() -> tuple[int, Any]:
        return await api(worker, "GET", f"/v1/calls/{call_id}/recording")

    status, wav_bytes = await eventually(recording, lambda r: r[0] == 200)
    assert status == 200
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (2, 2, 16000)
        stereo = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    left, right = voiced(stereo[0::2], 16000), voiced(stereo[1::2], 16000)
    _s, events = await api(worker, "GET", f"/v1/calls/{call_id}/events?limit=200")
    played = sum(e["data"]["played_s"] for e in events["events"]
                 if e["type"] == "agent.speech_stopped")
    # the agent side holds what was played (espeak's pauses are silent), the caller side
    # the question, and they do not overlap: the agent answered after the caller spoke
    assert 0.5 * played <= right.sum() * 0.02 <= played + 0.1
    assert left.sum() * 0.02 > 1.0
    user_blocks = np.flatnonzero(left)
    answer = np.flatnonzero(right[user_blocks[0]:]) + user_blocks[0]
    assert answer[0] > user_blocks[-1] - 5  # the reply starts once the question ended

    # the outbox deleted its copy once the API had it
    pending = list((worker.settings.data_dir / "recordings").glob("*"))
    assert pending == []

    status, again = await api(worker, "POST", f"/v1/calls/{call_id}/reprocess")
    assert status == 200 and again["source"] == "reprocess"
    assert {k: again[k] for k in ("summary", "outcome", "extracted")} == {
        k: body[k] for k in ("summary", "outcome", "extracted")}


async def test_recording_off_per_agent_and_reprocess_needs_an_ended_call(worker: Worker) -> None:
    status, agent = await api(worker, "POST", "/v1/agents", {
        "name": "No tape", "recording_enabled": False, "first_message": "Hi.",
        "silence_timeout_s": 60})
    assert status == 201
    async with caller_for(worker, agent["id"]) as caller:
        call_id = caller.call_id
        await caller.wait_event("agent.speech_stopped", 20, turn_id=1)
        status, body = await api(worker, "POST", f"/v1/calls/{call_id}/reprocess")
        assert status in (404, 409)  # the call may not have reached the API yet
        await caller.hang_up()
        await asyncio.wait_for(caller.ended.wait(), 10)

    async def summary() -> tuple[int, Any]:
        return await api(worker, "GET", f"/v1/calls/{call_id}/summary")

    status, body = await eventually(summary, lambda r: r[0] == 200)
    assert status == 200 and body["outcome"] == "no_conversation"
    status, body = await api(worker, "GET", f"/v1/calls/{call_id}/recording")
    assert status == 404 and body["code"] == "recording_not_found"
    assert list((worker.settings.data_dir / "recordings").glob("*")) == []


async def test_the_api_ends_a_live_call_and_lists_live_calls(worker: Worker) -> None:
    agent_id = await default_agent_id(worker)
    async with caller_for(worker, agent_id) as caller:
        call_id = caller.call_id
        await caller.wait_event("agent.speech_started", 20, turn_id=1)
        status, active = await api(worker, "GET", "/v1/calls/active")
        assert status == 200 and active["total"] == 1
        live = active["calls"][0]
        assert live["id"] == call_id and live["worker_id"] == worker.settings.worker_id
        status, stats = await api(worker, "GET", "/v1/calls/queue/stats")
        assert status == 200
        assert stats["totals"] == {"workers": 1, "max_calls": 50, "active_calls": 1,
                                   "available": 49, "load": 0.02}
        asked = time.monotonic()
        status, body = await api(worker, "POST", f"/v1/calls/{call_id}/end",
                                 {"reason": "supervisor"})
        assert status == 202 and body["status"] == "ending"
        await asyncio.wait_for(caller.ended.wait(), 10)
        print(f"call ended {time.monotonic() - asked:.3f}s after POST /end")

    async def call() -> tuple[int, Any]:
        return await api(worker, "GET", f"/v1/calls/{call_id}")

    _s, record = await eventually(call, lambda r: r[1]["status"] == "completed")
    assert record["status"] == "completed" and record["end_reason"] == "supervisor"
    status, body = await api(worker, "POST", f"/v1/calls/{call_id}/end")
    assert status == 409 and body["code"] == "call_ended"
    status, body = await api(worker, "POST", "/v1/calls/call_0123456789abcdef/end")
    assert status == 404
    _s, active = await api(worker, "GET", "/v1/calls/active")
    assert active["total"] == 0


async def test_dnc_registry_and_outbound_check(worker: Worker) -> None:
    status, entry = await api(worker, "POST", "/v1/dnc",
                              {"number": "+1 (555) 019-9", "reason": "asked twice"})
    assert status == 201 and entry["number"] == "+15550199"
    status, _ = await api(worker, "POST", "/v1/dnc", {"number": "+15550199"})
    assert status == 200
    status, body = await api(worker, "POST", "/v1/dnc/batch",
                             {"numbers": ["+15550001", {"number": "+15550002"}, "+15550199"]})
    assert status == 201 and body == {"received": 3, "added": 2, "existing": 1}
    status, body = await api(worker, "POST", "/v1/dnc/batch", {"numbers": ["x"]})
    assert status == 400 and body["detail"][0]["field"].startswith("numbers[0]")
    status, listing = await api(worker, "GET", "/v1/dnc?limit=2")
    assert listing["total"] == 3 and len(listing["numbers"]) == 2
    status, check = await api(worker, "POST", "/v1/dnc/check", {"number": "+1-555-0001"})
    assert check == {"number": "+15550001", "listed": True, "reason": None,
                     "listed_at": check["listed_at"]}
    status, body = await api(worker, "DELETE", "/v1/dnc/%2B15550001")
    assert status == 200 and body == {"number": "+15550001", "deleted": True}
    status, check = await api(worker, "POST", "/v1/dnc/check", {"number": "+15550001"})
    assert check["listed"] is False

    agent_id = await default_agent_id(worker)

    async def outbound(to: str) -> str:
        status, call = await api(worker, "POST", "/v1/calls", {
            "agent_id": agent_id, "direction": "outbound", "transport": "twilio", "to": to})
        assert status == 201
        return str(call["id"])

    listed = await outbound("+15550199")
    async with make_caller("twilio", worker, agent_id, call_id=listed, connect=False,
                           callee="+15550199") as caller:
        await caller.dial()
        await asyncio.wait_for(caller.closed.wait(), 20)
        assert not caller.played.strip(b"\xff"), "no media for a listed number"

    async def call(call_id: str) -> Any:
        return (await api(worker, "GET", f"/v1/calls/{call_id}"))[1]

    record = await eventually(lambda: call(listed), lambda c: c["status"] == "failed")
    assert record["status"] == "failed" and record["end_reason"].startswith("dnc_listed")
    assert "+15550199" in record["end_reason"]

    allowed = await outbound("+15550123")
    async with make_caller("twilio", worker, agent_id, call_id=allowed,
                           callee="+15550123") as caller:
        record = await eventually(lambda: call(allowed), lambda c: c["status"] == "in_progress")
        assert record["status"] == "in_progress"
