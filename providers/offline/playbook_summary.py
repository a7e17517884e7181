"""The offline responder's post-call summary: deterministic and extractive.

When the ``playbook`` LLM is offered a tool named ``call_summary`` (the post-call summary
request, pipelines/summary.py) it does not answer as the agent: it reads the transcript
from the last user message (lines ``Caller: …`` / ``Agent: …``) and calls that tool once
with arguments built only from what was said:

- ``summary``: the caller's first words, the playbook intents that matched, how many
  times the agent answered, and the caller's last words;
- ``outcome``: ``no_conversation`` (the caller said nothing), ``resolved`` (an intent
  matched the caller's last turn), ``callback_requested`` (the caller asked to be called
  back) or ``unresolved``;
- ``sentiment``: a small word list, positive minus negative words of the caller;
- ``extracted``: per field of the tool's ``extracted`` schema: ``intent`` → the first
  matched intent; a field named like ``*number*``/``*phone*`` → the first run of 3+ digits
  (spoken digits count: "five five five one two" → ``55512``); ``email`` → an address;
  ``name`` → the word after "my name is"/"this is"; any other ``x_y`` → the words after
  "x y is"; else null.

The same transcript always gives the same summary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from providers.base import ChatMessage, ToolSpec
from providers.offline.playbook_llm import PlaybookData, choose, words

TOOL_NAME = "call_summary"

POSITIVE = frozenset(
    "thanks thank great perfect good excellent awesome wonderful helpful appreciate love "
    "nice happy glad fantastic brilliant".split()
)
NEGATIVE = frozenset(
    "bad terrible awful angry annoyed upset frustrated useless horrible hate worst "
    "complaint problem wrong disappointed unhappy ridiculous".split()
)
DIGITS = {
    "zero": "0", "oh": "0", "o": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9",
}  # fmt: skip
_LINE = re.compile(r"^(Caller|Agent):\s?(.*)$")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """``[(role, text)]`` with role ``user``/``agent`` from the documented shape."""
    turns = []
    for line in text.splitlines():
        match = _LINE.match(line.strip())
        if match:
            role = "user" if match.group(1) == "Caller" else "agent"
            turns.append((role, match.group(2).removesuffix(" […]").strip()))
    return turns


def _digits(text: str) -> str | None:
    run = ""
    for token in re.findall(r"[a-z]+|\d+", text.lower()):
        if token.isdigit():
            run += token
        elif token in DIGITS:
            run += DIGITS[token]
        elif len(run) >= 3:
            return run
        else:
            run = ""
    return run if len(run) >= 3 else None


def _after(phrases: Sequence[str], text: str, max_words: int) -> str | None:
    heard = words(text)
    for phrase in phrases:
        parts = phrase.split()
        for i in range(len(heard) - len(parts)):
            if heard[i : i + len(parts)] == parts:
                value = heard[i + len(parts) : i + len(parts) + max_words]
                if value:
                    return " ".join(value)
    return None


def extract(field: str, user_text: str, intent: str | None) -> Any:
    name = field.lower()
    if name == "intent":
        return intent
    if "number" in name or "phone" in name:
        return _digits(user_text)
    if "email" in name:
        match = _EMAIL.search(user_text)
        return match.group(0) if match else None
    if name.endswith("name"):
        return _after(("my name is", "this is", "i am", "i'm"), user_text, 1)
    return _after((" ".join(name.replace("-", "_").split("_")) + " is",), user_text, 6)


def _quote(text: str, limit: int = 160) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def summarize(book: PlaybookData, transcript: str, fields: Sequence[str]) -> dict[str, Any]:
    """The ``call_summary`` arguments for ``transcript`` (see the module docstring)."""
    turns = parse_transcript(transcript)
    users = [t for role, t in turns if role == "user" and t]
    replies = sum(1 for role, t in turns if role == "agent" and t)
    intents = [choose(book, u) for u in users]
    names = list(dict.fromkeys(i.name for i in intents if i is not None))
    everything = " ".join(users)
    if not users:
        summary = "The caller did not say anything."
        if replies:
            summary += f" The agent spoke {replies} time{'s' if replies != 1 else ''}."
        outcome = "no_conversation"
    else:
        summary = f"The caller said: \u201c{_quote(users[0])}\u201d."
        if names:
            summary += f" Topics: {', '.join(names)}."
        summary += f" The agent answered {replies} time{'s' if replies != 1 else ''}."
        if len(users) > 1:
            summary += f" The caller's last words: \u201c{_quote(users[-1])}\u201d."
        heard = set(words(everything))
        if {"call", "back"} <= heard or "callback" in heard:
            outcome = "callback_requested"
        elif intents[-1] is not None:
            outcome = "resolved"
        else:
            outcome = "unresolved"
    heard_list = words(everything)
    score = sum(w in POSITIVE for w in heard_list) - sum(w in NEGATIVE for w in heard_list)
    sentiment = "positive" if score > 0 else "negative" if score < 0 else "neutral"
    first_intent = names[0] if names else None
    return {
        "summary": summary,
        "outcome": outcome,
        "sentiment": sentiment,
        "extracted": {f: extract(f, everything, first_intent) for f in fields},
    }


def summary_request(
    messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
) -> tuple[str, list[str]] | None:
    """``(transcript, fields)`` when this request is a summary request, else None."""
    tool = next((t for t in tools if t.name == TOOL_NAME), None)
    if tool is None:
        return None
    transcript = next((m.content for m in reversed(messages) if m.role == "user"), "")
    params: Mapping[str, Any] = tool.parameters or {}
    extracted = (params.get("properties") or {}).get("extracted") or {}
    fields = [str(f) for f in (extracted.get("properties") or {})]
    return transcript, fields


def summary_arguments(book: PlaybookData, transcript: str, fields: Sequence[str]) -> str:
    return json.dumps(summarize(book, transcript, fields), ensure_ascii=False)
