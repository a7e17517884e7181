"""The durable outbox against the real local /v1 API on a loopback socket.

Failures are produced at the network edge: the API process is really stopped and started
again on the same port, and a front middleware can answer 500/429/401 or lose a response
after the API has processed the request.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from runtime.api_client import ApiClient, ApiError
from runtime.local_api.app import MAX_BODY_BYTES, add_local_api_routes
from runtime.local_api.store import LocalStore
from runtime.outbox import Outbox, OutboxDeliverer, OutboxLocked

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Hit:
    at: float
    path: str
    status: int
    body: dict[str, Any] | None


@dataclass
class Faults:
    """What the front of the API does to the next ingest requests."""

    queue: list[Callable[[web.Request], Any]] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    #: (method, path suffixes) the faults apply to: the ingest routes unless changed
    target: tuple[str, tuple[str, ...]] = ("POST", ("/events", "/transcript"))

    def applies(self, request: web.Request) -> bool:
        method, suffixes = self.target
        return request.method == method and request.path.endswith(suffixes)

    def ingest_hits(self) -> list[Hit]:
        return [h for h in self.hits if h.path.endswith(("/events", "/transcript"))]


def respond(status: int, headers: dict[str, str] | None = None) -> Callable[[web.Request], Any]:
    def fault(_request: web.Request) -> web.Response:
        return web.json_response({"error": f"injected {status}"}, status=status,
                                 headers=headers)
    return fault


def LOSE_RESPONSE(_request: web.Request) -> web.Response:
    """The API processes the request, then the client sees a 502 (a lost response)."""
    raise AssertionError("handled by the middleware")


class ApiServer:
    """The local API, stoppable and restartable on the same port (the store persists)."""

    def __init__(self, store: LocalStore, faults: Faults) -> None:
        self.store = store
        self.faults = faults
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        faults = self.faults

        @web.middleware
        async def front(request: web.Request, handler: Any) -> web.StreamResponse:
            ingest = request.method == "POST" and request.path.endswith(
                ("/events", "/transcript"))
            fault = faults.queue.pop(0) if faults.applies(request) and faults.queue else None
            if fault is not None and fault is not LOSE_RESPONSE:
                injected: web.Response = fault(request)
                faults.hits.append(Hit(time.monotonic(), request.path, injected.status, None))
                return injected
            resp = await handler(request)
            body = None
            if isinstance(resp, web.Response) and resp.body is not None and ingest:
                body = json.loads(bytes(resp.body))  # type: ignore[arg-type]
            faults.hits.append(Hit(time.monotonic(), request.path, resp.status, body))
            if fault is LOSE_RESPONSE:
                return web.json_response({"error": "bad gateway"}, status=502)
            return resp

        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[front])
        add_local_api_routes(app, self.store, close_store_on_cleanup=False)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@dataclass
class Env:
    server: ApiServer
    faults: Faults
    client: ApiClient
    key: str
    agent_id: str
    tmp: Path

    async def new_call(self) -> str:
        call = await self.client.create_call(agent_id=self.agent_id, transport="local")
        return str(call["id"])

    async def events(self, call_id: str) -> list[dict[str, Any]]:
        _, _, body = await self.client.request("GET", f"/v1/calls/{call_id}/events?limit=200")
        return list(body["events"])

    async def segments(self, call_id: str) -> list[dict[str, Any]]:
        _, _, body = await self.client.request(
            "GET", f"/v1/calls/{call_id}/transcript?limit=200")
        return list(body["segments"])


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = LocalStore(tmp_path / "api.sqlite3")
    key, _ = store.ensure_dev_key()
    faults = Faults()
    server = ApiServer(store, faults)
    await server.start()
    client = ApiClient(server.url, key)
    agents = (await client.request("GET", "/v1/agents"))[2]["agents"]
    yield Env(server, faults, client, key, agents[0]["id"], tmp_path)
    await client.close()
    await server.stop()
    store.close()


def fast(outbox: Outbox, client: ApiClient, **options: Any) -> OutboxDeliverer:
    """A deliverer with short back-off, so the tests do not wait for minutes."""
    options = {"base_backoff_s": 0.05, "max_backoff_s": 0.2, "idle_poll_s": 0.5, **options}
    return OutboxDeliverer(outbox, client, **options)


async def eventually(predicate: Callable[[], bool], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def enqueue_events(outbox: Outbox, call_id: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        outbox.enqueue_event(call_id, "user.speech_started", {"t": i / 10}, 1000.0 + i)


def segment(i: int) -> dict[str, Any]:
    return {"role": "user" if i % 2 else "agent", "text": f"words {i}", "start": float(i),
            "end": i + 0.5, "turn_id": i, "interrupted": False}


# --------------------------------------------------------------------------- enqueue


def test_enqueue_assigns_per_call_sequences_and_keys(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    assert outbox.enqueue_event("call_a", "dtmf", {"digit": "1"}, 1.0) == 1
    assert outbox.enqueue_event("call_a", "dtmf", {"digit": "2"}, 2.0) == 2
    assert outbox.enqueue_transcript("call_a", segment(1)) == 1
    assert outbox.enqueue_event("call_b", "dtmf", {"digit": "3"}, 3.0) == 1
    assert outbox.enqueue_event("call_b", "odd", {"x": float("nan"), "s": {"a"}}, 4.0) == 2
    assert outbox.pending_count() == 5 and outbox.pending_count("call_a") == 3
    batch = outbox.next_batch("call_a", "event", limit=10)
    assert [i.payload for i in batch] == [
        {"idempotency_key": "call_a:event:1", "seq": 1, "type": "dtmf", "at": 1.0,
         "data": {"digit": "1"}},
        {"idempotency_key": "call_a:event:2", "seq": 2, "type": "dtmf", "at": 2.0,
         "data": {"digit": "2"}},
    ]
    assert outbox.next_batch("call_a", "transcript", limit=10)[0].payload == {
        "idempotency_key": "call_a:transcript:1", "seq": 1, **segment(1)}
    # values JSON cannot carry become plain JSON (NaN → null, set → list)
    assert outbox.next_batch("call_b", "event", limit=10)[1].payload["data"] == {
        "x": None, "s": ["a"]}
    assert outbox.pending_groups() == [("call_a", "event"), ("call_a", "transcript"),
                                       ("call_b", "event")]
    outbox.close()


def test_one_process_per_outbox_file(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    with pytest.raises(OutboxLocked, match="RYMI_DATA_DIR"):
        Outbox(tmp_path / "outbox.sqlite3")
    outbox.close()
    Outbox(tmp_path / "outbox.sqlite3").close()


def test_acknowledged_items_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    script = (
        "import os, sys\n"
        "from runtime.outbox import Outbox\n"
        f"o = Outbox({str(path)!r})\n"
        "for i in range(200):\n"
        "    o.enqueue_event('call_k', 'tick', {'i': i}, float(i))\n"
        "print('acknowledged', flush=True)\n"
        "os._exit(9)  # no close, no checkpoint: like kill -9\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.stdout.strip() == "acknowledged", done.stderr
    outbox = Outbox(path)  # the dead process's lock went with it
    assert outbox.pending_count() == 200
    assert [i.seq for i in outbox.next_batch("call_k", "event", limit=500)] == list(
        range(1, 201))
    assert outbox.enqueue_event("call_k", "tick", {}, 0.0) == 201
    outbox.close()


# --------------------------------------------------------------------------- delivery


async def test_api_down_then_back_delivers_everything_once_in_order(env: Env) -> None:
    call_id = await env.new_call()
    await env.server.stop()  # the API is down: connection refused
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    deliverer = fast(outbox, env.client)
    await deliverer.start()
    outbox.enqueue_event(call_id, "call.status", {"status": "ringing"}, 1000.0)
    enqueue_events(outbox, call_id, 30, start=1)
    for i in range(1, 6):
        outbox.enqueue_transcript(call_id, segment(i))
    await eventually(lambda: deliverer.failed_attempts >= 3)
    assert outbox.pending_count() == 36 and deliverer.running

    await env.server.start()  # same port
    assert await deliverer.flush(timeout=20)
    assert outbox.pending_count() == 0 and outbox.dead_count() == 0
    events = await env.events(call_id)
    assert [e["seq"] for e in events] == list(range(1, 32))
    assert events[0]["data"] == {"status": "ringing"}
    assert [s["text"] for s in await env.segments(call_id)] == [f"words {i}" for i in range(1, 6)]
    call = (await env.client.request("GET", f"/v1/calls/{call_id}"))[2]
    assert call["status"] == "ringing"
    await deliverer.stop()
    outbox.close()


async def test_lost_responses_are_retried_without_duplicates(env: Env) -> None:
    call_id = await env.new_call()
    env.faults.queue[:] = [LOSE_RESPONSE, LOSE_RESPONSE]
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    enqueue_events(outbox, call_id, 10)
    deliverer = fast(outbox, env.client)
    await deliverer.start()
    assert await deliverer.flush(timeout=20)
    hits = env.faults.ingest_hits()
    assert len(hits) == 3  # processed, processed again (all duplicates), accepted
    assert hits[0].body == {"accepted": 10, "new": 10, "duplicate": 0}
    assert hits[1].body == {"accepted": 10, "new": 0, "duplicate": 10}
    assert [e["seq"] for e in await env.events(call_id)] == list(range(1, 11))
    await deliverer.stop()
    outbox.close()


async def test_server_errors_back_off_then_deliver(env: Env) -> None:
    call_id = await env.new_call()
    env.faults.queue[:] = [respond(500), respond(503), respond(500)]
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    enqueue_events(outbox, call_id, 5)
    outbox.enqueue_event(call_id, "call.status", {"status": "completed", "reason": "done"}, 2e3)
    deliverer = fast(outbox, env.client)
    await deliverer.start()
    assert await deliverer.flush(timeout=20)
    assert [h.status for h in env.faults.ingest_hits()] == [500, 503, 500, 202]
    assert deliverer.failed_attempts == 3
    assert [e["seq"] for e in await env.events(call_id)] == list(range(1, 7))
    call = (await env.client.request("GET", f"/v1/calls/{call_id}"))[2]
    assert call["status"] == "completed" and call["end_reason"] == "done"
    await deliverer.stop()
    outbox.close()


async def test_429_retry_after_is_honoured_by_every_stream(env: Env) -> None:
    calls = [await env.new_call(), await env.new_call()]
    env.faults.queue[:] = [respond(429, {"Retry-After": "1"})]
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    for call_id in calls:
        enqueue_events(outbox, call_id, 3)
    deliverer = fast(outbox, env.client, concurrency=1)
    await deliverer.start()
    assert await deliverer.flush(timeout=20)
    hits = env.faults.ingest_hits()
    assert hits[0].status == 429
    later = hits[1:]
    assert [h.status for h in later] == [202, 202]
    # nobody sent anything before the server's Retry-After had passed
    assert min(h.at for h in later) - hits[0].at >= 1.0 - 0.05
    for call_id in calls:
        assert [e["seq"] for e in await env.events(call_id)] == [1, 2, 3]
    await deliverer.stop()
    outbox.close()


async def test_rejected_key_stops_delivery_and_keeps_items(env: Env) -> None:
    call_id = await env.new_call()
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    enqueue_events(outbox, call_id, 4)
    bad = ApiClient(env.server.url, "rymi_revoked_0123456789")
    deliverer = fast(outbox, bad)
    await deliverer.start()
    await eventually(lambda: not deliverer.running)
    assert deliverer.failure is not None and deliverer.failure.status == 401
    assert outbox.pending_count() == 4
    assert [h.status for h in env.faults.ingest_hits()] == [401]  # no retries
    outbox.enqueue_event(call_id, "dtmf", {"digit": "9"}, 5.0)
    assert await deliverer.flush(timeout=5) is False  # at once: delivery is stopped
    await deliverer.stop()
    await bad.close()

    # restarted with a valid key, everything goes through
    good = fast(outbox, env.client)
    await good.start()
    assert await good.flush(timeout=20)
    assert [e["seq"] for e in await env.events(call_id)] == [1, 2, 3, 4, 5]
    await good.stop()
    outbox.close()


async def test_restart_resumes_pending_items_and_sequences(env: Env) -> None:
    call_id = await env.new_call()
    path = env.tmp / "outbox.sqlite3"
    await env.server.stop()
    first = Outbox(path)
    deliverer = fast(first, env.client)
    await deliverer.start()
    enqueue_events(first, call_id, 5)
    first.enqueue_transcript(call_id, segment(1))
    await eventually(lambda: deliverer.failed_attempts >= 1)
    await deliverer.stop()  # the worker shuts down with the API still down
    first.close()

    await env.server.start()
    second = Outbox(path)
    assert second.pending_count() == 6
    assert second.enqueue_event(call_id, "dtmf", {"digit": "1"}, 9.0) == 6  # seq continues
    assert second.enqueue_transcript(call_id, segment(2)) == 2
    deliverer = fast(second, env.client)
    await deliverer.start()
    assert await deliverer.flush(timeout=20)
    assert [e["seq"] for e in await env.events(call_id)] == [1, 2, 3, 4, 5, 6]
    assert [s["text"] for s in await env.segments(call_id)] == ["words 1", "words 2"]
    await deliverer.stop()
    second.close()


async def test_refused_item_is_dead_lettered_and_the_rest_delivered(env: Env) -> None:
    call_id = await env.new_call()
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    enqueue_events(outbox, call_id, 2)
    outbox.enqueue_event(call_id, "call.status", {"status": "exploded"}, 3.0)  # API says 400
    enqueue_events(outbox, call_id, 2, start=3)
    deliverer = fast(outbox, env.client)
    await deliverer.start()
    assert await deliverer.flush(timeout=20)
    assert outbox.pending_count() == 0 and outbox.dead_count() == 1 and deliverer.dead == 1
    assert [e["seq"] for e in await env.events(call_id)] == [1, 2, 4, 5]
    with sqlite3.connect(env.tmp / "outbox.sqlite3") as db:
        seq, error = db.execute("SELECT seq, last_error FROM items WHERE state='dead'").fetchone()
    assert seq == 3 and "events[0].data" in error
    await deliverer.stop()
    outbox.close()


async def test_reports_of_a_call_the_api_does_not_know_do_not_block_others(env: Env) -> None:
    call_id = await env.new_call()
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    enqueue_events(outbox, "call_0000forgotten", 3)
    enqueue_events(outbox, call_id, 3)
    deliverer = fast(outbox, env.client)
    await deliverer.start()
    assert await deliverer.flush(timeout=20)
    assert outbox.dead_count() == 3 and outbox.pending_count() == 0
    assert [e["seq"] for e in await env.events(call_id)] == [1, 2, 3]
    await deliverer.stop()
    outbox.close()


async def test_oversized_batches_are_split(env: Env) -> None:
    call_id = await env.new_call()
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    for i in range(1, 16):  # 15 x 90 kB: one batch would be 1.35 MB
        outbox.enqueue_transcript(call_id, {**segment(i), "text": f"{i}:" + "x" * 90_000})
    deliverer = fast(outbox, env.client, max_batch_bytes=4 * MAX_BODY_BYTES)
    await deliverer.start()
    assert await deliverer.flush(timeout=20)
    statuses = [h.status for h in env.faults.ingest_hits()]
    assert statuses[0] == 413 and statuses.count(202) >= 2
    texts = [s["text"].split(":")[0] for s in await env.segments(call_id)]
    assert texts == [str(i) for i in range(1, 16)] and outbox.dead_count() == 0
    await deliverer.stop()
    outbox.close()


async def test_flush_waits_for_items_enqueued_after_start(env: Env) -> None:
    call_id = await env.new_call()
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    deliverer = fast(outbox, env.client)
    await deliverer.start()
    assert await deliverer.flush(timeout=5)  # nothing pending
    for batch in range(3):
        enqueue_events(outbox, call_id, 20, start=batch * 20)
        assert await deliverer.flush(timeout=20)
        assert outbox.pending_count() == 0
    assert len(await env.events(call_id)) == 60
    await deliverer.stop()
    outbox.close()


# --------------------------------------------------------------------------- api client


async def test_client_retries_call_creation_after_429_retry_after(env: Env) -> None:
    env.faults.target = ("POST", ("/v1/calls",))
    env.faults.queue[:] = [respond(429, {"Retry-After": "0.5"})]
    call = await env.client.create_call(agent_id=env.agent_id, transport="twilio",
                                        from_="+15550001", metadata={"k": "v"})
    assert call["status"] == "queued" and call["from"] == "+15550001"
    hits = [h for h in env.faults.hits if h.path == "/v1/calls"]
    assert [h.status for h in hits] == [429, 201]
    assert hits[1].at - hits[0].at >= 0.5 - 0.05


async def test_client_does_not_retry_a_call_creation_the_api_may_have_done(env: Env) -> None:
    env.faults.target = ("POST", ("/v1/calls",))
    env.faults.queue[:] = [respond(500)]
    with pytest.raises(ApiError) as info:
        await env.client.create_call(agent_id=env.agent_id)
    assert info.value.status == 500 and info.value.retryable
    assert [h.status for h in env.faults.hits if h.path == "/v1/calls"] == [500]


async def test_client_retries_agent_fetch_on_server_errors(env: Env) -> None:
    env.faults.target = ("GET", (env.agent_id,))
    env.faults.queue[:] = [respond(503), respond(502)]
    config, raw = await env.client.get_agent(env.agent_id)
    assert raw["id"] == env.agent_id and config.name
    assert [h.status for h in env.faults.hits if h.path.endswith(env.agent_id)] == [
        503, 502, 200]


async def test_client_reports_an_unreachable_api_as_status_0(env: Env) -> None:
    await env.server.stop()
    with pytest.raises(ApiError) as info:
        await env.client.get_agent(env.agent_id)
    assert info.value.status == 0 and info.value.code == "connect_error"
    assert info.value.retryable and not info.value.reached_server
    assert env.key not in str(info.value) and env.key not in repr(env.client)


async def test_stop_right_after_a_kick_returns(env: Env) -> None:
    """A cancel racing with the wake-up must not be swallowed (stop() would hang)."""
    outbox = Outbox(env.tmp / "outbox.sqlite3")
    for _ in range(50):
        deliverer = fast(outbox, env.client)
        await deliverer.start()
        await asyncio.sleep(0)
        deliverer.kick()
        async with asyncio.timeout(5):
            await deliverer.stop()
        assert not deliverer.running
    outbox.close()
