"""The Plivo Audio Streams codec: exact wire shapes in and out, every bad input typed."""

from __future__ import annotations

import base64
import json
from xml.etree import ElementTree

from hypothesis import given, settings
from hypothesis import strategies as st

from providers.base import AudioFormat
from runtime.carriers.common import (
    Cleared,
    Dtmf,
    MarkPlayed,
    Media,
    ProtocolError,
    Started,
    Stopped,
)
from runtime.carriers.plivo import PlivoCodec, parse_extra_headers, stream_xml
from tests.carriers.malformed import CALL, STREAM, malformed, valid_messages

FRAME = bytes(range(160))
VALID = valid_messages("plivo", FRAME)


def started(start: dict | None = None) -> PlivoCodec:
    codec = PlivoCodec()
    assert isinstance(codec.receive(json.dumps(start or VALID["start"])), Started)
    return codec


def error(codec: PlivoCodec, message: object) -> ProtocolError:
    result = codec.receive(message if isinstance(message, str | bytes) else json.dumps(message))
    assert isinstance(result, ProtocolError), result
    return result


def test_a_whole_stream_parses_into_typed_events() -> None:
    codec = PlivoCodec()
    start = codec.receive(json.dumps(VALID["start"]))
    assert isinstance(start, Started)
    assert (start.stream_id, start.carrier_call_id, start.account_id) == (STREAM, CALL, "MA0")
    assert start.format == AudioFormat("mulaw", 8000)
    assert start.parameters == {"agentid": "x"}
    assert codec.receive(json.dumps(VALID["media"])) == Media(FRAME)
    assert codec.receive(json.dumps(VALID["dtmf"])) == Dtmf("5")
    assert codec.receive(json.dumps(VALID["mark"])) == MarkPlayed("turn-1-end")
    # the older name of the acknowledgement
    played = {**VALID["mark"], "event": "played"}
    assert codec.receive(json.dumps(played)) == MarkPlayed("turn-1-end")
    cleared = {"sequenceNumber": 0, "event": "clearedAudio", "streamId": STREAM}
    assert codec.receive(json.dumps(cleared)) == Cleared()
    assert codec.receive(json.dumps({"event": "stop", "streamId": STREAM})) == Stopped("stop")


def test_l16_streams_at_8_and_16_khz() -> None:
    for rate in (8000, 16000):
        start = json.loads(json.dumps(VALID["start"]))
        start["start"]["mediaFormat"] = {"encoding": "audio/x-l16", "sampleRate": rate}
        codec = started(start)
        assert codec.format == AudioFormat("pcm16", rate)
        frame = bytes(rate // 50 * 2)
        media = {**VALID["media"], "media": {**VALID["media"]["media"],
                                             "payload": base64.b64encode(frame).decode()}}
        assert codec.receive(json.dumps(media)) == Media(frame)
        odd = {**media, "media": {**media["media"],
                                  "payload": base64.b64encode(b"\0" * 3).decode()}}
        assert error(codec, odd).code == "bad_payload_size"
        out = json.loads(codec.media(frame))
        assert out["media"]["contentType"] == "audio/x-l16" and out["media"]["sampleRate"] == rate


def test_outbound_messages_have_plivos_exact_shape() -> None:
    codec = started()
    assert json.loads(codec.media(b"\x7f" * 160)) == {
        "event": "playAudio",
        "media": {"contentType": "audio/x-mulaw", "sampleRate": 8000,
                  "payload": base64.b64encode(b"\x7f" * 160).decode()},
    }
    assert json.loads(codec.mark("turn-2-end")) == {
        "event": "checkpoint", "streamId": STREAM, "name": "turn-2-end"}
    assert json.loads(codec.clear()) == {"event": "clearAudio", "streamId": STREAM}


def test_bad_input_each_has_a_code_and_the_stream_goes_on() -> None:
    codec = PlivoCodec()
    assert error(codec, VALID["media"]).code == "before_start"
    codec.receive(json.dumps(VALID["start"]))
    media = VALID["media"]
    cases = {
        "malformed_json": '{"event": "media"',
        "unknown_event": {"event": "sendDTMF"},
        "bad_base64": {**media, "media": {**media["media"], "payload": "%%%"}},
        "bad_payload_size": {**media, "media": {
            **media["media"], "payload": base64.b64encode(b"\0" * 4000).decode()}},
        "wrong_stream": {**media, "streamId": "other"},
        "duplicate_start": VALID["start"],
        "bad_field": {**media, "sequenceNumber": "one"},
        "unexpected_binary": b"\x00\x01",
    }
    for code, message in cases.items():
        assert error(codec, message).code == code, code
    assert codec.receive(json.dumps(media)) == Media(FRAME)


def test_unsupported_formats_are_fatal() -> None:
    for encoding, rate in (("audio/x-mulaw", 16000), ("audio/x-l16", 24000), ("audio/opus", 8000)):
        start = json.loads(json.dumps(VALID["start"]))
        start["start"]["mediaFormat"] = {"encoding": encoding, "sampleRate": rate}
        result = error(PlivoCodec(), start)
        assert result.code == "unsupported_format" and result.fatal


def test_extra_headers_and_the_answer_xml() -> None:
    assert parse_extra_headers("a=1,b=2") == {"a": "1", "b": "2"}
    assert parse_extra_headers("userId=12345;sessionId=abc") == {"userId": "12345",
                                                                 "sessionId": "abc"}
    xml = stream_xml("wss://h/v1/carriers/plivo/stream?ticket=a.b&x=1",
                     AudioFormat("mulaw", 8000), {"agentid": "ag1", "bad": "a_b"})
    stream = ElementTree.fromstring(xml).find("Stream")
    assert stream is not None
    assert stream.text == "wss://h/v1/carriers/plivo/stream?ticket=a.b&x=1"
    assert stream.get("bidirectional") == "true" and stream.get("keepCallAlive") == "true"
    assert stream.get("contentType") == "audio/x-mulaw;rate=8000"
    assert stream.get("extraHeaders") == "agentid=ag1"


def test_ten_thousand_generated_malformed_messages_never_raise() -> None:
    codec = started()
    source = malformed("plivo", 11, FRAME)
    for _ in range(10_000):
        result = codec.receive(next(source))
        if isinstance(result, ProtocolError):
            assert result.code != "internal_error", result


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.dictionaries(st.sampled_from(["event", "streamId", "media", "start", "name",
                                                  "sequenceNumber", "dtmf"]),
                                 st.none() | st.integers() | st.text(max_size=8)
                                 | st.dictionaries(st.text(max_size=8), st.text(max_size=8)),
                                 max_size=5).map(json.dumps)))
def test_arbitrary_input_is_parsed_or_typed_never_raised(message: str | bytes) -> None:
    for codec in (PlivoCodec(), started()):
        result = codec.receive(message)
        if isinstance(result, ProtocolError):
            assert result.code != "internal_error", result
