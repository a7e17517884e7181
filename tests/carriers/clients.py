"""Test clients that behave like the carriers, for end-to-end tests and benchmarks.

Each client does what its carrier does on a real inbound call:

1. calls the worker's answer webhook, signed the way the carrier signs it (Twilio
   ``X-Twilio-Signature``, Plivo V3, Vonage HS256 JWT, Telnyx Ed25519);
2. reads the returned TwiML / Plivo XML / NCCO / TeXML and opens the media WebSocket it
   names, with the parameters and format it names;
3. streams the caller's audio in real time, one 20 ms frame every 20 ms (silence when the
   caller says nothing), with the carrier's exact message shapes and counters;
4. plays the agent's audio out of a buffer at real time, acknowledges marks/checkpoints
   when playback reaches them, and on ``clear``/``clearAudio`` drops the buffer the way
   the carrier does (Twilio and Telnyx return pending marks, Plivo confirms with
   ``clearedAudio`` and forgets pending checkpoints); the Vonage client has no such
   messages and instead models Vonage's bounded buffer, counting frames it would drop.

Everything received is logged with its arrival time so tests can check ordering.
Usage::

    async with TwilioCaller(worker_url, agent_id, auth_token=...) as caller:
        caller.say(ulaw_audio)
        ...
        await caller.hang_up()
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlencode
from xml.etree import ElementTree

import aiohttp
import numpy as np

from providers.base import AudioFormat

FRAME_S = 0.02


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    wall: float  # time.time() on arrival, comparable with API event timestamps
    kind: str  # "audio", "mark", "clear", "text", "close"
    data: Any


class CarrierCaller(ABC):
    """One simulated phone call through a carrier. Use as an async context manager."""

    carrier: ClassVar[str]

    def __init__(
        self,
        base_url: str,
        agent_id: str,
        *,
        call_id: str | None = None,
        fmt: str | None = None,
        caller: str = "+15550100",
        callee: str = "+15550199",
        connect: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.agent_id = agent_id
        self.call_id = call_id
        self.fmt_name = fmt
        self.caller_number = caller
        self.callee_number = callee
        self.auto_connect = connect
        self.carrier_call_id = self._new_call_id()
        self.stream_id = ""
        self.format = AudioFormat("mulaw", 8000)
        self.log: list[Received] = []
        self.played = bytearray()  # what the caller heard, in ``format``
        self.echoed_marks: list[str] = []
        self.cleared_marks: list[str] = []
        self.overflow_frames = 0
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.answer_document = ""
        self.stream_url = ""
        self.sent_messages = 0
        self._pending: deque[bytes] = deque()
        self._buffer: deque[bytes | str] = deque()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0
        self._chunk = 0
        self._t0 = 0.0
        self._hung_up = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> CarrierCaller:
        self._session = aiohttp.ClientSession()
        if self.auto_connect:
            await self.dial()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def dial(self) -> None:
        """Answer webhook, then the media stream, then real-time audio both ways."""
        self.answer_document = await self.answer()
        self._parse_answer(self.answer_document)
        await self.open_stream()
        self._t0 = time.monotonic()
        await self._send_start()
        self._tasks = [
            asyncio.create_task(self._send_loop()),
            asyncio.create_task(self._recv_loop()),
            asyncio.create_task(self._playout_loop()),
        ]

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the caller as an async context manager"
        return self._session

    def answer_url(self) -> str:
        query = {"agent_id": self.agent_id}
        if self.call_id:
            query["call_id"] = self.call_id
        if self.fmt_name:
            query["format"] = self.fmt_name
        return f"{self.base_url}/v1/carriers/{self.carrier}/answer?{urlencode(query)}"

    @abstractmethod
    def _new_call_id(self) -> str: ...

    @abstractmethod
    async def answer(self) -> str:
        """Call the answer webhook like the carrier; return the response body."""

    @abstractmethod
    def _parse_answer(self, document: str) -> None:
        """Set ``stream_url``, ``format`` and whatever the stream needs from the answer."""

    async def open_stream(self, headers: dict[str, str] | None = None) -> None:
        self._ws = await self.session.ws_connect(self.stream_url, headers=headers or {},
                                                 max_msg_size=0)

    @abstractmethod
    async def _send_start(self) -> None: ...

    @abstractmethod
    def _media_message(self, frame: bytes) -> str | bytes: ...

    @abstractmethod
    async def _on_text(self, message: dict[str, Any], received: Received) -> None: ...

    async def _on_binary(self, data: bytes, received: Received) -> None:
        self.log.append(Received(received.at, received.wall, "unexpected_binary", len(data)))

    # ------------------------------------------------------------------ caller actions

    @property
    def frame_bytes(self) -> int:
        return self.format.frame_bytes(20)

    @property
    def silence_frame(self) -> bytes:
        return (b"\xff" if self.format.encoding == "mulaw" else b"\xd5"
                if self.format.encoding == "alaw" else b"\0") * self.frame_bytes

    def say(self, audio: bytes) -> float:
        """Queue speech in ``format``; returns its duration. It goes out in real time."""
        step = self.frame_bytes
        for i in range(0, len(audio), step):
            frame = audio[i: i + step]
            self._pending.append(frame + self.silence_frame[len(frame):])
        return len(audio) / step * FRAME_S

    async def send_raw(self, message: str | bytes) -> None:
        """Anything at all, outside the real-time schedule (for fuzzing)."""
        assert self._ws is not None
        if isinstance(message, bytes):
            await self._ws.send_bytes(message)
        else:
            await self._ws.send_str(message)
        self.sent_messages += 1

    @abstractmethod
    async def dtmf(self, digit: str) -> None: ...

    async def hang_up(self) -> None:
        """The caller hangs up: the carrier's stop message (if it has one), then close."""
        self._hung_up = True
        for task in self._tasks[:1]:  # stop sending audio
            task.cancel()
        stop = self._stop_message()
        if self._ws is not None and not self._ws.closed:
            if stop is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._ws.send_str(stop)
            await self._ws.close()

    def _stop_message(self) -> str | None:
        return None

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _next_chunk(self) -> tuple[int, int]:
        """(chunk number, ms since the stream started) of the next media message."""
        self._chunk += 1
        return self._chunk, int((self._chunk - 1) * FRAME_S * 1000)

    # ------------------------------------------------------------------ loops

    async def _send(self, message: str | bytes) -> None:
        assert self._ws is not None
        if isinstance(message, bytes):
            await self._ws.send_bytes(message)
        else:
            await self._ws.send_str(message)
        self.sent_messages += 1

    async def _send_loop(self) -> None:
        deadline = time.monotonic()
        try:
            while self._ws is not None and not self._ws.closed:
                frame = self._pending.popleft() if self._pending else self.silence_frame
                await self._send(self._media_message(frame))
                deadline += FRAME_S
                await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        except (ConnectionError, RuntimeError):
            pass

    async def _recv_loop(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            received = Received(time.monotonic(), time.time(), "", None)
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    message = json.loads(msg.data)
                except ValueError:
                    self.log.append(Received(received.at, received.wall, "bad_text", msg.data))
                    continue
                await self._on_text(message, received)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await self._on_binary(msg.data, received)
        self.close_code = self._ws.close_code
        self.log.append(Received(time.monotonic(), time.time(), "close", self.close_code))
        self.closed.set()

    def _enqueue_audio(self, audio: bytes, received: Received) -> None:
        self.log.append(Received(received.at, received.wall, "audio", len(audio)))
        step = self.frame_bytes
        for i in range(0, len(audio), step):
            self._buffer.append(audio[i: i + step])

    def _enqueue_mark(self, name: str, received: Received) -> None:
        self.log.append(Received(received.at, received.wall, "mark", name))
        self._buffer.append(name)

    def _clear_buffer(self, received: Received) -> list[str]:
        """Drop queued audio; return the marks that were pending, in order."""
        self.log.append(Received(received.at, received.wall, "clear", None))
        pending = [item for item in self._buffer if isinstance(item, str)]
        self._buffer.clear()
        return pending

    async def _playout_loop(self) -> None:
        """Play one buffered frame every 20 ms; a mark is acknowledged when reached."""
        deadline = time.monotonic()
        while True:
            while self._buffer and isinstance(self._buffer[0], str):
                name = self._buffer.popleft()
                assert isinstance(name, str)
                self.echoed_marks.append(name)
                with contextlib.suppress(ConnectionError, RuntimeError, AssertionError):
                    await self._ack_mark(name)
            if self._buffer:
                frame = self._buffer.popleft()
                assert isinstance(frame, bytes)
                self.played.extend(frame)
                deadline += FRAME_S
            else:
                deadline = time.monotonic() + FRAME_S
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))

    async def _ack_mark(self, name: str) -> None:  # noqa: B027 - Vonage has no marks
        """Tell the worker playback reached mark ``name``."""

    # ------------------------------------------------------------------ inspection

    def audio_frames(self, after: float = 0.0, before: float = float("inf"),
                     *, wall: bool = False) -> int:
        """Agent audio messages received in a time window (monotonic or wall clock)."""
        return sum(1 for r in self.log if r.kind == "audio"
                   and after < (r.wall if wall else r.at) < before)

    def first(self, kind: str, after: float = 0.0) -> Received | None:
        return next((r for r in self.log if r.kind == kind and r.at > after), None)

    def heard_energy(self) -> float:
        """RMS of everything played to the caller (0 for silence)."""
        if not self.played:
            return 0.0
        pcm = to_pcm16(bytes(self.played), self.format)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        return float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0

    async def wait_for(self, predicate: Any, timeout: float) -> Received:
        end = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < end:
            while seen < len(self.log):
                item = self.log[seen]
                seen += 1
                if predicate(item):
                    return item
            await asyncio.sleep(0.01)
        raise TimeoutError(f"{self.carrier}: expected message did not arrive")


def to_pcm16(audio: bytes, fmt: AudioFormat) -> bytes:
    """G.711 → linear PCM for checks on what was heard."""
    if fmt.encoding == "pcm16":
        return audio
    data = np.frombuffer(audio, dtype=np.uint8)
    if fmt.encoding == "mulaw":
        u = ~data
        sign = (u & 0x80) != 0
        exponent = (u >> 4) & 0x07
        mantissa = u & 0x0F
        magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
        pcm = np.where(sign, 0x84 - magnitude, magnitude - 0x84)
    else:
        a = data ^ 0x55
        sign = (a & 0x80) != 0
        exponent = (a >> 4) & 0x07
        mantissa = (a & 0x0F).astype(np.int32)
        magnitude = np.where(exponent == 0, (mantissa << 4) + 8,
                             ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
        pcm = np.where(sign, magnitude, -magnitude)
    return pcm.astype("<i2").tobytes()


# --------------------------------------------------------------------------- Twilio


class TwilioCaller(CarrierCaller):
    """Twilio Media Streams, bidirectional: ``<Connect><Stream>`` with ``<Parameter>``s."""

    carrier = "twilio"

    def __init__(self, base_url: str, agent_id: str, *, auth_token: str,
                 account_sid: str = "AC" + "0" * 32, **kwargs: Any) -> None:
        self.auth_token = auth_token
        self.account_sid = account_sid
        self.parameters: dict[str, str] = {}
        super().__init__(base_url, agent_id, **kwargs)

    def _new_call_id(self) -> str:
        return "CA" + secrets.token_hex(16)

    def _sign(self, url: str, params: dict[str, str]) -> str:
        from twilio.request_validator import RequestValidator

        return str(RequestValidator(self.auth_token).compute_signature(url, params))

    async def answer(self) -> str:
        url = self.answer_url()
        form = {"CallSid": self.carrier_call_id, "AccountSid": self.account_sid,
                "From": self.caller_number, "To": self.callee_number,
                "CallStatus": "ringing", "Direction": "inbound", "ApiVersion": "2010-04-01"}
        async with self.session.post(url, data=form,
                                     headers={"X-Twilio-Signature": self._sign(url, form)}) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"answer webhook: {resp.status} {body}")
            return body

    def _parse_answer(self, document: str) -> None:
        stream = ElementTree.fromstring(document).find("Connect/Stream")
        if stream is None:
            raise RuntimeError(f"no <Connect><Stream> in {document}")
        self.stream_url = stream.get("url") or ""
        self.parameters = {p.get("name") or "": p.get("value") or ""
                           for p in stream.findall("Parameter")}
        self.format = AudioFormat("mulaw", 8000)
        self.stream_id = "MZ" + secrets.token_hex(16)

    async def open_stream(self, headers: dict[str, str] | None = None) -> None:
        await super().open_stream({"X-Twilio-Signature": self._sign(self.stream_url, {})})

    async def _send_start(self) -> None:
        await self._send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self._send(json.dumps({
            "event": "start", "sequenceNumber": str(self._next_seq()), "streamSid": self.stream_id,
            "start": {"accountSid": self.account_sid, "streamSid": self.stream_id,
                      "callSid": self.carrier_call_id, "tracks": ["inbound"],
                      "customParameters": self.parameters,
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000,
                                      "channels": 1}},
        }))

    def _media_message(self, frame: bytes) -> str:
        chunk, ms = self._next_chunk()
        return json.dumps({
            "event": "media", "sequenceNumber": str(self._next_seq()), "streamSid": self.stream_id,
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ms),
                      "payload": base64.b64encode(frame).decode()},
        })

    async def dtmf(self, digit: str) -> None:
        await self._send(json.dumps({"event": "dtmf", "streamSid": self.stream_id,
                                     "sequenceNumber": str(self._next_seq()),
                                     "dtmf": {"track": "inbound_track", "digit": digit}}))

    def _stop_message(self) -> str:
        return json.dumps({"event": "stop", "sequenceNumber": str(self._next_seq()),
                           "streamSid": self.stream_id,
                           "stop": {"accountSid": self.account_sid,
                                    "callSid": self.carrier_call_id}})

    async def _on_text(self, message: dict[str, Any], received: Received) -> None:
        event = message.get("event")
        if message.get("streamSid") != self.stream_id:
            self.log.append(Received(received.at, received.wall, "bad_stream", message))
            return
        if event == "media":
            self._enqueue_audio(base64.b64decode(message["media"]["payload"]), received)
        elif event == "mark":
            self._enqueue_mark(message["mark"]["name"], received)
        elif event == "clear":
            # Twilio empties its buffer and sends back every pending mark at once
            for name in self._clear_buffer(received):
                self.cleared_marks.append(name)
                await self._ack_mark(name)
        else:
            self.log.append(Received(received.at, received.wall, "text", message))

    async def _ack_mark(self, name: str) -> None:
        await self._send(json.dumps({"event": "mark", "sequenceNumber": str(self._next_seq()),
                                     "streamSid": self.stream_id, "mark": {"name": name}}))


# --------------------------------------------------------------------------- Plivo


class PlivoCaller(CarrierCaller):
    """Plivo Audio Streams: ``<Stream bidirectional="true" keepCallAlive="true">``."""

    carrier = "plivo"

    def __init__(self, base_url: str, agent_id: str, *, auth_token: str,
                 auth_id: str = "MA" + "0" * 18, **kwargs: Any) -> None:
        self.auth_token = auth_token
        self.auth_id = auth_id
        self.extra_headers = ""
        self.content_type = ""
        super().__init__(base_url, agent_id, **kwargs)

    def _new_call_id(self) -> str:
        import uuid

        return str(uuid.uuid4())

    async def answer(self) -> str:
        from plivo.utils.signature_v3 import construct_post_url, get_signature_v3

        url = self.answer_url()
        form = {"CallUUID": self.carrier_call_id, "From": self.caller_number.lstrip("+"),
                "To": self.callee_number.lstrip("+"), "Direction": "inbound",
                "CallStatus": "ringing", "Event": "StartApp"}
        nonce = str(secrets.randbelow(10**20))
        signature = get_signature_v3(self.auth_token.encode(),
                                     construct_post_url(url, dict(form)).decode(), nonce.encode())
        headers = {"X-Plivo-Signature-V3": signature.decode(),
                   "X-Plivo-Signature-V3-Nonce": nonce}
        async with self.session.post(url, data=form, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"answer webhook: {resp.status} {body}")
            return body

    def _parse_answer(self, document: str) -> None:
        stream = ElementTree.fromstring(document).find("Stream")
        if stream is None or not stream.text:
            raise RuntimeError(f"no <Stream> in {document}")
        assert stream.get("bidirectional") == "true", "the stream must be bidirectional"
        self.stream_url = stream.text.strip()
        self.content_type = stream.get("contentType") or "audio/x-l16;rate=8000"
        self.extra_headers = stream.get("extraHeaders") or ""
        encoding, _, rate = self.content_type.partition(";rate=")
        self.format = AudioFormat("mulaw" if encoding == "audio/x-mulaw" else "pcm16", int(rate))
        import uuid

        self.stream_id = str(uuid.uuid4())

    @property
    def _encoding(self) -> str:
        return "audio/x-mulaw" if self.format.encoding == "mulaw" else "audio/x-l16"

    async def _send_start(self) -> None:
        await self._send(json.dumps({
            "event": "start", "sequenceNumber": self._next_seq(),
            "start": {"callId": self.carrier_call_id, "streamId": self.stream_id,
                      "accountId": self.auth_id, "tracks": ["inbound"],
                      "mediaFormat": {"encoding": self._encoding,
                                      "sampleRate": self.format.sample_rate}},
            "extra_headers": self.extra_headers,
        }))

    def _media_message(self, frame: bytes) -> str:
        chunk, _ = self._next_chunk()
        return json.dumps({
            "event": "media", "sequenceNumber": self._next_seq(), "streamId": self.stream_id,
            "media": {"track": "inbound", "timestamp": str(int(time.time() * 1000)),
                      "chunk": chunk, "payload": base64.b64encode(frame).decode()},
            "extra_headers": self.extra_headers,
        })

    async def dtmf(self, digit: str) -> None:
        await self._send(json.dumps({"event": "dtmf", "sequenceNumber": self._next_seq(),
                                     "streamId": self.stream_id,
                                     "dtmf": {"digit": digit, "track": "inbound"}}))

    def _stop_message(self) -> str:
        return json.dumps({"event": "stop", "sequenceNumber": self._next_seq(),
                           "streamId": self.stream_id})

    async def _on_text(self, message: dict[str, Any], received: Received) -> None:
        event = message.get("event")
        if event == "playAudio":
            media = message["media"]
            if (media.get("contentType") != self._encoding
                    or media.get("sampleRate") != self.format.sample_rate):
                self.log.append(Received(received.at, received.wall, "bad_format", media))
                return
            self._enqueue_audio(base64.b64decode(media["payload"]), received)
        elif event == "checkpoint" and message.get("streamId") == self.stream_id:
            self._enqueue_mark(message["name"], received)
        elif event == "clearAudio" and message.get("streamId") == self.stream_id:
            # Plivo drops the buffer, never acknowledges the pending checkpoints, and
            # confirms with clearedAudio
            self.cleared_marks.extend(self._clear_buffer(received))
            await self._send(json.dumps({"sequenceNumber": self._next_seq(),
                                         "event": "clearedAudio", "streamId": self.stream_id}))
        else:
            self.log.append(Received(received.at, received.wall, "text", message))

    async def _ack_mark(self, name: str) -> None:
        await self._send(json.dumps({"event": "playedStream", "sequenceNumber": self._next_seq(),
                                     "streamId": self.stream_id, "name": name}))


# --------------------------------------------------------------------------- Vonage


class VonageCaller(CarrierCaller):
    """Vonage Voice WebSocket: NCCO ``connect`` → text hello, then binary L16 both ways.

    Vonage plays what it receives at real time from a bounded buffer; frames arriving when
    it is full are lost (``overflow_frames``), which is why the worker must pace its audio.
    """

    carrier = "vonage"

    def __init__(self, base_url: str, agent_id: str, *, signature_secret: str,
                 api_key: str = "vonagekey", buffer_frames: int = 10, **kwargs: Any) -> None:
        self.signature_secret = signature_secret
        self.api_key = api_key
        self.buffer_frames = buffer_frames
        self.headers: dict[str, Any] = {}
        self.content_type = ""
        super().__init__(base_url, agent_id, **kwargs)

    def _new_call_id(self) -> str:
        import uuid

        return str(uuid.uuid4())

    def _jwt(self, body: bytes = b"") -> str:
        import hashlib

        import jwt

        claims: dict[str, Any] = {"iat": int(time.time()), "jti": secrets.token_hex(8),
                                  "api_key": self.api_key, "application_id": "app-1"}
        if body:
            claims["payload_hash"] = hashlib.sha256(body).hexdigest()
        return jwt.encode(claims, self.signature_secret, algorithm="HS256")

    async def answer(self) -> str:
        query = {"uuid": self.carrier_call_id, "conversation_uuid": "CON-" + secrets.token_hex(8),
                 "from": self.caller_number.lstrip("+"), "to": self.callee_number.lstrip("+")}
        url = f"{self.answer_url()}&{urlencode(query)}"
        headers = {"Authorization": f"Bearer {self._jwt()}"}
        async with self.session.get(url, headers=headers) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"answer webhook: {resp.status} {body}")
            return body

    def _parse_answer(self, document: str) -> None:
        ncco = json.loads(document)
        endpoint = ncco[0]["endpoint"][0]
        assert ncco[0]["action"] == "connect" and endpoint["type"] == "websocket"
        self.stream_url = endpoint["uri"]
        self.content_type = endpoint["content-type"]
        self.headers = endpoint.get("headers", {})
        self.format = AudioFormat("pcm16", int(self.content_type.split("rate=")[1]))

    async def _send_start(self) -> None:
        await self._send(json.dumps({"event": "websocket:connected",
                                     "content-type": self.content_type, **self.headers}))

    def _media_message(self, frame: bytes) -> bytes:
        return frame

    async def dtmf(self, digit: str) -> None:
        await self._send(json.dumps({"event": "websocket:dtmf", "digit": digit, "duration": 260}))

    async def _on_binary(self, data: bytes, received: Received) -> None:
        self.log.append(Received(received.at, received.wall, "audio", len(data)))
        if len(data) % 2:
            self.log.append(Received(received.at, received.wall, "bad_frame", len(data)))
            return
        step = self.frame_bytes
        for i in range(0, len(data), step):
            if len(self._buffer) >= self.buffer_frames:
                self.overflow_frames += 1  # Vonage drops what arrives faster than it plays
            else:
                self._buffer.append(data[i: i + step])

    async def _on_text(self, message: dict[str, Any], received: Received) -> None:
        self.log.append(Received(received.at, received.wall, "text", message))


# --------------------------------------------------------------------------- Telnyx


class TelnyxCaller(CarrierCaller):
    """Telnyx TeXML ``<Connect><Stream bidirectionalMode="rtp">``: snake_case JSON; L16 is
    big-endian on the wire."""

    carrier = "telnyx"

    def __init__(self, base_url: str, agent_id: str, *, private_key: Any, **kwargs: Any) -> None:
        self.private_key = private_key  # cryptography Ed25519PrivateKey
        self.codec_name = "PCMU"
        super().__init__(base_url, agent_id, **kwargs)

    def _new_call_id(self) -> str:
        return "v3:" + secrets.token_urlsafe(24)

    async def answer(self) -> str:
        form = {"CallSid": self.carrier_call_id, "AccountSid": "acc-" + secrets.token_hex(4),
                "From": self.caller_number, "To": self.callee_number, "CallStatus": "ringing",
                "Direction": "inbound"}
        body = urlencode(form).encode()
        timestamp = str(int(time.time()))
        signature = base64.b64encode(self.private_key.sign(timestamp.encode() + b"|" + body))
        headers = {"Content-Type": "application/x-www-form-urlencoded",
                   "telnyx-signature-ed25519": signature.decode(), "telnyx-timestamp": timestamp}
        async with self.session.post(self.answer_url(), data=body, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"answer webhook: {resp.status} {text}")
            return text

    def _parse_answer(self, document: str) -> None:
        stream = ElementTree.fromstring(document).find("Connect/Stream")
        if stream is None:
            raise RuntimeError(f"no <Connect><Stream> in {document}")
        assert stream.get("bidirectionalMode") == "rtp"
        self.stream_url = stream.get("url") or ""
        self.codec_name = stream.get("bidirectionalCodec") or "PCMU"
        rate = int(stream.get("bidirectionalSamplingRate") or 8000)
        encoding = {"PCMU": "mulaw", "PCMA": "alaw", "L16": "pcm16"}[self.codec_name]
        self.format = AudioFormat(encoding, rate)  # type: ignore[arg-type]
        self.stream_id = str(secrets.token_hex(16))

    def _wire(self, audio: bytes) -> bytes:
        if self.format.encoding == "pcm16":
            return np.frombuffer(audio, dtype="<i2").astype(">i2").tobytes()
        return audio

    def _unwire(self, audio: bytes) -> bytes:
        if self.format.encoding == "pcm16":
            return np.frombuffer(audio, dtype=">i2").astype("<i2").tobytes()
        return audio

    async def _send_start(self) -> None:
        await self._send(json.dumps({"event": "connected", "version": "1.0.0"}))
        await self._send(json.dumps({
            "event": "start", "sequence_number": str(self._next_seq()),
            "start": {"user_id": secrets.token_hex(8), "call_control_id": self.carrier_call_id,
                      "call_session_id": secrets.token_hex(8), "from": self.caller_number,
                      "to": self.callee_number,
                      "media_format": {"encoding": self.codec_name,
                                       "sample_rate": self.format.sample_rate, "channels": 1}},
            "stream_id": self.stream_id,
        }))

    def _media_message(self, frame: bytes) -> str:
        chunk, ms = self._next_chunk()
        return json.dumps({
            "event": "media", "sequence_number": str(self._next_seq()),
            "media": {"track": "inbound", "chunk": str(chunk), "timestamp": str(ms),
                      "payload": base64.b64encode(self._wire(frame)).decode()},
            "stream_id": self.stream_id,
        })

    async def dtmf(self, digit: str) -> None:
        await self._send(json.dumps({"event": "dtmf", "stream_id": self.stream_id,
                                     "occurred_at": "2025-01-01T00:00:00Z",
                                     "sequence_number": str(self._next_seq()),
                                     "dtmf": {"digit": digit}}))

    def _stop_message(self) -> str:
        return json.dumps({"event": "stop", "sequence_number": str(self._next_seq()),
                           "stop": {"user_id": "u", "call_control_id": self.carrier_call_id},
                           "stream_id": self.stream_id})

    async def _on_text(self, message: dict[str, Any], received: Received) -> None:
        event = message.get("event")
        if event == "media":
            self._enqueue_audio(self._unwire(base64.b64decode(message["media"]["payload"])),
                                received)
        elif event == "mark":
            self._enqueue_mark(message["mark"]["name"], received)
        elif event == "clear":
            for name in self._clear_buffer(received):
                self.cleared_marks.append(name)
                await self._ack_mark(name)
        else:
            self.log.append(Received(received.at, received.wall, "text", message))

    async def _ack_mark(self, name: str) -> None:
        await self._send(json.dumps({"event": "mark", "sequence_number": str(self._next_seq()),
                                     "stream_id": self.stream_id, "mark": {"name": name}}))
