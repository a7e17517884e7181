"""What every carrier codec shares: the typed inbound events, strict field access, limits.

A codec turns one WebSocket frame into exactly one inbound event. Bad input never raises:
it comes back as a :class:`ProtocolError` with a machine-readable ``code`` so the endpoint
can log it, count it and decide (``fatal``) whether the call can go on.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

from providers.base import AudioFormat

log = logging.getLogger(__name__)

DTMF_DIGITS = frozenset("0123456789*#ABCD")
MAX_ID_CHARS = 256
MAX_PARAMETERS = 32
MAX_PARAMETER_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-message bounds. Carriers send 20 ms chunks; 200 ms leaves room for jitter."""

    max_message_bytes: int = 64 * 1024
    max_media_ms: int = 200


DEFAULT_LIMITS = Limits()

# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Connected:
    """The carrier's hello (Twilio/Telnyx ``connected``)."""

    protocol: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Started:
    """The stream is live: who the call is, what audio format flows both ways."""

    stream_id: str
    carrier_call_id: str
    format: AudioFormat
    parameters: Mapping[str, str] = field(default_factory=dict)
    account_id: str | None = None
    from_: str | None = None
    to: str | None = None


@dataclass(frozen=True, slots=True)
class Media:
    """Caller audio in :attr:`Started.format` (byte order already normalised to LE)."""

    audio: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str


@dataclass(frozen=True, slots=True)
class MarkPlayed:
    """The carrier says audio sent before mark ``name`` finished playing (or was cleared)."""

    name: str


@dataclass(frozen=True, slots=True)
class Cleared:
    """The carrier confirms the playback buffer was dropped (Plivo ``clearedAudio``)."""


@dataclass(frozen=True, slots=True)
class Stopped:
    reason: str = "stop"


@dataclass(frozen=True, slots=True)
class CarrierError:
    """The carrier reported an error on the stream (Telnyx ``error``)."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """Well-formed but of no use to us (e.g. the outbound track echoed back)."""

    reason: str


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A message the carrier should not have sent. ``fatal``: the call cannot go on."""

    code: str
    detail: str
    fatal: bool = False


Inbound = (
    Connected | Started | Media | Dtmf | MarkPlayed | Cleared | Stopped | CarrierError | Ignored
    | ProtocolError
)


# --------------------------------------------------------------------------- strict access


class Reject(Exception):
    """Internal: raised by the field helpers, turned into a ProtocolError by the codec."""

    def __init__(self, code: str, detail: str, *, fatal: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.fatal = fatal


def reject(code: str, detail: str, *, fatal: bool = False) -> NoReturn:
    raise Reject(code, detail, fatal=fatal)


def load_object(text: str) -> dict[str, Any]:
    """A JSON object with a string ``event``."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        reject("malformed_json", f"malformed JSON: {str(exc)[:80]}")
    if not isinstance(value, dict):
        reject("not_an_object", "a message must be a JSON object")
    event = value.get("event")
    if not isinstance(event, str) or not event:
        reject("missing_event", "a message must have a string 'event'")
    return value


def obj(message: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = message.get(key)
    if not isinstance(value, dict):
        reject("missing_field", f"{where}: '{key}' must be an object")
    return value


def text(
    message: Mapping[str, Any], key: str, where: str, *, max_chars: int = MAX_ID_CHARS
) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value:
        reject("missing_field", f"{where}: '{key}' must be a non-empty string")
    if len(value) > max_chars:
        reject("field_too_long", f"{where}: '{key}' is longer than {max_chars} characters")
    return value


def opt_text(
    message: Mapping[str, Any], key: str, where: str, *, max_chars: int = MAX_ID_CHARS
) -> str | None:
    if message.get(key) is None:
        return None
    return text(message, key, where, max_chars=max_chars)


def number(
    message: Mapping[str, Any], key: str, where: str, *, required: bool = False
) -> int | None:
    """An integer that carriers send either as a JSON number or as a decimal string."""
    value = message.get(key)
    if value is None:
        if required:
            reject("missing_field", f"{where}: '{key}' is required")
        return None
    if isinstance(value, bool):
        reject("bad_field", f"{where}: '{key}' must be an integer")
    if isinstance(value, int):
        result = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        result = int(value)
    else:
        reject("bad_field", f"{where}: '{key}' must be an integer")
    if result < 0:
        reject("bad_field", f"{where}: '{key}' must not be negative")
    return result


def string_list(message: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = message.get(key)
    if value is None:
        return []
    if (
        not isinstance(value, list)
        or len(value) > 8
        or not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value)
    ):
        reject("bad_field", f"{where}: '{key}' must be a short list of strings")
    return list(value)


def parameters(value: Any, where: str) -> dict[str, str]:
    """Custom key/value pairs (Twilio ``customParameters``, Vonage headers)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        reject("bad_field", f"{where}: custom parameters must be an object")
    if len(value) > MAX_PARAMETERS:
        reject("bad_field", f"{where}: more than {MAX_PARAMETERS} custom parameters")
    result: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            continue  # nested objects (Vonage headers may carry any JSON) are not parameters
        item_text = str(item)
        if len(key) > MAX_ID_CHARS or len(item_text) > MAX_PARAMETER_CHARS:
            reject("field_too_long", f"{where}: custom parameter '{key[:40]}' is too long")
        result[key] = item_text
    return result


def digit(value: Any, where: str) -> str:
    if not isinstance(value, str) or value not in DTMF_DIGITS:
        reject("bad_dtmf", f"{where}: digit must be one of 0-9 * # A-D")
    return value


def b64_audio(value: Any, fmt: AudioFormat, limits: Limits, where: str) -> bytes:
    """Strict base64 of a whole number of samples, at most ``limits.max_media_ms`` long."""
    if not isinstance(value, str) or not value:
        reject("missing_field", f"{where}: 'payload' must be a non-empty base64 string")
    max_bytes = fmt.frame_bytes(limits.max_media_ms)
    if len(value) > (max_bytes + 2) // 3 * 4:
        reject("bad_payload_size", f"{where}: payload longer than {limits.max_media_ms} ms")
    try:
        audio = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        reject("bad_base64", f"{where}: payload is not valid base64")
    check_audio_size(audio, fmt, limits, where)
    return audio


def check_audio_size(audio: bytes, fmt: AudioFormat, limits: Limits, where: str) -> None:
    if not audio:
        reject("bad_payload_size", f"{where}: empty audio payload")
    if len(audio) % fmt.bytes_per_sample:
        reject("bad_payload_size", f"{where}: {len(audio)} bytes is not a whole number of samples")
    if len(audio) > fmt.frame_bytes(limits.max_media_ms):
        reject("bad_payload_size", f"{where}: payload longer than {limits.max_media_ms} ms")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def dumps(message: Mapping[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


# --------------------------------------------------------------------------- codec base


class Codec(ABC):
    """One stream's protocol state. ``receive`` never raises; builders are pure."""

    carrier: ClassVar[str]

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.started: Started | None = None
        self.stopped = False

    @property
    def format(self) -> AudioFormat | None:
        return self.started.format if self.started else None

    def receive(self, data: str | bytes) -> Inbound:
        """Parse one WebSocket frame (text or binary) into one event."""
        try:
            if len(data) > self.limits.max_message_bytes:
                reject("frame_too_large",
                       f"{len(data)}-byte frame exceeds {self.limits.max_message_bytes}")
            if isinstance(data, str):
                return self._text(data)
            return self._binary(data)
        except Reject as exc:
            return ProtocolError(exc.code, exc.detail, exc.fatal)
        except Exception as exc:  # a bug in a codec must not take the call down
            log.exception("%s codec failed on a message", self.carrier)
            return ProtocolError("internal_error", f"{type(exc).__name__}")

    @abstractmethod
    def _text(self, data: str) -> Inbound: ...

    def _binary(self, data: bytes) -> Inbound:
        reject("unexpected_binary", f"{self.carrier} sends JSON text frames only")

    # --- helpers for the subclasses

    def _require_started(self, event: str) -> Started:
        if self.started is None:
            reject("before_start", f"'{event}' before 'start'")
        if self.stopped:
            reject("after_stop", f"'{event}' after 'stop'")
        return self.started

    def _no_start_yet(self) -> None:
        """Called first by every start handler: a second start is never fatal."""
        if self.started is not None:
            reject("duplicate_start", "a second 'start' on the same stream")

    def _start(self, started: Started) -> Started:
        self._no_start_yet()
        self.started = started
        return started

    def _stop(self, reason: str = "stop") -> Stopped:
        if self.started is None:
            reject("before_start", "'stop' before 'start'")
        if self.stopped:
            reject("after_stop", "a second 'stop'")
        self.stopped = True
        return Stopped(reason)

    # --- outbound (the carrier's native format, one 20 ms frame at a time)

    @abstractmethod
    def media(self, frame: bytes) -> str | bytes:
        """One outbound audio frame as the carrier wants it."""

    def mark(self, name: str) -> str | None:
        """A playback marker the carrier echoes back; None: the carrier has none."""
        return None

    def clear(self) -> str | None:
        """Drop the carrier's playback buffer; None: nothing to send (drop our queue)."""
        return None


# --------------------------------------------------------------------------- marks


class MarkTracker:
    """Which marks were sent and not yet echoed; tells played marks from cleared ones.

    Twilio echoes every pending mark after a ``clear`` even though its audio was never
    heard, so the transcript's "what was heard" must not count those.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._pending: deque[str] = deque()
        self._cleared: set[str] = set()
        self._limit = limit

    def sent(self, name: str) -> None:
        if len(self._pending) >= self._limit:
            self._pending.popleft()
        self._pending.append(name)

    def clear(self) -> None:
        """Everything pending now comes back as cleared, not played."""
        self._cleared.update(self._pending)
        self._pending.clear()
        if len(self._cleared) > self._limit:
            self._cleared.clear()

    def drop_pending(self) -> None:
        """The carrier will never echo what is pending (Plivo after ``clearAudio``)."""
        self._pending.clear()

    def echoed(self, name: str) -> str:
        """``played``, ``cleared`` or ``unknown`` (never sent, or echoed twice)."""
        if name in self._cleared:
            self._cleared.discard(name)
            return "cleared"
        try:
            self._pending.remove(name)
        except ValueError:
            return "unknown"
        return "played"

    @property
    def pending(self) -> int:
        return len(self._pending)


# --------------------------------------------------------------------------- flood


class FloodGuard:
    """Token bucket over messages and bytes per connection, on a caller-supplied clock.

    ``admit`` says whether to process a message; ``flooding`` turns true once
    ``tolerance`` messages were dropped within one ``window`` (a sender that keeps
    exceeding the budget, not one that had a burst).
    """

    def __init__(
        self,
        *,
        rate: float = 250.0,
        burst: float = 500.0,
        byte_rate: float = 512 * 1024,
        byte_burst: float = 1024 * 1024,
        tolerance: int = 500,
        window: float = 1.0,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.byte_rate, self.byte_burst = byte_rate, byte_burst
        self.tolerance = tolerance
        self.window = window
        self._tokens = burst
        self._bytes = byte_burst
        self._last: float | None = None
        self._window_start = 0.0
        self._window_drops = 0
        self.dropped = 0

    def admit(self, size: int, now: float) -> bool:
        if self._last is None:
            self._window_start = now
        else:
            elapsed = max(0.0, now - self._last)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._bytes = min(self.byte_burst, self._bytes + elapsed * self.byte_rate)
        self._last = now
        if now - self._window_start >= self.window:
            self._window_start = now
            self._window_drops = 0
        if self._tokens >= 1.0 and self._bytes >= size:
            self._tokens -= 1.0
            self._bytes -= size
            return True
        self.dropped += 1
        self._window_drops += 1
        return False

    @property
    def flooding(self) -> bool:
        return self._window_drops >= self.tolerance


def parse_l16_rate(content_type: str) -> int | None:
    """``audio/l16;rate=16000`` → 16000 (None when it is not L16 with a rate)."""
    parts = [p.strip().lower() for p in content_type.split(";")]
    if not parts or parts[0] != "audio/l16":
        return None
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key.strip() == "rate" and value.strip().isdigit():
            return int(value.strip())
    return None
