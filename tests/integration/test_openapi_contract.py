"""docs/openapi.yaml is the contract: the local API answers as it says (schemathesis
fuzzes every operation of a real API process), and every request the worker's ApiClient
and outbox send conforms to it (bodies validated against the request schemas)."""

from __future__ import annotations

import io
import json
import re
import secrets
import time
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hypothesis
import jsonschema
import pytest
import schemathesis
import yaml
from aiohttp import web
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from runtime.api_client import ApiClient, ApiError
from runtime.local_api.app import create_local_api
from runtime.local_api.contract import add_contract_routes
from runtime.local_api.store import LocalStore
from runtime.outbox import Outbox, OutboxDeliverer
from tests.support.processes import Process, api_process

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO / "docs" / "openapi.yaml"
SPEC: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
KEY = f"rymi_{secrets.token_hex(24)}"

schema = schemathesis.openapi.from_path(SPEC_PATH).exclude(
    # a long-poll: examples with wait=30 would each take 30 s (tests/integration/
    # test_hosted_control.py exercises it)
    operation_id="workerHeartbeat",
)
schemathesis.serializer.alias("audio/wav", "application/octet-stream")
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


def test_spec_is_valid_and_agent_schemas_are_current() -> None:
    from openapi_spec_validator import validate

    validate(SPEC)
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "scripts/openapi_agent_schemas.py", "--check"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("openapi-api")
    proc: Process = api_process(data, KEY)
    proc.start()
    try:
        yield proc.url
    finally:
        proc.stop()


@schema.parametrize()
@hypothesis.settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
)
def test_local_api_conforms(case: schemathesis.Case, api_url: str) -> None:
    case.call_and_validate(base_url=api_url, headers={"Authorization": f"Bearer {KEY}"},
                           checks=CHECKS)


# --------------------------------------------------------------------------- requests

SPEC_URI = "urn:rymi:openapi"
_registry = Registry().with_resource(SPEC_URI, Resource.from_contents(SPEC, DRAFT202012))


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _operation(method: str, path: str) -> tuple[str, dict[str, Any]]:
    """The spec's path template and operation for a concrete request (fixed paths win)."""
    candidates = sorted(SPEC["paths"].items(), key=lambda kv: kv[0].count("{"))
    for template, item in candidates:
        pattern = "^" + re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return template, dict(item[method.lower()])
    raise AssertionError(f"{method} {path} is not in docs/openapi.yaml")


def check_request(method: str, path: str, content_type: str | None, body: bytes) -> None:
    template, operation = _operation(method, path)
    spec_body = operation.get("requestBody")
    if not body:
        assert spec_body is None or not spec_body.get("required"), f"{method} {path}: no body"
        return
    assert spec_body is not None, f"{method} {path} sends a body the spec does not describe"
    media = (content_type or "").split(";")[0]
    assert media in spec_body["content"], f"{method} {path}: {media} not in the spec"
    if media != "application/json":
        return
    where = _pointer("paths", template, method.lower(), "requestBody", "content", media,
                     "schema")
    validator = jsonschema.Draft202012Validator({"$ref": f"{SPEC_URI}#{where}"},
                                                registry=_registry)
    errors = sorted(validator.iter_errors(json.loads(body)), key=str)
    assert not errors, f"{method} {path}: {errors[0].message} at {list(errors[0].path)}"


@pytest.fixture
async def recorded_api(tmp_path: Path) -> AsyncIterator[tuple[str, str, list[Any]]]:
    store = LocalStore(tmp_path / "api.sqlite3")
    key, _ = store.ensure_dev_key()
    app = create_local_api(store)
    add_contract_routes(app, store, webhook_allow_hosts=("127.0.0.1",))
    seen: list[tuple[str, str, str | None, bytes]] = []

    @web.middleware
    async def capture(request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read() if request.content_type != "audio/wav" else b"<wav>"
        seen.append((request.method, request.path, request.headers.get("Content-Type"), body))
        return await handler(request)

    app.middlewares.insert(0, capture)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", key, seen
    await runner.cleanup()


def wav_file(path: Path) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\0\0" * 3200)
    return path


async def test_every_request_of_the_worker_conforms(
    recorded_api: tuple[str, str, list[Any]], tmp_path: Path
) -> None:
    url, key, seen = recorded_api
    async with ApiClient(url, key) as client:
        agent_id = (await client.request("GET", "/v1/agents"))[2]["agents"][0]["id"]
        await client.get_agent(agent_id)
        await client.get_agent(agent_id)  # revalidation with If-None-Match
        await client.create_call(agent_id=agent_id, transport="twilio", from_="+15550100",
                                 to="+15550199", metadata={"k": 1}, worker_id="w-1")
        await client.dnc_check("+1 555 0100")
        commands = await client.worker_heartbeat(
            "w-1", {"max_calls": 4, "active_calls": 0, "draining": False, "load": 0.0,
                    "calls": []}, wait_s=0.1)
        assert commands == []
        with pytest.raises(ApiError):
            await client.ack_command("w-1", "cmd_0000")

        # what the outbox sends, from real outbox items
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        call_id = f"call_{secrets.token_hex(12)}"
        outbox.enqueue_call(call_id, {"agent_id": agent_id, "direction": "outbound",
                                      "transport": "local", "to": "+15550199",
                                      "worker_id": "w-1", "metadata": {"a": "b"}})
        outbox.enqueue_event(call_id, "call.status", {"status": "ringing", "worker_id": "w-1",
                                                      "carrier_call_id": None})
        outbox.enqueue_event(call_id, "turn.metrics", {"turn_id": 1, "marks": {"x": None},
                                                       "durations_ms": {"y": float("nan")}})
        outbox.enqueue_transcript(call_id, {"role": "user", "text": "hi", "start": 1.0,
                                            "end": 1.5, "turn_id": 1, "interrupted": False})
        outbox.enqueue_summary(call_id, {"summary": "s", "outcome": "resolved",
                                         "sentiment": "neutral", "extracted": {"a": None},
                                         "provider": "playbook", "model": None,
                                         "generated_at": time.time(), "source": "worker",
                                         "transcript_segments": 1})
        recording = wav_file(tmp_path / f"{call_id}.wav")
        outbox.enqueue_recording(call_id, {"path": str(recording), "content_type": "audio/wav",
                                           "duration_s": 0.2, "channels": 2,
                                           "sample_rate": 16000, "bytes": 12844})
        deliverer = OutboxDeliverer(outbox, client)
        await deliverer.start()
        assert await deliverer.flush(timeout=20)
        await deliverer.stop()
        assert outbox.dead_count() == 0
        outbox.close()
        assert not recording.exists()  # the outbox deleted its copy once delivered

    kinds = {(m, re.sub(r"call_[0-9a-f]+", "{call}", p)) for m, p, _c, _b in seen}
    for expected in [("POST", "/v1/calls"), ("POST", "/v1/calls/{call}/events"),
                     ("POST", "/v1/calls/{call}/transcript"),
                     ("POST", "/v1/calls/{call}/summary"),
                     ("PUT", "/v1/calls/{call}/recording"), ("POST", "/v1/dnc/check")]:
        assert expected in kinds, expected
    for method, path, content_type, body in seen:
        check_request(method, path, content_type, body)


def test_the_checker_catches_a_bad_body() -> None:
    with pytest.raises(AssertionError, match="seq"):
        check_request("POST", "/v1/calls/call_abc/events", "application/json",
                      json.dumps({"events": [{"idempotency_key": "k", "seq": -1,
                                              "type": "x", "at": 1}]}).encode())
    with pytest.raises(AssertionError):
        check_request("POST", "/v1/calls", "application/json",
                      json.dumps({"agent_id": "a", "id": "nope"}).encode())
    buf = io.BytesIO()
    check_request("PUT", "/v1/calls/call_abc/recording", "audio/wav", buf.getvalue() or b"x")
