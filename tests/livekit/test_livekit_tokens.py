"""POST /v1/realtime/token and /v1/webrtc/token, and publishable keys, over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from livekit import api
from livekit.api.access_token import Claims
from pydantic import SecretStr

from runtime.local_api.app import add_local_api_routes
from runtime.local_api.realtime import mount_realtime_routes
from runtime.local_api.store import LocalStore
from runtime.settings import WorkerSettings

LK_KEY = "APItokens"
LK_SECRET = "a-livekit-secret-that-is-long-enough-123"


@dataclass
class Api:
    url: str
    secret_key: str
    agent_id: str
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, key: str | None, body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.session.request(
            method, f"{self.url}{path}", headers=headers,
            data=None if body is None else json.dumps(body),
        ) as resp:
            return resp.status, await resp.json()


async def _serve(tmp_path: Path, settings: WorkerSettings) -> AsyncIterator[Api]:
    store = LocalStore(tmp_path / "api.sqlite3")
    key, _ = store.ensure_dev_key()
    app = web.Application()
    add_local_api_routes(app, store)
    mount_realtime_routes(app, store, settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}"
        async with session.get(f"{url}/v1/agents",
                               headers={"Authorization": f"Bearer {key}"}) as resp:
            agent_id = (await resp.json())["agents"][0]["id"]
        yield Api(url, key, agent_id, session)
    await runner.cleanup()


@pytest.fixture
async def api_server(tmp_path: Path) -> AsyncIterator[Api]:
    settings = WorkerSettings(
        data_dir=tmp_path,
        livekit_url="ws://127.0.0.1:7880",
        livekit_api_key=SecretStr(LK_KEY),
        livekit_api_secret=SecretStr(LK_SECRET),
        livekit_agent_name="rymi-test-agent",
    )
    async for served in _serve(tmp_path, settings):
        yield served


def claims(token: str) -> Claims:
    return api.TokenVerifier(LK_KEY, LK_SECRET).verify(token)


@pytest.mark.parametrize("path", ["/v1/realtime/token", "/v1/webrtc/token"])
async def test_secret_key_gets_a_room_scoped_token_that_dispatches_the_agent(
    api_server: Api, path: str
) -> None:
    status, body = await api_server.call("POST", path, api_server.secret_key,
                                         {"agent_id": api_server.agent_id, "name": "Ada"})
    assert status == 201, body
    assert body["url"] == "ws://127.0.0.1:7880"
    assert body["room"] == f"rymi-{body['call_id']}"
    grant = claims(body["token"])
    assert grant.identity == body["identity"] and grant.name == "Ada"
    assert grant.video is not None
    assert grant.video.room_join and grant.video.room == body["room"]
    assert not grant.video.room_admin and not grant.video.room_create
    assert grant.video.can_publish_sources == ["microphone"]
    assert grant.room_config is not None
    (dispatch,) = grant.room_config.agents
    assert dispatch.agent_name == "rymi-test-agent"
    assert json.loads(dispatch.metadata) == {"agent_id": api_server.agent_id,
                                             "call_id": body["call_id"]}

    status, call = await api_server.call("GET", f"/v1/calls/{body['call_id']}",
                                         api_server.secret_key)
    assert status == 200
    assert call["status"] == "queued" and call["transport"] == "livekit"
    assert call["agent_id"] == api_server.agent_id and call["from"] == body["identity"]


async def test_secret_key_may_join_an_open_call_with_its_own_identity(api_server: Api) -> None:
    _, first = await api_server.call("POST", "/v1/realtime/token", api_server.secret_key,
                                     {"agent_id": api_server.agent_id})
    status, body = await api_server.call(
        "POST", "/v1/realtime/token", api_server.secret_key,
        {"call_id": first["call_id"], "identity": "supervisor-1", "ttl_s": 120},
    )
    assert status == 201, body
    assert body["call_id"] == first["call_id"] and body["room"] == first["room"]
    grant = claims(body["token"])
    assert grant.identity == "supervisor-1" and grant.video is not None
    assert grant.video.room == first["room"]


async def test_publishable_key_may_only_create_calls(api_server: Api) -> None:
    status, created = await api_server.call("POST", "/v1/keys/publishable",
                                            api_server.secret_key, {"name": "site"})
    assert status == 201, created
    key = created["key"]
    assert key.startswith("sb_publishable_")

    status, body = await api_server.call("POST", "/v1/realtime/token", key,
                                         {"agent_id": api_server.agent_id})
    assert status == 201, body
    grant = claims(body["token"]).video
    assert grant is not None and grant.room == body["room"]
    _, call = await api_server.call("GET", f"/v1/calls/{body['call_id']}", api_server.secret_key)
    assert call["metadata"]["publishable_key_id"] == created["id"]

    for extra in ({"call_id": body["call_id"]}, {"identity": "someone-else"}, {"ttl_s": 3600}):
        status, err = await api_server.call("POST", "/v1/realtime/token", key,
                                            {"agent_id": api_server.agent_id, **extra})
        assert status == 403 and err["code"] == "forbidden", (extra, err)

    # and it is no key for the rest of the API
    status, err = await api_server.call("GET", "/v1/agents", key)
    assert status == 401
    status, err = await api_server.call("POST", "/v1/keys/publishable", key, {})
    assert status == 403 and "error" in err


async def test_publishable_key_limited_to_some_agents(api_server: Api) -> None:
    _, other = await api_server.call("POST", "/v1/agents", api_server.secret_key,
                                     {"name": "other agent"})
    assert "id" in other, other
    _, created = await api_server.call("POST", "/v1/keys/publishable", api_server.secret_key,
                                       {"agent_ids": [api_server.agent_id]})
    key = created["key"]
    status, _ = await api_server.call("POST", "/v1/webrtc/token", key,
                                      {"agent_id": api_server.agent_id})
    assert status == 201
    status, err = await api_server.call("POST", "/v1/webrtc/token", key,
                                        {"agent_id": other["id"]})
    assert status == 403 and err["code"] == "forbidden"

    status, listing = await api_server.call("GET", "/v1/keys/publishable", api_server.secret_key)
    assert status == 200 and [k["id"] for k in listing["keys"]] == [created["id"]]
    assert "key" not in listing["keys"][0] and key not in json.dumps(listing)
    status, _ = await api_server.call("DELETE", f"/v1/keys/publishable/{created['id']}",
                                      api_server.secret_key)
    assert status == 200
    status, err = await api_server.call("POST", "/v1/webrtc/token", key,
                                        {"agent_id": api_server.agent_id})
    assert status == 401


async def test_errors_follow_the_api_conventions(api_server: Api) -> None:
    cases: list[tuple[str | None, Any, int, str]] = [
        (None, {"agent_id": api_server.agent_id}, 401, "unauthorized"),
        ("rymi_not-a-real-key-123456", {"agent_id": api_server.agent_id}, 401, "unauthorized"),
        ("sb_publishable_unknown", {"agent_id": api_server.agent_id}, 401, "unauthorized"),
        (api_server.secret_key, {}, 400, "validation_error"),
        (api_server.secret_key, {"agent_id": "agt_missing"}, 404, "agent_not_found"),
        (api_server.secret_key, {"agent_id": api_server.agent_id, "bogus": 1}, 400,
         "validation_error"),
        (api_server.secret_key, {"call_id": "call_nope"}, 404, "not_found"),
        (api_server.secret_key, [1, 2], 400, "malformed_json"),
    ]
    for key, body, status, code in cases:
        got, err = await api_server.call("POST", "/v1/realtime/token", key, body)
        assert (got, err.get("code")) == (status, code), (key, body, err)
        assert isinstance(err["error"], str)


async def test_without_livekit_settings_the_endpoint_says_so(tmp_path: Path) -> None:
    async for served in _serve(tmp_path, WorkerSettings(data_dir=tmp_path)):
        status, err = await served.call("POST", "/v1/realtime/token", served.secret_key,
                                        {"agent_id": served.agent_id})
        assert status == 503 and err["code"] == "livekit_not_configured"
