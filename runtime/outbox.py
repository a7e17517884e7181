"""The durable outbox: every call event and transcript segment is committed to SQLite
before anything else sees it, then delivered to the API in order, exactly once in effect.

- :class:`Outbox` is written from the audio path's event loop: ``enqueue_*`` is one short
  SQLite transaction (WAL, ``synchronous=NORMAL``: no fsync per commit), tens of
  microseconds, and what it returns is on disk: a crash or ``kill -9`` of the worker loses
  nothing acknowledged (an OS crash or power loss can lose the last moments unless
  ``fsync=True``). WAL checkpoints, which do fsync, run on a helper thread.
- Each item gets a per-call, per-kind ``seq`` (1, 2, …) and the idempotency key
  ``"{call_id}:{kind}:{seq}"``; the API drops an item whose key it has seen, so a batch
  retried after a lost response creates no duplicates.
- :class:`OutboxDeliverer` is the background task that sends pending items, in ``seq``
  order per call and kind, in batches, with exponential back-off and jitter. It stops (items
  stay pending) when the API rejects the key; pending items survive restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from runtime.api_client import ApiClient, ApiError

if os.name == "posix":
    import fcntl

log = logging.getLogger(__name__)

Kind = Literal["call", "event", "transcript", "recording", "summary"]
KINDS: Final[tuple[Kind, ...]] = ("call", "event", "transcript", "recording", "summary")
#: Kinds sent as one batch of items per request; the others go one item per request.
BATCHED: Final = frozenset({"event", "transcript"})

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS items (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        seq        INTEGER NOT NULL,
        payload    TEXT NOT NULL,
        state      TEXT NOT NULL DEFAULT 'pending',
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        created_at REAL NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS items_pending ON items (state, call_id, kind, seq)",
    """CREATE TABLE IF NOT EXISTS sequences (
        call_id    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        last_seq   INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (call_id, kind)
    )""",
)
#: Sequence counters of calls with nothing pending are forgotten after this long.
SEQUENCE_RETENTION_S: Final = 7 * 24 * 3600
_SEQ_CACHE_MAX: Final = 10_000


class OutboxError(RuntimeError):
    """The outbox could not store a report (disk full, database locked…)."""


class OutboxLocked(OutboxError):
    """Another process already uses this outbox file."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    call_id: str
    kind: Kind
    seq: int
    payload: dict[str, Any]
    size: int


def _json_default(value: Any) -> Any:
    """Numpy scalars, sets and other odd values in event data become plain JSON."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode_payload(payload: Mapping[str, Any]) -> str:
    """Strict JSON (NaN/inf become null: other parsers reject them)."""
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False, default=_json_default)
    except ValueError:
        return json.dumps(_finite(json.loads(json.dumps(payload, default=_json_default))),
                          separators=(",", ":"), ensure_ascii=False)


def _marks(ids: Sequence[int]) -> str:
    return ",".join("?" * len(ids))


class Outbox:
    """``Outbox(path)``: the SQLite file of pending reports. Thread-safe (one lock); the
    worker uses it from its event loop and checkpoints from a helper thread."""

    def __init__(self, path: Path | str, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock(self.path)
        try:
            # check_same_thread=False + self._db: safe from any thread, although the worker
            # only writes from its event loop.
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except BaseException:
            self._unlock()
            raise
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
            # Checkpoints run on a helper thread (checkpoint()); this backstop only
            # matters when no deliverer runs for a long time.
            conn.execute("PRAGMA wal_autocheckpoint=10000")
            conn.execute("PRAGMA busy_timeout=2000")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(
                "DELETE FROM sequences WHERE updated_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM items WHERE items.call_id = sequences.call_id)",
                (time.time() - SEQUENCE_RETENTION_S,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            self._unlock()
            raise
        self._conn = conn
        self._seqs: dict[tuple[str, str], int] = {}
        self._listeners: list[Callable[[], None]] = []
        self._db = threading.RLock()
        self._ckpt_lock = threading.Lock()
        self._ckpt_conn: sqlite3.Connection | None = None
        self._closed = False

    @staticmethod
    def _lock(path: Path) -> int | None:
        """One process per outbox: two would hand out the same seq numbers."""
        if os.name != "posix":  # pragma: no cover
            return None
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutboxLocked(
                f"{path} is used by another worker process; give each worker its own "
                "data_dir (RYMI_DATA_DIR)"
            ) from None
        return fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def close(self) -> None:
        """Checkpoint and close. Idempotent; pending items stay for the next start."""
        if self._closed:
            return
        self._closed = True
        with self._ckpt_lock:
            if self._ckpt_conn is not None:
                self._ckpt_conn.close()
                self._ckpt_conn = None
        with self._db:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
        self._unlock()

    # ------------------------------------------------------------------ writing

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs after every enqueue (the deliverer's wake-up)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    def enqueue_event(
        self, call_id: str, type: str, data: Mapping[str, Any], at: float | None = None
    ) -> int:
        """Store one call event; returns its ``seq``. ``at``: Unix seconds (default now).
        Raises OutboxError if it could not be stored."""
        at = time.time() if at is None else at
        return self._enqueue(call_id, "event", {"type": type, "at": at, "data": dict(data)})

    def enqueue_transcript(self, call_id: str, segment: Mapping[str, Any]) -> int:
        """Store one transcript segment (``role``, ``text``, ``start``, ``end``,
        ``turn_id``, ``interrupted``); returns its ``seq``."""
        fields = {k: v for k, v in segment.items() if k not in ("idempotency_key", "seq")}
        return self._enqueue(call_id, "transcript", fields)

    def enqueue_call(self, call_id: str, body: Mapping[str, Any]) -> int:
        """Store the creation of a call whose id the worker made (``POST /v1/calls`` with
        ``id``). Until it is delivered, nothing else of that call is sent."""
        return self._enqueue(call_id, "call", {**dict(body), "id": call_id})

    def enqueue_recording(self, call_id: str, meta: Mapping[str, Any]) -> int:
        """Store the upload of a finished recording; ``meta["path"]`` is the WAV file (it
        is deleted once the API has it)."""
        return self._enqueue(call_id, "recording", dict(meta))

    def enqueue_summary(self, call_id: str, summary: Mapping[str, Any]) -> int:
        """Store a post-call summary (``POST /v1/calls/:id/summary``)."""
        return self._enqueue(call_id, "summary", dict(summary))

    def _next_seq(self, call_id: str, kind: Kind) -> int:
        key = (call_id, kind)
        last = self._seqs.get(key)
        if last is None:
            row = self._conn.execute(
                "SELECT last_seq FROM sequences WHERE call_id = ? AND kind = ?", key
            ).fetchone()
            last = int(row[0]) if row else 0
        return last + 1

    def _enqueue(self, call_id: str, kind: Kind, fields: Mapping[str, Any]) -> int:
        with self._db:
            seq = self._store(call_id, kind, fields)
        for callback in list(self._listeners):
            try:
                callback()
            except Exception:
                log.exception("outbox listener failed")
        return seq

    def _store(self, call_id: str, kind: Kind, fields: Mapping[str, Any]) -> int:
        if self._closed:
            raise OutboxError("the outbox is closed")
        seq = self._next_seq(call_id, kind)
        payload = {"idempotency_key": f"{call_id}:{kind}:{seq}", "seq": seq, **fields}
        text = encode_payload(payload)
        now = time.time()
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO sequences (call_id, kind, last_seq, updated_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (call_id, kind) "
                    "DO UPDATE SET last_seq = excluded.last_seq, updated_at = excluded.updated_at",
                    (call_id, kind, seq, now),
                )
                conn.execute(
                    "INSERT INTO items (call_id, kind, seq, payload, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (call_id, kind, seq, text, now),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OutboxError(f"could not store a call {kind}: {exc}") from exc
        if len(self._seqs) >= _SEQ_CACHE_MAX:
            self._seqs.pop(next(iter(self._seqs)))  # oldest; reloaded from disk if needed
        self._seqs[(call_id, kind)] = seq
        return seq

    # ------------------------------------------------------------------ reading

    def pending_count(self, call_id: str | None = None) -> int:
        """Items not yet delivered (dead-lettered ones excluded)."""
        if call_id is None:
            return self._count("SELECT COUNT(*) FROM items WHERE state = 'pending'")
        return self._count(
            "SELECT COUNT(*) FROM items WHERE state = 'pending' AND call_id = ?", call_id
        )

    def dead_count(self) -> int:
        """Items the API refused for good (kept with ``last_error``; see requeue_dead)."""
        return self._count("SELECT COUNT(*) FROM items WHERE state = 'dead'")

    def last_id(self) -> int:
        return self._count("SELECT COALESCE(MAX(id), 0) FROM items")

    def pending_through(self, last_id: int) -> int:
        """Pending items enqueued no later than item ``last_id``."""
        return self._count(
            "SELECT COUNT(*) FROM items WHERE state = 'pending' AND id <= ?", last_id
        )

    def pending_groups(self) -> list[tuple[str, Kind]]:
        """``(call_id, kind)`` streams with pending items, oldest first."""
        rows = self._query(
            "SELECT call_id, kind FROM items WHERE state = 'pending' "
            "GROUP BY call_id, kind ORDER BY MIN(id)"
        )
        return [(str(r[0]), r[1]) for r in rows]

    def next_batch(
        self, call_id: str, kind: Kind, *, limit: int, max_bytes: int = 512 * 1024
    ) -> list[OutboxItem]:
        """The oldest pending items of one stream, in ``seq`` order (at least one)."""
        rows = self._query(
            "SELECT id, seq, payload FROM items WHERE state = 'pending' AND call_id = ? "
            "AND kind = ? ORDER BY seq, id LIMIT ?",
            call_id, kind, limit,
        )
        items: list[OutboxItem] = []
        total = 0
        for item_id, seq, text in rows:
            size = len(text)
            if items and total + size > max_bytes:
                break
            total += size
            items.append(OutboxItem(int(item_id), call_id, kind, int(seq), json.loads(text), size))
        return items

    # ------------------------------------------------------------------ outcomes

    def mark_delivered(self, ids: Sequence[int]) -> None:
        if ids:
            self._write(f"DELETE FROM items WHERE id IN ({_marks(ids)})", ids)

    def mark_failed(self, ids: Sequence[int], error: str) -> None:
        """Count a failed attempt (the items stay pending)."""
        if ids:
            self._write(
                "UPDATE items SET attempts = attempts + 1, last_error = ? "
                f"WHERE id IN ({_marks(ids)})",
                [error[:1000], *ids],
            )

    def mark_dead(self, ids: Sequence[int], error: str) -> None:
        """The API refused these for good (e.g. 400): keep them, stop sending them."""
        if ids:
            self._write(
                "UPDATE items SET state = 'dead', attempts = attempts + 1, last_error = ? "
                f"WHERE id IN ({_marks(ids)})",
                [error[:1000], *ids],
            )

    def requeue_dead(self) -> int:
        """Make dead-lettered items pending again (after fixing the API); returns how many."""
        with self._db:
            cur = self._conn.execute("UPDATE items SET state = 'pending' WHERE state = 'dead'")
            return int(cur.rowcount)

    def _query(self, sql: str, *args: Any) -> list[Any]:
        with self._db:
            return self._conn.execute(sql, args).fetchall()

    def _count(self, sql: str, *args: Any) -> int:
        return int(self._query(sql, *args)[0][0])

    def _write(self, sql: str, args: Sequence[Any]) -> None:
        try:
            with self._db:
                self._conn.execute(sql, list(args))
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox write failed: {exc}") from exc

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never blocks enqueue). Thread-safe;
        run it off the event loop (it fsyncs)."""
        with self._ckpt_lock:
            if self._closed:
                return
            if self._ckpt_conn is None:
                self._ckpt_conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                self._ckpt_conn.execute("PRAGMA busy_timeout=100")
            with contextlib.suppress(sqlite3.Error):
                self._ckpt_conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


_Outcome = Literal["done", "more", "retry", "global", "auth"]


class OutboxDeliverer:
    """Sends what the outbox holds. ``await start()``, ``kick()`` (new items; enqueue
    already kicks), ``await flush(timeout)``, ``await stop()``.

    Per stream (call id × events/transcript) items go in ``seq`` order, one batch in
    flight. Failures: no connection or 429 → every stream waits (429 exactly its
    ``Retry-After``); 5xx → that stream backs off; 401/403 → delivery stops with an error
    log, items stay pending; 413 → smaller batches; 404 (unknown call) → the batch is
    dead-lettered; other 4xx → the refused item is dead-lettered (kept, logged) so one bad
    item cannot block a call's reports forever.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: ApiClient,
        *,
        batch_size: int = 100,
        max_batch_bytes: int = 512 * 1024,
        concurrency: int = 4,
        base_backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        idle_poll_s: float = 5.0,
        checkpoint_interval_s: float = 5.0,
    ) -> None:
        self.outbox = outbox
        self.client = client
        self.batch_size = batch_size
        self.max_batch_bytes = max_batch_bytes
        self.concurrency = concurrency
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.idle_poll_s = idle_poll_s
        self.checkpoint_interval_s = checkpoint_interval_s
        self.delivered = 0  #: items delivered by this deliverer
        self.dead = 0  #: items dead-lettered by this deliverer
        self.failed_attempts = 0  #: requests that failed (any reason)
        self.failure: ApiError | None = None  #: set when the API rejected the key
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._global_failures = 0
        self._global_until = 0.0
        self._group_failures: dict[tuple[str, str], int] = {}
        self._group_until: dict[tuple[str, str], float] = {}
        self._group_limit: dict[tuple[str, str], int] = {}
        self._last_checkpoint = time.monotonic()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start delivering; pending items from a previous run go first."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self.outbox.add_listener(self.kick)
        self._task = asyncio.create_task(self._run(), name="rymi-outbox-deliverer")

    def kick(self) -> None:
        """Wake the delivery loop (safe from any thread)."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or here is loop:
            self._wake.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Stop (an in-flight batch is abandoned: it is re-sent next start, de-duplicated
        by the API)."""
        self.outbox.remove_listener(self.kick)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._notify_progress()

    async def flush(self, timeout: float) -> bool:
        """Wait until everything enqueued so far is delivered (or dead-lettered).

        Returns False on timeout, or at once if delivery is stopped (e.g. the key was
        rejected). Back-off in force is respected, not skipped."""
        mark = self.outbox.last_id()
        deadline = time.monotonic() + timeout
        self.kick()
        while self.outbox.pending_through(mark) > 0:
            if not self.running:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            progress = self._progress
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):  # not wait_for: see _run
                    await progress.wait()
        return True

    # ------------------------------------------------------------------ loop

    def _notify_progress(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                delay = await self._round()
            except Exception:  # never let the loop die silently; items stay pending
                log.exception("outbox delivery round failed")
                self._global_failures += 1
                delay = self._backoff(self._global_failures)
            self._notify_progress()
            if self.failure is not None:
                return
            await self._maybe_checkpoint()
            if delay <= 0:
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that races
            # with the wake-up (kick() then stop()), and stop() would wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        if now - self._last_checkpoint >= self.checkpoint_interval_s:
            self._last_checkpoint = now
            await asyncio.to_thread(self.outbox.checkpoint)

    def _backoff(self, failures: int) -> float:
        """Exponential, capped, with jitter (half to full) so workers do not stampede."""
        delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** max(0, failures - 1))
        return delay * random.uniform(0.5, 1.0)

    async def _round(self) -> float:
        """One pass over every stream that may send now; returns seconds until the next
        pass is needed (0: at once)."""
        now = time.monotonic()
        if now < self._global_until:
            return self._global_until - now
        groups = self.outbox.pending_groups()
        if not groups:
            return self.idle_poll_s
        # a call the API does not know yet: its other reports wait for its creation
        uncreated = {call_id for call_id, kind in groups if kind == "call"}
        groups = [g for g in groups if g[1] == "call" or g[0] not in uncreated]
        eligible = [g for g in groups if self._group_until.get(g, 0.0) <= now]
        if not eligible:
            return max(0.01, min(self._group_until[g] for g in groups) - now)
        gate = asyncio.Semaphore(self.concurrency)

        async def run(group: tuple[str, Kind]) -> tuple[_Outcome, ApiError | None, bool]:
            async with gate:
                if self._global_until > time.monotonic() or self.failure is not None:
                    return "retry", None, False
                return await self._drain(group)

        results = await asyncio.gather(*(run(g) for g in eligible))
        progressed = any(r[2] for r in results)
        now = time.monotonic()
        if self.failure is not None:
            return self.idle_poll_s
        if any(r[0] == "global" for r in results):
            return max(0.01, self._global_until - now)
        if progressed:
            self._global_failures = 0
            return 0.0
        if any(r[0] == "more" for r in results):
            return 0.0
        remaining = self.outbox.pending_groups()
        uncreated = {call_id for call_id, kind in remaining if kind == "call"}
        remaining = [g for g in remaining if g[1] == "call" or g[0] not in uncreated]
        waits = [self._group_until.get(g, 0.0) - now for g in remaining]
        return max(0.01, min(waits)) if waits else self.idle_poll_s

    async def _drain(
        self, group: tuple[str, Kind], max_batches: int = 10
    ) -> tuple[_Outcome, ApiError | None, bool]:
        """Send up to ``max_batches`` batches of one stream. Returns (outcome, error,
        delivered anything)."""
        call_id, kind = group
        progressed = False
        for _ in range(max_batches):
            limit = self._group_limit.get(group, self.batch_size if kind in BATCHED else 1)
            batch = self.outbox.next_batch(
                call_id, kind, limit=limit, max_bytes=self.max_batch_bytes
            )
            if not batch:
                self._group_limit.pop(group, None)
                self._group_failures.pop(group, None)
                self._group_until.pop(group, None)
                return "done", None, progressed
            ids = [item.id for item in batch]
            payloads = [item.payload for item in batch]
            try:
                await self._send(call_id, kind, payloads)
            except ApiError as exc:
                outcome = self._on_error(group, batch, exc)
                if outcome is None:
                    continue  # split or dead-lettered: go on with the rest
                return outcome, exc, progressed
            self.outbox.mark_delivered(ids)
            if kind == "recording":
                for payload in payloads:
                    with contextlib.suppress(OSError):
                        os.unlink(str(payload["path"]))
            self.delivered += len(ids)
            progressed = True
            self._group_failures.pop(group, None)
            self._group_until.pop(group, None)
        return "more", None, progressed

    async def _send(self, call_id: str, kind: Kind, payloads: list[dict[str, Any]]) -> None:
        if kind == "event":
            await self.client.post_events(call_id, payloads)
        elif kind == "transcript":
            await self.client.post_transcript(call_id, payloads)
        elif kind == "call":
            await self.client.create_call_item(payloads[0])
        elif kind == "summary":
            await self.client.post_summary(call_id, payloads[0])
        elif kind == "recording":
            await self.client.put_recording(call_id, str(payloads[0]["path"]))
        else:  # pragma: no cover - KINDS is closed
            raise ValueError(f"unknown outbox kind {kind!r}")

    def _global_backoff(self, exc: ApiError) -> None:
        """The API is unreachable or rate-limits us: every stream waits, starting now (so
        streams still queued in this round do not send either)."""
        now = time.monotonic()
        if now >= self._global_until:
            self._global_failures += 1
            delay = exc.retry_after
            if delay is None:
                delay = self._backoff(self._global_failures)
            self._global_until = now + delay
            log.warning(
                "outbox: API unavailable (%s); %d report(s) pending, retrying in %.1fs",
                exc, self.outbox.pending_count(), delay,
            )
        elif exc.retry_after is not None:
            self._global_until = max(self._global_until, now + exc.retry_after)

    def _on_error(
        self, group: tuple[str, Kind], batch: list[OutboxItem], exc: ApiError
    ) -> _Outcome | None:
        call_id, kind = group
        ids = [item.id for item in batch]
        self.failed_attempts += 1
        if exc.auth_failed:
            self.failure = exc
            log.error(
                "outbox delivery STOPPED: the API at %s rejected the worker's key (%s). "
                "%d report(s) stay pending in %s and are delivered after a restart with a "
                "valid RYMI_API_KEY.",
                self.client.base_url, exc, self.outbox.pending_count(), self.outbox.path,
            )
            return "auth"
        self.outbox.mark_failed(ids, str(exc))
        if exc.status == 0 or exc.status == 429:
            self._global_backoff(exc)
            return "global"
        if exc.retryable:
            failures = self._group_failures.get(group, 0) + 1
            self._group_failures[group] = failures
            delay = exc.retry_after if exc.retry_after is not None else self._backoff(failures)
            self._group_until[group] = time.monotonic() + delay
            log.warning("outbox: %s %s of %s failed (%s); retrying in %.1fs",
                        len(batch), kind, call_id, exc, delay)
            return "retry"
        # The API refused the request itself: find the refused item and set it aside.
        if exc.status == 404:
            # the call itself is unknown there (e.g. the API's data was reset): every item
            # of the batch would be refused alike
            self.outbox.mark_dead(ids, str(exc))
            self.dead += len(ids)
            log.error("outbox: the API does not know call %s (%s); %d %s item(s) kept as dead "
                      "in %s", call_id, exc, len(ids), kind, self.outbox.path)
            return None
        if len(batch) > 1:
            self._group_limit[group] = max(1, len(batch) // 2) if exc.status == 413 else 1
            return None
        self.outbox.mark_dead(ids, str(exc))
        self.dead += 1
        self._group_limit.pop(group, None)
        log.error(
            "outbox: the API refused %s %s seq %d of call %s for good (%s); it is kept as "
            "dead in %s", kind, batch[0].payload.get("idempotency_key"), batch[0].seq,
            call_id, exc, self.outbox.path,
        )
        return None
