"""A caller on the local `/v1/stream` WebSocket that behaves like a person on a phone.

It sends 20 ms frames in real time (silence unless something is being said), records
every message with its arrival time, and plays agent audio into a counter so a test can
tell when the agent speaks and when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

FRAME_S = 0.02


@dataclass
class Received:
    at: float
    kind: str  # "audio" or a JSON message type
    data: Any


@dataclass
class StreamCaller:
    url: str  # ws://host:port/v1/stream
    api_key: str
    agent_id: str
    sample_rate: int = 16000
    encoding: str = "pcm16"
    log: list[Received] = field(default_factory=list)
    call_id: str | None = None
    _pending: deque[bytes] = field(default_factory=deque)
    _ws: aiohttp.ClientWebSocketResponse | None = None
    _session: aiohttp.ClientSession | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def frame_bytes(self) -> int:
        width = 2 if self.encoding == "pcm16" else 1
        return self.sample_rate // 50 * width

    async def __aenter__(self) -> StreamCaller:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            f"{self.url}?agent_id={self.agent_id}",
            headers={"Authorization": f"Bearer {self.api_key}"},
        )
        await self._ws.send_str(
            json.dumps(
                {
                    "type": "start",
                    "agent_id": self.agent_id,
                    "sample_rate": self.sample_rate,
                    "encoding": self.encoding,
                }
            )
        )
        first = await self._ws.receive(timeout=30)
        message = json.loads(first.data)
        if message["type"] != "started":
            raise RuntimeError(f"call did not start: {message}")
        self.call_id = message["call_id"]
        self._tasks = [
            asyncio.create_task(self._send_loop()),
            asyncio.create_task(self._recv_loop()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._ws is not None and not self._ws.closed:
            with contextlib.suppress(Exception):
                await self._ws.send_str('{"type":"end"}')
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    def say(self, audio: bytes) -> float:
        """Queue speech; returns how long it lasts. Frames go out in real time."""
        step = self.frame_bytes
        for i in range(0, len(audio), step):
            frame = audio[i : i + step]
            self._pending.append(frame.ljust(step, b"\0" if self.encoding == "pcm16" else b"\xff"))
        return len(audio) / step * FRAME_S

    async def hang_up(self) -> None:
        assert self._ws is not None
        await self._ws.send_str('{"type":"end"}')

    async def _send_loop(self) -> None:
        assert self._ws is not None
        silence = (
            b"\0" * self.frame_bytes if self.encoding == "pcm16" else b"\xff" * self.frame_bytes
        )
        deadline = time.monotonic()
        while not self._ws.closed:
            frame = self._pending.popleft() if self._pending else silence
            await self._ws.send_bytes(frame)
            deadline += FRAME_S
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def _recv_loop(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            now = time.monotonic()
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.log.append(Received(now, "audio", len(msg.data)))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                data = json.loads(msg.data)
                self.log.append(Received(now, data["type"], data))
                if data["type"] == "ended":
                    self.ended.set()
        self.ended.set()

    # ---------------------------------------------------------------- inspection

    def events(self, type_: str | None = None) -> list[dict[str, Any]]:
        out = [r.data["event"] for r in self.log if r.kind == "event"]
        return [e for e in out if type_ is None or e["type"] == type_]

    def transcripts(self) -> list[dict[str, Any]]:
        return [r.data["segment"] for r in self.log if r.kind == "transcript"]

    async def wait_for(self, predicate: Any, timeout: float) -> Received:
        """Wait until a received item satisfies ``predicate``; return it."""
        end = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < end:
            while seen < len(self.log):
                item = self.log[seen]
                seen += 1
                if predicate(item):
                    return item
            await asyncio.sleep(0.01)
        raise TimeoutError("expected message did not arrive")

    async def wait_event(self, type_: str, timeout: float, **match: Any) -> Received:
        def pred(r: Received) -> bool:
            if r.kind != "event" or r.data["event"]["type"] != type_:
                return False
            data = r.data["event"]["data"]
            return all(data.get(k) == v for k, v in match.items())

        return await self.wait_for(pred, timeout)
