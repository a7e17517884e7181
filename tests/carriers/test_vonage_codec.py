"""The Vonage WebSocket codec: a text hello with the format, then binary L16 both ways."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from providers.base import AudioFormat
from runtime.carriers.common import Dtmf, Media, ProtocolError, Started
from runtime.carriers.vonage import VonageCodec, websocket_ncco
from tests.carriers.malformed import malformed, valid_messages

FRAME = bytes(640)
VALID = valid_messages("vonage", FRAME)


def started(rate: int = 16000) -> VonageCodec:
    codec = VonageCodec()
    hello = {**VALID["start"], "content-type": f"audio/l16;rate={rate}"}
    assert isinstance(codec.receive(json.dumps(hello)), Started)
    return codec


def error(codec: VonageCodec, message: object) -> ProtocolError:
    result = codec.receive(message if isinstance(message, str | bytes) else json.dumps(message))
    assert isinstance(result, ProtocolError), result
    return result


def test_connected_then_binary_audio_and_dtmf() -> None:
    codec = VonageCodec()
    hello = {"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
             "agent_id": "ag_1", "call_uuid": "aaaa-bbbb", "nested": {"x": 1}}
    start = codec.receive(json.dumps(hello))
    assert isinstance(start, Started)
    assert start.format == AudioFormat("pcm16", 16000)
    assert start.carrier_call_id == "aaaa-bbbb"
    assert start.parameters == {"agent_id": "ag_1", "call_uuid": "aaaa-bbbb"}
    assert codec.receive(FRAME) == Media(FRAME)
    assert codec.receive(json.dumps(VALID["dtmf"])) == Dtmf("5")
    # outbound audio is the raw frame itself; no marks, no clear message
    assert codec.media(FRAME) == FRAME
    assert codec.mark("m") is None and codec.clear() is None


def test_rates_8_16_and_24_khz() -> None:
    for rate in (8000, 16000, 24000):
        codec = started(rate)
        assert codec.format == AudioFormat("pcm16", rate)
        assert codec.receive(bytes(rate // 50 * 2)) == Media(bytes(rate // 50 * 2))


def test_bad_input_each_has_a_code() -> None:
    codec = VonageCodec()
    assert error(codec, FRAME).code == "before_start"
    assert error(codec, VALID["dtmf"]).code == "before_start"
    bad = error(codec, {"event": "websocket:connected", "content-type": "audio/pcmu;rate=8000"})
    assert bad.code == "unsupported_format" and bad.fatal
    codec = started()
    assert error(codec, b"\x00" * 641).code == "bad_payload_size"  # half a sample
    assert error(codec, b"").code == "bad_payload_size"
    assert error(codec, b"\x00" * 64_000).code == "bad_payload_size"  # 2 s in one frame
    assert error(codec, b"\x00" * 70_000).code == "frame_too_large"
    assert error(codec, {"event": "websocket:dtmf", "digit": "E"}).code == "bad_dtmf"
    assert error(codec, {"event": "websocket:other"}).code == "unknown_event"
    assert error(codec, VALID["start"]).code == "duplicate_start"
    assert error(codec, "nope").code == "malformed_json"
    assert codec.receive(FRAME) == Media(FRAME)


def test_answer_ncco_connects_a_websocket() -> None:
    ncco = websocket_ncco("wss://h/v1/carriers/vonage/stream?ticket=t",
                          AudioFormat("pcm16", 16000), {"agent_id": "ag_1"})
    assert ncco == [{
        "action": "connect",
        "endpoint": [{"type": "websocket", "uri": "wss://h/v1/carriers/vonage/stream?ticket=t",
                      "content-type": "audio/l16;rate=16000", "headers": {"agent_id": "ag_1"}}],
    }]


def test_ten_thousand_generated_malformed_messages_never_raise() -> None:
    codec = started()
    source = malformed("vonage", 13, FRAME)
    for _ in range(10_000):
        result = codec.receive(next(source))
        if isinstance(result, ProtocolError):
            assert result.code != "internal_error", result


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=2000)))
def test_arbitrary_input_is_parsed_or_typed_never_raised(message: str | bytes) -> None:
    for codec in (VonageCodec(), started()):
        result = codec.receive(message)
        if isinstance(result, ProtocolError):
            assert result.code != "internal_error", result
