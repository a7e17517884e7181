"""A seeded generator of malformed carrier messages, shared by codec and socket fuzz tests.

It mutates each carrier's valid messages the ways a broken or hostile peer would: bad
JSON, wrong types, missing fields, bad base64, wrong payload sizes, unknown events,
oversized frames, binary where text is expected (and the reverse), wrong stream ids.
"""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

Message = str | bytes

STREAM = "MZ00000000000000000000000000000000"
CALL = "CA00000000000000000000000000000000"


def valid_messages(carrier: str, frame: bytes) -> dict[str, Any]:
    """The carrier's own well-formed messages (as dicts, or bytes for Vonage audio)."""
    payload = base64.b64encode(frame).decode()
    if carrier == "twilio":
        return {
            "start": {"event": "start", "sequenceNumber": "1", "streamSid": STREAM,
                      "start": {"accountSid": "AC0", "streamSid": STREAM, "callSid": CALL,
                                "tracks": ["inbound"], "customParameters": {"agent_id": "x"},
                                "mediaFormat": {"encoding": "audio/x-mulaw",
                                                "sampleRate": 8000, "channels": 1}}},
            "media": {"event": "media", "sequenceNumber": "3", "streamSid": STREAM,
                      "media": {"track": "inbound", "chunk": "2", "timestamp": "40",
                                "payload": payload}},
            "dtmf": {"event": "dtmf", "streamSid": STREAM, "sequenceNumber": "5",
                     "dtmf": {"track": "inbound_track", "digit": "1"}},
            "mark": {"event": "mark", "streamSid": STREAM, "sequenceNumber": "9",
                     "mark": {"name": "turn-1-end"}},
        }
    if carrier == "plivo":
        return {
            "start": {"event": "start", "sequenceNumber": 0,
                      "start": {"callId": CALL, "streamId": STREAM, "accountId": "MA0",
                                "tracks": ["inbound"],
                                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000}},
                      "extra_headers": "agentid=x"},
            "media": {"event": "media", "sequenceNumber": 1, "streamId": STREAM,
                      "media": {"track": "inbound", "timestamp": "1", "chunk": 1,
                                "payload": payload}},
            "dtmf": {"event": "dtmf", "sequenceNumber": 2, "streamId": STREAM,
                     "dtmf": {"digit": "5", "track": "inbound"}},
            "mark": {"event": "playedStream", "sequenceNumber": 3, "streamId": STREAM,
                     "name": "turn-1-end"},
        }
    if carrier == "telnyx":
        return {
            "start": {"event": "start", "sequence_number": "1", "stream_id": STREAM,
                      "start": {"call_control_id": CALL, "user_id": "u", "from": "+1",
                                "to": "+2", "media_format": {"encoding": "PCMU",
                                                             "sample_rate": 8000,
                                                             "channels": 1}}},
            "media": {"event": "media", "sequence_number": "4", "stream_id": STREAM,
                      "media": {"track": "inbound", "chunk": "2", "timestamp": "5",
                                "payload": payload}},
            "dtmf": {"event": "dtmf", "stream_id": STREAM, "sequence_number": "5",
                     "dtmf": {"digit": "1"}},
            "mark": {"event": "mark", "stream_id": STREAM, "sequence_number": "6",
                     "mark": {"name": "turn-1-end"}},
        }
    if carrier == "vonage":
        return {
            "start": {"event": "websocket:connected", "content-type": "audio/l16;rate=16000",
                      "agent_id": "x"},
            "media": frame,
            "dtmf": {"event": "websocket:dtmf", "digit": "5", "duration": 260},
        }
    raise ValueError(carrier)


_JUNK_VALUES: list[Any] = [None, True, 0, -1, 1.5, "", "x" * 300, [], {}, [1, 2], {"a": {}},
                           "\u0000", "💥", 10**30]


def _mutate_dict(rng: random.Random, message: dict[str, Any]) -> dict[str, Any]:
    """Replace, delete or retype one field somewhere in the message."""
    copy = json.loads(json.dumps(message))
    target = copy
    path: list[str] = []
    while True:
        keys = list(target)
        if not keys:
            break
        key = rng.choice(keys)
        path.append(key)
        if isinstance(target[key], dict) and rng.random() < 0.6:
            target = target[key]
            continue
        action = rng.random()
        if action < 0.35:
            del target[key]
        else:
            target[key] = rng.choice(_JUNK_VALUES)
        break
    return copy


def _bad_payload(rng: random.Random, message: dict[str, Any]) -> dict[str, Any]:
    copy = json.loads(json.dumps(message))
    media = copy.get("media")
    if not isinstance(media, dict):
        return copy
    choice = rng.randrange(6)
    if choice == 0:
        media["payload"] = "!!!not base64!!!"
    elif choice == 1:
        media["payload"] = media["payload"][:-1]  # broken padding
    elif choice == 2:
        media["payload"] = ""
    elif choice == 3:
        media["payload"] = base64.b64encode(b"\x00" * 40_000).decode()  # far too long
    elif choice == 4:
        media["payload"] = base64.b64encode(b"\x01").decode()  # half a 16-bit sample / 1 byte
    else:
        media["payload"] = base64.b64encode(b"\x00" * rng.choice([3, 5, 7, 8001])).decode()
    return copy


def malformed(carrier: str, seed: int, frame: bytes) -> Iterator[Message]:
    """An endless stream of malformed messages for ``carrier``."""
    rng = random.Random(seed)
    valid = valid_messages(carrier, frame)
    dicts = {k: v for k, v in valid.items() if isinstance(v, dict)}

    def text_junk() -> Message:
        return rng.choice([
            "", "{", "}", "[]", "null", "42", '"media"', "{'event': 'media'}", "\ufffd" * 10,
            '{"event": 5}', '{"event": ""}', '{"event": "media"', "nan", "[" * 5000,
        ])

    def bytes_junk() -> Message:
        size = rng.choice([0, 1, 3, 641, 70_000, rng.randrange(2, 2000, 2)])
        return bytes(rng.getrandbits(8) for _ in range(min(size, 2048))) * (
            1 if size <= 2048 else size // 2048)

    generators: list[Callable[[], Message]] = [
        text_junk,
        lambda: json.dumps(_mutate_dict(rng, rng.choice(list(dicts.values())))),
        lambda: json.dumps(_bad_payload(rng, dicts.get("media", {"event": "media"}))),
        lambda: json.dumps({"event": rng.choice(["hello", "Media", "MEDIA", "start2", "pause",
                                                 "clear", "playAudio", "websocket:unknown"])}),
        lambda: json.dumps({**rng.choice(list(dicts.values())), "streamSid": "MZother",
                            "streamId": "other", "stream_id": "other"}),
        lambda: json.dumps(rng.choice(list(dicts.values())))[: rng.randrange(1, 40)],
        lambda: "x" * (70 * 1024),  # oversized text frame
        lambda: json.dumps(rng.choice(list(dicts.values()))).encode(),  # text sent as binary
        bytes_junk,
    ]
    while True:
        yield rng.choice(generators)()
