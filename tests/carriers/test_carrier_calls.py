"""A phone call through each carrier, end to end over real sockets on 127.0.0.1.

The caller is a client that behaves like the carrier (tests/carriers/clients.py): signed
answer webhook, the carrier's exact stream messages, 20 ms real-time audio of espeak-ng
speech, marks acknowledged when played. The worker runs the real offline engines
(pocketsphinx, playbook, espeak) with the embedded /v1 API.
"""

from __future__ import annotations

import asyncio

import pytest

from pipelines.agent_config import default_agent
from runtime.server import Worker
from tests.carriers.clients import CarrierCaller
from tests.carriers.harness import (
    api_post,
    event_time,
    events,
    find_call,
    make_caller,
    speech_for,
    transcript,
    wait_event,
    wait_status,
    worker,
)
from tests.carriers.harness import default_agent_id as agent_of

pytestmark = pytest.mark.e2e
__all__ = ["worker"]

#: carrier → the stream format its answer webhook asks for (μ-law end to end on Twilio
#: and Plivo; Telnyx exercises big-endian L16; Vonage is always L16)
FORMATS = {"twilio": None, "plivo": None, "vonage": None, "telnyx": "pcm16_16000"}
HANGUP_REASON = {"twilio": "caller_hangup", "plivo": "caller_hangup",
                 "telnyx": "caller_hangup", "vonage": "stream_closed"}


def clears(caller: CarrierCaller, after_wall: float) -> list[float]:
    return [r.wall for r in caller.log if r.kind == "clear" and r.wall > after_wall]


@pytest.mark.parametrize("carrier", ["twilio", "plivo", "vonage", "telnyx"])
async def test_a_phone_call_greets_answers_is_interrupted_and_hangs_up(
    worker: Worker, carrier: str
) -> None:
    agent_id = await agent_of(worker)
    async with make_caller(carrier, worker, agent_id, fmt=FORMATS[carrier]) as caller:
        call_id = (await find_call(worker, caller.carrier_call_id))["id"]

        # the greeting plays in full; the carrier acknowledges its end mark
        await wait_event(worker, call_id, "agent.speech_stopped", 30, turn_id=1)
        assert caller.audio_frames() >= 50, "at least a second of greeting"
        if carrier != "vonage":
            await caller.wait_for(lambda r: r.kind == "mark" and r.data == "turn-1-end", 5)
            for _ in range(100):
                if "turn-1-end" in caller.echoed_marks:
                    break
                await asyncio.sleep(0.05)
            assert "turn-1-end" in caller.echoed_marks
        assert caller.heard_energy() > 300, "the caller heard speech, not silence"

        # keypad input is reported
        await caller.dtmf("7")
        await wait_event(worker, call_id, "dtmf", 10, digit="7")

        # a spoken question gets a spoken answer
        caller.say(speech_for(caller, "what time does the store open tomorrow"))
        started = await wait_event(worker, call_id, "agent.speech_started", 40, turn_id=2)
        user = [s for s in await transcript(worker, call_id) if s["role"] == "user"]
        # narrowband speech through pocketsphinx is recognised loosely; that it was heard
        # and answered is what matters here
        assert user and user[0]["text"].strip(), user
        await asyncio.sleep(1.0)
        assert caller.audio_frames(after=event_time(started), wall=True) >= 30

        # barge in: the worker stops the reply and the carrier's buffer is dropped
        caller.say(speech_for(caller, "wait, what about on sunday"))
        interrupted = await wait_event(worker, call_id, "agent.interrupted", 20, turn_id=2)
        try:
            following = await wait_event(worker, call_id, "agent.speech_started", 20, turn_id=3)
            cutoff = event_time(following)
        except TimeoutError:
            cutoff = float("inf")
        all_events = await events(worker, call_id)
        pauses = [event_time(e) for e in all_events if e["type"] == "agent.paused"
                  and e["data"]["turn_id"] == 2 and event_time(e) <= event_time(interrupted)]
        decision = pauses[-1] if pauses else event_time(interrupted)
        if carrier == "vonage":
            # no clear message exists: the worker drops its queue; at most the frame already
            # on its way arrives after the decision
            late = caller.audio_frames(after=decision, before=cutoff, wall=True)
            assert late <= 1, late
            assert caller.overflow_frames == 0, "audio was paced at real time"
        else:
            sent = clears(caller, event_time(started))
            assert sent, "the worker sent the carrier's clear message"
            late = caller.audio_frames(after=sent[-1], before=cutoff, wall=True)
            assert late == 0, f"{late} frames of the interrupted reply after the clear"
            assert sent[-1] >= decision - 0.5  # the clear answers this decision

        # the caller hangs up
        await caller.hang_up()

    call = await wait_status(worker, call_id, ("completed", "failed"))
    assert call["status"] == "completed" and call["transport"] == carrier
    assert call["end_reason"] == HANGUP_REASON[carrier]
    final = await events(worker, call_id)
    statuses = [e["data"] for e in final if e["type"] == "call.status"]
    assert statuses[0]["status"] == "ringing"
    assert statuses[0]["carrier_call_id"] == caller.carrier_call_id
    assert "in_progress" in [s["status"] for s in statuses]
    assert statuses[-1]["status"] == "completed"
    assert not [e for e in final if e["type"].startswith("carrier.protocol_error")]
    segments = await transcript(worker, call_id)
    roles = [(s["role"], s["turn_id"]) for s in segments]
    assert roles[:3] == [("agent", 1), ("user", 2), ("agent", 2)]
    assert segments[2]["interrupted"] is True
    replies = [i.reply for i in default_agent().playbook.intents]
    replies.append(default_agent().playbook.fallback_reply or "")
    heard = segments[2]["text"]
    assert heard and any(r.startswith(heard) and r != heard for r in replies), heard


#: An agent that says goodbye and hangs up whatever the caller answers (offline
#: recognition of narrowband speech is too loose to rely on particular words).
HANGUP_AGENT = {
    "name": "Hang-up test",
    "first_message": "Hello, this is a short call.",
    "playbook": {"intents": [{
        "name": "goodbye",
        "keywords": ["bye", "thanks", "thank", "you", "i", "a", "the", "look", "lie", "would",
                     "do", "say", "and", "okay", "body", "good", "what", "are", "is", "it"],
        "reply": "You're welcome. Goodbye!",
        "end_call": True,
    }], "fallback_reply": "You're welcome. Goodbye!"},
}


@pytest.mark.parametrize("carrier", ["twilio", "vonage"])
async def test_the_agent_ends_the_call_and_the_stream_closes(worker: Worker, carrier: str) -> None:
    agent_id = (await api_post(worker, "/v1/agents", HANGUP_AGENT))["id"]
    async with make_caller(carrier, worker, agent_id) as caller:
        call_id = (await find_call(worker, caller.carrier_call_id))["id"]
        await wait_event(worker, call_id, "agent.speech_stopped", 30, turn_id=1)
        caller.say(speech_for(caller, "okay thank you, goodbye"))
        await asyncio.wait_for(caller.closed.wait(), 40)
        assert caller.close_code == 1000
        if carrier == "twilio":
            # the goodbye was played to its end mark before the socket closed
            assert any(name.startswith("turn-2") for name in caller.echoed_marks)
    call = await wait_status(worker, call_id, ("completed", "failed"))
    assert call["status"] == "completed" and call["end_reason"] == "agent_hangup"
    agent = [s for s in await transcript(worker, call_id) if s["role"] == "agent"]
    assert agent[-1]["text"].lower().startswith("you're welcome")
