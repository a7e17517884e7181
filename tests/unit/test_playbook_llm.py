"""The playbook responder: intent choice, tolerance to recognition errors, streaming shape."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from pipelines.agent_config import default_agent
from providers.base import ChatMessage, ConfigError, LlmDelta, LlmProvider, ToolSpec
from providers.offline.playbook_llm import DEFAULT_FALLBACK, PlaybookData, PlaybookLlm

END_CALL = ToolSpec(name="end_call", description="hang up")


def context(**overrides: Any) -> dict[str, Any]:
    agent = default_agent()
    ctx: dict[str, Any] = {
        "prompt": agent.prompt,
        "first_message": agent.first_message,
        "playbook": agent.playbook.model_dump(),
    }
    ctx.update(overrides)
    return ctx


def replies() -> dict[str, str]:
    return {i.name: i.reply for i in default_agent().playbook.intents}


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


async def run(
    llm: PlaybookLlm, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()
) -> list[LlmDelta]:
    return [d async for d in llm.stream(messages, tools=tools)]


def text_of(deltas: list[LlmDelta]) -> str:
    return "".join(d.text for d in deltas)


@pytest.fixture
def llm() -> PlaybookLlm:
    return PlaybookLlm.from_options(context(), {})


def test_implements_the_llm_protocol(llm: PlaybookLlm) -> None:
    assert isinstance(llm, LlmProvider)
    assert llm.name == "playbook"


@pytest.mark.parametrize(
    ("heard", "intent"),
    [
        ("What time does the store open tomorrow?", "hours"),
        ("Where are you located?", "location"),
        ("I'd like to reserve a table", "booking"),
        ("thanks, bye", "goodbye"),
    ],
)
async def test_answers_with_the_matching_intent(llm: PlaybookLlm, heard: str, intent: str) -> None:
    assert text_of(await run(llm, [user(heard)])) == replies()[intent]


@pytest.mark.parametrize(
    ("heard", "intent"),
    [
        # what pocketsphinx really made of espeak-ng saying the sentences above
        ("what type oz little rock to tomorrow", "hours"),
        ("can you tell your opening dollars", "hours"),
        ("where is the door look you do", "location"),
        ("i would like to book of the gold or two", "booking"),
        ("do you good bye", "goodbye"),
        # misspellings and inflections
        ("when do you close tommorow", "hours"),
        ("what is your adress", "location"),
        ("booking for friday please", "booking"),
    ],
)
async def test_tolerates_recognition_errors(llm: PlaybookLlm, heard: str, intent: str) -> None:
    assert text_of(await run(llm, [user(heard)])) == replies()[intent]


async def test_unmatched_words_get_the_fallback_reply(llm: PlaybookLlm) -> None:
    fallback = default_agent().playbook.fallback_reply
    assert text_of(await run(llm, [user("purple elephants sing")])) == fallback
    assert text_of(await run(llm, [user("")])) == fallback


async def test_fallback_without_one_configured_is_a_polite_default() -> None:
    llm = PlaybookLlm.from_options({"playbook": {"intents": []}}, {})
    assert text_of(await run(llm, [user("hello")])) == DEFAULT_FALLBACK


async def test_answers_the_last_user_message(llm: PlaybookLlm) -> None:
    messages = [
        user("when do you open"),
        ChatMessage(role="assistant", content=replies()["hours"]),
        user("and where is the store"),
        ChatMessage(role="system", content="be brief about opening hours"),
    ]
    assert text_of(await run(llm, messages)) == replies()["location"]


async def test_without_a_user_message_it_says_the_first_message(llm: PlaybookLlm) -> None:
    deltas = await run(llm, [ChatMessage(role="system", content="prompt")])
    assert text_of(deltas) == default_agent().first_message


async def test_the_best_score_wins_and_the_first_listed_wins_a_tie() -> None:
    book = {
        "intents": [
            {"name": "a", "keywords": ["alpha"], "reply": "A."},
            {"name": "b", "keywords": ["alpha", "beta"], "reply": "B."},
            {"name": "c", "keywords": ["gamma"], "reply": "C."},
            {"name": "d", "keywords": ["gamma"], "reply": "D."},
        ]
    }
    llm = PlaybookLlm.from_options({"playbook": book}, {})
    assert text_of(await run(llm, [user("alpha and beta")])) == "B."
    assert text_of(await run(llm, [user("just alpha")])) == "A."
    assert text_of(await run(llm, [user("gamma")])) == "C."


async def test_phrase_keywords_need_their_words_in_order() -> None:
    book = {"intents": [{"name": "human", "keywords": ["real person"], "reply": "Transferring."}],
            "fallback_reply": "Pardon?"}
    llm = PlaybookLlm.from_options({"playbook": book}, {})
    assert text_of(await run(llm, [user("can I talk to a real person")])) == "Transferring."
    assert text_of(await run(llm, [user("a person, for real")])) == "Pardon?"


async def test_short_words_are_not_matched_fuzzily() -> None:
    book = {"intents": [{"name": "bye", "keywords": ["bye"], "reply": "Bye."}],
            "fallback_reply": "Pardon?"}
    llm = PlaybookLlm.from_options({"playbook": book}, {})
    assert text_of(await run(llm, [user("stand by")])) == "Pardon?"


async def test_streams_word_sized_deltas_then_usage(llm: PlaybookLlm) -> None:
    deltas = await run(llm, [user("where is the store")])
    texts = [d.text for d in deltas if d.text]
    reply = replies()["location"]
    assert "".join(texts) == reply
    assert len(texts) == len(reply.split())
    assert all(len(t.split()) == 1 for t in texts)
    last = deltas[-1]
    assert last.text == "" and last.finish_reason == "stop"
    assert last.usage == {
        "prompt_tokens": 4,
        "completion_tokens": len(reply.split()),
        "total_tokens": 4 + len(reply.split()),
    }
    assert all(d.usage is None and d.finish_reason is None for d in deltas[:-1])


async def test_end_call_intent_calls_the_end_call_tool_when_offered(llm: PlaybookLlm) -> None:
    deltas = await run(llm, [user("thank you, goodbye")], tools=[END_CALL])
    calls = [d.tool_call for d in deltas if d.tool_call is not None]
    assert len(calls) == 1 and calls[0].name == "end_call"
    assert json.loads(calls[0].arguments) == {"reason": "goodbye"}
    assert text_of(deltas) == replies()["goodbye"]
    assert deltas[-1].finish_reason == "tool_calls"
    # the tool call comes after the words, so the goodbye is spoken before hanging up
    assert deltas.index(next(d for d in deltas if d.tool_call)) > 0


async def test_no_tool_call_when_the_tool_is_not_offered(llm: PlaybookLlm) -> None:
    deltas = await run(llm, [user("goodbye")], tools=[ToolSpec("lookup", "other tool")])
    assert not any(d.tool_call for d in deltas)
    assert deltas[-1].finish_reason == "stop"


async def test_no_tool_call_for_an_ordinary_intent(llm: PlaybookLlm) -> None:
    deltas = await run(llm, [user("when do you open")], tools=[END_CALL])
    assert not any(d.tool_call for d in deltas)


async def test_token_delay_keeps_the_same_reply() -> None:
    slow = PlaybookLlm.from_options(context(), {"token_delay_ms": 1})
    assert text_of(await run(slow, [user("where")])) == replies()["location"]


async def test_stopping_early_is_clean(llm: PlaybookLlm) -> None:
    stream = llm.stream([user("when do you open")])
    first = await anext(stream)
    assert first.text
    await stream.aclose()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "model"),
    [
        ({"temperature": 0.2}, None),
        ({"token_delay_ms": -1}, None),
        ({"token_delay_ms": "5"}, None),
        ({}, "gpt-4o"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], model: str | None) -> None:
    with pytest.raises(ConfigError):
        PlaybookLlm.from_options(context(), options, model)


@pytest.mark.parametrize(
    "book",
    [
        {"intents": [{"name": "x", "reply": "no keywords"}]},
        {"intents": [{"name": "x", "keywords": "open", "reply": "a string, not a list"}]},
        {"intents": [{"name": "x", "keywords": ["open"]}]},
        "not an object",
    ],
)
def test_malformed_playbooks_are_config_errors(book: Any) -> None:
    with pytest.raises(ConfigError):
        PlaybookData.from_context({"playbook": book})
