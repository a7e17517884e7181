"""A LiveKit call end to end: token from the API, dispatch, speech both ways, barge-in.

Everything is real: livekit-server (loopback-only namespace), ``rymi-worker livekit`` as a
process registered through livekit-agents, a participant on the rtc SDK publishing
espeak-ng speech, the offline engines answering, the local /v1 API receiving reports.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from pipelines.agent_config import default_agent
from tests.livekit.harness import Api, SpawnWorker
from tests.livekit.lkserver import LiveKitServer
from tests.livekit.participant import Participant
from tests.support.speech import speech

pytestmark = pytest.mark.e2e

QUESTION = "what time does the store open tomorrow"
BARGE_IN = "wait, what about on sunday"


@contextlib.asynccontextmanager
async def joined(url: str, token: str) -> AsyncIterator[Participant]:
    person = Participant(url, token)
    await person.join()
    try:
        yield person
    finally:
        await person.leave()


def data_events(person: Participant, kind: str, **match: Any) -> list[tuple[float, dict[str, Any]]]:
    return [
        (at, e) for at, e in person.events
        if e.get("type") == kind
        and all((e.get("data") or {}).get(k) == v for k, v in match.items())
    ]


def agent_identity(person: Participant) -> str:
    agents = [p for p in person.room.remote_participants.values()
              if p.identity.startswith("rymi-agent-")]
    assert agents, "the agent joined the room"
    return agents[0].identity


async def test_dispatched_worker_answers_is_barged_in_and_reports_everything(
    livekit_server: LiveKitServer, lk_api: Api, spawn_worker: SpawnWorker
) -> None:
    await spawn_worker("worker-a")
    call = await lk_api.new_call()
    reply_text = default_agent().playbook.intents[0].reply

    async with joined(livekit_server.url, call["token"]) as caller:
        # dispatched by the token's room configuration: the agent joins and greets
        await caller.wait_for(lambda: data_events(caller, "agent.speech_stopped", turn_id=1),
                              40, "the greeting to finish")
        agent = agent_identity(caller)
        assert caller.loud(agent), "the greeting was heard as audio"

        caller.say(speech(QUESTION, rate=48000))
        started = await caller.wait_for(
            lambda: data_events(caller, "agent.speech_started", turn_id=2), 40, "the answer")
        answer_at = started[0][0]
        await caller.wait_for(lambda: len(caller.loud(agent, since=answer_at)) >= 50, 20,
                              "a second of the answer to be heard")

        caller.say(speech(BARGE_IN, rate=48000))
        await caller.wait_for(lambda: data_events(caller, "agent.interrupted", turn_id=2),
                              30, "the barge-in")
        await caller.spoken()
        # the room transcript of the interrupted turn arrives (lk.transcription, final)
        finals = await caller.wait_for(
            lambda: [t for t in caller.texts if t.sender == agent
                     and t.attributes.get("lk.transcription_final") == "true"
                     and t.attributes.get("lk.segment_id", "").endswith("-agent-2")],
            20, "the final agent transcript of turn 2")
        next_turn = data_events(caller, "agent.speech_started", turn_id=3)
        end_of_turn_2 = next_turn[0][0] if next_turn else float("inf")
        heard_turn_2 = [f for f in caller.loud(agent, since=answer_at) if f.at < end_of_turn_2]

    completed = await lk_api.wait_call(call["call_id"], "completed", 30)
    assert completed["end_reason"] == "caller_left"
    assert completed["worker_id"] == "worker-a" and completed["transport"] == "livekit"

    events = await lk_api.events(call["call_id"])
    types = [e["type"] for e in events]
    for expected in ("user.speech_started", "agent.speech_started", "agent.interrupted",
                     "turn.metrics", "livekit.barge_in", "livekit.audio_cleared"):
        assert expected in types, types
    statuses = [e["data"]["status"] for e in events if e["type"] == "call.status"]
    assert statuses == ["ringing", "in_progress", "completed"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))

    # barge-in: the agent's source was cleared in the same step as the decision (no frame
    # handed to LiveKit in between), and nothing was left queued behind it
    decisions = [e for e in events if e["type"] == "livekit.barge_in"
                 and e["data"]["turn_id"] == 2]
    assert decisions
    first = decisions[0]
    clears = [e for e in events if e["type"] == "livekit.audio_cleared"
              and abs(e["seq"] - first["seq"]) <= 3]
    assert clears, events
    nearest = min(clears, key=lambda e: abs(e["seq"] - first["seq"]))
    assert abs(nearest["data"]["frames_sent"] - first["data"]["frames_sent"]) <= 1
    assert nearest["data"]["queued_after_ms"] == 0.0

    segments = await lk_api.transcript(call["call_id"])
    roles = [(s["role"], s["turn_id"]) for s in segments]
    assert roles[:3] == [("agent", 1), ("user", 2), ("agent", 2)]
    assert set(segments[1]["text"].split()) & {"open", "tomorrow", "time", "store"}
    interrupted = segments[2]
    assert interrupted["interrupted"] is True
    heard = interrupted["text"]
    assert heard and reply_text.startswith(heard) and heard != reply_text

    # what the participant got matches: the final room transcript is what was heard, and
    # the audio of the interrupted answer stopped well short of the whole reply
    assert finals[-1].text == heard
    played = next(e["data"]["played_s"] for e in events if e["type"] == "agent.interrupted")
    full = len(speech(reply_text, rate=16000)) / 32000
    assert 0 < len(heard_turn_2) * 0.01 < full and played < full
    user_finals = [t for t in caller.texts if t.sender == caller.identity
                   and t.attributes.get("lk.transcription_final") == "true"]
    assert user_finals and user_finals[0].text == segments[1]["text"]
