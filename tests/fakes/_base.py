"""Shared plumbing of the vendor stand-ins: an aiohttp server on 127.0.0.1, fault knobs.

Every fake is an async context manager (``async with FakeX(...) as srv: srv.base_url``)
that listens on a random loopback port, records what clients sent, and can be told to
misbehave the way real vendors do: refuse with a status (5xx, 402, 429 + Retry-After),
answer slowly, or drop the connection mid-stream.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
from aiohttp import web


@dataclass
class Faults:
    """Knobs shared by the fakes; change them at any time, they are read per request.

    ``fail_status``: refuse requests (HTTP status, or the WebSocket handshake) with it;
    ``fail_times``: how many requests to refuse (``None``: all of them);
    ``retry_after``: ``Retry-After`` header value sent with the refusal;
    ``error_code``: vendor error code in the refusal body (e.g. ``insufficient_quota``);
    ``drop_times``: how many streams to cut mid-way (``None``: all) once ``drop_after``
    (server-specific unit) is reached.
    """

    fail_status: int | None = None
    fail_times: int | None = None
    retry_after: str | None = None
    error_code: str | None = None
    drop_times: int | None = None

    def take_failure(self) -> int | None:
        if self.fail_status is None:
            return None
        if self.fail_times is not None:
            if self.fail_times <= 0:
                return None
            self.fail_times -= 1
        return self.fail_status

    def take_drop(self) -> bool:
        if self.drop_times is None:
            return True
        if self.drop_times <= 0:
            return False
        self.drop_times -= 1
        return True


@dataclass
class Recorded:
    """One request or connection as the fake saw it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any = None
    peer: Any = None  # the client's (host, port): which TCP connection carried it
    messages: list[Any] = field(default_factory=list)  # control/text messages, parsed
    audio: bytearray = field(default_factory=bytearray)  # binary payloads, concatenated


class FakeServer:
    """Base class: subclasses add routes in ``_routes``."""

    def __init__(self, *, api_key: str | None = None, faults: Faults | None = None) -> None:
        self.api_key = api_key
        self.faults = faults or Faults()
        self.requests: list[Recorded] = []
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    def _routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        app = web.Application()
        self._routes(app)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ helpers

    def _record(self, request: web.Request, body: Any = None) -> Recorded:
        rec = Recorded(
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            peer=request.transport.get_extra_info("peername") if request.transport else None,
        )
        self.requests.append(rec)
        return rec

    def _refusal(self, status: int, message: str) -> web.Response:
        headers = {}
        if self.faults.retry_after is not None:
            headers["Retry-After"] = self.faults.retry_after
        return web.json_response(self._error_body(status, message), status=status, headers=headers)

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message, "code": self.faults.error_code}

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def abort(request: web.Request) -> None:
    """Cut the TCP connection without a close frame or a terminating chunk."""
    transport = request.transport
    if transport is not None:
        transport.abort()


# --------------------------------------------------------------------------- audio


def _mulaw_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa << 3) + 0x84) << exponent
    sample = magnitude - 0x84
    return np.where(sign != 0, -sample, sample).astype(np.int16)


def _alaw_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    sign = a & 0x80
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    sample = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << (exponent - 1)
    )
    return np.where(sign != 0, sample, -sample).astype(np.int16)


MULAW_TO_PCM = _mulaw_table()
ALAW_TO_PCM = _alaw_table()


def to_pcm16(data: bytes, encoding: str) -> np.ndarray:
    """Decode raw audio to int16 samples (``linear16``/``mulaw``/``alaw``)."""
    if encoding in ("mulaw", "ulaw"):
        return MULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)]
    if encoding == "alaw":
        return ALAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)]
    usable = len(data) - len(data) % 2
    return np.frombuffer(data[:usable], dtype="<i2")


def pcm16_to_mulaw(samples: np.ndarray) -> bytes:
    """Encode int16 samples to G.711 μ-law (for fakes that must produce ``ulaw_8000``)."""
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    x = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(x)).astype(np.int32) - 7
    exponent = np.clip(exponent, 0, 7)
    mantissa = (x >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def tone(ms: int, sample_rate: int, *, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    """A pcm16 sine: what the fakes count as speech (anything above the energy floor)."""
    n = sample_rate * ms // 1000
    t = np.arange(n) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def silence_pcm(ms: int, sample_rate: int) -> bytes:
    return bytes(sample_rate * ms // 1000 * 2)


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
