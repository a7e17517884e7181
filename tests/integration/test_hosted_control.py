"""Hosted mode: the API in its own process, the worker reporting to it. The API reaches
the worker that holds a call through the worker's long-poll (runtime/control.py)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtime.server import Worker
from runtime.settings import WorkerSettings
from tests.support.processes import Process, api_process, pin_port
from tests.support.stream_client import StreamCaller

pytestmark = pytest.mark.e2e
KEY = f"rymi_{secrets.token_hex(24)}"


@pytest.fixture
def api_proc(tmp_path: Path) -> Iterator[Process]:
    proc = api_process(tmp_path / "api", KEY)
    (tmp_path / "api").mkdir()
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def worker(tmp_path: Path, api_proc: Process) -> AsyncIterator[Worker]:
    settings = WorkerSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "worker",
                              api_url=api_proc.url, api_key=KEY, worker_id="voice-7",
                              offline_stt_decoders=1)
    w = Worker(settings, embedded_api=False)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


async def api(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{url}{path}", json=body,
                        headers={"Authorization": f"Bearer {KEY}"}) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def eventually(fetch: Any, ok: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await fetch()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_end_reaches_the_worker_through_its_long_poll(
    api_proc: Process, worker: Worker
) -> None:
    _s, agents = await api(api_proc.url, "GET", "/v1/agents")
    agent_id = agents["agents"][0]["id"]

    async def stats() -> Any:
        return (await api(api_proc.url, "GET", "/v1/calls/queue/stats"))[1]

    body = await eventually(stats, lambda b: b["totals"]["workers"] == 1)
    assert body["workers"][0]["worker_id"] == "voice-7"
    assert body["workers"][0]["embedded"] is False
    assert body["totals"]["max_calls"] == worker.settings.max_calls

    async with StreamCaller(f"{worker.url.replace('http', 'ws')}/v1/stream", KEY,
                            agent_id) as caller:
        call_id = caller.call_id
        await caller.wait_event("agent.speech_started", 20, turn_id=1)

        async def active() -> Any:
            return (await api(api_proc.url, "GET", "/v1/calls/active"))[1]

        listing = await eventually(active, lambda b: b["total"] == 1)
        assert listing["calls"][0]["id"] == call_id
        assert listing["calls"][0]["worker_id"] == "voice-7"

        asked = time.monotonic()
        status, body = await api(api_proc.url, "POST", f"/v1/calls/{call_id}/end")
        assert status == 202 and body["worker_id"] == "voice-7" and body["command_id"]
        await asyncio.wait_for(caller.ended.wait(), 10)
        print(f"hosted: call ended {time.monotonic() - asked:.3f}s after POST /end")

    async def call() -> Any:
        return (await api(api_proc.url, "GET", f"/v1/calls/{call_id}"))[1]

    record = await eventually(call, lambda c: c["status"] == "completed")
    assert record["status"] == "completed" and record["end_reason"] == "ended_by_api"
    assert record["worker_id"] == "voice-7"
    assert worker.manager is not None and worker.manager.control.executed == 1


async def test_an_unknown_worker_cannot_be_reached(api_proc: Process) -> None:
    _s, agents = await api(api_proc.url, "GET", "/v1/agents")
    status, call = await api(api_proc.url, "POST", "/v1/calls",
                             {"agent_id": agents["agents"][0]["id"], "worker_id": "gone"})
    assert status == 201
    status, body = await api(api_proc.url, "POST", f"/v1/calls/{call['id']}/end")
    assert status == 409 and body["code"] == "call_not_live"


async def test_a_call_during_an_outage_without_a_cached_agent_fails_with_a_reason(
    api_proc: Process, worker: Worker
) -> None:
    _s, agents = await api(api_proc.url, "GET", "/v1/agents")
    agent_id = agents["agents"][0]["id"]
    pin_port(api_proc)
    api_proc.stop()
    with pytest.raises(RuntimeError, match="agent_unavailable"):
        async with StreamCaller(f"{worker.url.replace('http', 'ws')}/v1/stream", KEY,
                                agent_id):
            pass
    api_proc.start()  # same port: the worker's outbox delivers the call and its failure

    async def failed() -> Any:
        return (await api(api_proc.url, "GET", "/v1/calls?status=failed"))[1]

    listing = await eventually(failed, lambda b: b["total"] == 1, timeout=30)
    call = listing["calls"][0]
    assert call["agent_id"] == agent_id and call["worker_id"] == "voice-7"
    assert call["end_reason"].startswith("agent_unavailable: ")
    assert "no cached config" in call["end_reason"]
    _s, events = await api(api_proc.url, "GET", f"/v1/calls/{call['id']}/events")
    assert [e["data"]["status"] for e in events["events"]] == ["ringing", "failed"]
