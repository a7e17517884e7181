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
import importlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from providers.base import ChatMessage, LlmDelta, ProviderError, ToolCall, ToolSpec
from providers.cloud._common import (
    ClientCache,
    dropped,
    error_from_status,
    header,
    key_digest,
    parse_retry_after,
    register_secret,
    unexpected,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Sent when the endpoint needs no key (local servers); the SDK insists on one and would
#: otherwise fall back to the OPENAI_API_KEY environment variable.
NO_KEY = "no-key"


_clients: ClientCache[Any] = ClientCache()


def make_async_client(
    api_key: str | None, base_url: str, *, timeout: float, max_retries: int
) -> Any:
    """An ``AsyncOpenAI`` client, shared by every call of this event loop with the same
    endpoint and key, so calls reuse its kept-alive (already TLS-warm) connections."""
    register_secret(api_key)

    def build() -> Any:
        from openai import AsyncOpenAI

        return AsyncOpenAI(
            api_key=api_key or NO_KEY, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    key = (base_url, key_digest(api_key or NO_KEY), timeout, max_retries)
    return _clients.get(key, build, usable=lambda client: not client.is_closed())


def warm(api_key: str | None, base_url: str, *, timeout: float = 30.0) -> None:
    """Import the SDK and what its first streamed reply touches (~0.3 s), and build the
    shared client for the operator's endpoint (the engines' default timeout and retries),
    before any call."""
    import concurrent.futures.thread  # noqa: F401  (asyncio's resolver executor)

    import openai.types.chat  # noqa: F401  (chunk models, parsed per SSE event)

    with contextlib.suppress(ImportError):  # the HTTP client's async backend, if anyio
        importlib.import_module("anyio._backends._asyncio")

    client = make_async_client(api_key, base_url, timeout=timeout, max_retries=0)
    client.chat.completions  # noqa: B018  (lazily imported resources)
    client.audio.speech  # noqa: B018


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
        """The ``/chat/completions`` JSON body for one reply (``extra_body`` merged last,
        as the SDK merges it)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": to_openai_messages(messages),
            "stream": True,
        }
        if tools:
            body["tools"] = to_openai_tools(tools)
        if self.stream_usage:
            body["stream_options"] = {"include_usage": True}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        return body

    def stream(
        self, messages: Sequence[ChatMessage], *, tools: Sequence[ToolSpec] = ()
    ) -> AsyncIterator[LlmDelta]:
        return self._stream(messages, tools)

    async def _stream(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> AsyncIterator[LlmDelta]:
        started = time.monotonic()
        self.last_ttft_s = None
        # The SDK's client sends the request (auth, headers, timeouts, retries, HTTP
        # errors → exceptions) but gets a body we built from plain dicts: its
        # ``chat.completions.create`` walks every message against its TypedDicts first
        # (``async_maybe_transform``), a 6-20 ms block of the event loop per reply that
        # grew with the conversation. The stream is read here too: one ``json.loads`` per
        # event instead of a model tree per chunk.
        try:
            response = await self._client.post(
                "/chat/completions",
                cast_to=_http_response_type(),
                body=self.request(messages, tools),
                options={"headers": {_RAW_RESPONSE_HEADER: "stream"}},  # body unread
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise map_openai_error(self.name, exc) from None
        calls = ToolCallAssembler()
        usage: dict[str, int] | None = None
        finish: str | None = None
        try:
            try:
                async for data in sse_data(response.aiter_bytes()):
                    if data == b"[DONE]":
                        continue  # read on to the end of the body: the connection is reused
                    chunk = json.loads(data)
                    if not isinstance(chunk, dict):
                        continue
                    if chunk.get("error"):
                        raise _StreamError
                    raw_usage = chunk.get("usage")
                    if isinstance(raw_usage, dict):
                        usage = {
                            "prompt_tokens": raw_usage.get("prompt_tokens") or 0,
                            "completion_tokens": raw_usage.get("completion_tokens") or 0,
                            "total_tokens": raw_usage.get("total_tokens") or 0,
                        }
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta")
                        if delta:
                            content = delta.get("content")
                            if content:
                                if self.last_ttft_s is None:
                                    self.last_ttft_s = time.monotonic() - started
                                yield LlmDelta(text=content)
                            tool_calls = delta.get("tool_calls")
                            if tool_calls:
                                if self.last_ttft_s is None:
                                    self.last_ttft_s = time.monotonic() - started
                                for tc in tool_calls:
                                    fn = tc.get("function") or {}
                                    calls.add(
                                        tc.get("index") or 0,
                                        tc.get("id"),
                                        fn.get("name"),
                                        fn.get("arguments"),
                                    )
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
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
                await response.aclose()


#: the SDK's switch for "return the HTTP response with its body unread" (the header its own
#: ``with_streaming_response`` sets)
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"


def _http_response_type() -> type:
    """The response class of the SDK's HTTP client: asked for as ``cast_to``, the SDK
    hands that response back as it is (``httpx2`` in openai 3, ``httpx`` before)."""
    module = importlib.import_module("openai._base_client")
    http = getattr(module, "httpx2", None) or module.httpx
    return http.Response


class _StreamError(Exception):
    """An ``error`` object inside the event stream (the SDK raises ``APIError`` there)."""


async def sse_data(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The ``data`` of each server-sent event, as bytes (multi-line data joined with
    ``\n``, comments and other fields skipped, CRLF or LF line ends), per the SSE rules."""
    buffer = b""
    data: list[bytes] = []
    async for chunk in chunks:
        buffer += chunk
        if b"\n" not in buffer:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if buffer.startswith(b"data:"):
        value = buffer[5:].rstrip(b"\r")
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)
