"""The Telnyx media streaming codec: snake_case Twilio, G.711 or big-endian L16."""

from __future__ import annotations

import base64
import json
from xml.etree import ElementTree

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.base import AudioFormat
from runtime.carriers.common import (
    CarrierError,
    Connected,
    Dtmf,
    MarkPlayed,
    Media,
    ProtocolError,
    Started,
    Stopped,
)
from runtime.carriers.telnyx import TelnyxCodec, stream_texml
from tests.carriers.malformed import CALL, STREAM, malformed, valid_messages

FRAME = bytes(range(160))
VALID = valid_messages("telnyx", FRAME)


def started(media_format: dict | None = None) -> TelnyxCodec:
    codec = TelnyxCodec()
    start = json.loads(json.dumps(VALID["start"]))
    if media_format:
        start["start"]["media_format"] = media_format
    assert isinstance(codec.receive(json.dumps(start)), Started)
    return codec


def error(codec: TelnyxCodec, message: object) -> ProtocolError:
    result = codec.receive(message if isinstance(message, str | bytes) else json.dumps(message))
    assert isinstance(result, ProtocolError), result
    return result


def test_a_whole_stream_parses_into_typed_events() -> None:
    codec = TelnyxCodec()
    assert codec.receive('{"event":"connected","version":"1.0.0"}') == Connected(None, "1.0.0")
    start = codec.receive(json.dumps(VALID["start"]))
    assert isinstance(start, Started)
    assert (start.stream_id, start.carrier_call_id) == (STREAM, CALL)
    assert (start.from_, start.to) == ("+1", "+2")
    assert start.format == AudioFormat("mulaw", 8000)
    assert codec.receive(json.dumps(VALID["media"])) == Media(FRAME)
    assert codec.receive(json.dumps(VALID["dtmf"])) == Dtmf("1")
    assert codec.receive(json.dumps(VALID["mark"])) == MarkPlayed("turn-1-end")
    err = {"event": "error", "stream_id": STREAM,
           "payload": {"code": 100002, "title": "unknown_error", "detail": "boom"}}
    assert codec.receive(json.dumps(err)) == CarrierError("100002", "boom")
    stop = {"event": "stop", "sequence_number": "5", "stream_id": STREAM,
            "stop": {"user_id": "u", "call_control_id": CALL}}
    assert codec.receive(json.dumps(stop)) == Stopped("stop")


def test_l16_is_big_endian_on_the_wire_and_little_endian_inside() -> None:
    codec = started({"encoding": "L16", "sample_rate": 16000, "channels": 1})
    samples = np.arange(320, dtype="<i2") * 37
    wire = samples.astype(">i2").tobytes()
    media = {**VALID["media"], "media": {**VALID["media"]["media"],
                                         "payload": base64.b64encode(wire).decode()}}
    assert codec.receive(json.dumps(media)) == Media(samples.tobytes())
    out = json.loads(codec.media(samples.tobytes()))
    assert base64.b64decode(out["media"]["payload"]) == wire


def test_pcma_and_legacy_encoding_names() -> None:
    assert started({"encoding": "PCMA", "sample_rate": 8000}).format == AudioFormat("alaw", 8000)
    assert started({"encoding": "audio/x-mulaw", "sample_rate": 8000}).format \
        == AudioFormat("mulaw", 8000)
    bad = error(TelnyxCodec(), {**VALID["start"], "start": {**VALID["start"]["start"],
                "media_format": {"encoding": "OPUS", "sample_rate": 16000}}})
    assert bad.code == "unsupported_format" and bad.fatal


def test_outbound_messages_have_telnyx_exact_shape() -> None:
    codec = started()
    assert json.loads(codec.media(b"\x11" * 160)) == {
        "event": "media", "media": {"payload": base64.b64encode(b"\x11" * 160).decode()}}
    assert json.loads(codec.mark("turn-1-end")) == {"event": "mark", "mark": {"name": "turn-1-end"}}
    assert json.loads(codec.clear()) == {"event": "clear"}


def test_bad_input_each_has_a_code_and_the_stream_goes_on() -> None:
    codec = TelnyxCodec()
    assert error(codec, VALID["media"]).code == "before_start"
    codec.receive(json.dumps(VALID["start"]))
    media = VALID["media"]
    cases = {
        "malformed_json": "{",
        "unknown_event": {"event": "streaming.started"},
        "bad_base64": {**media, "media": {**media["media"], "payload": "@@"}},
        "wrong_stream": {**media, "stream_id": "other"},
        "bad_field": {**media, "sequence_number": "x1"},
        "duplicate_start": VALID["start"],
        "unexpected_binary": b"\x00",
    }
    for code, message in cases.items():
        assert error(codec, message).code == code, code
    assert codec.receive(json.dumps(media)) == Media(FRAME)


def test_texml_answer_streams_rtp_both_ways() -> None:
    xml = stream_texml("wss://h/v1/carriers/telnyx/stream?ticket=a&b=c",
                       AudioFormat("mulaw", 8000), {"agent_id": "ag_1"})
    stream = ElementTree.fromstring(xml).find("Connect/Stream")
    assert stream is not None
    assert stream.get("url") == "wss://h/v1/carriers/telnyx/stream?ticket=a&b=c"
    assert stream.get("bidirectionalMode") == "rtp"
    assert stream.get("bidirectionalCodec") == "PCMU" and stream.get("codec") == "PCMU"


def test_ten_thousand_generated_malformed_messages_never_raise() -> None:
    codec = started()
    source = malformed("telnyx", 17, FRAME)
    for _ in range(10_000):
        result = codec.receive(next(source))
        if isinstance(result, ProtocolError):
            assert result.code != "internal_error", result


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(["event", "stream_id", "media", "start", "mark",
                                                  "sequence_number", "dtmf", "payload"]),
                                 st.none() | st.integers() | st.text(max_size=8)
                                 | st.dictionaries(st.text(max_size=8), st.text(max_size=8)),
                                 max_size=5).map(json.dumps)))
def test_arbitrary_input_is_parsed_or_typed_never_raised(message: str | bytes) -> None:
    for codec in (TelnyxCodec(), started()):
        result = codec.receive(message)
        if isinstance(result, ProtocolError):
            assert result.code != "internal_error", result
