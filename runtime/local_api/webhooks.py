"""Webhooks of the local ``/v1`` API: registration and signed, retried delivery.

``POST GET PATCH DELETE /v1/webhooks`` manage endpoints; each has its own secret
(``whsec_…``). The :class:`WebhookDispatcher` turns what the API stores into deliveries,
durably (SQLite, in the API's own file): every new call event and transcript segment (it
follows the ``call_events``/``transcript_segments`` tables by row number, so an event
ingested while the dispatcher was down is not missed), and every summary and recording.

A delivery is ``POST <url>`` with the JSON body ``{"id", "type", "created_at",
"call_id", "data"}`` and the headers

- ``Rymi-Webhook-Id``: the event id (the same on every retry: de-duplicate on it);
- ``Rymi-Webhook-Timestamp``: Unix seconds when this attempt was signed;
- ``Rymi-Webhook-Signature``: ``v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>``;
- ``Rymi-Webhook-Attempt``: 1, 2, …

Any 2xx is success. Anything else (or no answer within 10 s) is retried with exponential
back-off (``base_backoff_s`` · 2^(attempt-1), ±25 % jitter, at most 1 h) up to
``max_attempts`` times; then the delivery is ``failed`` (see
``GET /v1/webhooks/:id/deliveries``). :func:`verify_signature` checks a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import sqlite3
import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runtime.local_api.app import (
    ApiProblem,
    _json_object,
    _page,
    validation_problem,
)
from runtime.local_api.store import LocalStore, iso

log = logging.getLogger(__name__)

SECRET_PREFIX: Final = "whsec_"
SIGNATURE_HEADER: Final = "Rymi-Webhook-Signature"
TIMESTAMP_HEADER: Final = "Rymi-Webhook-Timestamp"
ID_HEADER: Final = "Rymi-Webhook-Id"
ATTEMPT_HEADER: Final = "Rymi-Webhook-Attempt"
DEFAULT_TOLERANCE_S: Final = 300
_WEBHOOK_ID = r"{webhook_id:wh_[A-Za-z0-9]+}"

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS webhooks (
        n           INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        url         TEXT NOT NULL,
        events      TEXT NOT NULL,
        description TEXT,
        enabled     INTEGER NOT NULL DEFAULT 1,
        secret      TEXT NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS webhook_deliveries (
        n           INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook_id  TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        event_id    TEXT NOT NULL,
        type        TEXT NOT NULL,
        body        TEXT NOT NULL,
        state       TEXT NOT NULL DEFAULT 'pending',
        attempts    INTEGER NOT NULL DEFAULT 0,
        next_at     REAL NOT NULL,
        last_status INTEGER,
        last_error  TEXT,
        created_at  REAL NOT NULL,
        delivered_at REAL,
        UNIQUE (webhook_id, event_id)
    )""",
    "CREATE INDEX IF NOT EXISTS webhook_due ON webhook_deliveries (state, next_at)",
    """CREATE TABLE IF NOT EXISTS webhook_cursors (
        feed TEXT PRIMARY KEY,
        n    INTEGER NOT NULL
    )""",
    # follow the ingest tables from where they are now (history is not replayed)
    "INSERT OR IGNORE INTO webhook_cursors (feed, n) "
    "SELECT 'call_events', COALESCE(MAX(n), 0) FROM call_events",
    "INSERT OR IGNORE INTO webhook_cursors (feed, n) "
    "SELECT 'transcript_segments', COALESCE(MAX(n), 0) FROM transcript_segments",
)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Rymi-Webhook-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """For receivers: is this delivery from us, signed within ``tolerance_s``?"""
    try:
        timestamp = int(headers[TIMESTAMP_HEADER])
        signature = headers[SIGNATURE_HEADER]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, part.strip()) for part in signature.split(","))


def matches(patterns: Sequence[str], event_type: str) -> bool:
    """``*`` matches all, ``call.*`` a prefix, anything else exactly."""
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def event_id(*parts: Any) -> str:
    """A stable event id: the same report always gets the same id (receivers dedupe)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()
    return f"evt_{digest[:24]}"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


_EVENT_PATTERN = re.compile(r"^(\*|[A-Za-z0-9_.:-]+(\.\*)?)$")


def _check_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http(s) URL")
    return value


def _check_events(value: list[str] | None) -> list[str] | None:
    for item in value or ():
        if len(item) > 100 or not _EVENT_PATTERN.match(item):
            raise ValueError(f"{item!r} is not an event type, 'prefix.*' or '*'")
    return value


class WebhookCreate(_Body):
    url: str = Field(min_length=8, max_length=2000)
    events: list[str] = Field(default_factory=lambda: ["*"], min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool = True

    _url = field_validator("url")(_check_url)
    _events = field_validator("events")(_check_events)


class WebhookUpdate(_Body):
    url: str | None = Field(default=None, min_length=8, max_length=2000)
    events: list[str] | None = Field(default=None, min_length=1, max_length=100)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None
    rotate_secret: bool = False

    _url = field_validator("url")(_check_url)
    _events = field_validator("events")(_check_events)


def _webhook_dict(row: sqlite3.Row, *, secret: bool) -> dict[str, Any]:
    out = {
        "id": row["id"],
        "url": row["url"],
        "events": json.loads(row["events"]),
        "description": row["description"],
        "enabled": bool(row["enabled"]),
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
    }
    if secret:
        out["secret"] = row["secret"]
    return out


class WebhookStore:
    """Webhook tables in the local API's SQLite file, on the store's own thread."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store
        store._call(self._create)

    def _create(self) -> None:
        conn = self.store._conn
        with self.store._tx(conn):
            for statement in _SCHEMA:
                conn.execute(statement)

    async def create(self, spec: WebhookCreate) -> dict[str, Any]:
        def create() -> dict[str, Any]:
            conn = self.store._conn
            webhook_id = f"wh_{secrets.token_hex(12)}"
            now = time.time()
            with self.store._tx(conn):
                conn.execute(
                    "INSERT INTO webhooks (id, url, events, description, enabled, secret, "
                    "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (webhook_id, spec.url, json.dumps(spec.events), spec.description,
                     int(spec.enabled), f"{SECRET_PREFIX}{secrets.token_hex(24)}", now, now),
                )
            return self._get(webhook_id, secret=True) or {}

        return await self.store._run(create)

    def _row(self, webhook_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.store._conn.execute(
            "SELECT * FROM webhooks WHERE id = ?", (webhook_id,)
        ).fetchone()
        return row

    def _get(self, webhook_id: str, *, secret: bool) -> dict[str, Any] | None:
        row = self._row(webhook_id)
        return None if row is None else _webhook_dict(row, secret=secret)

    async def get(self, webhook_id: str) -> dict[str, Any] | None:
        return await self.store._run(self._get, webhook_id, secret=True)

    async def list_hooks(self, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        def list_() -> tuple[list[dict[str, Any]], int]:
            conn = self.store._conn
            total = conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0]
            rows = conn.execute(
                "SELECT * FROM webhooks ORDER BY n LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
            return [_webhook_dict(r, secret=False) for r in rows], int(total)

        return await self.store._run(list_)

    async def update(self, webhook_id: str, spec: WebhookUpdate) -> dict[str, Any] | None:
        def update() -> dict[str, Any] | None:
            conn = self.store._conn
            with self.store._tx(conn):
                if self._row(webhook_id) is None:
                    return None
                changes: dict[str, Any] = {}
                if spec.url is not None:
                    changes["url"] = spec.url
                if spec.events is not None:
                    changes["events"] = json.dumps(spec.events)
                if "description" in spec.model_fields_set:
                    changes["description"] = spec.description
                if spec.enabled is not None:
                    changes["enabled"] = int(spec.enabled)
                if spec.rotate_secret:
                    changes["secret"] = f"{SECRET_PREFIX}{secrets.token_hex(24)}"
                if changes:
                    changes["updated_at"] = time.time()
                    sets = ", ".join(f"{k} = ?" for k in changes)
                    conn.execute(f"UPDATE webhooks SET {sets} WHERE id = ?",
                                 [*changes.values(), webhook_id])
            return self._get(webhook_id, secret=True)

        return await self.store._run(update)

    async def delete(self, webhook_id: str) -> bool:
        def delete() -> bool:
            conn = self.store._conn
            with self.store._tx(conn):
                conn.execute("DELETE FROM webhook_deliveries WHERE webhook_id = ?",
                             (webhook_id,))
                return conn.execute("DELETE FROM webhooks WHERE id = ?",
                                    (webhook_id,)).rowcount > 0

        return await self.store._run(delete)

    async def deliveries(
        self, webhook_id: str, *, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int] | None:
        def list_() -> tuple[list[dict[str, Any]], int] | None:
            conn = self.store._conn
            if self._row(webhook_id) is None:
                return None
            total = conn.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?",
                                 (webhook_id,)).fetchone()[0]
            rows = conn.execute(
                "SELECT * FROM webhook_deliveries WHERE webhook_id = ? ORDER BY n DESC "
                "LIMIT ? OFFSET ?", (webhook_id, limit, offset)).fetchall()
            return [
                {
                    "event_id": r["event_id"],
                    "type": r["type"],
                    "state": r["state"],
                    "attempts": r["attempts"],
                    "last_status": r["last_status"],
                    "last_error": r["last_error"],
                    "created_at": iso(r["created_at"]),
                    "delivered_at": iso(r["delivered_at"]),
                }
                for r in rows
            ], int(total)

        return await self.store._run(list_)

    # ------------------------------------------------------------------ fan-out

    def _active_hooks(self) -> list[tuple[str, list[str]]]:
        rows = self.store._conn.execute(
            "SELECT id, events FROM webhooks WHERE enabled = 1"
        ).fetchall()
        return [(r["id"], json.loads(r["events"])) for r in rows]

    def _insert(self, hooks: list[tuple[str, list[str]]], envelope: dict[str, Any]) -> int:
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False)
        now = time.time()
        count = 0
        for hook_id, patterns in hooks:
            if matches(patterns, envelope["type"]):
                count += self.store._conn.execute(
                    "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, event_id, type, "
                    "body, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (hook_id, envelope["id"], envelope["type"], body, now, now),
                ).rowcount
        return count

    def enqueue_sync(self, event_type: str, call_id: str, data: Mapping[str, Any],
                     ident: str) -> int:
        """On the store thread: one event for every matching webhook."""
        hooks = self._active_hooks()
        if not hooks:
            return 0
        envelope = {"id": ident, "type": event_type, "created_at": iso(time.time()),
                    "call_id": call_id, "data": dict(data)}
        with self.store._tx(self.store._conn):
            return self._insert(hooks, envelope)

    async def enqueue(self, event_type: str, call_id: str, data: Mapping[str, Any],
                      ident: str) -> int:
        return await self.store._run(self.enqueue_sync, event_type, call_id, data, ident)

    def fan_out_sync(self, limit: int = 500) -> int:
        """On the store thread: new ingest rows since the cursors → deliveries."""
        conn = self.store._conn
        hooks = self._active_hooks()
        created = 0
        with self.store._tx(conn):
            cursors = dict(conn.execute("SELECT feed, n FROM webhook_cursors").fetchall())
            events = conn.execute(
                "SELECT n, call_id, seq, type, at, data FROM call_events WHERE n > ? "
                "ORDER BY n LIMIT ?", (cursors.get("call_events", 0), limit)).fetchall()
            segments = conn.execute(
                "SELECT * FROM transcript_segments WHERE n > ? ORDER BY n LIMIT ?",
                (cursors.get("transcript_segments", 0), limit)).fetchall()
            for r in events:
                if hooks:
                    created += self._insert(hooks, {
                        "id": event_id(r["call_id"], "event", r["seq"]),
                        "type": r["type"], "created_at": iso(r["at"]), "call_id": r["call_id"],
                        "data": {"seq": r["seq"], "type": r["type"], "at": r["at"],
                                 "data": json.loads(r["data"])},
                    })
            for r in segments:
                if hooks:
                    created += self._insert(hooks, {
                        "id": event_id(r["call_id"], "transcript", r["seq"]),
                        "type": "transcript.segment", "created_at": iso(r["received_at"]),
                        "call_id": r["call_id"],
                        "data": {"seq": r["seq"], "role": r["role"], "text": r["text"],
                                 "start": r["start_s"], "end": r["end_s"],
                                 "turn_id": r["turn_id"], "interrupted": bool(r["interrupted"])},
                    })
            if events:
                conn.execute("UPDATE webhook_cursors SET n = ? WHERE feed = 'call_events'",
                             (events[-1]["n"],))
            if segments:
                conn.execute(
                    "UPDATE webhook_cursors SET n = ? WHERE feed = 'transcript_segments'",
                    (segments[-1]["n"],))
        return created

    def due_sync(self, limit: int) -> list[dict[str, Any]]:
        rows = self.store._conn.execute(
            "SELECT d.n, d.event_id, d.body, d.attempts, w.url, w.secret FROM "
            "webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id "
            "WHERE d.state = 'pending' AND d.next_at <= ? AND w.enabled = 1 "
            "ORDER BY d.n LIMIT ?", (time.time(), limit)).fetchall()
        return [dict(r) for r in rows]

    def next_due_sync(self) -> float | None:
        row = self.store._conn.execute(
            "SELECT MIN(next_at) FROM webhook_deliveries WHERE state = 'pending'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def outcome_sync(self, n: int, *, ok: bool, status: int | None, error: str | None,
                     retry_in_s: float | None) -> None:
        conn = self.store._conn
        with self.store._tx(conn):
            if ok:
                conn.execute(
                    "UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, "
                    "last_status = ?, last_error = NULL, delivered_at = ? WHERE n = ?",
                    (status, time.time(), n))
            elif retry_in_s is None:
                conn.execute(
                    "UPDATE webhook_deliveries SET state = 'failed', attempts = attempts + 1, "
                    "last_status = ?, last_error = ? WHERE n = ?", (status, error, n))
            else:
                conn.execute(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = ?, "
                    "last_error = ?, next_at = ? WHERE n = ?",
                    (status, error, time.time() + retry_in_s, n))


class WebhookDispatcher:
    """The delivery loop (one per API process). ``start()``, ``kick()``, ``stop()``."""

    def __init__(
        self,
        hooks: WebhookStore,
        *,
        base_backoff_s: float = 5.0,
        max_backoff_s: float = 3600.0,
        max_attempts: int = 10,
        timeout_s: float = 10.0,
        concurrency: int = 8,
        poll_s: float = 1.0,
        allow_hosts: Collection[str] | None = None,
    ) -> None:
        self.hooks = hooks
        #: None: any host; else deliveries to other hosts fail at once (tests, sandboxes)
        self.allow_hosts = None if allow_hosts is None else frozenset(allow_hosts)
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_attempts = max_attempts
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.concurrency = concurrency
        self.poll_s = poll_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="rymi-webhooks")

    def kick(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    def backoff(self, attempts: int) -> float:
        delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** max(0, attempts - 1))
        return delay * random.uniform(0.75, 1.25)

    async def _run(self) -> None:
        store = self.hooks.store
        self._session = aiohttp.ClientSession(timeout=self.timeout)
        while True:
            self._wake.clear()
            try:
                while await store._run(self.hooks.fan_out_sync) > 0:
                    pass
                due = await store._run(self.hooks.due_sync, 100)
                if due:
                    gate = asyncio.Semaphore(self.concurrency)
                    await asyncio.gather(*(self._deliver(d, gate) for d in due))
                    continue
                next_at = await store._run(self.hooks.next_due_sync)
            except Exception:
                log.exception("webhook round failed")
                next_at = None
            delay = self.poll_s if next_at is None else min(
                self.poll_s, max(0.01, next_at - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _deliver(self, item: dict[str, Any], gate: asyncio.Semaphore) -> None:
        async with gate:
            await self._send(item)

    async def _send(self, item: dict[str, Any]) -> None:
        assert self._session is not None
        body = item["body"].encode()
        attempt = int(item["attempts"]) + 1
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "rymi-webhooks/0.1",
            ID_HEADER: item["event_id"],
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(item["secret"], timestamp, body),
            ATTEMPT_HEADER: str(attempt),
        }
        status: int | None = None
        error: str | None = None
        host = urlsplit(item["url"]).hostname or ""
        if self.allow_hosts is not None and host not in self.allow_hosts:
            await self.hooks.store._run(
                self.hooks.outcome_sync, item["n"], ok=False, status=None,
                error=f"host {host!r} is not allowed on this API", retry_in_s=None)
            return
        try:
            async with self._session.post(item["url"], data=body, headers=headers,
                                          allow_redirects=False) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        ok = status is not None and 200 <= status < 300
        if not ok and error is None:
            error = f"HTTP {status}"
        retry = None if ok or attempt >= self.max_attempts else self.backoff(attempt)
        if not ok:
            log.info("webhook delivery %s to %s failed (%s); %s", item["event_id"],
                     item["url"], error,
                     f"retry in {retry:.1f}s" if retry is not None else "giving up")
        await self.hooks.store._run(
            self.hooks.outcome_sync, item["n"], ok=ok, status=status, error=error,
            retry_in_s=retry)


# --------------------------------------------------------------------------- routes


def add_webhook_routes(
    app: web.Application, hooks: WebhookStore, guard: Any
) -> None:
    """``/v1/webhooks`` CRUD and ``GET /v1/webhooks/:id/deliveries``."""

    def missing(webhook_id: str) -> ApiProblem:
        return ApiProblem(404, f"webhook {webhook_id} not found", "not_found")

    async def create(request: web.Request) -> web.Response:
        try:
            spec = WebhookCreate.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise validation_problem("invalid webhook", exc) from None
        hook = await hooks.create(spec)
        resp = web.json_response(hook, status=201)
        resp.headers["Location"] = f"/v1/webhooks/{hook['id']}"
        return resp

    async def list_(request: web.Request) -> web.Response:
        limit, offset = _page(request)
        items, total = await hooks.list_hooks(limit=limit, offset=offset)
        return web.json_response(
            {"webhooks": items, "total": total, "limit": limit, "offset": offset})

    async def get(request: web.Request) -> web.Response:
        webhook_id = request.match_info["webhook_id"]
        hook = await hooks.get(webhook_id)
        if hook is None:
            raise missing(webhook_id)
        return web.json_response(hook)

    async def update(request: web.Request) -> web.Response:
        webhook_id = request.match_info["webhook_id"]
        try:
            spec = WebhookUpdate.model_validate(await _json_object(request))
        except ValidationError as exc:
            raise validation_problem("invalid webhook", exc) from None
        hook = await hooks.update(webhook_id, spec)
        if hook is None:
            raise missing(webhook_id)
        return web.json_response(hook)

    async def delete(request: web.Request) -> web.Response:
        webhook_id = request.match_info["webhook_id"]
        if not await hooks.delete(webhook_id):
            raise missing(webhook_id)
        return web.json_response({"id": webhook_id, "deleted": True})

    async def deliveries(request: web.Request) -> web.Response:
        webhook_id = request.match_info["webhook_id"]
        limit, offset = _page(request)
        page = await hooks.deliveries(webhook_id, limit=limit, offset=offset)
        if page is None:
            raise missing(webhook_id)
        items, total = page
        return web.json_response(
            {"deliveries": items, "total": total, "limit": limit, "offset": offset})

    router = app.router
    router.add_post("/v1/webhooks", guard(create))
    router.add_get("/v1/webhooks", guard(list_))
    router.add_get(f"/v1/webhooks/{_WEBHOOK_ID}", guard(get))
    router.add_patch(f"/v1/webhooks/{_WEBHOOK_ID}", guard(update))
    router.add_delete(f"/v1/webhooks/{_WEBHOOK_ID}", guard(delete))
    router.add_get(f"/v1/webhooks/{_WEBHOOK_ID}/deliveries", guard(deliveries))
