"""A person in a LiveKit room, driven by a test: a real rtc SDK participant.

It publishes a microphone track fed in real time (20 ms frames: silence unless something
is being said), subscribes to everyone else's audio and keeps a timeline of what it heard
(one entry per received 10 ms frame with its level), and records the ``lk.transcription``
text streams and ``rymi.events`` data packets it receives.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from livekit import api, rtc

from pipelines.pacing import FrameClock

MIC_RATE = 48000
FRAME_S = 0.02
LOUD_RMS = 300.0  # int16 RMS above which a received frame counts as speech


def token(
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    *,
    metadata: str = "",
    dispatch: api.RoomConfiguration | None = None,
) -> str:
    grant = api.VideoGrants(room_join=True, room=room, can_publish=True, can_subscribe=True,
                            can_publish_data=True)
    builder = (
        api.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(identity)
        .with_metadata(metadata)
        .with_grants(grant)
    )
    if dispatch is not None:
        builder = builder.with_room_config(dispatch)
    return builder.to_jwt()


@dataclass
class HeardFrame:
    at: float  # time.monotonic() on arrival
    identity: str
    rms: float


@dataclass
class TextSegment:
    at: float
    sender: str
    text: str
    attributes: dict[str, str]


@dataclass
class Candidate:
    side: str  # "local" or "remote"
    address: str
    port: int
    protocol: str

    @property
    def is_loopback(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


@dataclass
class Participant:
    url: str
    token: str
    identity: str = ""
    room: rtc.Room = field(default_factory=rtc.Room)
    heard: list[HeardFrame] = field(default_factory=list)
    texts: list[TextSegment] = field(default_factory=list)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _pending: deque[bytes] = field(default_factory=deque)
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _source: rtc.AudioSource | None = None
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    mic_track_sid: str = ""

    async def join(self) -> Participant:
        room = self.room
        room.on("track_subscribed", self._on_track)
        room.on("data_received", self._on_data)
        room.register_text_stream_handler("lk.transcription", self._on_text)
        await room.connect(self.url, self.token, rtc.RoomOptions(auto_subscribe=True))
        self.identity = room.local_participant.identity
        self._source = rtc.AudioSource(MIC_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self._source)
        pub = await room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        self.mic_track_sid = pub.sid
        self._idle.set()
        self._tasks.append(asyncio.create_task(self._mic()))
        return self

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await self.room.disconnect()

    # ---------------------------------------------------------------- speaking

    def say(self, pcm48k: bytes) -> None:
        """Queue speech (pcm16 mono 48 kHz); it goes out in real time after what is queued."""
        frame = int(MIC_RATE * FRAME_S) * 2
        for i in range(0, len(pcm48k), frame):
            chunk = pcm48k[i : i + frame]
            self._pending.append(chunk.ljust(frame, b"\0"))
        self._idle.clear()

    async def spoken(self) -> None:
        """Wait until everything queued has been sent."""
        await self._idle.wait()

    async def _mic(self) -> None:
        assert self._source is not None
        samples = int(MIC_RATE * FRAME_S)
        silence = bytes(samples * 2)
        clock = FrameClock(FRAME_S)
        while True:
            data = self._pending.popleft() if self._pending else silence
            if not self._pending:
                self._idle.set()
            await self._source.capture_frame(rtc.AudioFrame(data, MIC_RATE, 1, samples))
            await clock.wait()

    # ---------------------------------------------------------------- hearing

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication,
                  participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO:
            self._tasks.append(asyncio.create_task(self._listen(track, participant.identity)))

    async def _listen(self, track: rtc.Track, identity: str) -> None:
        async for event in rtc.AudioStream(track, sample_rate=16000, num_channels=1):
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float64)
            rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
            self.heard.append(HeardFrame(time.monotonic(), identity, rms))

    def _on_text(self, reader: rtc.TextStreamReader, sender: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            self.texts.append(
                TextSegment(time.monotonic(), sender, text, dict(reader.info.attributes or {}))
            )

        self._tasks.append(asyncio.create_task(read()))

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic == "rymi.events":
            with contextlib.suppress(ValueError):
                self.events.append((time.monotonic(), json.loads(packet.data)))

    def loud(self, identity: str | None = None, since: float = 0.0) -> list[HeardFrame]:
        return [f for f in self.heard
                if f.rms >= LOUD_RMS and f.at >= since
                and (identity is None or f.identity == identity)]

    async def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def event_types(self) -> list[str]:
        return [str(e.get("type")) for _, e in self.events]

    # ---------------------------------------------------------------- ICE

    async def candidates(self) -> list[Candidate]:
        stats = await self.room.get_rtc_stats()
        found: list[Candidate] = []
        for report in (*stats.publisher_stats, *stats.subscriber_stats):
            kind = report.WhichOneof("stats")
            if kind in ("local_candidate", "remote_candidate"):
                cand = getattr(report, kind).candidate
                found.append(Candidate(kind.split("_")[0], cand.address, cand.port,
                                       cand.protocol))
        return found
