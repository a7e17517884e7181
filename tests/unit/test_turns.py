"""The turn engine on a virtual clock: no sockets, no sleeps."""

from __future__ import annotations

import pytest

from pipelines.turns import (
    Action,
    AgentSegment,
    AgentSpeechEnded,
    AgentSpeechStarted,
    Cancel,
    CommitAgent,
    CommitUser,
    Event,
    Pause,
    Release,
    Respond,
    Resume,
    Say,
    Tick,
    TranscriptReceived,
    TurnEngine,
    TurnSettings,
    UserSpeechEnded,
    UserSpeechStarted,
    heard_text,
)


class Clock:
    """Drives the engine: events at given times, ticks every 20 ms in between."""

    def __init__(self, engine: TurnEngine) -> None:
        self.engine = engine
        self.t = 0.0
        self.log: list[tuple[float, Action]] = []

    def advance(self, to: float) -> list[Action]:
        out: list[Action] = []
        while self.t + 0.02 <= to + 1e-9:
            self.t = round(self.t + 0.02, 6)
            out += self._record(self.engine.handle(Tick(self.t)))
        self.t = to
        return out

    def at(self, t: float, event_factory) -> list[Action]:  # type: ignore[no-untyped-def]
        out = self.advance(t)
        event: Event = event_factory(t)
        return out + self._record(self.engine.handle(event))

    def _record(self, actions: list[Action]) -> list[Action]:
        self.log += [(self.t, a) for a in actions]
        return actions

    def of(self, kind: type) -> list[tuple[float, Action]]:
        return [(t, a) for t, a in self.log if isinstance(a, kind)]


def final(text: str):  # type: ignore[no-untyped-def]
    return lambda t: TranscriptReceived(t, text, final=True)


def partial(text: str):  # type: ignore[no-untyped-def]
    return lambda t: TranscriptReceived(t, text, final=False)


def start(t: float) -> UserSpeechStarted:
    return UserSpeechStarted(t)


def end(t: float) -> UserSpeechEnded:
    return UserSpeechEnded(t)


SETTINGS = TurnSettings(
    min_endpoint_delay=0.4,
    max_endpoint_delay=2.0,
    min_interruption_duration=0.4,
    false_interruption_timeout=1.0,
    preemptive_generation=False,
)


def user_turn(clock: Clock, t0: float, text: str, duration: float = 1.5) -> None:
    """The user says ``text`` from t0; the final transcript lands 0.35 s after the end."""
    clock.at(t0, start)
    clock.at(t0 + 0.5, partial(text.split()[0]))
    clock.at(t0 + duration, end)
    clock.at(t0 + duration + 0.35, final(text))


def play_reply(clock: Clock, turn_id: int, t: float, segments: list[tuple[str, float]]) -> float:
    """The orchestrator's side: audio starts at t, segments are synthesized in order."""
    clock.at(t, lambda t: AgentSpeechStarted(t, turn_id))
    for i, (text, duration) in enumerate(segments):
        clock.at(t, lambda t, i=i, text=text: AgentSegment(t, turn_id, i, text, None))
        clock.at(t, lambda t, i=i, text=text, d=duration: AgentSegment(t, turn_id, i, text, d))
    return t + sum(d for _, d in segments)


def test_normal_turn_responds_after_endpoint_delay_and_commits_both_sides() -> None:
    clock = Clock(TurnEngine(SETTINGS))
    user_turn(clock, 1.0, "what time do you open tomorrow")
    # speech ended at 2.5; final at 2.85; endpoint at 2.5 + 0.4 = 2.9
    clock.advance(3.2)
    responds = clock.of(Respond)
    assert len(responds) == 1
    t, respond = responds[0]
    assert isinstance(respond, Respond)
    assert t == pytest.approx(2.9, abs=0.021)
    assert respond.user_text == "what time do you open tomorrow"
    assert respond.hold is False
    assert respond.speech_ended_at == pytest.approx(2.5)
    assert respond.final_transcript_at == pytest.approx(2.85)

    reply_text = [("We open at nine.", 1.2), ("See you then.", 0.8)]
    done = play_reply(clock, respond.turn_id, 3.3, reply_text)
    assert clock.of(CommitUser)[0][1] == CommitUser(respond.turn_id, respond.user_text)
    clock.at(done, lambda t: AgentSpeechEnded(t, respond.turn_id, 2.0, completed=True))
    commits = [a for _, a in clock.of(CommitAgent)]
    assert commits == [CommitAgent(respond.turn_id, "We open at nine. See you then.", False)]
    assert not clock.of(Cancel)


def test_pause_shorter_than_endpoint_delay_is_not_cut() -> None:
    clock = Clock(TurnEngine(SETTINGS))
    clock.at(1.0, start)
    clock.at(2.0, end)
    clock.at(2.3, final("I would like to book"))
    # the user goes on 0.35 s after stopping: less than the 0.4 s endpoint delay
    clock.at(2.35, start)
    clock.at(3.5, end)
    clock.at(3.8, final("a table for two"))
    clock.advance(4.5)
    responds = [a for _, a in clock.of(Respond)]
    assert len(responds) == 1
    assert responds[0].user_text == "I would like to book a table for two"
    assert clock.of(Respond)[0][0] == pytest.approx(3.9, abs=0.021)


def test_preemptive_reply_is_held_until_the_endpoint_then_released() -> None:
    settings = TurnSettings(min_endpoint_delay=0.6, preemptive_generation=True)
    clock = Clock(TurnEngine(settings))
    clock.at(1.0, start)
    clock.at(2.0, end)
    clock.at(2.2, final("where are you located"))
    (t_respond, respond) = clock.of(Respond)[0]
    assert isinstance(respond, Respond)
    assert respond.hold and t_respond == pytest.approx(2.2)
    clock.advance(3.0)
    releases = clock.of(Release)
    assert [a for _, a in releases] == [Release(respond.turn_id, releases[0][0])]
    assert releases[0][0] == pytest.approx(2.6, abs=0.021)


def test_preemptive_reply_is_cancelled_when_the_user_goes_on() -> None:
    settings = TurnSettings(min_endpoint_delay=0.6, preemptive_generation=True)
    clock = Clock(TurnEngine(settings))
    clock.at(1.0, start)
    clock.at(2.0, end)
    clock.at(2.2, final("I want to"))
    held = clock.of(Respond)[0][1]
    clock.at(2.4, start)
    cancels = [a for _, a in clock.of(Cancel)]
    assert cancels == [Cancel(held.turn_id, 2.4, "user_continued", clear=False)]  # type: ignore[union-attr]
    clock.at(2.41, lambda t: AgentSpeechEnded(t, held.turn_id, 0.0, completed=False))  # type: ignore[union-attr]
    clock.at(3.0, end)
    clock.at(3.2, final("order a pizza"))
    clock.advance(4.0)
    responds = [a for _, a in clock.of(Respond)]
    assert responds[-1].user_text == "I want to order a pizza"
    assert not clock.of(CommitUser)  # nothing was answered aloud yet
    assert not clock.of(Release) or clock.of(Release)[-1][1].turn_id == responds[-1].turn_id  # type: ignore[union-attr]


def test_barge_in_during_agent_speech_commits_only_what_was_heard() -> None:
    clock = Clock(TurnEngine(SETTINGS))
    user_turn(clock, 1.0, "what are your opening hours")
    clock.advance(3.0)
    respond = clock.of(Respond)[0][1]
    assert isinstance(respond, Respond)
    turn = respond.turn_id
    segments = [("We open at nine in the morning tomorrow,", 2.0), ("and close at six.", 1.0)]
    play_reply(clock, turn, 3.1, segments)
    # user barges in 1.0 s into the first segment (at 4.1) and keeps talking
    clock.at(4.1, start)
    clock.advance(4.49)
    assert not clock.of(Pause)
    clock.advance(4.52)
    pauses = clock.of(Pause)
    assert len(pauses) == 1 and pauses[0][0] == pytest.approx(4.5, abs=0.021)
    clock.at(4.7, partial("wait actually"))
    cancels = [a for _, a in clock.of(Cancel)]
    assert cancels == [Cancel(turn, 4.7, "barge_in", clear=True)]
    # the playout stopped when paused: 1.4 s of 3.0 s were played
    clock.at(4.71, lambda t: AgentSpeechEnded(t, turn, 1.4, completed=False))
    commit = clock.of(CommitAgent)[0][1]
    assert commit == CommitAgent(turn, "We open at nine in", interrupted=True)  # 8 words x 0.7
    # the interrupting words start the next user turn
    clock.at(5.5, end)
    clock.at(5.8, final("wait actually on sunday"))
    clock.advance(6.5)
    assert clock.of(Respond)[-1][1].user_text == "wait actually on sunday"  # type: ignore[union-attr]


def test_barge_in_while_the_llm_is_still_thinking_cancels_and_merges_the_user_text() -> None:
    clock = Clock(TurnEngine(SETTINGS))
    user_turn(clock, 1.0, "book a table")
    clock.advance(3.0)
    first = clock.of(Respond)[0][1]
    assert isinstance(first, Respond)
    # no agent audio yet; the user speaks again for longer than the interruption minimum
    clock.at(3.1, start)
    clock.advance(3.6)
    cancels = [a for _, a in clock.of(Cancel)]
    assert cancels == [Cancel(first.turn_id, 3.5, "barge_in", clear=False)]
    clock.at(3.61, lambda t: AgentSpeechEnded(t, first.turn_id, 0.0, completed=False))
    assert not clock.of(CommitAgent) and not clock.of(CommitUser)
    clock.at(4.0, end)
    clock.at(4.3, final("for two people"))
    clock.advance(5.0)
    assert clock.of(Respond)[-1][1].user_text == "book a table for two people"  # type: ignore[union-attr]


def test_cough_pauses_the_agent_then_it_resumes() -> None:
    clock = Clock(TurnEngine(SETTINGS))
    greeting = clock.engine.say(0.0, "Hello, how can I help you today?")
    assert isinstance(greeting[0], Say)
    turn = greeting[0].turn_id
    play_reply(clock, turn, 0.5, [("Hello, how can I help you today?", 2.5)])
    clock.at(1.0, start)  # a cough long enough to look like an interruption
    clock.advance(1.45)
    assert [a for _, a in clock.of(Pause)] == [Pause(turn, 1.4)]
    clock.at(1.6, end)
    clock.at(1.9, final(""))  # the recogniser heard no words
    clock.advance(2.55)
    assert not clock.of(Resume)
    clock.advance(2.7)
    resumes = clock.of(Resume)
    assert len(resumes) == 1 and resumes[0][0] == pytest.approx(2.6, abs=0.021)
    assert not clock.of(Cancel)
    clock.at(4.5, lambda t: AgentSpeechEnded(t, turn, 2.5, completed=True))
    assert [a for _, a in clock.of(CommitAgent)] == [
        CommitAgent(turn, "Hello, how can I help you today?", interrupted=False)
    ]
    clock.advance(8.0)
    assert not clock.of(Respond)  # the cough never became a user turn


def test_short_noise_below_the_minimum_duration_does_not_pause() -> None:
    clock = Clock(TurnEngine(SETTINGS))
    turn = clock.engine.say(0.0, "Hi there.")[0].turn_id  # type: ignore[union-attr]
    play_reply(clock, turn, 0.2, [("Hi there.", 2.0)])
    clock.at(0.5, start)
    clock.at(0.7, end)
    clock.at(1.0, final("uh"))
    clock.advance(3.0)
    assert not clock.of(Pause) and not clock.of(Cancel) and not clock.of(Respond)


def test_minimum_words_gate_interruptions() -> None:
    settings = TurnSettings(min_interruption_duration=0.2, min_interruption_words=2)
    clock = Clock(TurnEngine(settings))
    turn = clock.engine.say(0.0, "Let me tell you about our offers.")[0].turn_id  # type: ignore[union-attr]
    play_reply(clock, turn, 0.1, [("Let me tell you about our offers.", 3.0)])
    clock.at(0.5, start)
    clock.advance(1.0)
    clock.at(1.0, partial("yeah"))
    clock.advance(1.2)
    assert not clock.of(Pause)
    clock.at(1.3, partial("yeah but wait"))
    assert [a for _, a in clock.of(Pause)] == [Pause(turn, 1.3)]


def test_interruptions_disabled_lets_the_agent_finish() -> None:
    settings = TurnSettings(interruptions=False)
    clock = Clock(TurnEngine(settings))
    turn = clock.engine.say(0.0, "Important notice.")[0].turn_id  # type: ignore[union-attr]
    play_reply(clock, turn, 0.1, [("Important notice.", 3.0)])
    clock.at(0.5, start)
    clock.advance(2.0)
    assert not clock.of(Pause) and not clock.of(Cancel)


def test_max_endpoint_delay_answers_with_the_partial_when_no_final_arrives() -> None:
    clock = Clock(TurnEngine(SETTINGS))
    clock.at(1.0, start)
    clock.at(1.5, partial("hello there"))
    clock.at(2.0, end)
    clock.advance(3.9)
    assert not clock.of(Respond)
    clock.advance(4.1)
    responds = clock.of(Respond)
    assert len(responds) == 1 and responds[0][1].user_text == "hello there"  # type: ignore[union-attr]
    assert responds[0][0] == pytest.approx(4.0, abs=0.021)


def test_no_words_means_no_turn() -> None:
    clock = Clock(TurnEngine(SETTINGS))
    clock.at(1.0, start)
    clock.at(1.5, end)
    clock.at(1.8, final(""))
    clock.advance(6.0)
    assert not clock.log


@pytest.mark.parametrize(
    ("played", "expected"),
    [
        (0.0, ""),
        (0.5, "one two"),
        (1.0, "one two three four"),
        (1.5, "one two three four five"),
        (3.0, "one two three four five six"),
    ],
)
def test_heard_text_keeps_whole_segments_and_a_proportional_part(
    played: float, expected: str
) -> None:
    segments: list[tuple[str, float | None]] = [("one two three four", 1.0), ("five six", 1.0)]
    assert heard_text(segments, played) == expected


def test_heard_text_estimates_segments_still_being_synthesized() -> None:
    segments: list[tuple[str, float | None]] = [("alpha beta", 0.5), ("gamma delta", None)]
    assert heard_text(segments, 0.5) == "alpha beta"
    assert heard_text(segments, 10.0) == "alpha beta gamma delta"
