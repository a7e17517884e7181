"""Carrier media streams over WebSocket: Twilio, Plivo, Vonage and Telnyx.

Per carrier, two routes (docs/carriers.md):

- ``POST|GET /v1/carriers/<carrier>/answer?agent_id=…`` — the webhook the carrier calls for
  a call; checked against the carrier's signature; returns TwiML / Plivo XML / NCCO / TeXML
  that connects the call to our stream endpoint.
- ``GET /v1/carriers/<carrier>/stream`` — the media WebSocket. A thin loop around the pure
  codec in :mod:`runtime.carriers`: frames in become caller audio, DTMF and playback marks
  for an :class:`~runtime.calls.ActiveCall`; the agent's 20 ms frames go out in the
  carrier's native format (so no transcoding happens when the engines speak it too).

Bad input never breaks a call: each error is logged, counted (Prometheus, and per call as
events) and dropped; a connection that floods is cut off with a reported reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import Counter as PromCounter

from providers.base import AudioFormat
from runtime.calls import ActiveCall, CallManager, CallRejected, CallSpec
from runtime.carriers import auth
from runtime.carriers.auth import AuthError, CarrierCredentials, ReplayCache, StreamTickets
from runtime.carriers.common import (
    DEFAULT_LIMITS,
    CarrierError,
    Cleared,
    Codec,
    Connected,
    Dtmf,
    FloodGuard,
    Ignored,
    Inbound,
    MarkPlayed,
    MarkTracker,
    Media,
    ProtocolError,
    Started,
    Stopped,
)
from runtime.carriers.plivo import PlivoCodec, stream_xml
from runtime.carriers.telnyx import TelnyxCodec, stream_texml
from runtime.carriers.twilio import TwilioCodec, connect_twiml
from runtime.carriers.vonage import VonageCodec, websocket_ncco

log = logging.getLogger(__name__)

FRAME_S = 0.02
START_TIMEOUT_S = 10.0
MAX_MESSAGES_BEFORE_START = 100
#: aiohttp closes the socket (1009) above this; below it the codec rejects > 64 KiB frames.
MAX_WS_MESSAGE = 4 * DEFAULT_LIMITS.max_message_bytes
#: Vonage: frames we may send ahead of real time (Vonage drops bursts beyond its buffer).
VONAGE_LEAD_S = 0.06
LOUD_ERRORS = 5  # per connection at WARNING, the rest at DEBUG

CODECS: dict[str, Callable[[], Codec]] = {
    "twilio": TwilioCodec,
    "plivo": PlivoCodec,
    "vonage": VonageCodec,
    "telnyx": TelnyxCodec,
}
#: After ``clear`` Twilio (and Telnyx, which copies it) echo pending marks; Plivo drops them.
CLEAR_ECHOES_MARKS = {"twilio": True, "telnyx": True, "plivo": False, "vonage": False}
#: Formats an answer webhook may ask for with ``?format=``; the first is the default.
FORMATS: dict[str, tuple[AudioFormat, ...]] = {
    "twilio": (AudioFormat("mulaw", 8000),),
    "plivo": (AudioFormat("mulaw", 8000), AudioFormat("pcm16", 8000), AudioFormat("pcm16", 16000)),
    "vonage": (AudioFormat("pcm16", 16000), AudioFormat("pcm16", 8000),
               AudioFormat("pcm16", 24000)),
    "telnyx": (AudioFormat("mulaw", 8000), AudioFormat("alaw", 8000), AudioFormat("pcm16", 8000),
               AudioFormat("pcm16", 16000)),
}

STREAMS = PromCounter("rymi_carrier_streams", "Carrier media streams by outcome",
                      ["carrier", "outcome"])
MESSAGES = PromCounter("rymi_carrier_messages", "Carrier stream messages received", ["carrier"])
PROTOCOL_ERRORS = PromCounter("rymi_carrier_protocol_errors",
                              "Malformed or unexpected carrier messages", ["carrier", "code"])
AUTH_FAILURES = PromCounter("rymi_carrier_auth_failures", "Rejected carrier requests",
                            ["carrier", "status"])


# --------------------------------------------------------------------------- config


@dataclass(slots=True)
class CarrierContext:
    """What the routes need from the worker, resolved once at mount time."""

    manager: CallManager
    credentials: CarrierCredentials
    tickets: StreamTickets
    replay: ReplayCache
    public_url: str | None
    clock: Callable[[], float] = time.time


def _secret_value(value: Any) -> str:
    if value is None:
        return ""
    getter = getattr(value, "get_secret_value", None)
    return str(getter() if getter else value)


def credentials_from_settings(settings: Any, api_key: str | None) -> CarrierCredentials:
    """Read the carrier fields of ``WorkerSettings`` (absent ones count as unset)."""
    stream_secret = _secret_value(getattr(settings, "carrier_stream_secret", None))
    if not stream_secret and api_key:
        stream_secret = auth.derive_stream_secret(api_key)
    if not stream_secret:
        log.warning("no API key or RYMI_CARRIER_STREAM_SECRET: stream tickets only work on "
                    "the worker that issued them")
        stream_secret = secrets.token_hex(32)
    return CarrierCredentials(
        twilio_auth_token=_secret_value(getattr(settings, "twilio_auth_token", None)),
        plivo_auth_token=_secret_value(getattr(settings, "plivo_auth_token", None)),
        vonage_signature_secret=_secret_value(getattr(settings, "vonage_signature_secret", None)),
        vonage_api_key=str(getattr(settings, "vonage_api_key", None) or ""),
        telnyx_public_key=str(getattr(settings, "telnyx_public_key", None) or ""),
        stream_secret=stream_secret,
        insecure_dev=bool(getattr(settings, "insecure_dev", False)),
    )


def add_carrier_routes(
    target: Any,
    manager: CallManager | None = None,
    settings: Any = None,
    *,
    api_key: str | None = None,
) -> CarrierContext:
    """Mount the carrier routes. ``target`` is a ``web.Application`` (then pass ``manager``
    and ``settings``) or the ``runtime.server.Worker``, whose app/manager/settings are used."""
    if isinstance(target, web.Application):
        app = target
    else:
        app = target.app
        manager = manager or target.manager
        settings = settings if settings is not None else target.settings
        api_key = api_key or getattr(target, "api_key", None)
    if manager is None:
        raise ValueError("add_carrier_routes needs the CallManager")
    credentials = credentials_from_settings(settings, api_key)
    if credentials.insecure_dev:
        log.warning("carrier requests are NOT authenticated (insecure_dev)")
    replay = ReplayCache()
    context = CarrierContext(
        manager=manager,
        credentials=credentials,
        tickets=StreamTickets(credentials.stream_secret, ttl_s=credentials.ticket_ttl_s,
                              replay=replay),
        replay=replay,
        public_url=getattr(settings, "public_url", None),
    )
    for carrier in CODECS:
        answer = _answer_handler(carrier, context)
        app.router.add_route("POST", f"/v1/carriers/{carrier}/answer", answer)
        app.router.add_route("GET", f"/v1/carriers/{carrier}/answer", answer)
        app.router.add_get(f"/v1/carriers/{carrier}/stream", _stream_handler(carrier, context))
    return context


# --------------------------------------------------------------------------- URLs


def _http_base(request: web.Request, public_url: str | None) -> str:
    if public_url:
        base = public_url.rstrip("/")
        return "http" + base[2:] if base.startswith("ws") else base
    return f"{request.scheme}://{request.host}"


def _ws_base(request: web.Request, public_url: str | None) -> str:
    base = _http_base(request, public_url)
    return "ws" + base[4:]  # http→ws, https→wss


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def _auth_error(carrier: str, exc: AuthError) -> web.Response:
    AUTH_FAILURES.labels(carrier, str(exc.status)).inc()
    log.warning("%s request refused (%s): %s", carrier, exc.status, exc.message)
    code = {401: "unauthorized", 403: "forbidden"}.get(exc.status, "carrier_not_configured")
    return _error(exc.status, exc.message, code)


# --------------------------------------------------------------------------- answer


def _request_params(request: web.Request, body: bytes) -> dict[str, str]:
    """Form fields of a POST (what carriers sign), or the query of a GET."""
    if request.method == "POST" and request.content_type == "application/x-www-form-urlencoded":
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if request.method == "POST" and request.content_type == "application/json":
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return {}
        return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    return {k: v for k, v in request.query.items()}


def _verify_answer(
    carrier: str, context: CarrierContext, request: web.Request, body: bytes,
    params: Mapping[str, str],
) -> None:
    creds = context.credentials
    if creds.insecure_dev:
        return
    url = _http_base(request, context.public_url) + request.path_qs
    now = context.clock()
    headers = request.headers
    if carrier == "twilio":
        signed = params if request.method == "POST" else {}
        auth.verify_twilio(creds.twilio_auth_token, url, signed, headers.get("X-Twilio-Signature"))
    elif carrier == "plivo":
        signed = params if request.method == "POST" else {}
        auth.verify_plivo(creds.plivo_auth_token, request.method, url, signed,
                          headers.get("X-Plivo-Signature-V3"),
                          headers.get("X-Plivo-Signature-V3-Nonce"),
                          replay=context.replay, now=now)
    elif carrier == "vonage":
        auth.verify_vonage(creds.vonage_signature_secret, auth.bearer(headers.get("Authorization")),
                           body, now=now, max_age_s=creds.max_age_s, api_key=creds.vonage_api_key)
    elif carrier == "telnyx":
        auth.verify_telnyx(creds.telnyx_public_key, headers.get("telnyx-signature-ed25519"),
                           headers.get("telnyx-timestamp"), body, now=now,
                           max_age_s=creds.max_age_s)


_CALLER_FIELDS = {
    # carrier: (call id, from, to) as named in its answer webhook
    "twilio": ("CallSid", "From", "To"),
    "plivo": ("CallUUID", "From", "To"),
    "vonage": ("uuid", "from", "to"),
    "telnyx": ("CallSid", "From", "To"),
}


def _answer_handler(
    carrier: str, context: CarrierContext
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def answer(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        params = _request_params(request, body)
        try:
            _verify_answer(carrier, context, request, body, params)
        except AuthError as exc:
            return _auth_error(carrier, exc)
        agent_id = request.query.get("agent_id") or params.get("agent_id")
        if not agent_id:
            return _error(400, "agent_id is required in the answer URL's query",
                          "agent_id_required")
        try:
            fmt = _choose_format(carrier, request.query.get("format"))
        except ValueError as exc:
            return _error(400, str(exc), "bad_format")
        call_field, from_field, to_field = _CALLER_FIELDS[carrier]
        claims = {
            "agent_id": agent_id[:128],
            "call_id": (request.query.get("call_id") or None),
            "carrier_call_id": params.get(call_field) or None,
            "from": params.get(from_field) or None,
            "to": params.get(to_field) or None,
            "direction": request.query.get("direction")
            or ("outbound" if request.query.get("call_id") else "inbound"),
        }
        stream = f"{_ws_base(request, context.public_url)}/v1/carriers/{carrier}/stream"
        if carrier == "twilio":
            # Twilio signs the stream upgrade itself and allows no query string in the URL;
            # the call's identity travels as <Parameter>s.
            values = {k: str(v) for k, v in claims.items() if v}
            return web.Response(text=connect_twiml(stream, values), content_type="text/xml")
        ticket = context.tickets.issue(carrier, claims, now=context.clock())
        stream_url = f"{stream}?{urlencode({'ticket': ticket})}"
        if carrier == "plivo":
            headers = {"agentid": agent_id} if agent_id.isalnum() else {}
            return web.Response(text=stream_xml(stream_url, fmt, headers),
                                content_type="application/xml")
        if carrier == "vonage":
            headers = {k: str(v) for k, v in claims.items() if v}
            if claims["carrier_call_id"]:
                headers["call_uuid"] = str(claims["carrier_call_id"])
            return web.json_response(websocket_ncco(stream_url, fmt, headers))
        values = {k: str(v) for k, v in claims.items() if v}
        return web.Response(text=stream_texml(stream_url, fmt, values), content_type="text/xml")

    return answer


def _choose_format(carrier: str, name: str | None) -> AudioFormat:
    """``?format=mulaw_8000`` / ``pcm16_16000``…; default: the carrier's first format."""
    options = FORMATS[carrier]
    if not name:
        return options[0]
    for fmt in options:
        if name == f"{fmt.encoding}_{fmt.sample_rate}":
            return fmt
    names = ", ".join(f"{f.encoding}_{f.sample_rate}" for f in options)
    raise ValueError(f"format must be one of {names}")


# --------------------------------------------------------------------------- stream


def _stream_handler(
    carrier: str, context: CarrierContext
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def stream(request: web.Request) -> web.StreamResponse:
        try:
            claims = _admit_stream(carrier, context, request)
        except AuthError as exc:
            return _auth_error(carrier, exc)
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=30.0)
        await ws.prepare(request)
        session = CarrierStream(carrier, ws, context, claims,
                                insecure_query=dict(request.query)
                                if context.credentials.insecure_dev else {})
        await session.run()
        return ws

    return stream


def _admit_stream(carrier: str, context: CarrierContext, request: web.Request) -> dict[str, Any]:
    """Claims of the stream ticket ({} when the carrier's own signature admits it)."""
    creds = context.credentials
    now = context.clock()
    ticket = request.query.get("ticket")
    if creds.insecure_dev:
        with contextlib.suppress(AuthError):
            return context.tickets.redeem(carrier, ticket, now=now) if ticket else {}
        return {}
    if carrier == "twilio":
        url = _ws_base(request, context.public_url) + request.path_qs
        auth.verify_twilio(creds.twilio_auth_token, url, {},
                           request.headers.get("X-Twilio-Signature"))
        return {}
    if carrier == "vonage" and not ticket and request.headers.get("Authorization"):
        auth.verify_vonage(creds.vonage_signature_secret,
                           auth.bearer(request.headers.get("Authorization")), b"", now=now,
                           max_age_s=creds.max_age_s, api_key=creds.vonage_api_key)
        return {}
    return context.tickets.redeem(carrier, ticket, now=now)


class CarrierStream:
    """One carrier WebSocket: the call's :class:`AudioOutput` and its receive loop."""

    def __init__(
        self,
        carrier: str,
        ws: web.WebSocketResponse,
        context: CarrierContext,
        claims: Mapping[str, Any],
        *,
        insecure_query: Mapping[str, str] | None = None,
    ) -> None:
        self.carrier = carrier
        self.ws = ws
        self.context = context
        self.claims = dict(claims)
        self.insecure_query = dict(insecure_query or {})
        self.codec = CODECS[carrier]()
        self.format: AudioFormat = FORMATS[carrier][0]
        self.marks = MarkTracker()
        self.guard = FloodGuard()
        self._messages = MESSAGES.labels(carrier)  # labels() per message cost ~1 µs+
        self.call: ActiveCall | None = None
        self.errors: Counter[str] = Counter()
        self.errors_reported: set[str] = set()
        self.end_reason: str | None = None
        self.failed = False
        # Vonage: a paced outbound queue (frames, or mark names as str)
        self._paced = carrier == "vonage"
        self._queue: asyncio.Queue[bytes | str] = asyncio.Queue()
        self._mark_timers: list[asyncio.TimerHandle] = []
        self._writer: asyncio.Task[None] | None = None
        self._sent_until = 0.0
        self._closing = False

    # ------------------------------------------------------------------ AudioOutput

    async def send_frame(self, frame: bytes) -> None:
        if self._closing or self.ws.closed:
            return
        if self._paced:
            self._queue.put_nowait(frame)
            return
        await self._send(self.codec.media(frame))

    async def clear(self) -> None:
        if self._paced:
            self._drop_queue()
            return
        message = self.codec.clear()
        if CLEAR_ECHOES_MARKS[self.carrier]:
            self.marks.clear()
        else:
            self.marks.drop_pending()
        if message is not None:
            await self._send(message)

    async def mark(self, name: str) -> None:
        if self._closing or self.ws.closed:
            return
        if self._paced:
            self._queue.put_nowait(name)
            return
        message = self.codec.mark(name)
        if message is not None:
            self.marks.sent(name)
            await self._send(message)

    async def _send(self, data: str | bytes) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            if isinstance(data, bytes):
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(data)

    # --- Vonage pacing: never more than VONAGE_LEAD_S ahead of real time

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            now = loop.time()
            self._sent_until = max(self._sent_until, now)
            if isinstance(item, str):  # a mark: it has played when what precedes it has
                handle = loop.call_at(self._sent_until, self._vonage_mark_played, item)
                self._mark_timers.append(handle)
                continue
            ahead = self._sent_until - now
            if ahead > VONAGE_LEAD_S:
                await asyncio.sleep(ahead - VONAGE_LEAD_S)
            await self._send(item)
            self._sent_until += FRAME_S

    def _vonage_mark_played(self, name: str) -> None:
        self._mark_timers = [h for h in self._mark_timers if not h.cancelled()
                             and h.when() > asyncio.get_running_loop().time()]
        if self.call is not None:
            self.call.on_mark(name)

    def _drop_queue(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        for handle in self._mark_timers:
            handle.cancel()
        self._mark_timers.clear()
        self._sent_until = 0.0

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        if self._paced:
            self._writer = asyncio.create_task(self._pace(), name=f"{self.carrier}-pacer")
        closer: asyncio.Task[None] | None = None
        try:
            started = await self._await_start()
            if started is None:
                return
            self.call = await self._open_call(started)
            if self.call is None:
                return
            self._report_early_errors()
            closer = asyncio.create_task(self._close_when_ended(self.call))
            await self._receive()
        except asyncio.CancelledError:
            self.end_reason = self.end_reason or "worker_shutdown"
            raise
        except Exception:  # a bug here ends this call, reported, and nothing else
            log.exception("%s stream failed", self.carrier)
            self.end_reason = "internal_error"
            self.failed = True
        finally:
            if closer is not None:
                closer.cancel()
            await self._finish()

    async def _await_start(self) -> Started | None:
        """Read until the carrier's start; None: the connection ends here."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        seen = 0
        while True:
            timeout = deadline - loop.time()
            if timeout <= 0:
                self._protocol_error(ProtocolError("start_timeout", "no start within 10 s", True))
                self.end_reason = "start_timeout"
                return None
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                continue
            event = self._decode(msg)
            if event is None:
                if self.end_reason:
                    return None
                continue
            seen += 1
            if isinstance(event, Started):
                return event
            if isinstance(event, ProtocolError):
                if event.fatal:
                    self.end_reason = f"protocol_error:{event.code}"
                    return None
            elif not isinstance(event, Connected):
                self._protocol_error(ProtocolError("before_start", "message before start"))
            if seen >= MAX_MESSAGES_BEFORE_START:
                self._protocol_error(ProtocolError(
                    "start_expected", f"{seen} messages and no start", True))
                self.end_reason = "start_expected"
                return None

    def _decode(self, msg: Any) -> Inbound | None:
        """One WebSocket message → one codec event, after the flood guard (None: nothing)."""
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
            self.end_reason = self.end_reason or "stream_closed"
            return None
        if msg.type == WSMsgType.ERROR:
            exc = self.ws.exception()
            code = "frame_too_large" if "size" in str(exc).lower() else "websocket_error"
            self._protocol_error(ProtocolError(code, str(exc)[:200], True))
            self.end_reason = self.end_reason or f"protocol_error:{code}"
            self.failed = True
            return None
        if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return None
        data = msg.data
        self._messages.inc()
        if not self.guard.admit(len(data), time.monotonic()):
            self._protocol_error(ProtocolError("flood", "message over the rate limit, dropped"))
            if self.guard.flooding:
                self.end_reason = "protocol_error:flood"
                self.failed = True
            return None
        event = self.codec.receive(data)
        if isinstance(event, ProtocolError):
            self._protocol_error(event)
        return event

    async def _open_call(self, started: Started) -> ActiveCall | None:
        self.format = started.format
        params = dict(started.parameters)
        source: Mapping[str, Any] = self.claims or {**self.insecure_query, **params}
        agent_id = source.get("agent_id") or params.get("agentid")
        if not agent_id:
            self._protocol_error(ProtocolError("agent_id_required",
                                               "no agent_id for this stream", True))
            self.end_reason = "agent_id_required"
            return None
        call_id = source.get("call_id") or None
        spec = CallSpec(
            agent_id=str(agent_id),
            transport=self.carrier,
            input_format=started.format,
            call_id=str(call_id) if call_id else None,
            direction=str(source.get("direction") or ("outbound" if call_id else "inbound")),
            from_=source.get("from") or started.from_,
            to=source.get("to") or started.to,
            carrier_call_id=started.carrier_call_id or source.get("carrier_call_id") or None,
            metadata={"carrier": self.carrier, "stream_id": started.stream_id,
                      "carrier_call_id": started.carrier_call_id
                      or source.get("carrier_call_id") or None,
                      "account_id": started.account_id},
        )
        try:
            call = await self.context.manager.open_call(spec, self)
        except CallRejected as exc:
            log.warning("%s stream %s: call rejected: %s", self.carrier, started.stream_id,
                        exc.reason)
            self.end_reason = f"rejected:{exc.code}"
            STREAMS.labels(self.carrier, "rejected").inc()
            return None
        STREAMS.labels(self.carrier, "started").inc()
        log.info("%s stream %s carries call %s (%s, %s)", self.carrier, started.stream_id,
                 call.call_id, started.carrier_call_id, started.format)
        return call

    async def _receive(self) -> None:
        assert self.call is not None
        call = self.call
        while not self.ws.closed:
            msg = await self.ws.receive()
            event = self._decode(msg)
            if event is None:
                if self.end_reason:
                    return
                continue
            if isinstance(event, Media):
                await call.push_audio(event.audio)
            elif isinstance(event, Dtmf):
                call.dtmf(event.digit)
            elif isinstance(event, MarkPlayed):
                self._on_mark(event.name)
            elif isinstance(event, Cleared):
                self.marks.drop_pending()
            elif isinstance(event, Stopped):
                self.end_reason = "caller_hangup"
                return
            elif isinstance(event, CarrierError):
                call.report_event("carrier.error",
                                  {"carrier": self.carrier, "code": event.code,
                                   "detail": event.detail})
            elif isinstance(event, Connected | Ignored | ProtocolError):
                pass

    def _on_mark(self, name: str) -> None:
        outcome = self.marks.echoed(name)
        if outcome == "played":
            assert self.call is not None
            self.call.on_mark(name)
        elif outcome == "unknown":
            self._protocol_error(ProtocolError("unknown_mark", "a mark we never sent"))

    async def _close_when_ended(self, call: ActiveCall) -> None:
        """The agent (or the API, or a limit) ended the call: finish playback, then close."""
        reason = await asyncio.shield(call.ended)
        self.end_reason = self.end_reason or reason
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        # a short poll: "played" is the carrier's echo (marks) or the clock (Vonage pacing)
        while loop.time() < deadline and (  # noqa: ASYNC110
            self.marks.pending or not self._queue.empty() or self._sent_until > loop.time()
        ):
            await asyncio.sleep(FRAME_S)
        self._closing = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=WSCloseCode.OK, message=b"call ended")

    # ------------------------------------------------------------------ errors

    def _protocol_error(self, error: ProtocolError) -> None:
        self.errors[error.code] += 1
        PROTOCOL_ERRORS.labels(self.carrier, error.code).inc()
        total = sum(self.errors.values())
        level = logging.WARNING if total <= LOUD_ERRORS else logging.DEBUG
        log.log(level, "%s stream: %s (%s)%s", self.carrier, error.code, error.detail,
                " — fatal" if error.fatal else "")
        if self.call is not None and error.code not in self.errors_reported:
            self.errors_reported.add(error.code)
            self.call.report_event("carrier.protocol_error",
                                   {"carrier": self.carrier, "code": error.code,
                                    "detail": error.detail, "fatal": error.fatal})

    def _report_early_errors(self) -> None:
        """Errors seen before the call existed, reported once it does."""
        for code in list(self.errors):
            if code not in self.errors_reported and self.call is not None:
                self.errors_reported.add(code)
                self.call.report_event("carrier.protocol_error",
                                       {"carrier": self.carrier, "code": code,
                                        "detail": "before start", "fatal": False})

    async def _finish(self) -> None:
        self._closing = True
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._drop_queue()
        reason = self.end_reason or "stream_closed"
        call = self.call
        if call is not None:
            if self.errors:
                call.report_event("carrier.protocol_errors", {
                    "carrier": self.carrier,
                    "total": sum(self.errors.values()),
                    "by_code": dict(self.errors),
                })
            if self.failed:
                await call.fail(reason)
            else:
                await call.hangup(reason)
        elif self.errors:
            log.info("%s stream ended before a call (%s): %s", self.carrier, reason,
                     dict(self.errors))
        if not self.ws.closed:
            code = WSCloseCode.OK if not self.failed else WSCloseCode.POLICY_VIOLATION
            with contextlib.suppress(Exception):
                await self.ws.close(code=code, message=reason.encode()[:120])
        STREAMS.labels(self.carrier, "failed" if self.failed else "ended").inc()
