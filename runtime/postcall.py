"""After the call: summaries, and what a crash left behind. Durable like the outbox.

``<data_dir>/calls.sqlite3`` (WAL) journals two things:

- ``live_calls``: a row per call this process holds, removed when the call is over. Rows
  found at start-up belong to a previous process that died (SIGKILL, OOM, power): each
  such call is reported ``failed`` with reason ``worker_lost`` and its partial recording
  is repaired and uploaded (:func:`recover_orphans`).
- ``jobs``: a post-call summary to produce (the agent config and the transcript as the
  call ended), written in the same transaction that removes the live row, so a crash
  between the end of a call and its summary only delays the summary.

:class:`PostCallProcessor` runs the jobs: the agent's LLM (pipelines/summary.py), retried
with back-off, the result reported through the outbox (``POST /v1/calls/:id/summary``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from pipelines.agent_config import AgentConfig
from pipelines.summary import SummaryError, summarize
from providers import registry
from providers.base import ProviderError
from runtime.outbox import Outbox
from runtime.recording import repair_wav

log = logging.getLogger(__name__)

SUMMARY_TIMEOUT_S: Final = 60.0
MAX_ATTEMPTS: Final = 6

_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS live_calls (
        call_id        TEXT PRIMARY KEY,
        agent_id       TEXT NOT NULL,
        recording_path TEXT,
        started_at     REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS jobs (
        call_id    TEXT PRIMARY KEY,
        agent      TEXT NOT NULL,
        transcript TEXT NOT NULL,
        attempts   INTEGER NOT NULL DEFAULT 0,
        next_at    REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL
    )""",
)


@dataclass(frozen=True, slots=True)
class Job:
    call_id: str
    agent: dict[str, Any]
    transcript: list[dict[str, Any]]
    attempts: int


class CallJournal:
    """The live calls and pending post-call jobs of one worker (one process per data_dir:
    the outbox's lock already guarantees it)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=2000")
        for statement in _SCHEMA:
            conn.execute(statement)
        self._conn = conn
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.close()

    def call_started(self, call_id: str, agent_id: str, recording_path: str | None) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO live_calls (call_id, agent_id, recording_path, started_at) "
            "VALUES (?, ?, ?, ?)",
            (call_id, agent_id, recording_path, time.time()),
        )

    def call_finished(
        self,
        call_id: str,
        *,
        agent: Mapping[str, Any] | None = None,
        transcript: list[dict[str, Any]] | None = None,
    ) -> None:
        """The call is over; with ``agent`` a summary job is queued (atomically)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM live_calls WHERE call_id = ?", (call_id,))
            if agent is not None:
                now = time.time()
                conn.execute(
                    "INSERT OR REPLACE INTO jobs (call_id, agent, transcript, next_at, "
                    "created_at) VALUES (?, ?, ?, ?, ?)",
                    (call_id, json.dumps(dict(agent)), json.dumps(transcript or []), now, now),
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def orphans(self) -> list[tuple[str, str, str | None]]:
        """``(call_id, agent_id, recording_path)`` of calls a dead process held."""
        rows = self._conn.execute(
            "SELECT call_id, agent_id, recording_path FROM live_calls ORDER BY started_at"
        ).fetchall()
        return [(str(r[0]), str(r[1]), r[2]) for r in rows]

    def due_jobs(self, now: float | None = None) -> list[Job]:
        rows = self._conn.execute(
            "SELECT call_id, agent, transcript, attempts FROM jobs WHERE next_at <= ? "
            "ORDER BY next_at LIMIT 20",
            (time.time() if now is None else now,),
        ).fetchall()
        return [Job(str(r[0]), json.loads(r[1]), json.loads(r[2]), int(r[3])) for r in rows]

    def next_due(self) -> float | None:
        row = self._conn.execute("SELECT MIN(next_at) FROM jobs").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def job_count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def job_done(self, call_id: str) -> None:
        self._conn.execute("DELETE FROM jobs WHERE call_id = ?", (call_id,))

    def job_failed(self, call_id: str, error: str, retry_in_s: float) -> None:
        self._conn.execute(
            "UPDATE jobs SET attempts = attempts + 1, last_error = ?, next_at = ? "
            "WHERE call_id = ?",
            (error[:1000], time.time() + retry_in_s, call_id),
        )


def llm_context(agent: AgentConfig) -> dict[str, Any]:
    """What the registry's LLM factories take (as runtime/providers.py builds it)."""
    return {
        "prompt": agent.prompt,
        "first_message": agent.first_message,
        "playbook": agent.playbook.model_dump(),
    }


async def summarize_call(
    agent: AgentConfig,
    transcript: list[dict[str, Any]],
    credentials: Mapping[str, str],
    *,
    timeout_s: float = SUMMARY_TIMEOUT_S,
) -> dict[str, Any]:
    """The summary object as reported: the agent's LLM route in order (the first engine
    that answers wins), plus ``provider``, ``model`` and ``generated_at``."""
    errors: list[str] = []
    for choice in agent.llm.chain():
        try:
            llm = registry.create_llm(
                choice.provider,
                model=choice.model,
                options=choice.options,
                credentials=credentials,
                context=llm_context(agent),
            )
            async with asyncio.timeout(timeout_s):
                result = await summarize(llm, agent, transcript)
        except (ProviderError, SummaryError, ValueError, TimeoutError) as exc:
            errors.append(f"{choice.provider}: {exc or type(exc).__name__}")
            continue
        return {
            **result.model_dump(),
            "provider": choice.provider,
            "model": choice.model,
            "generated_at": time.time(),
            "transcript_segments": len(transcript),
        }
    raise SummaryError("; ".join(errors) or "no LLM configured")


class PostCallProcessor:
    """Runs the journal's summary jobs in the background. ``start()``, ``kick()``,
    ``await idle(timeout)``, ``await stop()``."""

    def __init__(
        self,
        journal: CallJournal,
        outbox: Outbox,
        credentials: Mapping[str, str],
        *,
        base_backoff_s: float = 5.0,
        max_backoff_s: float = 600.0,
    ) -> None:
        self.journal = journal
        self.outbox = outbox
        self.credentials = dict(credentials)
        self.base_backoff_s = base_backoff_s
        self.max_backoff_s = max_backoff_s
        self.done = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="rymi-postcall")

    def kick(self) -> None:
        self._idle.clear()
        self._wake.set()

    async def idle(self, timeout: float) -> bool:
        """Wait until no job is due now (jobs in back-off do not count)."""
        if self._task is None or self._task.done():
            return self.journal.job_count() == 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    await self._idle.wait()
                    if not self.journal.due_jobs():
                        return True
                    self.kick()
        return False

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                for job in self.journal.due_jobs():
                    await self._process(job)
            except Exception:
                log.exception("post-call processing failed")
            if self._wake.is_set():
                continue
            self._idle.set()
            due = self.journal.next_due()
            delay = 5.0 if due is None else min(5.0, max(0.05, due - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    async def _process(self, job: Job) -> None:
        try:
            agent = AgentConfig.model_validate(job.agent)
            summary = await summarize_call(agent, job.transcript, self.credentials)
        except (SummaryError, ValueError) as exc:
            if job.attempts + 1 >= MAX_ATTEMPTS:
                log.error("summary of call %s failed for good: %s", job.call_id, exc)
                self.outbox.enqueue_event(
                    job.call_id, "summary.failed", {"error": str(exc)[:500]}
                )
                self.journal.job_done(job.call_id)
                return
            delay = min(self.max_backoff_s, self.base_backoff_s * 2**job.attempts)
            delay *= random.uniform(0.75, 1.0)
            log.warning("summary of call %s failed (%s); retrying in %.0fs",
                        job.call_id, exc, delay)
            self.journal.job_failed(job.call_id, str(exc), delay)
            return
        self.outbox.enqueue_summary(job.call_id, {**summary, "source": "worker"})
        self.journal.job_done(job.call_id)
        self.done += 1


def recover_orphans(journal: CallJournal, outbox: Outbox, recordings: Path) -> int:
    """Report the calls a dead worker process held as failed (``worker_lost``), upload
    what their recordings hold, and forget them. Returns how many there were."""
    orphans = journal.orphans()
    for call_id, _agent_id, recording_path in orphans:
        log.warning("call %s was cut off by a worker crash; reporting it failed", call_id)
        outbox.enqueue_event(
            call_id, "call.status", {"status": "failed", "reason": "worker_lost"}
        )
        if recording_path:
            meta = repair_wav(Path(recording_path))
            if meta is not None:
                outbox.enqueue_recording(call_id, meta)
        journal.call_finished(call_id)
    # leftovers of calls that ended (uploaded or not) are the outbox's business; a
    # stray .part without a journal row is garbage
    known = {Path(p) for _c, _a, p in orphans if p}
    for stray in recordings.glob("*.wav.part") if recordings.is_dir() else ():
        if stray not in known:
            with contextlib.suppress(OSError):
                stray.unlink()
    return len(orphans)
