"""Vonage Voice API WebSocket (NCCO ``connect`` to a ``websocket`` endpoint).

The first frame is text, ``{"event":"websocket:connected","content-type":"audio/l16;rate=16000",
…NCCO headers}``; audio then flows both ways as binary frames of signed 16-bit little-endian
PCM. Vonage has no marks and no clear: outbound audio must be paced in real time by the
sender, and "clear" means dropping the sender's own queue. Later text events include
``websocket:dtmf``.
"""

from __future__ import annotations

from typing import Any

from providers.base import AudioFormat
from runtime.carriers.common import (
    Codec,
    Dtmf,
    Inbound,
    Media,
    Started,
    check_audio_size,
    digit,
    load_object,
    parameters,
    parse_l16_rate,
    reject,
)

RATES = (8000, 16000, 24000)
_RESERVED = ("event", "content-type")


class VonageCodec(Codec):
    carrier = "vonage"

    def _text(self, data: str) -> Inbound:
        message = load_object(data)
        event = message["event"]
        if event == "websocket:connected":
            return self._on_connected(message)
        if event == "websocket:dtmf":
            self._require_started(event)
            inner = message.get("dtmf")
            value = inner.get("digit") if isinstance(inner, dict) else message.get("digit")
            return Dtmf(digit(value, event))
        reject("unknown_event", f"unknown event {event[:40]!r}")

    def _on_connected(self, message: dict[str, Any]) -> Started:
        self._no_start_yet()
        content_type = message.get("content-type")
        rate = parse_l16_rate(content_type) if isinstance(content_type, str) else None
        if rate not in RATES:
            reject("unsupported_format",
                   f"websocket:connected: unsupported content-type {str(content_type)[:60]}",
                   fatal=True)
        assert rate is not None
        headers = parameters({k: v for k, v in message.items() if k not in _RESERVED},
                             "websocket:connected")
        call_uuid = headers.get("call_uuid") or headers.get("uuid") or ""
        return self._start(Started(
            stream_id=call_uuid,
            carrier_call_id=call_uuid,
            format=AudioFormat("pcm16", rate),
            parameters=headers,
        ))

    def _binary(self, data: bytes) -> Inbound:
        started = self._require_started("audio")
        check_audio_size(data, started.format, self.limits, "audio")
        return Media(bytes(data))

    # --- outbound: raw frames; pacing and clearing are the sender's job

    def media(self, frame: bytes) -> bytes:
        return frame


def websocket_ncco(
    stream_url: str, fmt: AudioFormat, headers: dict[str, str], *, from_: str | None = None
) -> list[dict[str, Any]]:
    """The answer NCCO: connect the call to our WebSocket; when it closes, the NCCO ends."""
    if fmt.encoding != "pcm16" or fmt.sample_rate not in RATES:
        raise ValueError(f"Vonage streams L16 at {RATES}, not {fmt}")
    action: dict[str, Any] = {
        "action": "connect",
        "endpoint": [{
            "type": "websocket",
            "uri": stream_url,
            "content-type": f"audio/l16;rate={fmt.sample_rate}",
            "headers": headers,
        }],
    }
    if from_:
        action["from"] = from_
    return [action]

