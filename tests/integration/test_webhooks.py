"""Webhooks of the local API delivered to a real HTTP receiver on loopback: signed with the
webhook's secret, filtered by event type, retried with back-off, once per event."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from runtime.api_client import ApiClient
from runtime.local_api.app import create_local_api
from runtime.local_api.contract import add_contract_routes
from runtime.local_api.store import LocalStore
from runtime.local_api.webhooks import verify_signature

BACKOFF_S = 0.2


@dataclass
class Receiver:
    url: str = ""
    fail_first: int = 2  # attempts of each event that fail
    hits: list[tuple[float, dict[str, str], bytes, int]] = field(default_factory=list)


@dataclass
class Env:
    api_url: str
    key: str
    receiver: Receiver
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.api_url + path, json=body, headers={
                "Authorization": f"Bearer {self.key}"}) as resp:
            return resp.status, await resp.json(content_type=None)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    store = LocalStore(tmp_path / "api.sqlite3")
    key, _ = store.ensure_dev_key()
    app = create_local_api(store)
    add_contract_routes(app, store, webhook_backoff_s=BACKOFF_S,
                        webhook_allow_hosts=("127.0.0.1",))
    api_runner = web.AppRunner(app)
    await api_runner.setup()
    await web.TCPSite(api_runner, "127.0.0.1", 0).start()

    receiver = Receiver()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        ident = request.headers.get("Rymi-Webhook-Id")
        earlier = sum(1 for h in receiver.hits if h[1].get("Rymi-Webhook-Id") == ident)
        status = 500 if earlier < receiver.fail_first else 204
        receiver.hits.append((time.monotonic(), dict(request.headers), body, status))
        return web.Response(status=status)

    recv_app = web.Application()
    recv_app.router.add_post("/hook", hook)
    recv_runner = web.AppRunner(recv_app)
    await recv_runner.setup()
    await web.TCPSite(recv_runner, "127.0.0.1", 0).start()
    receiver.url = f"http://127.0.0.1:{recv_runner.addresses[0][1]}/hook"
    async with aiohttp.ClientSession() as session:
        yield Env(f"http://127.0.0.1:{api_runner.addresses[0][1]}", key, receiver, session)
    await recv_runner.cleanup()
    await api_runner.cleanup()


async def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_signed_filtered_retried_once_per_event(env: Env) -> None:
    status, hook = await env.call("POST", "/v1/webhooks", {
        "url": env.receiver.url, "events": ["call.status", "transcript.*", "call.summary"],
        "description": "crm"})
    assert status == 201 and hook["secret"].startswith("whsec_")
    secret = hook["secret"]
    status, other = await env.call("POST", "/v1/webhooks", {"url": env.receiver.url})
    assert other["events"] == ["*"]
    status, other = await env.call("PATCH", f"/v1/webhooks/{other['id']}", {"enabled": False})
    assert status == 200 and other["enabled"] is False
    status, listing = await env.call("GET", "/v1/webhooks")
    assert listing["total"] == 2 and "secret" not in listing["webhooks"][0]

    _s, agents = await env.call("GET", "/v1/agents")
    async with ApiClient(env.api_url, env.key) as client:
        call = await client.create_call(agent_id=agents["agents"][0]["id"])
        call_id = call["id"]
        events = [
            {"idempotency_key": f"{call_id}:event:1", "seq": 1, "type": "call.status",
             "at": time.time(), "data": {"status": "ringing"}},
            {"idempotency_key": f"{call_id}:event:2", "seq": 2, "type": "dtmf",
             "at": time.time(), "data": {"digit": "5"}},
        ]
        segment = {"idempotency_key": f"{call_id}:transcript:1", "seq": 1, "role": "user",
                   "text": "hello", "start": 0.5, "end": 1.0, "turn_id": 1}
        await client.post_events(call_id, events)
        await client.post_transcript(call_id, [segment])
        await client.post_summary(call_id, {"summary": "Said hello.", "outcome": "resolved",
                                            "sentiment": "neutral", "extracted": {}})
        # a retried ingest batch adds nothing new
        await client.post_events(call_id, events)

    def ok_ids() -> set[str]:
        return {h[1]["Rymi-Webhook-Id"] for h in env.receiver.hits if h[3] == 204}

    await wait_for(lambda: len(ok_ids()) == 3)
    await asyncio.sleep(3 * BACKOFF_S)  # nothing more should arrive
    types = {}
    for _at, headers, body, _status in env.receiver.hits:
        envelope = json.loads(body)
        types[headers["Rymi-Webhook-Id"]] = envelope["type"]
        assert envelope["id"] == headers["Rymi-Webhook-Id"]
        assert envelope["call_id"] == call_id
        # the documented signature, computed independently
        timestamp = headers["Rymi-Webhook-Timestamp"]
        expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                            hashlib.sha256).hexdigest()
        assert headers["Rymi-Webhook-Signature"] == f"v1={expected}"
        assert verify_signature(secret, headers, body)
        assert not verify_signature("whsec_wrong", headers, body)
        assert not verify_signature(secret, headers, body + b" ")
    assert sorted(types.values()) == ["call.status", "call.summary", "transcript.segment"]
    successes = [h for h in env.receiver.hits if h[3] == 204]
    assert len(successes) == 3  # once each, although the first two attempts failed

    # the first event was retried: same id, attempts 1, 2, 3, spaced by the back-off
    first = env.receiver.hits[0][1]["Rymi-Webhook-Id"]
    tries = [h for h in env.receiver.hits if h[1]["Rymi-Webhook-Id"] == first]
    assert [h[1]["Rymi-Webhook-Attempt"] for h in tries][:3] == ["1", "2", "3"]
    assert tries[1][0] - tries[0][0] >= 0.75 * BACKOFF_S
    assert tries[2][0] - tries[1][0] >= 1.5 * BACKOFF_S

    status, page = await env.call("GET", f"/v1/webhooks/{hook['id']}/deliveries")
    assert status == 200 and page["total"] == 3
    assert all(d["state"] == "delivered" for d in page["deliveries"])
    assert [d["attempts"] for d in page["deliveries"]] == [3, 3, 3]

    status, _ = await env.call("DELETE", f"/v1/webhooks/{hook['id']}")
    assert status == 200
    status, body = await env.call("GET", f"/v1/webhooks/{hook['id']}")
    assert status == 404


async def test_webhook_input_is_validated_and_secrets_rotate(env: Env) -> None:
    status, body = await env.call("POST", "/v1/webhooks", {"url": "ftp://example"})
    assert status == 400 and body["detail"][0]["field"] == "url"
    status, body = await env.call("POST", "/v1/webhooks",
                                  {"url": env.receiver.url, "events": ["bad type!"]})
    assert status == 400 and body["detail"][0]["field"] == "events"
    status, hook = await env.call("PATCH", "/v1/webhooks/wh_0000", {"enabled": True})
    assert status == 404
    status, hook = await env.call("POST", "/v1/webhooks", {"url": env.receiver.url})
    status, rotated = await env.call("PATCH", f"/v1/webhooks/{hook['id']}",
                                     {"rotate_secret": True})
    assert status == 200 and rotated["secret"] != hook["secret"]
