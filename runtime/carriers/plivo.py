"""Plivo Audio Streams (``<Stream bidirectional="true" keepCallAlive="true">``).

Inbound: ``start``, ``media``, ``dtmf``, ``playedStream`` (``played`` in older docs),
``clearedAudio``, ``stop``. Outbound: ``playAudio``, ``checkpoint``, ``clearAudio``.
Formats: μ-law 8 kHz, or L16 (little-endian) at 8 or 16 kHz.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.base import AudioFormat
from runtime.carriers.common import (
    Cleared,
    Codec,
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
    reject,
    string_list,
    text,
)

CONTENT_TYPES = {"mulaw": "audio/x-mulaw", "pcm16": "audio/x-l16"}
_FORMATS = {
    ("audio/x-mulaw", 8000): AudioFormat("mulaw", 8000),
    ("audio/x-l16", 8000): AudioFormat("pcm16", 8000),
    ("audio/x-l16", 16000): AudioFormat("pcm16", 16000),
}


def parse_extra_headers(value: str) -> dict[str, str]:
    """``a=1,b=2`` (the docs) or ``a=1;b=2`` (seen in examples) → a dict."""
    result: dict[str, str] = {}
    for part in value.replace(";", ",").split(","):
        key, sep, item = part.partition("=")
        if sep and key.strip():
            result[key.strip()] = item.strip()
    return result


class PlivoCodec(Codec):
    carrier = "plivo"

    def _text(self, data: str) -> Inbound:
        message = load_object(data)
        event = message["event"]
        number(message, "sequenceNumber", event[:40])
        if event == "start":
            return self._on_start(message)
        if event == "media":
            return self._on_media(message)
        if event in ("playedStream", "played"):
            self._check_stream(message, event)
            return MarkPlayed(text(message, "name", event))
        if event == "clearedAudio":
            self._check_stream(message, event, required=False)
            return Cleared()
        if event == "dtmf":
            self._check_stream(message, event, required=False)
            inner = message.get("dtmf")
            value = inner.get("digit") if isinstance(inner, dict) else message.get("digit")
            return Dtmf(digit(value, "dtmf"))
        if event == "stop":
            self._check_stream(message, event, required=False)
            return self._stop()
        reject("unknown_event", f"unknown event {event[:40]!r}")

    def _on_start(self, message: Mapping[str, Any]) -> Started:
        self._no_start_yet()
        start = obj(message, "start", "start")
        stream_id = text(start, "streamId", "start")
        call_id = text(start, "callId", "start")
        tracks = string_list(start, "tracks", "start")
        if tracks and "inbound" not in tracks:
            reject("unsupported_format", "start: the inbound track is not streamed", fatal=True)
        media_format = obj(start, "mediaFormat", "start")
        encoding = media_format.get("encoding")
        rate = number(media_format, "sampleRate", "start.mediaFormat", required=True)
        fmt = _FORMATS.get((encoding, rate or 0)) if isinstance(encoding, str) else None
        if fmt is None:
            reject("unsupported_format",
                   f"start: unsupported media format {str(encoding)[:40]}@{rate}", fatal=True)
        extra = message.get("extra_headers")
        if extra is not None and (not isinstance(extra, str) or len(extra) > 1024):
            reject("bad_field", "start: 'extra_headers' must be a short string")
        return self._start(Started(
            stream_id=stream_id,
            carrier_call_id=call_id,
            format=fmt,
            parameters=parse_extra_headers(extra) if extra else {},
            account_id=opt_text(start, "accountId", "start"),
        ))

    def _check_stream(
        self, message: Mapping[str, Any], event: str, *, required: bool = True
    ) -> None:
        started = self._require_started(event)
        stream_id = text(message, "streamId", event) if required else opt_text(
            message, "streamId", event)
        if stream_id is not None and stream_id != started.stream_id:
            reject("wrong_stream", f"{event}: streamId does not match the stream")

    def _on_media(self, message: Mapping[str, Any]) -> Inbound:
        self._check_stream(message, "media", required=False)
        assert self.started is not None
        media = obj(message, "media", "media")
        track = media.get("track", "inbound")
        if track != "inbound":
            if track == "outbound":
                return Ignored("outbound_track")
            reject("bad_field", "media: unknown track")
        number(media, "chunk", "media")
        number(media, "timestamp", "media")
        return Media(b64_audio(media.get("payload"), self.started.format, self.limits, "media"))

    # --- outbound

    @property
    def stream_id(self) -> str:
        return self.started.stream_id if self.started else ""

    def media(self, frame: bytes) -> str:
        fmt = self.started.format if self.started else AudioFormat("mulaw", 8000)
        return dumps({
            "event": "playAudio",
            "media": {
                "contentType": CONTENT_TYPES[fmt.encoding],
                "sampleRate": fmt.sample_rate,
                "payload": b64(frame),
            },
        })

    def mark(self, name: str) -> str:
        return dumps({"event": "checkpoint", "streamId": self.stream_id, "name": name})

    def clear(self) -> str:
        return dumps({"event": "clearAudio", "streamId": self.stream_id})


def stream_xml(stream_url: str, fmt: AudioFormat, extra_headers: Mapping[str, str]) -> str:
    """The answer document: one bidirectional stream that keeps the call alive; when the
    socket closes the XML ends and Plivo hangs up."""
    from plivo import plivoxml
    from plivo.xml.streamElement import StreamElement

    content_type = f"{CONTENT_TYPES[fmt.encoding]};rate={fmt.sample_rate}"
    # Plivo allows only [A-Za-z0-9] in extraHeaders values; skip anything else.
    headers = ",".join(f"{k}={v}" for k, v in extra_headers.items() if k.isalnum() and v.isalnum())
    response = plivoxml.ResponseElement()
    response.add(StreamElement(
        stream_url,
        bidirectional=True,
        keepCallAlive=True,
        audioTrack="inbound",
        contentType=content_type,
        extraHeaders=headers or None,
    ))
    return str(response.to_string(False))
