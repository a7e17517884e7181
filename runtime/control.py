"""How the API reaches the worker that holds a call, when they are separate processes.

A worker behind NAT or a load balancer cannot be called by the API, so the worker calls
in: :class:`ControlPoller` long-polls ``POST /v1/workers/:worker_id/heartbeat?wait=…``
with its capacity, load and live calls. The API answers at once when it has commands for
that worker (``{"type": "end_call", "call_id", "reason"}``), otherwise after ``wait``
seconds with none; the worker carries each command out and acknowledges it with
``DELETE /v1/workers/:worker_id/commands/:id`` (a command is repeated until then, so it
is executed at least once; ending a call twice is harmless). An ``end`` therefore reaches
the worker in one round trip, well within a second. In embedded mode the local API calls
the :class:`~runtime.calls.CallManager` directly and no poller runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING, Any

from runtime.api_client import ApiError

if TYPE_CHECKING:
    from runtime.calls import CallManager

log = logging.getLogger(__name__)


class ControlPoller:
    """``ControlPoller(manager).start()`` … ``await stop()``."""

    def __init__(self, manager: CallManager, *, wait_s: float = 20.0) -> None:
        self.manager = manager
        self.wait_s = wait_s
        self.executed = 0
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="rymi-control-poller")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def state(self) -> dict[str, Any]:
        stats = self.manager.stats()
        calls = [
            {k: c[k] for k in ("id", "agent_id", "status", "transport", "direction",
                               "started_at")}
            for c in self.manager.active()
        ]
        return {
            "max_calls": stats["max_calls"],
            "active_calls": stats["active_calls"],
            "draining": stats["draining"],
            "load": stats["load"],
            "calls": calls,
        }

    def kick(self) -> None:
        """The worker's calls changed: report now instead of at the end of the poll."""
        self._kick.set()

    async def _poll(self) -> list[dict[str, Any]] | None:
        """One heartbeat; None when a kick cut it short (it is sent again at once)."""
        self._kick.clear()
        request = asyncio.ensure_future(self.manager.api.worker_heartbeat(
            self.manager.worker_id, self.state(), wait_s=self.wait_s))
        kicked = asyncio.ensure_future(self._kick.wait())
        try:
            await asyncio.wait([request, kicked], return_when=asyncio.FIRST_COMPLETED)
        finally:
            kicked.cancel()
        if request.done():
            return request.result()
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError, ApiError):
            await request
        return None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                commands = await self._poll()
                if commands is None:
                    continue
            except ApiError as exc:
                failures += 1
                delay = 60.0 if exc.auth_failed else min(30.0, 0.5 * 2 ** min(failures, 6))
                if exc.status == 404:
                    delay = 300.0  # this API has no control endpoint
                log.log(logging.ERROR if exc.auth_failed else logging.INFO,
                        "control poll failed (%s); again in %.0fs", exc, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.0))
                continue
            failures = 0
            for command in commands:
                await self._execute(command)

    async def _execute(self, command: dict[str, Any]) -> None:
        kind, call_id = command.get("type"), command.get("call_id")
        if kind == "end_call" and isinstance(call_id, str):
            held = self.manager.end_call(call_id, str(command.get("reason") or "ended_by_api"))
            log.info("API asked to end call %s (%s)", call_id,
                     "ending" if held else "not held here")
        else:
            log.warning("unknown control command %r ignored", kind)
        self.executed += 1
        with contextlib.suppress(ApiError):
            await self.manager.api.ack_command(self.manager.worker_id, str(command.get("id")))
