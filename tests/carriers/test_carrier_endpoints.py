"""The carrier HTTP surface: who gets in (signatures, tickets, insecure_dev) and how a
stream that cannot become a call is turned away. Real worker, real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runtime.carriers import auth
from runtime.carriers.auth import ReplayCache, StreamTickets
from runtime.server import Worker
from runtime.transports import carriers as transport
from tests.carriers.clients import PlivoCaller, TwilioCaller, VonageCaller
from tests.carriers.harness import (
    CARRIERS,
    TELNYX_KEY,
    VONAGE_SECRET,
    api_get,
    find_call,
    make_caller,
    worker,
    worker_settings,
)
from tests.carriers.harness import default_agent_id as agent_of

pytestmark = pytest.mark.e2e
__all__ = ["worker"]


async def post(url: str, *, data: Any = None, headers: dict[str, str] | None = None,
               method: str = "POST") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(
        method, url, data=data, headers=headers or {}
    ) as resp:
        return resp.status, await resp.text()


async def ws_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a WebSocket upgrade (101 when accepted)."""
    async with aiohttp.ClientSession() as session:
        try:
            ws = await session.ws_connect(url, headers=headers or {})
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


@pytest.mark.parametrize("carrier", CARRIERS)
async def test_unsigned_and_forged_answer_webhooks_are_refused(
    worker: Worker, carrier: str
) -> None:
    url = f"{worker.url}/v1/carriers/{carrier}/answer?agent_id=agt_x"
    form = {"CallSid": "CA1", "From": "+1", "To": "+2"}
    status, body = await post(url, data=form)
    assert status == 401 and json.loads(body)["code"] == "unauthorized"
    forged = {
        "twilio": {"X-Twilio-Signature": auth.sign_twilio("wrong-token", url, form)},
        "plivo": {"X-Plivo-Signature-V3": "AAAA", "X-Plivo-Signature-V3-Nonce": "1"},
        "vonage": {"Authorization": "Bearer " + auth.sign_vonage("x" * 40, b"", now=time.time())},
        "telnyx": {"telnyx-signature-ed25519": base64.b64encode(b"\0" * 64).decode(),
                   "telnyx-timestamp": str(int(time.time()))},
    }[carrier]
    status, body = await post(url, data=form, headers=forged)
    assert status == 403 and json.loads(body)["code"] == "forbidden"


async def test_stale_and_replayed_requests_are_refused(worker: Worker) -> None:
    agent_id = await agent_of(worker)
    # Vonage: a JWT issued an hour ago
    url = f"{worker.url}/v1/carriers/vonage/answer?agent_id={agent_id}"
    old = auth.sign_vonage(VONAGE_SECRET, b"", now=time.time() - 3600, api_key="vonagekey")
    status, body = await post(url, method="GET", headers={"Authorization": f"Bearer {old}"})
    assert status == 403 and "stale" in body
    # Telnyx: a signature over an old timestamp
    url = f"{worker.url}/v1/carriers/telnyx/answer?agent_id={agent_id}"
    stamp = str(int(time.time()) - 3600)
    body_bytes = b"CallSid=v3%3Ax"
    signature = base64.b64encode(TELNYX_KEY.sign(stamp.encode() + b"|" + body_bytes)).decode()
    status, body = await post(url, data=body_bytes, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "telnyx-signature-ed25519": signature, "telnyx-timestamp": stamp})
    assert status == 403 and "stale" in body
    # Plivo: the same signed request twice (same nonce)
    caller = make_caller("plivo", worker, agent_id, connect=False)
    assert isinstance(caller, PlivoCaller)
    async with caller:
        from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

        url = caller.answer_url()
        form = {"CallUUID": "u-1", "From": "1", "To": "2"}
        sig = get_signature_v3(caller.auth_token.encode(),
                               construct_post_url(url, dict(form)).decode(), b"42").decode()
        headers = {"X-Plivo-Signature-V3": sig, "X-Plivo-Signature-V3-Nonce": "42"}
        assert (await post(url, data=form, headers=headers))[0] == 200
        status, body = await post(url, data=form, headers=headers)
        assert status == 403 and "replayed" in body


@pytest.mark.parametrize("carrier", ["plivo", "vonage", "telnyx"])
async def test_streams_need_a_fresh_single_use_ticket(worker: Worker, carrier: str) -> None:
    base = f"{worker.url.replace('http', 'ws')}/v1/carriers/{carrier}/stream"
    assert await ws_status(base) == 401
    assert await ws_status(f"{base}?ticket=not-a-ticket") == 403
    tickets = StreamTickets(auth.derive_stream_secret(worker.api_key), ttl_s=60,
                            replay=ReplayCache())
    stale = tickets.issue(carrier, {"agent_id": "agt_x"}, now=time.time() - 3600)
    assert await ws_status(f"{base}?ticket={stale}") == 403
    other = tickets.issue("twilio" if carrier != "twilio" else "plivo", {"agent_id": "agt_x"},
                          now=time.time())
    assert await ws_status(f"{base}?ticket={other}") == 403
    # the ticket from a signed answer works once
    agent_id = await agent_of(worker)
    async with make_caller(carrier, worker, agent_id) as caller:
        await find_call(worker, caller.carrier_call_id)
        assert await ws_status(caller.stream_url) == 403  # already used
        await caller.hang_up()


async def test_a_twilio_stream_needs_twilios_signature(worker: Worker) -> None:
    url = f"{worker.url.replace('http', 'ws')}/v1/carriers/twilio/stream"
    assert await ws_status(url) == 401
    forged = auth.sign_twilio("wrong-token", url, {})
    assert await ws_status(url, {"X-Twilio-Signature": forged}) == 403


async def test_a_vonage_stream_may_carry_vonages_own_jwt(worker: Worker) -> None:
    agent_id = await agent_of(worker)
    caller = make_caller("vonage", worker, agent_id, connect=False)
    assert isinstance(caller, VonageCaller)
    async with caller:
        caller._parse_answer(await caller.answer())
        # as with NCCO ``authorization: {"type": "vonage"}``: a signed JWT on the upgrade
        plain = caller.stream_url.split("?")[0]
        caller.stream_url = plain
        await caller.open_stream({"Authorization": f"Bearer {caller._jwt()}"})
        await caller._send_start()
        ws = caller._ws
        assert ws is not None
        msg = await ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.BINARY  # the greeting
        await ws.close()


async def test_answer_needs_an_agent_and_a_known_format(worker: Worker) -> None:
    caller = make_caller("twilio", worker, "", connect=False)
    async with caller:
        with pytest.raises(RuntimeError, match="400"):
            await caller.answer()
    caller = make_caller("plivo", worker, "agt_x", connect=False, fmt="opus_48000")
    async with caller:
        with pytest.raises(RuntimeError, match="400"):
            await caller.answer()


async def test_each_answer_document_points_at_its_stream(worker: Worker) -> None:
    for carrier in CARRIERS:
        caller = make_caller(carrier, worker, "agt_1", connect=False)
        async with caller:
            caller._parse_answer(await caller.answer())
            assert caller.stream_url.startswith(
                f"{worker.url.replace('http', 'ws')}/v1/carriers/{carrier}/stream")
            if carrier == "twilio":
                assert isinstance(caller, TwilioCaller)
                assert caller.parameters["agent_id"] == "agt_1"
                assert caller.parameters["carrier_call_id"] == caller.carrier_call_id


@pytest.fixture
async def unconfigured(tmp_path: Path) -> AsyncIterator[Worker]:
    w = Worker(worker_settings(tmp_path / "u", twilio_auth_token=None, plivo_auth_token=None,
                               vonage_signature_secret=None, telnyx_public_key=None),
               embedded_api=True)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


async def test_a_carrier_without_credentials_is_refused_not_opened(unconfigured: Worker) -> None:
    for carrier in CARRIERS:
        url = f"{unconfigured.url}/v1/carriers/{carrier}/answer?agent_id=agt_x"
        status, body = await post(url, data={"CallSid": "CA1"},
                                  headers={"X-Twilio-Signature": "x",
                                           "X-Plivo-Signature-V3": "x",
                                           "X-Plivo-Signature-V3-Nonce": "1",
                                           "Authorization": "Bearer x.y.z",
                                           "telnyx-signature-ed25519": "AAAA",
                                           "telnyx-timestamp": str(int(time.time()))})
        assert status == 503, (carrier, body)
        assert json.loads(body)["code"] == "carrier_not_configured"


@pytest.fixture
async def insecure(tmp_path: Path) -> AsyncIterator[Worker]:
    w = Worker(worker_settings(tmp_path / "i", insecure_dev=True, twilio_auth_token=None,
                               plivo_auth_token=None), embedded_api=True)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


async def test_insecure_dev_lets_unsigned_carriers_in(insecure: Worker) -> None:
    agent_id = await agent_of(insecure)
    ws_base = insecure.url.replace("http", "ws")
    # Twilio: unsigned webhook and upgrade; the agent comes from the stream's parameters
    status, twiml = await post(f"{insecure.url}/v1/carriers/twilio/answer?agent_id={agent_id}",
                               data={"CallSid": "CA9"})
    assert status == 200 and "<Stream" in twiml
    # Plivo: no ticket; the agent comes from the URL
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{ws_base}/v1/carriers/plivo/stream?agent_id={agent_id}")
        await ws.send_str(json.dumps({
            "event": "start", "sequenceNumber": 1,
            "start": {"callId": "dev-call-1", "streamId": "s1", "accountId": "MA",
                      "tracks": ["inbound"],
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}}}))
        msg = await ws.receive(timeout=20)
        assert msg.type == aiohttp.WSMsgType.TEXT and json.loads(msg.data)["event"] == "playAudio"
        await ws.close()
    call = await find_call(insecure, "dev-call-1")
    assert call["agent_id"] == agent_id


async def test_a_stream_that_never_starts_is_closed(worker: Worker,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "START_TIMEOUT_S", 0.5)
    caller = make_caller("twilio", worker, "agt_x", connect=False)
    async with caller:
        caller._parse_answer(await caller.answer())
        await caller.open_stream()
        ws = caller._ws
        assert ws is not None
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_unsupported_format_or_unknown_agent_closes_without_a_call(worker: Worker) -> None:
    caller = make_caller("telnyx", worker, "agt_missing", connect=False)
    async with caller:
        caller._parse_answer(await caller.answer())
        await caller.open_stream()
        ws = caller._ws
        assert ws is not None
        await ws.send_str(json.dumps({"event": "connected", "version": "1.0.0"}))
        await ws.send_str(json.dumps({
            "event": "start", "sequence_number": "1", "stream_id": "s",
            "start": {"call_control_id": "v3:x",
                      "media_format": {"encoding": "G722", "sample_rate": 16000, "channels": 1}}}))
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    # an agent that does not exist: the stream is closed, the API has no such call
    async with make_caller("twilio", worker, "agt_missing", connect=False) as caller:
        caller._parse_answer(await caller.answer())
        await caller.open_stream()
        await caller._send_start()
        ws = caller._ws
        assert ws is not None
        msg = await asyncio.wait_for(ws.receive(), 20)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    calls = (await api_get(worker, "/v1/calls?limit=200"))["calls"]
    assert not [c for c in calls if (c.get("metadata") or {}).get("carrier_call_id") == "v3:x"]
