"""A real worker (embedded /v1 API, carrier credentials set) and helpers to drive its calls."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from runtime.server import Worker
from runtime.settings import WorkerSettings
from tests.carriers.clients import (
    CarrierCaller,
    PlivoCaller,
    TelnyxCaller,
    TwilioCaller,
    VonageCaller,
)
from tests.support.speech import speech

CARRIERS = ("twilio", "plivo", "vonage", "telnyx")
TWILIO_TOKEN = "twilio-auth-token-for-tests-0123456789"
PLIVO_TOKEN = "plivo-auth-token-for-tests-0123456789"
VONAGE_SECRET = "vonage-signature-secret-for-tests-0123456789"
VONAGE_API_KEY = "vonagekey"
TELNYX_KEY = Ed25519PrivateKey.generate()
TELNYX_PUBLIC = base64.b64encode(
    TELNYX_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def worker_settings(data_dir: Path, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "host": "127.0.0.1", "port": 0, "data_dir": data_dir, "max_calls": 50,
        "twilio_auth_token": TWILIO_TOKEN, "plivo_auth_token": PLIVO_TOKEN,
        "vonage_signature_secret": VONAGE_SECRET, "vonage_api_key": VONAGE_API_KEY,
        "telnyx_public_key": TELNYX_PUBLIC,
    }
    values.update(overrides)
    return WorkerSettings(**values)


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    w = Worker(worker_settings(tmp_path / "data"), embedded_api=True)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


def make_caller(carrier: str, worker: Worker, agent_id: str, **kwargs: Any) -> CarrierCaller:
    if carrier == "twilio":
        return TwilioCaller(worker.url, agent_id, auth_token=TWILIO_TOKEN, **kwargs)
    if carrier == "plivo":
        return PlivoCaller(worker.url, agent_id, auth_token=PLIVO_TOKEN, **kwargs)
    if carrier == "vonage":
        return VonageCaller(worker.url, agent_id, signature_secret=VONAGE_SECRET,
                            api_key=VONAGE_API_KEY, **kwargs)
    if carrier == "telnyx":
        return TelnyxCaller(worker.url, agent_id, private_key=TELNYX_KEY, **kwargs)
    raise ValueError(carrier)


def speech_for(caller: CarrierCaller, text: str) -> bytes:
    """espeak-ng speech in the caller's stream format."""
    fmt = caller.format
    if fmt.encoding == "mulaw":
        return speech(text, rate=fmt.sample_rate, encoding="u-law", bits=8)
    if fmt.encoding == "alaw":
        return speech(text, rate=fmt.sample_rate, encoding="a-law", bits=8)
    return speech(text, rate=fmt.sample_rate)


async def api_get(worker: Worker, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(
        f"{worker.url}{path}", headers={"Authorization": f"Bearer {worker.api_key}"}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def api_post(worker: Worker, path: str, body: Any) -> Any:
    async with aiohttp.ClientSession() as session, session.post(
        f"{worker.url}{path}", json=body, headers={"Authorization": f"Bearer {worker.api_key}"}
    ) as resp:
        assert resp.status in (200, 201), await resp.text()
        return await resp.json()


async def default_agent_id(worker: Worker) -> str:
    agents = (await api_get(worker, "/v1/agents"))["agents"]
    return str(agents[0]["id"])


async def find_call(worker: Worker, carrier_call_id: str, timeout: float = 20) -> dict[str, Any]:
    """The API's call for a carrier call id (the worker puts it in the call's metadata)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        calls = (await api_get(worker, "/v1/calls?limit=200"))["calls"]
        for call in calls:
            if (call.get("metadata") or {}).get("carrier_call_id") == carrier_call_id:
                return dict(call)
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no call for {carrier_call_id}")


def event_time(event: dict[str, Any]) -> float:
    at = event["at"]
    if isinstance(at, int | float):
        return float(at)
    return datetime.fromisoformat(str(at).replace("Z", "+00:00")).timestamp()


async def events(worker: Worker, call_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = await api_get(worker, f"/v1/calls/{call_id}/events?limit=200&offset={len(out)}")
        out.extend(page["events"])
        if len(out) >= page["total"] or not page["events"]:
            return out


async def wait_event(worker: Worker, call_id: str, type_: str, timeout: float,
                     **match: Any) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for event in await events(worker, call_id):
            data = event["data"]
            if event["type"] == type_ and all(data.get(k) == v for k, v in match.items()):
                return event
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no {type_} {match} within {timeout} s")


async def transcript(worker: Worker, call_id: str) -> list[dict[str, Any]]:
    return list((await api_get(worker, f"/v1/calls/{call_id}/transcript?limit=200"))["segments"])


async def wait_status(worker: Worker, call_id: str, statuses: tuple[str, ...],
                      timeout: float = 15) -> dict[str, Any]:
    end = time.monotonic() + timeout
    call: dict[str, Any] = {}
    while time.monotonic() < end:
        call = await api_get(worker, f"/v1/calls/{call_id}")
        if call["status"] in statuses:
            return call
        await asyncio.sleep(0.1)
    raise TimeoutError(f"call {call_id} still {call.get('status')}")
