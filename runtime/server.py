"""One worker process: the aiohttp app, its call manager, outbox delivery and shutdown.

In embedded mode (no ``RYMI_API_URL``) the same app also serves the local ``/v1`` API
backed by SQLite, and the worker reports to it over loopback HTTP exactly as it would to
the hosted API: one code path for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

from aiohttp import web

from runtime.api_client import ApiClient
from runtime.calls import CallManager
from runtime.metrics import LoopLagMonitor
from runtime.outbox import Outbox, OutboxDeliverer
from runtime.providers import warm_providers
from runtime.settings import WorkerSettings
from runtime.transports import local_ws

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024


def settle_heap() -> None:
    """Hide the start-up heap (imported SDKs, pydantic models, numpy…, ~130k objects) from
    the cyclic garbage collector. A full collection walks every tracked object and holds
    the event loop meanwhile (a glitch on every call at once); the start-up heap lives as
    long as the process, so walking it is pure waste. Frozen objects are still freed by
    reference counting; only cycles among them are never collected."""
    gc.collect()
    gc.freeze()
    log.debug("gc: %d start-up objects frozen", gc.get_freeze_count())


class Worker:
    """Start with :meth:`start`, stop with :meth:`stop` (drains active calls first)."""

    def __init__(self, settings: WorkerSettings, *, embedded_api: bool) -> None:
        self.settings = settings
        self.embedded_api = embedded_api
        self.app = web.Application(client_max_size=MAX_BODY_BYTES)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.api_key = ""
        self.dev_key_created = False
        self.store: Any = None
        self.client: ApiClient | None = None
        self.outbox: Outbox | None = None
        self.deliverer: OutboxDeliverer | None = None
        self.manager: CallManager | None = None
        self._prewarm: asyncio.Task[None] | None = None
        self.loop_lag: LoopLagMonitor | None = None  # set by runtime.metrics

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        if self.embedded_api:
            from runtime.local_api.app import add_local_api_routes
            from runtime.local_api.store import LocalStore

            self.store = LocalStore(settings.data_dir / "api.sqlite3")
            configured = settings.api_key.get_secret_value() if settings.api_key else None
            self.api_key, self.dev_key_created = self.store.ensure_dev_key(configured)
            add_local_api_routes(self.app, self.store)
        else:
            assert settings.api_key is not None
            self.api_key = settings.api_key.get_secret_value()

        self.app.router.add_get("/healthz", self._health)
        self.app.router.add_get("/readyz", self._ready)
        self.outbox = Outbox(settings.data_dir / "outbox.sqlite3")
        self.manager = CallManager(
            api=None,  # type: ignore[arg-type]  # set below, once the URL is known
            outbox=self.outbox,
            max_calls=settings.max_calls,
            worker_id=settings.worker_id,
            credentials=settings.provider_credentials(),
            on_outbox_kick=self._kick,
        )
        # import the cloud SDKs and build their shared clients now (~0.7 s), not in a call
        warm_providers(settings.provider_credentials())
        local_ws.add_routes(self.app, self.manager, self.api_key)
        self._mount_optional()

        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, settings.host, settings.port)
        await site.start()
        port = self._bound_port(site)
        self.url = f"http://{settings.host}:{port}"
        api_url = self.url if self.embedded_api else str(settings.api_url).rstrip("/")
        self.client = ApiClient(api_url, self.api_key)
        self.manager.api = self.client
        self.deliverer = OutboxDeliverer(self.outbox, self.client)
        await self.deliverer.start()
        # crash recovery, post-call jobs and (hosted mode) the control poll: runtime/calls.py
        await self.manager.start(control_poll=not self.embedded_api)
        if settings.offline_stt_decoders:
            self._prewarm = asyncio.create_task(self._prewarm_offline_stt())
        settle_heap()

    async def _prewarm_offline_stt(self) -> None:
        """Load the offline recogniser's decoders now, not in the middle of a call (a
        decoder created on demand stalls every stream of the process for ~0.3 s)."""
        from providers.offline.pocketsphinx_stt import PocketsphinxStt

        try:
            load_s = await PocketsphinxStt().prewarm(decoders=self.settings.offline_stt_decoders)
            log.info(
                "offline STT ready (%d decoders, %.2fs)", self.settings.offline_stt_decoders, load_s
            )
        except Exception:
            log.exception("offline STT could not be prepared; it will load on first use")

    def _mount_optional(self) -> None:
        """Transports and pages that live in their own modules mount themselves here."""
        assert self.manager is not None
        mounts = (
            ("runtime.web.routes", "add_web_routes"),
            ("runtime.transports.carriers", "add_carrier_routes"),
            ("runtime.local_api.catalog", "add_catalog_routes"),
            ("runtime.local_api.realtime", "add_realtime_routes"),
            ("runtime.local_api.contract", "add_contract_routes"),
            ("runtime.metrics", "add_metrics_routes"),
        )
        import importlib

        for module_name, func_name in mounts:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name:
                    raise
                continue
            getattr(module, func_name)(self)

    @staticmethod
    def _bound_port(site: web.TCPSite) -> int:
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1])

    def _kick(self) -> None:
        if self.deliverer is not None:
            self.deliverer.kick()

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, _request: web.Request) -> web.Response:
        assert self.manager is not None
        manager = self.manager
        body = {
            "status": "draining" if manager.draining else "ready",
            "active_calls": len(manager.calls),
            "max_calls": manager.max_calls,
            "load": round(manager.load, 3),
            "outbox_pending": self.outbox.pending_count() if self.outbox else 0,
        }
        ready = not manager.draining and len(manager.calls) < manager.max_calls
        return web.json_response(body, status=200 if ready else 503)

    async def stop(self, *, drain_timeout: float) -> None:
        if self._prewarm is not None and not self._prewarm.done():
            self._prewarm.cancel()
        if self.manager is not None:
            await self.manager.drain(drain_timeout)
        if self.deliverer is not None:
            with contextlib.suppress(Exception):
                await self.deliverer.flush(timeout=min(10.0, drain_timeout))
            await self.deliverer.stop()
        if self.client is not None:
            await self.client.close()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.outbox is not None:
            self.outbox.close()
        if self.store is not None:
            self.store.close()
