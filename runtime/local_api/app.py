"""HTTP routes of the embedded ``/v1`` API (docs/api.md), following the public API's
conventions: Bearer secret keys, ``{"error", "code"?, "detail"?}`` bodies, limit/offset
pagination, 400 naming the invalid field.

Mount them on the worker's app with :func:`add_local_api_routes`, or build a stand-alone
app with :func:`create_local_api`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Final, Literal, NoReturn

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from pipelines.agent_config import AgentConfig
from runtime.api_client import AGENT_ENVELOPE
from runtime.local_api.store import (
    CALL_STATUSES,
    Conflict,
    InvalidCursor,
    LocalStore,
    NotFound,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024 * 1024
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
MAX_BATCH: Final = 1000

LOCAL_STORE: Final = web.AppKey("rymi_local_store", LocalStore)

_AGENT_ID = r"{agent_id:agt_[A-Za-z0-9]+}"
_CALL_ID = r"{call_id:call_[A-Za-z0-9]+}"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------- errors


class ApiProblem(Exception):
    """Raised by handlers; rendered as ``{"error", "code"?, "detail"?}``."""

    def __init__(
        self, status: int, error: str, code: str | None = None, detail: Any = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.code = code
        self.detail = detail


def error_response(
    status: int,
    error: str,
    code: str | None = None,
    detail: Any = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {"error": error}
    if code is not None:
        body["code"] = code
    if detail is not None:
        body["detail"] = detail
    return web.json_response(body, status=status, headers=headers)


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("playbook", "intents", 0, "reply")`` → ``playbook.intents[0].reply``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def validation_problem(what: str, exc: ValidationError) -> ApiProblem:
    """400 whose message names the first wrong field; ``detail`` lists every error.
    Inputs are never echoed (they may hold keys)."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    detail = [
        {"field": field_path(tuple(e["loc"])) or "body", "message": e["msg"], "type": e["type"]}
        for e in errors
    ]
    first = detail[0] if detail else {"field": "body", "message": "invalid"}
    message = f"{what}: {first['field']}: {first['message']}"
    if len(detail) > 1:
        message += f" (and {len(detail) - 1} more)"
    return ApiProblem(400, message, "validation_error", detail)


def _field_problem(field: str, message: str) -> ApiProblem:
    return ApiProblem(
        400,
        f"invalid query: {field}: {message}",
        "validation_error",
        [{"field": field, "message": message, "type": "value_error"}],
    )


_STATUS_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Framework errors under ``/v1`` (unknown route, wrong method, body too large) get the
    API's JSON error shape instead of aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if (
            not request.path.startswith("/v1/")
            or exc.status < 400
            or exc.content_type != "text/plain"  # a body someone chose (JSON, TwiML...)
        ):
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        message = exc.reason.lower() if exc.status != 404 else "not found"
        return error_response(exc.status, message, _STATUS_CODES.get(exc.status), headers=headers)


# --------------------------------------------------------------------------- request models


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True)


class CallCreate(_Body):
    #: a worker may name the call itself (``call_`` + random): idempotent creation
    id: str | None = Field(default=None, pattern=r"^call_[A-Za-z0-9]{8,64}$")
    agent_id: str = Field(min_length=1, max_length=64)
    direction: Literal["inbound", "outbound"] = "inbound"
    transport: str = Field(default="local", pattern=r"^[a-z][a-z0-9_-]{0,31}$")
    from_: str | None = Field(default=None, alias="from", max_length=128)
    to: str | None = Field(default=None, max_length=128)
    metadata: dict[str, Any] = Field(default_factory=dict)
    worker_id: str | None = Field(default=None, max_length=128)


class StatusData(BaseModel):
    """``data`` of a ``call.status`` event; other fields are kept as sent."""

    model_config = ConfigDict(extra="allow")
    status: Literal["queued", "ringing", "in_progress", "completed", "failed"]
    reason: str | None = Field(default=None, max_length=2000)


class IngestEvent(_Body):
    idempotency_key: str = Field(min_length=1, max_length=200)
    seq: int = Field(ge=0)
    type: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    at: float = Field(ge=0)
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("data")
    @classmethod
    def _status_data(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.data.get("type") == "call.status":
            try:
                StatusData.model_validate(value)
            except ValidationError as exc:
                err = exc.errors(include_url=False, include_input=False)[0]
                raise ValueError(
                    f"call.status data.{field_path(tuple(err['loc']))}: {err['msg']}"
                ) from None
        return value


class EventBatch(_Body):
    events: list[IngestEvent] = Field(min_length=1, max_length=MAX_BATCH)


class IngestSegment(_Body):
    idempotency_key: str = Field(min_length=1, max_length=200)
    seq: int = Field(ge=0)
    role: Literal["user", "agent"]
    text: str = Field(max_length=100_000)
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    turn_id: int = Field(ge=0)
    interrupted: bool = False


class SegmentBatch(_Body):
    segments: list[IngestSegment] = Field(min_length=1, max_length=MAX_BATCH)


# --------------------------------------------------------------------------- helpers


def agent_etag(agent: Mapping[str, Any]) -> str:
    """Strong validator of the whole agent object (config and timestamps)."""
    canonical = json.dumps(agent, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _field_problem(name, "must be an integer") from None
    if not lo <= value <= hi:
        raise _field_problem(name, f"must be between {lo} and {hi}")
    return value


def _page(request: web.Request) -> tuple[int, int]:
    limit = _int_param(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(request, "offset", 0, 0, 2**31 - 1)
    return limit, offset


async def read_json(request: web.Request) -> Any:
    """The JSON body, or an ApiProblem: 413 past 1 MiB, 400 when empty or malformed."""
    too_large = ApiProblem(
        413, f"request body exceeds {MAX_BODY_BYTES} bytes", "payload_too_large"
    )
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise too_large
    try:
        raw = await request.read()  # bounded by the app's client_max_size
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    if len(raw) > MAX_BODY_BYTES:
        raise too_large
    if not raw.strip():
        raise ApiProblem(400, "request body must be a JSON object", "malformed_json")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiProblem(400, f"malformed JSON: {exc}", "malformed_json") from None


async def _json_object(request: web.Request) -> dict[str, Any]:
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiProblem(400, "request body must be a JSON object", "malformed_json")
    return body


def _not_found(kind: str, ident: str) -> NoReturn:
    raise ApiProblem(404, f"{kind} {ident} not found", "not_found")


def _agent_config(body: Mapping[str, Any]) -> AgentConfig:
    config = {k: v for k, v in body.items() if k not in AGENT_ENVELOPE}
    try:
        return AgentConfig.model_validate(config)
    except ValidationError as exc:
        raise validation_problem("invalid agent config", exc) from None


def _agent_response(agent: Mapping[str, Any], status: int = 200) -> web.Response:
    resp = web.json_response(agent, status=status)
    resp.etag = agent_etag(agent)
    return resp


def _accepted(new: int, duplicate: int) -> web.Response:
    return web.json_response(
        {"accepted": new + duplicate, "new": new, "duplicate": duplicate}, status=202
    )


# --------------------------------------------------------------------------- handlers


class _Routes:
    def __init__(self, store: LocalStore) -> None:
        self.store = store

    def guard(self, handler: Handler) -> Handler:
        """Bearer auth, then the handler; ApiProblem → JSON error."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            token = _bearer(request)
            if token is None or not self.store.verify_key(token):
                return error_response(
                    401,
                    "missing or invalid API key" if token is None else "invalid API key",
                    "unauthorized",
                    headers={"WWW-Authenticate": 'Bearer realm="rymi"'},
                )
            try:
                return await handler(request)
            except ApiProblem as exc:
                return error_response(exc.status, exc.error, exc.code, exc.detail)

        return wrapped

    # agents ------------------------------------------------------------------

    async def list_agents(self, request: web.Request) -> web.Response:
        limit, offset = _page(request)
        agents, total = await self.store.list_agents(limit=limit, offset=offset)
        return web.json_response(
            {"agents": agents, "total": total, "limit": limit, "offset": offset}
        )

    async def create_agent(self, request: web.Request) -> web.Response:
        config = _agent_config(await _json_object(request))
        agent = await self.store.create_agent(config)
        resp = _agent_response(agent, 201)
        resp.headers["Location"] = f"/v1/agents/{agent['id']}"
        return resp

    async def get_agent(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        agent = await self.store.get_agent(agent_id)
        if agent is None:
            _not_found("agent", agent_id)
        etag = agent_etag(agent)
        wanted = request.if_none_match or ()
        if any(tag.value in (etag, "*") for tag in wanted):
            resp = web.Response(status=304)
            resp.etag = etag
            return resp
        return _agent_response(agent)

    async def update_agent(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        body = await _json_object(request)
        patch = {k: v for k, v in body.items() if k not in AGENT_ENVELOPE}
        try:
            agent = await self.store.update_agent(agent_id, patch)
        except NotFound:
            _not_found("agent", agent_id)
        except ValidationError as exc:
            raise validation_problem("invalid agent config", exc) from None
        return _agent_response(agent)

    async def delete_agent(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        try:
            await self.store.delete_agent(agent_id)
        except NotFound:
            _not_found("agent", agent_id)
        except Conflict as exc:
            raise ApiProblem(409, str(exc), exc.code) from None
        return web.json_response({"id": agent_id, "deleted": True})

    # calls -------------------------------------------------------------------

    async def _list_calls(self, request: web.Request, agent_id: str | None) -> web.Response:
        limit, offset = _page(request)
        status = request.query.get("status") or None
        if status is not None and status not in CALL_STATUSES:
            raise _field_problem("status", f"must be one of {', '.join(CALL_STATUSES)}")
        cursor = request.query.get("cursor") or None
        try:
            calls, total, next_cursor = await self.store.list_calls(
                limit=limit, offset=offset, agent_id=agent_id, status=status, cursor=cursor
            )
        except InvalidCursor:
            raise _field_problem("cursor", "names no call of this listing") from None
        return web.json_response(
            {
                "calls": calls,
                "total": total,
                "limit": limit,
                "offset": offset,
                "next_cursor": next_cursor,
            }
        )

    async def list_calls(self, request: web.Request) -> web.Response:
        agent_id = request.query.get("agent_id") or None
        return await self._list_calls(request, agent_id)

    async def agent_calls(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        if not await self.store.agent_exists(agent_id):
            _not_found("agent", agent_id)
        return await self._list_calls(request, agent_id)

    async def create_call(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        try:
            spec = CallCreate.model_validate(body)
        except ValidationError as exc:
            raise validation_problem("invalid call", exc) from None
        if spec.id is not None:
            return await self._create_call_with_id(spec.id, spec)
        try:
            call = await self.store.create_call(
                agent_id=spec.agent_id,
                direction=spec.direction,
                transport=spec.transport,
                from_=spec.from_,
                to=spec.to,
                metadata=spec.metadata,
                worker_id=spec.worker_id,
            )
        except NotFound:
            raise ApiProblem(404, f"agent {spec.agent_id} not found", "agent_not_found") from None
        resp = web.json_response(call, status=201)
        resp.headers["Location"] = f"/v1/calls/{call['id']}"
        return resp

    async def _create_call_with_id(self, call_id: str, spec: CallCreate) -> web.Response:
        """201 the first time, 200 with the stored call when the id is known already."""
        try:
            call, created = await self.store.create_call_with_id(
                call_id,
                agent_id=spec.agent_id,
                direction=spec.direction,
                transport=spec.transport,
                from_=spec.from_,
                to=spec.to,
                metadata=spec.metadata,
                worker_id=spec.worker_id,
            )
        except NotFound:
            raise ApiProblem(404, f"agent {spec.agent_id} not found", "agent_not_found") from None
        except Conflict as exc:
            raise ApiProblem(409, str(exc), exc.code) from None
        resp = web.json_response(call, status=201 if created else 200)
        resp.headers["Location"] = f"/v1/calls/{call['id']}"
        return resp

    async def get_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        call = await self.store.get_call(call_id)
        if call is None:
            _not_found("call", call_id)
        return web.json_response(call)

    async def list_events(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        limit, offset = _page(request)
        try:
            events, total = await self.store.list_events(call_id, limit=limit, offset=offset)
        except NotFound:
            _not_found("call", call_id)
        return web.json_response(
            {"events": events, "total": total, "limit": limit, "offset": offset}
        )

    async def list_transcript(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        limit, offset = _page(request)
        try:
            segments, total = await self.store.list_segments(call_id, limit=limit, offset=offset)
        except NotFound:
            _not_found("call", call_id)
        return web.json_response(
            {"segments": segments, "total": total, "limit": limit, "offset": offset}
        )

    # worker ingest -----------------------------------------------------------

    async def post_events(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        body = await _json_object(request)
        try:
            batch = EventBatch.model_validate(body)
        except ValidationError as exc:
            raise validation_problem("invalid events", exc) from None
        events = [e.model_dump() for e in batch.events]
        try:
            new, dup = await self.store.add_events(call_id, events)
        except NotFound:
            _not_found("call", call_id)
        return _accepted(new, dup)

    async def post_transcript(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        body = await _json_object(request)
        try:
            batch = SegmentBatch.model_validate(body)
        except ValidationError as exc:
            raise validation_problem("invalid transcript", exc) from None
        segments = [s.model_dump() for s in batch.segments]
        try:
            new, dup = await self.store.add_segments(call_id, segments)
        except NotFound:
            _not_found("call", call_id)
        return _accepted(new, dup)


# --------------------------------------------------------------------------- mounting


def add_local_api_routes(
    app: web.Application, store: LocalStore, *, close_store_on_cleanup: bool = True
) -> None:
    """Mount the local ``/v1`` routes on ``app`` (before it starts).

    Also adds the JSON-errors middleware (it only touches ``/v1/…`` paths), stores the
    store under ``app[LOCAL_STORE]`` and, unless told otherwise, closes the store on the
    app's cleanup (``LocalStore.close`` is idempotent, so closing it again is fine). IDs
    in paths are matched by prefix (``agt_…``, ``call_…``), so fixed paths such as
    ``/v1/agents/llm-options`` or ``/v1/calls/active`` can be added by other modules in
    any order.
    """
    routes = _Routes(store)
    g = routes.guard
    router = app.router
    router.add_get("/v1/agents", g(routes.list_agents))
    router.add_post("/v1/agents", g(routes.create_agent))
    router.add_get(f"/v1/agents/{_AGENT_ID}", g(routes.get_agent))
    router.add_put(f"/v1/agents/{_AGENT_ID}", g(routes.update_agent))
    router.add_delete(f"/v1/agents/{_AGENT_ID}", g(routes.delete_agent))
    router.add_get(f"/v1/agents/{_AGENT_ID}/calls", g(routes.agent_calls))
    router.add_get("/v1/calls", g(routes.list_calls))
    router.add_post("/v1/calls", g(routes.create_call))
    router.add_get(f"/v1/calls/{_CALL_ID}", g(routes.get_call))
    router.add_get(f"/v1/calls/{_CALL_ID}/events", g(routes.list_events))
    router.add_post(f"/v1/calls/{_CALL_ID}/events", g(routes.post_events))
    router.add_get(f"/v1/calls/{_CALL_ID}/transcript", g(routes.list_transcript))
    router.add_post(f"/v1/calls/{_CALL_ID}/transcript", g(routes.post_transcript))
    if json_errors not in app.middlewares:
        app.middlewares.append(json_errors)
    app[LOCAL_STORE] = store
    if close_store_on_cleanup:

        async def close_store(_app: web.Application) -> None:
            store.close()

        app.on_cleanup.append(close_store)


def create_local_api(store: LocalStore, *, keys: Iterable[str] = ()) -> web.Application:
    """A stand-alone app serving only the local ``/v1`` API; ``keys`` are secret keys to
    accept besides those the store already holds (see ``LocalStore.ensure_dev_key``)."""
    for key in keys:
        store.add_key(key, "configured")
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    add_local_api_routes(app, store)
    return app
