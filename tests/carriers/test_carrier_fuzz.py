"""Hostile input at every carrier endpoint, next to a healthy call that must not notice.

Per carrier: more than 10,000 malformed messages (tests/carriers/malformed.py, seeded)
over many connections, some before and most after a valid ``start``; a connection that
floods; a frame too large for the socket. The worker must stay up, report each bad
connection with a reason, and the concurrent healthy call must run its normal course.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import aiohttp
import pytest
from prometheus_client import REGISTRY

from runtime.server import Worker
from tests.carriers.clients import CarrierCaller
from tests.carriers.harness import (
    api_get,
    events,
    find_call,
    make_caller,
    speech_for,
    transcript,
    wait_event,
    wait_status,
    worker,
)
from tests.carriers.harness import default_agent_id as agent_of
from tests.carriers.malformed import malformed

pytestmark = pytest.mark.e2e
__all__ = ["worker"]

TARGET = 10_000
PER_CONNECTION = 450  # below the flood guard's burst: every message is parsed
CONCURRENCY = 4


def received(carrier: str) -> float:
    return REGISTRY.get_sample_value("rymi_carrier_messages_total", {"carrier": carrier}) or 0.0


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    with contextlib.suppress(Exception):
        async for _ in ws:
            pass


async def _fuzz_connection(caller: CarrierCaller, seed: int, *, start: bool) -> tuple[int, str]:
    """Open a stream like the carrier, then throw malformed messages; (sent, carrier id)."""
    async with caller:
        caller.answer_document = await caller.answer()
        caller._parse_answer(caller.answer_document)
        await caller.open_stream()
        ws = caller._ws
        assert ws is not None
        drain = asyncio.create_task(_drain(ws))
        sent = 0
        try:
            if start:
                await caller._send_start()
            source = malformed(caller.carrier, seed, caller.silence_frame)
            limit = PER_CONNECTION if start else 100
            while sent < limit and not ws.closed:
                message = next(source)
                try:
                    await caller.send_raw(message)
                except (ConnectionError, RuntimeError):
                    break
                sent += 1
            await asyncio.sleep(0.05)
            with contextlib.suppress(Exception):
                await ws.close()
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
        return sent, caller.carrier_call_id


async def _fuzz(
    worker: Worker, carrier: str, agent_id: str, parsed: Callable[[], float]
) -> tuple[int, list[str]]:
    """Connections until the endpoint has parsed TARGET malformed messages (some
    connections are closed by the worker before all they sent was read: a fatal start);
    returns (messages thrown, carrier ids of the connections that started)."""
    total = 0
    started: list[str] = []
    seed = 0
    while parsed() < TARGET:
        batch = []
        for _ in range(CONCURRENCY):
            seed += 1
            with_start = seed % 4 != 0  # one connection in four never starts
            caller = make_caller(carrier, worker, agent_id, connect=False)
            batch.append((with_start, _fuzz_connection(caller, seed, start=with_start)))
        results = await asyncio.gather(*(coro for _, coro in batch))
        for (with_start, _), (sent, call) in zip(batch, results, strict=True):
            total += sent
            if with_start:
                started.append(call)
    return total, started


@pytest.mark.parametrize("carrier", ["twilio", "plivo", "vonage", "telnyx"])
async def test_ten_thousand_malformed_messages_leave_a_concurrent_call_untouched(
    worker: Worker, carrier: str
) -> None:
    agent_id = await agent_of(worker)
    before = received(carrier)
    async with make_caller(carrier, worker, agent_id) as healthy:
        call_id = (await find_call(worker, healthy.carrier_call_id))["id"]

        def parsed() -> float:  # by the endpoint, not counting the healthy call's messages
            return received(carrier) - before - healthy.sent_messages

        fuzzing = asyncio.create_task(_fuzz(worker, carrier, agent_id, parsed))
        await wait_event(worker, call_id, "agent.speech_stopped", 60, turn_id=1)
        healthy.say(speech_for(healthy, "what time does the store open tomorrow"))
        await wait_event(worker, call_id, "agent.speech_started", 60, turn_id=2)
        thrown, fuzz_calls = await fuzzing
        await healthy.hang_up()

    assert thrown >= TARGET and parsed() >= TARGET
    async with aiohttp.ClientSession() as session, session.get(f"{worker.url}/healthz") as resp:
        assert resp.status == 200

    # the healthy call ran its normal course and saw no protocol error
    call = await wait_status(worker, call_id, ("completed", "failed"))
    assert call["status"] == "completed" and call["end_reason"] == (
        "stream_closed" if carrier == "vonage" else "caller_hangup")
    assert not [e for e in await events(worker, call_id) if e["type"].startswith("carrier.")]
    roles = [(s["role"], s["turn_id"]) for s in await transcript(worker, call_id)]
    assert roles[:2] == [("agent", 1), ("user", 2)]
    assert healthy.heard_energy() > 300
    if carrier == "vonage":
        assert healthy.overflow_frames == 0

    # every fuzzed call ended with a reason and reported its errors
    assert fuzz_calls
    reported = 0
    for carrier_call_id in fuzz_calls[:8]:
        fuzz_call = await find_call(worker, carrier_call_id)
        ended = await wait_status(worker, fuzz_call["id"], ("completed", "failed"))
        assert ended["end_reason"]
        kinds = {e["type"]: e["data"] for e in await events(worker, fuzz_call["id"])}
        assert "carrier.protocol_error" in kinds
        summary = kinds.get("carrier.protocol_errors")
        if summary is not None:
            assert summary["total"] > 0 and summary["carrier"] == carrier
            reported += 1
    assert reported


async def test_a_flooding_connection_is_cut_off_with_a_reason(worker: Worker) -> None:
    agent_id = await agent_of(worker)
    async with make_caller("twilio", worker, agent_id) as healthy:
        healthy_id = (await find_call(worker, healthy.carrier_call_id))["id"]
        async with make_caller("twilio", worker, agent_id, connect=False) as flood:
            flood._parse_answer(await flood.answer())
            await flood.open_stream()
            await flood._send_start()
            ws = flood._ws
            assert ws is not None
            drain = asyncio.create_task(_drain(ws))
            message = flood._media_message(flood.silence_frame)
            sent = 0
            with contextlib.suppress(ConnectionError, RuntimeError):
                while not ws.closed and sent < 20_000:
                    await ws.send_str(message)
                    sent += 1
                    if sent % 200 == 0:
                        await asyncio.sleep(0)
            await asyncio.wait_for(drain, 10)
            assert ws.close_code == 1008  # policy violation
        flood_call = await find_call(worker, flood.carrier_call_id)
        ended = await wait_status(worker, flood_call["id"], ("completed", "failed"))
        assert ended["status"] == "failed" and ended["end_reason"] == "protocol_error:flood"
        summary = await wait_event(worker, flood_call["id"], "carrier.protocol_errors", 10)
        assert summary["data"]["by_code"]["flood"] > 0
        # the other call carries on
        await wait_event(worker, healthy_id, "agent.speech_stopped", 30, turn_id=1)
        await healthy.hang_up()
    assert (await api_get(worker, f"/v1/calls/{healthy_id}"))["status"] in ("completed",
                                                                            "in_progress")


async def test_a_frame_too_large_for_the_socket_ends_that_call_only(worker: Worker) -> None:
    agent_id = await agent_of(worker)
    async with make_caller("plivo", worker, agent_id) as caller:
        call_id = (await find_call(worker, caller.carrier_call_id))["id"]
        await caller.send_raw(json.dumps({"event": "media", "pad": "x" * (1024 * 1024)}))
        await asyncio.wait_for(caller.closed.wait(), 10)
        # 1009 "message too big"; 1006 when the close races the rest of our upload
        assert caller.close_code in (1009, 1006)
    ended = await wait_status(worker, call_id, ("completed", "failed"))
    assert ended["status"] == "failed"
    assert ended["end_reason"] == "protocol_error:frame_too_large"
