"""The playground's routes over a real socket: who gets the dev key, what is served.

No browser: the key must reach a page on this machine only, and the static route must
serve exactly the shipped files.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from runtime.server import Worker
from runtime.settings import WorkerSettings
from runtime.web.routes import (
    STATIC_DIR,
    add_web_routes,
    is_loopback_host,
    is_loopback_peer,
    static_files,
)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8080", True),
        ("127.0.0.1", True),
        ("127.8.9.10:1", True),
        ("localhost:8080", True),
        ("LOCALHOST", True),
        ("app.localhost:80", True),
        ("[::1]:8080", True),
        ("[::1]", True),
        ("::1", True),
        ("evil.example:8080", False),
        ("localhost.evil.example", False),
        ("192.168.1.5:8080", False),
        ("[2001:db8::1]:8080", False),
        ("", False),
    ],
)
def test_loopback_host_names(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_loopback_peers() -> None:
    assert is_loopback_peer("127.0.0.1") and is_loopback_peer("::1")
    assert not is_loopback_peer("10.0.0.2") and not is_loopback_peer(None)
    assert not is_loopback_peer("not-an-ip")


def test_static_files_are_the_shipped_page() -> None:
    files = static_files()
    assert {"index.html", "app.js", "worklet.js", "style.css"} <= set(files)
    assert all(path.parent == STATIC_DIR for path in files.values())


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    w = Worker(WorkerSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "data"),
               embedded_api=True)
    await w.start()
    try:
        yield w
    finally:
        await w.stop(drain_timeout=5)


async def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_page_and_assets_are_served_with_a_strict_policy(worker: Worker) -> None:
    for path in ("/", "/playground", "/playground/"):
        status, headers, body = await get(worker.url + path)
        assert status == 200
        assert headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert b'src="/playground/static/app.js"' in body
    status, headers, body = await get(worker.url + "/playground/static/worklet.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert b'registerProcessor("rymi-io"' in body
    for missing in ("/playground/static/nope.js", "/playground/static/..%2Froutes.py",
                    "/playground/static/index.html"):
        status, _, _ = await get(worker.url + missing)
        assert status == 404, missing


async def test_dev_key_only_for_a_loopback_host(worker: Worker) -> None:
    status, headers, body = await get(worker.url + "/playground/config.json")
    assert status == 200 and headers["Cache-Control"] == "no-store"
    config = json.loads(body)
    assert config["apiKey"] == worker.api_key
    assert config["wsUrl"] == "/v1/stream"
    assert "Access-Control-Allow-Origin" not in headers

    # a DNS-rebinding page names the worker by its own host name: no key
    _, _, body = await get(worker.url + "/playground/config.json", Host="rebind.example:80")
    config = json.loads(body)
    assert config["apiKey"] is None and "paste" in config["keyHint"]


def test_not_mounted_against_a_remote_api(tmp_path: Path) -> None:
    """A worker reporting to a hosted API holds a production key: no page, no config."""
    settings = WorkerSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "data",
                              api_url="http://127.0.0.1:9/", api_key="rymi_production_key_123")
    remote = Worker(settings, embedded_api=False)
    add_web_routes(remote)
    paths = {r.resource.canonical for r in remote.app.router.routes() if r.resource is not None}
    assert not paths & {"/", "/playground", "/playground/config.json"}
