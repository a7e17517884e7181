"""Telnyx media streaming: Twilio's shape in snake_case.

Inbound: ``connected``, ``start`` (``stream_id``, ``start.call_control_id``,
``start.media_format``), ``media``, ``dtmf``, ``mark``, ``stop``, ``error``.
Outbound (``stream_bidirectional_mode=rtp``): ``media``, ``mark``, ``clear``.
PCMU/PCMA are G.711 bytes; L16 is 16-bit PCM in network byte order (RFC 3551), swapped
to and from the little-endian PCM the engine uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from providers.base import AudioFormat
from runtime.carriers.common import (
    CarrierError,
    Codec,
    Connected,
    Dtmf,
    Ignored,
    Inbound,
    MarkPlayed,
    Media,
    Started,
    b64,
    b64_audio,
    digit,
    dumps,
    load_object,
    number,
    obj,
    opt_text,
    parameters,
    reject,
    text,
)

_G711 = {"PCMU": "mulaw", "audio/x-mulaw": "mulaw", "PCMA": "alaw", "audio/x-alaw": "alaw"}
_L16 = ("L16", "audio/l16", "audio/x-l16")
ENCODING_NAMES = {"mulaw": "PCMU", "alaw": "PCMA", "pcm16": "L16"}


def swap16(data: bytes) -> bytes:
    """Big-endian ↔ little-endian 16-bit samples."""
    return np.frombuffer(data, dtype="<i2").byteswap().tobytes()


def _custom_parameters(value: Any) -> dict[str, str]:
    """``custom_parameters`` as an object or as Telnyx's ``[{"name":…,"value":…}]``."""
    if isinstance(value, list):
        pairs = {}
        for item in value[:64]:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                pairs[item["name"]] = item.get("value")
        value = pairs
    return parameters(value, "start")


class TelnyxCodec(Codec):
    carrier = "telnyx"

    def _text(self, data: str) -> Inbound:
        message = load_object(data)
        event = message["event"]
        number(message, "sequence_number", event[:40])
        if event == "connected":
            return Connected(None, opt_text(message, "version", "connected"))
        if event == "start":
            return self._on_start(message)
        if event == "media":
            return self._on_media(message)
        if event == "dtmf":
            self._check_stream(message, event)
            return Dtmf(digit(obj(message, "dtmf", "dtmf").get("digit"), "dtmf"))
        if event == "mark":
            self._check_stream(message, event)
            return MarkPlayed(text(obj(message, "mark", "mark"), "name", "mark"))
        if event == "stop":
            self._check_stream(message, event)
            return self._stop()
        if event == "error":
            payload = obj(message, "payload", "error")
            code = payload.get("code")
            detail = payload.get("detail") or payload.get("title") or ""
            return CarrierError(str(code)[:40] if code is not None else "unknown",
                                str(detail)[:300])
        reject("unknown_event", f"unknown event {event[:40]!r}")

    def _on_start(self, message: Mapping[str, Any]) -> Started:
        self._no_start_yet()
        stream_id = text(message, "stream_id", "start")
        start = obj(message, "start", "start")
        call_control_id = text(start, "call_control_id", "start")
        media_format = obj(start, "media_format", "start")
        encoding = media_format.get("encoding")
        rate = number(media_format, "sample_rate", "start.media_format", required=True)
        channels = number(media_format, "channels", "start.media_format") or 1
        fmt: AudioFormat | None = None
        if isinstance(encoding, str) and encoding in _G711 and rate == 8000:
            fmt = AudioFormat(_G711[encoding], 8000)  # type: ignore[arg-type]
        elif encoding in _L16 and rate in (8000, 16000):
            assert rate is not None
            fmt = AudioFormat("pcm16", rate)
        if fmt is None or channels != 1:
            reject("unsupported_format",
                   f"start: unsupported media format {str(encoding)[:40]}@{rate}x{channels}",
                   fatal=True)
        return self._start(Started(
            stream_id=stream_id,
            carrier_call_id=call_control_id,
            format=fmt,
            parameters=_custom_parameters(start.get("custom_parameters")),
            account_id=opt_text(start, "user_id", "start"),
            from_=opt_text(start, "from", "start"),
            to=opt_text(start, "to", "start"),
        ))

    def _check_stream(self, message: Mapping[str, Any], event: str) -> None:
        started = self._require_started(event)
        stream_id = opt_text(message, "stream_id", event)
        if stream_id is not None and stream_id != started.stream_id:
            reject("wrong_stream", f"{event}: stream_id does not match the stream")

    def _on_media(self, message: Mapping[str, Any]) -> Inbound:
        self._check_stream(message, "media")
        assert self.started is not None
        media = obj(message, "media", "media")
        track = media.get("track", "inbound")
        if track not in ("inbound", "inbound_track"):
            if track in ("outbound", "outbound_track"):
                return Ignored("outbound_track")
            reject("bad_field", "media: unknown track")
        number(media, "chunk", "media")
        number(media, "timestamp", "media")
        fmt = self.started.format
        audio = b64_audio(media.get("payload"), fmt, self.limits, "media")
        return Media(swap16(audio) if fmt.encoding == "pcm16" else audio)

    # --- outbound

    def media(self, frame: bytes) -> str:
        fmt = self.format
        wire = swap16(frame) if fmt is not None and fmt.encoding == "pcm16" else frame
        return dumps({"event": "media", "media": {"payload": b64(wire)}})

    def mark(self, name: str) -> str:
        return dumps({"event": "mark", "mark": {"name": name}})

    def clear(self) -> str:
        return dumps({"event": "clear"})


def stream_texml(stream_url: str, fmt: AudioFormat, params: Mapping[str, str]) -> str:
    """The TeXML answer: a bidirectional RTP stream in ``fmt`` both ways, nothing after it."""
    from xml.sax.saxutils import quoteattr

    codec = ENCODING_NAMES[fmt.encoding]
    attrs = (
        f"url={quoteattr(stream_url)} track=\"inbound_track\" codec={quoteattr(codec)} "
        f"bidirectionalMode=\"rtp\" bidirectionalCodec={quoteattr(codec)} "
        f"bidirectionalSamplingRate=\"{fmt.sample_rate}\""
    )
    inner = "".join(
        f"<Parameter name={quoteattr(k)} value={quoteattr(v)}/>" for k, v in params.items()
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response><Connect><Stream {attrs}>{inner}</Stream></Connect></Response>"
    )
