"""Client of the Rymi ``/v1`` API as the worker uses it (hosted, or the embedded local API).

Only what the worker needs: the agent config (cached, revalidated with ``If-None-Match``),
call creation, and the ingest of call events and transcript segments. Every failure is an
:class:`ApiError` (network failures have ``status == 0``) that says whether retrying can
help; the outbox owns retries of reports, this client retries only the calls made while a
caller waits (agent fetch, call creation), briefly.
"""

from __future__ import annotations

import copy
import email.utils
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from pipelines.agent_config import AgentConfig

log = logging.getLogger(__name__)

USER_AGENT: Final = "rymi-worker/0.1"
#: Fields of an agent object that are not part of its config (read-only).
AGENT_ENVELOPE: Final = frozenset({"id", "object", "created_at", "updated_at"})


class ApiError(Exception):
    """An API call failed. ``status`` is the HTTP status, or 0 when no response arrived
    (``code`` then says ``connect_error``, ``timeout`` or ``connection_error``)."""

    def __init__(
        self,
        status: int,
        error: str,
        code: str | None = None,
        *,
        detail: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"HTTP {status}: {error}" if status else error)
        self.status = status
        self.error = error
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def auth_failed(self) -> bool:
        """401/403: the key is wrong or lacks scope; retrying cannot help."""
        return self.status in (401, 403)

    @property
    def retryable(self) -> bool:
        """No response, timeouts, rate limiting and server errors; never 401/403."""
        return self.status == 0 or self.status in (408, 425, 429) or self.status >= 500

    @property
    def reached_server(self) -> bool:
        """False when the request surely was not processed (no connection, or 429)."""
        return not (self.code == "connect_error" or self.status == 429)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _wait_retry_after(fallback: Callable[[RetryCallState], float]) -> Callable[
    [RetryCallState], float
]:
    """tenacity wait: the server's ``Retry-After`` when it gave one, else ``fallback``."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            return exc.retry_after
        return fallback(state)

    return wait


class ApiClient:
    """``ApiClient(base_url, api_key)``; ``base_url`` is the origin (``/v1`` is added).

    Pass ``session`` to share an ``aiohttp.ClientSession`` (it is then not closed here).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | SecretStr,
        session: aiohttp.ClientSession | None = None,
        *,
        timeout_s: float = 10.0,
        attempts: int = 3,
        max_retry_wait_s: float = 5.0,
    ) -> None:
        base = str(base_url).rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self._key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        self._session = session
        self._owns_session = session is None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(5.0, timeout_s))
        self._attempts = max(1, attempts)
        self._max_retry_wait_s = max_retry_wait_s
        #: agent id → (etag, config, raw object)
        self._agents: dict[str, tuple[str, AgentConfig, dict[str, Any]]] = {}

    def __repr__(self) -> str:  # never the key
        return f"ApiClient({self.base_url!r})"

    async def close(self) -> None:
        if self._owns_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ transport

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._owns_session = True
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> tuple[int, Mapping[str, str], Any]:
        """One HTTP exchange, no retry: ``(status, headers, json body or None)``.

        Raises ApiError for status >= 400 and for network failures (status 0)."""
        url = f"{self.base_url}{path}"
        all_headers = {
            "Authorization": f"Bearer {self._key.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **(headers or {}),
        }
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            all_headers["Content-Type"] = "application/json"
        try:
            async with self._http().request(
                method, url, data=data, headers=all_headers, timeout=timeout or self._timeout,
                allow_redirects=False,
            ) as resp:
                raw = await resp.read()
                status, resp_headers = resp.status, resp.headers.copy()
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(0, f"cannot connect to {self.base_url}: {exc.strerror or exc}",
                           "connect_error") from None
        except TimeoutError:
            raise ApiError(0, f"{method} {path} timed out", "timeout") from None
        except aiohttp.ClientError as exc:
            raise ApiError(0, f"{method} {path} failed: {type(exc).__name__}: {exc}",
                           "connection_error") from None
        return status, resp_headers, self._parsed(status, resp_headers, raw)

    def _parsed(self, status: int, headers: Any, raw: bytes) -> Any:
        """The JSON body (None when empty or not JSON); an ``ApiError`` for 4xx/5xx."""
        parsed: Any = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        if status >= 400:
            raise self._error(status, headers, parsed, raw)
        return parsed

    @staticmethod
    def _error(status: int, headers: Mapping[str, str], parsed: Any, raw: bytes) -> ApiError:
        error, code, detail = None, None, None
        if isinstance(parsed, dict):
            error = parsed.get("error")
            code = parsed.get("code")
            detail = parsed.get("detail")
        if not isinstance(error, str) or not error:
            error = raw[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
        retry_after = None
        if status in (429, 503):
            retry_after = parse_retry_after(headers.get("Retry-After"))
        return ApiError(
            status, error, code if isinstance(code, str) else None,
            detail=detail, retry_after=retry_after,
        )

    async def _with_retries(
        self,
        fn: Callable[[], Any],
        retry_on: Callable[[ApiError], bool],
    ) -> Any:
        """Brief retries for requests a caller waits on; a long ``Retry-After`` is not
        waited out here (the error is raised at once)."""

        def should_retry(exc: BaseException) -> bool:
            return (
                isinstance(exc, ApiError)
                and retry_on(exc)
                and (exc.retry_after is None or exc.retry_after <= self._max_retry_wait_s)
            )

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=_wait_retry_after(wait_random_exponential(multiplier=0.2, max=2.0)),
            retry=retry_if_exception(should_retry),
            reraise=True,
        )
        return await retrying(fn)

    # ------------------------------------------------------------------ agents

    async def get_agent(self, agent_id: str) -> tuple[AgentConfig, dict[str, Any]]:
        """The agent's validated config and the raw object.

        Revalidates a cached copy with ``If-None-Match`` (a 304 costs no parsing). Raises
        ApiError (404 for an unknown agent) or pydantic's ValidationError for a config
        this worker cannot run."""
        path = f"/v1/agents/{quote(agent_id, safe='')}"
        cached = self._agents.get(agent_id)

        async def fetch() -> tuple[int, Mapping[str, str], Any]:
            headers = {"If-None-Match": cached[0]} if cached else None
            return await self.request("GET", path, headers=headers)

        status, headers, body = await self._with_retries(fetch, lambda e: e.retryable)
        if status == 304 and cached is not None:
            return cached[1].model_copy(deep=True), copy.deepcopy(cached[2])
        if not isinstance(body, dict):
            raise ApiError(status, "agent response is not a JSON object", "bad_response")
        config = AgentConfig.model_validate(
            {k: v for k, v in body.items() if k not in AGENT_ENVELOPE}
        )
        etag = headers.get("ETag")
        if etag:
            self._agents[agent_id] = (etag, config, body)
        else:
            self._agents.pop(agent_id, None)
        return config.model_copy(deep=True), copy.deepcopy(body)

    def cached_agent(self, agent_id: str) -> tuple[AgentConfig, dict[str, Any]] | None:
        """The last config fetched for ``agent_id`` (calls set up while the API is down
        use it), or None."""
        cached = self._agents.get(agent_id)
        if cached is None:
            return None
        return cached[1].model_copy(deep=True), copy.deepcopy(cached[2])

    # ------------------------------------------------------------------ calls

    async def create_call(
        self,
        *,
        agent_id: str,
        direction: str = "inbound",
        transport: str = "local",
        from_: str | None = None,
        to: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        worker_id: str | None = None,
        call_id: str | None = None,
    ) -> dict[str, Any]:
        """``POST /v1/calls`` → the call object (status ``queued``).

        With ``call_id`` (the worker's own ``call_…`` id) the request is idempotent: the
        same id again answers 200 with the existing call. Retried only when the API surely
        did not create it (no connection, 429)."""
        body: dict[str, Any] = {
            "agent_id": agent_id,
            "direction": direction,
            "transport": transport,
        }
        if call_id is not None:
            body["id"] = call_id
        for key, value in (("from", from_), ("to", to), ("worker_id", worker_id)):
            if value is not None:
                body[key] = value
        if metadata:
            body["metadata"] = dict(metadata)

        async def post() -> tuple[int, Mapping[str, str], Any]:
            return await self.request("POST", "/v1/calls", body=body)

        status, _headers, call = await self._with_retries(post, lambda e: not e.reached_server)
        if not isinstance(call, dict) or "id" not in call:
            raise ApiError(status, "call response has no id", "bad_response")
        return call

    async def post_events(
        self, call_id: str, events: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """``POST /v1/calls/:id/events`` once (the outbox retries). Items carry
        ``idempotency_key``, ``seq``, ``type``, ``at``, ``data``."""
        return await self._ingest(call_id, "events", "events", events)

    async def post_transcript(
        self, call_id: str, segments: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        """``POST /v1/calls/:id/transcript`` once (the outbox retries)."""
        return await self._ingest(call_id, "transcript", "segments", segments)

    async def _ingest(
        self, call_id: str, route: str, key: str, items: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        path = f"/v1/calls/{quote(call_id, safe='')}/{route}"
        _status, _headers, body = await self.request(
            "POST", path, body={key: [dict(i) for i in items]}
        )
        return body if isinstance(body, dict) else {}

    async def create_call_item(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/calls`` once with a worker-made ``id`` (the outbox retries; the API
        answers 201 the first time and 200 with the same call afterwards)."""
        fields = {k: v for k, v in body.items() if k not in ("idempotency_key", "seq")}
        _status, _headers, call = await self.request("POST", "/v1/calls", body=fields)
        return call if isinstance(call, dict) else {}

    async def post_summary(self, call_id: str, summary: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /v1/calls/:id/summary`` once (replaces the stored summary)."""
        path = f"/v1/calls/{quote(call_id, safe='')}/summary"
        _status, _headers, body = await self.request("POST", path, body=dict(summary))
        return body if isinstance(body, dict) else {}

    async def put_recording(
        self, call_id: str, path: str | Path, *, timeout_s: float = 600.0
    ) -> dict[str, Any]:
        """``PUT /v1/calls/:id/recording`` with the WAV file streamed as the body, once.
        Idempotent on the API side (a repeat replaces the stored file)."""
        url = f"{self.base_url}/v1/calls/{quote(call_id, safe='')}/recording"
        headers = {
            "Authorization": f"Bearer {self._key.get_secret_value()}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "Content-Type": "audio/wav",
        }
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=5.0, sock_read=60.0)
        try:
            with open(path, "rb") as fh:  # noqa: ASYNC230 - aiohttp streams it in chunks
                headers["Content-Length"] = str(os.fstat(fh.fileno()).st_size)
                async with self._http().put(
                    url, data=fh, headers=headers, timeout=timeout, allow_redirects=False
                ) as resp:
                    raw = await resp.read()
                    status, resp_headers = resp.status, resp.headers.copy()
        except FileNotFoundError:
            # nothing to retry: the outbox sets the item aside like a refused one
            raise ApiError(422, f"recording file {path} is missing", "file_missing") from None
        except aiohttp.ClientConnectorError as exc:
            raise ApiError(0, f"cannot connect to {self.base_url}: {exc.strerror or exc}",
                           "connect_error") from None
        except TimeoutError:
            raise ApiError(0, f"PUT recording of {call_id} timed out", "timeout") from None
        except aiohttp.ClientError as exc:
            raise ApiError(0, f"PUT recording failed: {type(exc).__name__}: {exc}",
                           "connection_error") from None
        parsed = self._parsed(status, resp_headers, raw)
        return parsed if isinstance(parsed, dict) else {}

    async def dnc_check(self, number: str) -> dict[str, Any]:
        """``POST /v1/dnc/check`` → ``{"number", "listed", "reason"?}`` (brief retries)."""

        async def post() -> tuple[int, Mapping[str, str], Any]:
            return await self.request("POST", "/v1/dnc/check", body={"number": number})

        _status, _headers, body = await self._with_retries(post, lambda e: e.retryable)
        if not isinstance(body, dict) or not isinstance(body.get("listed"), bool):
            raise ApiError(200, "DNC check response has no 'listed'", "bad_response")
        return body

    async def worker_heartbeat(
        self, worker_id: str, state: Mapping[str, Any], *, wait_s: float = 0.0
    ) -> list[dict[str, Any]]:
        """``POST /v1/workers/:id/heartbeat?wait=…``: report load, long-poll for control
        commands (e.g. ``end_call``); returns them."""
        path = f"/v1/workers/{quote(worker_id, safe='')}/heartbeat"
        if wait_s > 0:
            path += f"?wait={wait_s:g}"
        timeout = aiohttp.ClientTimeout(total=wait_s + 10.0, connect=5.0)
        _status, _headers, body = await self.request(
            "POST", path, body=dict(state), timeout=timeout
        )
        commands = body.get("commands") if isinstance(body, dict) else None
        return [c for c in commands or [] if isinstance(c, dict)]

    async def ack_command(self, worker_id: str, command_id: str) -> None:
        """``DELETE /v1/workers/:id/commands/:command_id``: done, do not send it again."""
        path = (f"/v1/workers/{quote(worker_id, safe='')}/commands/"
                f"{quote(command_id, safe='')}")
        await self.request("DELETE", path)
