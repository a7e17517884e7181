"""Fixtures for the LiveKit tests: a loopback-only network namespace and a real server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.livekit.harness import Api, SpawnWorker, WorkerProcess, serve_api
from tests.livekit.lkserver import LiveKitServer
from tests.livekit.netns import NetNs


@pytest.fixture(scope="session")
def netns() -> Iterator[NetNs | None]:
    """The namespace every LiveKit test runs in; None where namespaces are not permitted
    (then the tests run on the host's loopback, and the candidate check is skipped)."""
    try:
        if os.environ.get("RYMI_TEST_NO_NETNS"):
            raise RuntimeError("RYMI_TEST_NO_NETNS is set")
        ns = NetNs.create()
    except (RuntimeError, OSError) as exc:
        print(f"LiveKit tests run without a network namespace: {exc}")
        yield None
        return
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture(autouse=True)
def in_netns(netns: NetNs | None) -> Iterator[NetNs | None]:
    """The test's thread joins the namespace for the test, and leaves it afterwards."""
    if netns is None:
        yield None
        return
    with netns.entered():
        yield netns


@pytest.fixture
def livekit_server(in_netns: NetNs | None, tmp_path: Path) -> Iterator[LiveKitServer]:
    workdir = tmp_path / "livekit"
    workdir.mkdir()
    server = LiveKitServer(workdir=workdir, netns=in_netns)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        print(f"==== livekit-server log\n{server.log_tail(40)}")


@pytest.fixture
async def lk_api(livekit_server: LiveKitServer, tmp_path: Path) -> AsyncIterator[Api]:
    """The local /v1 API (with realtime tokens) the workers report to."""
    async with serve_api(tmp_path / "api", livekit_server) as api:
        yield api


@pytest.fixture
async def spawn_worker(
    lk_api: Api, livekit_server: LiveKitServer, in_netns: NetNs | None, tmp_path: Path
) -> AsyncIterator[SpawnWorker]:
    """Start ``rymi-worker livekit`` processes; whatever is still running is killed after."""
    started: list[WorkerProcess] = []

    async def spawn(name: str, **settings: Any) -> WorkerProcess:
        worker = await WorkerProcess.start(
            name, tmp_path / "workers", lk_api, livekit_server, in_netns, **settings
        )
        started.append(worker)
        return worker

    yield spawn
    for worker in started:
        await worker.kill()
        print(f"==== {worker.name} (exit {worker.process.returncode})\n{worker.log(200)}")
