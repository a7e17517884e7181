"""A deterministic stand-in for an LLM, driven by the agent's playbook.

No package on PyPI ships LLM weights that answer in real time on two CPU cores without a
download at run time (docs/offline-engines.md), so the offline agent answers from its
playbook: the intent whose keywords best match the caller's last words gives the reply,
otherwise the fallback reply. Matching tolerates recognition errors: words match by a
crude stem or by a close spelling (difflib ratio >= ``FUZZY_RATIO``).

The reply is streamed as word-sized deltas like a real model, and an intent marked
``end_call`` also calls the ``end_call`` tool when the engine offers one.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import itertools
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from providers.base import ChatMessage, ConfigError, LlmDelta, ToolCall, ToolSpec

NAME = "playbook"
FUZZY_RATIO = 0.8
DEFAULT_FALLBACK = "Sorry, I did not quite catch that. Could you say it again?"
END_CALL_TOOL = "end_call"

_WORD = re.compile(r"[a-z0-9']+")
_SUFFIXES = ("ings", "ing", "edly", "ed", "es", "s", "ly")


@dataclass(frozen=True, slots=True)
class Intent:
    name: str
    keywords: tuple[str, ...]
    reply: str
    end_call: bool = False


@dataclass(frozen=True, slots=True)
class PlaybookData:
    """The parts of an agent the responder needs, as plain data (no pipelines types)."""

    intents: tuple[Intent, ...] = ()
    fallback_reply: str = DEFAULT_FALLBACK
    first_message: str | None = None
    prompt: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_context(cls, context: Mapping[str, Any]) -> PlaybookData:
        """Build from the registry's ``context`` (``playbook``, ``prompt``, ``first_message``).

        ``playbook`` is the agent's playbook as a dict (``intents`` with ``name``,
        ``keywords``, ``reply``, ``end_call``; ``fallback_reply``).
        """
        book = context.get("playbook") or {}
        if not isinstance(book, Mapping):
            raise ConfigError(f"{NAME}: playbook must be an object")
        intents = []
        for i, raw in enumerate(book.get("intents") or ()):
            try:
                keywords = raw["keywords"]
                if isinstance(keywords, str) or not all(isinstance(k, str) for k in keywords):
                    raise TypeError("keywords must be a list of strings")
                intents.append(
                    Intent(
                        name=str(raw.get("name") or f"intent{i}"),
                        keywords=tuple(keywords),
                        reply=str(raw["reply"]),
                        end_call=bool(raw.get("end_call", False)),
                    )
                )
            except (KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(f"{NAME}: intent {i} is malformed ({exc})") from None
        return cls(
            intents=tuple(intents),
            fallback_reply=str(book.get("fallback_reply") or DEFAULT_FALLBACK),
            first_message=context.get("first_message"),
            prompt=str(context.get("prompt") or ""),
            extra={k: v for k, v in book.items() if k not in ("intents", "fallback_reply")},
        )


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("’", "'"))


@functools.lru_cache(maxsize=4096)
def stem(word: str) -> str:
    """A crude suffix stripper: enough for ``opening``/``opens``/``open``."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


@functools.lru_cache(maxsize=16384)
def word_matches(keyword: str, word: str) -> bool:
    if keyword == word or stem(keyword) == stem(word):
        return True
    if min(len(keyword), len(word)) < 4:
        return False  # short words: a one-letter slip is a different word
    return difflib.SequenceMatcher(None, keyword, word).ratio() >= FUZZY_RATIO


def keyword_matches(keyword: str, heard: Sequence[str]) -> bool:
    """A keyword (one word or a phrase) matches when each of its words was heard in order."""
    parts = words(keyword)
    if not parts:
        return False
    for start in range(len(heard) - len(parts) + 1):
        if all(word_matches(p, heard[start + j]) for j, p in enumerate(parts)):
            return True
    return False


def score(intent: Intent, heard: Sequence[str]) -> int:
    """How many of the intent's keywords were heard."""
    return sum(1 for k in intent.keywords if keyword_matches(k, heard))


def choose(book: PlaybookData, text: str) -> Intent | None:
    """The best-scoring intent (the first listed wins a tie), or None."""
    heard = words(text)
    best: Intent | None = None
    best_score = 0
    for intent in book.intents:
        s = score(intent, heard)
        if s > best_score:
            best, best_score = intent, s
    return best


def _deltas(text: str) -> list[str]:
    """Word-sized pieces that concatenate back to ``text`` exactly."""
    return re.findall(r"\s*\S+\s*", text) or ([text] if text else [])


class PlaybookLlm:
    """The ``playbook`` LLM provider."""

    name = NAME

    def __init__(self, book: PlaybookData, *, token_delay_ms: int = 0) -> None:
        self.book = book
        self._delay = token_delay_ms / 1000.0
        self._calls = itertools.count(1)

    @classmethod
    def from_options(
        cls, context: Mapping[str, Any], options: Mapping[str, Any], model: str | None = None
    ) -> PlaybookLlm:
        if model not in (None, "", NAME):
            raise ConfigError(f"{NAME} has no models (got {model!r})")
        delay = 0
        for key, value in options.items():
            if key != "token_delay_ms":
                raise ConfigError(f"{NAME}: unknown option {key!r} (known: token_delay_ms)")
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 2000:
                raise ConfigError(f"{NAME}: token_delay_ms must be an integer from 0 to 2000")
            delay = value
        return cls(PlaybookData.from_context(context), token_delay_ms=delay)

    async def warm(self) -> None:
        return None

    def reply_for(self, messages: Sequence[ChatMessage]) -> tuple[str, Intent | None]:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), None)
        if last_user is None:
            return (self.book.first_message or self.book.fallback_reply), None
        intent = choose(self.book, last_user)
        return (intent.reply if intent else self.book.fallback_reply), intent

    def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmDelta]:
        return self._stream(messages, tools)

    async def _stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[LlmDelta]:
        # offered the post-call ``call_summary`` tool: answer with an extractive summary
        # (providers/offline/playbook_summary.py), not as the agent
        from providers.offline import playbook_summary

        request = playbook_summary.summary_request(messages, tools)
        if request is not None:
            arguments = playbook_summary.summary_arguments(self.book, *request)
            call_id = f"call_playbook_{next(self._calls)}"
            yield LlmDelta(tool_call=ToolCall(call_id, playbook_summary.TOOL_NAME, arguments))
            yield LlmDelta(finish_reason="tool_calls")
            return
        reply, intent = self.reply_for(messages)
        for piece in _deltas(reply):
            if self._delay:
                await asyncio.sleep(self._delay)
            yield LlmDelta(text=piece)
        finish = "stop"
        if intent is not None and intent.end_call and any(t.name == END_CALL_TOOL for t in tools):
            call_id = f"call_playbook_{next(self._calls)}"
            arguments = json.dumps({"reason": intent.name})
            yield LlmDelta(tool_call=ToolCall(id=call_id, name=END_CALL_TOOL, arguments=arguments))
            finish = "tool_calls"
        prompt_tokens = sum(len(m.content.split()) for m in messages)
        completion_tokens = len(reply.split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        yield LlmDelta(usage=usage, finish_reason=finish)
