"""Post-call summaries: the request, the parsing, and the offline extractive answer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import pytest

from pipelines.agent_config import AgentConfig, Playbook, default_agent
from pipelines.summary import (
    SUMMARY_TOOL,
    SummaryError,
    parse_summary,
    render_transcript,
    summarize,
)
from providers.base import ChatMessage, LlmDelta, ToolSpec
from providers.offline.playbook_llm import PlaybookData, PlaybookLlm
from providers.offline.playbook_summary import summarize as extractive

SEGMENTS = [
    {"role": "agent", "text": "Hello! Thanks for calling. How can I help you today?",
     "interrupted": False},
    {"role": "user", "text": "what time do you open tomorrow", "interrupted": False},
    {"role": "agent", "text": "We open at nine in the", "interrupted": True},
    {"role": "user", "text": "great thanks please call me back on five five five one two "
                             "three four", "interrupted": False},
    {"role": "agent", "text": "You're welcome. Goodbye!", "interrupted": False},
]


def playbook_llm(agent: AgentConfig) -> PlaybookLlm:
    return PlaybookLlm.from_options(
        {"prompt": agent.prompt, "first_message": agent.first_message,
         "playbook": agent.playbook.model_dump()}, {})


def test_transcript_shape() -> None:
    text = render_transcript(SEGMENTS)
    assert text.splitlines()[:4] == [
        "Transcript:",
        "Agent: Hello! Thanks for calling. How can I help you today?",
        "Caller: what time do you open tomorrow",
        "Agent: We open at nine in the […]",
    ]


async def test_offline_summary_is_extractive_and_deterministic() -> None:
    agent = default_agent()
    first = await summarize(playbook_llm(agent), agent, SEGMENTS)
    again = await summarize(playbook_llm(agent), agent, SEGMENTS)
    assert first == again
    assert first.summary.startswith("The caller said: \u201cwhat time do you open tomorrow\u201d.")
    assert "hours" in first.summary
    assert first.outcome == "callback_requested"
    assert first.sentiment == "positive"
    assert first.extracted == {"intent": "hours", "callback_number": "5551234"}


async def test_no_words_no_model() -> None:
    agent = default_agent()
    result = await summarize(playbook_llm(agent), agent, [{"role": "user", "text": "  "}])
    assert result.outcome == "no_conversation"
    assert result.extracted == {"intent": None, "callback_number": None}


def test_generic_fields_and_negative_sentiment() -> None:
    book = PlaybookData()
    transcript = render_transcript([
        {"role": "user", "text": "my name is dana and my order number is 4 4 7"},
        {"role": "user", "text": "this is terrible the delivery date is next monday"},
    ])
    out = extractive(book, transcript, ["customer_name", "order_number", "delivery_date"])
    assert out["extracted"] == {
        "customer_name": "dana", "order_number": "447", "delivery_date": "next monday"}
    assert out["sentiment"] == "negative"
    assert out["outcome"] == "unresolved"


class TextLlm:
    """A model that answers in prose with a JSON object inside (the network edge is
    another test's business: this checks our parsing of such an answer)."""

    name = "text"

    def __init__(self, text: str) -> None:
        self.text = text
        self.seen_tools: list[str] = []

    async def warm(self) -> None:
        return None

    def stream(self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
               ) -> AsyncIterator[LlmDelta]:
        self.seen_tools = [t.name for t in tools]
        return self._gen()

    async def _gen(self) -> AsyncIterator[LlmDelta]:
        for i in range(0, len(self.text), 7):
            yield LlmDelta(text=self.text[i:i + 7])


async def test_a_json_answer_in_text_is_accepted() -> None:
    agent = AgentConfig(playbook=Playbook(extraction_fields=["city"]))
    answer = ('Sure! ```json\n' + json.dumps({
        "summary": "Asked for hours.", "outcome": "Resolved!", "sentiment": "POSITIVE",
        "extracted": {"city": "Lyon", "other": 1}}) + "\n```")
    llm = TextLlm(answer)
    result = await summarize(llm, agent, SEGMENTS)
    assert llm.seen_tools == [SUMMARY_TOOL]
    assert result.outcome == "resolved" and result.sentiment == "positive"
    assert result.extracted == {"city": "Lyon"}


async def test_no_json_is_an_error() -> None:
    with pytest.raises(SummaryError):
        await summarize(TextLlm("I cannot help with that."), default_agent(), SEGMENTS)


def test_parse_fills_missing_fields_and_neutralises_odd_sentiment() -> None:
    result = parse_summary({"summary": "x", "outcome": "done", "sentiment": "meh"}, ["a"])
    assert result.extracted == {"a": None} and result.sentiment == "neutral"
