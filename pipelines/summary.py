"""Post-call intelligence: a summary, an outcome, a sentiment and the playbook's fields.

The agent's own LLM reads the finished transcript and answers by calling one tool,
``call_summary``, whose JSON schema lists the agent's ``playbook.extraction_fields``. A
tool call is structured output every provider in the registry supports; a model that
answers in plain text with a JSON object instead is accepted too. The offline ``playbook``
responder recognises the tool and answers with a deterministic extractive summary
(providers/offline/playbook_summary.py), so the whole path runs without a network.

The transcript goes to the model as one user message in a fixed, documented shape::

    Transcript:
    Caller: what time do you open tomorrow
    Agent: We open at nine in the morning tomorrow.

(``Agent:`` lines hold what the caller heard; an interrupted reply ends with `` […]``.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.agent_config import AgentConfig
from providers.base import ChatMessage, LlmProvider, ToolSpec

SUMMARY_TOOL: Final = "call_summary"
SENTIMENTS: Final = ("positive", "neutral", "negative", "mixed")
#: Suggested outcomes; a model may use another short label.
OUTCOMES: Final = ("resolved", "unresolved", "callback_requested", "transferred",
                   "no_conversation")
MAX_TRANSCRIPT_CHARS: Final = 60_000

INSTRUCTIONS: Final = """You review a finished phone call between a voice agent and a caller.
Call the tool `call_summary` exactly once, with:
- summary: two or three sentences on what the caller wanted and what happened;
- outcome: one short snake_case label, preferably one of {outcomes};
- sentiment: the caller's overall sentiment, one of {sentiments};
- extracted: the value of each listed field as stated in the call, or null if it was not.
Do not invent facts that are not in the transcript.{context}"""


class SummaryError(RuntimeError):
    """The model gave no usable summary."""


class CallSummary(BaseModel):
    """What the LLM returns (validated; unknown keys are dropped)."""

    model_config = ConfigDict(extra="ignore")

    summary: str = Field(max_length=5000)
    outcome: str = Field(min_length=1, max_length=64)
    sentiment: Literal["positive", "neutral", "negative", "mixed"] = "neutral"
    extracted: dict[str, Any] = Field(default_factory=dict)

    @field_validator("outcome", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        if isinstance(value, str):
            label = re.sub(r"[^a-z0-9]+", "_", value.strip().lower()).strip("_")
            return label[:64] or "unknown"
        return value

    @field_validator("sentiment", mode="before")
    @classmethod
    def _sentiment(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return value if value in SENTIMENTS else "neutral"
        return "neutral"


def summary_tool(fields: Sequence[str]) -> ToolSpec:
    """The ``call_summary`` tool; ``extracted`` has one nullable property per field."""
    return ToolSpec(
        name=SUMMARY_TOOL,
        description="Report the summary of the finished call.",
        parameters={
            "type": "object",
            "properties": {
                "summary": {"type": "string"},
                "outcome": {"type": "string"},
                "sentiment": {"type": "string", "enum": list(SENTIMENTS)},
                "extracted": {
                    "type": "object",
                    "properties": {f: {"type": ["string", "null"]} for f in fields},
                    "required": list(fields),
                },
            },
            "required": ["summary", "outcome", "sentiment", "extracted"],
        },
    )


def render_transcript(segments: Sequence[Mapping[str, Any]]) -> str:
    """The transcript in the documented ``Caller:``/``Agent:`` shape (empty texts skipped)."""
    lines = ["Transcript:"]
    for seg in segments:
        text = " ".join(str(seg.get("text") or "").split())
        if not text:
            continue
        who = "Caller" if seg.get("role") == "user" else "Agent"
        suffix = " […]" if seg.get("interrupted") and who == "Agent" else ""
        lines.append(f"{who}: {text}{suffix}")
    body = "\n".join(lines)
    if len(body) > MAX_TRANSCRIPT_CHARS:  # keep the start and the end of a very long call
        half = MAX_TRANSCRIPT_CHARS // 2
        body = body[:half] + "\n[…]\n" + body[-half:]
    return body


def summary_messages(agent: AgentConfig, segments: Sequence[Mapping[str, Any]]) -> list[
    ChatMessage
]:
    context = f"\n\nThe agent's instructions were:\n{agent.prompt}" if agent.prompt else ""
    system = INSTRUCTIONS.format(
        outcomes=", ".join(OUTCOMES), sentiments=", ".join(SENTIMENTS), context=context
    )
    return [ChatMessage("system", system), ChatMessage("user", render_transcript(segments))]


def _json_object(text: str) -> Any:
    """The first JSON object in ``text`` (models sometimes wrap it in prose or fences)."""
    start = text.find("{")
    while start != -1:
        try:
            value, _end = json.JSONDecoder().raw_decode(text, start)
            return value
        except ValueError:
            start = text.find("{", start + 1)
    return None


def parse_summary(raw: Any, fields: Sequence[str]) -> CallSummary:
    """Validate the model's answer; ``extracted`` gets exactly ``fields`` (missing → null)."""
    if isinstance(raw, str):
        raw = _json_object(raw)
    if not isinstance(raw, Mapping):
        raise SummaryError("the model's answer holds no JSON object")
    try:
        result = CallSummary.model_validate(raw)
    except ValidationError as exc:
        raise SummaryError(f"the model's summary is invalid: {exc.errors()[0]['msg']}") from None
    extracted = result.extracted
    result.extracted = {f: _scalar(extracted.get(f)) for f in fields}
    return result


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value if value != "" else None
    return json.dumps(value, ensure_ascii=False)


def no_conversation(fields: Sequence[str]) -> CallSummary:
    """The summary of a call in which nobody said anything (no model needed)."""
    return CallSummary(
        summary="No conversation took place.",
        outcome="no_conversation",
        sentiment="neutral",
        extracted={f: None for f in fields},
    )


async def summarize(
    llm: LlmProvider, agent: AgentConfig, segments: Sequence[Mapping[str, Any]]
) -> CallSummary:
    """Ask ``llm`` for the summary of ``segments`` (transcript dicts with ``role``,
    ``text``, ``interrupted``). Raises SummaryError, or the provider's ProviderError."""
    fields = list(agent.playbook.extraction_fields)
    if not any(str(s.get("text") or "").strip() for s in segments):
        return no_conversation(fields)
    text: list[str] = []
    arguments: str | None = None
    async for delta in llm.stream(summary_messages(agent, segments), tools=[summary_tool(fields)]):
        if delta.text:
            text.append(delta.text)
        if delta.tool_call is not None and delta.tool_call.name == SUMMARY_TOOL:
            arguments = delta.tool_call.arguments
    if arguments is not None:
        try:
            return parse_summary(json.loads(arguments), fields)
        except (ValueError, SummaryError):
            if not text:
                raise SummaryError("the model's call_summary arguments are not valid") from None
    return parse_summary("".join(text), fields)
