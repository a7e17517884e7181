"""The systems under test, each a process of its own pinned to one core.

- :class:`RymiSystem`: ``rymi-worker start`` reporting to the local ``/v1`` API
  (``python -m runtime.local_api``, another process, on the load generator's core), as a
  production worker reports to the hosted API;
- :class:`PipecatSystem`: benchmarks/pipecat_bot.py in Pipecat's own virtualenv.

Both take Twilio calls at ``/v1/carriers/twilio/answer`` and use the same provider
stand-ins. Each tells the benchmark what only it knows: when its VAD decided (the worker
reports ``user.speech_started``/``user.speech_stopped`` events; the Pipecat bot writes its
Silero decisions to a file), its event-loop lag counters, its CPU time and RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.caller import BenchCaller

REPO = Path(__file__).resolve().parents[1]
TWILIO_TOKEN = "bench-twilio-auth-token-0123456789abcdef"
PIPECAT_VENV = Path(os.environ.get("RYMI_PIPECAT_VENV", "/var/cache/rymi/venv-pipecat"))
SUT_CORE = 0  # the system under test
LOAD_CORE = 1  # the benchmark, the stand-ins and the local API
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def pin(core: int) -> None:
    """Pin the calling process (and its future children) to one core, if it exists."""
    with contextlib.suppress(OSError, AttributeError):
        if core < (os.cpu_count() or 1):
            os.sched_setaffinity(0, {core})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def provider_env(standins: dict[str, Any]) -> dict[str, str]:
    """A benchmarked rymi worker's settings: the stand-ins as its providers, plus any
    ``BENCH_RYMI_*`` of this run (e.g. BENCH_RYMI_STALL_TRACE_MS=5) as ``RYMI_*``, without
    the caller's own RYMI_* environment leaking into the worker."""
    return {
        "RYMI_DEEPGRAM_API_KEY": "bench",
        "RYMI_DEEPGRAM_BASE_URL": standins["deepgram"],
        "RYMI_OPENAI_API_KEY": "bench",
        "RYMI_OPENAI_BASE_URL": standins["openai"],
        "RYMI_OFFLINE_STT_DECODERS": "0",
        "RYMI_LOG_LEVEL": "info",
        **{k[len("BENCH_"):]: v for k, v in os.environ.items() if k.startswith("BENCH_RYMI_")},
    }


@contextlib.contextmanager
def standins_process(delays: dict[str, float], workdir: Path) -> Any:
    """benchmarks.standins as a process on the load generator's core; yields its URLs.
    Blocking: it is entered once, before anything is measured."""
    log = (workdir / "standins.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.standins", "--stt-delay", str(delays["stt"]),
         "--llm-delay", str(delays["llm"]), "--tts-delay", str(delays["tts"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO, text=True,
        preexec_fn=lambda: pin(LOAD_CORE),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the provider stand-ins did not start; see {log.name}")
        yield json.loads(line)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime + stime


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


async def _wait_line(path: Path, marker: str, proc: subprocess.Popen[bytes],
                     timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = path.read_text(errors="replace") if path.exists() else ""  # noqa: ASYNC240
        for line in text.splitlines():
            if marker in line:
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited ({proc.returncode}); see {path}")
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{marker!r} not seen in {path}")


def _spawn(args: list[str], log: Path, env: dict[str, str], core: int) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(
        args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        cwd=REPO, preexec_fn=lambda: pin(core), start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _event_time(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


async def start_local_api(workdir: Path, key: str, env: dict[str, str]
                          ) -> tuple[subprocess.Popen[bytes], str, str]:
    """The local ``/v1`` API on the load core, with the benchmark's agent created in it:
    (process, URL, agent id)."""
    log = workdir / "api.log"
    proc = _spawn([sys.executable, "-m", "runtime.local_api", "--port", "0",
                   "--data-dir", str(workdir / "api"), "--key", key,
                   "--log-level", "warning"], log, env, LOAD_CORE)
    line = await _wait_line(log, "listening on", proc, 30)
    url = line.rsplit(" ", 1)[1].strip()
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/v1/agents", json=agent_config(), headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"agent not created: {resp.status} {body}")
    return proc, url, str(body["id"])


class System(ABC):
    name: str
    url: str = ""
    agent_id: str = "bench"
    pid: int = 0

    def __init__(self, workdir: Path, standins: dict[str, Any]) -> None:
        self.workdir = workdir
        self.standins = standins
        shutil.rmtree(workdir, ignore_errors=True)  # a fresh API and worker every time
        workdir.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    @abstractmethod
    async def loop_counters(self, session: aiohttp.ClientSession) -> dict[str, Any]: ...

    @abstractmethod
    async def vad_events(self, callers: list[BenchCaller]
                         ) -> dict[BenchCaller, list[tuple[str, float]]]:
        """Per call: ("vad_start" | "vad_stop", wall time of the decision), in order."""

    async def engine_underruns(self, callers: list[BenchCaller]) -> int | None:
        """Outbound underruns the engine itself counted (None: it does not say)."""
        return None

    def caller(self, pacer: Any) -> BenchCaller:
        return BenchCaller(self.url, self.agent_id, auth_token=TWILIO_TOKEN, pacer=pacer)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)


#: the agent both stacks run (the worker's config; pipecat_bot.py mirrors it)
def agent_config() -> dict[str, Any]:
    return {
        "name": "bench",
        "prompt": "You are the front desk of a small store. Answer in one or two short "
                  "sentences.",
        "first_message": "Hello! Thanks for calling. How can I help you today?",
        "stt": {"provider": "deepgram", "model": "nova-3",
                "options": {"endpointing_ms": None, "utterance_end_ms": None,
                            "vad_events": False, "interim_results": True}},
        "llm": {"provider": "openai", "model": "gpt-4o-mini"},
        "tts": {"provider": "deepgram", "voice": "aura-2-thalia-en"},
        "vad": {"min_speech_ms": 100, "min_silence_ms": 300},
        # answer as soon as the final transcript is in (Pipecat: user_speech_timeout=0)
        "endpointing": {"min_delay_ms": 0, "max_delay_ms": 3000},
        # interrupt at the VAD's speech start (Pipecat's default behaviour)
        "interruption": {"min_duration_ms": 0},
        "recording_enabled": False,  # the Pipecat example's recording is left out too
    }


class RymiSystem(System):
    name = "rymi"

    def __init__(self, workdir: Path, standins: dict[str, Any]) -> None:
        super().__init__(workdir, standins)
        self.api_url = ""
        self.key = "rymi_" + secrets.token_hex(16)
        self._api: subprocess.Popen[bytes] | None = None
        self._worker: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        # BENCH_WORKER_PYTHONPATH: an experiment's sitecustomize.py (docs/benchmarks.md)
        extra = os.environ.get("BENCH_WORKER_PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (extra, str(REPO)) if p)}
        for name in list(env):
            if name.startswith(("RYMI_", "DEEPGRAM_", "OPENAI_", "ELEVENLABS_", "TWILIO_")):
                del env[name]
        self._api, self.api_url, self.agent_id = await start_local_api(
            self.workdir, self.key, env)
        worker_env = {
            **env,
            "RYMI_API_URL": self.api_url,
            "RYMI_API_KEY": self.key,
            "RYMI_TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
            **provider_env(self.standins),
        }
        worker_log = self.workdir / "worker.log"
        self._worker = _spawn(
            [sys.executable, "-m", "runtime.cli", "start", "--port", "0", "--data-dir",
             str(self.workdir / "worker"), "--max-calls", "2000"], worker_log, worker_env,
            SUT_CORE)
        line = await _wait_line(worker_log, "listening on", self._worker, 60)
        self.url = line.rsplit(" ", 1)[1].strip()
        self.pid = self._worker.pid

    async def stop(self) -> None:
        _stop(self._worker, 40)
        _stop(self._api)

    async def loop_counters(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.url}/metrics/loop") as resp:
            return dict(await resp.json())

    async def _api_get(self, session: aiohttp.ClientSession, path: str) -> Any:
        async with session.get(f"{self.api_url}{path}",
                               headers={"Authorization": f"Bearer {self.key}"}) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def _call_ids(self, session: aiohttp.ClientSession) -> dict[str, str]:
        """carrier call id (CallSid) → call id, from the API."""
        out: dict[str, str] = {}
        offset = 0
        while True:
            page = await self._api_get(session, f"/v1/calls?limit=200&offset={offset}")
            for call in page["calls"]:
                sid = (call.get("metadata") or {}).get("carrier_call_id")
                if sid:
                    out[sid] = call["id"]
            offset += len(page["calls"])
            if not page["calls"] or offset >= page.get("total", offset):
                return out

    async def _events(self, session: aiohttp.ClientSession, call_id: str
                      ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = await self._api_get(
                session, f"/v1/calls/{call_id}/events?limit=200&offset={len(out)}")
            out.extend(page["events"])
            if not page["events"] or len(out) >= page.get("total", len(out)):
                return out

    async def _all_events(self, callers: list[BenchCaller]
                          ) -> dict[BenchCaller, list[dict[str, Any]]]:
        """Every call's events, once the worker's outbox has delivered them."""
        async with aiohttp.ClientSession() as session:
            end = time.monotonic() + 30
            ids: dict[str, str] = {}
            while time.monotonic() < end:
                ids = await self._call_ids(session)
                if all(c.carrier_call_id in ids for c in callers):
                    break
                await asyncio.sleep(0.5)
            sem = asyncio.Semaphore(8)

            async def one(caller: BenchCaller) -> list[dict[str, Any]]:
                call_id = ids.get(caller.carrier_call_id)
                if call_id is None:
                    return []
                async with sem:
                    return await self._events(session, call_id)

            results = await asyncio.gather(*(one(c) for c in callers))
        return dict(zip(callers, results, strict=True))

    async def vad_events(self, callers: list[BenchCaller]
                         ) -> dict[BenchCaller, list[tuple[str, float]]]:
        await asyncio.sleep(1.0)  # the outbox delivers within a few hundred ms
        names = {"user.speech_started": "vad_start", "user.speech_stopped": "vad_stop"}
        out: dict[BenchCaller, list[tuple[str, float]]] = {}
        for caller, events in (await self._all_events(callers)).items():
            out[caller] = sorted(
                ((names[e["type"]], _event_time(e["at"])) for e in events if e["type"] in names),
                key=lambda item: item[1])
        return out

    async def engine_underruns(self, callers: list[BenchCaller]) -> int | None:
        total = 0
        for events in (await self._all_events(callers)).values():
            total += sum(int(e["data"].get("underruns", 0)) for e in events
                         if e["type"] == "turn.metrics")
        return total


class PipecatSystem(System):
    name = "pipecat"

    def __init__(self, workdir: Path, standins: dict[str, Any]) -> None:
        super().__init__(workdir, standins)
        self.events_file = workdir / "pipecat-events.jsonl"
        self._proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def python() -> Path:
        return PIPECAT_VENV / "bin" / "python"

    @classmethod
    def ensure_installed(cls) -> None:
        """Create the virtualenv on first use (benchmarks/setup_pipecat.sh)."""
        if cls.python().exists():
            return
        script = REPO / "benchmarks" / "setup_pipecat.sh"
        print(f"installing Pipecat into {PIPECAT_VENV} (once) …", file=sys.stderr, flush=True)
        subprocess.run(["bash", str(script)], check=True)

    async def start(self) -> None:
        self.ensure_installed()
        self.events_file.unlink(missing_ok=True)
        port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/root"),
            "BENCH_DEEPGRAM_URL": self.standins["deepgram"],
            "BENCH_OPENAI_URL": self.standins["openai"],
            "BENCH_EVENTS_FILE": str(self.events_file),
        }
        log = self.workdir / "pipecat.log"
        self._proc = _spawn([str(self.python()), str(REPO / "benchmarks" / "pipecat_bot.py"),
                             "--port", str(port)], log, env, SUT_CORE)
        self.url = f"http://127.0.0.1:{port}"
        self.pid = self._proc.pid
        end = time.monotonic() + 90
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < end:
                if self._proc.poll() is not None:
                    raise RuntimeError(f"the Pipecat bot exited; see {log}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}/healthz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.2)
        raise TimeoutError(f"the Pipecat bot did not start; see {log}")

    async def stop(self) -> None:
        _stop(self._proc)

    async def loop_counters(self, session: aiohttp.ClientSession) -> dict[str, Any]:
        async with session.get(f"{self.url}/metrics/loop") as resp:
            return dict(await resp.json())

    async def vad_events(self, callers: list[BenchCaller]
                         ) -> dict[BenchCaller, list[tuple[str, float]]]:
        by_stream: dict[str, list[tuple[str, float]]] = defaultdict(list)
        if self.events_file.exists():
            for line in self.events_file.read_text().splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    item = json.loads(line)
                    by_stream[item["stream"]].append((item["type"], float(item["at"])))
        return {c: sorted(by_stream.get(c.stream_id, []), key=lambda i: i[1]) for c in callers}


def pipecat_version() -> str | None:
    python = PipecatSystem.python()
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m;"
                          "print(m.version('pipecat-ai'))"], capture_output=True, text=True)
    return out.stdout.strip() or None


def have_pipecat_setup() -> bool:
    return PipecatSystem.python().exists() or shutil.which("bash") is not None
