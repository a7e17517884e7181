"""The pure parts of the LiveKit transport: which call a job is, and what the room gets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from providers.base import ConfigError
from runtime.transports.livekit import (
    TOPIC_EVENTS,
    DataOut,
    LiveKitConfig,
    MetadataError,
    RoomUpdates,
    StateOut,
    TextOut,
    parse_call_target,
)


def test_dispatch_metadata_wins_over_room_and_participant() -> None:
    target = parse_call_target(
        json.dumps({"agent_id": "agt_dispatch", "call_id": "call_1"}),
        json.dumps({"agent_id": "agt_room", "call_id": "call_room"}),
        "",
        {"rymi.agent_id": "agt_attr"},
    )
    assert (target.agent_id, target.call_id) == ("agt_dispatch", "call_1")


def test_later_sources_fill_what_earlier_ones_lack() -> None:
    target = parse_call_target(
        "not json at all: another app's metadata",
        json.dumps({"rymi": {"call_id": "call_9", "metadata": {"campaign": "x"}}}),
        json.dumps({"metadata": {"campaign": "ignored", "tier": "gold"}}),
        {"rymi.agent_id": "agt_from_attributes"},
    )
    assert target.agent_id == "agt_from_attributes"
    assert target.call_id == "call_9"
    assert target.metadata == {"campaign": "x", "tier": "gold"}


def test_default_agent_and_missing_agent() -> None:
    assert parse_call_target(None, "", default_agent_id="agt_default").agent_id == "agt_default"
    assert parse_call_target("[1, 2]", default_agent_id="agt_d").call_id is None
    with pytest.raises(MetadataError):
        parse_call_target(json.dumps({"call_id": "call_1"}), "{}")
    with pytest.raises(MetadataError):
        parse_call_target(json.dumps({"agent_id": ""}))


def test_config_from_settings_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="RYMI_LIVEKIT_URL"):
        LiveKitConfig.from_settings(SimpleNamespace())
    monkeypatch.setenv("LIVEKIT_URL", "ws://127.0.0.1:7880")
    monkeypatch.setenv("LIVEKIT_API_KEY", "key")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "secret")
    config = LiveKitConfig.from_settings(SimpleNamespace(livekit_agent_name="support"))
    assert (config.url, config.api_key, config.agent_name) == (
        "ws://127.0.0.1:7880", "key", "support")
    assert "secret" not in repr(config)


def _texts(updates: Sequence[object]) -> list[TextOut]:
    return [u for u in updates if isinstance(u, TextOut)]


def test_user_words_are_interim_then_final_in_one_segment() -> None:
    room = RoomUpdates("room-job")
    first = _texts(room.handle({"type": "live", "live": {"type": "user.partial", "text": "what"}}))
    second = _texts(room.handle({"type": "live",
                                 "live": {"type": "user.partial", "text": "what time"}}))
    final = _texts(room.handle({"type": "transcript",
                                "segment": {"role": "user", "text": "what time is it",
                                            "turn_id": 2}}))
    assert [t.final for t in (*first, *second, *final)] == [False, False, True]
    assert {t.segment_id for t in (*first, *second, *final)} == {first[0].segment_id}
    assert final[0].text == "what time is it" and final[0].speaker == "user"
    nxt = _texts(room.handle({"type": "live", "live": {"type": "user.partial", "text": "and"}}))
    assert nxt[0].segment_id != first[0].segment_id


def test_agent_text_accumulates_and_the_final_is_what_was_heard() -> None:
    room = RoomUpdates("k")
    a = _texts(room.handle({"type": "live",
                            "live": {"type": "agent.text", "turn_id": 3, "text": "We open"}}))
    b = _texts(room.handle({"type": "live",
                            "live": {"type": "agent.text", "turn_id": 3, "text": "at nine."}}))
    heard = _texts(room.handle({"type": "transcript",
                                "segment": {"role": "agent", "text": "We open",
                                            "turn_id": 3, "interrupted": True}}))
    assert b[0].text == "We open at nine." and not b[0].final
    assert heard[0].final and heard[0].text == "We open"
    assert a[0].segment_id == b[0].segment_id == heard[0].segment_id == room.agent_segment(3)
    assert heard[0].speaker == "agent"


def test_events_become_data_packets_and_agent_state() -> None:
    room = RoomUpdates("k")
    started = room.handle({"type": "event", "event": {"type": "agent.speech_started", "at": 1.0,
                                                      "data": {"turn_id": 1}}})
    assert isinstance(started[0], DataOut) and started[0].topic == TOPIC_EVENTS
    assert json.loads(started[0].payload)["data"] == {"turn_id": 1}
    assert StateOut("speaking") in started
    status = room.handle({"type": "event", "event": {"type": "call.status",
                                                     "data": {"status": "in_progress"}}})
    assert StateOut("listening") in status
    assert room.handle({"type": "ended", "reason": "x"}) == []
