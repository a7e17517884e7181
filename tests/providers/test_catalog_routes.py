"""``/v1/agents/llm-options``, ``/v1/languages`` and the ElevenLabs voice catalogue, served
from the registry over a real loopback socket."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runtime.local_api.catalog import add_catalog_routes
from tests.fakes._base import Faults
from tests.fakes.elevenlabs_server import FakeElevenLabsServer

KEY = "rymi_test_0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
Factory = Callable[[dict[str, str]], Any]


@pytest.fixture
async def client_for() -> AsyncIterator[Factory]:
    clients: list[TestClient[Any, Any]] = []

    async def make(credentials: dict[str, str]) -> TestClient[Any, Any]:
        app = web.Application()
        add_catalog_routes(app, api_key=lambda: KEY, credentials=lambda: credentials)
        client: TestClient[Any, Any] = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for c in clients:
        await c.close()


async def test_requires_the_api_key(client_for: Factory) -> None:
    client = await client_for({})
    for path in (
        "/v1/agents/llm-options",
        "/v1/languages",
        "/v1/voice-providers/elevenlabs/voices",
    ):
        resp = await client.get(path, headers={"Authorization": "Bearer wrong"})
        assert resp.status == 401 and (await resp.json())["error"]


async def test_llm_options_from_the_registry(client_for: Factory) -> None:
    client = await client_for({"OPENAI_API_KEY": "sk-x"})
    body = await (await client.get("/v1/agents/llm-options", headers=AUTH)).json()
    llm = {item["name"]: item for item in body["llm"]}
    assert llm["openai"]["available"] and "gpt-4o-mini" in llm["openai"]["models"]
    assert llm["playbook"]["available"] and llm["playbook"]["offline"]
    tts = {item["name"]: item for item in body["tts"]}
    assert not tts["elevenlabs"]["available"]
    assert tts["elevenlabs"]["missing_credentials"] == ["ELEVENLABS_API_KEY"]
    assert {i["name"] for i in body["stt"]} >= {"deepgram", "pocketsphinx"}
    assert "sk-x" not in str(body)


async def test_languages_with_pagination(client_for: Factory) -> None:
    client = await client_for({})
    body = await (await client.get("/v1/languages", headers=AUTH)).json()
    by_code = {lang["code"]: lang for lang in body["languages"]}
    assert by_code["fr"]["name"] == "French" and "deepgram" in by_code["fr"]["stt"]
    assert by_code["en-GB"]["name"] == "English (GB)"
    assert "pocketsphinx" in by_code["en"]["stt"] and "elevenlabs" in by_code["en"]["tts"]
    assert body["total"] == len(body["languages"]) and body["offset"] == 0
    page = await (await client.get("/v1/languages?limit=2&offset=1", headers=AUTH)).json()
    assert [x["code"] for x in page["languages"]] == [x["code"] for x in body["languages"][1:3]]
    assert page["limit"] == 2 and page["total"] == body["total"]
    bad = await client.get("/v1/languages?limit=0", headers=AUTH)
    assert bad.status == 400


async def test_elevenlabs_voice_catalogue(client_for: Factory) -> None:
    async with FakeElevenLabsServer(api_key="el-key-123456") as srv:
        creds = {"ELEVENLABS_API_KEY": "el-key-123456", "ELEVENLABS_BASE_URL": srv.base_url}
        client = await client_for(creds)
        resp = await client.get("/v1/voice-providers/elevenlabs/voices", headers=AUTH)
        body = await resp.json()
        assert resp.status == 200 and body["total"] == 2
        assert body["voices"][0]["id"] == "21m00Tcm4TlvDq8ikWAM"
        srv.faults = Faults(fail_status=429, retry_after="6")
        resp = await client.get("/v1/voice-providers/elevenlabs/voices", headers=AUTH)
        assert resp.status == 429 and resp.headers["Retry-After"] == "6"
        assert (await resp.json())["code"] == "rate_limited"
        srv.faults = Faults(fail_status=402)
        resp = await client.get("/v1/voice-providers/elevenlabs/voices", headers=AUTH)
        assert resp.status == 402 and (await resp.json())["code"] == "insufficient_credits"
    unconfigured = await client_for({})
    resp = await unconfigured.get("/v1/voice-providers/elevenlabs/voices", headers=AUTH)
    assert resp.status == 400 and (await resp.json())["code"] == "provider_not_configured"
