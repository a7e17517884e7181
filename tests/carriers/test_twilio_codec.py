"""The Twilio Media Streams codec: exact wire shapes in and out, every bad input typed."""

from __future__ import annotations

import base64
import json
from xml.etree import ElementTree

from hypothesis import given, settings
from hypothesis import strategies as st

from providers.base import MULAW_8K
from runtime.carriers.common import (
    Connected,
    Dtmf,
    Ignored,
    MarkPlayed,
    Media,
    ProtocolError,
    Started,
    Stopped,
)
from runtime.carriers.twilio import TwilioCodec, connect_twiml
from tests.carriers.malformed import CALL, STREAM, malformed, valid_messages

FRAME = bytes(range(160))
VALID = valid_messages("twilio", FRAME)


def started() -> TwilioCodec:
    codec = TwilioCodec()
    assert isinstance(codec.receive('{"event":"connected","protocol":"Call","version":"1.0.0"}'),
                      Connected)
    assert isinstance(codec.receive(json.dumps(VALID["start"])), Started)
    return codec


def error(codec: TwilioCodec, message: object) -> ProtocolError:
    result = codec.receive(message if isinstance(message, str | bytes) else json.dumps(message))
    assert isinstance(result, ProtocolError), result
    return result


def test_a_whole_stream_parses_into_typed_events() -> None:
    codec = TwilioCodec()
    hello = codec.receive('{"event":"connected","protocol":"Call","version":"1.0.0"}')
    assert hello == Connected("Call", "1.0.0")
    start = codec.receive(json.dumps(VALID["start"]))
    assert isinstance(start, Started)
    assert start.stream_id == STREAM and start.carrier_call_id == CALL
    assert start.format == MULAW_8K and start.parameters == {"agent_id": "x"}
    assert start.account_id == "AC0"
    assert codec.receive(json.dumps(VALID["media"])) == Media(FRAME)
    assert codec.receive(json.dumps(VALID["dtmf"])) == Dtmf("1")
    assert codec.receive(json.dumps(VALID["mark"])) == MarkPlayed("turn-1-end")
    stop = {"event": "stop", "streamSid": STREAM, "sequenceNumber": "99",
            "stop": {"accountSid": "AC0", "callSid": CALL}}
    assert codec.receive(json.dumps(stop)) == Stopped("stop")
    assert error(codec, VALID["media"]).code == "after_stop"


def test_outbound_messages_have_twilios_exact_shape() -> None:
    codec = started()
    assert json.loads(codec.media(b"\xff" * 160)) == {
        "event": "media", "streamSid": STREAM,
        "media": {"payload": base64.b64encode(b"\xff" * 160).decode()},
    }
    assert json.loads(codec.mark("turn-3-end")) == {
        "event": "mark", "streamSid": STREAM, "mark": {"name": "turn-3-end"}}
    assert json.loads(codec.clear()) == {"event": "clear", "streamSid": STREAM}


@settings(max_examples=50, deadline=None)
@given(sid=st.text(min_size=1, max_size=40), frame=st.binary(min_size=1, max_size=400))
def test_the_prebuilt_media_envelope_is_the_json_of_any_stream_sid(sid: str,
                                                                   frame: bytes) -> None:
    """The media message is assembled from a cached head, not json.dumps per frame: it must
    stay exactly what json.dumps gives, whatever the stream sid holds (quotes, escapes)."""
    codec = TwilioCodec()
    codec.started = Started(stream_id=sid, carrier_call_id=CALL, format=MULAW_8K,
                            parameters={}, account_id=None)
    for _ in range(2):  # the first call builds the head, the second reuses it
        assert json.loads(codec.media(frame)) == {
            "event": "media", "streamSid": sid,
            "media": {"payload": base64.b64encode(frame).decode()},
        }


def test_media_before_start_and_duplicate_start_are_errors() -> None:
    codec = TwilioCodec()
    assert error(codec, VALID["media"]).code == "before_start"
    assert error(codec, VALID["dtmf"]).code == "before_start"
    codec.receive(json.dumps(VALID["start"]))
    assert error(codec, VALID["start"]).code == "duplicate_start"


def test_bad_json_base64_sizes_and_events_each_have_a_code() -> None:
    codec = started()
    media = VALID["media"]
    cases = {
        "malformed_json": "{not json",
        "not_an_object": "[1, 2]",
        "missing_event": '{"streamSid": "x"}',
        "unknown_event": {"event": "pause"},
        "bad_base64": {**media, "media": {**media["media"], "payload": "!!!"}},
        "bad_payload_size": {**media, "media": {
            **media["media"], "payload": base64.b64encode(b"\0" * 8000).decode()}},
        "wrong_stream": {**media, "streamSid": "MZother"},
        "missing_field": {"event": "media", "streamSid": STREAM},
        "bad_dtmf": {**VALID["dtmf"], "dtmf": {"digit": "x"}},
        "unexpected_binary": b"\x00" * 160,
        "frame_too_large": "x" * (65 * 1024),
    }
    for code, message in cases.items():
        assert error(codec, message).code == code, code
    # broken padding is bad base64, an empty payload a bad size
    def with_payload(payload: str) -> dict:
        return {**media, "media": {**media["media"], "payload": payload}}

    assert error(codec, with_payload("AAA")).code == "bad_base64"
    assert error(codec, with_payload("")).code == "missing_field"
    # the stream goes on after every error
    assert codec.receive(json.dumps(media)) == Media(FRAME)


def test_an_unsupported_format_is_fatal() -> None:
    codec = TwilioCodec()
    start = json.loads(json.dumps(VALID["start"]))
    start["start"]["mediaFormat"]["encoding"] = "audio/x-l16"
    result = error(codec, start)
    assert result.code == "unsupported_format" and result.fatal


def test_outbound_track_is_ignored_not_an_error() -> None:
    codec = started()
    media = VALID["media"]
    assert codec.receive(json.dumps({**media, "media": {**media["media"], "track": "outbound"}})) \
        == Ignored("outbound_track")


def test_twiml_connects_a_stream_with_parameters_and_nothing_after() -> None:
    xml = connect_twiml("wss://h.example/v1/carriers/twilio/stream",
                        {"agent_id": "ag_1", "call_id": "call <1>"})
    root = ElementTree.fromstring(xml)
    assert [child.tag for child in root] == ["Connect"]
    stream = root.find("Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://h.example/v1/carriers/twilio/stream"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert params == {"agent_id": "ag_1", "call_id": "call <1>"}


def test_ten_thousand_generated_malformed_messages_never_raise() -> None:
    codec = started()
    source = malformed("twilio", 7, FRAME)
    for _ in range(10_000):
        result = codec.receive(next(source))
        if isinstance(result, ProtocolError):
            assert result.code != "internal_error", result


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                              lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                              max_leaves=20).map(json.dumps)))
def test_arbitrary_input_is_parsed_or_typed_never_raised(message: str | bytes) -> None:
    for codec in (TwilioCodec(), started()):
        result = codec.receive(message)
        if isinstance(result, ProtocolError):
            assert result.code != "internal_error", result
