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
from runtime.providers import build_providers

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
        duration = round(time.time() - self.started_at, 3)
        self.report_status("failed" if failed else "completed", reason=reason, duration_s=duration)
        self.manager._forget(self)
        self.send_live({"type": "ended", "reason": reason})
        if not self.ended.done():
            self.ended.set_result(reason)
        self.manager.outbox_kick()

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
        call_id = spec.call_id or await self._create_call(spec)
        call = ActiveCall(self, call_id, spec, live)
        self.calls[call_id] = call
        call.report_status(
            "ringing",
            transport=spec.transport,
            worker_id=self.worker_id,
            carrier_call_id=spec.carrier_call_id,
        )
        try:
            agent = await self._agent(spec.agent_id)
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
        call.report_status("in_progress")
        watcher = asyncio.create_task(call._watch())
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        return call

    async def _create_call(self, spec: CallSpec) -> str:
        try:
            call = await self.api.create_call(
                agent_id=spec.agent_id,
                direction=spec.direction,
                transport=spec.transport,
                from_=spec.from_,
                to=spec.to,
                metadata=spec.metadata,
                worker_id=self.worker_id,
            )
        except ApiError as exc:
            if exc.status == 404:
                raise CallRejected(
                    f"unknown agent {spec.agent_id}", "agent_not_found", 404
                ) from exc
            raise CallRejected(f"API refused the call: {exc}", "api_error", 502) from exc
        return str(call["id"])

    async def _agent(self, agent_id: str) -> AgentConfig:
        try:
            agent, _raw = await self.api.get_agent(agent_id)
        except ApiError as exc:
            if exc.status == 404:
                raise CallRejected(f"unknown agent {agent_id}", "agent_not_found", 404) from exc
            raise CallRejected(f"agent config unavailable: {exc}", "api_error", 502) from exc
        except ValidationError as exc:
            raise CallRejected(f"invalid agent config: {exc}", "invalid_agent_config", 400) from exc
        return agent

    def _forget(self, call: ActiveCall) -> None:
        self.calls.pop(call.call_id, None)

    async def drain(self, timeout: float) -> None:
        """Refuse new calls; let active ones finish within ``timeout``, then end them."""
        self.draining = True
        pending = [c.ended for c in self.calls.values()]
        if pending:
            _done, _ = await asyncio.wait(pending, timeout=timeout)
        for call in list(self.calls.values()):
            await call.hangup("worker_shutdown")

    async def close(self) -> None:
        for call in list(self.calls.values()):
            with contextlib.suppress(Exception):
                await call.hangup("worker_shutdown")
