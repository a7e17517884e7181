"""The pieces a LiveKit call test puts together: the /v1 API and worker processes.

The API is the real local API (SQLite store, realtime token routes) served in the test's
process, so it outlives the workers: what a worker reported before it exited is still
there to check. Workers are real ``python -m runtime.cli livekit`` processes started inside
the test's network namespace, reporting to that API with its secret key.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from runtime.local_api.app import add_local_api_routes
from runtime.local_api.contract import add_contract_routes
from runtime.local_api.realtime import mount_realtime_routes
from runtime.local_api.store import LocalStore
from runtime.settings import WorkerSettings
from tests.livekit.lkserver import LiveKitServer
from tests.livekit.netns import NetNs

REPO = Path(__file__).resolve().parents[2]
AGENT_NAME = "rymi-test-agent"


@dataclass
class Api:
    url: str
    key: str
    agent_id: str
    session: aiohttp.ClientSession

    async def get(self, path: str) -> Any:
        async with self.session.get(f"{self.url}{path}",
                                    headers={"Authorization": f"Bearer {self.key}"}) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def post(self, path: str, body: Any, key: str | None = None) -> Any:
        async with self.session.post(
            f"{self.url}{path}", json=body,
            headers={"Authorization": f"Bearer {key or self.key}"},
        ) as resp:
            assert resp.status in (200, 201), await resp.text()
            return await resp.json()

    async def new_call(self, key: str | None = None) -> dict[str, Any]:
        """A realtime token for a new call of the default agent."""
        return dict(await self.post("/v1/realtime/token", {"agent_id": self.agent_id}, key))

    async def events(self, call_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = await self.get(f"/v1/calls/{call_id}/events?limit=200&offset={len(out)}")
            out += page["events"]
            if len(out) >= page["total"] or not page["events"]:
                return out

    async def transcript(self, call_id: str) -> list[dict[str, Any]]:
        return list((await self.get(f"/v1/calls/{call_id}/transcript?limit=200"))["segments"])

    async def wait_call(self, call_id: str, status: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            call = await self.get(f"/v1/calls/{call_id}")
            if call["status"] == status:
                return dict(call)
            if time.monotonic() > deadline:
                raise AssertionError(f"call {call_id} is {call['status']}, not {status}")
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def serve_api(workdir: Path, livekit: LiveKitServer) -> AsyncIterator[Api]:
    settings = WorkerSettings(
        data_dir=workdir,
        livekit_url=livekit.url,
        livekit_api_key=SecretStr(livekit.api_key),
        livekit_api_secret=SecretStr(livekit.api_secret),
        livekit_agent_name=AGENT_NAME,
    )
    store = LocalStore(workdir / "api.sqlite3")
    key, _ = store.ensure_dev_key()
    app = web.Application()
    add_local_api_routes(app, store)
    # recordings, summaries, control: workers report those too (docs/reliability.md)
    add_contract_routes(app, store, webhook_allow_hosts=("127.0.0.1",))
    mount_realtime_routes(app, store, settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(url, key, "", session)
            api.agent_id = (await api.get("/v1/agents"))["agents"][0]["id"]
            yield api
    finally:
        await runner.cleanup()


@dataclass
class WorkerProcess:
    """``python -m runtime.cli livekit`` with its output collected line by line."""

    name: str
    data_dir: Path
    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(
        cls,
        name: str,
        workdir: Path,
        api: Api,
        livekit: LiveKitServer,
        netns: NetNs | None,
        **settings: Any,
    ) -> WorkerProcess:
        data_dir = workdir / name
        data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "RYMI_API_URL": api.url,
            "RYMI_API_KEY": api.key,
            "RYMI_HOST": "127.0.0.1",
            "RYMI_PORT": "0",
            "RYMI_DATA_DIR": str(data_dir),
            "RYMI_WORKER_ID": name,
            "RYMI_LOG_LEVEL": "info",
            "RYMI_LIVEKIT_URL": livekit.url,
            "RYMI_LIVEKIT_API_KEY": livekit.api_key,
            "RYMI_LIVEKIT_API_SECRET": livekit.api_secret,
            "RYMI_LIVEKIT_AGENT_NAME": AGENT_NAME,
        }
        for key, value in settings.items():
            env[f"RYMI_{key.upper()}"] = str(value)
        argv = [sys.executable, "-m", "runtime.cli", "livekit"]
        if netns is not None:
            argv = netns.command(argv)
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        worker = cls(name, data_dir, process)
        worker._reader = asyncio.create_task(worker._read())
        await worker.wait_line(r"registered with LiveKit as", 60)
        return worker

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._changed.set()
        self._changed.set()

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    async def wait_line(self, pattern: str, timeout: float, *, occurrence: int = 1) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.lines if regex.search(line)]
            if len(found) >= occurrence:
                return found[occurrence - 1]
            if self.process.returncode is not None and self._reader and self._reader.done():
                raise AssertionError(f"{self.name} exited before {pattern!r}:\n{self.log()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {pattern!r} in {timeout}s:\n{self.log()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))

    def log(self, lines: int = 80) -> str:
        return "\n".join(self.lines[-lines:])

    def sigterm(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    async def exited(self, timeout: float) -> int:
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name} did not exit in {timeout}s:\n{self.log()}") from None
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader

    def agent_http_port(self) -> int:
        """The livekit-agents health server (its /worker shows the load LiveKit gets)."""
        for line in self.lines:
            match = re.search(r"HTTP server listening on [\d.]+:(\d+)", line)
            if match:
                return int(match.group(1))
        raise AssertionError(f"{self.name}: no agent HTTP server line:\n{self.log()}")


SpawnWorker = Callable[..., Awaitable[WorkerProcess]]
