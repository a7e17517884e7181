"""The embedded /v1 API over a real socket: auth, agents CRUD, validation, pagination,
calls, idempotent ingest and ETag revalidation (docs/api.md)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pipelines.agent_config import default_agent
from runtime.api_client import ApiClient, ApiError
from runtime.local_api.app import MAX_BODY_BYTES, add_local_api_routes, create_local_api
from runtime.local_api.store import LocalStore


class Api:
    """A running local API and an HTTP session that speaks to it."""

    def __init__(self, url: str, key: str, store: LocalStore, session: aiohttp.ClientSession,
                 seen: list[tuple[str, str, int, str | None]]) -> None:
        self.url = url
        self.key = key
        self.store = store
        self.session = session
        self.seen = seen  # (method, path, status, If-None-Match) as the server saw them

    async def call(self, method: str, path: str, body: Any = None, *,
                   key: str | None = "default", headers: dict[str, str] | None = None,
                   data: bytes | None = None) -> tuple[int, Any, Mapping[str, str]]:
        hdrs = dict(headers or {})
        if key is not None:
            hdrs["Authorization"] = f"Bearer {self.key if key == 'default' else key}"
        async with self.session.request(method, self.url + path, json=body, data=data,
                                        headers=hdrs) as resp:
            text = await resp.text()
            parsed = await resp.json(content_type=None) if text else None
            return resp.status, parsed, resp.headers.copy()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = LocalStore(tmp_path / "api.sqlite3")
    key, created = store.ensure_dev_key()
    assert created
    app = create_local_api(store)
    seen: list[tuple[str, str, int, str | None]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        resp: web.StreamResponse = await handler(request)
        seen.append((request.method, request.path, resp.status,
                     request.headers.get("If-None-Match")))
        return resp

    app.middlewares.insert(0, record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        yield Api(f"http://127.0.0.1:{port}", key, store, session, seen)
    await runner.cleanup()


async def default_agent_id(api: Api) -> str:
    status, body, _ = await api.call("GET", "/v1/agents")
    assert status == 200
    return str(body["agents"][0]["id"])


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize("key", [None, "rymi_wrong_0123456789", "sb_publishable_x", ""])
async def test_requests_without_a_valid_secret_key_get_401(api: Api, key: str | None) -> None:
    for method, path in (("GET", "/v1/agents"), ("POST", "/v1/calls"),
                         ("GET", "/v1/calls/call_abc/events")):
        status, body, headers = await api.call(method, path, {}, key=key)
        assert status == 401
        assert body["code"] == "unauthorized" and body["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_basic_scheme_is_not_accepted(api: Api) -> None:
    status, _, _ = await api.call("GET", "/v1/agents", key=None,
                                  headers={"Authorization": f"Basic {api.key}"})
    assert status == 401


async def test_dev_key_is_persisted_privately_and_reused(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a.sqlite3")
    key, created = store.ensure_dev_key()
    key_file = tmp_path / "dev-api-key"
    assert created and key.startswith("rymi_") and key_file.read_text().strip() == key
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    store.close()
    again = LocalStore(tmp_path / "a.sqlite3")
    assert again.ensure_dev_key() == (key, False)
    assert again.verify_key(key) and not again.verify_key(key + "x")
    again.close()


async def test_configured_key_is_accepted(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "a.sqlite3")
    assert store.ensure_dev_key("rymi_configured_0123456789") == ("rymi_configured_0123456789",
                                                                  False)
    assert store.verify_key("rymi_configured_0123456789")
    assert not (tmp_path / "dev-api-key").exists()
    create_local_api(store, keys=["rymi_extra_0123456789"])
    assert store.verify_key("rymi_extra_0123456789")
    store.close()


# --------------------------------------------------------------------------- agents


async def test_default_agent_is_created_once(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite3"
    store = LocalStore(path)
    agents, total = await store.list_agents(limit=50, offset=0)
    assert total == 1 and agents[0]["name"] == default_agent().name
    assert agents[0]["id"].startswith("agt_")
    await store.delete_agent(agents[0]["id"])
    store.close()
    # a deleted default agent does not come back on the next start
    store = LocalStore(path)
    assert (await store.list_agents(limit=50, offset=0))[1] == 0
    store.close()


async def test_agent_crud(api: Api) -> None:
    status, created, headers = await api.call(
        "POST", "/v1/agents", {"name": "Support", "interruption": {"min_duration_ms": 600}}
    )
    assert status == 201, created
    agent_id = created["id"]
    assert agent_id.startswith("agt_") and headers["Location"] == f"/v1/agents/{agent_id}"
    assert created["name"] == "Support" and created["interruption"]["min_duration_ms"] == 600
    assert created["interruption"]["min_words"] == 0  # defaults filled in
    assert created["created_at"].endswith("Z") and headers["ETag"]

    status, got, _ = await api.call("GET", f"/v1/agents/{agent_id}")
    assert status == 200 and got == created

    # PUT merges into the stored config, nested objects included
    status, updated, _ = await api.call(
        "PUT", f"/v1/agents/{agent_id}",
        {"interruption": {"min_words": 2}, "first_message": "Hi!", "id": "ignored"},
    )
    assert status == 200, updated
    assert updated["id"] == agent_id and updated["name"] == "Support"
    assert updated["interruption"]["min_duration_ms"] == 600
    assert updated["interruption"]["min_words"] == 2 and updated["first_message"] == "Hi!"
    # null removes a field: it falls back to its default
    status, reset, _ = await api.call("PUT", f"/v1/agents/{agent_id}",
                                      {"first_message": None})
    assert status == 200 and reset["first_message"] is None

    status, body, _ = await api.call("DELETE", f"/v1/agents/{agent_id}")
    assert status == 200 and body == {"id": agent_id, "deleted": True}
    for method in ("GET", "PUT", "DELETE"):
        status, body, _ = await api.call(method, f"/v1/agents/{agent_id}",
                                         {} if method == "PUT" else None)
        assert status == 404 and body["code"] == "not_found" and agent_id in body["error"]


async def test_validation_error_names_the_field(api: Api) -> None:
    status, body, _ = await api.call(
        "POST", "/v1/agents", {"interruption": {"min_duration_ms": 9000}}
    )
    assert status == 400
    assert body["error"] == ("invalid agent config: interruption.min_duration_ms: "
                             "Input should be less than or equal to 5000")
    assert body["code"] == "validation_error"
    assert body["detail"][0]["field"] == "interruption.min_duration_ms"

    status, body, _ = await api.call(
        "POST", "/v1/agents",
        {"playbook": {"intents": [{"name": "x", "keywords": [], "reply": "y"}]}},
    )
    assert status == 400 and "playbook.intents[0].keywords" in body["error"]

    status, body, _ = await api.call("POST", "/v1/agents", {"nmae": "typo"})
    assert status == 400 and body["detail"][0]["field"] == "nmae"
    assert "Extra inputs are not permitted" in body["error"]


async def test_invalid_put_changes_nothing(api: Api) -> None:
    agent_id = await default_agent_id(api)
    _, before, _ = await api.call("GET", f"/v1/agents/{agent_id}")
    status, body, _ = await api.call(
        "PUT", f"/v1/agents/{agent_id}",
        {"name": "Renamed", "endpointing": {"min_delay_ms": 5000, "max_delay_ms": 100}},
    )
    assert status == 400 and body["error"].startswith("invalid agent config: endpointing")
    _, after, _ = await api.call("GET", f"/v1/agents/{agent_id}")
    assert after == before


async def test_malformed_non_object_and_oversized_bodies(api: Api) -> None:
    status, body, _ = await api.call("POST", "/v1/agents", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert status == 400 and body["code"] == "malformed_json"
    status, body, _ = await api.call("POST", "/v1/agents", [1, 2])
    assert status == 400 and body["error"] == "request body must be a JSON object"
    big = b'{"name": "' + b"x" * MAX_BODY_BYTES + b'"}'
    status, body, _ = await api.call("POST", "/v1/agents", data=big,
                                     headers={"Content-Type": "application/json"})
    assert status == 413 and body["code"] == "payload_too_large" and body["error"]


async def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    status, body, _ = await api.call("GET", "/v1/nothing-here")
    assert status == 404 and body == {"error": "not found", "code": "not_found"}
    status, body, headers = await api.call("PATCH", "/v1/agents", {})
    assert status == 405 and body["code"] == "method_not_allowed" and "GET" in headers["Allow"]


async def test_agent_pagination(api: Api) -> None:
    ids = [await default_agent_id(api)]
    for i in range(5):
        _, agent, _ = await api.call("POST", "/v1/agents", {"name": f"agent {i}"})
        ids.append(agent["id"])
    status, page, _ = await api.call("GET", "/v1/agents?limit=2&offset=1")
    assert status == 200
    assert [a["id"] for a in page["agents"]] == ids[1:3]
    assert (page["total"], page["limit"], page["offset"]) == (6, 2, 1)
    _, default_page, _ = await api.call("GET", "/v1/agents")
    assert default_page["limit"] == 50 and len(default_page["agents"]) == 6
    _, tail, _ = await api.call("GET", "/v1/agents?offset=5")
    assert [a["id"] for a in tail["agents"]] == ids[5:]
    for query, field in (("limit=0", "limit"), ("limit=201", "limit"), ("limit=x", "limit"),
                         ("offset=-1", "offset")):
        status, body, _ = await api.call("GET", f"/v1/agents?{query}")
        assert status == 400 and body["detail"][0]["field"] == field, query
        assert body["error"].startswith(f"invalid query: {field}:")


async def test_etag_and_if_none_match(api: Api) -> None:
    agent_id = await default_agent_id(api)
    status, _, headers = await api.call("GET", f"/v1/agents/{agent_id}")
    etag = headers["ETag"]
    assert status == 200 and etag.startswith('"')
    status, body, headers = await api.call("GET", f"/v1/agents/{agent_id}",
                                           headers={"If-None-Match": etag})
    assert status == 304 and body is None and headers["ETag"] == etag
    await api.call("PUT", f"/v1/agents/{agent_id}", {"name": "Renamed"})
    status, body, headers = await api.call("GET", f"/v1/agents/{agent_id}",
                                           headers={"If-None-Match": etag})
    assert status == 200 and body["name"] == "Renamed" and headers["ETag"] != etag


async def test_api_client_revalidates_its_agent_cache(api: Api) -> None:
    agent_id = await default_agent_id(api)
    async with ApiClient(api.url, api.key) as client:
        config, raw = await client.get_agent(agent_id)
        assert config.name == default_agent().name and raw["id"] == agent_id
        again, raw_again = await client.get_agent(agent_id)
        assert again == config and raw_again == raw
        await api.call("PUT", f"/v1/agents/{agent_id}", {"name": "Changed"})
        changed, _ = await client.get_agent(agent_id)
        assert changed.name == "Changed"
        with pytest.raises(ApiError) as info:
            await client.get_agent("agt_missing")
        assert info.value.status == 404 and info.value.code == "not_found"
    gets = [(s, inm) for m, p, s, inm in api.seen if m == "GET" and p.endswith(agent_id)]
    client_gets = gets[-3:]
    assert client_gets[0] == (200, None)
    assert client_gets[1][0] == 304 and client_gets[1][1]  # sent If-None-Match, got 304
    assert client_gets[2][0] == 200 and client_gets[2][1] == client_gets[1][1]


async def test_api_client_rejects_a_bad_key_as_non_retryable(api: Api) -> None:
    async with ApiClient(api.url, "rymi_wrong_0123456789") as client:
        with pytest.raises(ApiError) as info:
            await client.get_agent(await default_agent_id(api))
    assert info.value.status == 401 and info.value.auth_failed and not info.value.retryable
    assert len([s for m, p, s, _ in api.seen if s == 401]) == 1  # no retry


# --------------------------------------------------------------------------- calls


async def test_call_lifecycle_through_status_events(api: Api) -> None:
    agent_id = await default_agent_id(api)
    status, call, headers = await api.call("POST", "/v1/calls", {
        "agent_id": agent_id, "direction": "inbound", "transport": "twilio",
        "from": "+15550001", "to": "+15550002", "metadata": {"ticket": 7},
    })
    assert status == 201, call
    call_id = call["id"]
    assert call_id.startswith("call_") and headers["Location"] == f"/v1/calls/{call_id}"
    assert call["status"] == "queued" and call["from"] == "+15550001" and call["to"] == "+15550002"
    assert call["metadata"] == {"ticket": 7} and call["duration_s"] is None
    assert set(call) == {"id", "agent_id", "status", "direction", "transport", "from", "to",
                         "created_at", "started_at", "ended_at", "duration_s", "end_reason",
                         "worker_id", "metadata"}

    def ev(seq: int, type_: str, at: float, **data: Any) -> dict[str, Any]:
        return {"idempotency_key": f"{call_id}:event:{seq}", "seq": seq, "type": type_,
                "at": at, "data": data}

    status, body, _ = await api.call("POST", f"/v1/calls/{call_id}/events", {"events": [
        ev(1, "call.status", 1000.0, status="ringing", worker_id="w-1"),
        ev(2, "call.status", 1001.5, status="in_progress"),
    ]})
    assert status == 202 and body == {"accepted": 2, "new": 2, "duplicate": 0}
    _, live, _ = await api.call("GET", f"/v1/calls/{call_id}")
    assert live["status"] == "in_progress" and live["worker_id"] == "w-1"
    assert live["started_at"] == "1970-01-01T00:16:41.500Z" and live["ended_at"] is None

    # delivered out of order within a batch: applied and listed by seq
    status, body, _ = await api.call("POST", f"/v1/calls/{call_id}/events", {"events": [
        ev(4, "call.status", 1031.5, status="completed", reason="caller_hangup"),
        ev(3, "dtmf", 1010.0, digit="5"),
    ]})
    assert status == 202 and body["new"] == 2
    _, ended, _ = await api.call("GET", f"/v1/calls/{call_id}")
    assert ended["status"] == "completed" and ended["end_reason"] == "caller_hangup"
    assert ended["duration_s"] == 30.0
    # terminal is final: a late status event is stored but changes nothing
    await api.call("POST", f"/v1/calls/{call_id}/events",
                   {"events": [ev(5, "call.status", 1040.0, status="in_progress")]})
    _, still, _ = await api.call("GET", f"/v1/calls/{call_id}")
    assert still["status"] == "completed"
    _, events, _ = await api.call("GET", f"/v1/calls/{call_id}/events")
    assert [e["seq"] for e in events["events"]] == [1, 2, 3, 4, 5]
    assert events["events"][2] == {"seq": 3, "type": "dtmf", "at": 1010.0, "data": {"digit": "5"}}
    assert events["total"] == 5


async def test_ingest_is_idempotent(api: Api) -> None:
    agent_id = await default_agent_id(api)
    _, call, _ = await api.call("POST", "/v1/calls", {"agent_id": agent_id})
    call_id = call["id"]
    events = [{"idempotency_key": f"{call_id}:event:{i}", "seq": i, "type": "turn.metrics",
               "at": 1.0 + i, "data": {"turn_id": i}} for i in range(1, 4)]
    status, first, _ = await api.call("POST", f"/v1/calls/{call_id}/events", {"events": events})
    assert status == 202 and first == {"accepted": 3, "new": 3, "duplicate": 0}
    # the same batch retried (say, the response was lost) plus one new item
    more = [*events, {**events[0], "idempotency_key": f"{call_id}:event:4", "seq": 4}]
    status, second, _ = await api.call("POST", f"/v1/calls/{call_id}/events", {"events": more})
    assert status == 202 and second == {"accepted": 4, "new": 1, "duplicate": 3}
    _, listed, _ = await api.call("GET", f"/v1/calls/{call_id}/events")
    assert [e["seq"] for e in listed["events"]] == [1, 2, 3, 4]

    segs = [
        {"idempotency_key": f"{call_id}:transcript:2", "seq": 2, "role": "user",
         "text": "what time do you open", "start": 2.0, "end": 3.1, "turn_id": 2,
         "interrupted": False},
        {"idempotency_key": f"{call_id}:transcript:1", "seq": 1, "role": "agent",
         "text": "Hello!", "start": 0.2, "end": 1.0, "turn_id": 1, "interrupted": False},
    ]
    for expected_new in (2, 0):
        status, body, _ = await api.call("POST", f"/v1/calls/{call_id}/transcript",
                                         {"segments": segs})
        assert status == 202 and body["new"] == expected_new
    _, transcript, _ = await api.call("GET", f"/v1/calls/{call_id}/transcript")
    assert [s["text"] for s in transcript["segments"]] == ["Hello!", "what time do you open"]
    assert transcript["segments"][0] == {"seq": 1, "role": "agent", "text": "Hello!",
                                         "start": 0.2, "end": 1.0, "turn_id": 1,
                                         "interrupted": False}
    assert transcript["total"] == 2


async def test_ingest_validation_names_the_item(api: Api) -> None:
    agent_id = await default_agent_id(api)
    _, call, _ = await api.call("POST", "/v1/calls", {"agent_id": agent_id})
    call_id = call["id"]
    good = {"idempotency_key": "k1", "seq": 1, "type": "dtmf", "at": 1.0, "data": {}}
    status, body, _ = await api.call("POST", f"/v1/calls/{call_id}/events", {"events": [
        good, {**good, "idempotency_key": "k2", "seq": "two"}]})
    assert status == 400 and body["error"].startswith("invalid events: events[1].seq:")
    status, body, _ = await api.call("POST", f"/v1/calls/{call_id}/events", {"events": [
        {**good, "type": "call.status", "data": {"status": "exploded"}}]})
    assert status == 400 and body["detail"][0]["field"] == "events[0].data"
    assert "data.status" in body["error"]
    status, body, _ = await api.call("POST", f"/v1/calls/{call_id}/transcript", {"segments": [
        {"idempotency_key": "t1", "seq": 1, "role": "robot", "text": "x", "start": 0,
         "end": 1, "turn_id": 1}]})
    assert status == 400 and body["detail"][0]["field"] == "segments[0].role"
    status, body, _ = await api.call("POST", f"/v1/calls/{call_id}/events", {"events": []})
    assert status == 400 and body["detail"][0]["field"] == "events"
    # nothing of a refused batch was stored
    _, listed, _ = await api.call("GET", f"/v1/calls/{call_id}/events")
    assert listed["total"] == 0


async def test_call_errors(api: Api) -> None:
    status, body, _ = await api.call("POST", "/v1/calls", {"agent_id": "agt_nope"})
    assert status == 404 and body["code"] == "agent_not_found"
    status, body, _ = await api.call("POST", "/v1/calls", {"agent_id": "agt_x",
                                                           "direction": "sideways"})
    assert status == 400 and body["detail"][0]["field"] == "direction"
    for path in ("/v1/calls/call_nope", "/v1/calls/call_nope/events",
                 "/v1/calls/call_nope/transcript"):
        status, body, _ = await api.call("GET", path)
        assert status == 404 and body["code"] == "not_found"
    status, body, _ = await api.call("POST", "/v1/calls/call_nope/events", {"events": [
        {"idempotency_key": "k", "seq": 1, "type": "dtmf", "at": 1.0}]})
    assert status == 404
    status, body, _ = await api.call("GET", "/v1/agents/agt_nope/calls")
    assert status == 404


async def test_call_listing_filters_and_cursor(api: Api) -> None:
    agent_id = await default_agent_id(api)
    _, other, _ = await api.call("POST", "/v1/agents", {"name": "Other"})
    ids = []
    for i in range(5):
        _, call, _ = await api.call("POST", "/v1/calls", {
            "agent_id": agent_id if i % 2 == 0 else other["id"], "transport": "local"})
        ids.append(call["id"])
    newest_first = ids[::-1]
    # complete one call
    await api.call("POST", f"/v1/calls/{ids[0]}/events", {"events": [
        {"idempotency_key": "s", "seq": 1, "type": "call.status", "at": 5.0,
         "data": {"status": "completed"}}]})

    _, page, _ = await api.call("GET", "/v1/calls?limit=2")
    assert [c["id"] for c in page["calls"]] == newest_first[:2]
    assert page["total"] == 5 and page["next_cursor"] == newest_first[1]
    _, nxt, _ = await api.call("GET", f"/v1/calls?limit=2&cursor={page['next_cursor']}")
    assert [c["id"] for c in nxt["calls"]] == newest_first[2:4]
    _, last, _ = await api.call("GET", f"/v1/calls?limit=2&cursor={nxt['next_cursor']}")
    assert [c["id"] for c in last["calls"]] == newest_first[4:] and last["next_cursor"] is None
    _, by_offset, _ = await api.call("GET", "/v1/calls?limit=2&offset=3")
    assert [c["id"] for c in by_offset["calls"]] == newest_first[3:5]

    _, done, _ = await api.call("GET", "/v1/calls?status=completed")
    assert [c["id"] for c in done["calls"]] == [ids[0]] and done["total"] == 1
    _, queued, _ = await api.call("GET", "/v1/calls?status=queued")
    assert queued["total"] == 4

    _, mine, _ = await api.call("GET", f"/v1/agents/{agent_id}/calls")
    assert [c["id"] for c in mine["calls"]] == [ids[4], ids[2], ids[0]]
    assert mine["total"] == 3

    status, body, _ = await api.call("GET", "/v1/calls?status=lost")
    assert status == 400 and body["detail"][0]["field"] == "status"
    status, body, _ = await api.call("GET", "/v1/calls?cursor=call_unknown")
    assert status == 400 and body["detail"][0]["field"] == "cursor"


async def test_agent_with_active_calls_cannot_be_deleted(api: Api) -> None:
    _, agent, _ = await api.call("POST", "/v1/agents", {"name": "Busy"})
    _, call, _ = await api.call("POST", "/v1/calls", {"agent_id": agent["id"]})
    status, body, _ = await api.call("DELETE", f"/v1/agents/{agent['id']}")
    assert status == 409 and body["code"] == "agent_has_active_calls"
    await api.call("POST", f"/v1/calls/{call['id']}/events", {"events": [
        {"idempotency_key": "s", "seq": 1, "type": "call.status", "at": 5.0,
         "data": {"status": "failed", "reason": "setup_failed"}}]})
    status, _, _ = await api.call("DELETE", f"/v1/agents/{agent['id']}")
    assert status == 200
    # the finished call keeps its record
    status, kept, _ = await api.call("GET", f"/v1/calls/{call['id']}")
    assert status == 200 and kept["agent_id"] == agent["id"] and kept["status"] == "failed"


async def test_concurrent_duplicate_batches_store_each_item_once(api: Api) -> None:
    agent_id = await default_agent_id(api)
    _, call, _ = await api.call("POST", "/v1/calls", {"agent_id": agent_id})
    call_id = call["id"]
    batch = {"events": [{"idempotency_key": f"k{i}", "seq": i, "type": "dtmf", "at": 1.0,
                         "data": {"digit": str(i % 10)}} for i in range(1, 51)]}
    results = await asyncio.gather(*(api.call("POST", f"/v1/calls/{call_id}/events", batch)
                                     for _ in range(8)))
    assert sum(body["new"] for _, body, _ in results) == 50
    _, listed, _ = await api.call("GET", f"/v1/calls/{call_id}/events?limit=200")
    assert listed["total"] == 50


async def test_routes_mount_on_a_shared_app(tmp_path: Path) -> None:
    """The worker mounts the API next to its own routes; fixed paths added later by other
    modules (e.g. /v1/agents/llm-options) are not shadowed by the id routes."""
    store = LocalStore(tmp_path / "a.sqlite3")
    key, _ = store.ensure_dev_key()
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    add_local_api_routes(app, store)

    async def options(_request: web.Request) -> web.Response:
        return web.json_response({"llm": []})

    app.router.add_get("/v1/agents/llm-options", options)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        async with session.get(f"{url}/v1/agents/llm-options") as resp:
            assert resp.status == 200 and await resp.json() == {"llm": []}
        async with session.get(f"{url}/v1/agents") as resp:
            assert resp.status == 200
    await runner.cleanup()
    store.close()  # already closed by the app's cleanup: idempotent
