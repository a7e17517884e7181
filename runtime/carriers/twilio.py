"""Twilio Media Streams (bidirectional, ``<Connect><Stream>``): μ-law 8 kHz JSON frames.

Inbound: ``connected``, ``start``, ``media``, ``dtmf``, ``mark``, ``stop``.
Outbound: ``media`` (base64 μ-law), ``mark`` (echoed once played or cleared), ``clear``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers.base import MULAW_8K
from runtime.carriers.common import (
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
    string_list,
    text,
)


class TwilioCodec(Codec):
    carrier = "twilio"
    _media_sid: str | None = None
    _media_head = ""

    def _text(self, data: str) -> Inbound:
        message = load_object(data)
        event = message["event"]
        if event == "connected":
            return Connected(opt_text(message, "protocol", "connected"),
                             opt_text(message, "version", "connected"))
        if event == "start":
            return self._on_start(message)
        if event == "stop":
            self._check_stream(message, "stop")
            return self._stop()
        if event == "media":
            return self._on_media(message)
        if event == "dtmf":
            self._check_stream(message, "dtmf")
            return Dtmf(digit(obj(message, "dtmf", "dtmf").get("digit"), "dtmf"))
        if event == "mark":
            self._check_stream(message, "mark")
            return MarkPlayed(text(obj(message, "mark", "mark"), "name", "mark"))
        reject("unknown_event", f"unknown event {event[:40]!r}")

    def _on_start(self, message: Mapping[str, Any]) -> Started:
        self._no_start_yet()
        number(message, "sequenceNumber", "start")
        start = obj(message, "start", "start")
        stream_sid = text(start, "streamSid", "start")
        top_sid = opt_text(message, "streamSid", "start")
        if top_sid is not None and top_sid != stream_sid:
            reject("bad_start", "start: streamSid differs from start.streamSid", fatal=True)
        call_sid = text(start, "callSid", "start")
        tracks = string_list(start, "tracks", "start")
        if tracks and "inbound" not in tracks:
            reject("unsupported_format", "start: the inbound track is not streamed", fatal=True)
        fmt = obj(start, "mediaFormat", "start")
        encoding = fmt.get("encoding")
        rate = number(fmt, "sampleRate", "start.mediaFormat", required=True)
        channels = number(fmt, "channels", "start.mediaFormat") or 1
        if encoding != "audio/x-mulaw" or rate != 8000 or channels != 1:
            reject("unsupported_format",
                   f"start: unsupported media format {str(encoding)[:40]}@{rate}x{channels}",
                   fatal=True)
        return self._start(Started(
            stream_id=stream_sid,
            carrier_call_id=call_sid,
            format=MULAW_8K,
            parameters=parameters(start.get("customParameters"), "start"),
            account_id=opt_text(start, "accountSid", "start"),
        ))

    def _check_stream(self, message: Mapping[str, Any], event: str) -> None:
        started = self._require_started(event)
        if text(message, "streamSid", event) != started.stream_id:
            reject("wrong_stream", f"{event}: streamSid does not match the stream")

    def _on_media(self, message: Mapping[str, Any]) -> Inbound:
        self._check_stream(message, "media")
        media = obj(message, "media", "media")
        track = media.get("track", "inbound")
        if track != "inbound":
            if track == "outbound":
                return Ignored("outbound_track")
            reject("bad_field", "media: unknown track")
        number(media, "chunk", "media")
        number(media, "timestamp", "media")
        return Media(b64_audio(media.get("payload"), MULAW_8K, self.limits, "media"))

    # --- outbound

    @property
    def stream_sid(self) -> str:
        return self.started.stream_id if self.started else ""

    def media(self, frame: bytes) -> str:
        # 50 messages a second per call: the envelope is built once per stream, not
        # re-serialized (base64 needs no JSON escaping)
        sid = self.stream_sid
        if self._media_sid != sid:
            self._media_sid = sid
            head = dumps({"event": "media", "streamSid": sid, "media": {"payload": ""}})
            self._media_head = head[:-3]  # up to the payload's opening quote
        return f'{self._media_head}{b64(frame)}"}}}}'

    def mark(self, name: str) -> str:
        return dumps({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}})

    def clear(self) -> str:
        return dumps({"event": "clear", "streamSid": self.stream_sid})


def connect_twiml(stream_url: str, params: Mapping[str, str]) -> str:
    """The answer document: a bidirectional stream with our parameters and nothing after it,
    so closing the socket ends the call."""
    from twilio.twiml.voice_response import Connect, VoiceResponse

    response = VoiceResponse()
    connect = Connect()
    stream = connect.stream(url=stream_url)
    for name, value in params.items():
        stream.parameter(name=name, value=value)
    response.append(connect)
    return str(response)
