"""A Twilio caller for load: the test suite's ``TwilioCaller``, made cheap per call.

``tests/carriers/clients.py``'s ``TwilioCaller`` signs the answer webhook, follows the
TwiML and speaks Twilio's exact messages; it is used as is for that. What changes here is
only the cost of hundreds of calls in one process: one shared :class:`Pacer` sends every
call's 20 ms frame each tick (instead of a timer per call), received audio is not
buffered but modelled (when each frame would play), marks are acknowledged when playback
reaches them, and ``clear`` returns the pending marks as Twilio does.

Every timestamp is ``time.time()``, comparable with the worker's event times.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tests.carriers.clients import Received, TwilioCaller

FRAME_S = 0.02
SILENCE = b"\xff" * 160
VOICED_RMS = 300.0  # the STT stand-in's speech floor
#: a reply's frames arriving after the caller's buffer ran dry for longer than this
UNDERRUN_S = 0.02


def mulaw_rms(frame: bytes) -> float:
    from tests.fakes._base import MULAW_TO_PCM

    samples = MULAW_TO_PCM[np.frombuffer(frame, dtype=np.uint8)].astype(np.float64)
    return float(np.sqrt(np.mean(samples * samples))) if len(samples) else 0.0


@dataclass(slots=True)
class Utterance:
    """One thing the caller said, with the wire times of its voiced part."""

    frames: list[bytes]
    voiced: list[bool]
    first_voiced_at: float | None = None
    last_voiced_at: float | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Pacer:
    """Sends one frame per call every 20 ms for all calls of the process.

    Calls are spread over ``SLOTS`` phases of the 20 ms period, as independent phone calls
    are: a carrier does not deliver every call's frame on the same millisecond, and a
    pacer that did would measure its own burst instead of the worker.
    """

    SLOTS = 10

    def __init__(self) -> None:
        self.slots: list[set[BenchCaller]] = [set() for _ in range(self.SLOTS)]
        self.late: list[float] = []  # how late each tick ran (load generator health)
        self._next = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, caller: BenchCaller) -> None:
        self.slots[self._next % self.SLOTS].add(caller)
        self._next += 1

    def discard(self, caller: BenchCaller) -> None:
        for slot in self.slots:
            slot.discard(caller)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pacer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step = FRAME_S / self.SLOTS
        deadline = loop.time()
        slot = 0
        while True:
            now = loop.time()
            self.late.append(now - deadline)
            wall = time.time()
            for caller in list(self.slots[slot]):
                await caller.tick(wall)
            slot = (slot + 1) % self.SLOTS
            deadline += step
            delay = deadline - loop.time()
            if delay < -0.2:  # hopelessly behind: do not burst, skip ahead
                deadline = loop.time()
                delay = 0.0
            await asyncio.sleep(max(0.0, delay))


class BenchCaller(TwilioCaller):
    """A Twilio call whose outbound frames come from a shared :class:`Pacer`."""

    def __init__(self, base_url: str, agent_id: str, *, auth_token: str, pacer: Pacer,
                 **kwargs: Any) -> None:
        super().__init__(base_url, agent_id, auth_token=auth_token, **kwargs)
        self.pacer = pacer
        self.start_sent_at = 0.0
        self.audio_at: list[float] = []  # arrival of each agent audio message
        self.sent_at: list[float] = []  # when each caller frame went out
        self.clear_at: list[float] = []
        self.underruns = 0
        self.playing_until = 0.0
        self.last_audio_at = 0.0
        self.failed: str | None = None
        self._utterances: list[Utterance] = []
        self._current: Utterance | None = None
        self._index = 0
        self._mark_timers: dict[str, asyncio.TimerHandle] = {}
        self._fresh = True  # the next audio starts a reply (no underrun counted)
        self._silence_b64 = base64.b64encode(SILENCE).decode()
        self._ws_send: Any = None

    # ------------------------------------------------------------------ lifecycle

    async def dial(self) -> None:
        self.answer_document = await self.answer()
        self._parse_answer(self.answer_document)
        await self.open_stream()
        assert self._ws is not None
        self._ws_send = self._ws.send_str
        self._t0 = time.monotonic()
        await self._send_start()
        self.start_sent_at = time.time()
        self._tasks = [asyncio.create_task(self._recv_loop())]
        self.pacer.add(self)

    async def hang_up(self) -> None:
        self.pacer.discard(self)
        for handle in self._mark_timers.values():
            handle.cancel()
        self._mark_timers.clear()
        await super().hang_up()

    async def __aexit__(self, *exc: object) -> None:
        self.pacer.discard(self)
        await super().__aexit__(*exc)

    # ------------------------------------------------------------------ sending

    def say_frames(self, frames: list[bytes], voiced: list[bool]) -> Utterance:
        utterance = Utterance(frames, voiced)
        self._utterances.append(utterance)
        return utterance

    async def tick(self, now: float) -> None:
        """Send this call's next frame (called by the pacer every 20 ms)."""
        ws = self._ws
        if ws is None or ws.closed:
            self.pacer.discard(self)
            return
        if self._current is None and self._utterances:
            self._current = self._utterances.pop(0)
            self._index = 0
        utterance = self._current
        if utterance is not None:
            i = self._index
            frame = utterance.frames[i]
            payload = base64.b64encode(frame).decode()
            if utterance.voiced[i]:
                if utterance.first_voiced_at is None:
                    utterance.first_voiced_at = now
                utterance.last_voiced_at = now
            self._index += 1
            if self._index >= len(utterance.frames):
                self._current = None
                utterance.done.set()
        else:
            payload = self._silence_b64
        self._seq += 1
        self._chunk += 1
        self.sent_at.append(now)
        message = (  # Twilio's media message, built without a JSON encoder (hot path)
            f'{{"event":"media","sequenceNumber":"{self._seq}","streamSid":"{self.stream_id}",'
            f'"media":{{"track":"inbound","chunk":"{self._chunk}","timestamp":'
            f'"{(self._chunk - 1) * 20}","payload":"{payload}"}}}}'
        )
        try:
            await self._ws_send(message)
        except (ConnectionError, RuntimeError):
            self.pacer.discard(self)

    # ------------------------------------------------------------------ receiving

    async def _recv_loop(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type.name != "TEXT":
                    continue
                data = msg.data
                now = time.time()
                if data.startswith('{"event":"media"') or data.startswith('{"event": "media"'):
                    self._on_media(data, now)
                    continue
                try:
                    message = json.loads(data)
                except ValueError:
                    continue
                await self._on_text(message, Received(time.monotonic(), now, "", None))
        except Exception as exc:  # a broken stream is a failed call, not a crash
            self.failed = f"{type(exc).__name__}: {exc}"
        self.close_code = self._ws.close_code
        self.closed.set()
        self.pacer.discard(self)

    def _on_media(self, data: str, now: float) -> None:
        # the payload's length gives its duration; decoding it would cost for nothing
        start = data.find('"payload":')
        start = data.find('"', start + 10) + 1
        end = data.find('"', start)
        duration = (end - start) * 3 / 4 / 8000
        self.audio_at.append(now)
        if self.playing_until < now:
            if not self._fresh and now - self.playing_until > UNDERRUN_S \
                    and now - self.last_audio_at < 0.5:
                self.underruns += 1
            self.playing_until = now
        self._fresh = False
        self.playing_until += duration
        self.last_audio_at = now

    def _enqueue_audio(self, audio: bytes, received: Received) -> None:  # JSON path
        self._on_media(f'{{"payload":"{base64.b64encode(audio).decode()}"}}', received.wall)

    def _enqueue_mark(self, name: str, received: Received) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, self.playing_until - time.time())
        self._mark_timers[name] = loop.call_later(delay, self._mark_played, name)

    def _mark_played(self, name: str) -> None:
        self._mark_timers.pop(name, None)
        self.echoed_marks.append(name)
        task = asyncio.ensure_future(self._ack_mark(name))
        task.add_done_callback(_ignore)

    def _clear_buffer(self, received: Received) -> list[str]:
        self.clear_at.append(received.wall)
        pending = list(self._mark_timers)
        for handle in self._mark_timers.values():
            handle.cancel()
        self._mark_timers.clear()
        self.playing_until = received.wall
        self._fresh = True
        return pending

    # ------------------------------------------------------------------ inspection

    def agent_silent(self, now: float, quiet_s: float = 0.4) -> bool:
        """Nothing is playing and nothing arrived for ``quiet_s``."""
        return now >= self.playing_until and now - self.last_audio_at >= quiet_s

    async def wait_audio_after(self, t: float, timeout: float) -> float:
        """Arrival time of the first agent audio after wall time ``t``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            i = bisect.bisect_right(self.audio_at, t)
            if i < len(self.audio_at):
                return self.audio_at[i]
            if self.closed.is_set():
                raise ConnectionError(f"call closed ({self.close_code})")
            await asyncio.sleep(0.005)
        raise TimeoutError("no agent audio")

    def frame_sent_before(self, t: float) -> float | None:
        """Send time of the last caller frame that went out at or before ``t``."""
        i = bisect.bisect_right(self.sent_at, t)
        return self.sent_at[i - 1] if i else None

    async def wait_clear_after(self, t: float, timeout: float) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            first = next((c for c in self.clear_at if c > t), None)
            if first is not None:
                return first
            await asyncio.sleep(0.005)
        raise TimeoutError("no clear")

    async def wait_silent(self, timeout: float, quiet_s: float = 0.4) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.agent_silent(time.time(), quiet_s):
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("the agent kept talking")


def _ignore(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def split_frames(ulaw: bytes, *, lead_s: float = 0.0, tail_s: float = 0.0
                 ) -> tuple[list[bytes], list[bool]]:
    """μ-law audio → 20 ms frames padded with silence, and which frames carry voice."""
    pad = SILENCE * int(lead_s / FRAME_S)
    audio = pad + ulaw + SILENCE * int(tail_s / FRAME_S)
    frames = [audio[i:i + 160].ljust(160, b"\xff") for i in range(0, len(audio), 160)]
    voiced = [mulaw_rms(f) >= VOICED_RMS for f in frames]
    return frames, voiced
