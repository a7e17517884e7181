"""Serve the playground page and hand it the dev key, to this machine only.

The page is plain ES modules and CSS in ``static/`` (no build step). It needs the secret
key for ``/v1/agents`` and ``/v1/stream``; in embedded (dev) mode the worker gives it out
through ``/playground/config.json``, but only to a browser on this machine that reached
the worker by a loopback name: a page of another site cannot read it (no CORS headers) and
a DNS-rebinding page is refused by the Host check. Anyone else gets ``apiKey: null`` and
the page asks for the key, which ``rymi-worker dev`` prints.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from runtime.server import Worker

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/playground/static/"
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
}
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# The page loads nothing from elsewhere; its only connections are this worker's API and socket.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws: wss:; media-src 'self' blob:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "microphone=(self)",
}


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback IP literals, with or without port."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    else:
        name = host
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_peer(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def static_files(directory: Path = STATIC_DIR) -> dict[str, Path]:
    """The servable files by name, fixed at mount time (nothing else can be requested)."""
    return {
        path.name: path
        for path in sorted(directory.iterdir())
        if path.is_file() and _SAFE_NAME.match(path.name) and path.suffix in _CONTENT_TYPES
    }


def add_web_routes(worker: Worker) -> None:
    """Mount ``/``, ``/playground``, its static files and ``/playground/config.json``.

    Only in embedded mode: against a remote API the worker holds a production key that a
    page must never receive, and the agents live elsewhere.
    """
    if not worker.embedded_api:
        return
    files = static_files()
    index = files["index.html"]

    async def page(_request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            index, headers={**_PAGE_HEADERS, "Content-Type": _CONTENT_TYPES[".html"]}
        )

    async def asset(request: web.Request) -> web.StreamResponse:
        path = files.get(request.match_info["name"])
        if path is None or path.name == "index.html":
            raise web.HTTPNotFound(
                text='{"error": "not found"}', content_type="application/json"
            )
        headers = {
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Content-Type": _CONTENT_TYPES[path.suffix],
        }
        return web.FileResponse(path, headers=headers)

    async def config(request: web.Request) -> web.Response:
        trusted = is_loopback_peer(request.remote) and is_loopback_host(request.host)
        body = {
            "apiKey": worker.api_key if trusted else None,
            "wsUrl": "/v1/stream",
            "apiBase": "",
            "keyHint": None
            if trusted
            else "The dev key is only handed to a browser on this machine; paste the key "
            "that `rymi-worker dev` printed.",
        }
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    router = worker.app.router
    router.add_get("/", page)
    router.add_get("/playground", page)
    router.add_get("/playground/", page)
    router.add_get("/playground/config.json", config)
    router.add_get(STATIC_PREFIX + "{name}", asset)
