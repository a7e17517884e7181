"""Worker lifecycle under LiveKit dispatch: SIGTERM drain, drain timeout, capacity, and
re-registration after a LiveKit server restart. Workers are real processes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from runtime.outbox import Outbox
from tests.livekit.harness import Api, SpawnWorker, WorkerProcess
from tests.livekit.lkserver import LiveKitServer
from tests.livekit.participant import Participant
from tests.support.speech import speech

pytestmark = pytest.mark.e2e


@contextlib.asynccontextmanager
async def joined(url: str, token: str) -> AsyncIterator[Participant]:
    person = Participant(url, token)
    await person.join()
    try:
        yield person
    finally:
        await person.leave()


def seen(person: Participant, kind: str, **match: Any) -> list[dict[str, Any]]:
    return [e for _, e in person.events if e.get("type") == kind
            and all((e.get("data") or {}).get(k) == v for k, v in match.items())]


def assert_outbox_empty(worker: WorkerProcess) -> None:
    outbox = Outbox(worker.data_dir / "outbox.sqlite3")
    try:
        assert outbox.pending_count() == 0 and outbox.dead_count() == 0
    finally:
        outbox.close()


async def greeted(person: Participant) -> None:
    await person.wait_for(lambda: seen(person, "agent.speech_stopped", turn_id=1), 40,
                          "the greeting")


async def test_sigterm_drains_the_call_and_loses_nothing(
    livekit_server: LiveKitServer, lk_api: Api, spawn_worker: SpawnWorker
) -> None:
    worker_a = await spawn_worker("worker-a", drain_timeout_s=60)
    first = await lk_api.new_call()
    async with joined(livekit_server.url, first["token"]) as caller:
        await greeted(caller)
        caller.say(speech("what time does the store open tomorrow", rate=48000))
        await caller.wait_for(lambda: seen(caller, "agent.speech_started", turn_id=2), 40,
                              "the answer")
        worker_b = await spawn_worker("worker-b")

        worker_a.sigterm()  # mid-answer
        await worker_a.wait_line(r"^draining: no new jobs", 10)

        # the call goes on: the answer plays out, the caller asks again, the agent answers
        await caller.wait_for(lambda: seen(caller, "agent.speech_stopped", turn_id=2), 40,
                              "the answer to finish")
        caller.say(speech("where is the store", rate=48000))
        await caller.wait_for(lambda: seen(caller, "agent.speech_started", turn_id=3), 40,
                              "an answer after SIGTERM")

        # a new call meanwhile goes to the other worker
        second = await lk_api.new_call()
        async with joined(livekit_server.url, second["token"]) as other:
            await greeted(other)
        assert worker_a.process.returncode is None, "still draining while its call runs"
        await caller.wait_for(lambda: seen(caller, "agent.speech_stopped", turn_id=3), 40,
                              "the last answer to finish")
    # the caller hung up: the draining worker finishes and exits cleanly
    assert await worker_a.exited(60) == 0, worker_a.log()
    assert worker_a.count(r"rymi-worker livekit stopped") == 1

    call = await lk_api.wait_call(first["call_id"], "completed", 10)
    assert call["worker_id"] == "worker-a" and call["end_reason"] == "caller_left"
    assert (await lk_api.get(f"/v1/calls/{second['call_id']}"))["worker_id"] == "worker-b"

    # nothing lost: every report reached the API, in order, and the outbox is empty
    events = await lk_api.events(first["call_id"])
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    turns = {e["data"].get("turn_id") for e in events if e["type"] == "agent.speech_started"}
    assert {1, 2, 3} <= turns
    segments = await lk_api.transcript(first["call_id"])
    assert [s["seq"] for s in segments] == list(range(1, len(segments) + 1))
    assert ("user", 3) in [(s["role"], s["turn_id"]) for s in segments]
    assert ("agent", 3) in [(s["role"], s["turn_id"]) for s in segments]
    assert_outbox_empty(worker_a)
    del worker_b


async def test_drain_timeout_ends_the_call_and_closes_the_room(
    livekit_server: LiveKitServer, lk_api: Api, spawn_worker: SpawnWorker
) -> None:
    worker = await spawn_worker("worker-a", drain_timeout_s=2)
    call = await lk_api.new_call()
    async with joined(livekit_server.url, call["token"]) as caller:
        await greeted(caller)
        worker.sigterm()
        # the caller stays; after the timeout the worker ends the call and deletes the room
        await caller.wait_for(lambda: not caller.room.isconnected(), 40,
                              "the room to be closed")
        assert await worker.exited(40) == 0, worker.log()
    ended = await lk_api.wait_call(call["call_id"], "completed", 10)
    assert ended["end_reason"] == "worker_shutdown"
    assert_outbox_empty(worker)


async def test_a_worker_at_its_limit_takes_no_more_jobs(
    livekit_server: LiveKitServer, lk_api: Api, spawn_worker: SpawnWorker
) -> None:
    worker_a = await spawn_worker("worker-a", max_calls=1)
    first = await lk_api.new_call()
    async with joined(livekit_server.url, first["token"]) as caller:
        await greeted(caller)
        # the load LiveKit receives from worker-a is its real capacity: 1 call of 1
        async with aiohttp.ClientSession() as http, http.get(
            f"http://127.0.0.1:{worker_a.agent_http_port()}/worker"
        ) as resp:
            info = await resp.json()
        assert info["worker_load"] == 1.0 and info["active_jobs"] == 1
        await spawn_worker("worker-b", max_calls=1)
        second = await lk_api.new_call()
        async with joined(livekit_server.url, second["token"]) as other:
            await greeted(other)
    calls = [await lk_api.get(f"/v1/calls/{c['call_id']}") for c in (first, second)]
    assert [c["worker_id"] for c in calls] == ["worker-a", "worker-b"]


async def test_worker_registers_again_after_livekit_restarts(
    livekit_server: LiveKitServer, lk_api: Api, spawn_worker: SpawnWorker
) -> None:
    worker = await spawn_worker("worker-a")
    livekit_server.stop(kill=True)  # a crash: no goodbye to the worker
    await asyncio.sleep(0.5)
    livekit_server.start()
    await worker.wait_line(r"^registered with LiveKit as", 60, occurrence=2)
    call = await lk_api.new_call()
    async with joined(livekit_server.url, call["token"]) as caller:
        await greeted(caller)
    ended = await lk_api.wait_call(call["call_id"], "completed", 30)
    assert ended["worker_id"] == "worker-a"
