"""The "livekit" scenario: voice-to-voice inside a LiveKit room, worker vs LiveKit Agents.

Everything runs inside a private network namespace (tests/livekit/netns.py: only loopback
addresses exist, so every ICE candidate is 127.x and no media can leave the machine): a
real ``livekit-server`` (scripts/setup/livekit-server.sh), the provider stand-ins of
benchmarks/standins.py, and either ``rymi-worker livekit`` (with its local /v1 API) or
LiveKit Agents' ``AgentSession`` (benchmarks/livekit_agent.py). A caller participant
(``livekit`` rtc SDK, in this process) joins a room whose token dispatches the agent,
waits for the greeting, then asks, in real time, espeak-ng speech, and listens.

- voice-to-voice: first loud agent frame received after the question − the question's
  last voiced frame handed to the caller's ``AudioSource`` (both ``time.time()``);
- endpoint silence / overhead: as in the Twilio scenarios, with the stack's VAD decision
  (the worker's ``user.speech_stopped`` event from the room's ``rymi.events`` data;
  LiveKit Agents' ``user_state_changed`` written by the agent process).

Both stacks pay the same room path (Opus, the SFU, the caller's jitter buffer): unlike the
Twilio scenarios, "overhead" here includes the agent → SFU → caller leg.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.scenarios import QUESTION, turn_row
from benchmarks.stats import summary
from benchmarks.systems import (
    REPO,
    SUT_CORE,
    _event_time,
    _spawn,
    _stop,
    _wait_line,
    cpu_seconds,
    provider_env,
    standins_process,
    start_local_api,
)
from pipelines.pacing import FrameClock

LK_AGENTS_VENV = Path(os.environ.get("RYMI_LIVEKIT_AGENTS_VENV",
                                     "/var/cache/rymi/venv-livekit-agents"))
MIC_RATE = 48000
FRAME_S = 0.02
LOUD_RMS = 300.0  # int16 RMS: the STT stand-in's speech floor, and "agent audio heard"
QUIET_S = 0.6  # this long without a loud frame: the agent finished speaking
RYMI_AGENT_NAME = "rymi-bench"
LK_AGENT_NAME = "lk-bench"


# --------------------------------------------------------------------------- the caller


@dataclass
class RoomCaller:
    """One caller in its own room: a real rtc participant with wall-clock timelines."""

    url: str
    token: str
    room_name: str
    sent: list[float] = field(default_factory=list)  # time.time() of every mic frame
    heard: list[tuple[float, float]] = field(default_factory=list)  # (time, rms), agent audio
    events: list[dict[str, Any]] = field(default_factory=list)  # rymi.events packets
    turns: list[dict[str, float]] = field(default_factory=list)
    greeting_at: float | None = None
    joined_at: float = 0.0
    left_at: float = 0.0
    error: str | None = None
    _pending: list[bytes] = field(default_factory=list)
    _last_voiced_at: float | None = None
    _voiced_left: int = 0
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _room: Any = None
    _source: Any = None

    async def join(self) -> None:
        from livekit import rtc

        self._room = room = rtc.Room()
        room.on("track_subscribed", self._on_track)
        room.on("data_received", self._on_data)
        await room.connect(self.url, self.token, rtc.RoomOptions(auto_subscribe=True))
        self.joined_at = time.time()
        self._source = rtc.AudioSource(MIC_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self._tasks.append(asyncio.create_task(self._mic()))

    async def leave(self) -> None:
        self.left_at = time.time()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._room is not None:
            with contextlib.suppress(Exception):
                await self._room.disconnect()

    def say(self, pcm48k: bytes) -> None:
        """Queue speech; the mic task sends it in real time and notes its last voiced frame."""
        size = int(MIC_RATE * FRAME_S) * 2
        frames = [pcm48k[i:i + size].ljust(size, b"\0") for i in range(0, len(pcm48k), size)]
        voiced = [_rms(f) >= LOUD_RMS for f in frames]
        last = max((i for i, v in enumerate(voiced) if v), default=-1)
        self._pending.extend(frames)
        self._voiced_left = last + 1
        self._last_voiced_at = None

    async def _mic(self) -> None:
        from livekit import rtc

        samples = int(MIC_RATE * FRAME_S)
        silence = bytes(samples * 2)
        clock = FrameClock(FRAME_S)
        while True:
            data = self._pending.pop(0) if self._pending else silence
            await self._source.capture_frame(rtc.AudioFrame(data, MIC_RATE, 1, samples))
            now = time.time()
            self.sent.append(now)
            if self._voiced_left:
                self._voiced_left -= 1
                if not self._voiced_left:
                    self._last_voiced_at = now
            await clock.wait()

    def _on_track(self, track: Any, _pub: Any, participant: Any) -> None:
        from livekit import rtc

        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._tasks.append(asyncio.create_task(self._listen(track)))

    async def _listen(self, track: Any) -> None:
        from livekit import rtc

        async for event in rtc.AudioStream(track, sample_rate=16000, num_channels=1):
            self.heard.append((time.time(), _rms(bytes(event.frame.data))))

    def _on_data(self, packet: Any) -> None:
        if packet.topic == "rymi.events":
            with contextlib.suppress(ValueError):
                self.events.append(json.loads(packet.data))

    # ------------------------------------------------------------------ waiting

    def first_loud_after(self, since: float) -> float | None:
        return next((at for at, rms in self.heard if at > since and rms >= LOUD_RMS), None)

    async def wait_loud_after(self, since: float, timeout: float) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.first_loud_after(since)
            if found is not None:
                return found
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no agent audio within {timeout:.0f} s")

    async def wait_quiet(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            loud = [at for at, rms in self.heard if rms >= LOUD_RMS]
            if loud and time.time() - loud[-1] >= QUIET_S:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"the agent did not stop speaking within {timeout:.0f} s")

    async def ask(self, pcm48k: bytes, timeout: float = 15.0) -> None:
        self.say(pcm48k)
        while self._last_voiced_at is None:  # noqa: ASYNC110 - set by the mic task
            await asyncio.sleep(0.005)
        last = self._last_voiced_at
        first = await self.wait_loud_after(last, timeout)
        self.turns.append({"last_voiced": last, "first_audio": first})
        await self.wait_quiet(20.0)

    def frame_sent_before(self, at: float) -> float | None:
        return next((t for t in reversed(self.sent) if t <= at), None)


def _rms(frame: bytes) -> float:
    samples = np.frombuffer(frame, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples))) if samples.size else 0.0


def room_token(api_key: str, api_secret: str, room: str, agent_name: str,
               metadata: dict[str, Any]) -> str:
    """A caller token whose room configuration dispatches ``agent_name`` (explicit dispatch)."""
    from livekit import api

    grant = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                            can_publish_data=True)
    dispatch = api.RoomConfiguration(agents=[api.RoomAgentDispatch(
        agent_name=agent_name, metadata=json.dumps(metadata))])
    return (api.AccessToken(api_key, api_secret).with_identity("caller-" + room)
            .with_name("caller").with_grants(grant).with_room_config(dispatch).to_jwt())


# --------------------------------------------------------------------------- the stacks


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its live descendants (LiveKit Agents: job processes)."""
    total = 0.0
    stack = [pid]
    while stack:
        current = stack.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                stack.extend(int(c) for c in children)
    return total


class RoomStack:
    name: str
    agent_name: str
    pid: int = 0

    def __init__(self, workdir: Path, standins: dict[str, Any], lk: Any) -> None:
        self.workdir = workdir
        self.standins = standins
        self.lk = lk
        workdir.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def metadata(self) -> dict[str, Any]:
        return {}

    def vad_stops(self, caller: RoomCaller) -> list[float]:
        return []

    def cpu_seconds(self) -> float:
        return _tree_cpu(self.pid) if self.pid else 0.0


class RymiRoomStack(RoomStack):
    """``rymi-worker livekit`` reporting to the local /v1 API (both started here)."""

    name = "rymi"
    agent_name = RYMI_AGENT_NAME

    def __init__(self, workdir: Path, standins: dict[str, Any], lk: Any) -> None:
        super().__init__(workdir, standins, lk)
        self.key = "rymi_" + secrets.token_hex(16)
        self.agent_id = ""
        self._api: subprocess.Popen[bytes] | None = None
        self._worker: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RYMI_", "DEEPGRAM_", "OPENAI_", "LIVEKIT_"))}
        env["PYTHONPATH"] = str(REPO)
        self._api, api_url, self.agent_id = await start_local_api(self.workdir, self.key, env)
        worker_env = {
            **env,
            "PYTHONUNBUFFERED": "1",
            "RYMI_API_URL": api_url,
            "RYMI_API_KEY": self.key,
            "RYMI_HOST": "127.0.0.1",
            "RYMI_PORT": "0",
            "RYMI_DATA_DIR": str(self.workdir / "worker"),
            "RYMI_MAX_CALLS": "100",
            "RYMI_LIVEKIT_URL": self.lk.url,
            "RYMI_LIVEKIT_API_KEY": self.lk.api_key,
            "RYMI_LIVEKIT_API_SECRET": self.lk.api_secret,
            "RYMI_LIVEKIT_AGENT_NAME": self.agent_name,
            **provider_env(self.standins),
        }
        log = self.workdir / "worker.log"
        self._worker = _spawn([sys.executable, "-m", "runtime.cli", "livekit"], log,
                              worker_env, SUT_CORE)
        await _wait_line(log, "registered with LiveKit as", self._worker, 90)
        self.pid = self._worker.pid

    async def stop(self) -> None:
        _stop(self._worker, 40)
        _stop(self._api)

    def metadata(self) -> dict[str, Any]:
        return {"agent_id": self.agent_id}

    def vad_stops(self, caller: RoomCaller) -> list[float]:
        return sorted(_event_time(e["at"]) for e in caller.events
                      if e.get("type") == "user.speech_stopped" and "at" in e)


class AgentsRoomStack(RoomStack):
    """LiveKit Agents' ``AgentSession`` (benchmarks/livekit_agent.py), process per job."""

    name = "livekit-agents"
    agent_name = LK_AGENT_NAME

    def __init__(self, workdir: Path, standins: dict[str, Any], lk: Any,
                 idle_processes: int = 3) -> None:
        super().__init__(workdir, standins, lk)
        self.events_file = workdir / "agent-events.jsonl"
        self.idle_processes = idle_processes
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def python() -> Path:
        return LK_AGENTS_VENV / "bin" / "python"

    @classmethod
    def ensure_installed(cls) -> None:
        """Create the virtualenv on first use (benchmarks/setup_livekit_agents.sh)."""
        script = REPO / "benchmarks" / "setup_livekit_agents.sh"
        subprocess.run(["bash", str(script)], check=True, stdout=sys.stderr)

    async def start(self) -> None:
        self.ensure_installed()
        self.events_file.unlink(missing_ok=True)
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "PYTHONUNBUFFERED": "1",
            "LIVEKIT_URL": self.lk.url,
            "LIVEKIT_API_KEY": self.lk.api_key,
            "LIVEKIT_API_SECRET": self.lk.api_secret,
            "BENCH_AGENT_NAME": self.agent_name,
            "BENCH_DEEPGRAM_URL": self.standins["deepgram"],
            "BENCH_OPENAI_URL": self.standins["openai"],
            "BENCH_EVENTS_FILE": str(self.events_file),
            "BENCH_IDLE_PROCESSES": str(self.idle_processes),
            # nothing may reach LiveKit Cloud or download a model
            "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0",
            "HF_HUB_OFFLINE": "1",
        }
        log = self.workdir / "agent.log"
        self._proc = _spawn([str(self.python()), str(REPO / "benchmarks" / "livekit_agent.py"),
                             "start", "--log-level",
                              os.environ.get("BENCH_LK_LOG_LEVEL", "INFO")], log, env, SUT_CORE)
        await _wait_line(log, "registered worker", self._proc, 120)
        self.pid = self._proc.pid
        # the idle job processes are warm (Silero loaded) before the first call
        for _ in range(300):  # up to a minute
            text = log.read_text(errors="replace")
            if text.count("process initialized") >= self.idle_processes:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)

    async def stop(self) -> None:
        _stop(self._proc, 30)

    def vad_stops(self, caller: RoomCaller) -> list[float]:
        out: list[float] = []
        if self.events_file.exists():
            for line in self.events_file.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    item = json.loads(line)
                    if item["room"] == caller.room_name and item["type"] == "vad_stop":
                        out.append(float(item["at"]))
        return sorted(out)


STACKS: dict[str, type[RoomStack]] = {"rymi": RymiRoomStack,
                                      "livekit-agents": AgentsRoomStack}


# --------------------------------------------------------------------------- the runs


async def _call(stack: RoomStack, lk: Any, caller: RoomCaller, *, delay: float, turns: int,
                rng: random.Random, question: bytes) -> None:
    await asyncio.sleep(delay)
    try:
        await caller.join()
        greeting = await caller.wait_loud_after(caller.joined_at, 40)
        caller.greeting_at = greeting
        await caller.wait_quiet(20)
        for _ in range(turns):
            await asyncio.sleep(rng.uniform(0.3, 0.8))
            await caller.ask(question)
    except Exception as exc:
        caller.error = f"{type(exc).__name__}: {exc}"
    finally:
        await caller.leave()


async def level(stack: RoomStack, lk: Any, calls: int, turns: int, budget_s: float,
                configured_s: float) -> dict[str, Any]:
    """``calls`` concurrent rooms, ``turns`` questions each; figures as in scenarios.latency."""
    from tests.support.speech import speech

    question = speech(QUESTION, rate=MIC_RATE)
    rng = random.Random(calls)
    callers = []
    for _ in range(calls):
        room = f"bench-{stack.name}-{secrets.token_hex(4)}"
        token = room_token(lk.api_key, lk.api_secret, room, stack.agent_name, stack.metadata())
        callers.append(RoomCaller(lk.url, token, room))
    cpu0, t0 = stack.cpu_seconds(), time.time()
    sfu0 = cpu_seconds(lk.pid)
    await asyncio.gather(*(_call(stack, lk, c, delay=0.3 * i, turns=turns, rng=rng,
                                 question=question) for i, c in enumerate(callers)))
    cpu1, t1 = stack.cpu_seconds(), time.time()
    sfu1 = cpu_seconds(lk.pid)
    await asyncio.sleep(0.5)  # the agent's last event lines
    rows: list[dict[str, Any]] = []
    unmatched = 0
    for index, caller in enumerate(callers):
        stops = stack.vad_stops(caller)
        for number, turn in enumerate(caller.turns):
            row = turn_row(index, number, turn, stops, caller.frame_sent_before,
                           budget_s=budget_s, configured_s=configured_s)
            unmatched += "overhead_ms" not in row
            rows.append(row)
    call_seconds = sum(max(0.0, c.left_at - c.joined_at) for c in callers if c.joined_at)
    errors = [c.error for c in callers if c.error]
    return {
        "framework": stack.name,
        "calls": calls,
        "turns_per_call": turns,
        "turns": rows,
        "answered": len(rows),
        "with_vad_decision": len([r for r in rows if "overhead_ms" in r]),
        "expected": calls * turns,
        "errors": errors[:20],
        "error_count": len(errors),
        "unmatched_vad": unmatched,
        "greeting_after_join_ms": [round((c.greeting_at - c.joined_at) * 1000, 1)
                                   for c in callers if c.greeting_at],
        "wall_s": round(t1 - t0, 2),
        "call_seconds": round(call_seconds, 2),
        "cpu_ms_per_call_second": (round((cpu1 - cpu0) * 1000 / call_seconds, 2)
                                   if call_seconds else None),
        "sfu_cpu_ms_per_call_second": (round((sfu1 - sfu0) * 1000 / call_seconds, 2)
                                       if call_seconds else None),
        "summary": {
            "voice_to_voice_ms": summary(r["voice_to_voice_ms"] for r in rows),
            "endpoint_silence_ms": summary(r.get("endpoint_silence_ms") for r in rows),
            "overhead_ms": summary(r.get("overhead_ms") for r in rows),
            "overhead_gross_ms": summary(r.get("overhead_gross_ms") for r in rows),
            "after_vad_ms": summary(r.get("after_vad_ms") for r in rows),
        },
    }


async def run(frameworks: list[str], levels: list[int], delays: dict[str, float],
              workdir: Path, progress: Callable[[str], None] = lambda _: None,
              turns_for: Callable[[int], int] = lambda calls: 5 if calls == 1 else 3
              ) -> dict[str, Any]:
    """Every framework at every level, in one namespace with one livekit-server."""
    from tests.livekit.lkserver import LiveKitServer
    from tests.livekit.netns import NetNs

    out: dict[str, Any] = {"runs": [], "skipped": None, "versions": {}}
    try:
        netns = NetNs.create()
    except (RuntimeError, OSError) as exc:
        # without the namespace, libwebrtc would offer the host's LAN addresses: not run
        out["skipped"] = f"no loopback-only network namespace: {exc}"
        return out
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, before the run
    try:
        with netns.entered():
            lk = LiveKitServer(workdir=workdir / "livekit", netns=None)
            lk.workdir.mkdir(parents=True, exist_ok=True)
            progress("livekit: starting livekit-server in a loopback-only namespace")
            lk.start()  # a child of this (namespaced, load-core) thread
            try:
                with standins_process(delays, workdir) as urls:
                    from benchmarks.standins import calibrate

                    floor = await calibrate(urls)
                    out["standin_floor_ms"] = floor
                    configured = delays["stt"] + delays["llm"] + delays["tts"]
                    budget = configured + sum(floor.values()) / 1000
                    for name in frameworks:
                        stack = STACKS[name](workdir / name, urls, lk)
                        progress(f"livekit: starting {name}")
                        await stack.start()
                        try:
                            for calls in levels:
                                progress(f"livekit: {name}, {calls} room(s)")
                                out["runs"].append(await level(
                                    stack, lk, calls, turns_for(calls), budget, configured))
                        finally:
                            await stack.stop()
            finally:
                lk.stop()
    finally:
        netns.close()
    out["versions"] = _versions()
    return out


def _versions() -> dict[str, str | None]:
    import importlib.metadata as md

    found: dict[str, str | None] = {}
    for dist in ("livekit", "livekit-agents"):
        with contextlib.suppress(md.PackageNotFoundError):
            found[dist] = md.version(dist)
    version_file = Path("/var/cache/rymi/bin/livekit-server.version")
    found["livekit-server"] = (version_file.read_text().strip()
                               if version_file.exists() else None)
    return found
