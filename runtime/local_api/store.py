"""SQLite storage of the embedded ``/v1`` API: agents, calls, call events, transcripts, keys.

Threading: one stdlib ``sqlite3`` connection owned by one dedicated thread (a single-worker
executor). In embedded mode this store shares the event loop with live call audio, so no
query, commit or WAL checkpoint (which fsyncs) may run on the loop; a single thread also
serialises writers, so read-merge-validate-write of ``PUT /v1/agents/:id`` and the
de-duplicating ingest are atomic without extra locking. ``aiosqlite`` would give the same
thread-per-connection model, but its open is async while the worker opens the store (and
mints the dev key) synchronously at start-up; the executor serves both styles.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from pipelines.agent_config import AgentConfig, default_agent

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION: Final = 1
CALL_STATUSES: Final = ("queued", "ringing", "in_progress", "completed", "failed")
TERMINAL_STATUSES: Final = frozenset({"completed", "failed"})
ACTIVE_STATUSES: Final = ("queued", "ringing", "in_progress")
DEV_KEY_FILE: Final = "dev-api-key"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    n          INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    config     TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    n          INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    agent_id   TEXT NOT NULL,
    status     TEXT NOT NULL,
    direction  TEXT NOT NULL,
    transport  TEXT NOT NULL,
    from_addr  TEXT,
    to_addr    TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at   REAL,
    end_reason TEXT,
    worker_id  TEXT,
    metadata   TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS calls_by_agent ON calls (agent_id, n);
CREATE INDEX IF NOT EXISTS calls_by_status ON calls (status, n);
CREATE TABLE IF NOT EXISTS call_events (
    n               INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id         TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    idempotency_key TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    type            TEXT NOT NULL,
    at              REAL NOT NULL,
    data            TEXT NOT NULL,
    received_at     REAL NOT NULL,
    UNIQUE (call_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS call_events_by_seq ON call_events (call_id, seq, n);
CREATE TABLE IF NOT EXISTS transcript_segments (
    n               INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id         TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    idempotency_key TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    role            TEXT NOT NULL,
    text            TEXT NOT NULL,
    start_s         REAL NOT NULL,
    end_s           REAL NOT NULL,
    turn_id         INTEGER NOT NULL,
    interrupted     INTEGER NOT NULL,
    received_at     REAL NOT NULL,
    UNIQUE (call_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS transcript_by_seq ON transcript_segments (call_id, seq, n);
CREATE TABLE IF NOT EXISTS api_keys (
    n          INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hash   TEXT NOT NULL UNIQUE,
    hint       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""


class NotFound(LookupError):
    """The agent or call does not exist."""


class Conflict(Exception):
    """The change conflicts with the resource's current state (HTTP 409)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidCursor(ValueError):
    """A ``cursor`` that names no call of this listing."""


def new_id(prefix: str) -> str:
    """``agt_…`` / ``call_…``: 96 random bits, URL-safe, no ordering leaked."""
    return f"{prefix}_{secrets.token_hex(12)}"


def new_secret_key() -> str:
    return f"rymi_{secrets.token_hex(24)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def iso(ts: float | None) -> str | None:
    """Unix seconds → ISO 8601 UTC with milliseconds, as the API renders timestamps."""
    if ts is None:
        return None
    text = datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON Merge Patch (RFC 7396): objects merge recursively, ``null`` removes a key,
    anything else (lists, scalars) replaces."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class LocalStore:
    """All state of the local API. Sync methods are for start-up/shutdown; the rest are
    coroutines that run on the store's own thread."""

    def __init__(self, path: Path | str, *, key_file: Path | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key_file = key_file or self.path.parent / DEV_KEY_FILE
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rymi-local-api")
        self._closed = False
        self._conn: sqlite3.Connection = self._call(self._open)
        self._key_hashes: set[str] = set(self._call(self._load_key_hashes))

    # ------------------------------------------------------------------ plumbing

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run on the store thread and wait (start-up and shutdown only)."""
        return self._executor.submit(fn, *args).result()

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this worker's "
                f"{SCHEMA_VERSION}; upgrade the worker or use another data_dir"
            )
        with self._tx(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            seeded = conn.execute("SELECT 1 FROM meta WHERE key='default_agent'").fetchone()
            if seeded is None:
                agent_id = self._insert_agent(conn, default_agent())
                conn.execute("INSERT INTO meta (key, value) VALUES ('default_agent', ?)",
                             (agent_id,))
                log.info("created the default agent %s", agent_id)
        return conn

    @staticmethod
    @contextlib.contextmanager
    def _tx(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection and stop the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._executor.submit(self._conn.close).result()
        self._executor.shutdown(wait=True)

    # ------------------------------------------------------------------ API keys

    def _load_key_hashes(self) -> list[str]:
        return [r[0] for r in self._conn.execute("SELECT key_hash FROM api_keys")]

    def verify_key(self, key: str) -> bool:
        """Is ``key`` a secret key of this API? In memory: no I/O per request."""
        return bool(key) and hash_key(key) in self._key_hashes

    def add_key(self, key: str, name: str = "secret") -> None:
        """Accept ``key`` (stored as its SHA-256 only)."""
        digest = hash_key(key)

        def insert() -> None:
            with self._tx(self._conn):
                self._conn.execute(
                    "INSERT OR IGNORE INTO api_keys (key_hash, hint, name, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (digest, f"{key[:9]}…{key[-4:]}", name, time.time()),
                )

        self._call(insert)
        self._key_hashes.add(digest)

    def ensure_dev_key(self, key: str | None = None) -> tuple[str, bool]:
        """The key local clients (and this worker's own reporting) use.

        With ``key`` (e.g. ``RYMI_API_KEY``) that key is accepted and returned. Otherwise the
        dev key is read from ``<data_dir>/dev-api-key`` or, on first start, generated and
        saved there (mode 0600). Returns ``(key, created)``; print the key only if created.
        """
        if key:
            self.add_key(key, "configured")
            return key, False
        created = False
        try:
            dev_key = self.key_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            dev_key = ""
        if not dev_key.startswith("rymi_"):
            dev_key = new_secret_key()
            self._write_key_file(dev_key)
            created = True

            def revoke_old() -> None:
                with self._tx(self._conn):
                    self._conn.execute("DELETE FROM api_keys WHERE name = 'dev'")

            self._call(revoke_old)
            self._key_hashes = set(self._call(self._load_key_hashes))
        self.add_key(dev_key, "dev")
        return dev_key, created

    def _write_key_file(self, key: str) -> None:
        tmp = self.key_file.with_name(f".{self.key_file.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(key + "\n")
        os.replace(tmp, self.key_file)

    # ------------------------------------------------------------------ agents

    @staticmethod
    def _insert_agent(conn: sqlite3.Connection, config: AgentConfig) -> str:
        agent_id = new_id("agt")
        now = time.time()
        conn.execute(
            "INSERT INTO agents (id, config, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (agent_id, _dumps(config.model_dump(mode="json")), now, now),
        )
        return agent_id

    @staticmethod
    def _agent_dict(row: sqlite3.Row) -> dict[str, Any]:
        return {
            "id": row["id"],
            "created_at": iso(row["created_at"]),
            "updated_at": iso(row["updated_at"]),
            **json.loads(row["config"]),
        }

    def _get_agent_row(self, agent_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM agents WHERE id = ?", (agent_id,)
        ).fetchone()
        return row

    async def create_agent(self, config: AgentConfig) -> dict[str, Any]:
        def create() -> dict[str, Any]:
            with self._tx(self._conn):
                agent_id = self._insert_agent(self._conn, config)
            row = self._get_agent_row(agent_id)
            assert row is not None
            return self._agent_dict(row)

        return await self._run(create)

    async def get_agent(self, agent_id: str) -> dict[str, Any] | None:
        def get() -> dict[str, Any] | None:
            row = self._get_agent_row(agent_id)
            return None if row is None else self._agent_dict(row)

        return await self._run(get)

    async def list_agents(self, *, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Oldest first, so the default agent leads the list."""

        def list_() -> tuple[list[dict[str, Any]], int]:
            total = self._conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0]
            rows = self._conn.execute(
                "SELECT * FROM agents ORDER BY n LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
            return [self._agent_dict(r) for r in rows], int(total)

        return await self._run(list_)

    async def update_agent(self, agent_id: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``patch`` into the stored config (RFC 7396), validate the whole, save.

        Raises NotFound, or pydantic's ValidationError naming the wrong field (nothing is
        saved then)."""

        def update() -> dict[str, Any]:
            with self._tx(self._conn):
                row = self._get_agent_row(agent_id)
                if row is None:
                    raise NotFound(agent_id)
                current = json.loads(row["config"])
                merged = merge_patch(current, dict(patch))
                config = AgentConfig.model_validate(merged).model_dump(mode="json")
                if config != current:
                    self._conn.execute(
                        "UPDATE agents SET config = ?, updated_at = ? WHERE id = ?",
                        (_dumps(config), time.time(), agent_id),
                    )
            new_row = self._get_agent_row(agent_id)
            assert new_row is not None
            return self._agent_dict(new_row)

        return await self._run(update)

    async def delete_agent(self, agent_id: str) -> None:
        """Raises NotFound, or Conflict while the agent has a call that is not over.
        Finished calls keep their record (and ``agent_id``)."""

        def delete() -> None:
            with self._tx(self._conn):
                if self._get_agent_row(agent_id) is None:
                    raise NotFound(agent_id)
                active = self._conn.execute(
                    "SELECT COUNT(*) FROM calls WHERE agent_id = ? AND status IN (?, ?, ?)",
                    (agent_id, *ACTIVE_STATUSES),
                ).fetchone()[0]
                if active:
                    raise Conflict(
                        f"agent {agent_id} has {active} active call(s); delete it when they end",
                        "agent_has_active_calls",
                    )
                self._conn.execute("DELETE FROM agents WHERE id = ?", (agent_id,))

        await self._run(delete)

    # ------------------------------------------------------------------ calls

    @staticmethod
    def _call_dict(row: sqlite3.Row) -> dict[str, Any]:
        started, ended = row["started_at"], row["ended_at"]
        duration = None
        if ended is not None:
            duration = round(max(0.0, ended - started), 3) if started is not None else 0.0
        return {
            "id": row["id"],
            "agent_id": row["agent_id"],
            "status": row["status"],
            "direction": row["direction"],
            "transport": row["transport"],
            "from": row["from_addr"],
            "to": row["to_addr"],
            "created_at": iso(row["created_at"]),
            "started_at": iso(started),
            "ended_at": iso(ended),
            "duration_s": duration,
            "end_reason": row["end_reason"],
            "worker_id": row["worker_id"],
            "metadata": json.loads(row["metadata"]),
        }

    def _get_call_row(self, call_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM calls WHERE id = ?", (call_id,)
        ).fetchone()
        return row

    async def create_call(
        self,
        *,
        agent_id: str,
        direction: str,
        transport: str,
        from_: str | None = None,
        to: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> dict[str, Any]:
        """A new call in status ``queued``. Raises NotFound for an unknown agent."""

        def create() -> dict[str, Any]:
            call_id = new_id("call")
            with self._tx(self._conn):
                if self._get_agent_row(agent_id) is None:
                    raise NotFound(agent_id)
                self._conn.execute(
                    "INSERT INTO calls (id, agent_id, status, direction, transport, from_addr, "
                    "to_addr, created_at, worker_id, metadata) "
                    "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                    (call_id, agent_id, direction, transport, from_, to, time.time(),
                     worker_id, _dumps(dict(metadata or {}))),
                )
            row = self._get_call_row(call_id)
            assert row is not None
            return self._call_dict(row)

        return await self._run(create)

    async def create_call_with_id(
        self,
        call_id: str,
        *,
        agent_id: str,
        direction: str,
        transport: str,
        from_: str | None = None,
        to: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        worker_id: str | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """A call with the id a worker made; idempotent. Returns ``(call, created)``:
        the same id again gives the stored call and False. Raises NotFound for an unknown
        agent, Conflict if the id exists for another agent."""

        def create() -> tuple[dict[str, Any], bool]:
            with self._tx(self._conn):
                row = self._get_call_row(call_id)
                if row is not None:
                    if row["agent_id"] != agent_id:
                        raise Conflict(
                            f"call {call_id} exists for another agent", "call_exists"
                        )
                    return self._call_dict(row), False
                if self._get_agent_row(agent_id) is None:
                    raise NotFound(agent_id)
                self._conn.execute(
                    "INSERT INTO calls (id, agent_id, status, direction, transport, from_addr, "
                    "to_addr, created_at, worker_id, metadata) "
                    "VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                    (call_id, agent_id, direction, transport, from_, to, time.time(),
                     worker_id, _dumps(dict(metadata or {}))),
                )
            new_row = self._get_call_row(call_id)
            assert new_row is not None
            return self._call_dict(new_row), True

        return await self._run(create)

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        def get() -> dict[str, Any] | None:
            row = self._get_call_row(call_id)
            return None if row is None else self._call_dict(row)

        return await self._run(get)

    async def agent_exists(self, agent_id: str) -> bool:
        return await self._run(lambda: self._get_agent_row(agent_id) is not None)

    async def list_calls(
        self,
        *,
        limit: int,
        offset: int,
        agent_id: str | None = None,
        status: str | None = None,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], int, str | None]:
        """Newest first. ``cursor`` (a call id) resumes after that call; ``total`` counts
        every call matching the filters. Returns ``(calls, total, next_cursor)``."""

        def list_() -> tuple[list[dict[str, Any]], int, str | None]:
            where: list[str] = []
            args: list[Any] = []
            if agent_id is not None:
                where.append("agent_id = ?")
                args.append(agent_id)
            if status is not None:
                where.append("status = ?")
                args.append(status)
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            total = self._conn.execute(f"SELECT COUNT(*) FROM calls{clause}", args).fetchone()[0]
            page_where, page_args = list(where), list(args)
            if cursor is not None:
                at = self._conn.execute("SELECT n FROM calls WHERE id = ?", (cursor,)).fetchone()
                if at is None:
                    raise InvalidCursor(cursor)
                page_where.append("n < ?")
                page_args.append(at[0])
            page_clause = f" WHERE {' AND '.join(page_where)}" if page_where else ""
            rows = self._conn.execute(
                f"SELECT * FROM calls{page_clause} ORDER BY n DESC LIMIT ? OFFSET ?",
                [*page_args, limit + 1, offset],
            ).fetchall()
            more = len(rows) > limit
            calls = [self._call_dict(r) for r in rows[:limit]]
            next_cursor = calls[-1]["id"] if more and calls else None
            return calls, int(total), next_cursor

        return await self._run(list_)

    # ------------------------------------------------------------------ ingest

    def _apply_status(self, call: dict[str, Any], at: float, data: Mapping[str, Any]) -> None:
        """Fold one ``call.status`` event into the call row (terminal states are final)."""
        if call["status"] in TERMINAL_STATUSES:
            return
        status = str(data["status"])
        call["status"] = status
        if isinstance(data.get("worker_id"), str):
            call["worker_id"] = data["worker_id"]
        if status == "in_progress" and call["started_at"] is None:
            call["started_at"] = at
        if status in TERMINAL_STATUSES:
            call["ended_at"] = at
            reason = data.get("reason")
            call["end_reason"] = None if reason is None else str(reason)[:500]

    async def add_events(
        self, call_id: str, events: Sequence[Mapping[str, Any]]
    ) -> tuple[int, int]:
        """Store new events, skip ones whose ``idempotency_key`` is known; apply
        ``call.status`` events in ``seq`` order. Returns ``(new, duplicate)``."""

        def add() -> tuple[int, int]:
            new = dup = 0
            now = time.time()
            with self._tx(self._conn):
                row = self._get_call_row(call_id)
                if row is None:
                    raise NotFound(call_id)
                call = {k: row[k] for k in ("status", "started_at", "ended_at", "end_reason",
                                            "worker_id")}
                before = dict(call)
                for ev in sorted(events, key=lambda e: int(e["seq"])):
                    cur = self._conn.execute(
                        "INSERT OR IGNORE INTO call_events "
                        "(call_id, idempotency_key, seq, type, at, data, received_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (call_id, ev["idempotency_key"], int(ev["seq"]), ev["type"],
                         float(ev["at"]), _dumps(ev.get("data") or {}), now),
                    )
                    if cur.rowcount == 0:
                        dup += 1
                        continue
                    new += 1
                    if ev["type"] == "call.status":
                        self._apply_status(call, float(ev["at"]), ev.get("data") or {})
                if call != before:
                    self._conn.execute(
                        "UPDATE calls SET status = ?, started_at = ?, ended_at = ?, "
                        "end_reason = ?, worker_id = ? WHERE id = ?",
                        (call["status"], call["started_at"], call["ended_at"],
                         call["end_reason"], call["worker_id"], call_id),
                    )
            return new, dup

        return await self._run(add)

    async def add_segments(
        self, call_id: str, segments: Sequence[Mapping[str, Any]]
    ) -> tuple[int, int]:
        """Store new transcript segments (de-duplicated). Returns ``(new, duplicate)``."""

        def add() -> tuple[int, int]:
            new = dup = 0
            now = time.time()
            with self._tx(self._conn):
                if self._get_call_row(call_id) is None:
                    raise NotFound(call_id)
                for seg in segments:
                    cur = self._conn.execute(
                        "INSERT OR IGNORE INTO transcript_segments (call_id, idempotency_key, "
                        "seq, role, text, start_s, end_s, turn_id, interrupted, received_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (call_id, seg["idempotency_key"], int(seg["seq"]), seg["role"],
                         seg["text"], float(seg["start"]), float(seg["end"]),
                         int(seg["turn_id"]), int(bool(seg.get("interrupted"))), now),
                    )
                    if cur.rowcount == 0:
                        dup += 1
                    else:
                        new += 1
            return new, dup

        return await self._run(add)

    async def list_events(
        self, call_id: str, *, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """In ``seq`` order. Raises NotFound for an unknown call."""

        def list_() -> tuple[list[dict[str, Any]], int]:
            if self._get_call_row(call_id) is None:
                raise NotFound(call_id)
            total = self._conn.execute(
                "SELECT COUNT(*) FROM call_events WHERE call_id = ?", (call_id,)
            ).fetchone()[0]
            rows = self._conn.execute(
                "SELECT seq, type, at, data FROM call_events WHERE call_id = ? "
                "ORDER BY seq, n LIMIT ? OFFSET ?",
                (call_id, limit, offset),
            ).fetchall()
            events = [
                {"seq": r["seq"], "type": r["type"], "at": r["at"], "data": json.loads(r["data"])}
                for r in rows
            ]
            return events, int(total)

        return await self._run(list_)

    async def list_segments(
        self, call_id: str, *, limit: int, offset: int
    ) -> tuple[list[dict[str, Any]], int]:
        """In ``seq`` order. Raises NotFound for an unknown call."""

        def list_() -> tuple[list[dict[str, Any]], int]:
            if self._get_call_row(call_id) is None:
                raise NotFound(call_id)
            total = self._conn.execute(
                "SELECT COUNT(*) FROM transcript_segments WHERE call_id = ?", (call_id,)
            ).fetchone()[0]
            rows = self._conn.execute(
                "SELECT * FROM transcript_segments WHERE call_id = ? "
                "ORDER BY seq, n LIMIT ? OFFSET ?",
                (call_id, limit, offset),
            ).fetchall()
            segments = [
                {
                    "seq": r["seq"],
                    "role": r["role"],
                    "text": r["text"],
                    "start": r["start_s"],
                    "end": r["end_s"],
                    "turn_id": r["turn_id"],
                    "interrupted": bool(r["interrupted"]),
                }
                for r in rows
            ]
            return segments, int(total)

        return await self._run(list_)
