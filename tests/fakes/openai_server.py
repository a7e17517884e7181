"""A local stand-in for an OpenAI-compatible API: chat completions (SSE) and speech.

``POST /v1/chat/completions`` with ``"stream": true`` answers with ``chat.completion.chunk``
server-sent events exactly as OpenAI (and Ollama/vLLM) do: a first chunk with the role,
content deltas, tool calls whose ``arguments`` arrive as partial JSON over several
chunks, a last chunk with ``finish_reason``, an extra ``usage`` chunk (empty ``choices``)
when ``stream_options.include_usage`` is set, then ``data: [DONE]``. Errors use OpenAI's
``{"error": {"message", "type", "param", "code"}}`` body. ``POST /v1/audio/speech`` with
``response_format: "pcm"`` streams raw 24 kHz s16le. ``GET /v1/models`` lists models.

Usage (also from a benchmark script)::

    async with FakeOpenAIServer(reply="Hi there.", delay=0.3) as srv:
        client = AsyncOpenAI(api_key="k", base_url=srv.base_url + "/v1")
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes._base import FakeServer, Faults, abort, dumps


@dataclass
class Reply:
    """What the fake model answers: text, then tool calls (``(name, arguments_json)``)."""

    text: str = ""
    tool_calls: Sequence[tuple[str, str]] = field(default_factory=tuple)
    prompt_tokens: int = 12
    completion_tokens: int | None = None


def tokens(text: str) -> list[str]:
    """Split like a tokenizer would, roughly: words with their leading space."""
    return re.findall(r"\s*\S+", text) or ([text] if text else [])


class FakeOpenAIServer(FakeServer):
    """Knobs (mutable at runtime):

    ``reply``: a fixed :class:`Reply` or text; ``replies``: a queue consumed one per
    request before ``reply`` is used; ``reply_fn(request_json) -> Reply`` overrides both;
    ``delay``: seconds before the first token (time to first token);
    ``token_delay``: seconds between chunks; ``drop_after_tokens``: cut the response (no
    terminating chunk) after that many content chunks; ``speech_delay``: first-byte delay
    of ``/audio/speech``; ``speech_drop_after_bytes``; ``char_ms``: speech per character.
    """

    def __init__(
        self,
        *,
        reply: Reply | str = "Hello! How can I help you today?",
        replies: Sequence[Reply | str] = (),
        reply_fn: Callable[[dict[str, Any]], Reply | str] | None = None,
        delay: float = 0.0,
        token_delay: float = 0.0,
        drop_after_tokens: int | None = None,
        speech_delay: float = 0.0,
        speech_drop_after_bytes: int | None = None,
        char_ms: int = 10,
        model: str = "gpt-4o-mini",
        api_key: str | None = None,
        faults: Faults | None = None,
    ) -> None:
        super().__init__(api_key=api_key, faults=faults)
        self.reply = reply
        self.replies = list(replies)
        self.reply_fn = reply_fn
        self.delay = delay
        self.token_delay = token_delay
        self.drop_after_tokens = drop_after_tokens
        self.speech_delay = speech_delay
        self.speech_drop_after_bytes = speech_drop_after_bytes
        self.char_ms = char_ms
        self.model = model

    def _routes(self, app: web.Application) -> None:
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", self._chat)
            app.router.add_post(f"{prefix}/audio/speech", self._speech)
            app.router.add_get(f"{prefix}/models", self._models)

    @property
    def openai_base_url(self) -> str:
        """What to pass as the SDK's ``base_url``."""
        return self.base_url + "/v1"

    def _error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = {
            401: "invalid_request_error",
            402: "insufficient_quota",
            429: "requests" if self.faults.error_code is None else "insufficient_quota",
        }.get(status, "server_error")
        return {
            "error": {
                "message": message,
                "type": kind,
                "param": None,
                "code": self.faults.error_code,
            }
        }

    def _check(self, request: web.Request) -> web.Response | None:
        if self.api_key is not None:
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return web.json_response(
                    {
                        "error": {
                            "message": "Incorrect API key provided.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    },
                    status=401,
                )
        status = self.faults.take_failure()
        if status is not None:
            return self._refusal(status, f"fake upstream refused the request ({status})")
        return None

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        if self.reply_fn is not None:
            chosen: Reply | str = self.reply_fn(body)
        elif self.replies:
            chosen = self.replies.pop(0)
        else:
            chosen = self.reply
        return Reply(text=chosen) if isinstance(chosen, str) else chosen

    # ------------------------------------------------------------------ chat

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(request, body)
        refusal = self._check(request)
        if refusal is not None:
            return refusal
        reply = self._next_reply(body)
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        model = body.get("model", self.model)
        toks = tokens(reply.text)
        completion_tokens = reply.completion_tokens or len(toks) + 5 * len(reply.tool_calls)
        usage = {
            "prompt_tokens": reply.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": reply.prompt_tokens + completion_tokens,
        }
        finish = "tool_calls" if reply.tool_calls else "stop"
        if not body.get("stream"):
            await asyncio.sleep(self.delay)
            message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
            if reply.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": n, "arguments": a},
                    }
                    for i, (n, a) in enumerate(reply.tool_calls)
                ]
            return web.json_response(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                    "usage": usage,
                }
            )

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        resp = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            obj: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
                ],
            }
            if include_usage:
                obj["usage"] = None
            return f"data: {dumps(obj)}\n\n".encode()

        await asyncio.sleep(self.delay)
        await resp.write(chunk({"role": "assistant", "content": "", "refusal": None}))
        sent = 0
        for tok in toks:
            if self.drop_after_tokens is not None and sent >= self.drop_after_tokens:
                if self.faults.take_drop():
                    abort(request)
                    return resp
            await resp.write(chunk({"content": tok}))
            sent += 1
            await asyncio.sleep(self.token_delay)
        for index, (name, arguments) in enumerate(reply.tool_calls):
            head = {
                "index": index,
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": name, "arguments": ""},
            }
            await resp.write(chunk({"tool_calls": [head]}))
            for i in range(0, len(arguments), 7):  # partial JSON, as the model streams it
                part = {"index": index, "function": {"arguments": arguments[i : i + 7]}}
                await resp.write(chunk({"tool_calls": [part]}))
                await asyncio.sleep(self.token_delay)
        await resp.write(chunk({}, finish))
        if include_usage:
            last = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [],
                "usage": usage,
            }
            await resp.write(f"data: {dumps(last)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ speech

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(request, body)
        refusal = self._check(request)
        if refusal is not None:
            return refusal
        if body.get("response_format") != "pcm":
            return web.json_response(
                {
                    "error": {
                        "message": "the fake serves pcm only",
                        "type": "invalid_request_error",
                        "param": "response_format",
                        "code": None,
                    }
                },
                status=400,
            )
        text = str(body.get("input", ""))
        n = 24000 * self.char_ms * max(1, len(text)) // 1000
        t = np.arange(n) / 24000
        audio = (6000 * np.sin(2 * np.pi * 330 * t)).astype("<i2").tobytes()
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await asyncio.sleep(self.speech_delay)
        step = 4801  # odd on purpose: clients must not assume sample-aligned chunks
        sent = 0
        for i in range(0, len(audio), step):
            piece = audio[i : i + step]
            limit = self.speech_drop_after_bytes
            if limit is not None and sent + len(piece) > limit and self.faults.take_drop():
                abort(request)
                return resp
            await resp.write(piece)
            sent += len(piece)
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def _models(self, request: web.Request) -> web.Response:
        self._record(request)
        refusal = self._check(request)
        if refusal is not None:
            return refusal
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"},
                    {"id": "tts-1", "object": "model", "created": 0, "owned_by": "fake"},
                ],
            }
        )
