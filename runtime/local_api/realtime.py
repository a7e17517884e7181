"""Realtime tokens and publishable keys of the local ``/v1`` API (LiveKit-backed WebRTC).

- ``POST /v1/realtime/token`` and ``POST /v1/webrtc/token`` (the same handler): create a
  call for an agent and mint a LiveKit access token for one room, ``rymi-<call id>``. The
  token carries the agent dispatch (``RoomConfiguration.agents``, agent name
  ``RYMI_LIVEKIT_AGENT_NAME``, metadata ``{"agent_id", "call_id"}``), so the first join
  creates the room and a registered worker is dispatched into it for that call.
- ``GET/POST /v1/keys/publishable``, ``DELETE /v1/keys/publishable/:id``: frontend-safe
  keys (``sb_publishable_…``; legacy ``rymi_pk_…`` accepted) managed with a secret key.

A publishable key may only create calls (per the seed): it gets a token for a new call of an
agent it is allowed to use, with a generated identity and a bounded lifetime; joining an
existing call, choosing the identity or the lifetime needs a secret key (403 otherwise).
Publishable keys are kept hashed in their own SQLite file next to the local API's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from livekit import api as lkapi
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.local_api.app import ApiProblem, error_response, read_json, validation_problem
from runtime.local_api.store import LocalStore, NotFound, iso

if TYPE_CHECKING:
    from runtime.server import Worker

PUBLISHABLE_PREFIX: Final = "sb_publishable_"
LEGACY_PUBLISHABLE_PREFIX: Final = "rymi_pk_"
SECRET_PREFIX: Final = "rymi_"
DEFAULT_TTL_S: Final = 600
MAX_TTL_S: Final = 6 * 3600
ROOM_PREFIX: Final = "rymi-"
OPEN_STATUSES: Final = ("queued", "ringing", "in_progress")


def is_publishable(key: str) -> bool:
    return key.startswith((PUBLISHABLE_PREFIX, LEGACY_PUBLISHABLE_PREFIX))


def room_for_call(call_id: str) -> str:
    return f"{ROOM_PREFIX}{call_id}"


# --------------------------------------------------------------------------- key store


@dataclass(frozen=True, slots=True)
class PublishableKey:
    id: str
    name: str
    hint: str
    agent_ids: tuple[str, ...]  # empty: any agent
    created_at: float

    def allows(self, agent_id: str) -> bool:
        return not self.agent_ids or agent_id in self.agent_ids

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "hint": self.hint,
            "agent_ids": list(self.agent_ids),
            "created_at": iso(self.created_at),
        }


class PublishableKeyStore:
    """Publishable keys, SHA-256 hashed; verification is a dict lookup (no I/O)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS publishable_keys ("
                " id TEXT PRIMARY KEY, key_hash TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
                " hint TEXT NOT NULL, agent_ids TEXT NOT NULL, created_at REAL NOT NULL)"
            )
        self._by_hash: dict[str, PublishableKey] = {}
        for row in self._conn.execute(
            "SELECT id, key_hash, name, hint, agent_ids, created_at FROM publishable_keys"
        ):
            self._by_hash[row[1]] = PublishableKey(
                row[0], row[2], row[3], tuple(json.loads(row[4])), row[5]
            )

    @staticmethod
    def _hash(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    def verify(self, key: str) -> PublishableKey | None:
        return self._by_hash.get(self._hash(key)) if is_publishable(key) else None

    def create(
        self, name: str, agent_ids: Sequence[str], *, key: str | None = None
    ) -> tuple[str, PublishableKey]:
        """A new key (or accept ``key``, e.g. a legacy one); the plain key is returned
        once and never stored."""
        plain = key or f"{PUBLISHABLE_PREFIX}{secrets.token_hex(16)}"
        record = PublishableKey(
            id=f"pk_{secrets.token_hex(8)}",
            name=name,
            hint=f"{plain[:19]}…{plain[-4:]}",
            agent_ids=tuple(agent_ids),
            created_at=time.time(),
        )
        digest = self._hash(plain)
        with self._lock:
            self._conn.execute(
                "INSERT INTO publishable_keys VALUES (?, ?, ?, ?, ?, ?)",
                (record.id, digest, record.name, record.hint,
                 json.dumps(list(record.agent_ids)), record.created_at),
            )
        self._by_hash[digest] = record
        return plain, record

    def list(self) -> list[PublishableKey]:
        return sorted(self._by_hash.values(), key=lambda k: (k.created_at, k.id))

    def delete(self, key_id: str) -> bool:
        with self._lock:
            cur = self._conn.execute("DELETE FROM publishable_keys WHERE id = ?", (key_id,))
        if not cur.rowcount:
            return False
        self._by_hash = {h: k for h, k in self._by_hash.items() if k.id != key_id}
        return True

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._conn.close()


# --------------------------------------------------------------------------- requests


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TokenRequest(_Body):
    agent_id: str | None = Field(default=None, min_length=1, max_length=64)
    call_id: str | None = Field(default=None, min_length=1, max_length=64)
    identity: str | None = Field(default=None, min_length=1, max_length=128,
                                 pattern=r"^[A-Za-z0-9._:@-]+$")
    name: str | None = Field(default=None, max_length=128)
    metadata: dict[str, Any] = Field(default_factory=dict)
    ttl_s: int | None = Field(default=None, ge=30, le=MAX_TTL_S)


class KeyCreate(_Body):
    name: str = Field(default="publishable", min_length=1, max_length=100)
    agent_ids: list[str] = Field(default_factory=list, max_length=100)


@dataclass(frozen=True, slots=True)
class LiveKitAccess:
    url: str
    api_key: str
    api_secret: str
    agent_name: str

    @classmethod
    def from_settings(cls, settings: Any) -> LiveKitAccess | None:
        def read(name: str) -> str | None:
            value = getattr(settings, name, None)
            if value is not None and hasattr(value, "get_secret_value"):
                value = value.get_secret_value()
            return str(value) if value else None

        url, key, secret = read("livekit_url"), read("livekit_api_key"), read("livekit_api_secret")
        if not (url and key and secret):
            return None
        return cls(url, key, secret, read("livekit_agent_name") or "rymi-agent")


def mint_token(
    access: LiveKitAccess,
    *,
    room: str,
    identity: str,
    name: str,
    ttl_s: int,
    dispatch_metadata: Mapping[str, Any],
) -> str:
    """A LiveKit token for ``room`` only: publish the microphone, subscribe, send data;
    the first join creates the room and dispatches ``access.agent_name`` into it."""
    grants = lkapi.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_publish_sources=["microphone"],
    )
    dispatch = lkapi.RoomConfiguration(
        agents=[
            lkapi.RoomAgentDispatch(
                agent_name=access.agent_name,
                metadata=json.dumps(dict(dispatch_metadata), separators=(",", ":")),
            )
        ]
    )
    return (
        lkapi.AccessToken(access.api_key, access.api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_ttl(timedelta(seconds=ttl_s))
        .with_grants(grants)
        .with_room_config(dispatch)
        .to_jwt()
    )


# --------------------------------------------------------------------------- routes


@dataclass
class _Caller:
    secret: bool
    key: PublishableKey | None


class RealtimeRoutes:
    def __init__(
        self, store: LocalStore, keys: PublishableKeyStore, access: LiveKitAccess | None
    ) -> None:
        self.store = store
        self.keys = keys
        self.access = access

    def _auth(self, request: web.Request, *, allow_publishable: bool) -> _Caller:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiProblem(401, "missing or invalid API key", "unauthorized")
        if is_publishable(token):
            record = self.keys.verify(token)
            if record is None:
                raise ApiProblem(401, "invalid API key", "unauthorized")
            if not allow_publishable:
                raise ApiProblem(
                    403, "a publishable key cannot manage keys; use a secret key", "forbidden"
                )
            return _Caller(secret=False, key=record)
        if token.startswith(SECRET_PREFIX) and self.store.verify_key(token):
            return _Caller(secret=True, key=None)
        raise ApiProblem(401, "invalid API key", "unauthorized")

    async def token(self, request: web.Request) -> web.Response:
        caller = self._auth(request, allow_publishable=True)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiProblem(400, "request body must be a JSON object", "malformed_json")
        try:
            spec = TokenRequest.model_validate(body)
        except ValidationError as exc:
            raise validation_problem("invalid token request", exc) from None
        if not caller.secret:
            for field, value in (("call_id", spec.call_id), ("identity", spec.identity),
                                 ("ttl_s", spec.ttl_s)):
                if value is not None:
                    raise ApiProblem(
                        403,
                        f"a publishable key may only create calls: {field} needs a secret key",
                        "forbidden",
                    )
        if self.access is None:
            raise ApiProblem(
                503,
                "LiveKit is not configured on this worker (RYMI_LIVEKIT_URL, "
                "RYMI_LIVEKIT_API_KEY, RYMI_LIVEKIT_API_SECRET)",
                "livekit_not_configured",
            )
        identity = spec.identity or f"user-{secrets.token_hex(6)}"
        if spec.call_id is not None:
            call = await self._open_call(spec)
        else:
            call = await self._new_call(spec, caller, identity)
        ttl_s = spec.ttl_s or DEFAULT_TTL_S
        room = room_for_call(call["id"])
        token = mint_token(
            self.access,
            room=room,
            identity=identity,
            name=spec.name or identity,
            ttl_s=ttl_s,
            dispatch_metadata={"agent_id": call["agent_id"], "call_id": call["id"]},
        )
        return web.json_response(
            {
                "token": token,
                "url": self.access.url,
                "room": room,
                "identity": identity,
                "call_id": call["id"],
                "agent_id": call["agent_id"],
                "expires_at": iso(time.time() + ttl_s),
            },
            status=201,
        )

    async def _new_call(
        self, spec: TokenRequest, caller: _Caller, identity: str
    ) -> dict[str, Any]:
        if spec.agent_id is None:
            raise ApiProblem(400, "invalid token request: agent_id: field required",
                             "validation_error")
        if caller.key is not None and not caller.key.allows(spec.agent_id):
            raise ApiProblem(403, f"this publishable key cannot use agent {spec.agent_id}",
                             "forbidden")
        metadata = {**spec.metadata, "source": "publishable_key" if caller.key else "secret_key"}
        if caller.key is not None:
            metadata["publishable_key_id"] = caller.key.id
        try:
            call = await self.store.create_call(
                agent_id=spec.agent_id,
                direction="inbound",
                transport="livekit",
                from_=identity,
                metadata=metadata,
            )
        except NotFound:
            raise ApiProblem(404, f"agent {spec.agent_id} not found", "agent_not_found") from None
        return call

    async def _open_call(self, spec: TokenRequest) -> dict[str, Any]:
        assert spec.call_id is not None
        call = await self.store.get_call(spec.call_id)
        if call is None:
            raise ApiProblem(404, f"call {spec.call_id} not found", "not_found")
        if spec.agent_id is not None and spec.agent_id != call["agent_id"]:
            raise ApiProblem(400, "invalid token request: agent_id: does not match the call",
                             "validation_error")
        if call["status"] not in OPEN_STATUSES:
            raise ApiProblem(409, f"call {spec.call_id} is {call['status']}", "call_ended")
        return call

    # publishable keys --------------------------------------------------------------

    async def create_key(self, request: web.Request) -> web.Response:
        self._auth(request, allow_publishable=False)
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiProblem(400, "request body must be a JSON object", "malformed_json")
        try:
            spec = KeyCreate.model_validate(body)
        except ValidationError as exc:
            raise validation_problem("invalid publishable key", exc) from None
        for agent_id in spec.agent_ids:
            if not await self.store.agent_exists(agent_id):
                raise ApiProblem(404, f"agent {agent_id} not found", "agent_not_found")
        plain, record = await asyncio.to_thread(self.keys.create, spec.name, spec.agent_ids)
        return web.json_response({**record.public(), "key": plain}, status=201)

    async def list_keys(self, request: web.Request) -> web.Response:
        self._auth(request, allow_publishable=False)
        keys = [k.public() for k in self.keys.list()]
        return web.json_response({"keys": keys, "total": len(keys), "limit": len(keys),
                                  "offset": 0})

    async def delete_key(self, request: web.Request) -> web.Response:
        self._auth(request, allow_publishable=False)
        key_id = request.match_info["key_id"]
        if not await asyncio.to_thread(self.keys.delete, key_id):
            raise ApiProblem(404, f"publishable key {key_id} not found", "not_found")
        return web.json_response({"id": key_id, "deleted": True})


def _problems(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiProblem as exc:
            headers = ({"WWW-Authenticate": 'Bearer realm="rymi"'} if exc.status == 401
                       else None)
            return error_response(exc.status, exc.error, exc.code, exc.detail, headers=headers)

    return wrapped


def mount_realtime_routes(
    app: web.Application, store: LocalStore, settings: Any, *, keys_path: Path | None = None
) -> PublishableKeyStore:
    """Mount the token and publishable-key routes; returns the key store (closed with the
    app)."""
    keys = PublishableKeyStore(keys_path or Path(settings.data_dir) / "publishable-keys.sqlite3")
    routes = RealtimeRoutes(store, keys, LiveKitAccess.from_settings(settings))
    app.router.add_post("/v1/realtime/token", _problems(routes.token))
    app.router.add_post("/v1/webrtc/token", _problems(routes.token))
    app.router.add_get("/v1/keys/publishable", _problems(routes.list_keys))
    app.router.add_post("/v1/keys/publishable", _problems(routes.create_key))
    app.router.add_delete(r"/v1/keys/publishable/{key_id:pk_[a-f0-9]+}",
                          _problems(routes.delete_key))

    async def close(_app: web.Application) -> None:
        keys.close()

    app.on_cleanup.append(close)
    return keys


def add_realtime_routes(worker: Worker) -> None:
    """Hook for ``runtime.server.Worker``: mounted only with the embedded API (a hosted
    API serves these routes itself)."""
    if worker.store is None:
        return
    mount_realtime_routes(worker.app, worker.store, worker.settings)
