"""Any OpenAI-compatible chat completions endpoint, streamed, through the ``openai`` SDK.

OpenAI itself, or a local server that speaks the same API (Ollama at
``http://localhost:11434/v1``, vLLM at ``http://localhost:8000/v1``, LM Studio, ...):
only ``base_url`` and ``model`` change. Why these choices:

- ``stream=True`` with ``stream_options.include_usage`` so the last chunk carries token
  usage (turn it off with ``stream_usage=False`` for servers that reject the option).
- Tool calls arrive as partial JSON spread over chunks, keyed by ``index``; they are
  assembled here and handed to the engine only when complete.
- Time to first token is measured per request (``last_ttft_s``) and reported in the final
  usage delta as ``ttft_ms``.
- ``max_retries`` defaults to 0: in a live call a failed request should go to the next
  provider in the agent's fallback list now, not after SDK back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from providers.base import ChatMessage, LlmDelta, ProviderError, ToolCall, ToolSpec
from providers.cloud._common import (
    dropped,
    error_from_status,
    header,
    parse_retry_after,
    register_secret,
    unexpected,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Sent when the endpoint needs no key (local servers); the SDK insists on one and would
#: otherwise fall back to the OPENAI_API_KEY environment variable.
NO_KEY = "no-key"


_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def make_async_client(
    api_key: str | None, base_url: str, *, timeout: float, max_retries: int
) -> Any:
    """An ``AsyncOpenAI`` client, shared by every call of this event loop with the same
    endpoint and key, so calls reuse its kept-alive (already TLS-warm) connections."""
    from openai import AsyncOpenAI

    register_secret(api_key)
    key = (base_url, hashlib.sha256((api_key or NO_KEY).encode()).hexdigest(), timeout, max_retries)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is not None:
        cached = _clients.setdefault(loop, {}).get(key)
        if cached is not None and not cached.is_closed():
            return cached
    client = AsyncOpenAI(
        api_key=api_key or NO_KEY, base_url=base_url, timeout=timeout, max_retries=max_retries
    )
    if loop is not None:
        _clients[loop][key] = client
    return client


def map_openai_error(provider: str, exc: BaseException) -> ProviderError:
    """``openai`` exceptions → :class:`ProviderError` with the seed's codes."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        headers = exc.response.headers if exc.response is not None else None
        retry_after = None
        ms = header(headers, "retry-after-ms")
        if ms is not None:
            with contextlib.suppress(ValueError):
                retry_after = float(ms) / 1000.0
        if retry_after is None:
            retry_after = parse_retry_after(header(headers, "retry-after"))
        code = exc.code or getattr(exc, "type", None)
        detail = "" if exc.status_code in (401, 403) else str(exc.message or "")
        return error_from_status(
            provider, exc.status_code, retry_after=retry_after, code=code, detail=detail
        )
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(f"{provider}: request timed out", provider=provider)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{provider}: cannot connect", provider=provider)
    return unexpected(provider, exc)


def to_openai_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for m in messages:
        msg: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.role == "tool":
            msg["tool_call_id"] = m.tool_call_id or ""
        elif m.role == "assistant" and m.tool_calls:
            msg["content"] = m.content or None
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments or "{}"},
                }
                for c in m.tool_calls
            ]
        if m.name and m.role in ("system", "user", "assistant"):
            msg["name"] = m.name
        out.append(msg)
    return out


def to_openai_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": dict(t.parameters) or {"type": "object", "properties": {}},
            },
        }
        for t in tools
    ]


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class ToolCallAssembler:
    """Collects ``delta.tool_calls`` fragments (keyed by ``index``) into whole calls."""

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}

    def add(self, index: int, id: str | None, name: str | None, arguments: str | None) -> None:
        call = self._calls.setdefault(index, _PartialCall())
        if id:
            call.id = id
        if name:
            # OpenAI sends the name once; some compatible servers repeat it per chunk
            if not call.name:
                call.name = name
            elif name != call.name:
                call.name += name
        if arguments:
            call.arguments += arguments

    def done(self) -> list[ToolCall]:
        return [
            ToolCall(id=c.id or f"call_{i}", name=c.name, arguments=c.arguments or "{}")
            for i, c in sorted(self._calls.items())
            if c.name
        ]


class OpenAiLlm:
    """``LlmProvider`` for OpenAI-compatible chat completions."""

    name = "openai"

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stream_usage: bool = True,
        timeout_s: float = 30.0,
        max_retries: int = 0,
        extra_body: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model or "gpt-4o-mini"
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.stream_usage = stream_usage
        self.extra_body = dict(extra_body or {})
        self.last_ttft_s: float | None = None
        if name:
            self.name = name
        self._client = make_async_client(
            api_key, self.base_url, timeout=timeout_s, max_retries=max_retries
        )

    async def warm(self) -> None:
        """Open the HTTP connection (TCP + TLS) before the first turn; failures are fine."""
        try:
            await asyncio.wait_for(self._client.models.list(), 3.0)
        except Exception as exc:  # warming is best effort: the real request will tell
            log.debug("%s: warm-up request failed: %s", self.name, type(exc).__name__)

    def request(self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments for one reply."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "stream": True,
        }
        if tools:
            kwargs["tools"] = to_openai_tools(tools)
        if self.stream_usage:
            kwargs["stream_options"] = {"include_usage": True}
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature
        if self.max_tokens is not None:
            kwargs["max_tokens"] = self.max_tokens
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

    def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmDelta]:
        return self._stream(messages, tools)

    async def _stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[LlmDelta]:
        started = time.monotonic()
        self.last_ttft_s = None
        try:
            response = await self._client.chat.completions.create(**self.request(messages, tools))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise map_openai_error(self.name, exc) from None
        calls = ToolCallAssembler()
        usage: dict[str, int] | None = None
        finish: str | None = None
        try:
            try:
                async for chunk in response:
                    if chunk.usage is not None:
                        usage = {
                            "prompt_tokens": chunk.usage.prompt_tokens or 0,
                            "completion_tokens": chunk.usage.completion_tokens or 0,
                            "total_tokens": chunk.usage.total_tokens or 0,
                        }
                    for choice in chunk.choices:
                        delta = choice.delta
                        if delta is not None and delta.content:
                            if self.last_ttft_s is None:
                                self.last_ttft_s = time.monotonic() - started
                            yield LlmDelta(text=delta.content)
                        if delta is not None and delta.tool_calls:
                            if self.last_ttft_s is None:
                                self.last_ttft_s = time.monotonic() - started
                            for tc in delta.tool_calls:
                                fn = tc.function
                                calls.add(
                                    tc.index,
                                    tc.id,
                                    fn.name if fn else None,
                                    fn.arguments if fn else None,
                                )
                        if choice.finish_reason:
                            finish = choice.finish_reason
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("%s: stream failed: %s", self.name, type(exc).__name__)
                raise dropped(self.name, "completion stream") from None
            if finish is None:
                # the connection ended cleanly but the reply never did
                raise dropped(self.name, "completion stream")
            for call in calls.done():
                yield LlmDelta(tool_call=call)
            if self.last_ttft_s is not None:
                usage = dict(usage or {})
                usage["ttft_ms"] = round(self.last_ttft_s * 1000)
            yield LlmDelta(usage=usage, finish_reason=finish)
        finally:
            with contextlib.suppress(Exception):
                await response.close()
