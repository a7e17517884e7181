"""The rest of the worker ↔ API contract in the local ``/v1`` API (docs/api.md).

- recordings: ``PUT /v1/calls/:id/recording`` (the worker's upload, a WAV body streamed
  to disk) and ``GET /v1/calls/:id/recording`` (``audio/wav``, ranges supported);
- summaries: ``POST /v1/calls/:id/summary`` (the worker's report), ``GET`` it, and
  ``POST /v1/calls/:id/reprocess`` (summarise again from the stored transcript);
- call control: ``POST /v1/calls/:id/end``, ``GET /v1/calls/active``,
  ``GET /v1/calls/queue/stats``, and for workers that run against this API from another
  process ``POST /v1/workers/:id/heartbeat`` (load report + long-poll for commands) and
  ``DELETE /v1/workers/:id/commands/:command_id`` (acknowledge);
- the do-not-call registry: ``POST GET /v1/dnc``, ``DELETE /v1/dnc/:number``,
  ``POST /v1/dnc/batch``, ``POST /v1/dnc/check``;
- webhooks (runtime/local_api/webhooks.py).

Mount with :func:`add_contract_routes` (the worker's ``_mount_optional`` does it in
embedded mode; ``python -m runtime.local_api`` for a stand-alone API).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import sqlite3
import time
import wave
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.agent_config import AgentConfig
from runtime.api_client import AGENT_ENVELOPE
from runtime.local_api.app import (
    ApiProblem,
    _bearer,
    _json_object,
    _page,
    error_response,
    validation_problem,
)
from runtime.local_api.store import TERMINAL_STATUSES, LocalStore, iso
from runtime.local_api.webhooks import WebhookDispatcher, WebhookStore, add_webhook_routes, event_id

if TYPE_CHECKING:
    from runtime.calls import CallManager
    from runtime.server import Worker

log = logging.getLogger(__name__)

MAX_RECORDING_BYTES: Final = 2 * 1024**3
MAX_DNC_BATCH: Final = 10_000
MAX_WAIT_S: Final = 30.0
#: A worker that has not called in for this long is considered gone.
WORKER_STALE_S: Final = 60.0
_CALL_ID = r"{call_id:call_[A-Za-z0-9]+}"
_NUMBER_PUNCTUATION = re.compile(r"[\s().\-/]")
_NUMBER = re.compile(r"^\+?[0-9]{3,20}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
LiveManager = Callable[[], "CallManager | None"]
Credentials = Callable[[], Mapping[str, str]]

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS call_summaries (
        call_id    TEXT PRIMARY KEY REFERENCES calls (id) ON DELETE CASCADE,
        body       TEXT NOT NULL,
        source     TEXT NOT NULL,
        updated_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS call_recordings (
        call_id     TEXT PRIMARY KEY REFERENCES calls (id) ON DELETE CASCADE,
        file        TEXT NOT NULL,
        bytes       INTEGER NOT NULL,
        sha256      TEXT NOT NULL,
        channels    INTEGER NOT NULL,
        sample_rate INTEGER NOT NULL,
        duration_s  REAL NOT NULL,
        uploaded_at REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS dnc (
        n          INTEGER PRIMARY KEY AUTOINCREMENT,
        number     TEXT NOT NULL UNIQUE,
        reason     TEXT,
        created_at REAL NOT NULL
    )""",
)


def normalize_number(raw: str) -> str:
    """``"+1 (555) 010-0000"`` → ``"+15550100000"``; ValueError if it is not a number."""
    number = _NUMBER_PUNCTUATION.sub("", raw.strip())
    if not _NUMBER.match(number):
        raise ValueError("must be a phone number: an optional + and 3 to 20 digits")
    return number


# --------------------------------------------------------------------------- bodies


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SummaryIn(_Body):
    """A summary as the worker reports it (pipelines/summary.py + provenance)."""

    idempotency_key: str | None = Field(default=None, max_length=200)
    seq: int | None = Field(default=None, ge=0)
    summary: str = Field(max_length=5000)
    outcome: str = Field(min_length=1, max_length=64)
    sentiment: str = Field(pattern=r"^(positive|neutral|negative|mixed)$")
    extracted: dict[str, Any] = Field(default_factory=dict)
    provider: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=200)
    generated_at: float | None = Field(default=None, ge=0)
    source: str = Field(default="worker", pattern=r"^(worker|reprocess)$")
    transcript_segments: int | None = Field(default=None, ge=0)


class DncEntry(_Body):
    number: str = Field(min_length=1, max_length=64)
    reason: str | None = Field(default=None, max_length=500)

    @field_validator("number")
    @classmethod
    def _number(cls, value: str) -> str:
        return normalize_number(value)


class DncBatch(_Body):
    """``numbers``: strings or ``{"number", "reason"}`` objects, mixed as you like."""

    numbers: list[DncEntry] = Field(min_length=1, max_length=MAX_DNC_BATCH)

    @field_validator("numbers", mode="before")
    @classmethod
    def _plain(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"number": v} if isinstance(v, str) else v for v in value]
        return value

    def entries(self) -> list[DncEntry]:
        return list(self.numbers)


class DncCheck(_Body):
    number: str = Field(min_length=1, max_length=64)

    @field_validator("number")
    @classmethod
    def _number(cls, value: str) -> str:
        return normalize_number(value)


class EndRequest(_Body):
    reason: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")


class HeartbeatCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(max_length=128)


class Heartbeat(_Body):
    max_calls: int = Field(ge=0, le=1_000_000)
    active_calls: int = Field(ge=0, le=1_000_000)
    draining: bool = False
    load: float | None = Field(default=None, ge=0)
    calls: list[HeartbeatCall] = Field(default_factory=list, max_length=10_000)
    extra: dict[str, Any] = Field(default_factory=dict)


# --------------------------------------------------------------------------- storage


class ContractStore:
    """Summaries, recording records and the DNC list in the local API's SQLite file (on
    the store's thread). Recording files live in ``<store dir>/api-recordings/``."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        self.recordings = store.path.parent / "api-recordings"
        self.recordings.mkdir(parents=True, exist_ok=True)
        store._call(self._create)

    def _create(self) -> None:
        conn = self.store._conn
        with self.store._tx(conn):
            for statement in _SCHEMA:
                conn.execute(statement)

    @property
    def _conn(self) -> sqlite3.Connection:
        return self.store._conn

    # summaries ---------------------------------------------------------------

    async def put_summary(self, call_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        def put() -> dict[str, Any]:
            now = time.time()
            with self.store._tx(self._conn):
                self._conn.execute(
                    "INSERT INTO call_summaries (call_id, body, source, updated_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (call_id) DO UPDATE SET "
                    "body = excluded.body, source = excluded.source, "
                    "updated_at = excluded.updated_at",
                    (call_id, json.dumps(dict(body)), str(body.get("source", "worker")), now),
                )
            out = self._summary(call_id)
            assert out is not None
            return out

        return await self.store._run(put)

    def _summary(self, call_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT body, updated_at FROM call_summaries WHERE call_id = ?", (call_id,)
        ).fetchone()
        if row is None:
            return None
        body = json.loads(row["body"])
        generated = body.get("generated_at")
        return {
            "call_id": call_id,
            "summary": body["summary"],
            "outcome": body["outcome"],
            "sentiment": body["sentiment"],
            "extracted": body.get("extracted") or {},
            "provider": body.get("provider"),
            "model": body.get("model"),
            "source": body.get("source", "worker"),
            "transcript_segments": body.get("transcript_segments"),
            "generated_at": iso(generated) if isinstance(generated, int | float) else None,
            "updated_at": iso(row["updated_at"]),
        }

    async def get_summary(self, call_id: str) -> dict[str, Any] | None:
        return await self.store._run(self._summary, call_id)

    # recordings --------------------------------------------------------------

    def recording_file(self, call_id: str) -> Path:
        return self.recordings / f"{call_id}.wav"

    async def put_recording(self, call_id: str, meta: Mapping[str, Any]) -> tuple[
        dict[str, Any], bool
    ]:
        def put() -> tuple[dict[str, Any], bool]:
            with self.store._tx(self._conn):
                existed = self._conn.execute(
                    "SELECT 1 FROM call_recordings WHERE call_id = ?", (call_id,)
                ).fetchone() is not None
                self._conn.execute(
                    "INSERT OR REPLACE INTO call_recordings (call_id, file, bytes, sha256, "
                    "channels, sample_rate, duration_s, uploaded_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (call_id, meta["file"], meta["bytes"], meta["sha256"], meta["channels"],
                     meta["sample_rate"], meta["duration_s"], time.time()),
                )
            out = self._recording(call_id)
            assert out is not None
            return out, not existed

        return await self.store._run(put)

    def _recording(self, call_id: str) -> dict[str, Any] | None:
        row = self._conn.execute(
            "SELECT * FROM call_recordings WHERE call_id = ?", (call_id,)
        ).fetchone()
        if row is None:
            return None
        return {
            "call_id": call_id,
            "content_type": "audio/wav",
            "bytes": row["bytes"],
            "sha256": row["sha256"],
            "channels": row["channels"],
            "sample_rate": row["sample_rate"],
            "duration_s": row["duration_s"],
            "uploaded_at": iso(row["uploaded_at"]),
            "url": f"/v1/calls/{call_id}/recording",
        }

    async def get_recording(self, call_id: str) -> dict[str, Any] | None:
        return await self.store._run(self._recording, call_id)

    # DNC ---------------------------------------------------------------------

    @staticmethod
    def _dnc_dict(row: sqlite3.Row) -> dict[str, Any]:
        return {"number": row["number"], "reason": row["reason"],
                "created_at": iso(row["created_at"])}

    def _dnc_row(self, number: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM dnc WHERE number = ?", (number,)
        ).fetchone()
        return row

    async def dnc_add(self, entries: list[DncEntry]) -> tuple[list[dict[str, Any]], int]:
        """Add numbers (existing ones keep their record). Returns (entries, added)."""

        def add() -> tuple[list[dict[str, Any]], int]:
            added = 0
            now = time.time()
            with self.store._tx(self._conn):
                for entry in entries:
                    added += self._conn.execute(
                        "INSERT OR IGNORE INTO dnc (number, reason, created_at) "
                        "VALUES (?, ?, ?)", (entry.number, entry.reason, now)
                    ).rowcount
            rows = [self._dnc_row(e.number) for e in entries]
            return [self._dnc_dict(r) for r in rows if r is not None], added

        return await self.store._run(add)

    async def dnc_list(self, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        def list_() -> tuple[list[dict[str, Any]], int]:
            total = self._conn.execute("SELECT COUNT(*) FROM dnc").fetchone()[0]
            rows = self._conn.execute(
                "SELECT * FROM dnc ORDER BY n LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
            return [self._dnc_dict(r) for r in rows], int(total)

        return await self.store._run(list_)

    async def dnc_get(self, number: str) -> dict[str, Any] | None:
        def get() -> dict[str, Any] | None:
            row = self._dnc_row(number)
            return None if row is None else self._dnc_dict(row)

        return await self.store._run(get)

    async def dnc_delete(self, number: str) -> bool:
        def delete() -> bool:
            with self.store._tx(self._conn):
                return self._conn.execute(
                    "DELETE FROM dnc WHERE number = ?", (number,)
                ).rowcount > 0

        return await self.store._run(delete)

    async def transcript(self, call_id: str) -> list[dict[str, Any]]:
        segments: list[dict[str, Any]] = []
        while True:
            page, total = await self.store.list_segments(call_id, limit=1000,
                                                         offset=len(segments))
            segments.extend(page)
            if not page or len(segments) >= total:
                return segments


# --------------------------------------------------------------------------- control


@dataclass
class RemoteWorker:
    """A worker that reports to this API from its own process (hosted mode)."""

    worker_id: str
    state: Heartbeat
    last_seen: float
    commands: list[dict[str, Any]] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    polling: int = 0

    def holds(self, call_id: str) -> bool:
        return any(c.id == call_id for c in self.state.calls)


class ControlPlane:
    """Who holds which call, and the commands waiting for remote workers (in memory: a
    command lost with the API process is repeated by the caller)."""

    def __init__(self, local: LiveManager) -> None:
        self.local = local
        self.workers: dict[str, RemoteWorker] = {}

    def live_workers(self) -> list[RemoteWorker]:
        now = time.monotonic()
        for wid in [w for w, r in self.workers.items()
                    if not r.polling and now - r.last_seen > WORKER_STALE_S]:
            del self.workers[wid]
        return list(self.workers.values())

    def heartbeat(self, worker_id: str, state: Heartbeat) -> RemoteWorker:
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = RemoteWorker(worker_id, state, time.monotonic())
        worker.state = state
        worker.last_seen = time.monotonic()
        return worker

    def holder(self, call_id: str, worker_id: str | None) -> RemoteWorker | None:
        workers = self.live_workers()
        for worker in workers:
            if worker.holds(call_id):
                return worker
        return next((w for w in workers if w.worker_id == worker_id), None)

    def command(self, worker: RemoteWorker, kind: str, **data: Any) -> dict[str, Any]:
        cmd = {"id": f"cmd_{secrets.token_hex(8)}", "type": kind, "created_at": time.time(),
               **data}
        worker.commands.append(cmd)
        worker.wake.set()
        return cmd

    def ack(self, worker_id: str, command_id: str) -> bool:
        worker = self.workers.get(worker_id)
        if worker is None:
            return False
        before = len(worker.commands)
        worker.commands = [c for c in worker.commands if c["id"] != command_id]
        return len(worker.commands) < before


# --------------------------------------------------------------------------- routes


class _Routes:
    def __init__(
        self,
        store: LocalStore,
        data: ContractStore,
        hooks: WebhookStore,
        dispatcher: WebhookDispatcher,
        control: ControlPlane,
        credentials: Credentials,
    ) -> None:
        self.store = store
        self.data = data
        self.hooks = hooks
        self.dispatcher = dispatcher
        self.control = control
        self.credentials = credentials

    def guard(self, handler: Handler) -> Handler:
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

    async def _call(self, request: web.Request) -> dict[str, Any]:
        call_id = request.match_info["call_id"]
        call = await self.store.get_call(call_id)
        if call is None:
            raise ApiProblem(404, f"call {call_id} not found", "not_found")
        return call

    # summaries ---------------------------------------------------------------

    async def post_summary(self, request: web.Request) -> web.Response:
        call = await self._call(request)
        try:
            spec = SummaryIn.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise validation_problem("invalid summary", exc) from None
        body = spec.model_dump(exclude={"idempotency_key", "seq"})
        stored = await self.data.put_summary(call["id"], body)
        await self._notify("call.summary", call["id"], stored)
        return web.json_response(stored)

    async def get_summary(self, request: web.Request) -> web.Response:
        call = await self._call(request)
        summary = await self.data.get_summary(call["id"])
        if summary is None:
            raise ApiProblem(404, f"call {call['id']} has no summary yet", "summary_not_found")
        return web.json_response(summary)

    async def reprocess(self, request: web.Request) -> web.Response:
        from pipelines.summary import SummaryError
        from runtime.postcall import summarize_call

        call = await self._call(request)
        if call["status"] not in TERMINAL_STATUSES:
            raise ApiProblem(409, f"call {call['id']} is {call['status']}; it can be "
                             "reprocessed once it has ended", "call_not_ended")
        raw = await self.store.get_agent(call["agent_id"])
        if raw is None:
            raise ApiProblem(409, f"the call's agent {call['agent_id']} no longer exists",
                             "agent_not_found")
        agent = AgentConfig.model_validate(
            {k: v for k, v in raw.items() if k not in AGENT_ENVELOPE})
        transcript = await self.data.transcript(call["id"])
        try:
            summary = await summarize_call(agent, transcript, self.credentials())
        except SummaryError as exc:
            raise ApiProblem(502, f"the agent's LLM gave no summary: {exc}",
                             "upstream_error") from None
        stored = await self.data.put_summary(call["id"], {**summary, "source": "reprocess"})
        await self._notify("call.summary", call["id"], stored)
        return web.json_response(stored)

    # recordings --------------------------------------------------------------

    async def put_recording(self, request: web.Request) -> web.Response:
        call = await self._call(request)
        ctype = request.content_type
        if ctype not in ("audio/wav", "audio/x-wav", "audio/wave"):
            raise ApiProblem(415, "a recording must be sent as audio/wav",
                             "unsupported_media_type")
        if request.content_length is not None and request.content_length > MAX_RECORDING_BYTES:
            raise ApiProblem(413, f"a recording may have at most {MAX_RECORDING_BYTES} bytes",
                             "payload_too_large")
        final = self.data.recording_file(call["id"])
        tmp = final.with_name(f".{final.name}.{secrets.token_hex(4)}.tmp")
        digest = hashlib.sha256()
        size = 0
        loop = asyncio.get_running_loop()
        try:
            with open(tmp, "wb") as fh:  # noqa: ASYNC230 - writes go to a thread below
                async for chunk in request.content.iter_chunked(256 * 1024):
                    size += len(chunk)
                    if size > MAX_RECORDING_BYTES:
                        raise ApiProblem(413, f"a recording may have at most "
                                         f"{MAX_RECORDING_BYTES} bytes", "payload_too_large")
                    digest.update(chunk)
                    await loop.run_in_executor(None, fh.write, chunk)
            params = await asyncio.to_thread(_wav_params, tmp)
            await asyncio.to_thread(os.replace, tmp, final)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        channels, rate, frames = params
        meta, created = await self.data.put_recording(call["id"], {
            "file": final.name, "bytes": size, "sha256": digest.hexdigest(),
            "channels": channels, "sample_rate": rate, "duration_s": round(frames / rate, 3),
        })
        await self._notify("call.recording", call["id"], meta)
        return web.json_response(meta, status=201 if created else 200)

    async def get_recording(self, request: web.Request) -> web.StreamResponse:
        call = await self._call(request)
        meta = await self.data.get_recording(call["id"])
        path = self.data.recording_file(call["id"])
        if meta is None or not path.exists():
            raise ApiProblem(404, f"call {call['id']} has no recording",
                             "recording_not_found")
        return web.FileResponse(
            path, headers={"Content-Type": "audio/wav",
                           "Content-Disposition": f'inline; filename="{call["id"]}.wav"'})

    async def _notify(self, kind: str, call_id: str, data: Mapping[str, Any]) -> None:
        ident = event_id(call_id, kind, data.get("updated_at") or data.get("uploaded_at"))
        if await self.hooks.enqueue(kind, call_id, data, ident):
            self.dispatcher.kick()

    # control -----------------------------------------------------------------

    async def end_call(self, request: web.Request) -> web.Response:
        call_id = request.match_info["call_id"]
        reason = "ended_by_api"
        if request.can_read_body:
            try:
                spec = EndRequest.model_validate(await _json_object(request))
            except ValidationError as exc:
                raise validation_problem("invalid end request", exc) from None
            reason = spec.reason or reason
        manager = self.control.local()
        if manager is not None and manager.end_call(call_id, reason):
            return web.json_response(
                {"id": call_id, "status": "ending", "worker_id": manager.worker_id},
                status=202)
        call = await self.store.get_call(call_id)
        holder = self.control.holder(call_id, call["worker_id"] if call else None)
        if holder is not None and (holder.holds(call_id) or
                                   (call and call["status"] not in TERMINAL_STATUSES)):
            cmd = self.control.command(holder, "end_call", call_id=call_id, reason=reason)
            return web.json_response(
                {"id": call_id, "status": "ending", "worker_id": holder.worker_id,
                 "command_id": cmd["id"]}, status=202)
        if call is None:
            raise ApiProblem(404, f"call {call_id} not found", "not_found")
        if call["status"] in TERMINAL_STATUSES:
            raise ApiProblem(409, f"call {call_id} is already {call['status']}", "call_ended")
        raise ApiProblem(409, f"no live worker holds call {call_id}", "call_not_live")

    def _live_calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = []
        manager = self.control.local()
        if manager is not None:
            calls.extend(manager.active())
        for worker in self.control.live_workers():
            for held in worker.state.calls:
                calls.append({**held.model_dump(), "worker_id": worker.worker_id})
        for item in calls:
            if isinstance(item.get("started_at"), int | float):
                item["started_at"] = iso(item["started_at"])
        return calls

    async def active(self, request: web.Request) -> web.Response:
        limit, offset = _page(request)
        calls = self._live_calls()
        return web.json_response({"calls": calls[offset:offset + limit], "total": len(calls),
                                  "limit": limit, "offset": offset})

    async def queue_stats(self, request: web.Request) -> web.Response:
        workers: list[dict[str, Any]] = []
        manager = self.control.local()
        if manager is not None:
            workers.append({**_worker_view(manager.stats()), "embedded": True,
                            "last_seen": iso(time.time())})
        now_wall, now = time.time(), time.monotonic()
        for w in self.control.live_workers():
            s = w.state
            workers.append({
                "worker_id": w.worker_id, "max_calls": s.max_calls,
                "active_calls": s.active_calls,
                "available": 0 if s.draining else max(0, s.max_calls - s.active_calls),
                "load": round(s.load if s.load is not None
                              else (s.active_calls / s.max_calls if s.max_calls else 1.0), 3),
                "draining": s.draining, "embedded": False,
                "last_seen": iso(now_wall - (now - w.last_seen)),
            })
        capacity = sum(w["max_calls"] for w in workers)
        active = sum(w["active_calls"] for w in workers)
        counts = await self.store._run(_status_counts, self.store)
        return web.json_response({
            "workers": workers,
            "totals": {
                "workers": len(workers),
                "max_calls": capacity,
                "active_calls": active,
                "available": sum(w["available"] for w in workers),
                "load": round(active / capacity, 3) if capacity else 0.0,
            },
            "calls": counts,
        })

    async def heartbeat(self, request: web.Request) -> web.Response:
        worker_id = request.match_info["worker_id"]
        try:
            wait = float(request.query.get("wait") or 0)
        except ValueError:
            raise ApiProblem(400, "invalid query: wait: must be a number", "validation_error",
                             [{"field": "wait", "message": "must be a number",
                               "type": "value_error"}]) from None
        if not 0 <= wait <= MAX_WAIT_S:
            raise ApiProblem(400, f"invalid query: wait: must be between 0 and {MAX_WAIT_S:g}",
                             "validation_error", [{"field": "wait", "message": "out of range",
                                                   "type": "value_error"}])
        try:
            state = Heartbeat.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise validation_problem("invalid heartbeat", exc) from None
        worker = self.control.heartbeat(worker_id, state)
        if not worker.commands and wait > 0:
            worker.polling += 1
            worker.wake.clear()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await worker.wake.wait()
            finally:
                worker.polling -= 1
                worker.last_seen = time.monotonic()
        return web.json_response({"worker_id": worker_id, "commands": list(worker.commands)})

    async def ack(self, request: web.Request) -> web.Response:
        worker_id = request.match_info["worker_id"]
        command_id = request.match_info["command_id"]
        if not self.control.ack(worker_id, command_id):
            raise ApiProblem(404, f"command {command_id} not found", "not_found")
        return web.json_response({"id": command_id, "acknowledged": True})

    # DNC ---------------------------------------------------------------------

    async def dnc_add(self, request: web.Request) -> web.Response:
        try:
            entry = DncEntry.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise validation_problem("invalid DNC entry", exc) from None
        entries, added = await self.data.dnc_add([entry])
        return web.json_response(entries[0], status=201 if added else 200)

    async def dnc_list(self, request: web.Request) -> web.Response:
        limit, offset = _page(request)
        entries, total = await self.data.dnc_list(limit=limit, offset=offset)
        return web.json_response(
            {"numbers": entries, "total": total, "limit": limit, "offset": offset})

    def _path_number(self, request: web.Request) -> str:
        try:
            return normalize_number(request.match_info["number"])
        except ValueError as exc:
            raise ApiProblem(400, f"invalid number: {exc}", "validation_error",
                             [{"field": "number", "message": str(exc),
                               "type": "value_error"}]) from None

    async def dnc_get(self, request: web.Request) -> web.Response:
        number = self._path_number(request)
        entry = await self.data.dnc_get(number)
        if entry is None:
            raise ApiProblem(404, f"{number} is not on the DNC list", "not_found")
        return web.json_response(entry)

    async def dnc_delete(self, request: web.Request) -> web.Response:
        number = self._path_number(request)
        if not await self.data.dnc_delete(number):
            raise ApiProblem(404, f"{number} is not on the DNC list", "not_found")
        return web.json_response({"number": number, "deleted": True})

    async def dnc_batch(self, request: web.Request) -> web.Response:
        try:
            batch = DncBatch.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise validation_problem("invalid DNC batch", exc) from None
        entries = batch.entries()
        _stored, added = await self.data.dnc_add(entries)
        unique = len({e.number for e in entries})
        return web.json_response(
            {"received": len(entries), "added": added, "existing": unique - added},
            status=201 if added else 200)

    async def dnc_check(self, request: web.Request) -> web.Response:
        try:
            spec = DncCheck.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise validation_problem("invalid DNC check", exc) from None
        entry = await self.data.dnc_get(spec.number)
        body: dict[str, Any] = {"number": spec.number, "listed": entry is not None}
        if entry is not None:
            body["reason"] = entry["reason"]
            body["listed_at"] = entry["created_at"]
        return web.json_response(body)


def _status_counts(store: LocalStore) -> dict[str, int]:
    rows = store._conn.execute(
        "SELECT status, COUNT(*) FROM calls WHERE status IN ('queued', 'ringing', "
        "'in_progress') GROUP BY status"
    ).fetchall()
    counts = {"queued": 0, "ringing": 0, "in_progress": 0}
    counts.update({str(r[0]): int(r[1]) for r in rows})
    return counts


def _worker_view(stats: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("worker_id", "max_calls", "active_calls", "available", "load", "draining")
    return {k: stats[k] for k in keys}


def _wav_params(path: Path) -> tuple[int, int, int]:
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            frames = wav.getnframes()
    except (wave.Error, EOFError, OSError) as exc:
        raise ApiProblem(400, f"the body is not a WAV file: {exc}", "invalid_recording") from None
    if width != 2 or channels not in (1, 2) or not 8000 <= rate <= 48000:
        raise ApiProblem(400, "a recording must be 16-bit PCM, mono or stereo, 8-48 kHz",
                         "invalid_recording")
    return channels, rate, frames


CONTRACT_KEY: Final = web.AppKey("rymi_contract", _Routes)


def add_contract_routes(
    target: web.Application | Worker,
    store: LocalStore | None = None,
    *,
    live: LiveManager | None = None,
    credentials: Credentials | None = None,
    webhook_backoff_s: float = 5.0,
    webhook_allow_hosts: Collection[str] | None = None,
) -> None:
    """Mount the routes on ``target``: a Worker (embedded mode only: ``POST …/end`` then
    reaches its CallManager directly) or an app with ``store``."""
    if isinstance(target, web.Application):
        app = target
        if store is None:
            raise ValueError("add_contract_routes(app, store): the store is required")
        get_live: LiveManager = live or (lambda: None)
        get_credentials: Credentials = credentials or (lambda: {})
    else:
        worker = target
        if not worker.embedded_api or worker.store is None:
            return
        app, store = worker.app, worker.store
        get_live = live or (lambda: worker.manager)
        get_credentials = credentials or worker.settings.provider_credentials
    hooks = WebhookStore(store)
    dispatcher = WebhookDispatcher(hooks, base_backoff_s=webhook_backoff_s,
                                   allow_hosts=webhook_allow_hosts)
    routes = _Routes(store, ContractStore(store), hooks, dispatcher, ControlPlane(get_live),
                     get_credentials)
    app[CONTRACT_KEY] = routes
    g = routes.guard
    r = app.router
    r.add_put(f"/v1/calls/{_CALL_ID}/recording", g(routes.put_recording))
    r.add_get(f"/v1/calls/{_CALL_ID}/recording", g(routes.get_recording))
    r.add_post(f"/v1/calls/{_CALL_ID}/summary", g(routes.post_summary))
    r.add_get(f"/v1/calls/{_CALL_ID}/summary", g(routes.get_summary))
    r.add_post(f"/v1/calls/{_CALL_ID}/reprocess", g(routes.reprocess))
    r.add_post(f"/v1/calls/{_CALL_ID}/end", g(routes.end_call))
    r.add_get("/v1/calls/active", g(routes.active))
    r.add_get("/v1/calls/queue/stats", g(routes.queue_stats))
    r.add_post("/v1/workers/{worker_id:[A-Za-z0-9._:@-]{1,128}}/heartbeat", g(routes.heartbeat))
    r.add_delete("/v1/workers/{worker_id:[A-Za-z0-9._:@-]{1,128}}/commands/"
                 "{command_id:cmd_[A-Za-z0-9]+}", g(routes.ack))
    r.add_post("/v1/dnc", g(routes.dnc_add))
    r.add_get("/v1/dnc", g(routes.dnc_list))
    r.add_post("/v1/dnc/batch", g(routes.dnc_batch))
    r.add_post("/v1/dnc/check", g(routes.dnc_check))
    r.add_get("/v1/dnc/{number}", g(routes.dnc_get))
    r.add_delete("/v1/dnc/{number}", g(routes.dnc_delete))
    add_webhook_routes(app, hooks, g)

    @web.middleware
    async def kick_webhooks(request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        if request.method == "POST" and request.path.endswith(("/events", "/transcript")):
            dispatcher.kick()
        return resp

    app.middlewares.append(kick_webhooks)

    async def start(_app: web.Application) -> None:
        dispatcher.start()

    async def stop(_app: web.Application) -> None:
        await dispatcher.stop()

    async def release_polls(_app: web.Application) -> None:
        for remote in routes.control.workers.values():  # long polls end now, not in 30 s
            remote.wake.set()

    app.on_startup.append(start)
    app.on_shutdown.append(release_polls)
    app.on_cleanup.insert(0, stop)  # before the store closes
