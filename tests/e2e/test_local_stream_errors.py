"""Bad agents and bad input on the local stream: clear errors, reported reasons, no damage."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtime.server import Worker
from runtime.settings import WorkerSettings

pytestmark = pytest.mark.e2e


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    settings = WorkerSettings(
        host="127.0.0.1", port=0, data_dir=tmp_path / "data", offline_stt_decoders=0
    )
    w = Worker(settings, embedded_api=True)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


def auth(worker: Worker) -> dict[str, str]:
    return {"Authorization": f"Bearer {worker.api_key}"}


async def api(worker: Worker, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"{worker.url}{path}", json=body, headers=auth(worker)) as r,
    ):
        return r.status, await r.json()


async def create_agent(worker: Worker, **config: Any) -> str:
    status, body = await api(worker, "POST", "/v1/agents", {"name": "t", **config})
    assert status == 201, body
    return str(body["id"])


async def open_call(worker: Worker, agent_id: str) -> tuple[list[dict[str, Any]], Any]:
    """Start a call and read messages until the worker ends it (or 5 s pass)."""
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"{worker.url}/v1/stream", headers=auth(worker))
    await ws.send_str(json.dumps({"type": "start", "agent_id": agent_id}))
    messages: list[dict[str, Any]] = []
    try:
        while True:
            msg = await ws.receive(timeout=10)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            messages.append(json.loads(msg.data))
            if messages[-1]["type"] == "ended":
                break
    finally:
        await ws.close()
        await session.close()
    return messages, None


async def failed_call(worker: Worker, agent_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, body = await api(worker, "GET", f"/v1/agents/{agent_id}/calls")
        calls = body["calls"]
        if calls and calls[0]["status"] == "failed":
            return dict(calls[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no failed call for {agent_id}")


async def test_invalid_agent_config_is_rejected_with_the_field_named(worker: Worker) -> None:
    status, body = await api(
        worker, "POST", "/v1/agents", {"interruption": {"min_duration_ms": 99999}}
    )
    assert status == 400
    assert "interruption.min_duration_ms" in body["error"]


async def test_a_call_for_a_stored_invalid_config_fails_with_a_reason(worker: Worker) -> None:
    agent_id = await create_agent(worker)
    # the hosted API could serve a config this worker version cannot run
    with sqlite3.connect(worker.settings.data_dir / "api.sqlite3") as db:
        row = db.execute("SELECT config FROM agents WHERE id = ?", (agent_id,)).fetchone()
        config = json.loads(row[0])
        config["vad"]["aggressiveness"] = 9
        db.execute("UPDATE agents SET config = ? WHERE id = ?", (json.dumps(config), agent_id))
    messages, _ = await open_call(worker, agent_id)
    errors = [m for m in messages if m["type"] == "error"]
    assert errors and errors[0]["code"] == "invalid_agent_config"
    assert "vad.aggressiveness" in errors[0]["error"]
    assert messages[-1] == {"type": "ended", "reason": "invalid_agent_config"}
    call = await failed_call(worker, agent_id)
    assert call["end_reason"].startswith("invalid_agent_config")


async def test_an_unknown_provider_fails_the_call_cleanly(worker: Worker) -> None:
    agent_id = await create_agent(worker, stt={"provider": "no-such-engine"})
    messages, _ = await open_call(worker, agent_id)
    errors = [m for m in messages if m["type"] == "error"]
    assert errors and errors[0]["code"] == "setup_failed"
    assert "no-such-engine" in errors[0]["error"]
    call = await failed_call(worker, agent_id)
    assert "no-such-engine" in call["end_reason"]


async def test_bad_input_gets_errors_and_the_call_goes_on(worker: Worker) -> None:
    _, agents = await api(worker, "GET", "/v1/agents")
    agent_id = agents["agents"][0]["id"]
    async with (
        aiohttp.ClientSession() as s,
        s.ws_connect(f"{worker.url}/v1/stream?token={worker.api_key}") as ws,
    ):
        await ws.send_str(json.dumps({"type": "start", "agent_id": agent_id}))
        started = json.loads((await ws.receive(timeout=20)).data)
        assert started["type"] == "started"
        await ws.send_str("{not json")
        await ws.send_str(json.dumps({"type": "teleport"}))
        await ws.send_bytes(b"\x01\x02\x03")  # not a whole number of samples
        await ws.send_bytes(b"\0" * 70_000)  # larger than a frame may be
        await ws.send_str(json.dumps({"type": "dtmf", "digit": "x"}))
        await ws.send_str(json.dumps({"type": "dtmf", "digit": "5"}))
        codes: list[str] = []
        agent_audio = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (len(codes) < 5 or agent_audio < 10):
            msg = await ws.receive(timeout=10)
            if msg.type == aiohttp.WSMsgType.BINARY:
                agent_audio += 1
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                if data["type"] == "error":
                    codes.append(data["code"])
        assert sorted(codes) == sorted(
            ["malformed_json", "unknown_type", "bad_frame_size", "frame_too_large", "bad_message"]
        )
        assert agent_audio >= 10, "the greeting keeps playing"
        await ws.send_str('{"type":"end"}')
    status, _ = await api(worker, "GET", "/v1/calls?limit=1")
    assert status == 200


async def test_unauthenticated_stream_is_refused(worker: Worker) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{worker.url}/v1/stream") as r:
        assert r.status == 401
        assert "error" in await r.json()
