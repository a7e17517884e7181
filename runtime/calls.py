"""The calls one worker process holds: admission, set-up, reporting and teardown.

Every transport (local WebSocket, carrier streams, LiveKit rooms) hands its audio to an
:class:`ActiveCall` obtained from :meth:`CallManager.open_call`; the manager fetches and
validates the agent, builds the providers, runs the :class:`Conversation`, and writes every
event and transcript segment to the durable outbox before anything else sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from pipelines.agent_config import AgentConfig
from pipelines.conversation import Conversation
from pipelines.ports import AudioOutput, TranscriptSegment
from providers.base import AudioFormat, ConfigError, ProviderError
from runtime.api_client import ApiClient, ApiError
from runtime.outbox import Outbox
from runtime.postcall import CallJournal, PostCallProcessor, recover_orphans
from runtime.providers import build_providers
from runtime.recording import CallRecording

log = logging.getLogger(__name__)


class LiveSink(Protocol):
    """Live updates to a connected client. Must not block: queue and return."""

    def send_json(self, data: Mapping[str, Any]) -> None: ...


class CallRejected(Exception):
    """The worker will not take this call; ``code`` is machine-readable."""

    def __init__(self, reason: str, code: str, status: int = 503) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status


@dataclass(slots=True)
class CallSpec:
    agent_id: str
    transport: str
    input_format: AudioFormat
    call_id: str | None = None
    direction: str = "inbound"
    from_: str | None = None
    to: str | None = None
    carrier_call_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class _Observer:
    """Durable first (outbox), then live."""

    def __init__(self, call: ActiveCall) -> None:
        self.call = call

    def event(self, type: str, data: Mapping[str, Any]) -> None:
        self.call.report_event(type, data)

    def transcript(self, segment: TranscriptSegment) -> None:
        payload = {
            "role": segment.role,
            "text": segment.text,
            "turn_id": segment.turn_id,
            "start": round(segment.start, 3),
            "end": round(segment.end, 3),
            "interrupted": segment.interrupted,
        }
        self.call.manager.outbox.enqueue_transcript(self.call.call_id, payload)
        self.call.segments.append(payload)
        self.call.send_live({"type": "transcript", "segment": payload})

    def live(self, type: str, data: Mapping[str, Any]) -> None:
        self.call.send_live({"type": "live", "live": {"type": type, **data}})


class ActiveCall:
    """One live call, as its transport sees it."""

    def __init__(
        self,
        manager: CallManager,
        call_id: str,
        spec: CallSpec,
        live: LiveSink | None,
    ) -> None:
        self.manager = manager
        self.call_id = call_id
        self.spec = spec
        self.live = live
        self.conversation: Conversation | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.started_at = time.time()
        self.segments: list[dict[str, Any]] = []
        self.agent: AgentConfig | None = None
        self.recording: CallRecording | None = None
        self.in_progress = False  # the conversation started (a summary is due at the end)
        self._closing: asyncio.Task[None] | None = None

    def send_live(self, message: Mapping[str, Any]) -> None:
        if self.live is not None:
            try:
                self.live.send_json(message)
            except Exception:  # a slow or gone client never breaks the call
                log.debug("live update dropped for %s", self.call_id, exc_info=True)

    def report_event(self, type: str, data: Mapping[str, Any]) -> None:
        """A durable call event (outbox first), mirrored to the live client."""
        at = time.time()
        self.manager.outbox.enqueue_event(self.call_id, type, dict(data), at)
        self.send_live({"type": "event", "event": {"type": type, "at": at, "data": dict(data)}})

    def report_status(self, status: str, **extra: Any) -> None:
        self.report_event("call.status", {"status": status, **extra})

    async def push_audio(self, data: bytes) -> None:
        if self.conversation is not None and not self.ended.done():
            if self.recording is not None:
                self.recording.on_input(data)
            await self.conversation.push_audio(data)

    def on_mark(self, name: str) -> None:
        if self.conversation is not None:
            self.conversation.on_mark(name)

    def dtmf(self, digit: str) -> None:
        if self.conversation is not None:
            self.conversation.dtmf(digit)

    async def hangup(self, reason: str) -> None:
        """End the call (caller hung up, transport closed, API asked). Idempotent."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason, failed=False))
        await asyncio.shield(self._closing)

    async def fail(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason, failed=True))
        await asyncio.shield(self._closing)

    async def _close(self, reason: str, *, failed: bool) -> None:
        try:
            if self.conversation is not None:
                await self.conversation.close(reason)
        except Exception:
            log.exception("closing call %s", self.call_id)
        recording = self._finish_recording()
        duration = round(time.time() - self.started_at, 3)
        self.report_status("failed" if failed else "completed", reason=reason, duration_s=duration)
        self._after_call(recording)
        self.manager._forget(self)
        self.send_live({"type": "ended", "reason": reason})
        if not self.ended.done():
            self.ended.set_result(reason)
        self.manager.outbox_kick()

    def _finish_recording(self) -> dict[str, Any] | None:
        recording, self.recording = self.recording, None
        if recording is None:
            return None
        if not self.in_progress:
            recording.discard()
            return None
        try:
            return recording.finish()
        except Exception:
            log.exception("recording of call %s could not be completed", self.call_id)
            return None

    def _after_call(self, recording: Mapping[str, Any] | None) -> None:
        """Queue the recording upload and the summary job (durably; see postcall.py)."""
        manager = self.manager
        try:
            if recording is not None and recording.get("duration_s"):
                manager.outbox.enqueue_recording(self.call_id, recording)
            summarize = self.in_progress and self.agent is not None
            manager.journal.call_finished(
                self.call_id,
                agent=self.agent.model_dump(mode="json") if summarize and self.agent else None,
                transcript=list(self.segments),
            )
            if summarize:
                manager.postcall.start()  # no-op once running (start() may not have run)
                manager.postcall.kick()
        except Exception:
            log.exception("post-call work of call %s could not be queued", self.call_id)

    async def _watch(self) -> None:
        assert self.conversation is not None
        reason = await self.conversation.ended
        failed = reason == "error"
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason, failed=failed))


class CallManager:
    """Admission control and the registry of live calls for one worker process."""

    def __init__(
        self,
        *,
        api: ApiClient,
        outbox: Outbox,
        max_calls: int,
        worker_id: str,
        credentials: Mapping[str, str] | None = None,
        on_outbox_kick: Any = None,
    ) -> None:
        self.api = api
        self.outbox = outbox
        self.max_calls = max_calls
        self.worker_id = worker_id
        self.credentials = dict(credentials or {})
        self.calls: dict[str, ActiveCall] = {}
        self.draining = False
        self._on_outbox_kick = on_outbox_kick
        self._watchers: set[asyncio.Task[None]] = set()
        data_dir = outbox.path.parent
        self.recordings_dir = data_dir / "recordings"
        self.journal = CallJournal(data_dir / "calls.sqlite3")
        self.postcall = PostCallProcessor(self.journal, outbox, self.credentials)
        self.control: Any = None  # runtime.control.ControlPoller in hosted mode
        self.started_at = time.time()

    async def start(self, *, control_poll: bool = False) -> None:
        """Background work: report calls a crashed predecessor left, run post-call jobs,
        and (hosted mode) long-poll the API for control commands (runtime/control.py)."""
        lost = recover_orphans(self.journal, self.outbox, self.recordings_dir)
        if lost:
            log.warning("%d call(s) of a previous worker process were reported failed", lost)
            self.outbox_kick()
        self.postcall.start()
        if control_poll:
            from runtime.control import ControlPoller

            self.control = ControlPoller(self)
            self.control.start()

    def end_call(self, call_id: str, reason: str = "ended_by_api") -> bool:
        """Hang up a call this worker holds (the API's ``POST /v1/calls/:id/end``);
        returns False if it holds no such call. Does not wait for the hang-up."""
        call = self.calls.get(call_id)
        if call is None:
            return False
        task = asyncio.create_task(call.hangup(reason))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return True

    def stats(self) -> dict[str, Any]:
        """Capacity and load, as ``GET /v1/calls/queue/stats`` and heartbeats show them."""
        return {
            "worker_id": self.worker_id,
            "max_calls": self.max_calls,
            "active_calls": len(self.calls),
            "available": 0 if self.draining else max(0, self.max_calls - len(self.calls)),
            "load": round(self.load, 3),
            "draining": self.draining,
            "postcall_jobs": self.journal.job_count(),
            "outbox_pending": self.outbox.pending_count(),
            "started_at": self.started_at,
        }

    def active(self) -> list[dict[str, Any]]:
        """The live calls, as ``GET /v1/calls/active`` shows them."""
        now = time.time()
        return [
            {
                "id": c.call_id,
                "agent_id": c.spec.agent_id,
                "worker_id": self.worker_id,
                "transport": c.spec.transport,
                "direction": c.spec.direction,
                "status": "in_progress" if c.in_progress else "ringing",
                "started_at": c.started_at,
                "elapsed_s": round(now - c.started_at, 3),
            }
            for c in list(self.calls.values())
        ]

    @property
    def load(self) -> float:
        return len(self.calls) / self.max_calls if self.max_calls else 1.0

    def outbox_kick(self) -> None:
        if self._on_outbox_kick is not None:
            self._on_outbox_kick()

    async def open_call(
        self, spec: CallSpec, output: AudioOutput, live: LiveSink | None = None
    ) -> ActiveCall:
        if self.draining:
            raise CallRejected("worker is draining", "draining")
        if len(self.calls) >= self.max_calls:
            raise CallRejected("worker at capacity", "at_capacity")
        agent, unavailable = await self._agent_or_reason(spec.agent_id)
        call_id = spec.call_id or self._new_call(spec)
        call = ActiveCall(self, call_id, spec, live)
        self.calls[call_id] = call
        self.journal.call_started(call_id, spec.agent_id, None)
        call.report_status(
            "ringing",
            transport=spec.transport,
            worker_id=self.worker_id,
            carrier_call_id=spec.carrier_call_id,
        )
        try:
            if unavailable is not None:
                raise unavailable
            assert agent is not None
            call.agent = agent
            if spec.direction == "outbound":
                await self._check_dnc(spec)
            if agent.recording_enabled:
                call.recording = CallRecording(
                    self.recordings_dir, call_id, spec.input_format, output.format
                )
                self.journal.call_started(call_id, spec.agent_id, str(call.recording.part_path))
                output = call.recording.wrap(output)
            stt, llm, tts = build_providers(
                agent,
                credentials=self.credentials,
                on_failover=lambda kind, old, new, why: call.report_event(
                    "provider.failover", {"kind": kind, "from": old, "to": new, "reason": why}
                ),
            )
            call.conversation = Conversation(
                agent=agent,
                stt=stt,
                llm=llm,
                tts=tts,
                input_format=spec.input_format,
                output=output,
                observer=_Observer(call),
            )
            await call.conversation.start()
        except CallRejected as exc:
            await call.fail(f"{exc.code}: {exc.reason}")
            raise
        except ProviderError as exc:
            # the seed's codes: 402 insufficient credits, otherwise an upstream failure
            code = "insufficient_credits" if exc.status == 402 else "provider_error"
            log.warning("call %s could not start: %s", call_id, exc)
            await call.fail(f"{code}: {exc}")
            raise CallRejected(f"call could not start: {exc}", code, exc.status) from exc
        except (ConfigError, ValueError) as exc:
            log.warning("call %s could not start: %s", call_id, exc)
            await call.fail(f"setup_failed: {exc}")
            raise CallRejected(f"call could not start: {exc}", "setup_failed", 400) from exc
        call.in_progress = True
        call.report_status("in_progress")
        if self.control is not None:
            self.control.kick()
        watcher = asyncio.create_task(call._watch())
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return call

    def _new_call(self, spec: CallSpec) -> str:
        """A call id made here, its creation written to the outbox (delivered before any
        other report of the call), so that a call starts even while the API is down."""
        call_id = f"call_{secrets.token_hex(12)}"
        body: dict[str, Any] = {
            "agent_id": spec.agent_id,
            "direction": spec.direction,
            "transport": spec.transport,
            "worker_id": self.worker_id,
        }
        for key, value in (("from", spec.from_), ("to", spec.to)):
            if value is not None:
                body[key] = value
        if spec.metadata:
            body["metadata"] = dict(spec.metadata)
        self.outbox.enqueue_call(call_id, body)
        return call_id

    async def _agent_or_reason(
        self, agent_id: str
    ) -> tuple[AgentConfig | None, CallRejected | None]:
        """The agent's config, or why the call cannot run (reported on the call).

        An unknown agent raises at once (no call is recorded for it). When the API cannot
        be reached, the config fetched last is used; without one the call fails."""
        try:
            agent, _raw = await self.api.get_agent(agent_id)
        except ApiError as exc:
            if exc.status == 404:
                raise CallRejected(f"unknown agent {agent_id}", "agent_not_found", 404) from exc
            cached = self.api.cached_agent(agent_id) if exc.retryable else None
            if cached is not None:
                log.warning("API unavailable (%s); agent %s runs from its cached config",
                            exc, agent_id)
                return cached[0], None
            if exc.retryable:
                return None, CallRejected(
                    f"agent config unavailable: the API cannot be reached ({exc}) and this "
                    f"worker has no cached config for {agent_id}",
                    "agent_unavailable",
                    503,
                )
            return None, CallRejected(f"agent config unavailable: {exc}", "api_error", 502)
        except ValidationError as exc:
            return None, CallRejected(
                f"invalid agent config: {exc}", "invalid_agent_config", 400
            )
        return agent, None

    async def _check_dnc(self, spec: CallSpec) -> None:
        """Outbound calls: refuse a number on the do-not-call registry, before any media.
        Fails closed: a number that cannot be checked is not called."""
        number = spec.to
        if not number:
            raise CallRejected("outbound call without a 'to' number", "dnc_unchecked", 400)
        try:
            result = await self.api.dnc_check(number)
        except ApiError as exc:
            raise CallRejected(
                f"cannot check {number} against the do-not-call registry: {exc}",
                "dnc_unavailable",
                503,
            ) from exc
        if result.get("listed"):
            why = result.get("reason")
            raise CallRejected(
                f"{number} is on the do-not-call list" + (f" ({why})" if why else ""),
                "dnc_listed",
                403,
            )

    def _forget(self, call: ActiveCall) -> None:
        self.calls.pop(call.call_id, None)
        if self.control is not None:
            self.control.kick()

    async def drain(self, timeout: float) -> None:
        """Refuse new calls; let active ones finish within ``timeout``, then end them."""
        self.draining = True
        deadline = time.monotonic() + timeout
        pending = [c.ended for c in self.calls.values()]
        if pending:
            _done, _ = await asyncio.wait(pending, timeout=timeout)
        for call in list(self.calls.values()):
            await call.hangup("worker_shutdown")
        # summaries of the calls just ended (a job left over is run on the next start)
        await self.postcall.idle(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
        await self._stop_background()

    async def _stop_background(self) -> None:
        if self.control is not None:
            await self.control.stop()
            self.control = None
        await self.postcall.stop()

    async def close(self) -> None:
        for call in list(self.calls.values()):
            with contextlib.suppress(Exception):
                await call.hangup("worker_shutdown")
        await self._stop_background()
        self.journal.close()
