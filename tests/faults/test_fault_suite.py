"""The fault suite: real worker processes, a real API process, real faults; nothing lost.

Set-up: the stand-alone local API (``python -m runtime.local_api``) behind a
fault-injecting HTTP proxy on loopback; ``rymi-worker start`` subprocesses report to the
proxy as they would to the hosted API. Callers speak real (espeak-ng) speech over the
local stream. Each scenario runs one call under one fault:

- baseline: nothing wrong (it also warms the worker's cached agent config);
- api_down: the API process and the proxy are down for the whole call, then come back;
- api_500: every other request answered 500 during the call;
- api_429: the first requests answered 429 with ``Retry-After: 1``;
- sigkill: the worker is killed with SIGKILL mid-reply, then restarted;
- sigterm: the worker gets SIGTERM mid-reply (it drains and exits).

Afterwards, for every call: every event and transcript segment the caller saw live
(each is committed to the outbox before it is sent live) is in the API exactly once, in
``seq`` order, with no gap in ``seq``; every completed call has its recording and summary;
the workers' outboxes hold nothing pending or dead. A table of what was tried and what was
lost is printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.processes import Process, api_process, pin_port, worker_process
from tests.support.speech import speech
from tests.support.stream_client import StreamCaller

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]
KEY = f"rymi_{secrets.token_hex(24)}"
AGENT = {
    "name": "Fault suite",
    "first_message": "Hi there.",
    "silence_timeout_s": 60,
    "playbook": {
        "intents": [{"name": "hours", "keywords": ["open", "time", "hours", "tomorrow"],
                     "reply": "We open at nine in the morning, and we close at six."}],
        "fallback_reply": "Sorry, could you say that again?",
        "extraction_fields": ["intent"],
    },
}
QUESTION = "what are your opening hours tomorrow"


# --------------------------------------------------------------------------- the proxy

Rule = Callable[[web.Request], web.Response | None]


class FaultProxy:
    """Forwards everything to the API, unless ``rule`` answers first; can go down."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rule: Rule | None = None
        self.injected: dict[str, int] = {}
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._session = self._session or aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60), auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        """Down: connections are refused until start() again."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if self.rule is not None:
            injected = self.rule(request)
            if injected is not None:
                self.injected[str(injected.status)] = self.injected.get(
                    str(injected.status), 0) + 1
                return injected
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("authorization", "content-type", "if-none-match",
                                    "accept", "user-agent")}
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, data=body or None,
                headers=headers, allow_redirects=False,
            ) as resp:
                payload = await resp.read()
                keep = {k: v for k, v in resp.headers.items()
                        if k.lower() in ("content-type", "etag", "retry-after", "location",
                                         "www-authenticate")}
                return web.Response(status=resp.status, body=payload, headers=keep)
        except (aiohttp.ClientError, TimeoutError):
            return web.json_response({"error": "upstream unavailable"}, status=502)


def every_other(status: int) -> Rule:
    counter = itertools.count()

    def rule(_request: web.Request) -> web.Response | None:
        if next(counter) % 2 == 0:
            return web.json_response({"error": f"injected {status}"}, status=status)
        return None

    return rule


def first_n_rate_limited(n: int) -> Rule:
    counter = itertools.count()

    def rule(_request: web.Request) -> web.Response | None:
        if next(counter) < n:
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": "1"})
        return None

    return rule


# --------------------------------------------------------------------------- the suite


@dataclass
class Outcome:
    scenario: str
    fault: str
    call_id: str = ""
    live_events: list[dict[str, Any]] = field(default_factory=list)
    live_segments: list[dict[str, Any]] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict)


@dataclass
class Suite:
    tmp: Path
    api: Process
    proxy: FaultProxy
    session: aiohttp.ClientSession
    agent_id: str = ""
    workers: list[Process] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(self.api.url + path,
                                    headers={"Authorization": f"Bearer {KEY}"}) as resp:
            if resp.content_type == "audio/wav":
                return resp.status, await resp.read()
            return resp.status, await resp.json(content_type=None)

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.session.post(self.api.url + path, json=body,
                                     headers={"Authorization": f"Bearer {KEY}"}) as resp:
            return resp.status, await resp.json(content_type=None)

    def worker(self, name: str, **env: str) -> Process:
        proc = worker_process(name, self.tmp / name, api_url=self.proxy.url, key=KEY,
                              log_dir=self.tmp, RYMI_DRAIN_TIMEOUT_S="2", **env)
        self.workers.append(proc)
        return proc

    async def all_items(self, call_id: str, kind: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            _s, page = await self.get(f"/v1/calls/{call_id}/{kind}?limit=200"
                                      f"&offset={len(items)}")
            batch = page["events" if kind == "events" else "segments"]
            items.extend(batch)
            if not batch or len(items) >= page["total"]:
                return items


async def talk(worker_url: str, agent_id: str, outcome: Outcome,
               during: Callable[[StreamCaller], Any] | None = None) -> None:
    """One call: greeting, a question, the reply starts; ``during`` acts mid-reply (a
    kill), else the caller hangs up once the reply has played."""
    ws_url = worker_url.replace("http", "ws") + "/v1/stream"
    async with StreamCaller(ws_url, KEY, agent_id, sample_rate=16000) as caller:
        outcome.call_id = caller.call_id or ""
        await caller.wait_event("agent.speech_stopped", 30, turn_id=1)
        caller.say(speech(QUESTION))
        await caller.wait_event("agent.speech_started", 40, turn_id=2)
        if during is not None:
            await asyncio.sleep(0.5)
            await during(caller)
        else:
            await caller.wait_event("agent.speech_stopped", 30, turn_id=2)
            await caller.hang_up()
        await asyncio.wait_for(caller.ended.wait(), 30)
        await asyncio.sleep(0.2)
    outcome.live_events = caller.events()
    outcome.live_segments = caller.transcripts()


def _key(item: dict[str, Any], fields: tuple[str, ...]) -> str:
    return json.dumps({f: item.get(f) for f in fields}, sort_keys=True)


def subsequence(needles: list[str], haystack: list[str]) -> int:
    """How many of ``needles`` are missing from ``haystack`` taken in order."""
    it = iter(haystack)
    return sum(1 for n in needles if not any(h == n for h in it))


async def verify(suite: Suite, outcome: Outcome) -> None:
    call_id = outcome.call_id
    status, call = await suite.get(f"/v1/calls/{call_id}")
    assert status == 200, f"{outcome.scenario}: call {call_id} never reached the API"
    events = await suite.all_items(call_id, "events")
    segments = await suite.all_items(call_id, "transcript")
    ev_fields = ("type", "at", "data")
    seg_fields = ("role", "text", "turn_id", "start", "end", "interrupted")
    api_ev = [_key(e, ev_fields) for e in events]
    api_seg = [_key(s, seg_fields) for s in segments]
    lost_ev = subsequence([_key(e, ev_fields) for e in outcome.live_events], api_ev)
    lost_seg = subsequence([_key(s, seg_fields) for s in outcome.live_segments], api_seg)
    dup = (len(api_ev) - len(set(api_ev))) + (len(api_seg) - len(set(api_seg)))
    in_order = ([e["seq"] for e in events] == list(range(1, len(events) + 1))
                and [s["seq"] for s in segments] == list(range(1, len(segments) + 1)))
    rec_status, _wav = await suite.get(f"/v1/calls/{call_id}/recording")
    sum_status, summary = await suite.get(f"/v1/calls/{call_id}/summary")
    outcome.row = {
        "events": f"{len(events)}/{len(outcome.live_events)}",
        "segments": f"{len(segments)}/{len(outcome.live_segments)}",
        "lost": lost_ev + lost_seg,
        "dup": dup,
        "in_order": "yes" if in_order else "NO",
        "status": f"{call['status']} ({call['end_reason']})",
        "recording": "yes" if rec_status == 200 else "-",
        "summary": summary.get("outcome", "-") if sum_status == 200 else "-",
    }


async def settle(suite: Suite, outcome: Outcome, timeout: float = 60.0) -> None:
    """Wait until the call is over in the API with its post-call artefacts (or time out;
    the assertions then say what is missing)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, call = await suite.get(f"/v1/calls/{outcome.call_id}")
        if status == 200 and call["status"] in ("completed", "failed"):
            if call["status"] == "failed":
                return
            rec, _ = await suite.get(f"/v1/calls/{outcome.call_id}/recording")
            summ, _ = await suite.get(f"/v1/calls/{outcome.call_id}/summary")
            if rec == 200 and summ == 200:
                return
        await asyncio.sleep(0.25)


def outbox_state(data_dir: Path) -> tuple[int, int]:
    path = data_dir / "outbox.sqlite3"
    if not path.exists():
        return 0, 0
    with contextlib.closing(sqlite3.connect(path)) as conn:
        pending = conn.execute("SELECT COUNT(*) FROM items WHERE state = 'pending'").fetchone()
        dead = conn.execute("SELECT COUNT(*) FROM items WHERE state = 'dead'").fetchone()
    return int(pending[0]), int(dead[0])


def table(outcomes: list[Outcome], faults: dict[str, str]) -> str:
    cols = ["scenario", "fault injected", "events api/live", "segments api/live", "lost",
            "dup", "in order", "final status", "recording", "summary"]
    rows = [[o.scenario, faults.get(o.scenario, o.fault), o.row.get("events", "?"),
             o.row.get("segments", "?"), str(o.row.get("lost", "?")),
             str(o.row.get("dup", "?")), o.row.get("in_order", "?"), o.row.get("status", "?"),
             o.row.get("recording", "?"), o.row.get("summary", "?")] for o in outcomes]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    (tmp_path / "api").mkdir()
    api = api_process(tmp_path / "api", KEY, log_dir=tmp_path)
    api.start()
    pin_port(api)
    proxy = FaultProxy(api.url)
    await proxy.start()
    session = aiohttp.ClientSession()
    s = Suite(tmp_path, api, proxy, session)
    try:
        yield s
    finally:
        for proc in s.workers:
            proc.kill()
        api.stop()
        await proxy.close()
        await session.close()


async def test_nothing_is_lost(suite: Suite, capsys: pytest.CaptureFixture[str]) -> None:
    status, agent = await suite.post("/v1/agents", AGENT)
    assert status == 201
    suite.agent_id = agent["id"]
    faults: dict[str, str] = {}
    w1 = suite.worker("voice-1")
    url = w1.start()

    async def run(name: str, fault: str, **kwargs: Any) -> Outcome:
        outcome = Outcome(name, fault)
        suite.outcomes.append(outcome)
        await talk(kwargs.pop("url", url), suite.agent_id, outcome, **kwargs)
        return outcome

    try:
        # 1. baseline (the worker caches the agent config)
        base = await run("baseline", "none")
        await settle(suite, base)

        # 2. the API is down for a whole call: process stopped, nothing listening
        suite.api.stop()
        await suite.proxy.stop()
        down = await run("api_down", "API process + proxy down for the whole call")
        await asyncio.sleep(1.0)
        suite.api.start()
        await suite.proxy.start()
        await settle(suite, down, timeout=90)

        # 3. every other request answered 500
        suite.proxy.injected.clear()
        suite.proxy.rule = every_other(500)
        c500 = await run("api_500", "")
        await asyncio.sleep(1.0)
        suite.proxy.rule = None
        faults["api_500"] = f"{suite.proxy.injected.get('500', 0)} x HTTP 500 (every other request)"
        await settle(suite, c500)

        # 4. rate limited: 429 with Retry-After: 1
        suite.proxy.injected.clear()
        suite.proxy.rule = first_n_rate_limited(12)
        c429 = await run("api_429", "")
        suite.proxy.rule = None
        faults["api_429"] = f"{suite.proxy.injected.get('429', 0)} x HTTP 429 (Retry-After: 1)"
        await settle(suite, c429)

        # 5. SIGKILL mid-reply, then the same worker (same data dir) starts again
        async def kill(_caller: StreamCaller) -> None:
            w1.signal(signal.SIGKILL)
            w1.wait(10)

        killed = await run("sigkill", "SIGKILL mid-reply, worker restarted", during=kill)
        url = w1.start()
        await settle(suite, killed, timeout=60)

        # 6. SIGTERM mid-reply: the worker drains (2 s), ends the call, reports, exits
        async def term(_caller: StreamCaller) -> None:
            w1.signal(signal.SIGTERM)

        termed = await run("sigterm", "SIGTERM mid-reply (drain 2 s)", during=term)
        exit_code = await asyncio.to_thread(w1.wait, 60)
        faults["sigterm"] = f"SIGTERM mid-reply (drain 2 s), exit {exit_code}"
        await settle(suite, termed)

        for outcome in suite.outcomes:
            await verify(suite, outcome)
        pending, dead = outbox_state(suite.tmp / "voice-1")
        w1.start()  # the outbox is empty: a restart has nothing left to send
        w1.stop()
    finally:
        with capsys.disabled():
            print("\n\nFAULT SUITE: what was tried and what was lost\n")
            print(table(suite.outcomes, faults))
            print()

    assert (pending, dead) == (0, 0), f"outbox: {pending} pending, {dead} dead"
    for outcome in suite.outcomes:
        row = outcome.row
        assert row["lost"] == 0 and row["dup"] == 0, (outcome.scenario, row)
        assert row["in_order"] == "yes", (outcome.scenario, row)
    by_name = {o.scenario: o.row for o in suite.outcomes}
    for name in ("baseline", "api_down", "api_500", "api_429", "sigterm"):
        row = by_name[name]
        assert row["status"].startswith("completed"), (name, row)
        assert row["recording"] == "yes" and row["summary"] == "resolved", (name, row)
    assert by_name["sigkill"]["status"] == "failed (worker_lost)"
    assert by_name["sigterm"]["status"] == "completed (worker_shutdown)"
