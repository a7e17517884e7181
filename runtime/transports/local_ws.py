"""The local audio WebSocket (`/v1/stream`): one socket, one call.

Used by the browser playground, scripts, tests and benchmarks. The protocol is documented
in docs/local-stream.md; parsing lives in :func:`parse_client_message` (pure) so that bad
input is tested without sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import WSMsgType, web

from providers.base import AudioFormat
from runtime.calls import CallManager, CallRejected, CallSpec

log = logging.getLogger(__name__)

MAX_FRAME_BYTES = 64 * 1024
START_TIMEOUT_S = 10.0
_ENCODINGS = ("pcm16", "mulaw", "alaw")


class ClientError(ValueError):
    """A message the client should not have sent; the code is machine-readable."""

    def __init__(self, message: str, code: str = "bad_message") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class StartMessage:
    agent_id: str
    format: AudioFormat
    metadata: dict[str, Any]


def parse_client_message(text: str) -> dict[str, Any]:
    """Decode one JSON control message; raise ClientError with a clear reason."""
    if len(text) > MAX_FRAME_BYTES:
        raise ClientError("message too large", "message_too_large")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"malformed JSON: {exc.msg}", "malformed_json") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ClientError("a message must be a JSON object with a string 'type'")
    return message


def parse_start(message: Mapping[str, Any], default_agent: str | None) -> StartMessage:
    if message.get("type") != "start":
        raise ClientError("the first message must be 'start'", "start_expected")
    agent_id = message.get("agent_id") or default_agent
    if not isinstance(agent_id, str) or not agent_id:
        raise ClientError("start: agent_id is required", "agent_id_required")
    encoding = message.get("encoding", "pcm16")
    if encoding not in _ENCODINGS:
        raise ClientError(f"start: encoding must be one of {', '.join(_ENCODINGS)}")
    rate = message.get("sample_rate", 16000)
    if not isinstance(rate, int) or isinstance(rate, bool) or not 8000 <= rate <= 48000:
        raise ClientError("start: sample_rate must be an integer from 8000 to 48000")
    metadata = message.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ClientError("start: metadata must be an object")
    return StartMessage(agent_id, AudioFormat(encoding, rate), metadata)


def check_audio(data: bytes, fmt: AudioFormat) -> None:
    if len(data) > MAX_FRAME_BYTES:
        raise ClientError(f"audio frame of {len(data)} bytes exceeds 65536", "frame_too_large")
    if len(data) % fmt.bytes_per_sample:
        raise ClientError("audio frame is not a whole number of samples", "bad_frame_size")


class _Socket:
    """The socket as audio output and live sink.

    Until :meth:`ready` (the ``started`` message is out) everything is held back in order,
    so a client always sees ``started`` first even though the greeting may begin while
    the call is still being set up. After that, audio and ``clear`` go out directly and
    JSON goes through one writer task.
    """

    def __init__(self, ws: web.WebSocketResponse, fmt: AudioFormat) -> None:
        self.ws = ws
        self.format = fmt
        self._queue: asyncio.Queue[Mapping[str, Any] | None] = asyncio.Queue(maxsize=1000)
        self._held: list[bytes | Mapping[str, Any]] | None = []
        self._writer = asyncio.create_task(self._write())
        self.dropped = 0

    async def ready(self, started: Mapping[str, Any]) -> None:
        held, self._held = self._held or [], None
        await self._send_str(json.dumps(started))
        for item in held:
            if isinstance(item, bytes):
                await self.send_frame(item)
            else:
                await self._send_str(json.dumps(item, separators=(",", ":")))

    def discard(self) -> None:
        """Drop what is held back (the call was refused before it started)."""
        if self._held is not None:
            self._held = []

    async def send_frame(self, frame: bytes) -> None:
        if self._held is not None:
            self._held.append(frame)
        elif not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_bytes(frame)

    async def clear(self) -> None:
        if self._held is not None:
            self._held = [item for item in self._held if not isinstance(item, bytes)]
        # barge-in: sent directly, not queued behind live updates
        await self._send_str('{"type":"clear"}')

    async def mark(self, name: str) -> None:
        self.send_json({"type": "mark", "name": name})

    def send_json(self, data: Mapping[str, Any]) -> None:
        if self._held is not None:
            self._held.append(data)
            return
        try:
            self._queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _send_str(self, text: str) -> None:
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.ws.send_str(text)

    async def _write(self) -> None:
        while (item := await self._queue.get()) is not None:
            await self._send_str(json.dumps(item, separators=(",", ":")))

    async def close(self) -> None:
        if self._held:
            for item in self._held:
                if not isinstance(item, bytes):
                    await self._send_str(json.dumps(item, separators=(",", ":")))
            self._held = None
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self._writer, 2.0)
        self._writer.cancel()


def _authorized(request: web.Request, api_key: str | None) -> bool:
    if api_key is None:
        return True
    header = request.headers.get("Authorization", "")
    token = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
    return hmac.compare_digest(token.encode(), api_key.encode())


async def _error(ws: web.WebSocketResponse, error: ClientError) -> None:
    await ws.send_str(json.dumps({"type": "error", "error": str(error), "code": error.code}))


def add_routes(app: web.Application, manager: CallManager, api_key: str | None) -> None:
    """Mount ``GET /v1/stream``; ``api_key`` is the key clients must present."""

    async def stream(request: web.Request) -> web.StreamResponse:
        if not _authorized(request, api_key):
            return web.json_response(
                {"error": "missing or invalid API key", "code": "unauthorized"}, status=401
            )
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES * 2, heartbeat=20.0)
        await ws.prepare(request)
        errors = 0
        try:
            start = await _read_start(ws, request.query.get("agent_id"))
        except ClientError as exc:
            await _error(ws, exc)
            await ws.send_str(json.dumps({"type": "ended", "reason": exc.code}))
            await ws.close()
            return ws
        if start is None:
            return ws
        sock = _Socket(ws, start.format)
        spec = CallSpec(start.agent_id, "local", start.format, metadata=start.metadata)
        try:
            call = await manager.open_call(spec, sock, sock)
        except CallRejected as exc:
            sock.discard()  # the call never started: the client gets the reason alone
            await sock.close()
            await ws.send_str(json.dumps({"type": "error", "error": exc.reason, "code": exc.code}))
            await ws.send_str(json.dumps({"type": "ended", "reason": exc.code}))
            await ws.close()
            return ws
        await sock.ready(
            {
                "type": "started",
                "call_id": call.call_id,
                "sample_rate": start.format.sample_rate,
                "encoding": start.format.encoding,
                "frame_ms": 20,
            }
        )
        closer = asyncio.create_task(_close_when_ended(ws, call.ended))
        try:
            async for msg in ws:
                try:
                    if msg.type == WSMsgType.BINARY:
                        check_audio(msg.data, start.format)
                        await call.push_audio(msg.data)
                    elif msg.type == WSMsgType.TEXT:
                        message = parse_client_message(msg.data)
                        kind = message["type"]
                        if kind == "end":
                            break
                        if kind == "dtmf":
                            digit = message.get("digit")
                            if (
                                not isinstance(digit, str)
                                or digit not in "0123456789*#ABCD"
                                or len(digit) != 1
                            ):
                                raise ClientError("dtmf: digit must be one of 0-9 * # A-D")
                            call.dtmf(digit)
                        elif kind == "mark_played":
                            call.on_mark(str(message.get("name", "")))
                        elif kind == "start":
                            raise ClientError("the call has already started", "already_started")
                        else:
                            raise ClientError(f"unknown message type {kind!r}", "unknown_type")
                    elif msg.type == WSMsgType.ERROR:
                        break
                except ClientError as exc:
                    errors += 1
                    call.report_event("client.error", {"code": exc.code, "error": str(exc)})
                    await _error(ws, exc)
        finally:
            closer.cancel()
            await call.hangup("caller_hangup")
            await sock.close()
            if not ws.closed:
                await ws.close()
        return ws

    app.router.add_get("/v1/stream", stream)


async def _read_start(ws: web.WebSocketResponse, default_agent: str | None) -> StartMessage | None:
    try:
        msg = await ws.receive(timeout=START_TIMEOUT_S)
    except TimeoutError as exc:
        raise ClientError("no start message within 10 s", "start_timeout") from exc
    if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
        return None
    if msg.type != WSMsgType.TEXT:
        raise ClientError("the first message must be the JSON 'start' message", "start_expected")
    return parse_start(parse_client_message(msg.data), default_agent)


async def _close_when_ended(ws: web.WebSocketResponse, ended: asyncio.Future[str]) -> None:
    await ended
    await asyncio.sleep(0.1)  # let the 'ended' message go out first
    await ws.close()
